//! Secrets (upstream API keys in URLs and headers) never appear anywhere a person or another
//! program can read: responses to clients, /status, /metrics, the redacted config, or any log
//! line at any level, through a failure-heavy scenario.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::{chain_config, refused_url, Mock, Proxy, Reply};

const KEY: &str = "FAKEKEY7f3a9c2e4b";

/// Everything logged, at every level, from every crate.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn keys_never_leak_through_failures() {
    let logs = Capture::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let flaky = Mock::start("flaky").await;
    let good = Mock::start("good").await;
    let dead = refused_url().await;
    // A plain-HTTP mock reached over https: a TLS failure.
    let tls = Mock::start("tls").await;
    let tls_port = tls.addr.port();
    let ups = [
        ("dead", format!("{dead}/v3/{KEY}"), "tier = 0".to_string()),
        (
            "flaky",
            format!("http://user:{KEY}@{}/rpc?apikey={KEY}", flaky.addr),
            // Its WebSocket: TLS to a plain-HTTP mock, a handshake that fails.
            format!(
                "tier = 0\nheaders = {{ \"x-api-key\" = \"{KEY}\" }}\n\
                 ws_url = \"wss://127.0.0.1:{tls_port}/ws/{KEY}\""
            ),
        ),
        (
            "tls",
            format!("https://127.0.0.1:{tls_port}/{KEY}"),
            "tier = 0".to_string(),
        ),
        (
            "nodns",
            format!("http://no-such-host.invalid/{KEY}"),
            "tier = 0".to_string(),
        ),
        (
            "good",
            format!("{}/{KEY}", good.url()),
            // Its WebSocket: nothing listens there.
            format!(
                "tier = 1\nws_url = \"{}/ws/{KEY}\"",
                dead.replace("http", "ws")
            ),
        ),
    ];
    let refs: Vec<(&str, &str, &str)> = ups
        .iter()
        .map(|(n, u, e)| (*n, u.as_str(), e.as_str()))
        .collect();
    let toml = chain_config("max_attempts = 5", &refs);
    // Hermetic DNS: a stub that knows no name (every other upstream is an IP literal).
    let resolver = detour::client::dns::Resolver::from_fn(|host| {
        Err(std::io::Error::other(format!("no such host: {host}")))
    });
    let config = detour::Config::from_toml(&toml).unwrap();
    let p = Proxy::serve(detour::Detour::with_resolver(config, resolver).unwrap()).await;

    // A block filter: the chain is followed, and its head source tried over the WebSockets.
    let block = r#"{"number":"0x64","hash":"0x1111111111111111111111111111111111111111111111111111111111111111","parentHash":"0x2222222222222222222222222222222222222222222222222222222222222222","logsBloom":"0x00"}"#;
    flaky.on("eth_getBlockByNumber", Reply::result(block));
    good.on("eth_getBlockByNumber", Reply::result(block));
    let v = p.call("/mainnet", "eth_newBlockFilter", "[]").await;
    assert!(v["result"].is_string(), "{v}");
    let mut seen = String::new();
    for reply in [
        Reply::status(503),
        Reply::Status(429, "slow".into(), vec![("retry-after", "1".into())]),
        Reply::Raw("<html>oops</html>".into()),
        Reply::Close,
        Reply::error(-32005, "rate limited"),
        Reply::delay(3000, Reply::result("\"late\"")),
    ] {
        flaky.always(reply);
        for method in ["eth_getBalance", "eth_sendRawTransaction"] {
            let (_, _, body) = support::http_request(
                "POST",
                &p.url("/mainnet"),
                &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":["0x01"]}}"#),
            )
            .await;
            seen.push_str(&body);
        }
    }
    // A request no upstream can answer: the error names every attempt.
    good.always(Reply::status(500));
    let (_, _, body) = support::http_request(
        "POST",
        &p.url("/mainnet"),
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{}]}"#,
    )
    .await;
    assert!(body.contains("no upstream could answer"), "{body}");
    seen.push_str(&body);
    seen.push_str(&support::http_request("GET", &p.url("/status"), "").await.2);
    seen.push_str(&support::http_request("GET", &p.url("/metrics"), "").await.2);
    seen.push_str(&p.detour.pool().config.redacted().to_toml());
    seen.push_str(&p.detour.describe().join("\n"));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logged.len() > 1000,
        "the scenario logged: {} bytes",
        logged.len()
    );
    for (what, text) in [
        ("client answers, status, metrics, config", &seen),
        ("logs", &logged),
    ] {
        if let Some(at) = text.find(KEY) {
            let from = at.saturating_sub(300);
            panic!(
                "the key leaked into {what}: …{}…",
                &text[from..(at + 50).min(text.len())]
            );
        }
    }
    // The failures were real and are visible without the key.
    assert!(
        logged.contains("could not follow heads over this upstream's WebSocket"),
        "the head source was tried"
    );
    for reason in ["connection refused", "TLS", "DNS", "HTTP 503"] {
        assert!(
            seen.contains(reason) || logged.contains(reason),
            "{reason} never reported"
        );
    }
}
