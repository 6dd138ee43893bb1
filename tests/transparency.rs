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

#[tokio::test]
async fn single_results_of_every_size_come_back_whole_with_the_clients_id() {
    // The fast path writes a single result as its envelope plus the upstream's bytes: copied
    // behind the head up to 2 KiB of body, written from the upstream's buffer beyond that.
    let m = Mock::start("a").await;
    let p = Proxy::start(&chain_config("", &[("a", &m.url(), "")])).await;
    let ids = [
        "7".to_string(),
        "-0.5e3".to_string(),
        r#""short""#.to_string(),
        // Longer than the id's inline room, with escapes.
        format!(r#""{}\"\\\u00e9""#, "k".repeat(40)),
    ];
    for id in &ids {
        let envelope = r#"{"jsonrpc":"2.0","id":,"result":}"#.len() + id.len();
        for body_len in [envelope + 3, 2047, 2048, 2049, 14_000, 200_000] {
            // A JSON string result that makes the whole body `body_len` bytes long.
            let n = body_len - envelope - 2;
            let raw = format!("\"{}\"", "ab".repeat(n / 2 + 1)[..n].to_owned());
            m.times("eth_getBlockByNumber", 1, Reply::result(&raw));
            let req = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_getBlockByNumber","params":["latest",false]}}"#
            );
            let (status, text) = p.post("/mainnet", &req).await;
            assert_eq!(status, 200);
            let want = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{raw}}}"#);
            assert_eq!(text.len(), body_len, "id {id}");
            assert!(
                text == want,
                "id {id}, {body_len} bytes: {}",
                &text[..80.min(text.len())]
            );
        }
    }
}
