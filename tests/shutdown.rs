//! Graceful shutdown: requests in flight at the signal finish, `/readyz` turns 503 while the
//! listener drains, and then new connections are refused.

mod support;

use std::time::Duration;

use support::{chain_config, http_request, Mock, Reply};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[tokio::test]
async fn requests_in_flight_at_the_signal_finish_and_readyz_turns_503() {
    let slow = Mock::start("slow").await;
    slow.always(Reply::delay(400, Reply::result("\"done\"")));
    let toml = chain_config(
        "[server]\nshutdown_delay = \"300ms\"\nshutdown_grace = \"5s\"\n",
        &[("slow", &slow.url(), "")],
    );
    // The [server] table lands after the chain's keys; TOML allows tables in any order.
    let config = detour::Config::from_toml(&toml).unwrap();
    let proxy = detour::Detour::new(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(detour::serve(listener, proxy, async {
        let _ = stopped.await;
    }));
    let url = format!("http://{addr}");
    assert_eq!(
        http_request("GET", &format!("{url}/readyz"), "").await.0,
        200
    );

    // Ten requests in flight (each takes 400 ms upstream), then the signal.
    let inflight: Vec<_> = (0..10)
        .map(|i| {
            let url = format!("{url}/mainnet");
            tokio::spawn(async move {
                let body = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"eth_getBalance"}}"#);
                http_request("POST", &url, &body).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Draining: still accepting for shutdown_delay, but not ready.
    let (status, _, body) = http_request("GET", &format!("{url}/readyz"), "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");

    for (i, r) in inflight.into_iter().enumerate() {
        let (status, _, body) = r.await.unwrap();
        assert_eq!(status, 200, "request {i}: {body}");
        assert!(body.contains("\"result\":\"done\""), "request {i}: {body}");
    }
    // The server returns once the grace period or the last connection ends.
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
