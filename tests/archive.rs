//! Archive routing: calls about old state go to archive upstreams first, everything else to
//! the others (so archive quota is not spent on `latest`); a node that says its old state is
//! pruned is learned not to be one.

mod support;

use support::{chain_config, Mock, Proxy, Reply};

const ADDR: &str = "0x00000000000000000000000000000000000000aa";

async fn answered_by(proxy: &Proxy, method: &str, params: &str) -> String {
    let v = proxy.call("/mainnet", method, params).await;
    v["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} {params}: {v}"))
        .to_owned()
}

async fn head_known(proxy: &Proxy, head: u64) {
    support::eventually("the chain head is known", || {
        proxy.detour.pool().chains[0].state.head() == Some(head)
    })
    .await;
}

#[tokio::test]
async fn old_state_goes_to_archive_nodes_and_recent_state_does_not() {
    let (full, arch) = (Mock::start("full").await, Mock::start("arch").await);
    for m in [&full, &arch] {
        m.set_head(10_000);
    }
    let toml = format!(
        "[cache]\nenabled = false\n{}",
        chain_config(
            "archive_depth = 128\nmethods = { deny = [] }",
            &[
                ("full", &full.url(), ""),
                ("arch", &arch.url(), "archive = true"),
            ],
        )
    );
    let proxy = Proxy::start(&toml).await;
    head_known(&proxy, 10_000).await;
    let old = format!(r#"["{ADDR}","0x10"]"#);
    let recent = format!(r#"["{ADDR}","0x{:x}"]"#, 10_000 - 100);
    let by_hash = format!(
        r#"[{{"to":"{ADDR}"}},{{"blockHash":"0x{}"}}]"#,
        "ab".repeat(32)
    );
    for _ in 0..10 {
        assert_eq!(answered_by(&proxy, "eth_getBalance", &old).await, "arch");
        assert_eq!(answered_by(&proxy, "eth_call", &by_hash).await, "arch");
        assert_eq!(
            answered_by(&proxy, "debug_traceTransaction", r#"["0x01"]"#).await,
            "arch"
        );
        assert_eq!(answered_by(&proxy, "eth_getBalance", &recent).await, "full");
        assert_eq!(
            answered_by(&proxy, "eth_getBalance", &format!(r#"["{ADDR}","latest"]"#)).await,
            "full"
        );
        // Blocks and receipts are kept by every full node: not archive calls.
        assert_eq!(
            answered_by(&proxy, "eth_getBlockByNumber", r#"["0x10",false]"#).await,
            "full"
        );
    }
    // A batch with one old-state call goes to the archive node whole.
    let batch = format!(
        r#"[{{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}},{{"jsonrpc":"2.0","id":2,"method":"eth_getCode","params":["{ADDR}","0x1"]}}]"#
    );
    let got = proxy.rpc("/mainnet", &batch).await;
    assert_eq!(got[1]["result"], "arch", "{got}");
    // The archive node down: old state still gets an answer, from the other.
    arch.always(Reply::status(503));
    assert_eq!(answered_by(&proxy, "eth_getBalance", &old).await, "full");
    let status = proxy.upstream_status("arch");
    assert_eq!(status["archive"], true);
    assert_eq!(status["archive_from"], "config");
    proxy.stop().await;
}

#[tokio::test]
async fn a_node_that_says_its_state_is_pruned_is_learned_not_to_be_an_archive() {
    let (pruned, keeps) = (Mock::start("pruned").await, Mock::start("keeps").await);
    for m in [&pruned, &keeps] {
        m.set_head(10_000);
    }
    pruned.on(
        "eth_getBalance",
        Reply::error(-32000, "missing trie node 1b2c (path )"),
    );
    let toml = format!(
        "[cache]\nenabled = false\n{}",
        chain_config(
            "",
            &[
                ("pruned", &pruned.url(), "weight = 100"),
                ("keeps", &keeps.url(), ""),
            ],
        )
    );
    let proxy = Proxy::start(&toml).await;
    head_known(&proxy, 10_000).await;
    let old = format!(r#"["{ADDR}","0x10"]"#);
    // Until something is learned, the heavier-weighted upstream is asked first; it says the
    // state is gone, and the other answers.
    while pruned.methods().iter().all(|m| m != "eth_getBalance") {
        assert_eq!(answered_by(&proxy, "eth_getBalance", &old).await, "keeps");
    }
    let status = proxy.upstream_status("pruned");
    assert_eq!(status["archive"], false, "{status}");
    assert_eq!(status["archive_from"], "learned");
    // From now on old state goes to the other first: the pruned node is not asked again.
    let asked = pruned.calls().len();
    for _ in 0..20 {
        assert_eq!(answered_by(&proxy, "eth_getBalance", &old).await, "keeps");
    }
    assert_eq!(pruned.calls().len(), asked);
    let status = proxy.upstream_status("keeps");
    assert_eq!(status["archive"], true, "{status}");
    assert_eq!(status["archive_from"], "learned");
    // Recent state goes to the node that is not an archive, and no longer to the archive.
    let recent = format!(r#"[{{"to":"{ADDR}"}},"latest"]"#);
    for _ in 0..20 {
        assert_eq!(answered_by(&proxy, "eth_call", &recent).await, "pruned");
    }
    proxy.stop().await;
}
