//! The response cache and merged in-flight reads, against simulated chains and mock upstreams:
//! final answers kept byte for byte, head answers until the head moves, a reorg at height h
//! evicting exactly the non-final entries at or above h, no cached nulls or errors, the
//! client's bypass, per-method policies, and identical reads merged with a bounded wait.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::chain::{sim_config, SimChain, SimUpstream};
use support::{chain_config, eventually, http_request_with, Mock, Proxy, Reply};

/// POSTs one call with `id` and `headers`; returns the body text and the `x-detour-cache`
/// header (empty when absent).
async fn call(
    proxy: &Proxy,
    id: &str,
    method: &str,
    params: &str,
    headers: &[(&str, &str)],
) -> (String, String) {
    let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
    let (status, h, text) = http_request_with("POST", &proxy.url("/mainnet"), &body, headers).await;
    assert_eq!(status, 200, "{text}");
    let cache = h
        .get("x-detour-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (text, cache)
}

/// The bytes of the `result` in a response body, as written.
fn result_bytes(body: &str) -> &str {
    let at = body.find("\"result\":").expect("a result") + "\"result\":".len();
    &body[at..body.len() - 1]
}

fn count(methods: &[String], method: &str) -> usize {
    methods.iter().filter(|m| *m == method).count()
}

/// A metric's value, by its name and labels as the exposition writes them.
fn metric(proxy: &Proxy, series: &str) -> u64 {
    let text = proxy.detour.metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn head_known(proxy: &Proxy) {
    eventually("the chain head is known", || {
        proxy.detour.pool().chains[0].state.head().is_some()
    })
    .await;
}

#[tokio::test]
async fn final_answers_are_kept_and_served_byte_for_byte_with_the_clients_id() {
    let chain = SimChain::new(200, 1);
    let up = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&sim_config("", &[&up])).await;
    head_known(&proxy).await;
    // Block 10 is final (the head, 200, less the finality depth, 64).
    let params = r#"["0xa",false]"#;
    let (first, how) = call(&proxy, "1", "eth_getBlockByNumber", params, &[]).await;
    assert_eq!(how, "miss");
    // Stored the second time it is seen.
    let (_, how) = call(&proxy, "2", "eth_getBlockByNumber", params, &[]).await;
    assert_eq!(how, "miss");
    let (second, how) = call(&proxy, "\"x\"", "eth_getBlockByNumber", params, &[]).await;
    assert_eq!(how, "hit");
    assert_eq!(result_bytes(&first), result_bytes(&second));
    assert!(second.contains(r#""id":"x""#), "{second}");
    let v: Value = serde_json::from_str(&second).unwrap();
    assert_eq!(v["result"]["hash"], chain.hash_at(10));
    // The library path reads the same cache.
    let p = serde_json::value::RawValue::from_string(params.into()).unwrap();
    let lib = proxy
        .detour
        .request("mainnet", "eth_getBlockByNumber", Some(&p))
        .await
        .unwrap();
    assert_eq!(lib.get(), result_bytes(&first));
    assert_eq!(count(&up.methods(), "eth_getBlockByNumber"), 2);
    // The same params written differently are another key: asked upstream, not mixed up.
    let (_, how) = call(
        &proxy,
        "2",
        "eth_getBlockByNumber",
        r#"["0xa", false]"#,
        &[],
    )
    .await;
    assert_eq!(how, "miss");
    assert_eq!(
        metric(
            &proxy,
            r#"detour_cache_requests_total{chain="mainnet",method="eth_getBlockByNumber",result="hit"}"#
        ),
        2
    );
    assert_eq!(
        metric(
            &proxy,
            r#"detour_cache_upstream_calls_saved_total{chain="mainnet"}"#
        ),
        2
    );
    assert!(metric(&proxy, r#"detour_cache_bytes{chain="mainnet"}"#) > 0);
    let status = proxy.detour.status();
    assert_eq!(status["chains"][0]["cache"]["hits"], 2, "{status}");
}

#[tokio::test]
async fn reads_seen_once_are_not_stored() {
    let chain = SimChain::new(300, 1);
    let up = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&sim_config("", &[&up])).await;
    head_known(&proxy).await;
    let entries = r#"detour_cache_entries{chain="mainnet"}"#;
    let block = |n: u64| format!(r#"["0x{n:x}",false]"#);
    // An indexer's scan: each final block once. Nothing is kept.
    for n in 1..=50 {
        call(&proxy, "1", "eth_getBlockByNumber", &block(n), &[]).await;
    }
    assert_eq!(metric(&proxy, entries), 0);
    // Asked again: kept from then on.
    for n in 1..=50 {
        call(&proxy, "1", "eth_getBlockByNumber", &block(n), &[]).await;
    }
    assert_eq!(metric(&proxy, entries), 50);
    for n in 1..=50 {
        let (_, how) = call(&proxy, "1", "eth_getBlockByNumber", &block(n), &[]).await;
        assert_eq!(how, "hit");
    }
    assert_eq!(count(&up.methods(), "eth_getBlockByNumber"), 100);
}

#[tokio::test]
async fn no_cache_asks_upstream_and_refreshes_the_entry() {
    let chain = SimChain::new(200, 1);
    let up = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&sim_config("", &[&up])).await;
    head_known(&proxy).await;
    let params = r#"["0x5",false]"#;
    call(&proxy, "1", "eth_getBlockByNumber", params, &[]).await;
    let (_, how) = call(
        &proxy,
        "1",
        "eth_getBlockByNumber",
        params,
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(how, "bypass");
    let (_, how) = call(
        &proxy,
        "1",
        "eth_getBlockByNumber",
        params,
        &[("pragma", "no-cache")],
    )
    .await;
    assert_eq!(how, "bypass");
    assert_eq!(count(&up.methods(), "eth_getBlockByNumber"), 3);
    let (_, how) = call(&proxy, "1", "eth_getBlockByNumber", params, &[]).await;
    assert_eq!(how, "hit");
    assert_eq!(count(&up.methods(), "eth_getBlockByNumber"), 3);
}

#[tokio::test]
async fn nulls_errors_moving_tags_and_unfollowed_recent_blocks_are_not_cached() {
    let chain = SimChain::new(200, 1);
    let up = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&sim_config("", &[&up])).await;
    head_known(&proxy).await;
    let cases = [
        // Not there yet: null.
        ("eth_getBlockByNumber", r#"["0x1000",false]"#),
        // A hash no block has: null.
        (
            "eth_getBlockByHash",
            &format!(r#"["0x{}",false]"#, "11".repeat(32)),
        ),
        // Moves on its own.
        ("eth_getBlockByNumber", r#"["finalized",false]"#),
        // Recent (above the final block), while the chain is not followed: no way to see a reorg.
        ("eth_getBlockByNumber", r#"["0xc6",false]"#),
        // An error (the sim does not serve it).
        ("eth_getBlockTransactionCountByNumber", r#"["0x1"]"#),
    ];
    for (method, params) in cases {
        let before = count(&up.methods(), method);
        for _ in 0..2 {
            let (body, how) = call(&proxy, "1", method, params, &[]).await;
            assert_ne!(how, "hit", "{method} {params}: {body}");
        }
        assert_eq!(
            count(&up.methods(), method),
            before + 2,
            "{method} {params}"
        );
    }
}

#[tokio::test]
async fn method_policies_override_the_table() {
    let chain = SimChain::new(200, 1);
    let up = SimUpstream::start(&chain).await;
    let extra = "[cache.methods]\neth_getBlockByNumber = \"never\"\n";
    let toml = sim_config("", &[&up]).replacen("[tracker]", &format!("{extra}[tracker]"), 1);
    let proxy = Proxy::start(&toml).await;
    head_known(&proxy).await;
    for _ in 0..2 {
        let (_, how) = call(&proxy, "1", "eth_getBlockByNumber", r#"["0x5",false]"#, &[]).await;
        assert_eq!(how, "");
    }
    assert_eq!(count(&up.methods(), "eth_getBlockByNumber"), 2);
    // Others keep the built-in rule.
    let hash = chain.hash_at(5);
    for expect in ["miss", "miss", "hit"] {
        let (_, how) = call(
            &proxy,
            "1",
            "eth_getBlockByHash",
            &format!(r#"["{hash}",false]"#),
            &[],
        )
        .await;
        assert_eq!(how, expect);
    }
}

/// Reads `eth_blockNumber` until the chain is followed for the cache (reads of the head must
/// arrive at least once per poll interval first) and the answer comes from the cache.
async fn until_followed(proxy: &Proxy) {
    for _ in 0..400 {
        let (_, how) = call(proxy, "1", "eth_blockNumber", "[]", &[]).await;
        if how == "hit" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the cache never served the head: {}", proxy.detour.status());
}

/// Reads `eth_blockNumber` until it says `head`.
async fn until_head(proxy: &Proxy, head: u64) {
    let want = format!("\"0x{head:x}\"");
    for _ in 0..300 {
        let (body, _) = call(proxy, "1", "eth_blockNumber", "[]", &[]).await;
        if body.contains(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the head never reached {head}");
}

#[tokio::test]
async fn head_answers_last_until_the_head_moves() {
    let chain = SimChain::new(200, 1);
    let up = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&sim_config("poll_interval = \"100ms\"\n", &[&up])).await;
    head_known(&proxy).await;
    until_followed(&proxy).await;
    let asked = count(&up.methods(), "eth_blockNumber");
    for _ in 0..20 {
        let (body, how) = call(&proxy, "1", "eth_blockNumber", "[]", &[]).await;
        assert_eq!(how, "hit");
        assert!(body.contains("\"0xc8\""), "{body}");
    }
    assert_eq!(count(&up.methods(), "eth_blockNumber"), asked);
    chain.mine(1);
    // Once the tracker sees block 201, the cached 200 is never served again.
    until_head(&proxy, 201).await;
    for _ in 0..5 {
        let (body, _) = call(&proxy, "1", "eth_blockNumber", "[]", &[]).await;
        assert!(body.contains("\"0xc9\""), "went back: {body}");
    }
}

#[tokio::test]
async fn a_reorg_at_height_h_evicts_exactly_the_non_final_entries_at_or_above_h() {
    let chain = SimChain::new(200, 1);
    let up = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&sim_config("poll_interval = \"100ms\"\n", &[&up])).await;
    head_known(&proxy).await;
    until_followed(&proxy).await;
    // Blocks the tracker saw (it holds the chain from where it started following) can be
    // checked for being canonical: only those are cached before they are final.
    chain.mine(4);
    until_head(&proxy, 204).await;
    let reorgs = r#"detour_tracker_reorgs_total{chain="mainnet"}"#;
    // Recent blocks 201..=204 (canonical, above the final block) and a final one, cached.
    let heights = [50u64, 201, 202, 203, 204];
    let block = |n: u64| format!(r#"["0x{n:x}",false]"#);
    let mut before = Vec::new();
    for n in heights {
        for _ in 0..2 {
            let (_, how) = call(&proxy, "1", "eth_getBlockByNumber", &block(n), &[]).await;
            assert_eq!(how, "miss", "block {n}");
        }
        let (body, how) = call(&proxy, "1", "eth_getBlockByNumber", &block(n), &[]).await;
        assert_eq!(how, "hit", "block {n}");
        before.push(body);
    }
    // Blocks 203 and 204 are replaced; the new branch is 3 long (203..=205).
    chain.reorg(2, 3);
    eventually("the tracker follows the reorg", || {
        metric(&proxy, reorgs) == 1
    })
    .await;
    let evicted = r#"detour_cache_evictions_total{chain="mainnet",method="eth_getBlockByNumber",reason="reorg"}"#;
    assert_eq!(metric(&proxy, evicted), 2);
    for (n, old) in heights.into_iter().zip(&before) {
        let (body, how) = call(&proxy, "1", "eth_getBlockByNumber", &block(n), &[]).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["result"]["hash"], chain.hash_at(n), "block {n}");
        if n >= 203 {
            assert_eq!(how, "miss", "block {n} was replaced");
            assert_ne!(&body, old);
        } else {
            assert_eq!(how, "hit", "block {n} was not replaced");
            assert_eq!(&body, old);
        }
    }
    // The head moved too: its cached answer is gone.
    let (body, _) = call(&proxy, "1", "eth_blockNumber", "[]", &[]).await;
    assert!(body.contains("\"0xcd\""), "{body}");
}

#[tokio::test]
async fn identical_reads_in_flight_go_upstream_once() {
    let mock = Mock::start("m").await;
    mock.set_head(1000);
    mock.always(Reply::delay(
        400,
        Reply::result(r#"{"hash":"0xab","number":"0x5"}"#),
    ));
    let toml = chain_config("", &[("m", &mock.url(), "")]).replacen(
        "[chains.mainnet]",
        "[cache]\nmerge_wait = \"5s\"\n[chains.mainnet]",
        1,
    );
    let proxy = std::sync::Arc::new(Proxy::start(&toml).await);
    head_known(&proxy).await;
    let leader = {
        let p = proxy.clone();
        tokio::spawn(
            async move { call(&p, "0", "eth_getBlockByNumber", r#"["0x5",false]"#, &[]).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let followers: Vec<_> = (1..5)
        .map(|i| {
            let p = proxy.clone();
            tokio::spawn(async move {
                call(
                    &p,
                    &i.to_string(),
                    "eth_getBlockByNumber",
                    r#"["0x5",false]"#,
                    &[],
                )
                .await
            })
        })
        .collect();
    let (lead, how) = leader.await.unwrap();
    assert_eq!(how, "miss");
    for f in followers {
        let (body, how) = f.await.unwrap();
        assert_eq!(how, "hit");
        assert_eq!(result_bytes(&body), result_bytes(&lead));
    }
    assert_eq!(count(&mock.methods(), "eth_getBlockByNumber"), 1);
    assert_eq!(
        metric(
            &proxy,
            r#"detour_cache_requests_total{chain="mainnet",method="eth_getBlockByNumber",result="merged"}"#
        ),
        4
    );
}

#[tokio::test]
async fn followers_of_a_slow_read_go_on_their_own_after_merge_wait() {
    let mock = Mock::start("m").await;
    mock.set_head(1000);
    let block = r#"{"hash":"0xab","number":"0x5"}"#;
    mock.times(
        "eth_getBlockByNumber",
        1,
        Reply::delay(1500, Reply::result(block)),
    );
    mock.on("eth_getBlockByNumber", Reply::result(block));
    let toml = chain_config("", &[("m", &mock.url(), "")]).replacen(
        "[chains.mainnet]",
        "[cache]\nmerge_wait = \"200ms\"\n[chains.mainnet]",
        1,
    );
    let proxy = std::sync::Arc::new(Proxy::start(&toml).await);
    head_known(&proxy).await;
    let leader = {
        let p = proxy.clone();
        tokio::spawn(
            async move { call(&p, "0", "eth_getBlockByNumber", r#"["0x5",false]"#, &[]).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let followers: Vec<_> = (1..4)
        .map(|i| {
            let p = proxy.clone();
            tokio::spawn(async move {
                call(
                    &p,
                    &i.to_string(),
                    "eth_getBlockByNumber",
                    r#"["0x5",false]"#,
                    &[],
                )
                .await
            })
        })
        .collect();
    for f in followers {
        let (body, _) = f.await.unwrap();
        assert!(body.contains("0xab"), "{body}");
    }
    // Every follower has its answer while the slow first read is still out.
    assert!(
        !leader.is_finished(),
        "the followers waited for the slow leader"
    );
    let (body, _) = leader.await.unwrap();
    assert!(body.contains("0xab"), "{body}");
}

#[tokio::test]
async fn a_write_makes_head_answers_asked_again() {
    let chain = SimChain::new(200, 1);
    let up = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&sim_config("poll_interval = \"100ms\"\n", &[&up])).await;
    head_known(&proxy).await;
    until_followed(&proxy).await;
    let (_, how) = call(&proxy, "1", "eth_blockNumber", "[]", &[]).await;
    assert_eq!(how, "hit");
    // A dev chain mines the transaction at once, before the tracker can see the new head.
    call(&proxy, "1", "eth_sendRawTransaction", r#"["0x02"]"#, &[]).await;
    let (_, how) = call(&proxy, "1", "eth_blockNumber", "[]", &[]).await;
    assert_eq!(how, "miss");
    let (_, how) = call(&proxy, "1", "eth_blockNumber", "[]", &[]).await;
    assert_eq!(how, "hit");
}
