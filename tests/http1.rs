//! The HTTP/1.1 server as a client on a raw socket sees it: the fast path for plain `POST`s,
//! and hyper taking over a connection, with every byte already read, at the first request the
//! fast path does not serve. Pipelining, `connection: close`, `date` and `content-length`,
//! bodies that come after their head, idle keep-alive timeouts and shutdown.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{chain_config, Mock, Proxy, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn post(id: u32, extra: &str) -> String {
    let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_blockNumber"}}"#);
    format!(
        "POST /mainnet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Everything the server sends until it closes the connection (bounded).
async fn read_to_close(s: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the server did not close the connection; so far: {}",
                String::from_utf8_lossy(&out)
            )
        })
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// Reads exactly one answer with a `content-length` body.
async fn read_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "closed mid-answer: {text}");
        got.extend_from_slice(&chunk[..n]);
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    let mut s = connect(p.addr).await;
    let all = format!(
        "{}{}{}",
        post(1, ""),
        post(2, ""),
        post(3, "connection: close\r\n")
    );
    s.write_all(all.as_bytes()).await.unwrap();
    let text = read_to_close(&mut s, Duration::from_secs(10)).await;
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{text}");
    for (i, a) in answers.iter().enumerate() {
        assert!(a.starts_with("200 OK\r\n"), "{a}");
        let id = i + 1;
        assert!(
            a.ends_with(&format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"up"}}"#)),
            "answer {id}: {a}"
        );
    }
    assert!(
        answers[2].contains("\r\nconnection: close\r\n"),
        "{}",
        answers[2]
    );
}

