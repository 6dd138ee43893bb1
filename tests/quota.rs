//! Quotas per upstream: `max_rps` and `compute_units_per_second` hold under a concurrent
//! client load, measured where the upstream sees them; an upstream at its budget is skipped
//! and requests wait for room rather than fail; a 429 lowers the budget for a while.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{busiest, chain_config, Arrival, Mock, Proxy, Reply};

fn total(mock: &Mock) -> usize {
    mock.arrivals().iter().map(|a| a.1).sum()
}

/// The limiter counts sends, the mock arrivals: a send's transit time on a loaded machine
/// varies by a few milliseconds, so the busiest second is measured over 950 ms.
const SECOND: Duration = Duration::from_millis(950);

fn metric(proxy: &Proxy, series: &str) -> f64 {
    proxy
        .detour
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `tasks` clients sending `body` back to back for `run`; every answer's result.
async fn load(proxy: &Proxy, tasks: usize, run: Duration, body: &'static str) -> Vec<Value> {
    let url = proxy.url("/mainnet");
    let until = Instant::now() + run;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let url = url.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while Instant::now() < until {
                let (status, _, text) = support::http_request("POST", &url, body).await;
                assert_eq!(status, 200, "{text}");
                let v: Value = serde_json::from_str(&text).unwrap();
                got.push(v);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

const CALL: &str =
    r#"{"jsonrpc":"2.0","id":7,"method":"eth_call","params":[{"to":"0x01"},"latest"]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_ever_sees_more_than_its_max_rps() {
    let (a, b) = (Mock::start("a").await, Mock::start("b").await);
    let toml = format!(
        "[cache]\nenabled = false\n{}",
        chain_config(
            "",
            &[
                ("a", &a.url(), "max_rps = 15"),
                ("b", &b.url(), "max_rps = 10"),
            ],
        )
    );
    let proxy = Proxy::start(&toml).await;
    let started = Instant::now();
    let answers = load(&proxy, 12, Duration::from_millis(2500), CALL).await;
    let took = started.elapsed().as_secs_f64();
    // Every request was answered: over budget, requests wait for room instead of failing.
    for v in &answers {
        let r = v["result"]
            .as_str()
            .unwrap_or_else(|| panic!("not a result: {v}"));
        assert!(r == "a" || r == "b");
    }
    // The busiest second at each mock, probes included.
    for (mock, max) in [(&a, 15), (&b, 10)] {
        let busiest = busiest(&mock.arrivals(), None, SECOND);
        assert!(
            busiest <= max,
            "{} saw {busiest} calls within a second (max_rps {max})",
            mock.name
        );
        let sent = total(mock);
        assert!(
            sent as f64 <= max as f64 * (took + 1.0),
            "{} saw {sent} calls in {took:.1} s (max_rps {max})",
            mock.name
        );
        // And the budget was used: the load was well above it.
        assert!(sent >= max, "{} saw only {sent} calls", mock.name);
    }
    assert!(answers.len() >= 25, "only {} answers", answers.len());
    assert!(
        metric(
            &proxy,
            r#"detour_upstream_throttled_total{chain="mainnet",upstream="a"}"#
        ) > 0.0
    );
    // eth_call costs 26 compute units in the built-in table.
    let cu = metric(
        &proxy,
        r#"detour_upstream_compute_units_total{chain="mainnet",upstream="b"}"#,
    );
    let b_calls = b.calls().len() as f64;
    assert_eq!(cu, 26.0 * b_calls);
    // /status shows the budget in use.
    let status = proxy.upstream_status("a");
    assert_eq!(status["quota"]["max_rps"], 15);
    assert!(status["quota"]["calls"].as_u64().unwrap() <= 15);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_units_hold_with_the_configured_weights() {
    let a = Mock::start("a").await;
    // eth_call at 25 compute units against 100 per second: 4 calls a second (the probes are
    // set to cost nothing here).
    let toml = format!(
        "[cache]\nenabled = false\n[compute_units]\neth_call = 25\neth_blockNumber = 0\n{}",
        chain_config("", &[("a", &a.url(), "compute_units_per_second = 100")])
    );
    let proxy = Proxy::start(&toml).await;
    let answers = load(&proxy, 6, Duration::from_millis(2200), CALL).await;
    assert!(answers.iter().all(|v| v["result"] == "a"));
    let arrivals = a.arrivals();
    let busiest = busiest(&arrivals, Some("eth_call"), SECOND);
    assert!(
        busiest <= 4,
        "{busiest} eth_calls within a second; 100 CU at 25 each is 4"
    );
    assert!(a.calls().len() >= 8, "the budget was not used");
    let status = proxy.upstream_status("a");
    assert_eq!(status["quota"]["compute_units_per_second"], 100);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_no_quota_can_ever_take_says_so() {
    let a = Mock::start("a").await;
    let toml = format!(
        "[cache]\nenabled = false\n{}",
        chain_config("", &[("a", &a.url(), "max_rps = 2")])
    );
    let proxy = Proxy::start(&toml).await;
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[]},{"jsonrpc":"2.0","id":2,"method":"eth_call","params":[]},{"jsonrpc":"2.0","id":3,"method":"eth_call","params":[]}]"#;
    let got = proxy.rpc("/mainnet", batch).await;
    for v in got.as_array().unwrap() {
        assert_eq!(v["error"]["code"], -32005, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("quota") && msg.contains("of 2 calls per second"),
            "{msg}"
        );
    }
    assert_eq!(a.calls().len(), 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_lowers_the_budget_for_a_while() {
    let (a, b) = (Mock::start("a").await, Mock::start("b").await);
    let toml = format!(
        "[cache]\nenabled = false\n{}",
        chain_config(
            "",
            &[("a", &a.url(), "max_rps = 40"), ("b", &b.url(), "tier = 1")],
        )
    );
    let proxy = Proxy::start(&toml).await;
    let run = tokio::spawn({
        let url = proxy.url("/mainnet");
        async move {
            let until = Instant::now() + Duration::from_millis(3500);
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let url = url.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0;
                    while Instant::now() < until {
                        let (status, _, text) = support::http_request("POST", &url, CALL).await;
                        assert_eq!(status, 200);
                        let v: Value = serde_json::from_str(&text).unwrap();
                        assert!(v["result"].is_string(), "{v}");
                        n += 1;
                    }
                    n
                }));
            }
            let mut n = 0;
            for t in tasks {
                n += t.await.unwrap();
            }
            n
        }
    });
    // A second in, at its budget, a refuses one call with a 429 and Retry-After: 1.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused_from = Instant::now();
    a.times(
        "eth_call",
        1,
        Reply::Status(429, "slow down".into(), vec![("retry-after", "1".into())]),
    );
    assert!(run.await.unwrap() > 0);
    let status = proxy.upstream_status("a");
    let quota = &status["quota"];
    assert_eq!(quota["lowered"], true, "{status}");
    let lowered = quota["max_rps"].as_u64().unwrap();
    assert!((1..=20).contains(&lowered), "{quota}");
    // Once its cool-down was over, a took no more than the lowered budget; tier 1 the rest.
    let after: Vec<Arrival> = a
        .arrivals()
        .into_iter()
        .filter(|t| t.0 > refused_from + Duration::from_millis(1100))
        .collect();
    let busiest_after = busiest(&after, None, SECOND);
    assert!(
        busiest_after as u64 <= lowered,
        "a saw {busiest_after} calls within a second after its 429 (lowered to {lowered})"
    );
    assert!(
        !after.is_empty(),
        "a was not used again after its cool-down"
    );
    assert!(!b.calls().is_empty(), "tier 1 took nothing");
    proxy.stop().await;
}
