//! The TLS listener: HTTPS with HTTP/1.1 and HTTP/2 (ALPN) using a generated certificate,
//! plain HTTP refused, renewed certificates picked up by a reload, broken files rejected.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{certs, chain_config, eventually, Certs, Mock, Proxy, Reply};

fn tls_table(c: &Certs) -> String {
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        c.dir.join("cert.pem").display(),
        c.dir.join("key.pem").display()
    )
}

/// A TLS client configuration that trusts only `trusted` and offers no ALPN protocol.
fn client_config(trusted: &Certs) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An HTTPS client that trusts only `trusted`; `h2` selects HTTP/2 by ALPN.
async fn https_call(
    port: u16,
    trusted: &Certs,
    h2: bool,
) -> Result<(http::Version, String), String> {
    let config = client_config(trusted);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build(connector);
    let req = http::Request::post(format!("https://localhost:{port}/mainnet"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#,
        )))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let version = resp.version();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((version, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn https_with_http1_and_http2_and_certificates_renewed_on_reload() {
    let up = Mock::start("up").await;
    let first = certs("first");
    let toml = chain_config(&tls_table(&first), &[("up", &up.url(), "")]);
    let p = Proxy::start(&toml).await;
    let port = p.addr.port();

    let (v, body) = https_call(port, &first, false).await.unwrap();
    assert_eq!(v, http::Version::HTTP_11);
    assert!(body.contains("\"result\":\"up\""), "{body}");
    let (v, body) = https_call(port, &first, true).await.unwrap();
    assert_eq!(v, http::Version::HTTP_2);
    assert!(body.contains("\"result\":\"up\""), "{body}");

    // Plain HTTP on the TLS port is not served.
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>()
            .request(
                http::Request::post(p.url("/mainnet"))
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap(),
            ),
    )
    .await
    .expect("answered or closed in time");
    assert!(plain.is_err(), "plain HTTP was served on the TLS listener");

    // A renewed certificate: a reload re-reads the files; new connections get the new one.
    let second = certs("second");
    let toml2 = chain_config(&tls_table(&second), &[("up", &up.url(), "")]);
    p.detour
        .reload(detour::Config::from_toml(&toml2).unwrap())
        .unwrap();
    let (_, body) = https_call(port, &second, false).await.unwrap();
    assert!(body.contains("\"result\":\"up\""), "{body}");
    assert!(
        https_call(port, &first, false).await.is_err(),
        "the old certificate is no longer served"
    );
}

#[test]
fn missing_or_mismatched_files_are_config_errors() {
    let a = certs("a");
    let b = certs("b");
    let missing = chain_config(
        "[server.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
        &[("up", "http://127.0.0.1:1", "")],
    );
    let e = detour::Config::from_toml(&missing).unwrap_err().to_string();
    assert!(
        e.contains("server.tls.cert") && e.contains("/nonexistent/cert.pem"),
        "{e}"
    );
    let mismatched = chain_config(
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            a.dir.join("cert.pem").display(),
            b.dir.join("key.pem").display()
        ),
        &[("up", "http://127.0.0.1:1", "")],
    );
    let e = detour::Config::from_toml(&mismatched)
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.tls") && e.contains("pair"), "{e}");
}

