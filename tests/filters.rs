//! Filters kept in detour (`eth_newFilter`, `eth_newBlockFilter`, `eth_getFilterChanges`,
//! `eth_getFilterLogs`, `eth_uninstallFilter`) on a simulated chain served by several
//! upstreams: every block and matching log once, in order, through an upstream going down, a
//! lagging one, heights missed while all were down, and reorgs of depth 1 and 3; expiry,
//! limits and bad input.

mod support;

use serde_json::{json, Value};
use support::chain::{removed, sim_config as config, SimChain, SimUpstream, ADDRESS_A, TOPIC};
use support::{eventually, Proxy};

/// The chain's filter status.
fn filters_status(proxy: &Proxy) -> Value {
    proxy.detour.status()["chains"][0]["filters"].clone()
}

fn followed_head(proxy: &Proxy) -> Option<u64> {
    filters_status(proxy)["head"]["number"].as_u64()
}

async fn wait_for_head(proxy: &Proxy, chain: &SimChain) {
    let want = (chain.height(), chain.hash_at(chain.height()));
    eventually("detour follows the chain to its head", || {
        let s = filters_status(proxy);
        s["head"]["number"].as_u64() == Some(want.0) && s["head"]["hash"] == want.1
    })
    .await;
}

async fn new_filter(proxy: &Proxy, method: &str, params: &str) -> String {
    let v = proxy.call("/mainnet", method, params).await;
    v["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} failed: {v}"))
        .to_owned()
}

async fn changes(proxy: &Proxy, id: &str) -> Vec<Value> {
    let v = proxy
        .call("/mainnet", "eth_getFilterChanges", &format!("[\"{id}\"]"))
        .await;
    v["result"]
        .as_array()
        .unwrap_or_else(|| panic!("eth_getFilterChanges failed: {v}"))
        .clone()
}

#[tokio::test]
async fn a_block_filter_gets_every_block_once_in_order_through_failover_lag_and_outage() {
    let chain = SimChain::new(10, 0);
    let (a, b) = (
        SimUpstream::start(&chain).await,
        SimUpstream::start(&chain).await,
    );
    let proxy = Proxy::start(&config("", &[&a, &b])).await;
    let id = new_filter(&proxy, "eth_newBlockFilter", "[]").await;
    assert!(
        id.starts_with("0x") && id.len() == 34,
        "a 16-byte hex id: {id}"
    );
    assert_eq!(changes(&proxy, &id).await, Vec::<Value>::new());
    let mut seen: Vec<Value> = Vec::new();

    chain.mine(3);
    wait_for_head(&proxy, &chain).await;
    seen.extend(changes(&proxy, &id).await);

    // The first upstream goes down; the other lags two blocks, then catches up: five blocks
    // arrive at once, filled in from their parents.
    a.set_down(true);
    b.set_lag(2);
    chain.mine(5);
    eventually("detour follows the lagging upstream", || {
        followed_head(&proxy) == Some(chain.height() - 2)
    })
    .await;
    seen.extend(changes(&proxy, &id).await);
    b.set_lag(0);
    wait_for_head(&proxy, &chain).await;

    // Every upstream down for a while: the heights mined meanwhile come once they return.
    b.set_down(true);
    chain.mine(4);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    a.set_down(false);
    b.set_down(false);
    wait_for_head(&proxy, &chain).await;
    seen.extend(changes(&proxy, &id).await);

    let want: Vec<Value> = (11..=chain.height())
        .map(|n| json!(chain.hash_at(n)))
        .collect();
    assert_eq!(
        seen, want,
        "every block from 11 to the head, once, in order"
    );
    assert_eq!(changes(&proxy, &id).await, Vec::<Value>::new());
    proxy.stop().await;
}

