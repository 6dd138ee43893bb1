//! A large answer through detour, streamed (`client.stream_min_bytes`, the default) and read
//! whole (`stream_min_bytes = 0`): time to the first byte of the answer at the client, time to
//! its last byte, detour's CPU per answer and detour's peak RSS.
//!
//! ```text
//! cargo build --release --bin detour && cargo run --release --example large_answer
//! cargo run --release --example large_answer -- --mb 10 --rounds 11 --upstream-mbps 200
//! ```
//!
//! The mock upstream (in this process) answers `eth_getBlockReceipts` with a result of `--mb`
//! MB shaped like receipts' logs, with a `content-length`, written 64 KiB at a time; with
//! `--upstream-mbps` it paces itself to that rate, as a provider across a network would (0:
//! as fast as loopback takes it). detour runs as its own process (the release binary,
//! `DETOUR_BIN` to override), once per mode, with the cache off; the report gives medians over
//! the rounds of the times, and detour's CPU time over all rounds per answer (it is counted in
//! 10 ms clock ticks). Loopback only; bounded by `--rounds`.

#[path = "support/process.rs"]
mod process;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let (mut mb, mut rounds, mut mbps) = (10usize, 11usize, 0u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--mb" => mb = value() as usize,
            "--rounds" => rounds = value() as usize,
            "--upstream-mbps" => mbps = value(),
            _ => panic!("unknown argument {a}; see the example's doc comment"),
        }
    }
    let result = Arc::new(receipts_like(mb * 1_000_000));
    let upstream = mock(result.clone(), mbps);
    let expected = envelope_len(&result);
    println!(
        "answer {} bytes; upstream {}; {rounds} rounds, medians",
        expected,
        if mbps == 0 {
            "as fast as loopback".to_string()
        } else {
            format!("paced at {mbps} MB/s")
        }
    );
    println!(
        "{:<28} {:>12} {:>12} {:>16} {:>14}",
        "mode", "first byte", "last byte", "detour CPU/ans", "detour peak RSS"
    );
    for (name, min_bytes) in [
        ("streamed (default 4 MiB)", 4 << 20),
        ("whole (stream_min_bytes=0)", 0),
    ] {
        let mut detour = start_detour(upstream, min_bytes);
        let ticks = process::clock_ticks() as f64;
        // One answer first, so that connections and buffers are warm.
        fetch(detour.addr, expected);
        let (mut first, mut last) = (Vec::new(), Vec::new());
        // CPU time is counted in clock ticks (10 ms): over all the rounds, per answer.
        let before = process::cpu_ticks(detour.child.id());
        for _ in 0..rounds {
            let (f, l) = fetch(detour.addr, expected);
            first.push(f.as_secs_f64() * 1e3);
            last.push(l.as_secs_f64() * 1e3);
        }
        let cpu =
            (process::cpu_ticks(detour.child.id()) - before) as f64 / ticks * 1e3 / rounds as f64;
        let rss = process::memory_kib(detour.child.id(), "VmHWM");
        let _ = detour.child.kill();
        let _ = detour.child.wait();
        println!(
            "{name:<28} {:>9.1} ms {:>9.1} ms {:>13.1} ms {:>11} KiB",
            median(&mut first),
            median(&mut last),
            cpu,
            rss.map_or("?".into(), |r| r.to_string())
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A result of about `bytes` bytes shaped like receipts' logs.
fn receipts_like(bytes: usize) -> String {
    let mut out = String::from("[");
    let mut i = 0u64;
    while out.len() < bytes {
        if i > 0 {
            out.push(',');
        }
        out += &format!(
            r#"{{"address":"0x{i:040x}","topics":["0x{:064x}","0x{:064x}"],"data":"0x{}","blockNumber":"0x{:x}","logIndex":"0x{i:x}","removed":false}}"#,
            i * 7,
            i * 13,
            "ab".repeat(64),
            i / 100,
        );
        i += 1;
    }
    out.push(']');
    out
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"eth_getBlockReceipts","params":["0x1"]}"#;

/// The client's answer's length: its envelope around the result.
fn envelope_len(result: &str) -> usize {
    r#"{"jsonrpc":"2.0","id":7,"result":}"#.len() + result.len()
}

/// A mock upstream on 127.0.0.1: small answers to probes, the large result otherwise.
fn mock(result: Arc<String>, mbps: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let result = result.clone();
            std::thread::spawn(move || serve(conn, &result, mbps));
        }
    });
    addr
}

