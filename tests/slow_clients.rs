//! Slow and greedy clients: a body trickled a byte at a time gets 408 after
//! `server.body_read_timeout`; headers trickled slowly are cut by `server.header_read_timeout`;
//! at `server.max_connections` new clients wait for a slot. Normal clients keep being served
//! throughout.

mod support;

use std::time::{Duration, Instant};

use support::{chain_config, Mock, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#;

async fn read_all(s: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_trickled_body_gets_408_while_others_are_served() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config(
        "[server]\nbody_read_timeout = \"300ms\"\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    let mut slow = TcpStream::connect(p.addr).await.unwrap();
    slow.write_all(
        b"POST /mainnet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"jsonrpc\"",
    )
    .await
    .unwrap();
    // Meanwhile a normal client is served.
    assert_eq!(
        p.call("/mainnet", "eth_blockNumber", "[]").await["result"],
        "up"
    );
    let answer = read_all(&mut slow, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout"), "{answer}");
    assert_eq!(
        up.hits(),
        1,
        "the trickled request never reached the upstream"
    );
}

#[tokio::test]
async fn slowloris_connections_are_cut_and_normal_clients_keep_working() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config(
        "[server]\nheader_read_timeout = \"500ms\"\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    let mut slow = Vec::new();
    for _ in 0..30 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"POST /mainnet HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
    }
    // They keep sending a header byte every 100 ms, never finishing.
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let mut closed = 0;
        while started.elapsed() < Duration::from_secs(8) && closed < slow.len() {
            closed = 0;
            for s in &mut slow {
                if s.write_all(b"x").await.is_err() {
                    closed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed
    });
    for _ in 0..20 {
        assert_eq!(
            p.call("/mainnet", "eth_blockNumber", "[]").await["result"],
            "up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = trickle.await.unwrap();
    assert_eq!(
        closed, 30,
        "every slowloris connection was cut by the header timeout"
    );
}

#[tokio::test]
async fn at_the_connection_limit_new_clients_wait_for_a_slot() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config(
        "[server]\nmax_connections = 3\nheader_read_timeout = \"1s\"\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    // Three connections that send nothing hold every slot...
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(p.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so a fourth client is not served until one of them goes away.
    let fourth = tokio::spawn({
        let url = p.url("/mainnet");
        async move { support::http_request("POST", &url, CALL).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!fourth.is_finished(), "served beyond max_connections");
    assert_eq!(up.hits(), 0);
    drop(idle.pop());
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), fourth)
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!((status, body.contains("\"up\"")), (200, true), "{body}");
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed_after_the_header_timeout() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config(
        "[server]\nmax_connections = 2\nheader_read_timeout = \"500ms\"\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    // Two silent clients take both slots...
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(p.addr).await.unwrap());
    }
    // ...and are cut once the header timeout passes, so a third client gets served.
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(10),
        support::http_request("POST", &p.url("/mainnet"), CALL),
    )
    .await
    .expect("a silent connection kept its slot");
    assert_eq!((status, body.contains("\"up\"")), (200, true), "{body}");
    for mut s in silent {
        let mut out = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the silent connection was closed without an answer: {closed:?} {out:?}"
        );
    }
}

#[tokio::test]
async fn a_request_whose_first_byte_arrives_alone_is_served() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    // "P" could begin the HTTP/2 preface ("PRI * ..."); the server waits for more.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rest = format!(
        "OST /mainnet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{CALL}",
        CALL.len()
    );
    s.write_all(rest.as_bytes()).await.unwrap();
    let answer = read_all(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with(r#"{"jsonrpc":"2.0","id":1,"result":"up"}"#),
        "{answer}"
    );
}

#[tokio::test]
async fn a_head_over_64_kib_is_answered_431_at_once_not_after_a_second_timeout() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config(
        "[server]\nheader_read_timeout = \"30s\"\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut head = b"POST /mainnet HTTP/1.1\r\nhost: x\r\n".to_vec();
    while head.len() < 70 * 1024 {
        head.extend_from_slice(b"x-pad: 0123456789012345678901234567890123456789\r\n");
    }
    // The head is never finished: the answer must not wait for a timeout.
    s.write_all(&head).await.unwrap();
    let answer = read_all(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn http11_requests_need_exactly_one_host() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    let body = CALL;
    for hosts in ["", "host: a\r\nhost: b\r\n"] {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let req = format!(
            "POST /mainnet HTTP/1.1\r\n{hosts}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let answer = read_all(&mut s, Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{hosts:?}: {answer}");
        assert!(answer.contains("exactly one Host"), "{answer}");
    }
    // HTTP/1.0 needs none.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let req = format!(
        "POST /mainnet HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let answer = read_all(&mut s, Duration::from_secs(10)).await;
    assert!(answer.contains(r#""result":"up""#), "{answer}");
    assert_eq!(up.hits(), 1, "refused requests never reach an upstream");
}
