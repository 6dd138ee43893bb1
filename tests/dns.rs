//! DNS: an upstream whose name never resolved is unusable with a clear status while detour
//! starts and serves the others; a resolver outage does not take down upstreams that resolved
//! before. Hermetic: a stub resolver answers `*.test` names with 127.0.0.1.

mod support;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use detour::client::dns::Resolver;
use support::{eventually, Mock, Proxy};

/// Resolves `good.test` to loopback while `up` is true; nothing else ever resolves.
fn stub(up: Arc<AtomicBool>) -> Resolver {
    Resolver::from_fn(move |host| match host {
        "good.test" if up.load(SeqCst) => Ok(vec![IpAddr::from([127, 0, 0, 1])]),
        _ => Err(std::io::Error::other(format!("no such host: {host}"))),
    })
}

fn config(good_port: u16, other_port: u16) -> detour::Config {
    detour::Config::from_toml(&format!(
        r#"
        [client]
        pool_max_idle_per_host = 0     # a new connection (and resolution) per request
        dns_refresh = "20ms"
        # The requests are counted at the upstream: no chain following for the cache.
        [cache]
        head = false
        [chains.mainnet]
        chain_id = 1
        [chains.mainnet.health]
        probe_interval = "30ms"
        idle_probe_interval = "30ms"
        [[chains.mainnet.upstreams]]
        name = "nowhere"
        url = "http://nowhere.test:{other_port}"
        [[chains.mainnet.upstreams]]
        name = "good"
        url = "http://good.test:{good_port}"
        "#
    ))
    .unwrap()
}

#[tokio::test]
async fn an_unresolvable_upstream_is_marked_and_the_others_serve() {
    let good = Mock::start("good").await;
    let dns_up = Arc::new(AtomicBool::new(true));
    let d = detour::Detour::with_resolver(config(good.addr.port(), 1), stub(dns_up)).unwrap();
    let p = Proxy::serve(d).await;
    eventually("nowhere is unresolvable", || {
        p.states("nowhere").contains(&"unresolvable".to_string())
    })
    .await;
    let st = p.upstream_status("nowhere");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains("DNS resolution failed"),
        "{st}"
    );
    for _ in 0..10 {
        let (v, by) = p.call_via("/mainnet", "eth_getBalance", "[]").await;
        assert_eq!((v["result"].as_str(), by.as_str()), (Some("good"), "good"));
    }
    let (status, _, _) = support::http_request("GET", &p.url("/readyz"), "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_resolver_outage_keeps_the_last_known_addresses() {
    let good = Mock::start("good").await;
    let dns_up = Arc::new(AtomicBool::new(true));
    let d =
        detour::Detour::with_resolver(config(good.addr.port(), 1), stub(dns_up.clone())).unwrap();
    let p = Proxy::serve(d).await;
    let (v, _) = p.call_via("/mainnet", "eth_getBalance", "[]").await;
    assert_eq!(v["result"], "good");
    // The resolver fails from now on; entries are past dns_refresh, so each connection asks it.
    dns_up.store(false, SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = good.hits();
    for _ in 0..10 {
        let (v, by) = p.call_via("/mainnet", "eth_getBalance", "[]").await;
        assert_eq!((v["result"].as_str(), by.as_str()), (Some("good"), "good"));
    }
    assert_eq!(good.hits(), before + 10);
    assert!(!p.states("good").contains(&"unresolvable".to_string()));
}
