//! What detour adds to a request: sequential latency direct vs through detour, against the same
//! fast local mock upstream, plus detour's CPU time per request and peak RSS.
//!
//! ```text
//! cargo build --release --bin detour && cargo run --release --example overhead
//! cargo run --release --example overhead -- --requests 20000 --rounds 7 --workers 1
//! # pinned: load generator and mock on CPU 0, detour on CPU 1
//! taskset -c 0 target/release/examples/overhead --workers 1 --detour-cpus 1
//! # the response cache: every call answered from it, or every call a miss
//! cargo run --release --example overhead -- --cache hit
//! cargo run --release --example overhead -- --cache miss
//! cargo run --release --example overhead -- --quota
//! cargo run --release --example overhead -- --redis redis://127.0.0.1:6379
//! cargo run --release --example overhead -- --block-number --redis redis://127.0.0.1:6379
//! ```
//!
//! `--cache off` (the default) measures the proxied path with `[cache] enabled = false`;
//! `--cache hit` sends the same `eth_call` at `latest` every time, answered from the cache once
//! detour follows the chain (the mock serves a block whose head never moves); `--cache miss`
//! gives every request other call data, so every lookup misses and every answer is stored.
//! `--redis URL` shares state through that Redis (`[shared]`), as replicas would.
//! `--block-number` sends `eth_blockNumber` instead of `eth_call` (with `--redis`, each answer
//! takes one round trip to Redis: the shared highest block).
//! `--quota` gives the upstream `max_rps` and `compute_units_per_second` far above the load:
//! every send takes room in both, none ever waits (the cost of an active quota).
//!
//! The mock upstream and the client run in this process (one thread each); detour runs as its own
//! process (the release binary, `DETOUR_BIN` to override), so its CPU time can be read from
//! `/proc/<pid>/stat`. Each round measures direct and proxied in alternating order; the report
//! gives the median over rounds of each round's p50/p99/p99.9 and of the per-round added p50.
//! Loopback only; bounded by the request count.

#[path = "support/process.rs"]
mod process;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

const BODY: &str = r#"{"jsonrpc":"2.0","id":7,"method":"eth_call","params":[{"to":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48","data":"0x70a08231000000000000000000000000f39fd6e51aad88f6f4ce6ab8827279cfffb92266"},"latest"]}"#;
const BLOCK_NUMBER: &str = r#"{"jsonrpc":"2.0","id":7,"method":"eth_blockNumber","params":[]}"#;

