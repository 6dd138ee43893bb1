//! Keep-alive connections to plain-HTTP upstreams (detour's own per-upstream pool): reused,
//! replaced without an error when the upstream closed them while idle, never reused after
//! `Connection: close`, and not kept at all with `pool_max_idle_per_host = 0`; chunked and
//! close-delimited answers (detour's own HTTP/1.1 client, `src/client/h1.rs`) are read whole.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A bare HTTP/1.1 JSON-RPC upstream that counts connections. It closes a connection after
/// `per_conn` answers (announced with `Connection: close` if `announce_close`), or when no
/// request came for `keep_alive` (silently, as servers with a keep-alive timeout do).
/// Answers `eth_chainId` with 0x1 and anything else with block 0x64.
struct RawUpstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    answers: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start(per_conn: usize, keep_alive: Duration, announce_close: bool) -> RawUpstream {
        Self::start_slow(per_conn, keep_alive, announce_close, Duration::ZERO).await
    }

    /// As `start`, each answer held back for `delay`.
    async fn start_slow(
        per_conn: usize,
        keep_alive: Duration,
        announce_close: bool,
        delay: Duration,
    ) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(AtomicUsize::new(0));
        let (a, n) = (accepts.clone(), answers.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                a.fetch_add(1, SeqCst);
                let n = n.clone();
                tokio::spawn(serve_conn(
                    s,
                    per_conn,
                    keep_alive,
                    announce_close,
                    delay,
                    n,
                ));
            }
        });
        RawUpstream {
            addr,
            accepts,
            answers,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve_conn(
    mut s: TcpStream,
    per_conn: usize,
    keep_alive: Duration,
    announce_close: bool,
    delay: Duration,
    answers: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    for i in 0..per_conn {
        let next = tokio::time::timeout(keep_alive, read_request(&mut s, &mut buf));
        let Ok(Some(body)) = next.await else {
            // Idle too long (or the client left): dropping the stream closes it, unannounced.
            return;
        };
        tokio::time::sleep(delay).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let result = if v["method"] == "eth_chainId" {
            "\"0x1\""
        } else {
            "\"0x64\""
        };
        let out = format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, v["id"]);
        let last = i + 1 == per_conn;
        let close = if last && announce_close {
            "connection: close\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{close}content-length: {}\r\n\r\n",
            out.len()
        );
        if s.write_all(format!("{head}{out}").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        answers.fetch_add(1, SeqCst);
    }
}

/// One upstream, probes slowed down so that the test's calls are what is counted.
fn config(url: &str, client: &str) -> String {
    format!(
        "[client]\nattempt_timeout = \"2s\"\n{client}\n[chains.mainnet]\nchain_id = 1\n\
         max_attempts = 1\n[chains.mainnet.health]\nprobe_interval = \"1h\"\nidle_probe_interval = \"1h\"\n\
         [[chains.mainnet.upstreams]]\nname = \"raw\"\nurl = \"{url}\"\n"
    )
}

async fn calls(proxy: &Proxy, n: usize, pause: Duration) {
    for i in 0..n {
        let v = proxy.call("/mainnet", "eth_getBalance", "[]").await;
        assert_eq!(v["result"], "0x64", "call {i}: {v}");
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let up = RawUpstream::start(usize::MAX, Duration::from_secs(60), false).await;
    let proxy = Proxy::start(&config(&up.url(), "")).await;
    calls(&proxy, 30, Duration::ZERO).await;
    let accepts = up.accepts.load(SeqCst);
    assert!(
        accepts <= 2,
        "30 sequential calls (and the start-up probes) took {accepts} connections"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_second_burst_of_concurrent_calls_reuses_the_first_bursts_connections() {
    // 200 calls at once, each held 200 ms upstream, so they need about 200 connections. With
    // the pool keeping fewer (it kept 64), most were closed after the first burst (each close
    // leaving a socket in TIME_WAIT) and opened again for the second.
    let up = RawUpstream::start_slow(
        usize::MAX,
        Duration::from_secs(60),
        false,
        Duration::from_millis(200),
    )
    .await;
    let proxy = Arc::new(Proxy::start(&config(&up.url(), "")).await);
    let burst = || async {
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let proxy = proxy.clone();
                tokio::spawn(async move { proxy.call("/mainnet", "eth_getBalance", "[]").await })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap()["result"], "0x64");
        }
    };
    burst().await;
    let first = up.accepts.load(SeqCst);
    assert!(
        first > 64,
        "the first burst overlapped: {first} connections"
    );
    burst().await;
    let second = up.accepts.load(SeqCst) - first;
    assert!(
        second * 10 <= first,
        "the second burst opened {second} new connections (the first {first})"
    );
}

#[tokio::test]
async fn connections_the_upstream_closed_while_idle_are_replaced_without_an_error() {
    // The upstream closes connections idle for 20 ms, much shorter than detour's pool timeout;
    // calls come 80 ms apart, so each finds its pooled connection closed.
    let up = RawUpstream::start(usize::MAX, Duration::from_millis(20), false).await;
    let proxy = Proxy::start(&config(&up.url(), "")).await;
    calls(&proxy, 10, Duration::from_millis(80)).await;
    let status = proxy.upstream_status("raw");
    assert!(
        proxy.states("raw").is_empty(),
        "the upstream was never unhealthy: {status}"
    );
    assert_eq!(status["errors_last_minute"], 0, "{status}");
    assert_eq!(status["failures"], 0, "{status}");
    assert!(
        up.accepts.load(SeqCst) >= 10,
        "each call needed a new connection"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn connections_announced_closing_are_not_reused() {
    // `Connection: close` on the third answer of each connection, then it closes at once.
    let up = RawUpstream::start(3, Duration::from_secs(60), true).await;
    let proxy = Proxy::start(&config(&up.url(), "")).await;
    calls(&proxy, 12, Duration::ZERO).await;
    let status = proxy.upstream_status("raw");
    assert_eq!(status["errors_last_minute"], 0, "{status}");
    let (accepts, answers) = (up.accepts.load(SeqCst), up.answers.load(SeqCst));
    assert!(
        accepts * 3 >= answers && accepts < answers,
        "{answers} answers over {accepts} connections"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn no_idle_connections_are_kept_when_the_pool_size_is_zero() {
    let up = RawUpstream::start(usize::MAX, Duration::from_secs(60), false).await;
    let proxy = Proxy::start(&config(&up.url(), "pool_max_idle_per_host = 0")).await;
    calls(&proxy, 5, Duration::ZERO).await;
    // Start-up probes included: every request had a connection of its own.
    let (accepts, answers) = (up.accepts.load(SeqCst), up.answers.load(SeqCst));
    assert!(answers >= 5);
    assert_eq!(accepts, answers, "one connection per request");
    proxy.stop().await;
}

#[tokio::test]
async fn the_host_header_names_the_upstream() {
    let node = Mock::start("node").await;
    let proxy = Proxy::start(&chain_config("", &[("node", &node.url(), "")])).await;
    proxy.call("/mainnet", "eth_getBalance", "[]").await;
    let sent = node.headers().last().cloned().unwrap();
    assert_eq!(sent["host"], node.addr.to_string());
    assert_eq!(sent.get_all("host").iter().count(), 1);
    proxy.stop().await;
    // Framing and hop-by-hop headers cannot be configured: detour writes them itself.
    for extra in [
        "headers = { Host = \"rpc.internal\" }",
        "headers = { \"Content-Length\" = \"0\" }",
        "headers = { \"Transfer-Encoding\" = \"chunked\" }",
        "headers = { Connection = \"close\" }",
    ] {
        let e = detour::Config::from_toml(&chain_config("", &[("node", &node.url(), extra)]))
            .unwrap_err();
        assert!(e.to_string().contains(".headers."), "{extra}: {e}");
    }
}

/// An upstream that frames its answers as `style` says: `"chunked"` (5-byte chunks and a
/// trailer, keep-alive) or `"close"` (HTTP/1.0, no length: the body ends when the connection
/// closes). Returns its address and its count of accepted connections.
async fn framed_upstream(style: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let a = accepts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            a.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(body) = read_request(&mut s, &mut buf).await {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let result = if v["method"] == "eth_chainId" {
                        "0x1"
                    } else {
                        "0x64"
                    };
                    let out = format!(
                        r#"{{"jsonrpc":"2.0","id":{},"result":"{result}"}}"#,
                        v["id"]
                    );
                    let answer = if style == "chunked" {
                        let mut a =
                            String::from("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
                        for piece in out.as_bytes().chunks(5) {
                            a += &format!(
                                "{:x}\r\n{}\r\n",
                                piece.len(),
                                String::from_utf8_lossy(piece)
                            );
                        }
                        a + "0\r\nx-trailer: 1\r\n\r\n"
                    } else {
                        format!("HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{out}")
                    };
                    if s.write_all(answer.as_bytes()).await.is_err() || style == "close" {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), accepts)
}

#[tokio::test]
async fn chunked_and_close_delimited_answers_pass_through_whole() {
    for style in ["chunked", "close"] {
        let (url, accepts) = framed_upstream(style).await;
        let p = Proxy::start(&config(&url, "")).await;
        calls(&p, 6, Duration::ZERO).await;
        // A chunked answer leaves the connection usable; a close-delimited one cannot be (the
        // health checks' probes may add a connection or two).
        let accepts = accepts.load(SeqCst);
        match style {
            "chunked" => assert!(accepts <= 2, "{style}: {accepts} connections"),
            _ => assert!(accepts >= 6, "{style}: {accepts} connections"),
        }
        assert_eq!(p.upstream_status("raw")["failures"], 0, "{style}");
    }
}

/// An upstream that answers the first request on each connection and closes the connection
/// when a second one arrives on it, unanswered: the worst case of an upstream whose keep-alive
/// timeout closes a connection just as detour reuses it. Returns its URL and the methods it
/// received.
async fn closing_on_reuse() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(body) = read_request(&mut s, &mut buf).await else {
                    return;
                };
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                log.lock()
                    .unwrap()
                    .push(v["method"].as_str().unwrap_or("").to_owned());
                let result = if v["method"] == "eth_chainId" {
                    "\"0x1\""
                } else {
                    "\"0x64\""
                };
                let out = format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, v["id"]);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    out.len()
                );
                if s.write_all(format!("{head}{out}").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                // The next request on this connection is read, never answered: closed.
                if let Some(body) = read_request(&mut s, &mut buf).await {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    log.lock()
                        .unwrap()
                        .push(format!("unanswered {}", v["method"].as_str().unwrap_or("")));
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn a_connection_closed_as_it_is_reused_is_nobodys_failure() {
    let (url, seen) = closing_on_reuse().await;
    let proxy = Proxy::start(&config(&url, "")).await;
    // One upstream, one attempt: nothing can hide a failure behind failover.
    for i in 0..4 {
        let v = proxy.call("/mainnet", "eth_getBalance", "[]").await;
        assert_eq!(v["result"], "0x64", "read {i}: {v}");
    }
    let status = proxy.upstream_status("raw");
    assert_eq!(status["failures"], 0, "{status}");
    assert!(proxy.states("raw").is_empty(), "{:?}", proxy.states("raw"));
    // A write reuses only a connection used within the last second: after a pause it goes on
    // a new connection, and the upstream receives it once.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let v = proxy
        .call("/mainnet", "eth_sendRawTransaction", r#"["0x02f8"]"#)
        .await;
    assert_eq!(v["result"], "0x64", "{v}");
    let writes: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains("eth_sendRawTransaction"))
        .cloned()
        .collect();
    assert_eq!(writes, ["eth_sendRawTransaction"]);
    proxy.stop().await;
}
