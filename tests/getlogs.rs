//! `eth_getLogs` that providers accept: a wide range split into chunks of the chain's narrowest
//! upstream range and joined in order, a chunk rejected as too wide halved (each wording the
//! taxonomy knows), a chunk failing over on its own, `blockHash` queries never split, `latest`
//! read against the chain head.

mod support;

use serde_json::{json, Value};
use support::chain::{sim_config, SimChain, SimUpstream, ADDRESS_A};
use support::{eventually, Proxy};

/// Every log of blocks `from..=to`, in order, as the chain has them.
fn logs(chain: &SimChain, from: u64, to: u64) -> Vec<Value> {
    (from..=to).flat_map(|n| chain.logs_at(n)).collect()
}

fn config(extra_upstream: &str, ups: &[&SimUpstream]) -> String {
    let mut toml = sim_config("", ups);
    if !extra_upstream.is_empty() {
        toml = toml.replace("url = \"http", &format!("{extra_upstream}\nurl = \"http"));
    }
    toml
}

async fn head_known(proxy: &Proxy) {
    eventually("the chain head is known", || {
        proxy.detour.pool().chains[0].state.head().is_some()
    })
    .await;
}

fn metric(proxy: &Proxy, series: &str) -> u64 {
    proxy
        .detour
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_wide_range_is_split_and_joined_in_order() {
    let chain = SimChain::new(300, 2);
    let (a, b) = (
        SimUpstream::start(&chain).await,
        SimUpstream::start(&chain).await,
    );
    for u in [&a, &b] {
        u.set_logs_limit(Some((50, "block range is too large, max 50")));
    }
    let proxy = Proxy::start(&config("max_logs_range = 50", &[&a, &b])).await;
    head_known(&proxy).await;
    let got = proxy
        .call(
            "/mainnet",
            "eth_getLogs",
            r#"[{"fromBlock":"0x1","toBlock":"0x12c"}]"#,
        )
        .await;
    assert_eq!(got["result"], Value::Array(logs(&chain, 1, 300)));
    // Six chunks of 50 blocks, none refused, none asked twice.
    let mut ranges: Vec<_> = a.logs_ranges().into_iter().chain(b.logs_ranges()).collect();
    ranges.sort();
    let want: Vec<_> = (0..6).map(|k| (1 + 50 * k, 50 * (k + 1))).collect();
    assert_eq!(ranges, want);
    assert_eq!(
        metric(
            &proxy,
            r#"detour_getlogs_chunks_total{chain="mainnet",kind="range"}"#
        ),
        6
    );
    // Filters on the address are kept in every chunk.
    let got = proxy
        .call(
            "/mainnet",
            "eth_getLogs",
            &format!(r#"[{{"fromBlock":"0x1","toBlock":"0x12c","address":"{ADDRESS_A}"}}]"#),
        )
        .await;
    let want: Vec<Value> = logs(&chain, 1, 300)
        .into_iter()
        .filter(|l| l["address"] == ADDRESS_A)
        .collect();
    assert_eq!(got["result"], Value::Array(want));
}

#[tokio::test]
async fn a_rejected_chunk_is_halved_whatever_the_wording() {
    let chain = SimChain::new(200, 1);
    let up = SimUpstream::start(&chain).await;
    // Configured for 10 000 blocks (the default): the upstream's real limit is found by halving.
    let proxy = Proxy::start(&config("", &[&up])).await;
    head_known(&proxy).await;
    for wording in detour::rpc::classify::RANGE_REJECTED {
        let message = format!("eth_getLogs: {wording} (max 30)");
        up.set_logs_limit(Some((30, &message)));
        let got = proxy
            .call(
                "/mainnet",
                "eth_getLogs",
                r#"[{"fromBlock":"0x1","toBlock":"0xc8"}]"#,
            )
            .await;
        assert!(
            got["result"] == Value::Array(logs(&chain, 1, 200)),
            "{wording}: {}",
            &got.to_string()[..200.min(got.to_string().len())]
        );
    }
    assert!(
        metric(
            &proxy,
            r#"detour_getlogs_chunks_total{chain="mainnet",kind="halved"}"#
        ) > 0
    );
    // Narrow enough: sent as it is.
    up.set_logs_limit(Some((30, "block range is too large")));
    let before = up.logs_ranges().len();
    let got = proxy
        .call(
            "/mainnet",
            "eth_getLogs",
            r#"[{"fromBlock":"0x1","toBlock":"0xa"}]"#,
        )
        .await;
    assert_eq!(got["result"], Value::Array(logs(&chain, 1, 10)));
    assert_eq!(up.logs_ranges().len(), before + 1);
    // Another error is the call's answer, not halved.
    up.set_logs_limit(Some((30, "execution reverted")));
    let got = proxy
        .call(
            "/mainnet",
            "eth_getLogs",
            r#"[{"fromBlock":"0x1","toBlock":"0xc8"}]"#,
        )
        .await;
    assert_eq!(got["error"]["message"], "execution reverted", "{got}");
}

#[tokio::test]
async fn a_failed_chunk_fails_over_alone_and_latest_is_the_head() {
    let chain = SimChain::new(120, 1);
    let (a, b) = (
        SimUpstream::start(&chain).await,
        SimUpstream::start(&chain).await,
    );
    let proxy = Proxy::start(&config("max_logs_range = 25", &[&a, &b])).await;
    head_known(&proxy).await;
    a.set_down(true);
    let got = proxy
        .call(
            "/mainnet",
            "eth_getLogs",
            r#"[{"fromBlock":"0x1","toBlock":"latest"}]"#,
        )
        .await;
    assert_eq!(got["result"], Value::Array(logs(&chain, 1, 120)), "{got}");
    // Every chunk was served by the upstream that is up.
    let ranges = b.logs_ranges();
    assert_eq!(ranges.len(), 5, "{ranges:?}");
    assert!(ranges.iter().all(|(f, t)| t - f < 25));
}

#[tokio::test]
async fn block_hash_queries_and_batches() {
    let chain = SimChain::new(100, 1);
    let up = SimUpstream::start(&chain).await;
    up.set_logs_limit(Some((10, "block range is too large")));
    let proxy = Proxy::start(&config("max_logs_range = 10", &[&up])).await;
    head_known(&proxy).await;
    let hash = chain.hash_at(40);
    let got = proxy
        .call(
            "/mainnet",
            "eth_getLogs",
            &format!(r#"[{{"blockHash":"{hash}"}}]"#),
        )
        .await;
    assert_eq!(got["result"], Value::Array(chain.logs_at(40)));
    assert!(up.logs_ranges().is_empty(), "a blockHash query was split");
    // In a batch, beside other calls, in order.
    let batch = json!([
        {"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"},
        {"jsonrpc":"2.0","id":2,"method":"eth_getLogs","params":[{"fromBlock":"0x1","toBlock":"0x32"}]},
        {"jsonrpc":"2.0","id":3,"method":"eth_chainId"},
    ]);
    let got = proxy.rpc("/mainnet", &batch.to_string()).await;
    assert_eq!(got[0]["id"], 1);
    assert_eq!(got[1]["id"], 2);
    assert_eq!(got[1]["result"], Value::Array(logs(&chain, 1, 50)));
    assert_eq!(got[2]["result"], "0x1");
}
