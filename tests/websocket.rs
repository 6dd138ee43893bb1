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
    ] {
        let v = call(&mut ws, 3, "eth_subscribe", params.clone()).await;
        assert_eq!(v["error"]["code"], -32602, "{params}: {v}");
    }
    // Other kinds are relayed from an upstream's WebSocket: none has a ws_url here.
    let v = call(&mut ws, 3, "eth_subscribe", json!(["syncing"])).await;
    assert_eq!(v["error"]["code"], -32000, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("ws_url"),
        "{v}"
    );
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

/// A WebSocket opened by hand, to send frames a library would not.
async fn raw_connect(proxy: &Proxy) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /mainnet HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A client's frame: `first` byte as given (FIN, opcode), the payload masked unless `mask` is
/// false.
fn frame(first: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let key = [0x9d, 0x01, 0x7e, 0x42];
    let mut f = vec![first];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    if mask {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// The next frame the server sent: its first byte and payload; `None` once the socket closes.
async fn raw_next(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let first = s.read_u8().await.ok()?;
        let len = match s.read_u8().await.ok()? {
            126 => s.read_u16().await.ok()? as usize,
            127 => s.read_u64().await.ok()? as usize,
            n => {
                assert!(n < 0x80, "a server's frames are not masked");
                n as usize
            }
        };
        let mut payload = vec![0; len];
        s.read_exact(&mut payload).await.ok()?;
        Some((first, payload))
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a frame within 10 s")
}

#[tokio::test]
async fn frames_are_read_as_rfc_6455_says() {
    use tokio::io::AsyncWriteExt;
    let chain = SimChain::new(10, 0);
    let a = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config("[websocket]\nmax_message_bytes = 4096", &[&a])).await;
    let mut s = raw_connect(&proxy).await;

    // A call in three fragments with a ping between them, written a byte at a time: the ping
    // is answered at once with its payload, the call once it is whole.
    let call = br#"{"jsonrpc":"2.0","id":"frag","method":"eth_blockNumber","params":[]}"#;
    let mut bytes = frame(0x01, &call[..10], true);
    bytes.extend(frame(0x89, b"are you there", true));
    bytes.extend(frame(0x00, &call[10..30], true));
    bytes.extend(frame(0x80, &call[30..], true));
    for b in bytes {
        s.write_all(&[b]).await.unwrap();
    }
    assert_eq!(
        raw_next(&mut s).await,
        Some((0x8a, b"are you there".to_vec()))
    );
    let (first, answer) = raw_next(&mut s).await.unwrap();
    assert_eq!(first, 0x81, "FIN, text");
    let v: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        (v["id"].as_str(), v["result"].as_str()),
        (Some("frag"), Some("0xa"))
    );

    // Ten calls in one write, one of them binary: each answered once (in any order).
    let mut bytes = Vec::new();
    for id in 0..10 {
        let call = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_chainId"}}"#);
        bytes.extend(frame(
            if id == 3 { 0x82 } else { 0x81 },
            call.as_bytes(),
            true,
        ));
    }
    s.write_all(&bytes).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..10 {
        let (first, answer) = raw_next(&mut s).await.unwrap();
        assert_eq!(first, 0x81);
        let v: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(v["result"], "0x1", "{v}");
        ids.push(v["id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..10).collect::<Vec<u64>>());

    // A binary message that is not UTF-8 is a parse error; the connection stays.
    s.write_all(&frame(0x82, &[0xff, 0xfe], true))
        .await
        .unwrap();
    let (_, answer) = raw_next(&mut s).await.unwrap();
    let v: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(v["error"]["code"], -32700, "{v}");

    // The client's close is answered with its code, then the socket ends.
    s.write_all(&frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e'], true))
        .await
        .unwrap();
    assert_eq!(raw_next(&mut s).await, Some((0x88, vec![0x03, 0xe8])));
    assert_eq!(raw_next(&mut s).await, None);

    // Broken rules close the connection with the code the RFC names, and a reason.
    let big = vec![b' '; 3000];
    for (bytes, code) in [
        (frame(0x81, b"{}", false), 1002u16),
        (frame(0xc1, b"{}", true), 1002),
        (frame(0x80, b"{}", true), 1002),
        (frame(0x09, b"", true), 1002),
        (frame(0x81, &[b'"', 0xc3, 0x28, b'"'], true), 1007),
        (
            [frame(0x01, &big, true), frame(0x80, &big, true)].concat(),
            1009,
        ),
    ] {
        let mut s = raw_connect(&proxy).await;
        s.write_all(&bytes).await.unwrap();
        let (first, payload) = raw_next(&mut s).await.expect("a close frame");
        assert_eq!(first, 0x88);
        assert_eq!(
            u16::from_be_bytes([payload[0], payload[1]]),
            code,
            "{bytes:x?}"
        );
        assert!(payload.len() > 2, "a reason is given");
        assert_eq!(raw_next(&mut s).await, None);
    }
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
    let bad =
        serde_json::value::RawValue::from_string(r#"["logs",{"address":"0x12"}]"#.into()).unwrap();
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
    // Other kinds are relayed from an upstream's WebSocket: none has a ws_url here.
    let other = serde_json::value::RawValue::from_string(r#"["syncing"]"#.into()).unwrap();
    let e = proxy
        .detour
        .subscribe("mainnet", &other)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code, -32000);
    assert!(e.message.contains("ws_url"), "{}", e.message);
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

/// The block numbers and hashes of `newHeads` notifications.
fn numbered(v: &[Value]) -> Vec<(u64, String)> {
    v.iter()
        .map(|h| {
            let n = u64::from_str_radix(h["number"].as_str().unwrap().trim_start_matches("0x"), 16)
                .unwrap();
            (n, h["hash"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// How the chain is followed now, from `/status`: `Some(upstream)` over its WebSocket,
/// `None` by polling.
fn head_source(proxy: &Proxy) -> Option<String> {
    let status = proxy.detour.status();
    let source = &status["chains"][0]["filters"]["source"];
    match source["via"].as_str() {
        Some("websocket") => Some(source["upstream"].as_str().unwrap().to_owned()),
        Some("polling") => None,
        _ => panic!("no source in {status}"),
    }
}

/// Waits up to 10 s for the chain to be followed over some upstream's WebSocket; its index.
async fn some_source(proxy: &Proxy) -> usize {
    for _ in 0..200 {
        if let Some(up) = head_source(proxy) {
            return up.trim_start_matches('u').parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no WebSocket head source after 10 s");
}

/// Waits up to 10 s for the head source to become `want`.
async fn until_source(proxy: &Proxy, want: Option<&str>) {
    for _ in 0..200 {
        if head_source(proxy).as_deref() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the head source stayed {:?}, wanted {want:?}",
        head_source(proxy)
    );
}

fn metric(proxy: &Proxy, prefix: &str) -> u64 {
    let metrics = proxy.detour.metrics();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn heads_come_over_one_upstream_websocket_however_many_subscribe() {
    let chain = SimChain::new(10, 2);
    let (a, b) = (
        SimUpstream::start_ws(&chain).await,
        SimUpstream::start_ws(&chain).await,
    );
    // Polls are 30 s apart: what arrives sooner came over the upstream WebSocket.
    let proxy = Proxy::start(&config("poll_interval = \"30s\"\n", &[&a, &b])).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&proxy, "/mainnet").await;
        let id = subscribe(&mut ws, json!(["newHeads"])).await;
        clients.push((ws, id));
    }
    let mut logs_ws = connect(&proxy, "/mainnet").await;
    let logs_id = subscribe(&mut logs_ws, json!(["logs", {"address": ADDRESS_A}])).await;
    let source = some_source(&proxy).await;
    assert_eq!(
        a.ws_subscribes() + b.ws_subscribes(),
        1,
        "one upstream subscription for every subscriber"
    );

    let canonical = |from: u64, to: u64| -> Vec<(u64, String)> {
        (from..=to).map(|n| (n, chain.hash_at(n))).collect()
    };
    // One block at a time, then three at once (the upstream announces only the last: the
    // tracker fills in the two it skipped).
    let started = std::time::Instant::now();
    for _ in 0..3 {
        chain.mine(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    chain.mine(3);
    for (ws, id) in &mut clients {
        assert_eq!(numbered(&notifications(ws, id, 6).await), canonical(11, 16));
    }
    let logs = notifications(&mut logs_ws, &logs_id, 6).await;
    let want: Vec<Value> = (11..=16).map(|n| chain.logs_at(n)[0].clone()).collect();
    assert_eq!(logs, want);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "heads came before any poll"
    );

    // A reorg of depth 3 announced over the WebSocket: the new branch from the fork point,
    // the dropped logs as removed.
    chain.reorg(3, 4);
    for (ws, id) in &mut clients {
        assert_eq!(numbered(&notifications(ws, id, 4).await), canonical(14, 17));
    }
    let mut want: Vec<Value> = (14..=16)
        .rev()
        .map(|n| removed(logs[(n - 11) as usize].clone()))
        .collect();
    want.extend((14..=17).map(|n| chain.logs_at(n)[0].clone()));
    assert_eq!(notifications(&mut logs_ws, &logs_id, 7).await, want);

    assert_eq!(a.ws_subscribes() + b.ws_subscribes(), 1);
    assert!(
        metric(
            &proxy,
            r#"detour_tracker_websocket_heads_total{chain="mainnet"} "#
        ) >= 3
    );
    assert_eq!(
        metric(
            &proxy,
            &format!(
                r#"detour_tracker_source{{chain="mainnet",via="websocket",upstream="u{source}"}} "#
            )
        ),
        1
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_failed_head_source_is_replaced_without_losing_a_height() {
    let chain = SimChain::new(10, 0);
    let (a, b) = (
        SimUpstream::start_ws(&chain).await,
        SimUpstream::start_ws(&chain).await,
    );
    let toml = config("poll_interval = \"100ms\"\n", &[&a, &b])
        + "[chains.mainnet.health]\nprobe_interval = \"100ms\"\nidle_probe_interval = \"100ms\"\n";
    let proxy = Proxy::start(&toml).await;
    let mut ws = connect(&proxy, "/mainnet").await;
    let id = subscribe(&mut ws, json!(["newHeads"])).await;
    let first = some_source(&proxy).await;
    let ups = [&a, &b];
    let (src, other) = (ups[first], ups[1 - first]);
    let (src_name, other_name) = (format!("u{first}"), format!("u{}", 1 - first));
    let mut next_height = 11;
    let mut expect = async |ws: &mut Ws, chain: &SimChain, n: usize| {
        let got = numbered(&notifications(ws, &id, n).await);
        let want: Vec<_> = (next_height..next_height + n as u64)
            .map(|h| (h, chain.hash_at(h)))
            .collect();
        assert_eq!(got, want);
        next_height += n as u64;
    };
    chain.mine(2);
    expect(&mut ws, &chain, 2).await;

    // The source's WebSocket drops and refuses to come back, with blocks mined meanwhile:
    // the other upstream takes over, and every height arrives once.
    src.drop_ws(true);
    chain.mine(3);
    expect(&mut ws, &chain, 3).await;
    until_source(&proxy, Some(&other_name)).await;
    chain.mine(1);
    expect(&mut ws, &chain, 1).await;

    // The new source goes silent while the chain moves on: polls fill the heights in, and
    // after three of them the source is given up as lagging (for the first, which is back).
    src.drop_ws(false);
    other.set_ws_stalled(true);
    for _ in 0..6 {
        chain.mine(1);
        expect(&mut ws, &chain, 1).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    until_source(&proxy, Some(&src_name)).await;

    // An operator cordons the source: it is given up at once.
    assert!(proxy.detour.cordon("mainnet", &src_name, true));
    until_source(&proxy, Some(&other_name)).await;
    assert!(proxy.detour.cordon("mainnet", &src_name, false));
    chain.mine(1);
    expect(&mut ws, &chain, 1).await;

    // No WebSocket upstream at all: polling over HTTP, then back to a WebSocket.
    src.drop_ws(true);
    other.drop_ws(true);
    until_source(&proxy, None).await;
    chain.mine(2);
    expect(&mut ws, &chain, 2).await;
    other.set_ws_stalled(false);
    other.drop_ws(false);
    until_source(&proxy, Some(&other_name)).await;
    chain.mine(1);
    expect(&mut ws, &chain, 1).await;
    assert!(
        metric(
            &proxy,
            r#"detour_tracker_source_changes_total{chain="mainnet"} "#
        ) >= 4
    );
    proxy.stop().await;
}

#[tokio::test]
async fn the_head_source_moves_back_to_a_better_tier_when_it_is_usable_again() {
    let chain = SimChain::new(10, 0);
    let (a, b) = (
        SimUpstream::start_ws(&chain).await,
        SimUpstream::start_ws(&chain).await,
    );
    // u0 is tier 0, u1 tier 1; u0 is cordoned at first, so heads come over u1.
    let toml = config("poll_interval = \"100ms\"\n", &[&a, &b])
        .replace("name = \"u1\"\n", "name = \"u1\"\ntier = 1\n");
    let proxy = Proxy::start(&toml).await;
    assert!(proxy.detour.cordon("mainnet", "u0", true));
    let mut ws = connect(&proxy, "/mainnet").await;
    let id = subscribe(&mut ws, json!(["newHeads"])).await;
    until_source(&proxy, Some("u1")).await;
    let subscribed = std::time::Instant::now();

    // u0 is usable again: once the source has been kept its minimum time, it moves back, and
    // every height mined through the move arrives once, in order.
    assert!(proxy.detour.cordon("mainnet", "u0", false));
    let mut next = 11;
    while head_source(&proxy).as_deref() != Some("u0") {
        assert!(
            subscribed.elapsed() < Duration::from_secs(30),
            "the head source stayed on the tier-1 upstream"
        );
        chain.mine(1);
        let got = numbered(&notifications(&mut ws, &id, 1).await);
        assert_eq!(got, [(next, chain.hash_at(next))]);
        next += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        subscribed.elapsed() >= Duration::from_secs(9),
        "not before the source was kept a while"
    );
    chain.mine(2);
    let got = numbered(&notifications(&mut ws, &id, 2).await);
    assert_eq!(
        got,
        [
            (next, chain.hash_at(next)),
            (next + 1, chain.hash_at(next + 1))
        ]
    );
    assert_eq!(a.ws_subscribes(), 1, "one subscription on the better tier");
    proxy.stop().await;
}

/// Drops the WebSocket of whichever of `a` and `b` serves the relayed subscription, refusing
/// it from then on, and waits until the other serves it; returns the other.
async fn move_relay<'a>(a: &'a SimUpstream, b: &'a SimUpstream) -> &'a SimUpstream {
    let (src, other) = if a.pending_subscribes() == 1 {
        (a, b)
    } else {
        (b, a)
    };
    src.drop_ws(true);
    support::eventually("the relay moved to the other upstream", || {
        other.pending_subscribes() == 1
    })
    .await;
    other
}

#[tokio::test]
async fn other_kinds_are_relayed_from_one_upstream_websocket_and_move_when_it_fails() {
    let chain = SimChain::new(10, 0);
    let (a, b) = (
        SimUpstream::start_ws(&chain).await,
        SimUpstream::start_ws(&chain).await,
    );
    let proxy = Proxy::start(&config("", &[&a, &b])).await;
    let pending = json!(["newPendingTransactions"]);
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut ws = connect(&proxy, "/mainnet").await;
        let id = subscribe(&mut ws, pending.clone()).await;
        clients.push((ws, id));
    }
    // In process too (Detour::subscribe), sharing the same upstream subscription.
    let raw = serde_json::value::RawValue::from_string(pending.to_string()).unwrap();
    let mut stream = proxy.detour.subscribe("mainnet", &raw).await.unwrap();
    // One upstream subscription for both clients and the stream.
    assert_eq!(a.pending_subscribes() + b.pending_subscribes(), 1);
    assert_eq!(metric(&proxy, "detour_websocket_relayed_subscriptions "), 1);
    let hashes = |from: u64, to: u64| -> Vec<Value> {
        (from..=to)
            .map(|n| json!(SimUpstream::pending_hash(n)))
            .collect()
    };
    chain.mine(2);
    for (ws, id) in &mut clients {
        assert_eq!(notifications(ws, id, 2).await, hashes(11, 12));
    }
    for want in hashes(11, 12) {
        let got = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a notification within 10 s")
            .expect("the stream goes on")
            .expect("a result");
        assert_eq!(serde_json::from_str::<Value>(got.get()).unwrap(), want);
    }
    drop(stream);

    // Its upstream's WebSocket drops and stays away: the subscription is made again on the
    // other, and notifications go on under the same ids.
    let other = move_relay(&a, &b).await;
    chain.mine(2);
    for (ws, id) in &mut clients {
        assert_eq!(notifications(ws, id, 2).await, hashes(13, 14));
    }

    // An upstream's error is the client's answer, as the upstream gave it.
    let (ws, _) = &mut clients[0];
    let v = call(ws, 8, "eth_subscribe", json!(["bogusKind"])).await;
    assert_eq!(v["error"]["code"], -32601, "{v}");
    assert_eq!(
        v["error"]["message"], "not served over this mock's WebSocket",
        "{v}"
    );
    let bogus = serde_json::value::RawValue::from_string(r#"["bogusKind"]"#.into()).unwrap();
    match proxy.detour.subscribe("mainnet", &bogus).await {
        Err(e) => assert_eq!(
            (e.code, e.message.as_str()),
            (-32601, "not served over this mock's WebSocket")
        ),
        Ok(_) => panic!("an upstream's refusal is the call's error"),
    }

    // The last client to leave closes the upstream subscription.
    let (ws, id) = &mut clients[0];
    let id0 = id.clone();
    assert_eq!(
        call(ws, 9, "eth_unsubscribe", json!([id0])).await["result"],
        true
    );
    chain.mine(1);
    let (ws, id) = &mut clients[1];
    assert_eq!(notifications(ws, id, 1).await, hashes(15, 15));
    let id1 = id.clone();
    assert_eq!(
        call(ws, 10, "eth_unsubscribe", json!([id1])).await["result"],
        true
    );
    support::eventually("the upstream subscription is closed", || {
        other.ws_open() == 0
    })
    .await;
    assert_eq!(metric(&proxy, "detour_websocket_relayed_subscriptions "), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn pending_transaction_filters_are_kept_by_detour_over_the_relay() {
    let chain = SimChain::new(10, 0);
    let (a, b) = (
        SimUpstream::start_ws(&chain).await,
        SimUpstream::start_ws(&chain).await,
    );
    let proxy = Proxy::start(&config("", &[&a, &b])).await;
    let changes = |id: &str| {
        let (proxy, id) = (&proxy, id.to_owned());
        async move {
            let v = proxy
                .call("/mainnet", "eth_getFilterChanges", &json!([id]).to_string())
                .await;
            v["result"]
                .as_array()
                .unwrap_or_else(|| panic!("{v}"))
                .clone()
        }
    };
    let hashes = |from: u64, to: u64| -> Vec<Value> {
        (from..=to)
            .map(|n| json!(SimUpstream::pending_hash(n)))
            .collect()
    };
    let v = proxy
        .call("/mainnet", "eth_newPendingTransactionFilter", "[]")
        .await;
    let id = v["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned();
    assert_ne!(
        id, "0x00000000000000000000000000000abc",
        "not an upstream's"
    );
    assert_eq!(a.pending_subscribes() + b.pending_subscribes(), 1);
    assert!(changes(&id).await.is_empty());
    chain.mine(2);
    let polled = |id: String| {
        let changes = &changes;
        async move {
            let (mut got, start) = (Vec::new(), std::time::Instant::now());
            while got.len() < 2 && start.elapsed() < std::time::Duration::from_secs(10) {
                got.extend(changes(&id).await);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            got
        }
    };
    assert_eq!(polled(id.clone()).await, hashes(11, 12));

    // The upstream's WebSocket drops: the filter goes on from the other one, same id.
    let other = move_relay(&a, &b).await;
    chain.mine(2);
    assert_eq!(polled(id.clone()).await, hashes(13, 14));
    // As geth: no logs for it; bad params are refused; uninstalled, it is gone, and so is the
    // upstream subscription.
    let v = proxy
        .call("/mainnet", "eth_getFilterLogs", &json!([id]).to_string())
        .await;
    assert_eq!(v["error"]["message"], "filter not found", "{v}");
    let v = proxy
        .call("/mainnet", "eth_newPendingTransactionFilter", "[1]")
        .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let v = proxy
        .call("/mainnet", "eth_uninstallFilter", &json!([id]).to_string())
        .await;
    assert_eq!(v["result"], true, "{v}");
    support::eventually("the upstream subscription is closed", || {
        other.ws_open() == 0
    })
    .await;
    proxy.stop().await;

    // Without a WebSocket upstream the filter is made on an upstream, as before.
    let http_only = SimUpstream::start(&chain).await;
    let proxy = Proxy::start(&config("", &[&http_only])).await;
    let v = proxy
        .call("/mainnet", "eth_newPendingTransactionFilter", "[]")
        .await;
    assert_eq!(v["result"], "0x00000000000000000000000000000abc", "{v}");
    proxy.stop().await;
}
