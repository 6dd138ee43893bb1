//! WebSocket benchmarks against detour as its own process (the release binary, `DETOUR_BIN` to
//! override) and an in-process mock chain upstream:
//!
//! 1. **Fan-out**: `--clients N` (default 10 000) WebSocket clients subscribe to `newHeads`;
//!    the mock chain then produces `--blocks B` heads (default 20), one every 500 ms. For each
//!    head: the time from the moment detour's tracker read it from the upstream to the moment
//!    the last subscriber got its notification (fan-out), and from the moment it was produced
//!    (with `tracker.poll_interval` = 50 ms: the polling wait included). Medians and p99 over
//!    the heads; also detour's RSS per idle subscribed connection. With `--source ws` the mock
//!    also serves `newHeads` over WebSocket (its `ws_url`), detour polls at the default 1 s,
//!    and "read" is the moment the mock sent the head over its WebSocket.
//! 2. **Calls**: `--calls C` (default 20 000) sequential `eth_call`s over one WebSocket and over
//!    one HTTP/1.1 keep-alive connection, alternating in `--rounds R` (default 5) rounds:
//!    detour's CPU time per call for each (median over rounds). `--over ws|http` sends only
//!    one kind (for `scripts/ws-instructions-per-call.sh`, which counts under callgrind).
//!
//! ```text
//! cargo build --release --bin detour && cargo run --release --example websocket
//! cargo run --release --example websocket -- --clients 2000 --blocks 10 --calls 5000
//! cargo run --release --example websocket -- --source ws --clients 1000 --calls 0
//! ```
//!
//! Clients, mock and detour share the machine's cores, so the fan-out times include the
//! clients' own work. Loopback only; bounded by the counts given.

#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::Message;

const SUBSCRIBE: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}"#;

