//! Embedding detour in a Rust backend: build the proxy from configuration written in code, call
//! JSON-RPC in process (failover, no HTTP hop), and mount the proxy under `/rpc/` of the
//! backend's own hyper server next to its own routes.
//!
//! ```text
//! cargo run --example embed -- http://127.0.0.1:8546 https://provider.example/KEY
//! curl -s localhost:3000/hello
//! curl -s localhost:3000/rpc/mainnet -d '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}'
//! ```
//! Upstream URLs come from the arguments (the first is tier 0, the rest tier 1), default
//! `http://127.0.0.1:8545` (e.g. an `anvil` node).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Configuration in code. Config::from_toml validates it like a file would be.
    let mut urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        urls.push("http://127.0.0.1:8545".into());
    }
    let mut toml = String::from("[chains.mainnet]\nchain_id = 1\n");
    for (i, url) in urls.iter().enumerate() {
        let tier = if i == 0 { 0 } else { 1 };
        toml += &format!("[[chains.mainnet.upstreams]]\nname = \"upstream-{i}\"\nurl = \"{url}\"\ntier = {tier}\n");
    }
    let proxy = detour::Detour::new(detour::Config::from_toml(&toml)?)?;
    for line in proxy.describe() {
        println!("{line}");
    }

    // 2. In-process JSON-RPC: the result comes back verbatim, as raw JSON.
    match proxy.request("mainnet", "eth_blockNumber", None).await {
        Ok(head) => println!("eth_blockNumber -> {}", head.get()),
        Err(e) => println!("eth_blockNumber failed on every upstream: {e}"),
    }
    // eth_chainId is answered from the configuration, even when every upstream is down.
    println!(
        "eth_chainId -> {}",
        proxy.request("mainnet", "eth_chainId", None).await?.get()
    );

    // 3. Mount the proxy under /rpc/ in the backend's own server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("backend on http://127.0.0.1:3000 (/hello, /rpc/mainnet)");
    loop {
        let (stream, _) = listener.accept().await?;
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| route(proxy.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn route(
    proxy: detour::Detour,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/hello" {
        return Ok(Response::new(Full::new(Bytes::from_static(
            b"hello from the backend\n",
        ))));
    }
    if let Some(rest) = path.strip_prefix("/rpc") {
        // detour routes by path (/mainnet, /1): strip our prefix and hand the request over.
        let rest = if rest.is_empty() { "/" } else { rest };
        match rest.parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
        }
        return proxy.oneshot(req).await;
    }
    Ok(status(StatusCode::NOT_FOUND))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}