#[tokio::test]
async fn hyper_takes_over_a_connection_with_the_bytes_already_read() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    let mut s = connect(p.addr).await;
    // One write: a plain POST (fast path), then a GET and a chunked POST (hyper's), then a
    // plain POST again, served by hyper now that it has the connection.
    let chunked_body = r#"{"jsonrpc":"2.0","id":3,"method":"eth_blockNumber"}"#;
    let all = format!(
        "{}GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nPOST /mainnet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunked_body}\r\n0\r\n\r\n{}",
        post(1, ""),
        chunked_body.len(),
        post(4, "connection: close\r\n"),
    );
    s.write_all(all.as_bytes()).await.unwrap();
    let text = read_to_close(&mut s, Duration::from_secs(10)).await;
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 4, "{text}");
    assert!(
        answers[0].ends_with(r#""id":1,"result":"up"}"#),
        "{}",
        answers[0]
    );
    assert!(answers[1].ends_with("ok\n"), "{}", answers[1]);
    assert!(
        answers[2].ends_with(r#""id":3,"result":"up"}"#),
        "{}",
        answers[2]
    );
    assert!(
        answers[3].ends_with(r#""id":4,"result":"up"}"#),
        "{}",
        answers[3]
    );
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn a_body_that_comes_after_its_head_is_read_and_served() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    let mut s = connect(p.addr).await;
    let req = post(7, "");
    let (head, body) = req.split_at(req.find("\r\n\r\n").unwrap() + 4);
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(body.as_bytes()).await.unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with(r#""id":7,"result":"up"}"#), "{answer}");
    // The connection is still usable.
    s.write_all(post(8, "").as_bytes()).await.unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.ends_with(r#""id":8,"result":"up"}"#), "{answer}");
}

#[tokio::test]
async fn answers_carry_date_and_content_length_and_a_notification_gets_a_bare_204() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    let mut s = connect(p.addr).await;
    s.write_all(post(1, "").as_bytes()).await.unwrap();
    let answer = read_answer(&mut s).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\ncontent-length: {}", body.len())),
        "{head}"
    );
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{head}"
    );
    let date = head
        .lines()
        .find_map(|l| l.strip_prefix("date: "))
        .unwrap_or_else(|| panic!("no date header: {head}"));
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    assert!(
        !head.contains("connection:"),
        "keep-alive is the default: {head}"
    );
    // A notification has no answer: 204, no body, no content-length.
    let note = r#"{"jsonrpc":"2.0","method":"eth_blockNumber"}"#;
    let req = format!(
        "POST /mainnet HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{note}",
        note.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let text = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    assert!(!text.contains("content-length"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config(
        "[server]\nheader_read_timeout = \"300ms\"\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    let mut s = connect(p.addr).await;
    s.write_all(post(1, "").as_bytes()).await.unwrap();
    let text = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(text.ends_with(r#""id":1,"result":"up"}"#), "{text}");
}

#[tokio::test]
async fn each_wait_for_a_head_gets_the_whole_header_timeout() {
    // One timer serves the connection: when it fires for an earlier wait, the wait in progress
    // must still get its full time.
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config(
        "[server]\nheader_read_timeout = \"2s\"\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    let mut s = connect(p.addr).await;
    for id in 1..=3 {
        s.write_all(post(id, "").as_bytes()).await.unwrap();
        let answer = read_answer(&mut s).await;
        assert!(
            answer.ends_with(&format!(r#""id":{id},"result":"up"}}"#)),
            "{answer}"
        );
        // The third request comes 2.4 s after the first wait began: past the first timer.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    // Idle now: closed once its own wait has lasted 2 s.
    let text = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(text.is_empty(), "{text}");
}

/// A server with a long header timeout and grace, so only shutdown itself can close things.
async fn server(
    upstream: &Mock,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let toml = chain_config(
        "[server]\nheader_read_timeout = \"60s\"\nshutdown_grace = \"60s\"\n",
        &[("up", &upstream.url(), "")],
    );
    let proxy = detour::Detour::new(detour::Config::from_toml(&toml).unwrap()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(detour::serve(listener, proxy, async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    let up = Mock::start("up").await;
    let (addr, stop, task) = server(&up).await;
    let mut idle = connect(addr).await;
    idle.write_all(post(1, "").as_bytes()).await.unwrap();
    let answer = read_answer(&mut idle).await;
    assert!(answer.ends_with(r#""id":1,"result":"up"}"#), "{answer}");
    stop.send(()).unwrap();
    // Not after the 60 s grace: the idle connection is closed, and serve returns.
    assert_eq!(read_to_close(&mut idle, Duration::from_secs(10)).await, "");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returned before the grace period")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered_with_connection_close() {
    let slow = Mock::start("slow").await;
    slow.always(Reply::delay(400, Reply::result("\"done\"")));
    let (addr, stop, task) = server(&slow).await;
    let mut s = connect(addr).await;
    s.write_all(post(1, "").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let text = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.ends_with(r#""id":1,"result":"done"}"#), "{text}");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn pipelined_requests_split_anywhere_are_all_answered_in_order() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    let all = format!(
        "{}{}{}",
        post(1, ""),
        post(2, ""),
        post(3, "connection: close\r\n")
    );
    // Every 5th byte as the split point: heads and bodies cut anywhere, so the fast path
    // waits for a head, or hands a half-arrived body over to hyper, and either way answers.
    for at in (1..all.len()).step_by(5) {
        let mut s = connect(p.addr).await;
        s.write_all(&all.as_bytes()[..at]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        s.write_all(&all.as_bytes()[at..]).await.unwrap();
        let text = read_to_close(&mut s, Duration::from_secs(10)).await;
        let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 3, "split at {at}: {text}");
        for (i, a) in answers.iter().enumerate() {
            let id = i + 1;
            assert!(
                a.starts_with("200 OK\r\n")
                    && a.ends_with(&format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"up"}}"#)),
                "split at {at}, answer {id}: {a}"
            );
        }
    }
}

/// The head lines of an answer, but `date`, sorted; and its body.
fn head_and_body(answer: &str) -> (Vec<String>, String) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let mut lines: Vec<String> = head
        .lines()
        .filter(|l| !l.starts_with("date: "))
        .map(str::to_owned)
        .collect();
    lines.sort();
    (lines, body.to_owned())
}

#[tokio::test]
async fn the_fast_path_answers_as_hyper_does_with_origins_and_keys() {
    let up = Mock::start("up").await;
    let keys = "[[api_keys]]\nname = \"wallet\"\nkey = \"wallet-key-0123456780\"\n";
    let p = Proxy::start(&chain_config(keys, &[("up", &up.url(), "")])).await;
    for extra in [
        // No key: 401, with or without an origin.
        "",
        "origin: http://localhost:5173\r\n",
        // A key: the answer, with the upstream's name; CORS headers for the origin.
        "authorization: Bearer wallet-key-0123456780\r\n",
        "authorization: Bearer wallet-key-0123456780\r\norigin: http://localhost:5173\r\n",
    ] {
        // The same request through the fast path, then through hyper (a chunked body is
        // hyper's to read).
        let mut s = connect(p.addr).await;
        s.write_all(post(1, extra).as_bytes()).await.unwrap();
        let fast = head_and_body(&read_answer(&mut s).await);
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#;
        let chunked = format!(
            "POST /mainnet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra}transfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        s.write_all(chunked.as_bytes()).await.unwrap();
        let slow = head_and_body(&read_answer(&mut s).await);
        assert_eq!(fast, slow, "with {extra:?}");
        let want = if extra.contains("authorization") {
            "HTTP/1.1 200 OK"
        } else {
            "HTTP/1.1 401 Unauthorized"
        };
        assert!(
            fast.0.contains(&want.to_string()),
            "with {extra:?}: {fast:?}"
        );
        if extra.contains("authorization") {
            assert!(
                fast.0.contains(&"x-detour-upstream: up".to_string()),
                "{fast:?}"
            );
        }
        if extra.contains("origin") {
            assert!(
                fast.0
                    .contains(&"access-control-allow-origin: http://localhost:5173".to_string()),
                "{fast:?}"
            );
        }
    }
}