const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"eth_call","params":[{"to":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48","data":"0x70a08231000000000000000000000000f39fd6e51aad88f6f4ce6ab8827279cfffb92266"},"latest"]}"#;

fn main() {
    if let Some(i) = std::env::args().position(|a| a == "--floor-writer") {
        let args: Vec<String> = std::env::args().skip(i + 1).collect();
        raw::floor_writer(&args[0], args[1].parse().unwrap());
        return;
    }
    let (mut clients, mut blocks, mut calls, mut rounds) =
        (10_000usize, 20usize, 20_000usize, 5usize);
    let (mut ws_source, mut light, mut floor) = (false, true, false);
    let (mut over_ws, mut over_http) = (true, true);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--client" {
            light = match args.next().as_deref() {
                Some("raw") => true,
                Some("tungstenite") => false,
                other => panic!("--client raw|tungstenite, not {other:?}"),
            };
            continue;
        }
        if a == "--floor" {
            floor = true;
            continue;
        }
        if a == "--over" {
            (over_ws, over_http) = match args.next().as_deref() {
                Some("ws") => (true, false),
                Some("http") => (false, true),
                other => panic!("--over ws|http, not {other:?}"),
            };
            continue;
        }
        if a == "--source" {
            ws_source = match args.next().as_deref() {
                Some("ws") => true,
                Some("poll") => false,
                other => panic!("--source ws|poll, not {other:?}"),
            };
            continue;
        }
        let mut value = || args.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--clients" => clients = value(),
            "--blocks" => blocks = value(),
            "--calls" => calls = value(),
            "--rounds" => rounds = value(),
            other => {
                panic!("unknown argument {other} (use --clients N --blocks N --calls N --rounds N --source ws|poll --over ws|http)")
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if floor {
        rt.block_on(raw::floor(clients, blocks));
        return;
    }
    let chain = Arc::new(Chain::default());
    let (upstream, ws) = start_mock(chain.clone());
    let mut detour = start_detour(upstream, ws.filter(|_| ws_source), clients);
    rt.block_on(async {
        if clients > 0 {
            fan_out(&chain, &detour, clients, blocks, ws_source, light).await;
        }
        if calls > 0 {
            call_cost(&detour, calls, rounds, over_ws, over_http).await;
        }
    });
    let _ = Command::new("kill")
        .arg(detour.child.id().to_string())
        .status();
    // Gone before this returns (a callgrind run writes its counts on the way out).
    let _ = detour.child.wait();
}

// === the mock chain ===

/// A chain whose head the benchmark moves; it notes when detour first read each head.
#[derive(Default)]
struct Chain {
    height: AtomicU64,
    /// Per height: when it was produced, and when detour's `latest` read first returned it.
    times: Mutex<Vec<(Option<Instant>, Option<Instant>)>>,
}

impl Chain {
    fn produce(&self) -> u64 {
        let n = self.height.fetch_add(1, Relaxed) + 1;
        let mut t = self.times.lock().unwrap();
        t.resize(n as usize + 1, (None, None));
        t[n as usize].0 = Some(Instant::now());
        n
    }

    fn seen(&self, n: u64) {
        let mut t = self.times.lock().unwrap();
        if let Some(e) = t.get_mut(n as usize) {
            e.1.get_or_insert_with(Instant::now);
        }
    }
}

fn hash(n: u64) -> String {
    format!("0x{:064x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}

/// A post-Shanghai header's fields (about 1.3 KB as JSON), and an empty transaction list.
fn block(n: u64) -> String {
    format!(
        concat!(
            r#"{{"baseFeePerGas":"0x3b9aca00","blobGasUsed":"0x0","difficulty":"0x0","excessBlobGas":"0x0","#,
            r#""extraData":"0x6265617665726275696c642e6f7267","gasLimit":"0x1c9c380","gasUsed":"0xe4e1c0","#,
            r#""hash":"{h}","logsBloom":"0x{bloom}","miner":"0x95222290dd7278aa3ddd389cc1e1d165cc4bafe5","#,
            r#""mixHash":"0x{z}","nonce":"0x0000000000000000","number":"0x{n:x}","parentBeaconBlockRoot":"0x{z}","#,
            r#""parentHash":"{p}","receiptsRoot":"0x{z}","sha3Uncles":"0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347","#,
            r#""size":"0x2f1","stateRoot":"0x{z}","timestamp":"0x{t:x}","totalDifficulty":"0x0","#,
            r#""transactions":[],"transactionsRoot":"0x{z}","uncles":[],"withdrawals":[],"withdrawalsRoot":"0x{z}"}}"#
        ),
        h = hash(n),
        p = hash(n.saturating_sub(1)),
        n = n,
        t = 1_700_000_000 + n * 12,
        bloom = "0".repeat(512),
        z = "ab".repeat(32),
    )
}

/// The mock's HTTP address, and the address where it serves `newHeads` over WebSocket.
fn start_mock(chain: Arc<Chain>) -> (SocketAddr, Option<SocketAddr>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let ws_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ws_addr = ws_listener.local_addr().unwrap();
    ws_listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ws_listener = tokio::net::TcpListener::from_std(ws_listener).unwrap();
            let heads = chain.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = ws_listener.accept().await {
                    tokio::spawn(serve_heads(heads.clone(), s));
                }
            });
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                s.set_nodelay(true).unwrap();
                let chain = chain.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(chain.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    (addr, Some(ws_addr))
}

/// `newHeads` over WebSocket: answers `eth_subscribe`, then sends each new head's header (the
/// block without its transactions) within a millisecond of its production, and notes that as
/// the moment detour learned of it.
async fn serve_heads(chain: Arc<Chain>, stream: tokio::net::TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
    let sub = "0x00000000000000000000000000000001";
    let answer = format!(r#"{{"jsonrpc":"2.0","id":{},"result":"{sub}"}}"#, v["id"]);
    if ws.send(Message::text(answer)).await.is_err() {
        return;
    }
    let mut sent = chain.height.load(Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let head = chain.height.load(Relaxed);
        if head == sent {
            continue;
        }
        sent = head;
        let header = block(head).replace(r#""transactions":[],"#, "");
        let note = format!(
            r#"{{"jsonrpc":"2.0","method":"eth_subscription","params":{{"subscription":"{sub}","result":{header}}}}}"#
        );
        chain.seen(head);
        if ws.send(Message::text(note)).await.is_err() {
            return;
        }
    }
}

async fn answer(
    chain: Arc<Chain>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let head = chain.height.load(Relaxed);
    let result = match v["method"].as_str().unwrap_or("") {
        "eth_chainId" => "\"0x1\"".to_owned(),
        "eth_blockNumber" => format!("\"0x{head:x}\""),
        "eth_getBlockByNumber" => {
            chain.seen(head);
            block(head)
        }
        "eth_getBlockByHash" => {
            let want = v["params"][0].as_str().unwrap_or("");
            (head.saturating_sub(200)..=head)
                .find(|&n| hash(n) == want)
                .map_or("null".to_owned(), block)
        }
        _ => format!("\"0x{}\"", "0".repeat(64)),
    };
    let out = format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, v["id"]);
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

// === fan-out ===

/// One client's notifications: each head's number and when it arrived.
type Arrivals = Arc<Mutex<Vec<(usize, Instant)>>>;

async fn fan_out(
    chain: &Arc<Chain>,
    detour: &Detour,
    clients: usize,
    blocks: usize,
    ws_source: bool,
    light: bool,
) {
    chain.produce();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = process::memory_kib(detour.child.id(), "VmRSS:");
    // Each client notes its own arrival times (no lock shared between clients).
    let all: Arc<Mutex<Vec<Arrivals>>> = Arc::default();
    let subscribed = Arc::new(AtomicUsize::new(0));
    let url = format!("ws://{}/bench", detour.addr);
    let addr = detour.addr;
    let connecting = Arc::new(tokio::sync::Semaphore::new(100));
    let started = Instant::now();
    for _ in 0..clients {
        let received: Arrivals = Arc::default();
        all.lock().unwrap().push(received.clone());
        let (url, subscribed, connecting) = (url.clone(), subscribed.clone(), connecting.clone());
        tokio::spawn(async move {
            let permit = connecting.acquire_owned().await.unwrap();
            let on_head = |n: usize, at: Instant| received.lock().unwrap().push((n, at));
            if light {
                let mut ws = raw::Subscriber::connect(addr).await;
                drop(permit);
                subscribed.fetch_add(1, Relaxed);
                ws.heads(on_head).await;
            } else {
                let (ws, _) = tokio_tungstenite::connect_async(&url)
                    .await
                    .expect("connect");
                let ws = subscribe_tungstenite(ws).await;
                drop(permit);
                subscribed.fetch_add(1, Relaxed);
                tungstenite_heads(ws, on_head).await;
            }
        });
    }
    while subscribed.load(Relaxed) < clients {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "clients did not all subscribe"
        );
    }
    println!(
        "{clients} clients connected and subscribed to newHeads in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = process::memory_kib(detour.child.id(), "VmRSS:");
    let first = chain.height.load(Relaxed) + 1;
    let cpu = process::cpu_ticks(detour.child.id());
    let own_cpu = process::cpu_ticks(std::process::id());
    for _ in 0..blocks {
        chain.produce();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cpu = process::cpu_ticks(detour.child.id()) - cpu;
    let own_cpu = process::cpu_ticks(std::process::id()) - own_cpu;
    let times = chain.times.lock().unwrap().clone();
    let mut received: Vec<Vec<Instant>> = Vec::new();
    for client in all.lock().unwrap().iter() {
        for &(n, at) in client.lock().unwrap().iter() {
            if received.len() <= n {
                received.resize(n + 1, Vec::new());
            }
            received[n].push(at);
        }
    }
    let (mut fan, mut all_fan, mut e2e, mut missing) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for (n, time) in times.iter().enumerate().skip(first as usize).take(blocks) {
        let (Some(made), Some(seen)) = *time else {
            continue;
        };
        let got = received.get(n).cloned().unwrap_or_default();
        missing += clients.saturating_sub(got.len());
        let Some(last) = got.iter().max() else {
            continue;
        };
        fan.push(last.saturating_duration_since(seen).as_secs_f64() * 1e3);
        e2e.push(last.saturating_duration_since(made).as_secs_f64() * 1e3);
        all_fan.extend(
            got.iter()
                .map(|t| t.saturating_duration_since(seen).as_secs_f64() * 1e3),
        );
    }
    let pct = |mut v: Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "fan-out of {blocks} heads to {clients} subscribers ({missing} notifications missing):"
    );
    println!(
        "  tracker read → last subscriber: p50 {:.1} ms, p99 {:.1} ms",
        pct(fan.clone(), 0.5),
        pct(fan, 0.99)
    );
    println!(
        "  tracker read → each subscriber: p50 {:.1} ms, p99 {:.1} ms",
        pct(all_fan.clone(), 0.5),
        pct(all_fan, 0.99)
    );
    println!(
        "  head produced → last subscriber ({}): p50 {:.1} ms, p99 {:.1} ms",
        if ws_source {
            "heads over the upstream's WebSocket"
        } else {
            "polling every 50 ms"
        },
        pct(e2e.clone(), 0.5),
        pct(e2e, 0.99)
    );
    println!(
        "  detour CPU per notification (the whole fan-out phase, polling included): {:.1} µs",
        cpu as f64 * 1e6 / process::clock_ticks() as f64 / (blocks * clients) as f64
    );
    println!(
        "  the clients' CPU per notification (this process, the mock included): {:.1} µs",
        own_cpu as f64 * 1e6 / process::clock_ticks() as f64 / (blocks * clients) as f64
    );
    if let (Some(a), Some(b)) = (rss_before, rss_idle) {
        println!(
            "  detour RSS {a} KiB before, {b} KiB with {clients} idle subscribed connections: {:.1} KiB each",
            b.saturating_sub(a) as f64 / clients as f64
        );
    }
}

type Tungstenite =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe_tungstenite(mut ws: Tungstenite) -> Tungstenite {
    ws.send(Message::text(SUBSCRIBE)).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"result\"") => ws,
        other => panic!("eth_subscribe: {other:?}"),
    }
}

async fn tungstenite_heads(mut ws: Tungstenite, mut on_head: impl FnMut(usize, Instant)) {
    while let Some(Ok(m)) = ws.next().await {
        let Message::Text(t) = m else { continue };
        let at = Instant::now();
        if let Some(n) = raw::head_number(t.as_bytes()) {
            on_head(n, at);
        }
    }
}

// === calls over WebSocket vs HTTP ===

async fn call_cost(detour: &Detour, calls: usize, rounds: usize, ws_on: bool, http_on: bool) {
    let pid = detour.child.id();
    let tick_us = 1e6 / process::clock_ticks() as f64;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/bench", detour.addr))
        .await
        .unwrap();
    let stream = tokio::net::TcpStream::connect(detour.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut http, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (mut over_ws, mut over_http) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = process::cpu_ticks(pid);
        for _ in 0..calls * usize::from(ws_on) {
            ws.send(Message::text(CALL)).await.unwrap();
            let _ = ws.next().await.unwrap().unwrap();
        }
        over_ws.push((process::cpu_ticks(pid) - t) as f64 * tick_us / calls as f64);
        let t = process::cpu_ticks(pid);
        for _ in 0..calls * usize::from(http_on) {
            let req = Request::post("/bench")
                .header("host", "bench")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(CALL.as_bytes())))
                .unwrap();
            http.ready().await.unwrap();
            let resp = http.send_request(req).await.unwrap();
            let _ = resp.into_body().collect().await.unwrap();
        }
        over_http.push((process::cpu_ticks(pid) - t) as f64 * tick_us / calls as f64);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (w, h) = (median(over_ws.clone()), median(over_http.clone()));
    println!("eth_call, {calls} sequential calls × {rounds} rounds, detour CPU per call (median):");
    println!(
        "  over WebSocket {w:.1} µs, over HTTP/1.1 {h:.1} µs: {:.2}×",
        w / h
    );
    println!("  per round: WebSocket {over_ws:.1?}, HTTP {over_http:.1?}");
}

// === light clients, and the machine's floor ===

mod raw {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use bytes::{Buf, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// The head number in a notification, without parsing the rest.
    pub fn head_number(text: &[u8]) -> Option<usize> {
        let i = memchr::memmem::find(text, br#""number":"0x"#)? + 12;
        let digits = text[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        let hex = std::str::from_utf8(&text[i..i + digits]).ok()?;
        usize::from_str_radix(hex, 16).ok()
    }

    /// A subscriber that costs what a remote client's socket costs this machine and little
    /// more: the upgrade written by hand, then frames split by their length (a server's frames
    /// are unmasked) and the head number found in each; no UTF-8 check, no JSON parse. It
    /// stands for subscribers on other machines; `--client tungstenite` runs a full client.
    pub struct Subscriber {
        stream: TcpStream,
        buf: BytesMut,
    }

    impl Subscriber {
        pub async fn connect(addr: SocketAddr) -> Subscriber {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).unwrap();
            stream
                .write_all(
                    b"GET /bench HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                      Sec-WebSocket-Version: 13\r\n\r\n",
                )
                .await
                .unwrap();
            let mut buf = BytesMut::with_capacity(4096);
            let end = loop {
                assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
                if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                    break i + 4;
                }
            };
            assert!(buf.starts_with(b"HTTP/1.1 101"), "upgrade refused");
            buf.advance(end);
            let mut ws = Subscriber { stream, buf };
            ws.send(super::SUBSCRIBE.as_bytes()).await;
            let answer = ws.message().await.expect("an answer to eth_subscribe");
            assert!(
                memchr::memmem::find(&answer, b"\"result\"").is_some(),
                "eth_subscribe: {}",
                String::from_utf8_lossy(&answer)
            );
            ws
        }

        /// Sends a masked text frame (payload under 126 bytes).
        async fn send(&mut self, text: &[u8]) {
            let mask = [1u8, 2, 3, 4];
            let mut frame = vec![0x81, 0x80 | text.len() as u8];
            frame.extend_from_slice(&mask);
            frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            self.stream.write_all(&frame).await.unwrap();
        }

        /// The next text message's payload; `None` once the connection ends.
        async fn message(&mut self) -> Option<BytesMut> {
            loop {
                if self.buf.len() >= 2 {
                    let (opcode, len7) = (self.buf[0] & 0x0f, (self.buf[1] & 0x7f) as usize);
                    let (head, len) = match len7 {
                        126 if self.buf.len() >= 4 => {
                            (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
                        }
                        127 if self.buf.len() >= 10 => (
                            10,
                            u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        ),
                        126 | 127 => (usize::MAX, 0),
                        n => (2, n),
                    };
                    if head != usize::MAX && self.buf.len() >= head + len {
                        self.buf.advance(head);
                        let payload = self.buf.split_to(len);
                        match opcode {
                            1 => return Some(payload),
                            8 => return None,
                            _ => continue,
                        }
                    }
                }
                self.buf.reserve(4096);
                if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
        }

        /// Calls `on_head` with each notified head's number and when it arrived.
        pub async fn heads(&mut self, mut on_head: impl FnMut(usize, Instant)) {
            while let Some(m) = self.message().await {
                let at = Instant::now();
                if let Some(n) = head_number(&m) {
                    on_head(n, at);
                }
            }
        }
    }

    /// The machine's floor for a fan-out: `clients` loopback TCP connections to a child
    /// process (this program with `--floor-writer`, standing for detour), and for each of
    /// `rounds` rounds its two threads (as detour's two workers) write one 1.4 KB
    /// notification frame to each while the same light readers read them here: from the
    /// round's start to the last read.
    pub async fn floor(clients: usize, rounds: usize) {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--floor-writer", &addr.to_string(), &clients.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut to_child = child.stdin.take().unwrap();
        let mut from_child = std::io::BufReader::new(child.stdout.take().unwrap());
        let last = Arc::new(Mutex::new(Instant::now()));
        let got = Arc::new(AtomicUsize::new(0));
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        for _ in 0..clients {
            let (stream, _) = listener.accept().await.unwrap();
            let (last, got) = (last.clone(), got.clone());
            tokio::spawn(async move {
                let mut ws = Subscriber {
                    stream,
                    buf: BytesMut::new(),
                };
                ws.heads(|_, at| {
                    let mut l = last.lock().unwrap();
                    *l = (*l).max(at);
                    got.fetch_add(1, Relaxed);
                })
                .await;
            });
        }
        let mut times = Vec::new();
        let cpu = super::process::cpu_ticks(child.id());
        for _ in 0..rounds {
            tokio::time::sleep(Duration::from_millis(300)).await;
            got.store(0, Relaxed);
            let start = Instant::now();
            *last.lock().unwrap() = start;
            writeln!(to_child, "go").unwrap();
            while got.load(Relaxed) < clients {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            times.push(last.lock().unwrap().duration_since(start).as_secs_f64() * 1e3);
            let mut line = String::new();
            from_child.read_line(&mut line).unwrap();
        }
        let cpu = super::process::cpu_ticks(child.id()) - cpu;
        drop(to_child);
        let _ = child.wait();
        times.sort_by(|a, b| a.total_cmp(b));
        println!(
            "floor: one 1.4 KB frame written to each of {clients} loopback connections by another \
             process, read by light clients: p50 {:.1} ms, p99 {:.1} ms to the last; \
             the writer's CPU per frame {:.1} µs",
            times[times.len() / 2],
            times[((times.len() as f64 - 1.0) * 0.99).round() as usize],
            cpu as f64 * 1e6 / super::process::clock_ticks() as f64 / (rounds * clients) as f64
        );
    }

    /// The floor's writing side: connects `clients` times to `addr`, then at each line on stdin
    /// writes one notification frame to every connection from two threads, and answers a line.
    pub fn floor_writer(addr: &str, clients: usize) {
        use std::io::{BufRead, Write};
        let body = format!(
            r#"{{"jsonrpc":"2.0","method":"eth_subscription","params":{{"subscription":"0x{:032x}","result":{}}}}}"#,
            7,
            super::block(1).replace(r#""transactions":[],"#, "")
        );
        let mut frame = vec![0x81, 126];
        frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
        frame.extend_from_slice(body.as_bytes());
        let sockets: Vec<std::net::TcpStream> = (0..clients)
            .map(|_| {
                let s = std::net::TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                s
            })
            .collect();
        let (sockets, frame) = (Arc::new(sockets), Arc::new(frame));
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
            let writers: Vec<_> = (0..2)
                .map(|w| {
                    let (sockets, frame) = (sockets.clone(), frame.clone());
                    std::thread::spawn(move || {
                        for s in sockets.iter().skip(w).step_by(2) {
                            (&*s).write_all(&frame).unwrap();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            println!("done");
            std::io::stdout().flush().unwrap();
        }
    }
}

// === detour as a child process ===

struct Detour {
    child: Child,
    addr: SocketAddr,
}

/// Starts detour against the mock: polling every 50 ms, or with `ws` as the upstream's
/// `ws_url` and the default 1 s poll interval.
fn start_detour(upstream: SocketAddr, ws: Option<SocketAddr>, clients: usize) -> Detour {
    let bin = std::env::var("DETOUR_BIN").unwrap_or_else(|_| "target/release/detour".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = std::env::temp_dir().join(format!("detour-ws-{}.toml", std::process::id()));
    let max = clients + 100;
    let (poll, ws_url) = match ws {
        Some(ws) => ("1s", format!("ws_url = \"ws://{ws}\"\n")),
        None => ("50ms", String::new()),
    };
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\nmax_connections = {max}\naccess_log = false\n\
             [websocket]\nmax_connections = {max}\n[tracker]\npoll_interval = \"{poll}\"\n\
             [chains.bench]\nchain_id = 1\n[[chains.bench.upstreams]]\nname = \"mock\"\nurl = \"http://{upstream}\"\n{ws_url}"
        ),
    )
    .unwrap();
    let child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin} ({e}); build it first: cargo build --release --bin detour")
        });
    process::wait_listening(addr);
    Detour { child, addr }
}
