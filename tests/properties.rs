//! Property tests over the parser and batch handling, in process (no socket): any bytes get a
//! well-formed answer; valid batches come back in order with every id byte for byte.

use proptest::prelude::*;
use serde_json::Value;

fn proxy() -> (tokio::runtime::Runtime, detour::Detour) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The only upstream refuses connections at once; eth_chainId is answered locally.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = detour::Config::from_toml(&format!(
        "[client]\nconnect_timeout = \"1s\"\n[chains.c]\nchain_id = 1\n[[chains.c.upstreams]]\nname = \"gone\"\nurl = \"http://127.0.0.1:{port}\"\n"
    ))
    .unwrap();
    let d = rt.block_on(async { detour::Detour::new(config).unwrap() });
    (rt, d)
}

fn well_formed(v: &Value) -> bool {
    let one = |o: &Value| {
        o["jsonrpc"] == "2.0"
            && o.get("id").is_some()
            && (o.get("result").is_some() != o.get("error").is_some())
            && o.get("error")
                .is_none_or(|e| e["code"].is_i64() && e["message"].is_string())
    };
    match v {
        Value::Array(items) => !items.is_empty() && items.iter().all(one),
        o => one(o),
    }
}

/// An id as raw JSON: integers (also beyond 2^53), strings with escapes, null.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("{n}000")),
        "[a-z0-9 \\\\\"/\u{e9}\u{1F600}]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("null".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_get_a_well_formed_answer(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (rt, d) = proxy();
        let out = rt.block_on(d.handle_jsonrpc("c", &body)).unwrap();
        if let Some(out) = out {
            let v: Value = serde_json::from_slice(&out).expect("the answer is JSON");
            prop_assert!(well_formed(&v), "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn json_shaped_noise_gets_a_well_formed_answer(
        body in r#"[\[\]\{\}",:0-9a-z ]{0,80}"#,
    ) {
        let (rt, d) = proxy();
        let out = rt.block_on(d.handle_jsonrpc("c", body.as_bytes())).unwrap();
        if let Some(out) = out {
            let v: Value = serde_json::from_slice(&out).expect("the answer is JSON");
            prop_assert!(well_formed(&v), "{body} -> {}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn batches_keep_order_and_ids_byte_for_byte(
        ids in proptest::collection::vec(id(), 1..40),
        notify in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let (rt, d) = proxy();
        let entries: Vec<String> = ids.iter().enumerate().map(|(i, id)| {
            if notify[i] {
                r#"{"jsonrpc":"2.0","method":"eth_chainId"}"#.to_string()
            } else {
                format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_chainId"}}"#)
            }
        }).collect();
        let body = format!("[{}]", entries.join(","));
        let out = rt.block_on(d.handle_jsonrpc("c", body.as_bytes())).unwrap();
        let expected: Vec<&String> = ids.iter().enumerate().filter(|(i, _)| !notify[*i]).map(|(_, id)| id).collect();
        match out {
            None => prop_assert!(expected.is_empty()),
            Some(out) => {
                let text = String::from_utf8(out.to_vec()).unwrap();
                let want: Vec<String> = expected
                    .iter()
                    .map(|id| format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x1"}}"#))
                    .collect();
                prop_assert_eq!(text, format!("[{}]", want.join(",")));
            }
        }
    }
}
