//! WebSocket clients on the same listener and paths: JSON-RPC over WebSocket as over HTTP, and
//! `eth_subscribe` `newHeads` / `logs` from detour's chain tracker on a simulated chain served
//! by several upstreams: every head and log once, in order, through an upstream going down,
//! lag and reorgs; limits, a slow consumer, unsubscribe, origins, shutdown.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::chain::{removed, sim_config as config, SimChain, SimUpstream, ADDRESS_A};
use support::Proxy;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(proxy: &Proxy, path: &str) -> Ws {
    let url = format!("ws://{}{path}", proxy.addr);
    let (ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next text message as JSON (pings skipped); panics after 10 s.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the connection is open")
            .expect("a frame");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn call(ws: &mut Ws, id: u64, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});
    ws.send(Message::text(body.to_string())).await.unwrap();
    let v = next(ws).await;
    assert_eq!(v["id"], id, "{v}");
    v
}

async fn subscribe(ws: &mut Ws, params: Value) -> String {
    let v = call(ws, 1, "eth_subscribe", params).await;
    v["result"]
        .as_str()
        .unwrap_or_else(|| panic!("eth_subscribe failed: {v}"))
        .to_owned()
}

/// The next `n` notifications' results, checked to belong to `id`.
async fn notifications(ws: &mut Ws, id: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = next(ws).await;
        assert_eq!(v["method"], "eth_subscription", "{v}");
        assert_eq!(v["params"]["subscription"], id, "{v}");
        out.push(v["params"]["result"].clone());
    }
    out
}

async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed within 10 s")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test]
async fn json_rpc_over_websocket_is_served_as_over_http() {
    let chain = SimChain::new(10, 0);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config("", &[&a])).await;
    for path in ["/mainnet", "/1", "/"] {
        let mut ws = connect(&proxy, path).await;
        assert_eq!(
            call(&mut ws, 7, "eth_chainId", json!([])).await["result"],
            "0x1"
        );
        assert_eq!(
            call(&mut ws, 8, "eth_blockNumber", json!([])).await["result"],
            "0xa"
        );
        ws.send(Message::text(
            r#"[{"jsonrpc":"2.0","id":"x","method":"eth_blockNumber"},{"jsonrpc":"2.0","method":"eth_chainId"},{"jsonrpc":"2.0","id":2,"method":"nope_nope"}]"#,
        ))
        .await
        .unwrap();
        let v = next(&mut ws).await;
        let ids: Vec<&Value> = v.as_array().unwrap().iter().map(|e| &e["id"]).collect();
        assert_eq!(ids, [&json!("x"), &json!(2)], "{v}");
        ws.send(Message::text("{not json")).await.unwrap();
        assert_eq!(next(&mut ws).await["error"]["code"], -32700);
        // The same method policy: refused before any upstream.
        assert_eq!(
            call(&mut ws, 9, "admin_peers", json!([])).await["error"]["code"],
            -32601
        );
    }
    // Over HTTP, subscriptions are refused as geth refuses them.
    let v = proxy
        .call("/mainnet", "eth_subscribe", r#"["newHeads"]"#)
        .await;
    assert_eq!(v["error"]["message"], "notifications not supported", "{v}");
    proxy.stop().await;
}

