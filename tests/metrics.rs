//! `GET /metrics`: request, upstream, failover, hedge and reload counters, live upstream state
//! at scrape time, a bounded `method` label, and no secrets.

mod support;

use support::{chain_config, eventually, refused_url, Mock, Proxy, Reply};

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_upstreams_and_state() {
    let good = Mock::start("good").await;
    good.on("eth_call", Reply::error(3, "execution reverted"));
    let dead = refused_url().await;
    let keyed = format!("{dead}/v3/SECRETKEY123456");
    let p = Proxy::start(&chain_config(
        "",
        &[
            ("dead", &keyed, "tier = 0"),
            ("good", &good.url(), "tier = 1"),
        ],
    ))
    .await;
    eventually("good is probed", || {
        p.upstream_status("good")["head"] == 100
    })
    .await;
    for _ in 0..3 {
        p.call("/mainnet", "eth_getBalance", "[]").await;
    }
    p.call("/mainnet", "eth_call", "[{}]").await;
    p.call("/mainnet", "eth_chainId", "[]").await;
    p.call("/mainnet", "made_up_method_1", "[]").await;
    p.call("/mainnet", "made_up_method_2", "[]").await;

    let (status, headers, text) = support::http_request("GET", &p.url("/metrics"), "").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(!text.contains("SECRETKEY"), "{text}");
    let req = |m: &str, o: &str| {
        value(
            &text,
            &format!("detour_requests_total{{chain=\"mainnet\",method=\"{m}\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(req("eth_getBalance", "ok"), Some(3.0), "{text}");
    assert_eq!(req("eth_call", "rpc_error"), Some(1.0));
    assert_eq!(req("eth_chainId", "ok"), Some(1.0));
    assert_eq!(
        req("other", "ok"),
        Some(2.0),
        "unknown methods share one label"
    );
    assert!(!text.contains("made_up_method"));
    let up = |u: &str, o: &str| {
        value(
            &text,
            &format!(
                "detour_upstream_requests_total{{chain=\"mainnet\",upstream=\"{u}\",outcome=\"{o}\"}}"
            ),
        )
    };
    // The first request found "dead" refusing (ejected); the rest went to "good" directly.
    assert_eq!(up("dead", "connect_error"), Some(1.0), "{text}");
    assert_eq!(up("good", "success"), Some(6.0));
    assert_eq!(
        value(&text, "detour_failovers_total{chain=\"mainnet\"}"),
        Some(1.0)
    );
    let state = |u: &str, s: &str| {
        value(
            &text,
            &format!("detour_upstream_state{{chain=\"mainnet\",upstream=\"{u}\",state=\"{s}\"}}"),
        )
    };
    assert_eq!(state("good", "healthy"), Some(1.0));
    assert_eq!(state("dead", "cooling_down"), Some(1.0));
    assert_eq!(state("dead", "healthy"), Some(0.0));
    assert_eq!(
        value(
            &text,
            "detour_upstream_head_block{chain=\"mainnet\",upstream=\"good\"}"
        ),
        Some(100.0)
    );
    assert_eq!(
        value(&text, "detour_chain_head_block{chain=\"mainnet\"}"),
        Some(100.0)
    );
    assert_eq!(
        value(
            &text,
            "detour_request_duration_seconds_count{chain=\"mainnet\"}"
        ),
        Some(7.0)
    );
    assert_eq!(
        value(
            &text,
            "detour_upstream_latency_seconds_count{chain=\"mainnet\",upstream=\"good\"}"
        ),
        Some(6.0)
    );
    assert!(text.contains("detour_build_info{version=\""));
    assert!(text.trim_end().ends_with("# EOF"));
}

#[tokio::test]
async fn hedges_and_reloads_are_counted() {
    let hung = Mock::start("hung").await;
    let good = Mock::start("good").await;
    hung.always(Reply::Hang);
    let toml = chain_config(
        "[chains.mainnet.hedge]\nmin_delay = \"20ms\"\nmax_delay = \"50ms\"\n",
        &[
            ("hung", &hung.url(), "tier = 0\ntimeout = \"30s\""),
            ("good", &good.url(), "tier = 1"),
        ],
    );
    let p = Proxy::start(&toml).await;
    p.call("/mainnet", "eth_getBalance", "[]").await;
    p.detour
        .reload(detour::Config::from_toml(&toml).unwrap())
        .unwrap();
    let mut broken = detour::Config::from_toml(&toml).unwrap();
    broken.chains.get_mut("mainnet").unwrap().upstreams.clear();
    assert!(p.detour.reload(broken).is_err());
    let text = p.detour.metrics();
    assert_eq!(
        value(&text, "detour_hedges_total{chain=\"mainnet\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "detour_upstream_requests_total{chain=\"mainnet\",upstream=\"hung\",outcome=\"cancelled\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "detour_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "detour_config_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
}
