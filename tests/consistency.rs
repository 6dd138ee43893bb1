//! Consistency for wallets: `null` from an upstream that is behind, block numbers that never go
//! backwards, "already known" raw transactions, and the answering-upstream header.

mod support;

use support::{chain_config, eventually, refused_url, Mock, Proxy, Reply};

const FAST: &str = "[chains.mainnet.health]\nprobe_interval = \"30ms\"\nidle_probe_interval = \"30ms\"\nmax_lag_blocks = 5\n";

const RECEIPT: &str = r#"{"transactionHash":"0xabc","blockNumber":"0xc8","status":"0x1"}"#;

/// Tier 0 "near" two blocks behind (within max_lag_blocks), tier 1 "tip" at the head.
async fn near_and_tip() -> (Mock, Mock, Proxy) {
    let near = Mock::start("near").await;
    let tip = Mock::start("tip").await;
    near.set_head(198);
    tip.set_head(200);
    let p = Proxy::start(&chain_config(
        FAST,
        &[
            ("near", &near.url(), "tier = 0"),
            ("tip", &tip.url(), "tier = 1"),
        ],
    ))
    .await;
    eventually("heads known", || {
        p.upstream_status("near")["head"] == 198 && p.upstream_status("tip")["head"] == 200
    })
    .await;
    (near, tip, p)
}

