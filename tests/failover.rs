//! Failover: which failures move a request to the next upstream, which do not, what writes may
//! do, ejection and cool-down, tiers, attempt limits, deadlines, and the final error.

mod support;

use std::time::{Duration, Instant};

use detour::state::upstream::now_us;
use support::{chain_config, refused_url, Mock, Proxy, Reply};

/// Tier 0 "bad" (with `bad_extra` TOML) scripted by the test, tier 1 "good": every request goes
/// to "bad" first.
async fn bad_then_good(bad_extra: &str) -> (Mock, Mock, Proxy) {
    let bad = Mock::start("bad").await;
    let good = Mock::start("good").await;
    let p = Proxy::start(&chain_config(
        "",
        &[
            ("bad", &bad.url(), &format!("tier = 0\n{bad_extra}")),
            ("good", &good.url(), "tier = 1"),
        ],
    ))
    .await;
    (bad, good, p)
}

/// Tier 0 "dead" (nothing listens: connections are refused), tier 1 "good".
async fn dead_then_good() -> (Mock, Proxy) {
    let good = Mock::start("good").await;
    let dead = refused_url().await;
    let p = Proxy::start(&chain_config(
        "",
        &[
            ("dead", &dead, "tier = 0"),
            ("good", &good.url(), "tier = 1"),
        ],
    ))
    .await;
    (good, p)
}

fn ejected(p: &Proxy, name: &str) -> bool {
    let pool = p.detour.pool();
    let up = pool.chains[0]
        .upstreams
        .iter()
        .find(|u| &*u.name == name)
        .unwrap()
        .clone();
    up.state.cooldown_until(now_us()).is_some()
}

#[tokio::test]
async fn connection_refused_fails_over_and_ejects_at_once() {
    let (good, p) = dead_then_good().await;
    let v = p.call("/mainnet", "eth_blockNumber", "[]").await;
    assert_eq!(v["result"], "good");
    assert!(
        ejected(&p, "dead"),
        "a refused upstream is ejected after one failure"
    );
    // While it cools down, tier 1 serves directly: one upstream request per client request.
    for _ in 0..5 {
        assert_eq!(
            p.call("/mainnet", "eth_blockNumber", "[]").await["result"],
            "good"
        );
    }
    assert_eq!(good.hits(), 6);
}

