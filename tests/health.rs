//! Health checks: chain-id quarantine, head tracking, lag, stale heads, probe hysteresis,
//! adaptive probing, and the status document.

mod support;

use std::time::Duration;

use support::{chain_config, eventually, Mock, Proxy, Reply};

/// Health settings fast enough for tests.
fn fast(extra: &str) -> String {
    format!(
        "[chains.mainnet.health]\nprobe_interval = \"30ms\"\nidle_probe_interval = \"30ms\"\n\
         chain_check_interval = \"30ms\"\nunhealthy_after = 2\nhealthy_after = 2\n{extra}\n"
    )
}

/// Sends `n` reads of the latest state; returns which upstream answered each.
async fn answered_by(p: &Proxy, method: &str, params: &str, n: usize) -> Vec<String> {
    let mut by = Vec::with_capacity(n);
    for _ in 0..n {
        let (v, who) = p.call_via("/mainnet", method, params).await;
        assert!(v.get("result").is_some(), "{v}");
        by.push(who);
    }
    by
}

#[tokio::test]
async fn an_upstream_on_the_wrong_chain_is_quarantined_and_returns_when_fixed() {
    let good = Mock::start("good").await;
    let evil = Mock::start("evil").await;
    evil.set_chain_id(5);
    let p = Proxy::start(&chain_config(
        &fast(""),
        &[("good", &good.url(), ""), ("evil", &evil.url(), "")],
    ))
    .await;
    eventually("evil is quarantined", || {
        p.states("evil").contains(&"wrong_chain".to_string())
    })
    .await;
    let st = p.upstream_status("evil");
    assert_eq!(st["chain_check"], "wrong");
    assert_eq!(st["reported_chain_id"], 5);
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("expected 1, got 5"),
        "{st}"
    );
    let before = evil.hits();
    let by = answered_by(&p, "eth_getBalance", r#"["0x01","latest"]"#, 20).await;
    assert!(by.iter().all(|b| b == "good"), "{by:?}");
    assert_eq!(
        evil.hits(),
        before,
        "a quarantined upstream gets no traffic"
    );

    // The only upstream on the wrong chain: a clear error, nothing sent there.
    good.set_chain_id(5);
    eventually("good is quarantined too", || {
        p.states("good").contains(&"wrong_chain".to_string())
    })
    .await;
    let v = p.call("/mainnet", "eth_getBalance", "[]").await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("wrong chain (expected 1, got 5)"), "{msg}");
    let (status, _, _) = support::http_request("GET", &p.url("/readyz"), "").await;
    assert_eq!(status, 503, "no usable upstream: not ready");

    // Fixed: verified again at the next chain check, and served.
    evil.set_chain_id(1);
    eventually("evil is verified again", || {
        p.upstream_status("evil")["chain_check"] == "verified"
    })
    .await;
    let (_, by) = p.call_via("/mainnet", "eth_getBalance", "[]").await;
    assert_eq!(by, "evil");
}

