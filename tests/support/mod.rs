//! Test support: a scriptable in-process mock upstream on 127.0.0.1:0, a proxy started on port
//! 0, and a small HTTP client. Nothing here reaches beyond loopback.
#![allow(dead_code)]

pub mod chain;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// What a mock does with a request (HTTP-level behaviours apply to the whole request and are
/// chosen by its first call's method).
#[derive(Clone, Debug)]
pub enum Reply {
    /// Per call: `{"result": <raw>}`.
    Result(String),
    /// Per call: `{"error": {"code": .., "message": ..}}`.
    Error(i64, String),
    /// Whole request: this HTTP status and raw body, with extra headers.
    Status(u16, String, Vec<(&'static str, String)>),
    /// Whole request: this raw body with status 200.
    Raw(String),
    /// Wait, then behave as the inner reply.
    Delay(Duration, Box<Reply>),
    /// Whole request: never answer.
    Hang,
    /// Whole request: close the connection without answering.
    Close,
}

impl Reply {
    pub fn result(raw: &str) -> Reply {
        Reply::Result(raw.to_owned())
    }
    pub fn error(code: i64, message: &str) -> Reply {
        Reply::Error(code, message.to_owned())
    }
    pub fn status(code: u16) -> Reply {
        Reply::Status(code, format!("upstream says {code}"), vec![])
    }
    pub fn delay(ms: u64, then: Reply) -> Reply {
        Reply::Delay(Duration::from_millis(ms), Box::new(then))
    }
}

struct Rule {
    method: Option<String>,
    times: Option<usize>,
    reply: Reply,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    /// Every call received, in order (parsed JSON of each request object).
    calls: Vec<Value>,
    /// Every HTTP body received.
    bodies: Vec<String>,
    /// Every request's headers.
    headers: Vec<http::HeaderMap>,
    /// Answer batches in reverse order (JSON-RPC allows any order).
    reverse_batches: bool,
    /// Health probes received (their methods), kept apart from `calls`.
    probes: Vec<String>,
    /// What probes get instead of the defaults below (e.g. `Hang`, a status, an error).
    probe_reply: Option<Reply>,
    /// `eth_chainId` probes are answered with this (default 1, the test chain's id).
    chain_id: u64,
    /// `eth_blockNumber` probes are answered with this (default 100).
    head: u64,
    /// When each HTTP request arrived, probes included: how many calls it carried and its
    /// first call's method.
    arrivals: Vec<Arrival>,
}

/// When a request arrived at a mock, how many calls it carried, its first call's method.
pub type Arrival = (std::time::Instant, usize, String);

/// A mock JSON-RPC upstream.
pub struct Mock {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _stop: oneshot::Sender<()>,
}

impl Mock {
    /// Starts a mock whose default answer to any method is its own name as a JSON string.
    pub async fn start(name: &str) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            chain_id: 1,
            head: 100,
            ..State::default()
        }));
        let st = state.clone();
        let default = Reply::Result(format!("\"{name}\""));
        let stop = serve_http1(listener, move |req| {
            handle(st.clone(), default.clone(), req)
        });
        Mock {
            name: name.into(),
            addr,
            state,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Scripts every call of `method` (until replaced or shadowed by an earlier rule).
    pub fn on(&self, method: &str, reply: Reply) -> &Self {
        self.push(Some(method), None, reply)
    }

    /// Scripts the next `times` calls of `method`.
    pub fn times(&self, method: &str, times: usize, reply: Reply) -> &Self {
        self.push(Some(method), Some(times), reply)
    }

    /// Scripts every call of any method not matched by another rule.
    pub fn always(&self, reply: Reply) -> &Self {
        self.push(None, None, reply)
    }

    fn push(&self, method: Option<&str>, times: Option<usize>, reply: Reply) -> &Self {
        let mut s = self.state.lock().unwrap();
        // Specific and counted rules are consulted first; later `always` rules replace earlier ones.
        if method.is_none() && times.is_none() {
            s.rules.retain(|r| r.method.is_some() || r.times.is_some());
        }
        let rule = Rule {
            method: method.map(str::to_owned),
            times,
            reply,
        };
        if times.is_some() {
            s.rules.insert(0, rule);
        } else {
            s.rules.push(rule);
        }
        self
    }

    /// Health probes answer with this from now on (`None`: the defaults again).
    pub fn probe_reply(&self, reply: Option<Reply>) {
        self.state.lock().unwrap().probe_reply = reply;
    }

    /// The chain id `eth_chainId` probes get.
    pub fn set_chain_id(&self, id: u64) {
        self.state.lock().unwrap().chain_id = id;
    }

    /// The head `eth_blockNumber` probes get.
    pub fn set_head(&self, head: u64) {
        self.state.lock().unwrap().head = head;
    }

    /// Methods of the health probes received so far.
    pub fn probes(&self) -> Vec<String> {
        self.state.lock().unwrap().probes.clone()
    }

    pub fn reverse_batches(&self) {
        self.state.lock().unwrap().reverse_batches = true;
    }

    /// Calls received so far.
    pub fn calls(&self) -> Vec<Value> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Methods of the calls received so far.
    pub fn methods(&self) -> Vec<String> {
        self.calls()
            .iter()
            .map(|c| c["method"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// HTTP bodies received so far.
    pub fn bodies(&self) -> Vec<String> {
        self.state.lock().unwrap().bodies.clone()
    }

    /// Request headers received so far.
    pub fn headers(&self) -> Vec<http::HeaderMap> {
        self.state.lock().unwrap().headers.clone()
    }

    /// When each HTTP request (probes included) arrived, how many calls it carried and its
    /// first call's method.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state.lock().unwrap().arrivals.clone()
    }

    pub fn hits(&self) -> usize {
        self.state.lock().unwrap().bodies.len()
    }
}

fn pick(state: &mut State, method: &str, default: &Reply) -> Reply {
    // Rules for this method first (counted ones were inserted first), then catch-all rules.
    let i = state
        .rules
        .iter()
        .position(|r| r.method.as_deref() == Some(method))
        .or_else(|| state.rules.iter().position(|r| r.method.is_none()));
    let Some(i) = i else { return default.clone() };
    let r = &mut state.rules[i];
    let reply = r.reply.clone();
    if let Some(t) = &mut r.times {
        *t -= 1;
        if *t == 0 {
            state.rules.remove(i);
        }
    }
    reply
}

async fn handle(
    state: Arc<Mutex<State>>,
    default: Reply,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let arrived = std::time::Instant::now();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (calls, batch) = match &parsed {
        Value::Array(v) => (v.clone(), true),
        v => (vec![v.clone()], false),
    };
    let first = calls[0]["method"].as_str().unwrap_or("").to_owned();
    state
        .lock()
        .unwrap()
        .arrivals
        .push((arrived, calls.len(), first));
    if headers.contains_key("x-detour-probe") {
        let method = calls[0]["method"].as_str().unwrap_or("").to_owned();
        let reply = {
            let mut s = state.lock().unwrap();
            s.probes.push(method.clone());
            s.probe_reply
                .clone()
                .unwrap_or_else(|| match method.as_str() {
                    "eth_chainId" => Reply::Result(format!("\"0x{:x}\"", s.chain_id)),
                    _ => Reply::Result(format!("\"0x{:x}\"", s.head)),
                })
        };
        return answer(reply, &calls, false, batch).await;
    }
    let (replies, reverse) = {
        let mut s = state.lock().unwrap();
        s.bodies.push(text);
        s.headers.push(headers);
        s.calls.extend(calls.iter().cloned());
        let replies: Vec<Reply> = calls
            .iter()
            .map(|c| pick(&mut s, c["method"].as_str().unwrap_or(""), &default))
            .collect();
        (replies, s.reverse_batches)
    };
    let first = replies.first().cloned().unwrap_or(default);
    respond(first, &calls, &replies, reverse, batch).await
}

/// Answers every call with `reply`.
async fn answer(
    reply: Reply,
    calls: &[Value],
    reverse: bool,
    batch: bool,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let replies = vec![reply.clone(); calls.len()];
    respond(reply, calls, &replies, reverse, batch).await
}

async fn respond(
    mut first: Reply,
    calls: &[Value],
    replies: &[Reply],
    reverse: bool,
    batch: bool,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    loop {
        match first {
            Reply::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                first = *inner;
            }
            Reply::Hang => std::future::pending::<()>().await,
            Reply::Close => return Err(std::io::Error::other("mock closes the connection")),
            Reply::Raw(body) => return Ok(json_response(200, body, &[])),
            Reply::Status(code, body, headers) => return Ok(json_response(code, body, &headers)),
            Reply::Result(_) | Reply::Error(..) => break,
        }
    }
    let mut out: Vec<String> = calls
        .iter()
        .zip(replies)
        .filter(|(c, _)| c.get("id").is_some())
        .map(|(c, r)| {
            let id = c["id"].to_string();
            let mut r = r.clone();
            while let Reply::Delay(_, inner) = r {
                r = *inner;
            }
            match r {
                Reply::Error(code, msg) => format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{}}}}}"#,
                    serde_json::to_string(&msg).unwrap()
                ),
                Reply::Result(raw) => format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{raw}}}"#),
                _ => format!(r#"{{"jsonrpc":"2.0","id":{id},"result":null}}"#),
            }
        })
        .collect();
    if reverse {
        out.reverse();
    }
    let body = if batch {
        format!("[{}]", out.join(","))
    } else {
        out.pop().unwrap_or_default()
    };
    Ok(json_response(200, body, &[]))
}

