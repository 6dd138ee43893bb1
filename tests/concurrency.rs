//! Failover under concurrency: many clients at once while an upstream breaks mid-run. Bounded:
//! 32 clients × 40 requests against in-process mocks.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::{chain_config, Mock, Proxy, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_see_no_failure_when_an_upstream_breaks_mid_run() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    let p = Arc::new(
        Proxy::start(&chain_config(
            "",
            &[("a", &a.url(), ""), ("b", &b.url(), "")],
        ))
        .await,
    );
    let done = Arc::new(AtomicUsize::new(0));
    let a = Arc::new(a);
    let mut tasks = Vec::new();
    for client in 0..32 {
        let (p, done, a) = (p.clone(), done.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..40 {
                if done.fetch_add(1, Ordering::Relaxed) == 400 {
                    // A third of the way in, "a" starts failing every request.
                    a.always(Reply::status(503));
                }
                let id = client * 1000 + i;
                let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_getBalance","params":["0x{id:040x}","latest"]}}"#);
                let v = p.rpc("/mainnet", &body).await;
                if v["id"] != id || !(v["result"] == "a" || v["result"] == "b") {
                    failures.push(v);
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(done.load(Ordering::Relaxed), 1280);
    // Both served before the break; "b" carried the rest.
    assert!(a.hits() > 0 && b.hits() > 0);
    let pool = p.detour.pool();
    for u in &pool.chains[0].upstreams {
        assert_eq!(u.state.in_flight(), 0, "{} leaked in-flight count", u.name);
    }
}
