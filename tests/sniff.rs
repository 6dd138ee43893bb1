//! The plaintext HTTP/2 sniff waits for bytes without spinning: clients that sent only the
//! start of the HTTP/2 preface cost no CPU while they wait. Alone in its binary, so the
//! process's CPU time is this test's.

mod support;

use std::time::Duration;

use support::{chain_config, Mock, Proxy};
use tokio::io::AsyncWriteExt;

/// User + system CPU time of this process, in clock ticks (usually 10 ms).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_sent_part_of_the_http2_preface_cost_no_cpu_while_they_wait() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        clients.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks() - before;
    // Polling each every millisecond cost about 15 ticks a second here; waiting costs none.
    assert!(
        used <= 5,
        "{used} ticks of CPU in 1 s with 50 waiting clients"
    );
    drop(clients);
}