fn main() {
    let mut requests = 10_000usize;
    let mut rounds = 5usize;
    let mut workers = 0usize;
    let mut detour_cpus: Option<String> = None;
    let mut cache = Cache::Off;
    let mut quota = false;
    let mut redis: Option<String> = None;
    let mut block_number = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--requests" => requests = value(),
            "--rounds" => rounds = value(),
            "--workers" => workers = value(),
            "--detour-cpus" => detour_cpus = args.next(),
            "--quota" => quota = true,
            "--redis" => redis = args.next(),
            "--block-number" => block_number = true,
            "--cache" => {
                cache = match args.next().as_deref() {
                    Some("off") => Cache::Off,
                    Some("hit") => Cache::Hit,
                    Some("miss") => Cache::Miss,
                    other => panic!("--cache takes off, hit or miss, not {other:?}"),
                }
            }
            other => panic!("unknown argument {other} (use --requests N --rounds N --workers N --detour-cpus LIST --cache off|hit|miss --quota --redis URL --block-number)"),
        }
    }
    let upstream = start_mock();
    let mut detour = start_detour(
        upstream,
        workers,
        detour_cpus.as_deref(),
        cache,
        quota,
        redis.as_deref(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(measure(
        upstream,
        detour.addr,
        detour.child.id(),
        requests,
        rounds,
        cache,
        block_number,
    ));
    let rss = process::memory_kib(detour.child.id(), "VmHWM:");
    // SIGTERM: detour shuts down gracefully (and tools such as callgrind get to write output).
    let _ = Command::new("kill")
        .args(["-TERM", &detour.child.id().to_string()])
        .status();
    let _ = detour.child.wait();
    println!(
        "detour server.worker_threads = {workers} (0: one per core, {} here); cache {cache:?}",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    report.print(rss, requests, rounds);
}

/// What the cache does in the run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cache {
    /// `[cache] enabled = false`: the proxied path.
    Off,
    /// The same call every time: answered from the cache.
    Hit,
    /// Every call different: every lookup misses, every answer is stored.
    Miss,
}

struct Report {
    direct: Vec<[f64; 3]>,
    proxied: Vec<[f64; 3]>,
    added_p50: Vec<f64>,
    cpu_us_per_req: Vec<f64>,
}

impl Report {
    fn print(&self, rss_kib: Option<u64>, requests: usize, rounds: usize) {
        let med = |v: Vec<f64>| median(v);
        let col = |rows: &Vec<[f64; 3]>, k: usize| med(rows.iter().map(|r| r[k]).collect());
        println!("sequential requests, 1 keep-alive connection, {requests} per target in {rounds} rounds");
        println!("(medians over rounds; latency in µs)");
        println!("| target  |    p50 |    p99 |  p99.9 |");
        println!("|---------|-------:|-------:|-------:|");
        for (name, rows) in [("direct", &self.direct), ("detour", &self.proxied)] {
            println!(
                "| {name:7} | {:6.1} | {:6.1} | {:6.1} |",
                col(rows, 0),
                col(rows, 1),
                col(rows, 2)
            );
        }
        println!(
            "added p50: {:.1} µs (per-round: {:?})",
            med(self.added_p50.clone()),
            round1(&self.added_p50)
        );
        println!(
            "detour CPU per request: {:.1} µs (per-round: {:?})",
            med(self.cpu_us_per_req.clone()),
            round1(&self.cpu_us_per_req)
        );
        if let Some(kib) = rss_kib {
            println!("detour peak RSS: {:.1} MiB", kib as f64 / 1024.0);
        }
    }
}

fn round1(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 10.0).round() / 10.0).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    [at(0.50), at(0.99), at(0.999)]
}

