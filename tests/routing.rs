//! Paths, methods, local answers and the health endpoints.

mod support;

use serde_json::{json, Value};
use support::{chain_config, http_request, refused_url, Mock, Proxy};

fn two_chains(a: &str, b: &str) -> String {
    format!(
        r#"
        [chains.mainnet]
        chain_id = 1
        [[chains.mainnet.upstreams]]
        name = "m"
        url = "{a}"
        [chains.base]
        chain_id = 8453
        [[chains.base.upstreams]]
        name = "b"
        url = "{b}"
        "#
    )
}

#[tokio::test]
async fn chains_are_served_by_name_and_by_id() {
    let (m, b) = (Mock::start("m").await, Mock::start("b").await);
    b.set_chain_id(8453);
    let p = Proxy::start(&two_chains(&m.url(), &b.url())).await;
    for (path, who) in [
        ("/mainnet", "m"),
        ("/1", "m"),
        ("/base", "b"),
        ("/8453", "b"),
        ("/base/", "b"),
    ] {
        let v = p.call(path, "eth_blockNumber", "[]").await;
        assert_eq!(v["result"], who, "{path}");
    }
}

#[tokio::test]
async fn single_chain_is_also_served_at_root() {
    let m = Mock::start("m").await;
    let p = Proxy::start(&chain_config("", &[("m", &m.url(), "")])).await;
    assert_eq!(p.call("/", "eth_blockNumber", "[]").await["result"], "m");
}

#[tokio::test]
async fn unknown_path_is_404_listing_served_paths() {
    let (m, b) = (Mock::start("m").await, Mock::start("b").await);
    b.set_chain_id(8453);
    let p = Proxy::start(&two_chains(&m.url(), &b.url())).await;
    for path in ["/polygon", "/2", "/"] {
        let (status, text) = p
            .post(
                path,
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#,
            )
            .await;
        assert_eq!(status, 404, "{path}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], -32001);
        assert_eq!(
            v["error"]["data"]["paths"],
            json!(["/base", "/8453", "/mainnet", "/1"])
        );
        assert!(v["error"]["message"].as_str().unwrap().contains("/mainnet"));
    }
}

#[tokio::test]
async fn non_post_on_rpc_path_is_405_with_allow() {
    let m = Mock::start("m").await;
    let p = Proxy::start(&chain_config("", &[("m", &m.url(), "")])).await;
    for method in ["GET", "PUT", "DELETE"] {
        let (status, headers, _) = http_request(method, &p.url("/mainnet"), "").await;
        assert_eq!(status, 405, "{method}");
        assert_eq!(headers["allow"], "POST");
    }
}

#[tokio::test]
async fn get_root_is_an_index_of_chains() {
    let (m, b) = (Mock::start("m").await, Mock::start("b").await);
    b.set_chain_id(8453);
    let p = Proxy::start(&two_chains(&m.url(), &b.url())).await;
    let (status, _, text) = http_request("GET", &p.url("/"), "").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["chains"][1]["name"], "mainnet");
    assert_eq!(v["chains"][1]["paths"], json!(["/mainnet", "/1"]));
    assert_eq!(v["chains"][1]["upstreams"], json!(["m"]));
}

#[tokio::test]
async fn chain_id_and_net_version_are_answered_locally_even_in_a_full_outage() {
    let dead = refused_url().await;
    let p = Proxy::start(&two_chains(&dead, &dead)).await;
    let v = p.call("/mainnet", "eth_chainId", "[]").await;
    assert_eq!(v, json!({"jsonrpc":"2.0","id":1,"result":"0x1"}));
    assert_eq!(
        p.call("/base", "eth_chainId", "[]").await["result"],
        "0x2105"
    );
    assert_eq!(p.call("/base", "net_version", "[]").await["result"], "8453");
    // In a batch next to forwarded calls too.
    let m = Mock::start("m").await;
    let p = Proxy::start(&chain_config("", &[("m", &m.url(), "")])).await;
    let v = p
        .rpc("/1", r#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"}]"#)
        .await;
    assert_eq!(v[0]["result"], "0x1");
    assert_eq!(v[1]["result"], "m");
    assert_eq!(m.methods(), ["eth_blockNumber"]);
}

#[tokio::test]
async fn healthz_and_readyz() {
    let m = Mock::start("m").await;
    let dead = refused_url().await;
    let p = Proxy::start(&two_chains(&m.url(), &dead)).await;
    let (status, _, body) = http_request("GET", &p.url("/healthz"), "").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // Nothing known to be wrong yet: ready.
    let (status, _, _) = http_request("GET", &p.url("/readyz"), "").await;
    assert_eq!(status, 200);
    // The base upstream refuses connections: it is ejected, so base has no usable upstream.
    let v = p.call("/base", "eth_blockNumber", "[]").await;
    assert_eq!(v["error"]["code"], -32603);
    let (status, _, body) = http_request("GET", &p.url("/readyz"), "").await;
    assert_eq!(status, 503);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["chains_without_usable_upstream"], json!(["base"]));
    let (status, _, _) = http_request("GET", &p.url("/healthz"), "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn clients_may_speak_http2_with_prior_knowledge() {
    use http_body_util::{BodyExt, Full};
    let m = Mock::start("m").await;
    let p = Proxy::start(&chain_config("", &[("m", &m.url(), "")])).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let req = http::Request::post(p.url("/mainnet"))
        .body(Full::new(bytes::Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#,
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"jsonrpc":"2.0","id":1,"result":"m"}"#);
}

/// A client stream whose first write sends only 9 bytes and whose next write waits 100 ms: the
/// HTTP/2 preface arrives in two pieces.
struct SplitPreface {
    tcp: tokio::net::TcpStream,
    written: usize,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for SplitPreface {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SplitPreface {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(pause) = self.pause.as_mut() {
            std::task::ready!(std::future::Future::poll(pause.as_mut(), cx));
            self.pause = None;
        }
        let first = self.written == 0;
        let buf = if first { &buf[..buf.len().min(9)] } else { buf };
        let n = std::task::ready!(std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf))?;
        self.written += n;
        if first {
            self.pause = Some(Box::pin(tokio::time::sleep(
                std::time::Duration::from_millis(100),
            )));
        }
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn an_http2_preface_arriving_in_pieces_is_still_http2() {
    use http_body_util::{BodyExt, Full};
    let m = Mock::start("m").await;
    let p = Proxy::start(&chain_config("", &[("m", &m.url(), "")])).await;
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let io = SplitPreface {
        tcp,
        written: 0,
        pause: None,
    };
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(p.url("/mainnet"))
        .body(Full::new(bytes::Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#,
        )))
        .unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), tx.send_request(req))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"jsonrpc":"2.0","id":1,"result":"m"}"#);
}
