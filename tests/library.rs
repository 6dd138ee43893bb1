//! Embedding: the tower Service without a socket, and the in-process JSON-RPC API.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::value::RawValue;
use support::{chain_config, refused_url, Mock, Reply};
use tower::ServiceExt;

#[tokio::test]
async fn service_answers_without_a_socket() {
    let m = Mock::start("a").await;
    let config = detour::Config::from_toml(&chain_config("", &[("a", &m.url(), "")])).unwrap();
    let svc = detour::Detour::new(config).unwrap();
    let req = http::Request::post("/mainnet")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#,
        )))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"jsonrpc":"2.0","id":1,"result":"a"}"#);
}

#[tokio::test]
async fn request_returns_the_raw_result_with_failover() {
    let m = Mock::start("a").await;
    m.on("eth_getBalance", Reply::result(r#""0x1bc16d674ec80000""#));
    let dead = refused_url().await;
    let config = detour::Config::from_toml(&chain_config(
        "",
        &[("dead", &dead, "tier = 0"), ("a", &m.url(), "tier = 1")],
    ))
    .unwrap();
    let proxy = detour::Detour::new(config).unwrap();
    let params =
        RawValue::from_string(r#"["0x0000000000000000000000000000000000000000","latest"]"#.into())
            .unwrap();
    let result = proxy
        .request("mainnet", "eth_getBalance", Some(&params))
        .await
        .unwrap();
    assert_eq!(result.get(), r#""0x1bc16d674ec80000""#);
    assert_eq!(m.calls()[0]["params"][1], "latest");
    // By chain id too; eth_chainId answered locally.
    assert_eq!(
        proxy.request("1", "eth_chainId", None).await.unwrap().get(),
        "\"0x1\""
    );
}

#[tokio::test]
async fn request_errors_are_typed() {
    let m = Mock::start("a").await;
    m.on("eth_call", Reply::error(3, "execution reverted"));
    let config = detour::Config::from_toml(&chain_config("", &[("a", &m.url(), "")])).unwrap();
    let proxy = detour::Detour::new(config).unwrap();
    let e = proxy
        .request("mainnet", "eth_call", None)
        .await
        .unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (3, "execution reverted"));
    let e = proxy.request("nope", "eth_call", None).await.unwrap_err();
    assert_eq!(e.code, -32001);
    assert!(e.message.contains("/mainnet"));
    let bad = RawValue::from_string("5".into()).unwrap();
    assert_eq!(
        proxy
            .request("mainnet", "eth_call", Some(&bad))
            .await
            .unwrap_err()
            .code,
        -32602
    );
}

#[tokio::test]
async fn handle_jsonrpc_takes_raw_bodies() {
    let m = Mock::start("a").await;
    let config = detour::Config::from_toml(&chain_config("", &[("a", &m.url(), "")])).unwrap();
    let proxy = detour::Detour::new(config).unwrap();
    let out = proxy
        .handle_jsonrpc("mainnet", br#"[{"jsonrpc":"2.0","id":"q","method":"x"}]"#)
        .await
        .unwrap();
    assert_eq!(out.unwrap(), r#"[{"jsonrpc":"2.0","id":"q","result":"a"}]"#);
    assert!(proxy
        .handle_jsonrpc("mainnet", br#"{"jsonrpc":"2.0","method":"x"}"#)
        .await
        .unwrap()
        .is_none());
    assert!(proxy.handle_jsonrpc("polygon", b"{}").await.is_err());
}

#[tokio::test]
async fn reload_swaps_upstreams_and_keeps_unchanged_state() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    let config = detour::Config::from_toml(&chain_config("", &[("a", &a.url(), "")])).unwrap();
    let proxy = detour::Detour::new(config).unwrap();
    assert_eq!(
        proxy.request("mainnet", "x", None).await.unwrap().get(),
        "\"a\""
    );
    let before = proxy.pool().chains[0].upstreams[0].state.clone();
    let next = detour::Config::from_toml(&chain_config(
        "",
        &[("a", &a.url(), ""), ("b", &b.url(), "tier = 1")],
    ))
    .unwrap();
    proxy.reload(next).unwrap();
    let after = proxy.pool();
    assert!(std::sync::Arc::ptr_eq(
        &before,
        &after.chains[0].upstreams[0].state
    ));
    assert_eq!(after.chains[0].upstreams.len(), 2);
    // An invalid config changes nothing.
    let mut broken = detour::Config::from_toml(&chain_config("", &[("a", &a.url(), "")])).unwrap();
    broken.chains.get_mut("mainnet").unwrap().upstreams.clear();
    assert!(proxy.reload(broken).is_err());
    assert_eq!(proxy.pool().chains[0].upstreams.len(), 2);
}

#[tokio::test]
async fn reload_probes_added_upstreams_at_once_and_keeps_heads() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    a.set_head(500);
    b.set_head(500);
    let probes = "[chains.mainnet.health]\nidle_probe_interval = \"1h\"\nprobe_interval = \"1h\"\n";
    let config = detour::Config::from_toml(&chain_config(probes, &[("a", &a.url(), "")])).unwrap();
    let proxy = detour::Detour::new(config).unwrap();
    support::eventually("a is probed at start", || {
        proxy.status()["chains"][0]["upstreams"][0]["head"] == 500
    })
    .await;
    let next = detour::Config::from_toml(&chain_config(
        probes,
        &[("a", &a.url(), ""), ("b", &b.url(), "")],
    ))
    .unwrap();
    proxy.reload(next).unwrap();
    // "b" is new: probed now, not an hour from now; "a" kept its head and is not probed again.
    support::eventually("b is probed after the reload", || {
        proxy.status()["chains"][0]["upstreams"][1]["head"] == 500
    })
    .await;
    assert_eq!(proxy.status()["chains"][0]["head"], 500);
    assert_eq!(
        a.probes()
            .iter()
            .filter(|m| *m == "eth_blockNumber")
            .count(),
        1
    );
}
