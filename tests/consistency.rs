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
