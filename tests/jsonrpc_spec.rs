//! JSON-RPC 2.0 behaviour at the HTTP edge: spec-exact errors, batches, notifications, ids.

mod support;

use serde_json::{json, Value};
use support::{chain_config, Mock, Proxy};

async fn setup() -> (Mock, Proxy) {
    let m = Mock::start("a").await;
    let p = Proxy::start(&chain_config("", &[("a", &m.url(), "")])).await;
    (m, p)
}

#[tokio::test]
async fn unparseable_json_is_a_parse_error_with_null_id() {
    let (m, p) = setup().await;
    for body in [
        "{\"jsonrpc\":\"2.0\",\"method\":\"foo\",\"params\":\"bar\",\"baz]",
        "",
        "[1,",
        "{} trailing",
    ] {
        let v = p.rpc("/mainnet", body).await;
        assert_eq!(v["error"]["code"], -32700, "{body:?}: {v}");
        assert_eq!(v["error"]["message"], "Parse error");
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["jsonrpc"], "2.0");
    }
    assert_eq!(m.hits(), 0);
}

#[tokio::test]
async fn invalid_request_objects_get_invalid_request() {
    let (m, p) = setup().await;
    let v = p
        .rpc("/mainnet", r#"{"jsonrpc":"2.0","method":1,"params":"bar"}"#)
        .await;
    assert_eq!(
        v,
        json!({"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request","data":"\"method\" must be a string"}})
    );
    let v = p
        .rpc(
            "/mainnet",
            r#"{"jsonrpc":"1.0","id":7,"method":"eth_blockNumber"}"#,
        )
        .await;
    assert_eq!(
        (v["error"]["code"].clone(), v["id"].clone()),
        (json!(-32600), json!(7))
    );
    let v = p
        .rpc(
            "/mainnet",
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"eth_blockNumber"}"#,
        )
        .await;
    assert_eq!(
        (v["error"]["code"].clone(), v["id"].clone()),
        (json!(-32600), Value::Null)
    );
    let v = p.rpc("/mainnet", r#""just a string""#).await;
    assert_eq!(v["error"]["code"], -32600);
    assert_eq!(m.hits(), 0);
}

#[tokio::test]
async fn empty_batch_is_one_invalid_request_object() {
    let (_m, p) = setup().await;
    let v = p.rpc("/mainnet", "[]").await;
    assert!(v.is_object(), "{v}");
    assert_eq!(v["error"]["code"], -32600);
    assert_eq!(v["id"], Value::Null);
}

#[tokio::test]
async fn batch_of_non_objects_gets_one_error_each() {
    let (_m, p) = setup().await;
    let v = p.rpc("/mainnet", "[1,2,3]").await;
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    for e in arr {
        assert_eq!(e["error"]["code"], -32600);
        assert_eq!(e["id"], Value::Null);
    }
}

#[tokio::test]
async fn mixed_batch_keeps_order_skips_notifications_and_serves_valid_entries() {
    let (m, p) = setup().await;
    m.on("sum", support::Reply::result("7"));
    m.on("get_data", support::Reply::result(r#"["hello",5]"#));
    let body = r#"[
        {"jsonrpc":"2.0","method":"sum","params":[1,2,4],"id":"1"},
        {"jsonrpc":"2.0","method":"notify_hello","params":[7]},
        {"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":"2"},
        {"foo":"boo"},
        {"jsonrpc":"2.0","method":"foo.get","params":{"name":"myself"},"id":"5"},
        {"jsonrpc":"2.0","method":"get_data","id":"9"}
    ]"#;
    m.on("subtract", support::Reply::result("19"));
    m.on("foo.get", support::Reply::error(-32601, "Method not found"));
    let v = p.rpc("/mainnet", body).await;
    let arr = v.as_array().unwrap();
    let ids: Vec<&Value> = arr.iter().map(|e| &e["id"]).collect();
    assert_eq!(
        ids,
        [
            &json!("1"),
            &json!("2"),
            &Value::Null,
            &json!("5"),
            &json!("9")
        ]
    );
    assert_eq!(arr[0]["result"], 7);
    assert_eq!(arr[1]["result"], 19);
    assert_eq!(arr[2]["error"]["code"], -32600);
    assert_eq!(arr[3]["error"]["code"], -32601);
    assert_eq!(arr[4]["result"], json!(["hello", 5]));
    // The notification was forwarded (upstreams act on it) but got no response entry.
    assert!(m.methods().contains(&"notify_hello".to_string()));
}

#[tokio::test]
async fn only_notifications_get_an_empty_204() {
    let (m, p) = setup().await;
    let (status, body) = p
        .post("/mainnet", r#"[{"jsonrpc":"2.0","method":"notify_sum","params":[1,2,4]},{"jsonrpc":"2.0","method":"notify_hello","params":[7]}]"#)
        .await;
    assert_eq!((status, body.as_str()), (204, ""));
    let (status, body) = p
        .post("/mainnet", r#"{"jsonrpc":"2.0","method":"notify_x"}"#)
        .await;
    assert_eq!((status, body.as_str()), (204, ""));
    assert_eq!(m.methods(), ["notify_sum", "notify_hello", "notify_x"]);
}

#[tokio::test]
async fn ids_are_echoed_exactly() {
    let (m, p) = setup().await;
    m.always(support::Reply::result("1"));
    for id in [
        r#""abc""#,
        r#""""#,
        r#""\u00e9\n""#,
        "0",
        "-5",
        "9007199254740993",
        "123456789012345678901234567890",
        "1.5e3",
        "null",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_blockNumber"}}"#);
        let (_, text) = p.post("/mainnet", &body).await;
        assert_eq!(text, format!(r#"{{"jsonrpc":"2.0","id":{id},"result":1}}"#));
    }
}

#[tokio::test]
async fn duplicate_ids_in_a_batch_each_get_their_own_answer() {
    let (m, p) = setup().await;
    m.on("a", support::Reply::result("\"A\""));
    m.on("b", support::Reply::result("\"B\""));
    let (_, text) = p
        .post(
            "/mainnet",
            r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","id":1,"method":"b"}]"#,
        )
        .await;
    assert_eq!(
        text,
        r#"[{"jsonrpc":"2.0","id":1,"result":"A"},{"jsonrpc":"2.0","id":1,"result":"B"}]"#
    );
}

#[tokio::test]
async fn local_answers_check_their_params_as_a_node_does() {
    let (m, p) = setup().await;
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    for method in ["eth_chainId", "net_version"] {
        for params in ["[1]", "[[[1]]]", "{}", "[null]", deep.as_str()] {
            let body =
                format!(r#"{{"jsonrpc":"2.0","id":7,"method":"{method}","params":{params}}}"#);
            let v = p.rpc("/mainnet", &body).await;
            assert_eq!(v["error"]["code"], -32602, "{method} {:.20}: {v}", params);
            assert_eq!(v["id"], 7);
        }
        for params in ["", r#","params":[]"#, r#","params":[ ]"#] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":7,"method":"{method}"{params}}}"#);
            let v = p.rpc("/mainnet", &body).await;
            assert!(v["result"].is_string(), "{method} {params}: {v}");
        }
    }
    assert_eq!(m.hits(), 0, "answered locally, right or wrong");
}