#[tokio::test]
async fn new_heads_arrive_once_in_order_through_failover_lag_outage_and_reorgs() {
    let chain = SimChain::new(10, 0);
    let (a, b) = (
        SimUpstream::start(&chain).await,
        SimUpstream::start(&chain).await,
    );
    let proxy = Proxy::start(&config("", &[&a, &b])).await;
    let mut ws = connect(&proxy, "/mainnet").await;
    let id = subscribe(&mut ws, json!(["newHeads"])).await;
    let heads = |v: &[Value]| -> Vec<(u64, String)> {
        v.iter()
            .map(|h| {
                assert!(
                    h.get("transactions").is_none(),
                    "a header, not a block: {h}"
                );
                assert!(
                    h.get("parentHash").is_some() && h.get("logsBloom").is_some(),
                    "{h}"
                );
                let n =
                    u64::from_str_radix(h["number"].as_str().unwrap().trim_start_matches("0x"), 16)
                        .unwrap();
                (n, h["hash"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    let canonical = |from: u64, to: u64| -> Vec<(u64, String)> {
        (from..=to).map(|n| (n, chain.hash_at(n))).collect()
    };

    chain.mine(3);
    assert_eq!(
        heads(&notifications(&mut ws, &id, 3).await),
        canonical(11, 13)
    );

    // One upstream down, the other two blocks behind, then caught up.
    a.set_down(true);
    b.set_lag(2);
    chain.mine(5);
    assert_eq!(
        heads(&notifications(&mut ws, &id, 3).await),
        canonical(14, 16)
    );
    b.set_lag(0);
    assert_eq!(
        heads(&notifications(&mut ws, &id, 2).await),
        canonical(17, 18)
    );

    // Every upstream down while 4 blocks are mined: they come once the upstreams return.
    b.set_down(true);
    chain.mine(4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.set_down(false);
    b.set_down(false);
    assert_eq!(
        heads(&notifications(&mut ws, &id, 4).await),
        canonical(19, 22)
    );

    // Reorgs of depth 1 and 3 (keeping the height): the new branch from the fork point.
    chain.reorg(1, 1);
    assert_eq!(
        heads(&notifications(&mut ws, &id, 1).await),
        canonical(22, 22)
    );
    chain.reorg(3, 4);
    assert_eq!(
        heads(&notifications(&mut ws, &id, 4).await),
        canonical(20, 23)
    );

    // Metrics: the connection, the subscription, what the tracker did.
    let metrics = proxy.detour.metrics();
    for line in [
        "detour_websocket_connections 1",
        "detour_websocket_notifications_total 17",
        r#"detour_chain_readers{chain="mainnet",type="subscription",kind="newHeads"} 1"#,
        r#"detour_tracker_following{chain="mainnet"} 1"#,
        r#"detour_tracker_head_block{chain="mainnet"} 23"#,
        r#"detour_tracker_reorgs_total{chain="mainnet"} 2"#,
        r#"detour_tracker_blocks_removed_total{chain="mainnet"} 4"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    let backfilled = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"detour_tracker_blocks_backfilled_total{chain="mainnet"} "#))
        .expect("backfilled blocks counted");
    assert!(
        backfilled.parse::<u64>().unwrap() > 0,
        "backfills counted: {backfilled}"
    );

    // Unsubscribed: no more notifications; an unknown id is `false`.
    let v = call(&mut ws, 5, "eth_unsubscribe", json!([id])).await;
    assert_eq!(v["result"], true);
    let v = call(&mut ws, 6, "eth_unsubscribe", json!([id])).await;
    assert_eq!(v["result"], false);
    chain.mine(2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        call(&mut ws, 7, "eth_chainId", json!([])).await["result"],
        "0x1",
        "nothing came between"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn log_subscriptions_report_reorged_logs_as_removed() {
    let chain = SimChain::new(10, 2);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config("", &[&a])).await;
    let mut ws = connect(&proxy, "/mainnet").await;
    let all = subscribe(&mut ws, json!(["logs"])).await;
    let mut ws_a = connect(&proxy, "/mainnet").await;
    let only_a = subscribe(&mut ws_a, json!(["logs", {"address": ADDRESS_A}])).await;
    let of_a = |v: Vec<Value>| -> Vec<Value> {
        v.into_iter()
            .filter(|l| l["address"] == ADDRESS_A)
            .collect()
    };

    chain.mine(2);
    let want: Vec<Value> = (11..=12).flat_map(|n| chain.logs_at(n)).collect();
    assert_eq!(notifications(&mut ws, &all, 4).await, want);
    assert_eq!(notifications(&mut ws_a, &only_a, 2).await, of_a(want));

    let dropped: Vec<Value> = [12, 11].iter().flat_map(|&n| chain.logs_at(n)).collect();
    chain.reorg(2, 3);
    let mut want: Vec<Value> = dropped.into_iter().map(removed).collect();
    want.extend((11..=13).flat_map(|n| chain.logs_at(n)));
    assert_eq!(notifications(&mut ws, &all, 10).await, want);
    assert_eq!(notifications(&mut ws_a, &only_a, 5).await, of_a(want));
    proxy.stop().await;
}

#[tokio::test]
async fn bad_subscriptions_and_limits_get_clear_errors() {
    let chain = SimChain::new(10, 0);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config(
        "[websocket]\nmax_subscriptions = 2\nmax_connections = 3\nmax_message_bytes = 4096",
        &[&a],
    ))
    .await;
    let mut ws = connect(&proxy, "/mainnet").await;
    for params in [
        json!([]),
        json!([1]),
        json!(["newHeads", {}]),
        json!(["logs", {"address": "0x12"}]),
        json!(["logs", {}, {}]),
        json!(["syncing"]),
    ] {
        let v = call(&mut ws, 3, "eth_subscribe", params.clone()).await;
        assert_eq!(v["error"]["code"], -32602, "{params}: {v}");
    }
    subscribe(&mut ws, json!(["newHeads"])).await;
    subscribe(&mut ws, json!(["logs"])).await;
    let v = call(&mut ws, 4, "eth_subscribe", json!(["newHeads"])).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("websocket.max_subscriptions"),
        "{v}"
    );

    // Connections beyond the limit are refused at the upgrade.
    let _second = connect(&proxy, "/mainnet").await;
    let _third = connect(&proxy, "/mainnet").await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/mainnet", proxy.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("a fourth connection: {other:?}"),
    }

    // A message over the size limit closes the connection (1009).
    ws.send(Message::text("x".repeat(8192))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_keep_up_is_disconnected_with_1008() {
    let chain = SimChain::new(10, 8);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config("[websocket]\nmax_queued_bytes = 4096", &[&a])).await;
    let mut ws = connect(&proxy, "/mainnet").await;
    subscribe(&mut ws, json!(["logs"])).await;
    // 30 blocks of 8 logs at once: about 100 KB of notifications, far over the 4 KiB allowed.
    chain.mine(30);
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));
    proxy.stop().await;
}

#[tokio::test]
async fn origins_keys_and_shutdown() {
    let chain = SimChain::new(10, 0);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config(
        "[server]\ncors_origins = [\"https://app.example\"]\n[[api_keys]]\nname = \"team\"\nkey = \"k-1234567890abcdef\"",
        &[&a],
    ))
    .await;
    let request = |path: &str, origin: Option<&str>| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}{path}", proxy.addr)
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        req
    };
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        status(tokio_tungstenite::connect_async(request("/mainnet", None)).await),
        401
    );
    assert_eq!(
        status(
            tokio_tungstenite::connect_async(request(
                "/mainnet/k-1234567890abcdef",
                Some("https://evil.example")
            ))
            .await
        ),
        403
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request(
        "/mainnet/k-1234567890abcdef",
        Some("https://app.example"),
    ))
    .await
    .unwrap();
    assert_eq!(
        call(&mut ws, 1, "eth_chainId", json!([])).await["result"],
        "0x1"
    );
    subscribe(&mut ws, json!(["newHeads"])).await;
    let stopping = tokio::spawn(proxy.stop());
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::Away),
        "shutdown closes with 1001"
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn detour_subscribe_streams_heads_in_process() {
    let chain = SimChain::new(10, 2);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config("", &[&a])).await;
    let params = serde_json::value::RawValue::from_string(r#"["newHeads"]"#.into()).unwrap();
    let mut heads = proxy.detour.subscribe("mainnet", &params).await.unwrap();
    let params = serde_json::value::RawValue::from_string(format!(
        r#"["logs",{{"address":"{ADDRESS_A}"}}]"#
    ))
    .unwrap();
    let mut logs = proxy.detour.subscribe("1", &params).await.unwrap();
    chain.mine(3);
    for n in 11..=13u64 {
        let head = tokio::time::timeout(Duration::from_secs(10), heads.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let head: Value = serde_json::from_str(head.get()).unwrap();
        assert_eq!(head["hash"], chain.hash_at(n));
        let log = tokio::time::timeout(Duration::from_secs(10), logs.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let log: Value = serde_json::from_str(log.get()).unwrap();
        assert_eq!(log, chain.logs_at(n)[0]);
    }
    let bad = serde_json::value::RawValue::from_string(r#"["syncing"]"#.into()).unwrap();
    assert_eq!(
        proxy
            .detour
            .subscribe("mainnet", &bad)
            .await
            .err()
            .unwrap()
            .code,
        -32602
    );
    assert_eq!(
        proxy
            .detour
            .subscribe("nope", &params)
            .await
            .err()
            .unwrap()
            .code,
        -32001
    );
    drop(heads);
    drop(logs);
    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_keeps_subscriptions_of_kept_chains_and_closes_those_of_removed_ones() {
    let chain = SimChain::new(10, 0);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config("[websocket]\nping_interval = \"200ms\"", &[&a])).await;
    let mut ws = connect(&proxy, "/mainnet").await;
    let id = subscribe(&mut ws, json!(["newHeads"])).await;
    // The same chain, another setting: the subscription goes on.
    let kept = config(
        "[websocket]\nping_interval = \"200ms\"\n[server]\naccess_log = false",
        &[&a],
    );
    proxy
        .detour
        .reload(detour::Config::from_toml(&kept).unwrap())
        .unwrap();
    chain.mine(1);
    assert_eq!(
        notifications(&mut ws, &id, 1).await[0]["hash"],
        chain.hash_at(11)
    );
    // The chain is gone: closed with 1001 and a reason.
    let renamed =
        config("[websocket]\nping_interval = \"200ms\"", &[&a]).replace("mainnet", "other");
    proxy
        .detour
        .reload(detour::Config::from_toml(&renamed).unwrap())
        .unwrap();
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(frame.code, CloseCode::Away);
    assert!(
        frame.reason.contains("no longer served"),
        "{}",
        frame.reason
    );
    proxy.stop().await;
}