async fn measure(
    upstream: SocketAddr,
    proxy: SocketAddr,
    pid: u32,
    requests: usize,
    rounds: usize,
    cache: Cache,
    block_number: bool,
) -> Report {
    let mut direct = Conn::open(upstream, "/", Cache::Off).await;
    let mut proxied = Conn::open(proxy, "/bench", cache).await;
    direct.block_number = block_number;
    proxied.block_number = block_number;
    if cache == Cache::Hit {
        // Until detour follows the chain (it starts once the reads come often enough) and
        // answers from the cache.
        let started = Instant::now();
        while !proxied.once().await {
            assert!(
                started.elapsed().as_secs() < 30,
                "detour never answered from the cache"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    for _ in 0..500 {
        direct.once().await;
        proxied.once().await;
    }
    let per_round = requests / rounds;
    let mut report = Report {
        direct: vec![],
        proxied: vec![],
        added_p50: vec![],
        cpu_us_per_req: vec![],
    };
    for round in 0..rounds {
        let (d, p, cpu) = if round % 2 == 0 {
            let d = direct.run(per_round).await;
            let before = process::cpu_ticks(pid);
            let p = proxied.run(per_round).await;
            (d, p, process::cpu_ticks(pid) - before)
        } else {
            let before = process::cpu_ticks(pid);
            let p = proxied.run(per_round).await;
            let cpu = process::cpu_ticks(pid) - before;
            (direct.run(per_round).await, p, cpu)
        };
        let (d, p) = (percentiles(d), percentiles(p));
        report.added_p50.push(p[0] - d[0]);
        report.direct.push(d);
        report.proxied.push(p);
        report
            .cpu_us_per_req
            .push(cpu as f64 * 1e6 / process::clock_ticks() as f64 / per_round as f64);
        eprint!(".");
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    report
}

/// One keep-alive HTTP/1.1 connection sending requests one at a time.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &'static str,
    addr: SocketAddr,
    cache: Cache,
    sent: u64,
    /// `eth_blockNumber` rather than `eth_call`.
    block_number: bool,
}

impl Conn {
    async fn open(addr: SocketAddr, path: &'static str, cache: Cache) -> Conn {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn {
            sender,
            path,
            addr,
            cache,
            sent: 0,
            block_number: false,
        }
    }

    /// Sends one call; whether it was answered from detour's cache.
    async fn once(&mut self) -> bool {
        self.sent += 1;
        let body = match self.cache {
            _ if self.block_number => Bytes::from_static(BLOCK_NUMBER.as_bytes()),
            // Other call data each time: a key the cache has not seen.
            Cache::Miss => Bytes::from(BODY.replace("f39fd6e5", &format!("{:08x}", self.sent))),
            _ => Bytes::from_static(BODY.as_bytes()),
        };
        let req = Request::post(self.path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap();
        let resp = self.sender.send_request(req).await.expect("request");
        assert_eq!(resp.status(), 200);
        let hit = resp
            .headers()
            .get("x-detour-cache")
            .is_some_and(|v| v == "hit");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            (body.len() > 500 || self.block_number)
                && body.starts_with(b"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\""),
            "{body:?}"
        );
        hit
    }

    async fn run(&mut self, n: usize) -> Vec<f64> {
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            self.once().await;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat
    }
}

// === The mock upstream: answers any call with a ~500-byte result, echoing the id ===

fn start_mock() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                s.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(mock_answer);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    addr
}

async fn mock_answer(
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let id = extract_id(&body).unwrap_or(b"null");
    let mut out = Vec::with_capacity(600);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id);
    // detour's health probes (chain id, head) get real quantities; everything else 500 bytes.
    let contains = |m: &[u8]| body.windows(m.len()).any(|w| w == m);
    if contains(b"\"eth_chainId\"") {
        out.extend_from_slice(b",\"result\":\"0x1\"}");
    } else if contains(b"\"eth_getBlockByNumber\"") {
        // The head, 0x1000, which never moves: detour can follow the chain.
        out.extend_from_slice(br#","result":{"hash":"0x00000000000000000000000000000000000000000000000000000000000010aa","logsBloom":"0x00","number":"0x1000","parentHash":"0x0000000000000000000000000000000000000000000000000000000000000fff","transactions":[]}}"#);
    } else if contains(b"\"eth_blockNumber\"") {
        out.extend_from_slice(b",\"result\":\"0x1000\"}");
    } else {
        out.extend_from_slice(b",\"result\":\"0x");
        out.extend(std::iter::repeat_n(b'0', 500));
        out.extend_from_slice(b"\"}");
    }
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

fn extract_id(body: &[u8]) -> Option<&[u8]> {
    let start = body.windows(5).position(|w| w == b"\"id\":")? + 5;
    let len = body[start..].iter().position(|&b| b == b',' || b == b'}')?;
    Some(&body[start..start + len])
}

// === detour as a child process ===

struct Detour {
    child: Child,
    addr: SocketAddr,
}

fn start_detour(
    upstream: SocketAddr,
    workers: usize,
    cpus: Option<&str>,
    cache: Cache,
    quota: bool,
    redis: Option<&str>,
) -> Detour {
    let bin = std::env::var("DETOUR_BIN").unwrap_or_else(|_| "target/release/detour".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = std::env::temp_dir().join(format!("detour-overhead-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\nworker_threads = {workers}\n{}[cache]\nenabled = {}\n[chains.bench]\nchain_id = 1\n[[chains.bench.upstreams]]\nname = \"mock\"\nurl = \"http://{upstream}\"\n{}",
            redis.map_or(String::new(), |url| format!("[shared]\nredis_url = \"{url}\"\n")),
            cache != Cache::Off,
            // Quotas far above the load: every send takes room in them, none waits.
            if quota {
                "max_rps = 1000000000\ncompute_units_per_second = 4000000000\n"
            } else {
                ""
            }
        ),
    )
    .unwrap();
    // With --detour-cpus, detour runs under `taskset -c LIST` (taskset execs it: same pid).
    let mut cmd = match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.args(["-c", list]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let child = cmd
        .arg("--config")
        .arg(&config)
        // DETOUR_BENCH_RUST_LOG=info measures with the access log on.
        .env(
            "RUST_LOG",
            std::env::var("DETOUR_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin} ({e}); build it first: cargo build --release --bin detour")
        });
    process::wait_listening(addr);
    Detour { child, addr }
}
