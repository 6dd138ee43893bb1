//! The proxy is transparent: results and errors byte for byte, ids restored, batch order kept
//! even when the upstream reorders its answers.

mod support;

use support::{chain_config, Mock, Proxy, Reply};

#[tokio::test]
async fn result_bytes_pass_through_unchanged() {
    let m = Mock::start("a").await;
    // Odd spacing, a number no f64 can hold, escapes, key order: all must survive untouched.
    let raw = r#"{ "z":1,"a" : [1.000000000000000000001, 1e400,"\u00e9\ud83d\ude00"], "n":null ,"big":123456789012345678901234567890}"#;
    m.on("eth_getBlockByNumber", Reply::result(raw));
    let p = Proxy::start(&chain_config("", &[("a", &m.url(), "")])).await;
    let (_, text) = p
        .post("/mainnet", r#"{"jsonrpc":"2.0","id":"x","method":"eth_getBlockByNumber","params":["latest",false]}"#)
        .await;
    assert_eq!(
        text,
        format!(r#"{{"jsonrpc":"2.0","id":"x","result":{raw}}}"#)
    );
}

#[tokio::test]
async fn deterministic_error_objects_pass_through_unchanged() {
    let m = Mock::start("a").await;
    let raw_error = r#"{"code":3,"message":"execution reverted: nope","data":"0x08c379a0"}"#;
    m.on(
        "eth_call",
        Reply::Raw(format!(r#"{{"jsonrpc":"2.0","id":0,"error":{raw_error}}}"#)),
    );
    let p = Proxy::start(&chain_config("", &[("a", &m.url(), "")])).await;
    let (_, text) = p
        .post(
            "/mainnet",
            r#"{"jsonrpc":"2.0","id":5,"method":"eth_call","params":[{}]}"#,
        )
        .await;
    assert_eq!(
        text,
        format!(r#"{{"jsonrpc":"2.0","id":5,"error":{raw_error}}}"#)
    );
}

#[tokio::test]
async fn upstream_sees_detour_ids_and_params_verbatim() {
    let m = Mock::start("a").await;
    let p = Proxy::start(&chain_config("", &[("a", &m.url(), "")])).await;
    p.post("/mainnet", r#"{"jsonrpc":"2.0","id":"client-id-123456789012345678901234567890","method":"eth_call","params":[{"to":"0xAb", "data" : "0x"},"latest"]}"#)
        .await;
    assert_eq!(
        m.bodies(),
        [
            r#"{"jsonrpc":"2.0","id":0,"method":"eth_call","params":[{"to":"0xAb", "data" : "0x"},"latest"]}"#
        ]
    );
}

#[tokio::test]
async fn batch_order_is_kept_when_upstream_answers_out_of_order() {
    let m = Mock::start("a").await;
    m.reverse_batches();
    for i in 0..5 {
        m.on(&format!("m{i}"), Reply::Result(format!("{i}")));
    }
    let p = Proxy::start(&chain_config("", &[("a", &m.url(), "")])).await;
    let body: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","id":"c{i}","method":"m{i}"}}"#))
        .collect();
    let v = p.rpc("/mainnet", &format!("[{}]", body.join(","))).await;
    for (i, e) in v.as_array().unwrap().iter().enumerate() {
        assert_eq!(e["id"], format!("c{i}"));
        assert_eq!(e["result"], i);
    }
    // One upstream request: a batch goes to one upstream as a batch.
    assert_eq!(m.hits(), 1);
}

#[tokio::test]
async fn null_result_is_a_result() {
    let m = Mock::start("a").await;
    m.on("eth_getTransactionByHash", Reply::result("null"));
    let p = Proxy::start(&chain_config("", &[("a", &m.url(), "")])).await;
    let (_, text) = p
        .post(
            "/mainnet",
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_getTransactionByHash","params":["0x00"]}"#,
        )
        .await;
    assert_eq!(text, r#"{"jsonrpc":"2.0","id":1,"result":null}"#);
}
