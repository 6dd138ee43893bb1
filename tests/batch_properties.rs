//! Property test of the id-rewriting path through real upstreams: batches are split into each
//! upstream's `max_batch_len` chunks, and a faulty upstream answers each chunk shuffled, with
//! answers dropped and duplicated. Whatever it does, the client gets every answer in request
//! order, each with its own id byte for byte and its own result (no answer given to another
//! call), and notifications get none.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use serde_json::Value;

/// A deterministic mix of `seed` and `n`.
fn mix(seed: u64, n: u64) -> u64 {
    let mut x = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// An upstream answering `eth_getBalance` with `"v<n>"` for params `["<n>"]`. When `faulty`,
/// each batch's answers come shuffled, some dropped and some twice (by `seed`).
async fn upstream(faulty: bool, seed: u64) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        let answer = |c: &Value| {
                            let n = c["params"][0].as_str().unwrap_or("?");
                            serde_json::json!({"jsonrpc": "2.0", "id": c["id"], "result": format!("v{n}")})
                        };
                        let out = match &v {
                            Value::Array(calls) => {
                                let mut answers: Vec<(u64, Value)> = Vec::new();
                                for c in calls {
                                    let h = mix(seed, c["id"].as_u64().unwrap_or(0));
                                    if faulty && h % 5 == 0 {
                                        continue; // dropped
                                    }
                                    answers.push((h, answer(c)));
                                    if faulty && h % 7 == 0 {
                                        answers.push((h / 3, answer(c))); // duplicated
                                    }
                                }
                                if faulty {
                                    answers.sort_by_key(|(h, _)| *h);
                                }
                                Value::Array(answers.into_iter().map(|(_, a)| a).collect())
                            }
                            c => answer(c),
                        };
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(serde_json::to_vec(&out).unwrap()),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// An id as raw JSON: integers (also beyond 2^53), strings with escapes, null.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("{n}000")),
        "[a-z0-9 \\\\\"/\u{e9}]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("null".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn shuffled_dropped_and_duplicated_answers_still_reach_the_right_calls(
        ids in proptest::collection::vec(id(), 1..30),
        notify in proptest::collection::vec(proptest::bool::weighted(0.15), 30),
        chunk in 1usize..6,
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let out = rt.block_on(async {
            let faulty = upstream(true, seed).await;
            let honest = upstream(false, seed).await;
            let config = detour::Config::from_toml(&format!(
                "[chains.c]\nchain_id = 1\n[chains.c.hedge]\nenabled = false\n\
                 [[chains.c.upstreams]]\nname = \"faulty\"\nurl = \"http://{faulty}\"\nmax_batch_len = {chunk}\n\
                 [[chains.c.upstreams]]\nname = \"honest\"\nurl = \"http://{honest}\"\ntier = 1\nmax_batch_len = 7\n"
            ))
            .unwrap();
            let d = detour::Detour::new(config).unwrap();
            let entries: Vec<String> = ids.iter().enumerate().map(|(i, id)| {
                if notify[i] {
                    format!(r#"{{"jsonrpc":"2.0","method":"eth_getBalance","params":["{i}"]}}"#)
                } else {
                    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_getBalance","params":["{i}"]}}"#)
                }
            }).collect();
            let body = format!("[{}]", entries.join(","));
            d.handle_jsonrpc("c", body.as_bytes()).await.unwrap()
        });
        let want: Vec<String> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| !notify[*i])
            .map(|(i, id)| format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"v{i}"}}"#))
            .collect();
        match out {
            None => prop_assert!(want.is_empty()),
            Some(out) => {
                let text = String::from_utf8(out.to_vec()).unwrap();
                prop_assert_eq!(text, format!("[{}]", want.join(",")));
            }
        }
    }
}