#[tokio::test]
async fn log_filters_report_reorged_logs_as_removed_then_the_new_branch() {
    let chain = SimChain::new(10, 2);
    let (a, b) = (
        SimUpstream::start(&chain).await,
        SimUpstream::start(&chain).await,
    );
    let proxy = Proxy::start(&config("", &[&a, &b])).await;
    let all = new_filter(&proxy, "eth_newFilter", "[{}]").await;
    let only_a = new_filter(
        &proxy,
        "eth_newFilter",
        &format!(
            r#"[{{"address":"{}","topics":[["{TOPIC}"]]}}]"#,
            ADDRESS_A.to_uppercase().replace("0X", "0x")
        ),
    )
    .await;
    let blocks = new_filter(&proxy, "eth_newBlockFilter", "[]").await;

    chain.mine(2);
    wait_for_head(&proxy, &chain).await;
    let logs =
        |from: u64, to: u64| -> Vec<Value> { (from..=to).flat_map(|n| chain.logs_at(n)).collect() };
    let mut want_all = logs(11, 12);
    assert_eq!(changes(&proxy, &all).await, want_all);
    let of_a = |v: Vec<Value>| -> Vec<Value> {
        v.into_iter()
            .filter(|l| l["address"] == ADDRESS_A)
            .collect()
    };
    assert_eq!(changes(&proxy, &only_a).await, of_a(want_all.clone()));
    changes(&proxy, &blocks).await;

    // Depth 1: block 12 is replaced, and 13 follows on the new branch.
    let dropped = chain.logs_at(12);
    chain.reorg(1, 2);
    wait_for_head(&proxy, &chain).await;
    want_all = dropped.into_iter().map(removed).collect();
    want_all.extend(logs(12, 13));
    assert_eq!(changes(&proxy, &all).await, want_all);
    assert_eq!(changes(&proxy, &only_a).await, of_a(want_all.clone()));
    let new_heads: Vec<Value> = (12..=13).map(|n| json!(chain.hash_at(n))).collect();
    assert_eq!(changes(&proxy, &blocks).await, new_heads);

    // Depth 3: 11, 12 and 13 are replaced; the dropped blocks' logs come highest block first.
    let dropped: Vec<Value> = [13, 12, 11]
        .iter()
        .flat_map(|&n| chain.logs_at(n))
        .collect();
    chain.reorg(3, 3);
    wait_for_head(&proxy, &chain).await;
    want_all = dropped.into_iter().map(removed).collect();
    want_all.extend(logs(11, 13));
    assert_eq!(changes(&proxy, &all).await, want_all);
    assert_eq!(changes(&proxy, &only_a).await, of_a(want_all.clone()));
    let new_heads: Vec<Value> = (11..=13).map(|n| json!(chain.hash_at(n))).collect();
    assert_eq!(changes(&proxy, &blocks).await, new_heads);

    // Each added block's logs were fetched once, by hash, however many filters there are.
    let by_hash = [a.methods(), b.methods()]
        .concat()
        .iter()
        .filter(|m| *m == "eth_getLogs")
        .count();
    assert_eq!(by_hash, 2 + 2 + 3, "one eth_getLogs per added block");
    proxy.stop().await;
}

#[tokio::test]
async fn get_filter_logs_queries_the_criteria_and_uninstall_removes_the_filter() {
    let chain = SimChain::new(20, 2);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config("", &[&a])).await;
    let id = new_filter(
        &proxy,
        "eth_newFilter",
        &format!(r#"[{{"fromBlock":"0x10","toBlock":"0x12","address":"{ADDRESS_A}"}}]"#),
    )
    .await;
    let v = proxy
        .call("/mainnet", "eth_getFilterLogs", &format!("[\"{id}\"]"))
        .await;
    let want: Vec<Value> = (0x10..=0x12)
        .flat_map(|n| chain.logs_at(n))
        .filter(|l| l["address"] == ADDRESS_A)
        .collect();
    assert_eq!(v["result"], json!(want), "{v}");

    let uninstall = |id: String| {
        let proxy = &proxy;
        async move {
            proxy
                .call("/mainnet", "eth_uninstallFilter", &format!("[\"{id}\"]"))
                .await["result"]
                .clone()
        }
    };
    assert_eq!(uninstall(id.clone()).await, json!(true));
    assert_eq!(filters_status(&proxy)["log_filters"], 0);
    assert_eq!(uninstall(id.clone()).await, json!(false));
    let v = proxy
        .call("/mainnet", "eth_getFilterChanges", &format!("[\"{id}\"]"))
        .await;
    assert_eq!(v["error"]["message"], "filter not found", "{v}");
    proxy.stop().await;
}

