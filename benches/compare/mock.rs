//! The benchmark's upstream: a small, fast JSON-RPC node stand-in for `benches/compare/run.sh`.
//!
//! ```text
//! cargo run --release --example compare-mock -- [--listen 127.0.0.1:0]
//! ```
//!
//! One thread, HTTP/1.1 keep-alive (hyper). It prints `listening on ADDR` once bound, then
//! answers until it is killed or its stdin closes. Every answer echoes the request's `id` as
//! the same JSON text:
//!
//! - `eth_chainId` → `"0x1"` (detour's health checks ask for it);
//! - `eth_blockNumber` → a head that never moves;
//! - `eth_call` → a 500-byte result (an ABI-encoded string, as a token's `name()` might give);
//! - `eth_getBlockByNumber` → a ~14 KB block (a mainnet-sized header and 190 transaction hashes);
//!   at `0x1500001`, a post-Shanghai header with 200 transaction hashes and 16 withdrawals
//!   (~17 KB); with full transactions (`true`), 200 transaction objects (~150 KB);
//! - `eth_getBlockReceipts` → 200 receipts with 3 logs each (~500 KB);
//! - `eth_getLogs` → 1 900 logs (~1 MB);
//! - a batch → each call's answer, in order;
//! - anything else → `-32601`.
//!
//! Every payload is deterministic (a fixed pseudo-random sequence), shaped like mainnet's:
//! 32-byte hashes, 20-byte addresses, quantities without leading zeros, ABI-encoded data.
//!
//! Answers are built once at start; a request costs a body read, finding `method` and `id`, and
//! one write.
//!
//! With `--forward-to ADDR` it is instead the smallest proxy on what detour's HTTP/1 hot path
//! is built from (Tokio's current-thread runtime, `httparse`, one buffer per side): each client
//! connection gets one keep-alive connection to ADDR; every request's body is POSTed there and
//! the answer's body returned — no JSON, no routing, no failover, no metrics, no timeouts. The
//! benchmark measures it as `floor`: what a proxy on this runtime costs before doing anything.

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Buf as _;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut forward_to: Option<SocketAddr> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage("--listen needs ADDR")),
            "--forward-to" => {
                let addr = args
                    .next()
                    .unwrap_or_else(|| usage("--forward-to needs ADDR"));
                let addr = addr
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--forward-to: {addr} is not IP:PORT")));
                forward_to = Some(addr);
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    ANSWERS.get_or_init(Answers::build);
    if let Some(addr) = forward_to {
        let _ = UPSTREAM.set(addr);
    }
    let listener = std::net::TcpListener::bind(&listen)
        .unwrap_or_else(|e| usage(&format!("cannot listen on {listen}: {e}")));
    listener.set_nonblocking(true).expect("nonblocking");
    println!("listening on {}", listener.local_addr().expect("address"));
    let _ = std::io::stdout().flush();
    // Exit when stdin closes, so a crashed driver script leaves no mock behind.
    std::thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .lock()
            .read_line(&mut sink)
            .is_ok_and(|n| n > 0)
        {
            sink.clear();
        }
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            if UPSTREAM.get().is_some() {
                tokio::spawn(forward(s));
                continue;
            }
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new();
                let _ = conn
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
}

fn usage(msg: &str) -> ! {
    eprintln!("compare-mock: {msg}\nusage: compare-mock [--listen ADDR] [--forward-to IP:PORT]");
    std::process::exit(2)
}

static ANSWERS: OnceLock<Answers> = OnceLock::new();

/// The `"result":…}` tails of each answer; the head `{"jsonrpc":"2.0","id":` and the id are
/// written per request.
struct Answers {
    chain_id: Vec<u8>,
    block_number: Vec<u8>,
    call: Vec<u8>,
    block: Vec<u8>,
    header: Vec<u8>,
    full_block: Vec<u8>,
    receipts: Vec<u8>,
    logs: Vec<u8>,
    unknown: Vec<u8>,
}

impl Answers {
    fn build() -> Answers {
        let tail = |result: &str| format!(",\"result\":{result}}}").into_bytes();
        // An ABI-encoded string (offset, length, text), zero-padded to 500 bytes of JSON.
        let mut call = String::from("\"0x");
        call.push_str(&format!("{:064x}", 0x20));
        call.push_str(&format!("{:064x}", 150));
        let text: String = "detour benchmark token name, padded to a realistic size. "
            .bytes()
            .cycle()
            .take(150)
            .map(|b| format!("{b:02x}"))
            .collect();
        call.push_str(&text);
        while call.len() < 499 {
            call.push('0');
        }
        call.push('"');
        Answers {
            chain_id: tail("\"0x1\""),
            block_number: tail("\"0x1500000\""),
            call: tail(&call),
            block: tail(&block_json()),
            header: tail(&shapes::header()),
            full_block: tail(&shapes::full_block()),
            receipts: tail(&shapes::receipts()),
            logs: tail(&shapes::logs()),
            unknown: br#","error":{"code":-32601,"message":"the method does not exist/is not available"}}"#.to_vec(),
        }
    }
}

