//! Large answers streamed to the client as they arrive (issue 19, `client.stream_min_bytes`),
//! from plain-HTTP and HTTPS (HTTP/1.1 and HTTP/2) upstreams:
//! the result reaches the client before the upstream has sent all of it; the client gets
//! exactly the upstream's bytes behind its own id, whether the upstream framed them with
//! `content-length` or chunks; an upstream that breaks off or sends something malformed after
//! the stream began cuts the client's connection (never a short valid answer); failover
//! still happens on everything before the result began; streamed answers are not cached;
//! small answers and paths that do not stream are answered whole as before.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use support::*;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How the scripted upstream answers `eth_getBlockReceipts`.
#[derive(Clone)]
struct Script {
    status: u16,
    chunked: bool,
    /// The envelope before the result (`{id}` is replaced by the request's id).
    head: &'static str,
    result: Arc<String>,
    tail: &'static str,
    /// After this many body bytes, wait for the gate to open.
    gate_after: usize,
    gate: Option<Arc<Notify>>,
    /// Close the connection after this many body bytes.
    cut_at: Option<usize>,
}

impl Script {
    fn new(result: &Arc<String>) -> Script {
        Script {
            status: 200,
            chunked: false,
            head: r#"{"jsonrpc":"2.0","id":{id},"result":"#,
            result: result.clone(),
            tail: "}",
            gate_after: 0,
            gate: None,
            cut_at: None,
        }
    }
}

/// A bare HTTP/1.1 upstream: `eth_chainId` is 0x1, `eth_blockNumber` 0x64, and
/// `eth_getBlockReceipts` is answered by its script (counted).
struct Upstream {
    addr: SocketAddr,
    big_calls: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start(script: Script) -> Upstream {
        Upstream::start_with(script, None).await
    }

    /// The same over TLS (HTTP/1.1: no ALPN), at `https://localhost:<port>`.
    async fn start_tls(script: Script, certs: &Certs) -> Upstream {
        Upstream::start_with(script, Some(certs.acceptor(&[]))).await
    }

    async fn start_with(script: Script, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big_calls = Arc::new(AtomicUsize::new(0));
        let calls = big_calls.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (script, calls) = (script.clone(), calls.clone());
                match &tls {
                    None => drop(tokio::spawn(serve(s, script, calls))),
                    Some(tls) => {
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            if let Ok(s) = tls.accept(s).await {
                                serve(s, script, calls).await;
                            }
                        });
                    }
                }
            }
        });
        Upstream { addr, big_calls }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn tls_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    script: Script,
    big_calls: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    while let Some(body) = read_request(&mut s, &mut buf).await {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let id = v["id"].to_string();
        let small = match v["method"].as_str() {
            Some("eth_chainId") => Some("\"0x1\""),
            Some("eth_getBlockReceipts") => None,
            _ => Some("\"0x64\""),
        };
        if let Some(result) = small {
            let out = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
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
            continue;
        }
        big_calls.fetch_add(1, SeqCst);
        let body = format!(
            "{}{}{}",
            script.head.replace("{id}", &id),
            script.result,
            script.tail
        );
        let body = body.as_bytes();
        let framing = if script.chunked {
            "transfer-encoding: chunked".to_string()
        } else {
            format!("content-length: {}", body.len())
        };
        let head = format!(
            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\n{framing}\r\n\r\n",
            script.status
        );
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let end = script.cut_at.unwrap_or(body.len()).min(body.len());
        let mut at = 0;
        while at < end {
            let stop = if at < script.gate_after {
                script.gate_after.min(end)
            } else {
                end
            };
            let next = (at + 64 * 1024).min(stop);
            let piece = &body[at..next];
            let written = if script.chunked {
                let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
                s.write_all(&framed).await
            } else {
                s.write_all(piece).await
            };
            if written.is_err() {
                return;
            }
            at = next;
            if at == script.gate_after {
                if let Some(gate) = &script.gate {
                    gate.notified().await;
                }
            }
        }
        if script.cut_at.is_some() {
            return;
        }
        if script.chunked && s.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

/// An HTTP/2-over-TLS upstream (hyper's server, ALPN `h2`) answering every call with its
/// script's body, without a declared length, in 64 KiB frames; `cut_at` resets the stream.
/// Counts the connections it accepts.
struct H2Upstream {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl H2Upstream {
    async fn start(script: Script, certs: &Certs) -> H2Upstream {
        use hyper::body::Frame;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let tls = certs.acceptor(&[b"h2"]);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, SeqCst);
                let (tls, script) = (tls.clone(), script.clone());
                tokio::spawn(async move {
                    let Ok(s) = tls.accept(s).await else { return };
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let script = script.clone();
                            async move {
                                let body = http_body_util::BodyExt::collect(req.into_body())
                                    .await?
                                    .to_bytes();
                                let v: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                let id = v["id"].to_string();
                                let big = v["method"] == "eth_getBlockReceipts";
                                let body = match v["method"].as_str() {
                                    Some("eth_getBlockReceipts") => format!(
                                        "{}{}{}",
                                        script.head.replace("{id}", &id),
                                        script.result,
                                        script.tail
                                    ),
                                    Some("eth_chainId") => {
                                        format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x1"}}"#)
                                    }
                                    _ => {
                                        format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x64"}}"#)
                                    }
                                };
                                let (tx, rx) = tokio::sync::mpsc::channel::<
                                    Result<Frame<bytes::Bytes>, std::io::Error>,
                                >(4);
                                tokio::spawn(async move {
                                    let body = bytes::Bytes::from(body);
                                    let cut_at = script.cut_at.filter(|_| big);
                                    let end = cut_at.unwrap_or(body.len()).min(body.len());
                                    let mut at = 0;
                                    while at < end {
                                        let stop = if at < script.gate_after {
                                            script.gate_after.min(end)
                                        } else {
                                            end
                                        };
                                        let next = (at + 64 * 1024).min(stop);
                                        if tx
                                            .send(Ok(Frame::data(body.slice(at..next))))
                                            .await
                                            .is_err()
                                        {
                                            return;
                                        }
                                        at = next;
                                        if at == script.gate_after {
                                            if let Some(gate) = &script.gate {
                                                gate.notified().await;
                                            }
                                        }
                                    }
                                    if cut_at.is_some() {
                                        let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                                    }
                                });
                                let mut rx = rx;
                                let stream =
                                    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
                                let mut resp =
                                    http::Response::new(http_body_util::StreamBody::new(stream));
                                resp.headers_mut()
                                    .insert("content-type", "application/json".parse().unwrap());
                                Ok::<_, hyper::Error>(resp)
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(s);
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, service)
                    .await;
                });
            }
        });
        H2Upstream { port, accepted }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