fn serve(mut s: TcpStream, result: &str, mbps: u64) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(body) = read_request(&mut s, &mut buf) {
        let body = String::from_utf8_lossy(&body);
        let id = body
            .split("\"id\":")
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .unwrap_or("0")
            .to_string();
        let answer = if body.contains("eth_getBlockReceipts") {
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#)
        } else if body.contains("eth_chainId") {
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x1"}}"#)
        } else {
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x64"}}"#)
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        if s.write_all(head.as_bytes()).is_err() {
            return;
        }
        let started = Instant::now();
        let mut sent = 0usize;
        for piece in answer.as_bytes().chunks(64 * 1024) {
            if s.write_all(piece).is_err() {
                return;
            }
            sent += piece.len();
            if mbps > 0 {
                let due = Duration::from_secs_f64(sent as f64 / (mbps as f64 * 1e6));
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

/// One request's body (after its head, by `content-length`); `None` at the end.
fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                read_more(s, buf)?;
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some(body);
        }
        read_more(s, buf)?;
    }
}

fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 64 * 1024];
    match s.read(&mut chunk) {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// Sends the call on a new connection; the time to the answer's first body byte and to its
/// last. Checks the answer's length (chunks decoded).
fn fetch(addr: SocketAddr, expected: usize) -> (Duration, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.set_nodelay(true);
    let req = format!(
        "POST /bench HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CALL}",
        CALL.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let (head_end, chunked) = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            break (end + 4, head.contains("transfer-encoding: chunked"));
        }
        read_more(&mut s, &mut buf).expect("closed before the head");
    };
    while buf.len() <= head_end {
        read_more(&mut s, &mut buf).expect("closed before the body");
    }
    let first = started.elapsed();
    let mut body = buf.split_off(head_end);
    if chunked {
        let mut out = Vec::with_capacity(expected);
        loop {
            let line = loop {
                match body.windows(2).position(|w| w == b"\r\n") {
                    Some(at) => break at,
                    None => read_more(&mut s, &mut body).expect("cut mid-answer"),
                }
            };
            let size = usize::from_str_radix(std::str::from_utf8(&body[..line]).unwrap(), 16)
                .expect("a chunk size");
            while body.len() < line + 2 + size + 2 {
                read_more(&mut s, &mut body).expect("cut mid-answer");
            }
            out.extend_from_slice(&body[line + 2..line + 2 + size]);
            body.drain(..line + 4 + size);
            if size == 0 {
                break;
            }
        }
        assert_eq!(out.len(), expected, "streamed answer's length");
    } else {
        while body.len() < expected {
            read_more(&mut s, &mut body).expect("cut mid-answer");
        }
        assert_eq!(body.len(), expected, "whole answer's length");
    }
    (first, started.elapsed())
}

struct Detour {
    child: Child,
    addr: SocketAddr,
}

fn start_detour(upstream: SocketAddr, min_bytes: usize) -> Detour {
    let bin = std::env::var("DETOUR_BIN").unwrap_or_else(|_| "target/release/detour".into());
    let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config =
        std::env::temp_dir().join(format!("detour-large-answer-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\n[cache]\nenabled = false\n\
             [client]\nstream_min_bytes = {min_bytes}\n[chains.bench]\nchain_id = 1\n\
             [[chains.bench.upstreams]]\nname = \"mock\"\nurl = \"http://{upstream}\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e} (cargo build --release --bin detour)"));
    process::wait_listening(addr);
    let _ = std::io::stdout().flush();
    Detour { child, addr }
}
