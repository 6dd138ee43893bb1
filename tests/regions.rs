//! Failure domains and hedged reads: a failing region is avoided and traffic returns when it
//! recovers; retries and hedges go to another region; a hung upstream costs a hedge delay, not
//! a timeout; writes are never hedged.

mod support;

use std::time::{Duration, Instant};

use support::{chain_config, eventually, Mock, Proxy, Reply};

const FAST: &str = "[chains.mainnet.health]\nprobe_interval = \"30ms\"\nidle_probe_interval = \"30ms\"\nunhealthy_after = 2\nhealthy_after = 1\nregion_window = \"300ms\"\n";

fn degraded(p: &Proxy, region: &str) -> bool {
    p.detour.status()["chains"][0]["regions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == region && r["degraded"] == true)
}

async fn two_regions() -> (Vec<Mock>, Proxy) {
    let mut mocks = Vec::new();
    for name in ["e1", "e2", "w1", "w2"] {
        mocks.push(Mock::start(name).await);
    }
    let ups: Vec<(String, String, String)> = mocks
        .iter()
        .map(|m| {
            // East is preferred while healthy: its weight divides its cost.
            let extra = if m.name.starts_with('e') {
                "region = \"east\"\nweight = 100"
            } else {
                "region = \"west\""
            };
            (m.name.clone(), m.url(), extra.to_string())
        })
        .collect();
    let refs: Vec<(&str, &str, &str)> = ups
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    let p = Proxy::start(&chain_config(FAST, &refs)).await;
    eventually("heads known", || {
        ["e1", "e2", "w1", "w2"]
            .iter()
            .all(|n| p.upstream_status(n)["head"] == 100)
    })
    .await;
    (mocks, p)
}

#[tokio::test]
async fn a_failing_region_is_avoided_and_traffic_returns_when_it_recovers() {
    let (m, p) = two_regions().await;
    let (e1, e2) = (&m[0], &m[1]);
    // The whole east region goes down: traffic and probes alike.
    for e in [e1, e2] {
        e.always(Reply::status(503));
        e.probe_reply(Some(Reply::status(503)));
    }
    for _ in 0..40 {
        let (v, by) = p.call_via("/mainnet", "eth_getBalance", "[]").await;
        assert!(v.get("result").is_some(), "no failed read: {v}");
        assert!(by.starts_with('w'), "answered by {by}");
    }
    eventually("east is degraded", || degraded(&p, "east")).await;
    assert!(p.states("e1").contains(&"degraded_region".to_string()));

    // East recovers: its upstreams prove healthy (probes), the region clears, traffic returns.
    for e in [e1, e2] {
        e.always(Reply::result(&format!("\"{}\"", e.name)));
        e.probe_reply(None);
    }
    eventually("east recovered", || !degraded(&p, "east")).await;
    // East is preferred (weight 100) once healthy: traffic returns within seconds.
    let started = Instant::now();
    loop {
        let (_, by) = p.call_via("/mainnet", "eth_getBalance", "[]").await;
        if by.starts_with('e') {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "traffic never returned to the recovered region"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn one_failing_member_degrades_its_region_and_its_healthy_peer_serves_last() {
    let (m, p) = two_regions().await;
    let (e1, e2) = (&m[0], &m[1]);
    e1.always(Reply::Close);
    e1.probe_reply(Some(Reply::Close));
    eventually("east is degraded", || degraded(&p, "east")).await;
    let e2_hits = e2.hits();
    for _ in 0..30 {
        let (_, by) = p.call_via("/mainnet", "eth_getBalance", "[]").await;
        assert!(by.starts_with('w'), "a degraded region serves last: {by}");
    }
    assert_eq!(e2.hits(), e2_hits);
}

#[tokio::test]
async fn a_retry_goes_to_another_region() {
    // Tier 0: "e1" fails; tier 1: "e2" (same region) and "w1" (another region).
    let e1 = Mock::start("e1").await;
    let e2 = Mock::start("e2").await;
    let w1 = Mock::start("w1").await;
    e1.always(Reply::status(502));
    let p = Proxy::start(&chain_config(
        // One failure does not degrade "east" here: only the attempt's region steers the retry.
        "[chains.mainnet.health]\nregion_failure_share = 1.0\n[chains.mainnet.hedge]\nenabled = false\n",
        &[
            ("e1", &e1.url(), "tier = 0\nregion = \"east\""),
            // Without the region rule, "e2" would always win: its weight divides its cost.
            ("e2", &e2.url(), "tier = 1\nregion = \"east\"\nweight = 100"),
            ("w1", &w1.url(), "tier = 1\nregion = \"west\""),
        ],
    ))
    .await;
    // Two requests: "e1" fails both (two soft failures do not eject it yet).
    for _ in 0..2 {
        let (v, by) = p.call_via("/mainnet", "eth_getBalance", "[]").await;
        assert_eq!(v["result"], "w1");
        assert_eq!(by, "w1");
    }
    assert_eq!(e1.hits(), 2);
    assert_eq!(e2.hits(), 0);
    assert!(!degraded(&p, "east"));
}

#[tokio::test]
async fn a_hedge_wins_against_a_hung_upstream_and_the_loser_is_not_a_failure() {
    let hung = Mock::start("hung").await;
    let good = Mock::start("good").await;
    // Accepts the connection, never answers requests (probes still answer: a blackhole).
    hung.always(Reply::Hang);
    let p = Proxy::start(&chain_config(
        "[chains.mainnet.hedge]\nmin_delay = \"20ms\"\nmax_delay = \"100ms\"\n",
        &[
            (
                "hung",
                &hung.url(),
                "tier = 0\ntimeout = \"30s\"\nregion = \"a\"",
            ),
            ("good", &good.url(), "tier = 1\nregion = \"b\""),
        ],
    ))
    .await;
    let started = Instant::now();
    let (v, by) = p.call_via("/mainnet", "eth_getBalance", "[]").await;
    assert_eq!(v["result"], "good");
    assert_eq!(by, "good");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered by the hedge, not after the 30 s attempt timeout"
    );
    assert_eq!(hung.hits(), 1);
    let st = p.upstream_status("hung");
    assert_eq!(
        st["failures"], 0,
        "a cancelled attempt is not a failure: {st}"
    );
    assert!(
        st["latency_ms"].as_f64().unwrap() >= 20.0,
        "its wait counts as latency: {st}"
    );
}

#[tokio::test]
async fn writes_are_never_hedged() {
    let hung = Mock::start("hung").await;
    let good = Mock::start("good").await;
    hung.always(Reply::Hang);
    let p = Proxy::start(&chain_config(
        "[chains.mainnet.hedge]\nmin_delay = \"10ms\"\nmax_delay = \"10ms\"\n",
        &[
            ("hung", &hung.url(), "tier = 0\ntimeout = \"500ms\""),
            ("good", &good.url(), "tier = 1"),
        ],
    ))
    .await;
    let v = p
        .call("/mainnet", "eth_sendRawTransaction", r#"["0x01"]"#)
        .await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("not retried"), "{msg}");
    assert_eq!(good.hits(), 0, "a write is sent once");
}

#[tokio::test]
async fn unknown_methods_go_to_one_upstream_unless_declared_reads() {
    for (declared, hedged) in [("", false), ("reads = [\"zks_*\"]", true)] {
        let hung = Mock::start("hung").await;
        let good = Mock::start("good").await;
        hung.always(Reply::Hang);
        let p = Proxy::start(&chain_config(
            &format!(
                "[chains.mainnet.hedge]\nmin_delay = \"10ms\"\nmax_delay = \"10ms\"\n\
                 [chains.mainnet.methods]\n{declared}\n"
            ),
            &[
                ("hung", &hung.url(), "tier = 0\ntimeout = \"300ms\""),
                ("good", &good.url(), "tier = 1"),
            ],
        ))
        .await;
        let v = p.call("/mainnet", "zks_doSomething", "[]").await;
        if hedged {
            assert_eq!(v["result"], "good", "{v}");
            assert_eq!(good.methods(), ["zks_doSomething"]);
        } else {
            // It might change state: sent once, and the timeout is the answer.
            let msg = v["error"]["message"].as_str().unwrap_or_default();
            assert!(msg.contains("not retried"), "{v}");
            assert_eq!(good.hits(), 0, "an unknown method was sent twice");
        }
    }
}