/// A result of about `bytes` bytes shaped like receipts' logs, with a string that needs
/// escapes and a non-ASCII character in it.
fn big_result(bytes: usize) -> Arc<String> {
    let mut out = String::from("[");
    let mut i = 0u64;
    while out.len() < bytes {
        if i > 0 {
            out.push(',');
        }
        out += &format!(
            r#"{{"address":"0x{i:040x}","topics":["0x{:064x}","0x{:064x}"],"data":"0x{}","logIndex":"0x{i:x}","removed":false,"note":"caf\u00e9 \"q\" é"}}"#,
            i * 7,
            i * 13,
            "ab".repeat(64)
        );
        i += 1;
    }
    out.push(']');
    Arc::new(out)
}

fn config(upstreams: &[&str], client: &str) -> String {
    let mut toml = format!(
        "[client]\nattempt_timeout = \"10s\"\n{client}\n[server]\nrequest_timeout = \"20s\"\n\
         [chains.mainnet]\nchain_id = 1\n[chains.mainnet.health]\nprobe_interval = \"1h\"\n\
         idle_probe_interval = \"1h\"\n"
    );
    for (k, url) in upstreams.iter().enumerate() {
        toml += &format!(
            "[[chains.mainnet.upstreams]]\nname = \"u{k}\"\nurl = \"{url}\"\ntier = {k}\n"
        );
    }
    toml
}

const CALL: &str =
    r#"{"jsonrpc":"2.0","id":"req-7","method":"eth_getBlockReceipts","params":["0x1"]}"#;

/// What the client should get for `result`.
fn expected(result: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":"req-7","result":{result}}}"#)
}

/// Sends `CALL` on a new connection; returns it with the response head read (and what came
/// after it).
async fn send(proxy: &Proxy) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!(
        "POST /mainnet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CALL}",
        CALL.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec())
                .unwrap()
                .to_ascii_lowercase();
            return (s, head, buf[end + 4..].to_vec());
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("no response head within 20s")
            .unwrap();
        assert!(n > 0, "closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads more of the response into `buf`; an error at its end or after 20 s of nothing.
async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
        .await
        .map_err(|_| "stalled".to_string())?
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed before the last chunk".to_string());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Decodes a chunked body, reading more as needed; an error if the connection ends before
/// the last chunk.
async fn read_chunked(s: &mut TcpStream, mut buf: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = loop {
            match buf.windows(2).position(|w| w == b"\r\n") {
                Some(at) => break at,
                None => more(s, &mut buf).await?,
            }
        };
        let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16)
            .map_err(|e| e.to_string())?;
        while buf.len() < line_end + 2 + size + 2 {
            more(s, &mut buf).await?;
        }
        out.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
        assert_eq!(&buf[line_end + 2 + size..line_end + 4 + size], b"\r\n");
        buf.drain(..line_end + 4 + size);
        if size == 0 {
            return Ok(out);
        }
    }
}

