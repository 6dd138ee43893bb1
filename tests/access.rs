//! Client access: API keys (bearer or path segment), 401 for a wrong or missing key, keys never
//! echoed; CORS preflight and headers for allowed origins only.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{chain_config, Mock, Proxy};

const KEYS: &str = "[[api_keys]]\nname = \"backend\"\nkey = \"backend-key-0123456789\"\n[[api_keys]]\nname = \"wallet\"\nkey = \"wallet-key-0123456789\"\n";

async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"eth_blockNumber"}"#;

#[tokio::test]
async fn api_keys_are_required_and_accepted_as_bearer_or_path() {
    let up = Mock::start("up").await;
    let toml = format!("{KEYS}{}", chain_config("", &[("up", &up.url(), "")]));
    let p = Proxy::start(&toml).await;
    let ct = ("content-type", "application/json");

    // Missing and wrong keys: 401 with a JSON-RPC error; nothing reaches the upstream.
    for (url, headers) in [
        (p.url("/mainnet"), vec![ct]),
        (
            p.url("/mainnet"),
            vec![ct, ("authorization", "Bearer wallet-key-0123456780")],
        ),
        (p.url("/mainnet/not-a-valid-key-000"), vec![ct]),
    ] {
        let (status, h, body) = request("POST", &url, &headers, CALL).await;
        assert_eq!(status, 401, "{url}: {body}");
        assert_eq!(h["www-authenticate"], "Bearer");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["message"], "missing or invalid API key");
        assert!(!body.contains("key-0123456780") && !body.contains("not-a-valid-key"));
    }
    assert_eq!(up.hits(), 0);

    // A bearer key, and the key as a path segment (wallets can only set a URL).
    let (status, _, body) = request(
        "POST",
        &p.url("/mainnet"),
        &[ct, ("authorization", "Bearer backend-key-0123456789")],
        CALL,
    )
    .await;
    assert_eq!(
        (status, body.contains("\"result\":\"up\"")),
        (200, true),
        "{body}"
    );
    let (status, _, body) = request(
        "POST",
        &p.url("/mainnet/wallet-key-0123456789"),
        &[ct],
        CALL,
    )
    .await;
    assert_eq!(
        (status, body.contains("\"result\":\"up\"")),
        (200, true),
        "{body}"
    );
    let (status, _, _) = request("POST", &p.url("/1/wallet-key-0123456789/"), &[ct], CALL).await;
    assert_eq!(status, 200);

    // /status and /metrics need a key too; /healthz and /readyz stay open for probes.
    assert_eq!(request("GET", &p.url("/status"), &[], "").await.0, 401);
    assert_eq!(request("GET", &p.url("/metrics"), &[], "").await.0, 401);
    let auth = ("authorization", "Bearer backend-key-0123456789");
    assert_eq!(request("GET", &p.url("/status"), &[auth], "").await.0, 200);
    assert_eq!(request("GET", &p.url("/healthz"), &[], "").await.0, 200);
    assert_eq!(request("GET", &p.url("/readyz"), &[], "").await.0, 200);
    // The resolved config shows no key.
    let shown = p.detour.pool().config.redacted().to_toml();
    assert!(!shown.contains("key-0123456789"), "{shown}");
}

#[tokio::test]
async fn without_keys_a_second_path_segment_is_not_found_and_not_echoed() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    let (status, _, body) = request(
        "POST",
        &p.url("/mainnet/SOMETHINGSECRET"),
        &[("content-type", "application/json")],
        CALL,
    )
    .await;
    assert_eq!(status, 404);
    assert!(!body.contains("SOMETHINGSECRET"), "{body}");
}

#[tokio::test]
async fn cors_preflight_and_headers_for_allowed_origins() {
    let up = Mock::start("up").await;
    // A loopback listener allows any origin by default.
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    let origin = ("origin", "http://localhost:5173");
    let (status, h, _) = request(
        "OPTIONS",
        &p.url("/mainnet"),
        &[
            origin,
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(h["access-control-allow-origin"], "http://localhost:5173");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("content-type"));
    let (status, h, _) = request(
        "POST",
        &p.url("/mainnet"),
        &[origin, ("content-type", "application/json")],
        CALL,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "http://localhost:5173");
    assert_eq!(h["access-control-expose-headers"], "x-detour-upstream");
    assert_eq!(up.hits(), 1, "the preflight never reached the upstream");

    // An explicit list: other origins get no CORS headers.
    let p = Proxy::start(&chain_config(
        "[server]\ncors_origins = [\"https://app.example\"]\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    let (_, h, _) = request(
        "POST",
        &p.url("/mainnet"),
        &[
            ("origin", "https://evil.example"),
            ("content-type", "application/json"),
        ],
        CALL,
    )
    .await;
    assert!(h.get("access-control-allow-origin").is_none());
    let (_, h, _) = request(
        "OPTIONS",
        &p.url("/mainnet"),
        &[("origin", "https://app.example")],
        "",
    )
    .await;
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
}

#[test]
fn weak_or_duplicate_keys_are_config_errors() {
    let toml = format!(
        "[[api_keys]]\nname = \"a\"\nkey = \"short\"\n[[api_keys]]\nname = \"a\"\nkey = \"long-enough-key-0001\"\n{}",
        chain_config("", &[("up", "http://127.0.0.1:1", "")])
    );
    let e = detour::Config::from_toml(&toml).unwrap_err().to_string();
    assert!(
        e.contains("api_keys[0].key") && e.contains("api_keys[1].name"),
        "{e}"
    );
    assert!(
        !e.contains("long-enough-key"),
        "errors never show a key: {e}"
    );
}

/// A proxy with the two test keys and `[server.rate_limit]` of 1/s with this burst.
async fn rate_limited_proxy(burst: u32) -> (Mock, Proxy) {
    let up = Mock::start("up").await;
    let toml = format!(
        "{KEYS}{}",
        chain_config(
            &format!("[server.rate_limit]\nper_second = 1\nburst = {burst}\n"),
            &[("up", &up.url(), "")]
        )
    );
    let p = Proxy::start(&toml).await;
    (up, p)
}

#[tokio::test]
async fn rate_limits_apply_per_client_with_429_and_retry_after() {
    let (up, p) = rate_limited_proxy(3).await;
    let ct = ("content-type", "application/json");
    let backend = ("authorization", "Bearer backend-key-0123456789");
    for i in 0..3 {
        let (status, _, body) = request("POST", &p.url("/mainnet"), &[ct, backend], CALL).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let (status, h, body) = request("POST", &p.url("/mainnet"), &[ct, backend], CALL).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32005);
    assert_eq!(up.hits(), 3, "a limited request never reaches an upstream");
    // Another client has its own budget.
    let (status, _, _) = request(
        "POST",
        &p.url("/mainnet/wallet-key-0123456789"),
        &[ct],
        CALL,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn wrong_keys_are_rate_limited_by_address() {
    let (up, p) = rate_limited_proxy(2).await;
    let ct = ("content-type", "application/json");
    let mut statuses = Vec::new();
    for i in 0..4 {
        let url = p.url(&format!("/mainnet/guess-{i:016}"));
        statuses.push(request("POST", &url, &[ct], CALL).await.0);
    }
    assert_eq!(statuses, [401, 401, 429, 429]);
    assert_eq!(up.hits(), 0, "no guess reached an upstream");
}