/// A mainnet-shaped block with 190 transaction hashes: ~14 KB of JSON.
fn block_json() -> String {
    let word = |seed: u64| {
        let mut s = String::from("0x");
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(&format!("{x:016x}"));
        }
        s
    };
    let addr = |seed: u64| word(seed)[..42].to_string();
    let txs: Vec<String> = (0..190)
        .map(|i| format!("\"{}\"", word(1000 + i)))
        .collect();
    format!(
        concat!(
            "{{\"baseFeePerGas\":\"0x3b9aca00\",\"blobGasUsed\":\"0x0\",\"difficulty\":\"0x0\",",
            "\"excessBlobGas\":\"0x0\",\"extraData\":\"0x6265617665726275696c642e6f7267\",",
            "\"gasLimit\":\"0x1c9c380\",\"gasUsed\":\"0xe4e1c0\",\"hash\":\"{}\",",
            "\"logsBloom\":\"0x{}\",\"miner\":\"{}\",\"mixHash\":\"{}\",\"nonce\":\"0x0000000000000000\",",
            "\"number\":\"0x1500000\",\"parentBeaconBlockRoot\":\"{}\",\"parentHash\":\"{}\",",
            "\"receiptsRoot\":\"{}\",\"sha3Uncles\":\"{}\",\"size\":\"0x2f1a4\",\"stateRoot\":\"{}\",",
            "\"timestamp\":\"0x6756a1f3\",\"totalDifficulty\":\"0xc70d815d562d3cfa955\",",
            "\"transactions\":[{}],\"transactionsRoot\":\"{}\",\"uncles\":[],\"withdrawals\":[],",
            "\"withdrawalsRoot\":\"{}\"}}"
        ),
        word(1),
        "0".repeat(512),
        addr(2),
        word(3),
        word(4),
        word(5),
        word(6),
        word(7),
        word(8),
        txs.join(","),
        word(9),
        word(10),
    )
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = Vec::new();
    if body.first() == Some(&b'[') {
        let calls: Vec<Head<'_>> = serde_json::from_slice(&body).unwrap_or_default();
        out.push(b'[');
        for (i, call) in calls.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            one(&mut out, Some(call));
        }
        out.push(b']');
    } else {
        one(
            &mut out,
            serde_json::from_slice::<Head>(&body).ok().as_ref(),
        );
    }
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Writes the answer to one call.
fn one(out: &mut Vec<u8>, head: Option<&Head<'_>>) {
    let answers = ANSWERS.get().expect("built at start");
    let id = head.map_or("null", |h| h.id.map_or("null", |r| r.get()));
    let params = head.and_then(|h| h.params).map_or("", |p| p.get());
    let tail = match head.map(|h| h.method.as_str()) {
        Some("eth_chainId") => &answers.chain_id,
        Some("eth_blockNumber") => &answers.block_number,
        Some("eth_call") => &answers.call,
        Some("eth_getBlockByNumber") if params.contains("true") => &answers.full_block,
        Some("eth_getBlockByNumber") if params.contains("0x1500001") => &answers.header,
        Some("eth_getBlockByNumber") => &answers.block,
        Some("eth_getBlockReceipts") => &answers.receipts,
        Some("eth_getLogs") => &answers.logs,
        _ => &answers.unknown,
    };
    out.reserve(24 + id.len() + tail.len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(tail);
}

#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    method: String,
    #[serde(borrow, default)]
    params: Option<&'a serde_json::value::RawValue>,
}

/// Mainnet-shaped payloads for the large answers.
mod shapes;

// === --forward-to: the floor ===

static UPSTREAM: OnceLock<SocketAddr> = OnceLock::new();

/// One client connection of the floor proxy, with its own upstream connection.
async fn forward(mut client: tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let addr = *UPSTREAM.get().expect("set at start");
    let mut upstream = tokio::net::TcpStream::connect(addr).await?;
    upstream.set_nodelay(true)?;
    let mut from_client = bytes::BytesMut::with_capacity(8192);
    let mut from_upstream = bytes::BytesMut::with_capacity(8192);
    let mut out = Vec::with_capacity(8192);
    loop {
        let Some((head, len)) = read_message(&mut client, &mut from_client, true).await? else {
            return Ok(());
        };
        let body = &from_client[head..head + len];
        out.clear();
        out.extend_from_slice(b"POST /bench HTTP/1.1\r\nhost: upstream\r\ncontent-type: application/json\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        from_client.advance(head + len);
        upstream.write_all(&out).await?;
        let Some((head, len)) = read_message(&mut upstream, &mut from_upstream, false).await?
        else {
            return Ok(());
        };
        out.clear();
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ",
        );
        out.extend_from_slice(len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&from_upstream[head..head + len]);
        from_upstream.advance(head + len);
        client.write_all(&out).await?;
    }
}

/// Reads one request (or response) with a `content-length` body into `buf`: its head's length
/// and body's length, or None at the end of the stream.
async fn read_message(
    io: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
    request: bool,
) -> std::io::Result<Option<(usize, usize)>> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let parsed = if request {
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(buf).map_err(std::io::Error::other)? {
                httparse::Status::Complete(n) => Some((n, length(r.headers))),
                httparse::Status::Partial => None,
            }
        } else {
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(buf).map_err(std::io::Error::other)? {
                httparse::Status::Complete(n) => Some((n, length(r.headers))),
                httparse::Status::Partial => None,
            }
        };
        if let Some((head, len)) = parsed {
            if buf.len() >= head + len {
                return Ok(Some((head, len)));
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn length(headers: &[httparse::Header<'_>]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .unwrap_or(0)
}
