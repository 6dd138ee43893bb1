//! Request size and batch limits, and per-upstream batch splitting.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::{chain_config, Mock, Proxy, Reply};

#[tokio::test]
async fn body_over_limit_with_content_length_is_413() {
    let m = Mock::start("a").await;
    let p = Proxy::start(&format!(
        "[server]\nmax_body_bytes = 1000\n{}",
        chain_config("", &[("a", &m.url(), "")])
    ))
    .await;
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":["{}"]}}"#,
        "a".repeat(2000)
    );
    let (status, text) = p.post("/mainnet", &big).await;
    assert_eq!(status, 413);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], -32600);
    assert!(v["error"]["data"]
        .as_str()
        .unwrap()
        .contains("max_body_bytes"));
    assert_eq!(m.hits(), 0);
    // Just under the limit is served.
    let ok = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":["{}"]}}"#,
        "a".repeat(900)
    );
    assert_eq!(p.post("/mainnet", &ok).await.0, 200);
}

#[tokio::test]
async fn chunked_body_over_limit_is_413_without_reading_it_all() {
    let m = Mock::start("a").await;
    let p = Proxy::start(&format!(
        "[server]\nmax_body_bytes = 4096\n{}",
        chain_config("", &[("a", &m.url(), "")])
    ))
    .await;
    // An endless chunked body: the proxy must answer 413 once the limit is passed, not wait for
    // the end (there is none).
    let chunks = futures_util::stream::iter(
        (0..).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b' '; 1024])))),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut chunks = std::pin::pin!(chunks);
        while let Some(c) = chunks.next().await {
            if tx.send(c).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let body = StreamBody::new(tokio_stream_from(rx));
    let client: Client<_, _> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(p.url("/mainnet")).body(body).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 413);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&text).contains("max_body_bytes"));
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn batch_over_limit_is_one_error_naming_the_limit() {
    let m = Mock::start("a").await;
    let p = Proxy::start(&format!(
        "[server]\nmax_batch_len = 3\n{}",
        chain_config("", &[("a", &m.url(), "")])
    ))
    .await;
    let one = r#"{"jsonrpc":"2.0","id":1,"method":"x"}"#;
    let v = p
        .rpc("/mainnet", &format!("[{one},{one},{one},{one}]"))
        .await;
    assert!(v.is_object());
    assert_eq!(v["error"]["code"], -32600);
    assert!(
        v["error"]["data"]
            .as_str()
            .unwrap()
            .contains("max_batch_len"),
        "{v}"
    );
    assert_eq!(m.hits(), 0);
    let v = p.rpc("/mainnet", &format!("[{one},{one},{one}]")).await;
    assert_eq!(v.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn upstream_max_batch_len_splits_and_reassembles_in_order() {
    let m = Mock::start("a").await;
    m.reverse_batches();
    for i in 0..7 {
        m.on(&format!("m{i}"), Reply::Result(format!("{i}")));
    }
    let p = Proxy::start(&chain_config("", &[("a", &m.url(), "max_batch_len = 3")])).await;
    let body: Vec<String> = (0..7)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{},"method":"m{i}"}}"#, 100 + i))
        .collect();
    let v = p.rpc("/mainnet", &format!("[{}]", body.join(","))).await;
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 7);
    for (i, e) in arr.iter().enumerate() {
        assert_eq!(e["id"], 100 + i);
        assert_eq!(e["result"], i);
    }
    // 7 calls in chunks of at most 3: three upstream requests.
    let mut sizes: Vec<usize> = m
        .bodies()
        .iter()
        .map(|b| match serde_json::from_str::<Value>(b).unwrap() {
            Value::Array(a) => a.len(),
            _ => 1,
        })
        .collect();
    sizes.sort();
    assert_eq!(sizes, [1, 3, 3]);
}

#[tokio::test]
async fn requests_over_the_in_flight_bound_get_a_fast_503_with_retry_after() {
    let m = Mock::start("a").await;
    m.always(Reply::delay(800, Reply::result("\"slow\"")));
    let p = Proxy::start(&format!(
        "[server]\nmax_requests_in_flight = 2\n{}",
        chain_config(
            "[chains.mainnet.hedge]\nenabled = false\n",
            &[("a", &m.url(), "")]
        )
    ))
    .await;
    let url = p.url("/mainnet");
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[]}"#;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { support::http_request("POST", &url, call).await })
        })
        .collect();
    support::eventually("both slow requests reached the upstream", || m.hits() == 2).await;
    let (status, headers, body) = support::http_request("POST", &url, call).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32005, "{v}");
    assert!(
        v["error"]["data"]
            .as_str()
            .unwrap()
            .contains("max_requests_in_flight"),
        "{v}"
    );
    // Health endpoints are not JSON-RPC requests: still answered.
    let (status, _, _) = support::http_request("GET", &p.url("/healthz"), "").await;
    assert_eq!(status, 200);
    for r in slow {
        let (status, _, body) = r.await.unwrap();
        assert_eq!((status, body.contains("\"slow\"")), (200, true), "{body}");
    }
    // The slots are free again.
    let (status, _, _) = support::http_request("POST", &url, call).await;
    assert_eq!(status, 200);
    assert_eq!(m.hits(), 3);
}
