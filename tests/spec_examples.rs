//! Every example of the JSON-RPC 2.0 specification, section 7, through detour to an upstream
//! that implements the example methods; detour's answers are compared with the specification's
//! (batch answers in request order, which the specification allows).

mod support;

use serde_json::{json, Value};
use support::{chain_config, Mock, Proxy, Reply};

async fn spec_upstream() -> (Mock, Proxy) {
    let m = Mock::start("spec").await;
    m.on("sum", Reply::result("7"));
    m.on("get_data", Reply::result(r#"["hello", 5]"#));
    m.on("notify_hello", Reply::result("null"));
    m.on("notify_sum", Reply::result("null"));
    m.on("foobar", Reply::error(-32601, "Method not found"));
    m.on("foo.get", Reply::error(-32601, "Method not found"));
    let p = Proxy::start(&chain_config("", &[("spec", &m.url(), "")])).await;
    (m, p)
}

async fn exchange(p: &Proxy, body: &str) -> Option<Value> {
    let (status, text) = p.post("/mainnet", body).await;
    if status == 204 {
        assert!(text.is_empty());
        return None;
    }
    assert_eq!(status, 200, "{body}: {text}");
    Some(serde_json::from_str(&text).unwrap())
}

#[tokio::test]
async fn section_7_examples() {
    let (m, p) = spec_upstream().await;
    // Positional and named parameters (the upstream's answers, in order).
    for (body, result) in [
        (
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}"#,
            json!(19),
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}"#,
            json!(-19),
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}"#,
            json!(19),
        ),
        (
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}"#,
            json!(19),
        ),
    ] {
        let id: Value = serde_json::from_str::<Value>(body).unwrap()["id"].clone();
        m.times("subtract", 1, Reply::Result(result.to_string()));
        let v = exchange(&p, body).await.unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "result": result, "id": id}),
            "{body}"
        );
    }

    // Notifications: no answer at all.
    for body in [
        r#"{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}"#,
        r#"{"jsonrpc": "2.0", "method": "foobar"}"#,
    ] {
        assert_eq!(exchange(&p, body).await, None, "{body}");
    }

    // A method that does not exist: the upstream's -32601, unchanged.
    let v = exchange(&p, r#"{"jsonrpc": "2.0", "method": "foobar", "id": "1"}"#)
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"})
    );

    // Invalid JSON.
    let v = exchange(
        &p,
        r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            v["error"]["code"].clone(),
            v["error"]["message"].clone(),
            v["id"].clone()
        ),
        (json!(-32700), json!("Parse error"), Value::Null)
    );

    // An invalid Request object.
    let v = exchange(&p, r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#)
        .await
        .unwrap();
    assert_eq!(
        (
            v["error"]["code"].clone(),
            v["error"]["message"].clone(),
            v["id"].clone()
        ),
        (json!(-32600), json!("Invalid Request"), Value::Null)
    );

    // A batch with invalid JSON: one parse error, not an array.
    let v = exchange(
        &p,
        r#"[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]"#,
    )
    .await
    .unwrap();
    assert!(v.is_object());
    assert_eq!(v["error"]["code"], -32700);

    // An empty array: one Invalid Request object.
    let v = exchange(&p, "[]").await.unwrap();
    assert!(v.is_object());
    assert_eq!(
        (v["error"]["code"].clone(), v["id"].clone()),
        (json!(-32600), Value::Null)
    );

    // A batch that is not empty but invalid: an array of one / three errors.
    for (body, n) in [("[1]", 1), ("[1,2,3]", 3)] {
        let v = exchange(&p, body).await.unwrap();
        let items = v.as_array().unwrap();
        assert_eq!(items.len(), n, "{body}");
        for e in items {
            assert_eq!(
                (e["error"]["code"].clone(), e["id"].clone()),
                (json!(-32600), Value::Null)
            );
            assert_eq!(e["error"]["message"], "Invalid Request");
        }
    }

    // The mixed batch.
    let v = exchange(
        &p,
        r#"[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"#,
    )
    .await
    .unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 5, "{v}");
    assert_eq!(items[0], json!({"jsonrpc": "2.0", "result": 7, "id": "1"}));
    // (The spec's upstream computes 19; this mock answers with its default, its name.)
    assert_eq!(
        items[1],
        json!({"jsonrpc": "2.0", "result": "spec", "id": "2"})
    );
    assert_eq!(
        (items[2]["error"]["code"].clone(), items[2]["id"].clone()),
        (json!(-32600), Value::Null)
    );
    assert_eq!(
        items[3],
        json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"})
    );
    assert_eq!(
        items[4],
        json!({"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"})
    );

    // A batch of notifications only: nothing.
    let all = r#"[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]"#;
    assert_eq!(exchange(&p, all).await, None);
}