fn json_response(
    code: u16,
    body: String,
    headers: &[(&'static str, String)],
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    for (k, v) in headers {
        resp.headers_mut().insert(*k, v.parse().unwrap());
    }
    resp
}

/// Serves HTTP/1.1 on `listener` with `answer` until the returned sender is dropped.
pub fn serve_http1<F, Fut>(listener: TcpListener, answer: F) -> oneshot::Sender<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, std::io::Error>>
        + Send
        + 'static,
{
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = &mut stopped => return,
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(answer);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    stop
}

/// An address where nothing listens: connecting is refused.
pub async fn refused_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// A running proxy on 127.0.0.1:0.
pub struct Proxy {
    pub addr: SocketAddr,
    pub detour: detour::Detour,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Proxy {
    /// Starts detour with this TOML configuration (its `server.listen` is ignored).
    pub async fn start(toml: &str) -> Proxy {
        let config = detour::Config::from_toml(toml).unwrap_or_else(|e| panic!("config: {e}"));
        Self::serve(detour::Detour::new(config).unwrap()).await
    }

    /// Serves an already-built proxy on 127.0.0.1:0.
    pub async fn serve(detour: detour::Detour) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(detour::serve(listener, detour.clone(), async {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            detour,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a JSON body to `path`; returns status and body text.
    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let (status, _, body) = http_request("POST", &self.url(path), body).await;
        (status, body)
    }

    /// POSTs and parses the answer as JSON (panics if it is not).
    pub async fn rpc(&self, path: &str, body: &str) -> Value {
        let (status, text) = self.post(path, body).await;
        assert_eq!(status, 200, "status for {body}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Sends one call; returns the response object and the upstream(s) that answered.
    pub async fn call_via(&self, path: &str, method: &str, params: &str) -> (Value, String) {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#);
        let (status, headers, text) = http_request("POST", &self.url(path), &body).await;
        assert_eq!(status, 200, "status for {body}: {text}");
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        let by = headers
            .get("x-detour-upstream")
            .map(|h| h.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (v, by)
    }

    /// The status entry of upstream `name` of the first chain.
    pub fn upstream_status(&self, name: &str) -> Value {
        let status = self.detour.status();
        status["chains"][0]["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no upstream {name} in {status}"))
    }

    /// The states of upstream `name` (empty: healthy).
    pub fn states(&self, name: &str) -> Vec<String> {
        self.upstream_status(name)["states"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }

    /// Sends one call and returns the whole response object.
    pub async fn call(&self, path: &str, method: &str, params: &str) -> Value {
        self.rpc(
            path,
            &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#),
        )
        .await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// Upstream TOML for a single chain "mainnet" (chain id 1) with these `(name, url, extra)`.
pub fn chain_config(extra_chain: &str, upstreams: &[(&str, &str, &str)]) -> String {
    let mut toml = format!(
        "[client]\nattempt_timeout = \"2s\"\nconnect_timeout = \"1s\"\n[chains.mainnet]\nchain_id = 1\n{extra_chain}\n"
    );
    for (name, url, extra) in upstreams {
        toml +=
            &format!("[[chains.mainnet.upstreams]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n");
    }
    toml
}

/// One HTTP request with a fresh client; returns status, headers and body text.
pub async fn http_request(method: &str, url: &str, body: &str) -> (u16, http::HeaderMap, String) {
    http_request_with(method, url, body, &[]).await
}

/// [`http_request`] with extra request headers.
pub async fn http_request_with(
    method: &str,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("proxy did not answer within 30s")
        .expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The most calls (of `method`, or all) that arrived within any span of `window`.
#[allow(dead_code)]
pub fn busiest(arrivals: &[Arrival], method: Option<&str>, window: Duration) -> usize {
    let of: Vec<&Arrival> = arrivals
        .iter()
        .filter(|a| method.is_none_or(|m| a.2 == m))
        .collect();
    (0..of.len())
        .map(|i| {
            of[i..]
                .iter()
                .take_while(|a| a.0.duration_since(of[i].0) < window)
                .map(|a| a.1)
                .sum()
        })
        .max()
        .unwrap_or(0)
}

/// A self-signed certificate for `localhost`, written as PEM (`cert.pem`, `key.pem`) to a
/// scratch directory that is removed on drop.
pub struct Certs {
    pub dir: std::path::PathBuf,
    pub der: rustls_pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[allow(dead_code)]
pub fn certs(tag: &str) -> Certs {
    let dir = std::env::temp_dir().join(format!("detour-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    Certs {
        dir,
        der: ck.cert.der().clone(),
        key_der: ck.signing_key.serialize_der(),
    }
}

impl Certs {
    /// The certificate's PEM file, for `client.ca_file`.
    #[allow(dead_code)]
    pub fn cert_file(&self) -> String {
        self.dir.join("cert.pem").display().to_string()
    }

    /// A TLS acceptor serving this certificate, offering `alpn` (none: HTTP/1.1).
    #[allow(dead_code)]
    pub fn acceptor(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// Reads one HTTP/1.1 request (head, then a content-length body) off a bare connection, for
/// upstreams scripted byte by byte; `None` at the end of the stream.
#[allow(dead_code)]
pub async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = tokio::io::AsyncReadExt::read(s, &mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some(body);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(s, &mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