#[tokio::test]
async fn a_lagging_upstream_serves_no_latest_reads_until_it_catches_up() {
    let behind = Mock::start("behind").await;
    let ahead = Mock::start("ahead").await;
    behind.set_head(100);
    ahead.set_head(200);
    let p = Proxy::start(&chain_config(
        &fast("max_lag_blocks = 5"),
        // "behind" would win every choice (its weight divides its cost) if it were fit.
        &[
            ("behind", &behind.url(), "weight = 100"),
            ("ahead", &ahead.url(), ""),
        ],
    ))
    .await;
    eventually("behind is lagging", || {
        p.states("behind").contains(&"lagging".to_string())
    })
    .await;
    assert_eq!(p.upstream_status("behind")["lag"], 100);
    assert_eq!(p.detour.status()["chains"][0]["head"], 200);

    let by = answered_by(&p, "eth_getBalance", r#"["0x01","latest"]"#, 30).await;
    assert!(by.iter().all(|b| b == "ahead"), "latest reads: {by:?}");
    let by = answered_by(&p, "eth_call", r#"[{"to":"0x01"}]"#, 10).await;
    assert!(by.iter().all(|b| b == "ahead"), "no block = latest: {by:?}");
    // A block above its head never goes there (0xc8 = 200).
    let by = answered_by(&p, "eth_getBlockByNumber", r#"["0xc8",false]"#, 20).await;
    assert!(by.iter().all(|b| b == "ahead"), "block 200: {by:?}");
    // An old block it has: it may serve it (and, preferred, it does).
    let by = answered_by(&p, "eth_getBlockByNumber", r#"["0x32",false]"#, 10).await;
    assert!(by.iter().all(|b| b == "behind"), "block 50: {by:?}");

    // It catches up: back for latest reads.
    behind.set_head(200);
    eventually("behind is healthy", || p.states("behind").is_empty()).await;
    let by = answered_by(&p, "eth_getBalance", r#"["0x01","latest"]"#, 10).await;
    assert!(
        by.iter().all(|b| b == "behind"),
        "a caught-up upstream gets latest reads again: {by:?}"
    );
}

#[tokio::test]
async fn when_every_upstream_lags_they_still_serve() {
    let only = Mock::start("only").await;
    let p = Proxy::start(&chain_config(&fast(""), &[("only", &only.url(), "")])).await;
    // Its head is the chain head: never lagging by itself, but a block above its head is still
    // sent rather than refused.
    let (v, by) = p
        .call_via("/mainnet", "eth_getBlockByNumber", r#"["0xffff",false]"#)
        .await;
    assert_eq!((v["result"].as_str(), by.as_str()), (Some("only"), "only"));
}

#[tokio::test]
async fn a_stuck_head_is_stale_and_excluded_while_others_move() {
    let stuck = Mock::start("stuck").await;
    let live = Mock::start("live").await;
    stuck.set_head(100);
    live.set_head(100);
    let p = Proxy::start(&chain_config(
        &fast("max_lag_blocks = 1000\nstale_after = \"300ms\""),
        &[("stuck", &stuck.url(), ""), ("live", &live.url(), "")],
    ))
    .await;
    eventually("both heads known", || {
        p.upstream_status("stuck")["head"] == 100 && p.upstream_status("live")["head"] == 100
    })
    .await;
    // The others move on; "stuck" keeps answering 100.
    let mut head = 100;
    let start = std::time::Instant::now();
    while !p.states("stuck").contains(&"stale".to_string()) {
        assert!(start.elapsed() < Duration::from_secs(10), "never stale");
        head += 1;
        live.set_head(head);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let by = answered_by(&p, "eth_getBalance", r#"["0x01","latest"]"#, 20).await;
    assert!(by.iter().all(|b| b == "live"), "{by:?}");
    // It moves again: no longer stale.
    stuck.set_head(head);
    eventually("stuck is fresh again", || {
        !p.states("stuck").contains(&"stale".to_string())
    })
    .await;
}

#[tokio::test]
async fn failed_probes_eject_after_a_run_and_good_probes_bring_it_back() {
    let flaky = Mock::start("flaky").await;
    let other = Mock::start("other").await;
    let p = Proxy::start(&chain_config(
        &fast(""),
        &[("flaky", &flaky.url(), ""), ("other", &other.url(), "")],
    ))
    .await;
    eventually("heads known", || p.upstream_status("flaky")["head"] == 100).await;
    // No client traffic at all: the probes alone take it out of rotation.
    flaky.probe_reply(Some(Reply::status(503)));
    eventually("flaky is ejected by probes", || {
        p.states("flaky").contains(&"cooling_down".to_string())
    })
    .await;
    let st = p.upstream_status("flaky");
    assert!(
        st["last_error"].as_str().unwrap().contains("HTTP 503"),
        "{st}"
    );
    let hits = flaky.hits();
    let by = answered_by(&p, "eth_getBalance", "[]", 10).await;
    assert!(by.iter().all(|b| b == "other"), "{by:?}");
    assert_eq!(flaky.hits(), hits);
    // Probes succeed again: back in rotation.
    flaky.probe_reply(None);
    eventually("flaky is back", || p.states("flaky").is_empty()).await;
}

#[tokio::test]
async fn an_idle_chain_is_probed_slowly_and_traffic_speeds_probes_up() {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config(
        "[chains.mainnet.health]\nprobe_interval = \"50ms\"\nidle_probe_interval = \"10s\"\nidle_after = \"300ms\"\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let head_probes = |m: &Mock| {
        m.probes()
            .iter()
            .filter(|x| *x == "eth_blockNumber")
            .count()
    };
    let idle = head_probes(&up);
    assert!(
        (1..=2).contains(&idle),
        "idle: one probe at start, then one per 10 s; got {idle}"
    );
    // Client traffic (not revealing the head): probes every 50 ms.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1000) {
        p.call("/mainnet", "eth_gasPrice", "[]").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = head_probes(&up) - idle;
    assert!(busy >= 3, "busy: probes every 50 ms; got {busy} in 1 s");
    assert_eq!(p.detour.status()["chains"][0]["probe_interval_ms"], 50);
}

#[tokio::test]
async fn live_block_number_answers_count_as_probes() {
    let up = Mock::start("up").await;
    up.on("eth_blockNumber", Reply::result("\"0x64\""));
    let p = Proxy::start(&chain_config(
        "[chains.mainnet.health]\nprobe_interval = \"100ms\"\nidle_probe_interval = \"100ms\"\n",
        &[("up", &up.url(), "")],
    ))
    .await;
    eventually("first probe", || !up.probes().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = up
        .probes()
        .iter()
        .filter(|x| *x == "eth_blockNumber")
        .count();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1000) {
        let v = p.call("/mainnet", "eth_blockNumber", "[]").await;
        assert_eq!(v["result"], "0x64");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = up
        .probes()
        .iter()
        .filter(|x| *x == "eth_blockNumber")
        .count()
        - before;
    assert!(
        during <= 1,
        "traffic revealed the head every 10 ms, so no head probe was due; got {during}"
    );
    assert_eq!(p.upstream_status("up")["head"], 100);
}

#[tokio::test]
async fn status_reports_each_upstream_without_secrets() {
    let a = Mock::start("a").await;
    let keyed = format!("{}/v3/SECRETKEY123456", a.url());
    let p = Proxy::start(&chain_config(
        &fast(""),
        &[
            ("own", &a.url(), "tier = 0\nregion = \"home\""),
            (
                "paid",
                &keyed,
                "tier = 1\nregion = \"aws:us-east-1\"\nheaders = { \"x-api-key\" = \"HEADERSECRET\" }",
            ),
        ],
    ))
    .await;
    eventually("heads known", || p.upstream_status("paid")["head"] == 100).await;
    let (status, headers, text) = support::http_request("GET", &p.url("/status"), "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert!(
        !text.contains("SECRETKEY") && !text.contains("HEADERSECRET"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let chain = &v["chains"][0];
    assert_eq!(chain["name"], "mainnet");
    assert_eq!(chain["head"], 100);
    let paid = &chain["upstreams"][1];
    for (k, want) in [
        ("name", "paid"),
        ("state", "healthy"),
        ("region", "aws:us-east-1"),
        ("chain_check", "verified"),
    ] {
        assert_eq!(paid[k], want, "{k}: {paid}");
    }
    assert_eq!(paid["tier"], 1);
    assert_eq!(paid["lag"], 0);
    assert!(paid["endpoint"].as_str().unwrap().ends_with("/***"));
    for key in [
        "latency_ms",
        "in_flight",
        "errors_last_minute",
        "last_error",
        "cooldown_remaining_ms",
    ] {
        assert!(paid.get(key).is_some(), "{key} missing: {paid}");
    }
}

#[tokio::test]
async fn a_slow_upstream_loses_traffic_to_a_fast_one() {
    let slow = Mock::start("slow").await;
    let fast_up = Mock::start("fast").await;
    slow.always(Reply::delay(150, Reply::result("\"slow\"")));
    let p = Proxy::start(&chain_config(
        "[chains.mainnet.hedge]\nenabled = false\n",
        &[("slow", &slow.url(), ""), ("fast", &fast_up.url(), "")],
    ))
    .await;
    // Both probe equally fast; one real answer from `slow` (the other upstream cordoned for it)
    // teaches detour its cost.
    assert!(p.detour.cordon("mainnet", "fast", true));
    assert_eq!(answered_by(&p, "eth_getBalance", "[]", 1).await, ["slow"]);
    assert!(p.detour.cordon("mainnet", "fast", false));
    assert!(
        p.upstream_status("slow")["latency_ms"].as_f64().unwrap() >= 100.0,
        "{}",
        p.upstream_status("slow")
    );
    let by = answered_by(&p, "eth_getBalance", "[]", 30).await;
    let slow_count = by.iter().filter(|b| *b == "slow").count();
    // Its answer (150 ms) makes it the costlier choice until that is forgotten.
    assert!(slow_count <= 1, "{by:?}");
}

#[tokio::test]
async fn browsers_get_a_self_contained_status_page() {
    let a = Mock::start("a").await;
    let p = Proxy::start(&chain_config("", &[("a", &a.url(), "")])).await;
    for path in ["/status", "/status.html"] {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let req = http::Request::get(p.url(path))
            .header("accept", "text/html,application/xhtml+xml")
            .body(Default::default())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
        assert!(resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8_lossy(&body);
        assert!(html.contains("<title>detour status</title>"));
        assert!(
            html.contains("fetch(\"/status\""),
            "the page polls the JSON document"
        );
        // No external assets: no URL to anywhere else.
        assert!(
            !html.contains("http://") && !html.contains("https://") && !html.contains("src=\"")
        );
    }
    // Without Accept: text/html, /status stays JSON.
    let (_, headers, _) = support::http_request("GET", &p.url("/status"), "").await;
    assert_eq!(headers["content-type"], "application/json");
}

#[tokio::test]
async fn a_recovered_upstream_gets_its_share_back_within_seconds() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    a.always(Reply::delay(300, Reply::result("\"a\"")));
    b.always(Reply::result("\"b\""));
    let p = Proxy::start(&chain_config(
        "[chains.mainnet.hedge]\nenabled = false\n[chains.mainnet.health]\nprobe_interval = \"1s\"\n",
        &[("a", &a.url(), ""), ("b", &b.url(), "")],
    ))
    .await;
    // "a" answers slowly for a while (b cordoned so that "a" gets the traffic), then recovers.
    assert!(p.detour.cordon("mainnet", "b", true));
    assert_eq!(answered_by(&p, "eth_getBalance", "[]", 3).await, ["a"; 3]);
    assert!(p.detour.cordon("mainnet", "b", false));
    assert!(p.upstream_status("a")["latency_ms"].as_f64().unwrap() >= 250.0);
    a.always(Reply::result("\"a\""));
    // Only probes (one a second) sample it now; they must bring it back to a fair share.
    let start = std::time::Instant::now();
    let mut last: std::collections::VecDeque<String> = Default::default();
    loop {
        let (v, by) = p.call_via("/mainnet", "eth_getBalance", "[]").await;
        assert!(v.get("result").is_some(), "{v}");
        last.push_back(by);
        if last.len() > 20 {
            last.pop_front();
        }
        if last.iter().filter(|b| *b == "a").count() >= 4 {
            eprintln!("a fair share again after {:?}", start.elapsed());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a recovered upstream got {:?} of the last 20 after 10 s (latency estimates: a {} ms, b {} ms)",
            last.iter().filter(|b| *b == "a").count(),
            p.upstream_status("a")["latency_ms"],
            p.upstream_status("b")["latency_ms"]
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
