//! Hostile input shapes: deep nesting (params and top level), huge batches, huge strings,
//! invalid UTF-8, trailing garbage, odd content types. Every answer is well-formed JSON-RPC or a
//! clear HTTP error; nothing crashes, hangs or overflows the stack.

mod support;

use support::{chain_config, http_request, Mock, Proxy};

async fn proxy() -> (Mock, Proxy) {
    let up = Mock::start("up").await;
    let p = Proxy::start(&chain_config("", &[("up", &up.url(), "")])).await;
    (up, p)
}

#[tokio::test]
async fn nesting_100_000_levels_deep_is_bounded() {
    let (_up, p) = proxy().await;
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    // In params: the envelope parser keeps params as raw bytes (scanned without recursion), so
    // the call is forwarded as it is and the upstream decides; this mock cannot parse it.
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":{}}}"#,
        deep(100_000)
    );
    let (status, _, text) = http_request("POST", &p.url("/mainnet"), &body).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["jsonrpc"].as_str(), v["id"].as_i64()),
        (Some("2.0"), Some(1)),
        "{text}"
    );
    assert!(v["error"]["code"].is_i64(), "{text}");
    // At the top level: a batch whose member is 100 000 arrays deep is one invalid member.
    let (status, _, text) = http_request("POST", &p.url("/mainnet"), &deep(100_000)).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let code = v[0]["error"]["code"]
        .as_i64()
        .or(v["error"]["code"].as_i64());
    assert!(matches!(code, Some(-32600 | -32700)), "{text}");
    // Objects too.
    let objects = format!("{}{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    let (status, _, _) = http_request("POST", &p.url("/mainnet"), &objects).await;
    assert_eq!(status, 200);
    // Still serving.
    assert_eq!(
        p.call("/mainnet", "eth_blockNumber", "[]").await["result"],
        "up"
    );
}