#[tokio::test]
async fn filters_expire_unpolled_and_their_count_is_bounded() {
    let chain = SimChain::new(10, 0);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config(
        "[filters]\ntimeout = \"300ms\"\nmax_per_client = 2\nmax_total = 3",
        &[&a],
    ))
    .await;
    let first = new_filter(&proxy, "eth_newBlockFilter", "[]").await;
    let second = new_filter(&proxy, "eth_newFilter", "[{}]").await;
    let v = proxy.call("/mainnet", "eth_newBlockFilter", "[]").await;
    assert_eq!(v["error"]["code"], -32000, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("filters.max_per_client"), "{message}");

    // Another client (in process) may open one more, then the total is reached.
    let opened = proxy
        .detour
        .request("mainnet", "eth_newBlockFilter", None)
        .await;
    assert!(opened.is_ok(), "{opened:?}");
    let refused = proxy
        .detour
        .request("mainnet", "eth_newBlockFilter", None)
        .await
        .unwrap_err();
    assert_eq!(refused.code, -32000);
    assert!(
        refused.message.contains("filters.max_total"),
        "{}",
        refused.message
    );

    // Polled filters stay; the others go after the timeout, and then the chain is no longer
    // followed.
    for _ in 0..8 {
        changes(&proxy, &first).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(filters_status(&proxy)["block_filters"], 1);
    assert_eq!(filters_status(&proxy)["log_filters"], 0);
    let v = proxy
        .call(
            "/mainnet",
            "eth_getFilterChanges",
            &format!("[\"{second}\"]"),
        )
        .await;
    assert_eq!(v["error"]["message"], "filter not found", "{v}");
    eventually("every filter expired", || {
        filters_status(&proxy)["block_filters"] == 0
    })
    .await;
    eventually("the chain is no longer followed", || {
        filters_status(&proxy)["following"] == false
    })
    .await;
    let polls = a.methods().len();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(a.methods().len(), polls, "no polling without filters");

    // A new filter starts following again, from the head as it is then.
    chain.mine(2);
    let again = new_filter(&proxy, "eth_newBlockFilter", "[]").await;
    chain.mine(1);
    wait_for_head(&proxy, &chain).await;
    assert_eq!(
        changes(&proxy, &again).await,
        vec![json!(chain.hash_at(13))]
    );
    proxy.stop().await;
}

#[tokio::test]
async fn bad_filter_calls_get_invalid_params() {
    let chain = SimChain::new(10, 0);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config("", &[&a])).await;
    for (method, params) in [
        ("eth_newFilter", "[]"),
        ("eth_newFilter", "[1]"),
        ("eth_newFilter", r#"[{"address":"0x12"}]"#),
        ("eth_newFilter", r#"[{"fromBlock":"0x5","toBlock":"0x4"}]"#),
        ("eth_newFilter", r#"[{"fromBlock":"soon"}]"#),
        (
            "eth_newFilter",
            r#"[{"topics":[null,null,null,null,null]}]"#,
        ),
        ("eth_newFilter", r#"[{"topics":["0x1234"]}]"#),
        ("eth_newFilter", "[{},{}]"),
        ("eth_newBlockFilter", "[1]"),
        ("eth_getFilterChanges", "[]"),
        ("eth_getFilterChanges", "[1]"),
        ("eth_getFilterChanges", r#"["0x1","0x2"]"#),
        ("eth_uninstallFilter", "{}"),
    ] {
        let v = proxy.call("/mainnet", method, params).await;
        assert_eq!(v["error"]["code"], -32602, "{method} {params}: {v}");
    }
    assert!(
        a.methods().is_empty(),
        "nothing went upstream: {:?}",
        a.methods()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn filter_calls_in_a_batch_keep_their_places() {
    let chain = SimChain::new(10, 0);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config("", &[&a])).await;
    let v = proxy
        .rpc(
            "/mainnet",
            r#"[{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"},
                {"jsonrpc":"2.0","id":2,"method":"eth_newBlockFilter"},
                {"jsonrpc":"2.0","id":3,"method":"eth_chainId"},
                {"jsonrpc":"2.0","id":4,"method":"eth_getFilterChanges","params":["0x0000000000000000000000000000dead"]},
                {"jsonrpc":"2.0","id":5,"method":"eth_getBlockByNumber","params":["0xa",false]}]"#,
        )
        .await;
    let ids: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5], "{v}");
    assert_eq!(v[0]["result"], "0xa");
    assert!(v[1]["result"].as_str().unwrap().len() == 34, "{v}");
    assert_eq!(v[2]["result"], "0x1");
    // An id detour does not hold goes upstream (it may be the upstream's own filter).
    assert_eq!(v[3]["error"]["message"], "filter not found");
    assert_eq!(v[4]["result"]["hash"], chain.hash_at(10));
    proxy.stop().await;
}

#[tokio::test]
async fn with_emulation_off_filter_calls_go_upstream() {
    let chain = SimChain::new(10, 0);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config("[filters]\nemulate = false", &[&a])).await;
    let id = new_filter(&proxy, "eth_newBlockFilter", "[]").await;
    assert_eq!(id, "0x00000000000000000000000000000abc");
    assert_eq!(a.methods(), ["eth_newBlockFilter"]);
    proxy.stop().await;
}