#[tokio::test]
async fn http_5xx_and_429_fail_over() {
    for reply in [
        Reply::status(500),
        Reply::status(502),
        Reply::status(503),
        Reply::Status(429, "slow down".into(), vec![("retry-after", "7".into())]),
    ] {
        let (bad, _good, p) = bad_then_good("").await;
        bad.always(reply.clone());
        let v = p
            .call("/mainnet", "eth_getBalance", r#"["0x00","latest"]"#)
            .await;
        assert_eq!(v["result"], "good", "{reply:?}");
        assert_eq!(bad.hits(), 1);
    }
}

#[tokio::test]
async fn rate_limit_429_ejects_honouring_retry_after() {
    let (bad, _good, p) = bad_then_good("").await;
    bad.always(Reply::Status(
        429,
        "slow down".into(),
        vec![("retry-after", "7".into())],
    ));
    p.call("/mainnet", "eth_blockNumber", "[]").await;
    let pool = p.detour.pool();
    let until = pool.chains[0].upstreams[0]
        .state
        .cooldown_until(now_us())
        .expect("ejected");
    let left = Duration::from_micros(until - now_us());
    assert!(
        left > Duration::from_secs(5) && left <= Duration::from_secs(7),
        "{left:?}"
    );
}

#[tokio::test]
async fn a_rejected_api_key_ejects_at_once() {
    for code in [401, 403] {
        let (bad, _good, p) = bad_then_good("").await;
        bad.always(Reply::status(code));
        let v = p.call("/mainnet", "eth_getBalance", "[]").await;
        assert_eq!(v["result"], "good");
        assert!(ejected(&p, "bad"), "HTTP {code} ejects after one answer");
        let st = p.upstream_status("bad");
        assert_eq!(st["last_error"], format!("HTTP {code}"));
    }
}

#[tokio::test]
async fn malformed_answers_fail_over() {
    for reply in [
        Reply::Raw("<html>bad gateway</html>".into()),
        Reply::Raw(r#"{"jsonrpc":"2.0","id":999,"result":"0x1"}"#.into()),
        Reply::Raw(String::new()),
        Reply::Close,
    ] {
        let (bad, good, p) = bad_then_good("").await;
        bad.always(reply.clone());
        let v = p.call("/mainnet", "eth_blockNumber", "[]").await;
        assert_eq!(v["result"], "good", "{reply:?}");
        assert!(good.hits() >= 1);
    }
}

#[tokio::test]
async fn a_hung_upstream_fails_over_after_the_attempt_timeout() {
    let (bad, good, p) = bad_then_good("timeout = \"200ms\"").await;
    bad.always(Reply::Hang);
    let v = p.call("/mainnet", "eth_blockNumber", "[]").await;
    assert_eq!(v["result"], "good");
    assert_eq!(good.methods(), ["eth_blockNumber"]);
}

#[tokio::test]
async fn provider_trouble_json_rpc_errors_fail_over() {
    for (code, msg) in [
        (-32005, "daily request count exceeded, request rate limited"),
        (-32601, "the method eth_foo does not exist/is not available"),
        (-32000, "header not found"),
        (-32000, "missing trie node abc"),
        (-32603, "Internal error"),
    ] {
        let (bad, _good, p) = bad_then_good("").await;
        bad.always(Reply::error(code, msg));
        let v = p
            .call("/mainnet", "eth_getBalance", r#"["0x00","latest"]"#)
            .await;
        assert_eq!(v["result"], "good", "{code} {msg}");
    }
}

#[tokio::test]
async fn an_unsupported_method_does_not_count_against_the_upstream() {
    let (bad, _good, p) = bad_then_good("").await;
    bad.on(
        "trace_block",
        Reply::error(
            -32601,
            "the method trace_block does not exist/is not available",
        ),
    );
    for _ in 0..5 {
        assert_eq!(
            p.call("/mainnet", "trace_block", "[\"latest\"]").await["result"],
            "good"
        );
    }
    assert!(
        !ejected(&p, "bad"),
        "a provider that lacks one method is still healthy"
    );
    assert_eq!(
        p.call("/mainnet", "eth_blockNumber", "[]").await["result"],
        "bad"
    );
}

#[tokio::test]
async fn deterministic_errors_are_returned_and_not_retried() {
    for (code, msg) in [
        (
            3,
            "execution reverted: ERC20: transfer amount exceeds balance",
        ),
        (-32602, "invalid argument 0: hex string without 0x prefix"),
        (-32000, "nonce too low"),
        (-32000, "insufficient funds for gas * price + value"),
    ] {
        let (bad, good, p) = bad_then_good("").await;
        bad.always(Reply::error(code, msg));
        let v = p.call("/mainnet", "eth_call", r#"[{},"latest"]"#).await;
        assert_eq!(v["error"]["code"], code);
        assert_eq!(v["error"]["message"], msg);
        assert_eq!(good.hits(), 0, "{msg} was retried");
        assert!(
            !ejected(&p, "bad"),
            "a deterministic error counted against the upstream"
        );
    }
}

#[tokio::test]
async fn a_batch_retries_only_the_calls_that_need_it() {
    let (bad, good, p) = bad_then_good("").await;
    bad.on(
        "eth_getLogs",
        Reply::error(-32005, "query returned more than 10000 results"),
    );
    bad.on("eth_blockNumber", Reply::result("\"0x10\""));
    let v = p
        .rpc(
            "/mainnet",
            r#"[{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"},{"jsonrpc":"2.0","id":2,"method":"eth_getLogs","params":[{}]}]"#,
        )
        .await;
    assert_eq!(v[0]["result"], "0x10");
    assert_eq!(v[1]["result"], "good");
    assert_eq!(good.methods(), ["eth_getLogs"]);
    // "More than 10000 results" is a limit of this provider, not a rate limit: no ejection.
    assert!(!ejected(&p, "bad"));
}

#[tokio::test]
async fn writes_are_not_retried_when_the_first_upstream_may_have_seen_them() {
    for reply in [
        Reply::status(503),
        Reply::Close,
        Reply::Raw("garbage".into()),
    ] {
        let (bad, good, p) = bad_then_good("").await;
        bad.always(reply.clone());
        let v = p
            .call("/mainnet", "eth_sendRawTransaction", r#"["0x02f8"]"#)
            .await;
        assert_eq!(v["error"]["code"], -32603, "{reply:?}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("eth_sendRawTransaction")
                && msg.contains("bad")
                && msg.contains("not retried"),
            "{msg}"
        );
        assert_eq!(good.hits(), 0, "{reply:?}: a write was sent twice");
    }
}

#[tokio::test]
async fn a_write_hung_upstream_is_not_retried() {
    let (bad, good, p) = bad_then_good("timeout = \"200ms\"").await;
    bad.always(Reply::Hang);
    let v = p
        .call("/mainnet", "eth_sendRawTransaction", r#"["0x02f8"]"#)
        .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{v}"
    );
    assert_eq!(good.hits(), 0);
}

#[tokio::test]
async fn writes_are_retried_when_the_first_upstream_never_saw_them() {
    let (good, p) = dead_then_good().await;
    let v = p
        .call("/mainnet", "eth_sendRawTransaction", r#"["0x02f8"]"#)
        .await;
    assert_eq!(v["result"], "good");
    assert_eq!(good.methods(), ["eth_sendRawTransaction"]);
    // Rate limited (429) means rejected before processing: also safe.
    let (bad, good, p) = bad_then_good("").await;
    bad.always(Reply::status(429));
    let v = p
        .call("/mainnet", "eth_sendRawTransaction", r#"["0x02f8"]"#)
        .await;
    assert_eq!(v["result"], "good");
    assert_eq!(good.methods(), ["eth_sendRawTransaction"]);
    // So do JSON-RPC errors that decline it: a rate limit, a method this provider does not serve.
    for declined in [
        Reply::error(-32005, "daily request count exceeded, request rate limited"),
        Reply::error(
            -32601,
            "the method eth_sendRawTransaction does not exist/is not available",
        ),
    ] {
        let (bad, good, p) = bad_then_good("").await;
        bad.always(declined);
        let v = p
            .call("/mainnet", "eth_sendRawTransaction", r#"["0x02f8"]"#)
            .await;
        assert_eq!(v["result"], "good", "{v}");
        assert_eq!(good.methods(), ["eth_sendRawTransaction"]);
    }
}

#[tokio::test]
async fn when_all_fail_the_error_names_each_upstream_and_why() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    a.always(Reply::status(503));
    b.always(Reply::Raw("not json".into()));
    let dead = refused_url().await;
    let p = Proxy::start(&chain_config(
        "",
        &[
            ("a", &a.url(), "tier = 0"),
            ("b", &b.url(), "tier = 1"),
            ("c", &dead, "tier = 2"),
        ],
    ))
    .await;
    let v = p.call("/mainnet", "eth_blockNumber", "[]").await;
    assert_eq!(v["error"]["code"], -32603);
    assert_eq!(
        v["error"]["message"],
        "no upstream could answer: a: HTTP 503; b: response is not JSON-RPC; c: connection refused"
    );
    assert_eq!(v["error"]["data"]["attempts"][2]["upstream"], "c");
}

#[tokio::test]
async fn the_last_upstreams_json_rpc_error_is_returned_when_all_fail() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    a.always(Reply::error(
        -32601,
        "the method foo_bar does not exist/is not available",
    ));
    b.always(Reply::error(-32601, "Method not found"));
    let p = Proxy::start(&chain_config(
        "",
        &[("a", &a.url(), "tier = 0"), ("b", &b.url(), "tier = 1")],
    ))
    .await;
    let v = p.call("/mainnet", "foo_bar", "[]").await;
    // Clients detect unsupported methods by code: they get a real upstream's -32601.
    assert_eq!(
        v["error"],
        serde_json::json!({"code": -32601, "message": "Method not found"})
    );
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn max_attempts_bounds_the_upstreams_tried_and_none_is_tried_twice() {
    let mocks: Vec<Mock> =
        futures_util::future::join_all((0..5).map(|i| Mock::start(["a", "b", "c", "d", "e"][i])))
            .await;
    for m in &mocks {
        m.always(Reply::status(502));
    }
    let ups: Vec<(String, String)> = mocks.iter().map(|m| (m.name.clone(), m.url())).collect();
    let refs: Vec<(&str, &str, &str)> = ups
        .iter()
        .map(|(n, u)| (n.as_str(), u.as_str(), ""))
        .collect();
    let p = Proxy::start(&chain_config("max_attempts = 3", &refs)).await;
    let v = p.call("/mainnet", "eth_blockNumber", "[]").await;
    assert_eq!(v["error"]["data"]["attempts"].as_array().unwrap().len(), 3);
    let hits: Vec<usize> = mocks.iter().map(Mock::hits).collect();
    assert_eq!(hits.iter().sum::<usize>(), 3);
    assert!(
        hits.iter().all(|&h| h <= 1),
        "an upstream was tried twice: {hits:?}"
    );
}

#[tokio::test]
async fn when_every_upstream_is_ejected_they_are_still_tried() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    let p = Proxy::start(&chain_config(
        "",
        &[("a", &a.url(), ""), ("b", &b.url(), "")],
    ))
    .await;
    let pool = p.detour.pool();
    for u in &pool.chains[0].upstreams {
        u.state
            .eject(now_us(), Duration::ZERO, Some(Duration::from_secs(30)));
    }
    // Both cool down, but both are healthy again: the request is served, not refused.
    let v = p.call("/mainnet", "eth_blockNumber", "[]").await;
    assert!(v["result"] == "a" || v["result"] == "b", "{v}");
    // And the success lifts that upstream's cool-down.
    let name = v["result"].as_str().unwrap();
    assert!(!ejected(&p, name));
}

#[tokio::test]
async fn ejected_upstream_returns_after_its_cool_down() {
    let own = Mock::start("own").await;
    let paid = Mock::start("paid").await;
    let p = Proxy::start(&chain_config(
        "",
        &[
            ("own", &own.url(), "tier = 0"),
            ("paid", &paid.url(), "tier = 1"),
        ],
    ))
    .await;
    // Three soft failures in a row eject "own" (a 503 is soft: it may be a blip). Not closed
    // connections: one closed as it is reused is sent again on a new connection, so how many
    // closes make three failures depends on the pool.
    own.times("eth_blockNumber", 3, Reply::status(503));
    for _ in 0..3 {
        assert_eq!(
            p.call("/mainnet", "eth_blockNumber", "[]").await["result"],
            "paid"
        );
    }
    assert!(ejected(&p, "own"));
    assert_eq!(
        p.call("/mainnet", "eth_blockNumber", "[]").await["result"],
        "paid"
    );
    let own_hits = own.hits();
    // First cool-down is 1 s; then the preferred tier serves again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        p.call("/mainnet", "eth_blockNumber", "[]").await["result"],
        "own"
    );
    assert_eq!(own.hits(), own_hits + 1);
    assert!(!ejected(&p, "own"));
}

#[tokio::test]
async fn request_timeout_bounds_the_whole_request() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    a.always(Reply::Hang);
    b.always(Reply::Hang);
    let toml = format!(
        "[server]\nrequest_timeout = \"300ms\"\n{}",
        chain_config(
            "",
            &[
                ("a", &a.url(), "timeout = \"5s\""),
                ("b", &b.url(), "timeout = \"5s\"")
            ]
        )
    );
    let p = Proxy::start(&toml).await;
    let started = Instant::now();
    let v = p.call("/mainnet", "eth_blockNumber", "[]").await;
    // Behaviour, not speed: the answer is the deadline error, well before an attempt timeout.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(v["error"]["code"], -32603);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("request timed out"),
        "{v}"
    );
}

#[tokio::test]
async fn secrets_in_upstream_urls_never_reach_the_client() {
    let dead = refused_url().await;
    let b = Mock::start("b").await;
    b.always(Reply::status(503));
    let toml = chain_config(
        "",
        &[
            (
                "dead",
                &format!("{dead}/v3/SECRETKEY0123456789?apikey=QUERYSECRET"),
                "",
            ),
            (
                "b",
                &format!("http://user:PASSWORDSECRET@{}/SECRETPATH99", b.addr),
                "headers = { \"x-api-key\" = \"HEADERSECRET\" }",
            ),
        ],
    );
    let p = Proxy::start(&toml).await;
    let (_, text) = p
        .post(
            "/mainnet",
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#,
        )
        .await;
    for secret in [
        "SECRETKEY0123456789",
        "QUERYSECRET",
        "PASSWORDSECRET",
        "SECRETPATH99",
        "HEADERSECRET",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(
        text.contains("dead") && text.contains("b: HTTP 503"),
        "{text}"
    );
    // The credentials did reach the upstream, as headers.
    let h = &b.headers()[0];
    assert_eq!(h["x-api-key"], "HEADERSECRET");
    assert!(h["authorization"].to_str().unwrap().starts_with("Basic "));
}

#[tokio::test]
async fn lower_latency_upstream_gets_most_traffic() {
    let fast = Mock::start("fast").await;
    let slow = Mock::start("slow").await;
    slow.always(Reply::delay(40, Reply::result("\"slow\"")));
    let p = Proxy::start(&chain_config(
        "",
        &[("fast", &fast.url(), ""), ("slow", &slow.url(), "")],
    ))
    .await;
    for _ in 0..40 {
        p.call("/mainnet", "eth_blockNumber", "[]").await;
    }
    // Sequential requests: P2C compares both; once "slow" has shown its latency it loses.
    assert!(
        fast.hits() > 30,
        "fast {} slow {}",
        fast.hits(),
        slow.hits()
    );
}

#[tokio::test]
async fn tls_failure_fails_over_ejects_at_once_and_lets_writes_retry() {
    // An https:// URL pointing at a plain-HTTP server: the TLS handshake fails.
    let plain = Mock::start("plain").await;
    let good = Mock::start("good").await;
    let tls_url = format!("https://{}", plain.addr);
    let p = Proxy::start(&chain_config(
        "",
        &[
            ("tls", &tls_url, "tier = 0"),
            ("good", &good.url(), "tier = 1"),
        ],
    ))
    .await;
    let v = p
        .call("/mainnet", "eth_sendRawTransaction", r#"["0x02f8"]"#)
        .await;
    assert_eq!(
        v["result"], "good",
        "a TLS failure proves the write never arrived: {v}"
    );
    assert!(ejected(&p, "tls"));
    assert_eq!(plain.hits(), 0, "no HTTP request reached the plain server");
    let only = Proxy::start(&chain_config("", &[("tls", &tls_url, "")])).await;
    let v = only.call("/mainnet", "eth_blockNumber", "[]").await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("no upstream could answer: tls: TLS handshake failed"),
        "{msg}"
    );
}

#[tokio::test]
async fn an_answer_over_the_response_limit_fails_over() {
    let bad = Mock::start("bad").await;
    let good = Mock::start("good").await;
    bad.always(Reply::Result(format!("\"0x{}\"", "00".repeat(4096))));
    let toml = format!(
        "[client]\nmax_response_bytes = 2000\n[chains.mainnet]\nchain_id = 1\n\
         [[chains.mainnet.upstreams]]\nname = \"bad\"\nurl = \"{}\"\ntier = 0\n\
         [[chains.mainnet.upstreams]]\nname = \"good\"\nurl = \"{}\"\ntier = 1\n",
        bad.url(),
        good.url()
    );
    let p = Proxy::start(&toml).await;
    let v = p.call("/mainnet", "eth_getLogs", "[{}]").await;
    assert_eq!(v["result"], "good");
    bad.always(Reply::Result(format!("\"0x{}\"", "00".repeat(4096))));
    good.always(Reply::Result(format!("\"0x{}\"", "00".repeat(4096))));
    let v = p.call("/mainnet", "eth_getLogs", "[{}]").await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("bad: response larger than 2000 bytes (client.max_response_bytes)")
            && msg.contains("good: response larger than 2000 bytes"),
        "{msg}"
    );
}

#[tokio::test]
async fn failures_the_request_caused_are_not_held_against_the_upstream() {
    let bad = Mock::start("bad").await;
    let good = Mock::start("good").await;
    // Answers over the size limit, and heavy calls that time out: failed over, not counted.
    let big = format!("\"0x{}\"", "00".repeat(4096));
    bad.on("eth_getLogs", Reply::Result(big));
    bad.on("trace_transaction", Reply::Hang);
    let toml = chain_config(
        "[chains.mainnet.hedge]\nenabled = false\n",
        &[
            ("bad", &bad.url(), "tier = 0\ntimeout = \"200ms\""),
            ("good", &good.url(), "tier = 1"),
        ],
    )
    .replacen("[client]\n", "[client]\nmax_response_bytes = 2000\n", 1);
    let p = Proxy::start(&toml).await;
    for _ in 0..4 {
        let v = p.call("/mainnet", "eth_getLogs", "[{}]").await;
        assert_eq!(v["result"], "good", "{v}");
        let v = p.call("/mainnet", "trace_transaction", r#"["0x01"]"#).await;
        assert_eq!(v["result"], "good", "{v}");
    }
    assert!(p.states("bad").is_empty(), "{:?}", p.states("bad"));
    let status = p.upstream_status("bad");
    assert_eq!(status["failures"], 0, "{status}");
    assert!(status["last_error"].as_str().is_some(), "{status}");
    // The same timeouts on an ordinary read are the upstream's: three in a row eject it.
    bad.on("eth_getBalance", Reply::Hang);
    for _ in 0..3 {
        let v = p.call("/mainnet", "eth_getBalance", "[]").await;
        assert_eq!(v["result"], "good", "{v}");
    }
    assert!(
        p.states("bad").contains(&"cooling_down".to_string()),
        "{:?}",
        p.states("bad")
    );
}

#[tokio::test]
async fn unknown_methods_are_retried_only_when_never_received() {
    // A 503 may come after the upstream acted on it: not resent.
    let (bad, good, p) = bad_then_good("").await;
    bad.always(Reply::status(503));
    let v = p.call("/mainnet", "zks_doSomething", "[]").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not retried"),
        "{v}"
    );
    assert_eq!(good.hits(), 0);
    // A known read is.
    let v = p.call("/mainnet", "eth_getProof", "[]").await;
    assert_eq!(v["result"], "good", "{v}");
    // Refused connections never reached anyone: retried.
    let (good, p) = dead_then_good().await;
    let v = p.call("/mainnet", "zks_doSomething", "[]").await;
    assert_eq!(v["result"], "good", "{v}");
    assert_eq!(good.methods(), ["zks_doSomething"]);
}