/// A TLS connection that offers no ALPN protocol, then speaks HTTP/1.1 or (with prior
/// knowledge) HTTP/2 over it.
async fn no_alpn_call(port: u16, trusted: &Certs, h2: bool) -> (http::Version, String) {
    let config = client_config(trusted);
    assert!(config.alpn_protocols.is_empty());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let io = hyper_util::rt::TokioIo::new(tls);
    let mut req = http::Request::post(format!("https://localhost:{port}/mainnet"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#,
        )))
        .unwrap();
    if !h2 {
        // hyper's connection-level client sends headers as given: HTTP/1.1 needs a Host.
        req.headers_mut().insert(
            "host",
            http::HeaderValue::from_str(&format!("localhost:{port}")).unwrap(),
        );
    }
    let resp = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        tx.send_request(req).await.unwrap()
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        tx.send_request(req).await.unwrap()
    };
    let version = resp.version();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (version, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn tls_clients_that_offer_no_alpn_are_served_http1_and_http2() {
    let up = Mock::start("up").await;
    let c = certs("no-alpn");
    let p = Proxy::start(&chain_config(&tls_table(&c), &[("up", &up.url(), "")])).await;
    let port = p.addr.port();
    let (v, body) = no_alpn_call(port, &c, false).await;
    assert_eq!(v, http::Version::HTTP_11);
    assert!(body.contains("\"result\":\"up\""), "{body}");
    let (v, body) = no_alpn_call(port, &c, true).await;
    assert_eq!(v, http::Version::HTTP_2);
    assert!(body.contains("\"result\":\"up\""), "{body}");
}

#[tokio::test]
async fn http1_over_tls_serves_pipelined_posts_and_hands_other_requests_to_hyper() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Mock::start("up").await;
    let c = certs("fast-path");
    let p = Proxy::start(&chain_config(&tls_table(&c), &[("up", &up.url(), "")])).await;
    let mut config = client_config(&c);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let post = |id: u32, extra: &str| {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_blockNumber"}}"#);
        format!(
            "POST /mainnet HTTP/1.1\r\nhost: localhost\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Two POSTs (the fast path), a GET (hyper's from then on), a last POST asking to close.
    let all = format!(
        "{}{}GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n{}",
        post(1, ""),
        post(2, ""),
        post(3, "connection: close\r\n")
    );
    tls.write_all(all.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut out),
    )
    .await
    .expect("the server closed the connection");
    let text = String::from_utf8_lossy(&out);
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 4, "{text}");
    assert!(answers[0].ends_with(r#""id":1,"result":"up"}"#), "{text}");
    assert!(answers[1].ends_with(r#""id":2,"result":"up"}"#), "{text}");
    assert!(answers[2].ends_with("ok\n"), "{text}");
    assert!(answers[3].ends_with(r#""id":3,"result":"up"}"#), "{text}");
}

/// A TCP relay to `target` that can blackhole the connections open so far: they stay open
/// but nothing more crosses them, as on a path that silently drops packets. Connections
/// accepted later pass.
struct Relay {
    port: u16,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    epoch: Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let epoch = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (count, now) = (accepted.clone(), epoch.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, SeqCst);
                let born = now.load(SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(Self::pump(cr, sw, now.clone(), born));
                tokio::spawn(Self::pump(sr, cw, now.clone(), born));
            }
        });
        Relay {
            port,
            accepted,
            epoch,
        }
    }

    /// Copies `from` to `to` until either closes, or, once the relay blackholed this
    /// connection, holds both open and passes nothing.
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        epoch: Arc<std::sync::atomic::AtomicUsize>,
        born: usize,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if epoch.load(std::sync::atomic::Ordering::SeqCst) != born {
                // Both halves stay open (held by this task) and nothing passes.
                std::future::pending::<()>().await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn blackhole_open_connections(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An HTTPS upstream that speaks HTTP/2 (detour's own TLS listener, trusted through
/// `client.ca_file`) carries every request on one connection. When that connection is
/// blackholed, the unanswered ping closes it and requests go on over a new one; without
/// pings, every request would wait on the dead connection until TCP gave up.
#[tokio::test]
async fn a_blackholed_http2_upstream_connection_is_found_by_ping_and_replaced() {
    let up = Mock::start("up").await;
    up.on("eth_blockNumber", Reply::result("\"0x64\""));
    up.on(
        "eth_getBalance",
        Reply::delay(300, Reply::result("\"0x1\"")),
    );
    let c = certs("h2ping");
    let upstream = Proxy::start(&chain_config(&tls_table(&c), &[("up", &up.url(), "")])).await;
    let relay = Relay::start(upstream.addr).await;
    let toml = format!(
        "[client]\nattempt_timeout = \"1s\"\nconnect_timeout = \"1s\"\nca_file = \"{}\"\n\
         http2_keep_alive_interval = \"1s\"\nhttp2_keep_alive_timeout = \"1s\"\n\
         [chains.mainnet]\nchain_id = 1\n[[chains.mainnet.upstreams]]\nname = \"tls\"\n\
         url = \"https://localhost:{}\"\n",
        c.dir.join("cert.pem").display(),
        relay.port
    );
    let front = Proxy::start(&toml).await;
    // Once a connection is up, five slow calls at once share it: HTTP/2 (HTTP/1.1 would open
    // four more).
    let v = front
        .call("/mainnet", "eth_getBalance", r#"["0x0","latest"]"#)
        .await;
    assert_eq!(v["result"], "0x1", "{v}");
    let before = relay.accepted();
    let calls = (0..5).map(|_| front.call("/mainnet", "eth_getBalance", r#"["0x0","latest"]"#));
    for v in futures_util::future::join_all(calls).await {
        assert_eq!(v["result"], "0x1", "{v}");
    }
    assert_eq!(
        relay.accepted(),
        before,
        "the upstream connection is HTTP/2"
    );

    relay.blackhole_open_connections();
    let start = std::time::Instant::now();
    loop {
        let v = front
            .call("/mainnet", "eth_getBalance", r#"["0x0","latest"]"#)
            .await;
        if v["result"] == "0x1" {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "requests never left the blackholed connection: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(relay.accepted() >= 2, "served over a new connection");
    // And the new connection is healthy: the upstream serves on.
    eventually("the upstream is healthy again", || {
        front.states("tls").is_empty()
    })
    .await;
}

#[test]
fn a_missing_or_empty_upstream_ca_file_is_a_config_error() {
    let config = |file: &str| {
        format!(
            "[client]\nca_file = \"{file}\"\n[chains.mainnet]\nchain_id = 1\n\
             [[chains.mainnet.upstreams]]\nname = \"a\"\nurl = \"https://localhost:1\"\n"
        )
    };
    let e = detour::Config::from_toml(&config("/nonexistent/ca.pem"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("client.ca_file") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    let dir = std::env::temp_dir().join(format!("detour-ca-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let e = detour::Config::from_toml(&config(&empty.display().to_string()))
        .unwrap_err()
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        e.contains("client.ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );
}

#[tokio::test]
async fn websocket_over_tls_with_and_without_alpn() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = Mock::start("up").await;
    let c = certs("wss");
    let p = Proxy::start(&chain_config(&tls_table(&c), &[("up", &up.url(), "")])).await;
    for alpn in [Some(b"http/1.1".to_vec()), None] {
        let mut config = client_config(&c);
        config.alpn_protocols = alpn.clone().into_iter().collect();
        let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async("wss://localhost/mainnet", tls)
            .await
            .unwrap_or_else(|e| panic!("wss upgrade (ALPN {alpn:?}): {e}"));
        assert_eq!(resp.status(), 101);
        ws.send(Message::text(
            r#"{"jsonrpc":"2.0","id":3,"method":"eth_blockNumber"}"#,
        ))
        .await
        .unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            answer.to_text().unwrap(),
            r#"{"jsonrpc":"2.0","id":3,"result":"up"}"#
        );
    }
}

/// A `wss://` upstream (here detour itself, behind its TLS listener, trusted through
/// `client.ca_file`) is a head source: the front detour follows the chain over it, with polls
/// 30 s apart, and its subscribers get every head.
#[tokio::test]
async fn heads_are_followed_over_a_wss_upstream() {
    use futures_util::{SinkExt, StreamExt};
    use support::chain::{sim_config, SimChain, SimUpstream};
    use tokio_tungstenite::tungstenite::Message;
    let chain = SimChain::new(10, 0);
    let node = SimUpstream::start(&chain).await;
    let c = certs("wss-upstream");
    let upstream = Proxy::start(&sim_config(&tls_table(&c), &[&node])).await;
    let port = upstream.addr.port();
    let toml = format!(
        "[client]\nattempt_timeout = \"1s\"\nconnect_timeout = \"1s\"\nca_file = \"{}\"\n\
         [tracker]\npoll_interval = \"30s\"\n[chains.mainnet]\nchain_id = 1\n\
         [[chains.mainnet.upstreams]]\nname = \"tls\"\nurl = \"https://localhost:{port}/mainnet\"\n\
         ws_url = \"wss://localhost:{port}/mainnet\"\n",
        c.dir.join("cert.pem").display(),
    );
    let front = Proxy::start(&toml).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/mainnet", front.addr))
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}"#,
    ))
    .await
    .unwrap();
    eventually("the front follows heads over the wss upstream", || {
        front.detour.status()["chains"][0]["filters"]["source"]
            == serde_json::json!({"via": "websocket", "upstream": "tls"})
    })
    .await;
    assert_eq!(
        front.upstream_status("tls")["ws_endpoint"],
        format!("wss://localhost:{port}/***")
    );
    chain.mine(3);
    let mut heads = Vec::new();
    while heads.len() < 3 {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a head well before the next poll")
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        if v["method"] == "eth_subscription" {
            heads.push(v["params"]["result"]["hash"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        heads,
        (11..=13).map(|n| chain.hash_at(n)).collect::<Vec<_>>()
    );
}