#[tokio::test]
async fn big_batches_and_big_strings_are_served_or_refused_clearly() {
    let (up, p) = proxy().await;
    // A batch of 1000 (the default limit): every call answered, in order.
    let calls: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"eth_getBalance","params":["0x{i:x}"]}}"#
            )
        })
        .collect();
    let v = p.rpc("/mainnet", &format!("[{}]", calls.join(","))).await;
    let answers = v.as_array().unwrap();
    assert_eq!(answers.len(), 1000);
    assert!(answers
        .iter()
        .enumerate()
        .all(|(i, a)| a["id"] == i && a["result"] == "up"));
    // A 10 MiB string param: under the 10 MiB body limit it is forwarded as it is...
    let big = "a".repeat(10 * 1024 * 1024 - 200);
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":["{big}"]}}"#);
    let (status, _, text) = http_request("POST", &p.url("/mainnet"), &body).await;
    assert_eq!(status, 200, "{}", &text[..text.len().min(300)]);
    assert!(up.bodies().last().unwrap().len() > 10_000_000);
    // ...and over it, 413 without being read.
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":["{big}{big}"]}}"#);
    let (status, _, _) = http_request("POST", &p.url("/mainnet"), &body).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn odd_bytes_get_well_formed_answers() {
    let (_up, p) = proxy().await;
    let cases: Vec<(&str, Vec<u8>, i64)> = vec![
        (
            "invalid UTF-8",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_\xff\"}".to_vec(),
            -32700,
        ),
        (
            "trailing garbage",
            br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"} xyz"#.to_vec(),
            -32700,
        ),
        ("empty body", Vec::new(), -32700),
        ("a lone number", b"42".to_vec(), -32600),
        ("a string", br#""eth_blockNumber""#.to_vec(), -32600),
        ("null", b"null".to_vec(), -32600),
    ];
    for (what, body, code) in cases {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let req = http::Request::post(p.url("/mainnet"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        use http_body_util::BodyExt;
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&text)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text:?}"));
        assert_eq!(status, 200, "{what}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert!(v["id"].is_null(), "{what}: {v}");
    }
    // Leading whitespace is fine; so is a text/plain content type (served, never a 5xx).
    let (status, _, text) = http_request(
        "POST",
        &p.url("/mainnet"),
        "  \n\t{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_blockNumber\"}",
    )
    .await;
    assert_eq!((status, text.contains("\"up\"")), (200, true), "{text}");
}

/// An upstream that answers every request with a body that never ends: `fast` streams 4 KiB
/// chunks as fast as it can, else one byte every 50 ms.
async fn endless_upstream(fast: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("1000\r\n{}\r\n", "0".repeat(4096));
                loop {
                    let sent = if fast {
                        s.write_all(chunk.as_bytes()).await
                    } else {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        s.write_all(b"1\r\n0\r\n").await
                    };
                    if sent.is_err() {
                        return; // detour hung up: good
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn endless_upstream_bodies_are_cut_and_fail_over() {
    let fast = endless_upstream(true).await;
    let slow = endless_upstream(false).await;
    let good = Mock::start("good").await;
    // No hedging here: each endless answer must be cut by its own limit, not outrun.
    let toml = chain_config(
        "[chains.mainnet.hedge]\nenabled = false\n",
        &[
            ("flood", &fast, "tier = 0"),
            ("drip", &slow, "tier = 1\ntimeout = \"500ms\""),
            ("good", &good.url(), "tier = 2"),
        ],
    )
    .replacen("[client]\n", "[client]\nmax_response_bytes = 1048576\n", 1);
    let p = Proxy::start(&toml).await;
    let (status, _, text) = http_request(
        "POST",
        &p.url("/mainnet"),
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_getBalance"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["result"], "good", "{text}");
    let flood = p.upstream_status("flood");
    assert!(
        flood["last_error"]
            .as_str()
            .unwrap()
            .contains("max_response_bytes"),
        "{flood}"
    );
    let drip = p.upstream_status("drip");
    assert!(
        drip["last_error"].as_str().unwrap().contains("timed out"),
        "{drip}"
    );
}

#[tokio::test]
async fn request_object_shapes_and_content_types() {
    let (up, p) = proxy().await;
    // (body, expected code or "up" for a result, expected id as JSON text)
    let cases: &[(&str, Option<i64>, &str)] = &[
        (r#"{"id":1,"method":"eth_blockNumber"}"#, Some(-32600), "1"),
        (
            r#"{"jsonrpc":"2.1","id":1,"method":"eth_blockNumber"}"#,
            Some(-32600),
            "1",
        ),
        (
            r#"{"jsonrpc":2,"id":1,"method":"eth_blockNumber"}"#,
            Some(-32600),
            "1",
        ),
        (r#"{"jsonrpc":"2.0","id":1}"#, Some(-32600), "1"),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":null}"#,
            Some(-32600),
            "1",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":"bar"}"#,
            Some(-32600),
            "1",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":7}"#,
            Some(-32600),
            "1",
        ),
        (
            r#"{"jsonrpc":"2.0","id":[1],"method":"eth_blockNumber"}"#,
            Some(-32600),
            "null",
        ),
        (
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"eth_blockNumber"}"#,
            Some(-32600),
            "null",
        ),
        (
            r#"{"jsonrpc":"2.0","id":true,"method":"eth_blockNumber"}"#,
            Some(-32600),
            "null",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1.5,"method":"eth_blockNumber"}"#,
            None,
            "1.5",
        ),
        (
            r#"{"jsonrpc":"2.0","id":-3,"method":"eth_blockNumber"}"#,
            None,
            "-3",
        ),
        (
            r#"{"jsonrpc":"2.0","id":"x\"y","method":"eth_blockNumber"}"#,
            None,
            r#""x\"y""#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"eth_blockNumber"}"#,
            None,
            "123456789012345678901234567890",
        ),
    ];
    for (body, code, id) in cases {
        let (status, _, text) = http_request("POST", &p.url("/mainnet"), body).await;
        assert_eq!(status, 200, "{body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        match code {
            Some(c) => assert_eq!(v["error"]["code"], *c, "{body}: {text}"),
            None => assert_eq!(v["result"], "up", "{body}: {text}"),
        }
        // The id comes back as the very same JSON text.
        assert!(text.contains(&format!("\"id\":{id}")), "{body}: {text}");
    }
    let forwarded = up.hits();
    // Content types other than JSON are served (never a 5xx), and other HTTP methods get 405.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=utf-8",
    ] {
        let req = http::Request::post(p.url("/mainnet"))
            .header("content-type", ct)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#,
            )))
            .unwrap();
        assert_eq!(client.request(req).await.unwrap().status(), 200, "{ct}");
    }
    assert_eq!(up.hits(), forwarded + 3);
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let (status, headers, _) = http_request(method, &p.url("/mainnet"), "").await;
        assert_eq!(status, 405, "{method}");
        assert_eq!(headers["allow"], "POST");
    }
}
