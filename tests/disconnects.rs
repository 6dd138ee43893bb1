//! A client that disconnects while its request is in flight: the fast path and hyper's side
//! behave alike, and the upstream attempt is given up.

mod support;

use std::time::Duration;

use support::{chain_config, eventually, Mock, Proxy, Reply};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[]}"#;

async fn in_flight_after_disconnect(request: String) -> (u64, u64) {
    let up = Mock::start("up").await;
    up.always(Reply::delay(3_000, Reply::result("\"late\"")));
    let p = Proxy::start(&chain_config(
        "[chains.mainnet.hedge]\nenabled = false\n",
        &[("up", &up.url(), "timeout = \"5s\"")],
    ))
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    eventually("the request reached the upstream", || up.hits() == 1).await;
    let during = p.upstream_status("up")["in_flight"].as_u64().unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = p.upstream_status("up")["in_flight"].as_u64().unwrap();
    (during, after)
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_its_request_on_both_paths() {
    let fast = format!(
        "POST /mainnet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CALL}",
        CALL.len()
    );
    // Chunked: not the fast path's; hyper serves it.
    let hyper = format!(
        "POST /mainnet HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{CALL}\r\n0\r\n\r\n",
        CALL.len()
    );
    let fast = in_flight_after_disconnect(fast).await;
    let hyper = in_flight_after_disconnect(hyper).await;
    assert_eq!(
        fast,
        (1, 0),
        "fast path: in flight during, then after the hang-up"
    );
    assert_eq!(
        hyper,
        (1, 0),
        "hyper: in flight during, then after the hang-up"
    );
}