/// Reads a `content-length` body.
async fn read_length(s: &mut TcpStream, head: &str, mut buf: Vec<u8>) -> Vec<u8> {
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    while buf.len() < len {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    buf
}

/// Sends `CALL` through `proxy` and checks that the start of `result` arrives while the
/// upstream holds the rest back behind `gate`, then that the whole answer does once it opens.
async fn streams_before_the_gate(proxy: &Proxy, result: &str, gate: &Notify, what: &str) {
    let (mut s, head, mut body) = send(proxy).await;
    assert!(head.starts_with("http/1.1 200"), "{what}: {head}");
    assert!(
        head.contains("transfer-encoding: chunked"),
        "{what}: {head}\n{}",
        String::from_utf8_lossy(&body)
    );
    assert!(!head.contains("content-length"), "{what}: {head}");
    assert!(head.contains("x-detour-upstream: u0"), "{what}: {head}");
    // The upstream has sent part of the answer and waits: the client has its start.
    let start = format!(
        r#"{{"jsonrpc":"2.0","id":"req-7","result":{}"#,
        &result[..100]
    );
    while body.len() < start.len() + 16 {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("nothing of the result before the upstream sent all of it")
            .unwrap();
        assert!(n > 0, "{what}");
        body.extend_from_slice(&chunk[..n]);
    }
    let first_line = body.windows(2).position(|w| w == b"\r\n").unwrap();
    assert!(
        body[first_line + 2..].starts_with(start.as_bytes()),
        "{what}: {}",
        String::from_utf8_lossy(&body[..200])
    );
    gate.notify_one();
    let whole = read_chunked(&mut s, body).await.unwrap();
    assert!(whole == expected(result).as_bytes(), "{what}");
}

/// `detour_streamed_answers_total` for upstream `u0` and `outcome`.
async fn streamed_answers(proxy: &Proxy, outcome: &str) -> u64 {
    let (status, _, text) = http_request("GET", &proxy.url("/metrics"), "").await;
    assert_eq!(status, 200);
    let line = format!(
        "detour_streamed_answers_total{{chain=\"mainnet\",upstream=\"u0\",outcome=\"{outcome}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// A client that goes away mid-answer ends the stream as abandoned: the upstream is not
/// charged a failure.
#[tokio::test]
async fn a_client_that_goes_away_abandons_the_stream() {
    let result = big_result(6 << 20);
    let (script, gate) = gated(&result, 1 << 20, false);
    let up = Upstream::start(script).await;
    let proxy = Proxy::start(&config(&[&up.url()], "")).await;
    let (s, head, _) = send(&proxy).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    drop(s);
    gate.notify_one();
    let start = std::time::Instant::now();
    while streamed_answers(&proxy, "abandoned").await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the stream never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(streamed_answers(&proxy, "complete").await, 0);
    assert_eq!(streamed_answers(&proxy, "broken").await, 0);
    assert_eq!(proxy.upstream_status("u0")["failures"].as_u64(), Some(0));
    proxy.stop().await;
}

/// A script that holds the answer back after `at` bytes until its gate opens; with `geth`,
/// chunked and framed as geth frames it (other members first, whitespace around).
fn gated(result: &Arc<String>, at: usize, geth: bool) -> (Script, Arc<Notify>) {
    let gate = Arc::new(Notify::new());
    let mut script = Script::new(result);
    script.gate_after = at;
    script.gate = Some(gate.clone());
    if geth {
        script.chunked = true;
        script.head = "{\"id\":{id}, \"jsonrpc\":\"2.0\",\n \"result\": ";
        script.tail = "\n}\n";
    }
    (script, gate)
}

#[tokio::test]
async fn a_large_result_reaches_the_client_before_the_upstream_has_sent_it_all() {
    let result = big_result(6 << 20);
    for chunked in [false, true] {
        // A declared length says at once that the answer is large; a chunked answer says
        // so once stream_min_bytes (4 MiB) of it have come.
        let at = if chunked { 9 << 19 } else { 1 << 20 };
        let (script, gate) = gated(&result, at, chunked);
        let up = Upstream::start(script).await;
        let proxy = Proxy::start(&config(&[&up.url()], "")).await;
        streams_before_the_gate(&proxy, &result, &gate, &format!("chunked={chunked}")).await;
        proxy.stop().await;
    }
}

/// HTTPS upstreams (hosted providers) stream too: over HTTP/1.1 with a declared length or
/// chunked, and over HTTP/2 (no declared length: once 4 MiB have come).
#[tokio::test]
async fn https_upstreams_stream_over_http1_and_http2() {
    let result = big_result(6 << 20);
    let certs = certs("stream");
    let client = format!("ca_file = \"{}\"", certs.cert_file());
    for chunked in [false, true] {
        let at = if chunked { 9 << 19 } else { 1 << 20 };
        let (script, gate) = gated(&result, at, chunked);
        let up = Upstream::start_tls(script, &certs).await;
        let proxy = Proxy::start(&config(&[&up.tls_url()], &client)).await;
        let what = format!("https, HTTP/1.1, chunked={chunked}");
        streams_before_the_gate(&proxy, &result, &gate, &what).await;
        proxy.stop().await;
    }
    let (script, gate) = gated(&result, 9 << 19, false);
    let up = H2Upstream::start(script, &certs).await;
    let proxy = Proxy::start(&config(&[&up.url()], &client)).await;
    streams_before_the_gate(&proxy, &result, &gate, "https, HTTP/2").await;
    // The same bytes as with streaming off.
    let (mut s, head, body) = send(&proxy).await;
    gate.notify_one();
    let streamed = read_chunked(&mut s, body).await.unwrap();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    proxy.stop().await;
    let proxy = Proxy::start(&config(
        &[&up.url()],
        &format!("{client}\nstream_min_bytes = 0"),
    ))
    .await;
    // Read whole, the answer comes only after the gate: open it ahead (a stored permit).
    gate.notify_one();
    let (mut s, head, body) = send(&proxy).await;
    let whole = read_length(&mut s, &head, body).await;
    assert!(streamed == whole, "{head}");
    proxy.stop().await;
}

/// An HTTP/2 upstream that resets the stream mid-answer: the client's connection is cut
/// before the last chunk, the upstream is charged a failure, and the upstream's connection
/// carries the next calls (only the stream was reset).
#[tokio::test]
async fn a_reset_http2_stream_cuts_the_client_and_keeps_the_connection() {
    let result = big_result(6 << 20);
    let certs = certs("stream-reset");
    let client = format!("ca_file = \"{}\"", certs.cert_file());
    let script = Script {
        cut_at: Some(5 << 20),
        ..Script::new(&result)
    };
    let up = H2Upstream::start(script, &certs).await;
    let proxy = Proxy::start(&config(&[&up.url()], &client)).await;
    let v = proxy.call("/mainnet", "eth_blockNumber", "[]").await;
    assert_eq!(v["result"], "0x64", "{v}");
    let connections = up.accepted.load(SeqCst);
    let (mut s, head, body) = send(&proxy).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let got = read_chunked(&mut s, body).await;
    assert_eq!(got.unwrap_err(), "connection closed before the last chunk");
    eventually("the reset answer counted as a failure", || {
        proxy.upstream_status("u0")["failures"].as_u64() >= Some(1)
    })
    .await;
    let v = proxy.call("/mainnet", "eth_blockNumber", "[]").await;
    assert_eq!(v["result"], "0x64", "{v}");
    assert_eq!(
        up.accepted.load(SeqCst),
        connections,
        "the connection carried on"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn the_streamed_answer_is_the_whole_answer_byte_for_byte() {
    let result = big_result(5 << 20);
    let up = Upstream::start(Script::new(&result)).await;
    // Streamed, and (with streaming off) whole: the same bytes.
    let proxy = Proxy::start(&config(&[&up.url()], "")).await;
    let (mut s, head, body) = send(&proxy).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let streamed = read_chunked(&mut s, body).await.unwrap();
    assert_eq!(streamed_answers(&proxy, "complete").await, 1);
    assert_eq!(streamed_answers(&proxy, "broken").await, 0);
    proxy.stop().await;
    let proxy = Proxy::start(&config(&[&up.url()], "stream_min_bytes = 0")).await;
    let (mut s, head, body) = send(&proxy).await;
    assert!(!head.contains("transfer-encoding"), "{head}");
    let whole = read_length(&mut s, &head, body).await;
    assert!(streamed == whole);
    assert!(whole == expected(&result).as_bytes());
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_that_breaks_off_cuts_the_clients_connection() {
    let result = big_result(6 << 20);
    // Closed mid-answer; then an answer whose brackets do not match, past its start.
    let mut broken = result.as_str().to_owned();
    let at = (3 << 20) + result[3 << 20..].find(r#"{"address""#).unwrap();
    broken.replace_range(at..at + 1, "}");
    let broken_json = Arc::new(broken);
    for (script, what) in [
        (
            Script {
                cut_at: Some(2 << 20),
                ..Script::new(&result)
            },
            "cut",
        ),
        (Script::new(&broken_json), "malformed"),
        (
            Script {
                tail: "}garbage",
                ..Script::new(&result)
            },
            "trailing garbage",
        ),
    ] {
        let up = Upstream::start(script).await;
        let proxy = Proxy::start(&config(&[&up.url()], "")).await;
        let (mut s, head, body) = send(&proxy).await;
        assert!(head.starts_with("http/1.1 200"), "{what}: {head}");
        let got = read_chunked(&mut s, body).await;
        assert_eq!(
            got.unwrap_err(),
            "connection closed before the last chunk",
            "{what}"
        );
        // The upstream's failure counts against it, as a malformed answer would.
        eventually("the broken answer counted as a failure", || {
            proxy.upstream_status("u0")["failures"].as_u64() >= Some(1)
        })
        .await;
        assert_eq!(streamed_answers(&proxy, "broken").await, 1, "{what}");
        assert_eq!(streamed_answers(&proxy, "complete").await, 0, "{what}");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn failover_happens_before_the_result_begins() {
    let result = big_result(5 << 20);
    // The first upstream refuses with a 503, the second answers with another id (not
    // streamed, and not an answer to the call), the third streams.
    let refusing = Upstream::start(Script {
        status: 503,
        head: "busy",
        result: Arc::new(String::new()),
        tail: "",
        ..Script::new(&result)
    })
    .await;
    let wrong_id = Upstream::start(Script {
        head: r#"{"jsonrpc":"2.0","id":99,"result":"#,
        ..Script::new(&result)
    })
    .await;
    let good = Upstream::start(Script::new(&result)).await;
    let toml = config(&[&refusing.url(), &wrong_id.url(), &good.url()], "")
        + "[chains.mainnet.hedge]\nenabled = false\n";
    let proxy = Proxy::start(&toml).await;
    let (mut s, head, body) = send(&proxy).await;
    assert!(head.contains("x-detour-upstream: u2"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let got = read_chunked(&mut s, body).await.unwrap();
    assert!(got == expected(&result).as_bytes());
    assert_eq!(refusing.big_calls.load(SeqCst), 1);
    assert_eq!(wrong_id.big_calls.load(SeqCst), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn streamed_answers_are_not_cached_and_small_ones_are_whole() {
    let result = big_result(5 << 20);
    let up = Upstream::start(Script::new(&result)).await;
    let proxy = Proxy::start(&config(&[&up.url()], "")).await;
    for _ in 0..2 {
        let (mut s, head, body) = send(&proxy).await;
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        read_chunked(&mut s, body).await.unwrap();
    }
    assert_eq!(up.big_calls.load(SeqCst), 2, "a streamed answer was cached");
    proxy.stop().await;

    // Under the threshold: whole, with a content-length, as before.
    let small = big_result(100_000);
    let up = Upstream::start(Script::new(&small)).await;
    let proxy = Proxy::start(&config(&[&up.url()], "")).await;
    let (mut s, head, body) = send(&proxy).await;
    assert!(head.contains("content-length"), "{head}");
    assert!(read_length(&mut s, &head, body).await == expected(&small).as_bytes());
    proxy.stop().await;
}

#[tokio::test]
async fn paths_that_do_not_stream_answer_whole() {
    let result = big_result(5 << 20);
    let up = Upstream::start(Script::new(&result)).await;
    let proxy = Proxy::start(&config(&[&up.url()], "")).await;
    // The library call.
    let whole = proxy
        .detour
        .handle_jsonrpc("mainnet", CALL.as_bytes())
        .await
        .unwrap()
        .unwrap();
    assert!(whole == expected(&result).as_bytes());
    // A common client (hyper's) reads a streamed answer as any other.
    let (status, headers, text) = http_request("POST", &proxy.url("/mainnet"), CALL).await;
    assert_eq!(status, 200);
    assert!(!headers.contains_key("content-length"), "{headers:?}");
    assert!(text.as_bytes() == expected(&result).as_bytes());
    // A batch of one is not streamed either.
    let batch = format!("[{CALL}]");
    let (status, headers, text) = http_request("POST", &proxy.url("/mainnet"), &batch).await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("content-length"), "{headers:?}");
    assert!(text == format!("[{}]", expected(&result)));
    proxy.stop().await;
}
