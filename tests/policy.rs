//! Method policy: denied methods never reach an upstream and get an error naming the method
//! and the rule; one method of a denied family can be opened; an allow list limits what is
//! served; an upstream's unsupported methods go elsewhere.

mod support;

use support::{chain_config, Mock, Proxy};

#[tokio::test]
async fn default_denied_methods_never_reach_an_upstream() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    for m in [
        "debug_traceTransaction",
        "admin_addPeer",
        "personal_unlockAccount",
        "eth_sendTransaction",
        "eth_sign",
        "miner_start",
        "txpool_content",
        "engine_newPayloadV3",
    ] {
        let v = p.call("/mainnet", m, "[]").await;
        assert_eq!(v["error"]["code"], -32601, "{m}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(m) && msg.contains("methods.deny"), "{msg}");
        assert_eq!(v["error"]["data"]["method"], m);
        assert_eq!(v["error"]["data"]["policy"], "deny");
        assert_eq!(v["id"], 1);
    }
    assert_eq!(up.hits(), 0, "no denied call reached the upstream");
    // In a batch: the denied entry gets its error, the rest are served, in order.
    let v = p
        .rpc(
            "/mainnet",
            r#"[{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{}]},
                {"jsonrpc":"2.0","id":2,"method":"debug_traceCall","params":[{}]},
                {"jsonrpc":"2.0","id":3,"method":"eth_blockNumber"}]"#,
        )
        .await;
    assert_eq!(v[0]["result"], "up");
    assert_eq!(v[1]["error"]["data"]["rule"], "debug_*");
    assert_eq!(v[2]["result"], "up");
    assert_eq!(up.methods(), ["eth_call", "eth_blockNumber"]);
    let metrics = p.detour.metrics();
    assert!(metrics.contains(
        "detour_requests_total{chain=\"mainnet\",method=\"debug_traceCall\",outcome=\"denied\"} 1"
    ));
}

#[tokio::test]
async fn one_method_of_a_denied_family_can_be_opened() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config(
        "[chains.mainnet.methods]\nallow = [\"*\", \"debug_traceTransaction\"]\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    let v = p
        .call("/mainnet", "debug_traceTransaction", "[\"0x1\"]")
        .await;
    assert_eq!(v["result"], "up");
    let v = p.call("/mainnet", "debug_traceCall", "[]").await;
    assert_eq!(v["error"]["code"], -32601);
}

#[tokio::test]
async fn an_allow_list_serves_only_what_it_names() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config(
        "[chains.mainnet.methods]\nallow = [\"eth_*\"]\ndeny = []\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    assert_eq!(
        p.call("/mainnet", "eth_getBalance", "[]").await["result"],
        "up"
    );
    let v = p.call("/mainnet", "web3_clientVersion", "[]").await;
    assert_eq!(v["error"]["data"]["policy"], "allow", "{v}");
    // deny = [] removed the defaults: eth_sign is in eth_* and served.
    assert_eq!(p.call("/mainnet", "eth_sign", "[]").await["result"], "up");
}

#[tokio::test]
async fn unsupported_methods_are_routed_to_upstreams_that_serve_them() {
    let light = Mock::start("light").await;
    let archive = Mock::start("archive").await;
    // Every call is checked at the upstreams: no chain following for the cache.
    let p = Proxy::start(
        &chain_config(
            "",
            &[
                // Preferred (tier 0), but no tracing.
                (
                    "light",
                    &light.url(),
                    "tier = 0\nunsupported_methods = [\"trace_*\", \"eth_getProof\"]",
                ),
                ("archive", &archive.url(), "tier = 1"),
            ],
        )
        .replacen(
            "[chains.mainnet]",
            "[cache]\nhead = false\n[chains.mainnet]",
            1,
        ),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            p.call("/mainnet", "trace_block", "[\"0x1\"]").await["result"],
            "archive"
        );
        assert_eq!(
            p.call("/mainnet", "eth_getProof", "[]").await["result"],
            "archive"
        );
        assert_eq!(
            p.call("/mainnet", "eth_call", "[{}]").await["result"],
            "light"
        );
    }
    assert!(light.methods().iter().all(|m| m == "eth_call"));
}

#[test]
fn bad_patterns_are_config_errors() {
    let toml = chain_config(
        "[chains.mainnet.methods]\ndeny = [\"debug_*\", \"eth call\"]\n",
        &[("a", "http://127.0.0.1:1", "unsupported_methods = [\"\"]")],
    );
    let e = detour::Config::from_toml(&toml).unwrap_err().to_string();
    assert!(
        e.contains("chains.mainnet.methods.deny") && e.contains("eth call"),
        "{e}"
    );
    assert!(e.contains("unsupported_methods"), "{e}");
}