#[tokio::test]
async fn null_from_an_upstream_behind_the_head_is_retried_on_an_up_to_date_one() {
    let (near, tip, p) = near_and_tip().await;
    near.on("eth_getTransactionReceipt", Reply::result("null"));
    tip.on("eth_getTransactionReceipt", Reply::result(RECEIPT));
    let (v, by) = p
        .call_via("/mainnet", "eth_getTransactionReceipt", r#"["0xabc"]"#)
        .await;
    assert_eq!(v["result"]["blockNumber"], "0xc8", "{v}");
    assert_eq!(by, "tip");
    assert_eq!(near.methods(), ["eth_getTransactionReceipt"]);
    // Not a failure of "near": it answered, it is just behind.
    assert!(p.states("near").is_empty(), "{:?}", p.states("near"));
}

#[tokio::test]
async fn null_from_an_up_to_date_upstream_is_the_answer() {
    let (near, tip, p) = near_and_tip().await;
    near.set_head(200);
    eventually("near caught up", || {
        p.upstream_status("near")["head"] == 200
    })
    .await;
    near.on("eth_getTransactionReceipt", Reply::result("null"));
    let (v, by) = p
        .call_via("/mainnet", "eth_getTransactionReceipt", r#"["0xabc"]"#)
        .await;
    assert!(v["result"].is_null() && v.get("error").is_none(), "{v}");
    assert_eq!(by, "near");
    assert_eq!(tip.hits(), 0);
}

#[tokio::test]
async fn null_is_returned_when_no_up_to_date_upstream_answers() {
    let (near, tip, p) = near_and_tip().await;
    near.on("eth_getBlockByHash", Reply::result("null"));
    tip.on("eth_getBlockByHash", Reply::status(503));
    let v = p
        .call("/mainnet", "eth_getBlockByHash", r#"["0xabc",false]"#)
        .await;
    assert!(v["result"].is_null() && v.get("error").is_none(), "{v}");
}

#[tokio::test]
async fn eth_block_number_never_goes_backwards() {
    let up = Mock::start("up").await;
    // Counted rules are consulted newest first: the upstream says 0x10, then 0xf, then 0x11.
    up.times("eth_blockNumber", 1, Reply::result("\"0x11\""));
    up.times("eth_blockNumber", 1, Reply::result("\"0xf\""));
    up.times("eth_blockNumber", 1, Reply::result("\"0x10\""));
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let v = p.call("/mainnet", "eth_blockNumber", "[]").await;
        seen.push(v["result"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["0x10", "0x10", "0x11"]);
    assert_eq!(up.calls().len(), 3, "every call reached the upstream");
}

fn keccak_hex(bytes: &[u8]) -> String {
    use tiny_keccak::{Hasher, Keccak};
    let mut k = Keccak::v256();
    k.update(bytes);
    let mut out = [0u8; 32];
    k.finalize(&mut out);
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{hex}")
}

#[tokio::test]
async fn already_known_after_a_retry_is_the_transaction_hash() {
    let second = Mock::start("second").await;
    second.on(
        "eth_sendRawTransaction",
        Reply::error(-32000, "already known"),
    );
    let dead = refused_url().await;
    let p = Proxy::start(&chain_config(
        "",
        &[
            ("dead", &dead, "tier = 0"),
            ("second", &second.url(), "tier = 1"),
        ],
    ))
    .await;
    let v = p
        .call("/mainnet", "eth_sendRawTransaction", r#"["0xdeadbeef01"]"#)
        .await;
    assert_eq!(
        v["result"],
        keccak_hex(&[0xde, 0xad, 0xbe, 0xef, 0x01]),
        "{v}"
    );
}

#[tokio::test]
async fn already_known_on_the_first_attempt_is_returned_as_it_is() {
    let only = Mock::start("only").await;
    only.on(
        "eth_sendRawTransaction",
        Reply::error(-32000, "already known"),
    );
    let p = Proxy::start(&chain_config("", &[("only", &only.url(), "")])).await;
    let v = p
        .call("/mainnet", "eth_sendRawTransaction", r#"["0xdeadbeef01"]"#)
        .await;
    assert_eq!(v["error"]["message"], "already known", "{v}");
}

#[tokio::test]
async fn the_answering_upstream_is_named_in_a_header() {
    let dead = refused_url().await;
    let good = Mock::start("good").await;
    let p = Proxy::start(&chain_config(
        "",
        &[
            ("dead", &dead, "tier = 0"),
            ("good", &good.url(), "tier = 1"),
        ],
    ))
    .await;
    let (_, by) = p.call_via("/mainnet", "eth_getBalance", "[]").await;
    assert_eq!(by, "good");
    // Local answers name no upstream.
    let (_, by) = p.call_via("/mainnet", "eth_chainId", "[]").await;
    assert_eq!(by, "");
}

#[tokio::test]
async fn broadcast_sends_a_raw_transaction_to_every_region_and_answers_the_first_success() {
    let slow = Mock::start("slow").await;
    let peer = Mock::start("peer").await;
    let other = Mock::start("other").await;
    let fast = Mock::start("fast").await;
    let hash = keccak_hex(&[0xde, 0xad, 0xbe, 0xef, 0x01]);
    slow.on(
        "eth_sendRawTransaction",
        Reply::delay(300, Reply::result(&format!("\"{hash}\""))),
    );
    other.on(
        "eth_sendRawTransaction",
        Reply::error(-32000, "already known"),
    );
    fast.on(
        "eth_sendRawTransaction",
        Reply::error(-32000, "already known"),
    );
    let p = Proxy::start(&chain_config(
        "broadcast_raw_transactions = true",
        &[
            ("slow", &slow.url(), "tier = 0\nregion = \"a\""),
            ("peer", &peer.url(), "tier = 1\nregion = \"a\""),
            ("other", &other.url(), "tier = 1\nregion = \"b\""),
            ("fast", &fast.url(), "tier = 1\nregion = \"c\""),
        ],
    ))
    .await;
    let v = p
        .call("/mainnet", "eth_sendRawTransaction", r#"["0xdeadbeef01"]"#)
        .await;
    assert_eq!(v["result"], hash, "{v}");
    // Every region got it once; the primary's region only through the primary.
    eventually("the slow primary got it too", || slow.hits() == 1).await;
    assert_eq!((other.hits(), fast.hits(), peer.hits()), (1, 1, 0));
}

#[tokio::test]
async fn broadcast_returns_the_primarys_error_when_nothing_succeeds() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    a.on(
        "eth_sendRawTransaction",
        Reply::error(-32000, "nonce too low"),
    );
    b.on(
        "eth_sendRawTransaction",
        Reply::error(-32000, "nonce too low"),
    );
    let p = Proxy::start(&chain_config(
        "broadcast_raw_transactions = true",
        &[
            ("a", &a.url(), "tier = 0\nregion = \"x\""),
            ("b", &b.url(), "tier = 1\nregion = \"y\""),
        ],
    ))
    .await;
    let v = p
        .call("/mainnet", "eth_sendRawTransaction", r#"["0x01"]"#)
        .await;
    assert_eq!(v["error"]["message"], "nonce too low", "{v}");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn a_rejection_that_only_looks_like_already_known_reaches_the_wallet() {
    // The first upstream is rate limited (so the write is retried), the second rejects the
    // transaction: the wallet must see the rejection, not a hash of a transaction that will
    // never exist.
    let limited = Mock::start("limited").await;
    limited.always(Reply::status(429));
    let second = Mock::start("second").await;
    second.on(
        "eth_sendRawTransaction",
        Reply::error(-32000, "unknown transaction type"),
    );
    let p = Proxy::start(&chain_config(
        "",
        &[
            ("limited", &limited.url(), "tier = 0"),
            ("second", &second.url(), "tier = 1"),
        ],
    ))
    .await;
    let v = p
        .call("/mainnet", "eth_sendRawTransaction", r#"["0xdeadbeef01"]"#)
        .await;
    assert_eq!(v["error"]["message"], "unknown transaction type", "{v}");
    assert!(v.get("result").is_none(), "{v}");
    assert_eq!((limited.hits(), second.hits()), (1, 1));
}

#[tokio::test]
async fn a_raw_transaction_that_is_not_hex_gets_an_answer_with_broadcast_on() {
    let a = Mock::start("a").await;
    a.on(
        "eth_sendRawTransaction",
        Reply::error(-32602, "invalid argument 0: hex string has odd length"),
    );
    let b = Mock::start("b").await;
    b.on(
        "eth_sendRawTransaction",
        Reply::error(-32000, "already known"),
    );
    let p = Proxy::start(&chain_config(
        "broadcast_raw_transactions = true",
        &[
            ("a", &a.url(), "region = \"x\""),
            ("b", &b.url(), "tier = 1\nregion = \"y\""),
        ],
    ))
    .await;
    for raw in ["0xaé0", "0xé", "0x0", "0x"] {
        let v = p
            .call(
                "/mainnet",
                "eth_sendRawTransaction",
                &format!(r#"["{raw}"]"#),
            )
            .await;
        // No hash can be made of it, so "already known" proves nothing: a node's error.
        assert!(v["error"]["code"].is_i64(), "{raw}: {v}");
        assert!(v.get("result").is_none(), "{raw}: {v}");
    }
}

const SLOW_PROBES: &str =
    "[chains.mainnet.health]\nprobe_interval = \"10s\"\nidle_probe_interval = \"10s\"\n";

const OUT_OF_RANGE: &str = "BlockOutOfRangeError: block height is 100 but requested was 101";

/// Tier 0 "lag" and tier 1 "tip", both probed at block 100 (and not again for 10 s).
async fn lag_and_tip(lag_extra: &str) -> (Mock, Mock, Proxy) {
    let lag = Mock::start("lag").await;
    let tip = Mock::start("tip").await;
    lag.set_head(100);
    tip.set_head(100);
    let p = Proxy::start(&chain_config(
        SLOW_PROBES,
        &[
            ("lag", &lag.url(), &format!("tier = 0\n{lag_extra}")),
            ("tip", &tip.url(), "tier = 1"),
        ],
    ))
    .await;
    eventually("heads known", || {
        p.upstream_status("lag")["head"] == 100 && p.upstream_status("tip")["head"] == 100
    })
    .await;
    (lag, tip, p)
}

#[tokio::test]
async fn a_read_at_a_block_goes_to_the_upstream_a_receipt_proved_has_it() {
    // A wallet gets a receipt at block 101 (from "tip"), then reads at that block: the
    // preferred "lag" has not been seen past 100, so the read goes to "tip".
    let (lag, tip, p) = lag_and_tip("unsupported_methods = [\"eth_getTransactionReceipt\"]").await;
    tip.on(
        "eth_getTransactionReceipt",
        Reply::result(r#"{"blockHash":"0xb1","blockNumber":"0x65","status":"0x1"}"#),
    );
    lag.on("eth_call", Reply::error(-32602, OUT_OF_RANGE));
    tip.on("eth_call", Reply::result("\"0x01\""));
    let (v, by) = p
        .call_via("/mainnet", "eth_getTransactionReceipt", r#"["0xabc"]"#)
        .await;
    assert_eq!(
        (v["result"]["blockNumber"].as_str(), by.as_str()),
        (Some("0x65"), "tip")
    );
    assert_eq!(
        p.upstream_status("tip")["head"],
        101,
        "the receipt proved block 101"
    );
    let (v, by) = p
        .call_via("/mainnet", "eth_call", r#"[{"to":"0x01"},"0x65"]"#)
        .await;
    assert_eq!(
        (v["result"].as_str(), by.as_str()),
        (Some("0x01"), "tip"),
        "{v}"
    );
    assert!(lag.methods().is_empty(), "{:?}", lag.methods());
    // A read of the latest state still prefers tier 0.
    lag.on("eth_getBalance", Reply::result("\"0x0\""));
    let (_, by) = p
        .call_via("/mainnet", "eth_getBalance", r#"["0x01","0x64"]"#)
        .await;
    assert_eq!(by, "lag");
}

#[tokio::test]
async fn a_block_an_upstream_does_not_have_yet_is_asked_of_another() {
    let (lag, tip, p) = lag_and_tip("").await;
    lag.on("eth_getBalance", Reply::error(-32602, OUT_OF_RANGE));
    tip.on("eth_getBalance", Reply::result("\"0x2a\""));
    let (v, by) = p
        .call_via("/mainnet", "eth_getBalance", r#"["0x01","0x65"]"#)
        .await;
    assert_eq!(
        (v["result"].as_str(), by.as_str()),
        (Some("0x2a"), "tip"),
        "{v}"
    );
    assert_eq!(lag.methods(), ["eth_getBalance"]);
    // "Not there yet" says nothing against the upstream's health.
    assert!(p.states("lag").is_empty(), "{:?}", p.states("lag"));
    assert_eq!(p.upstream_status("lag")["failures"], 0);
    // Nobody has it: the client gets a node's own answer, not "no upstream could answer".
    lag.on("eth_getCode", Reply::error(-32602, OUT_OF_RANGE));
    tip.on("eth_getCode", Reply::error(-32000, "header not found"));
    let v = p
        .call("/mainnet", "eth_getCode", r#"["0x01","0x66"]"#)
        .await;
    assert!(
        v["error"]["message"] == "header not found" || v["error"]["message"] == OUT_OF_RANGE,
        "{v}"
    );
    assert!(p.states("tip").is_empty(), "{:?}", p.states("tip"));
}
