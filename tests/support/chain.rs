//! A simulated chain served by in-process mock upstreams: blocks by number and by hash, logs
//! by block hash or range, health probes, and the faults a follower must survive (an upstream
//! down, one lagging behind, a reorg). Several upstreams share one chain, each seeing it up to
//! its own lag. An upstream started with [`SimUpstream::start_ws`] also serves `newHeads` over
//! WebSocket (on a port of its own, given as its `ws_url`) and can drop, stall or refuse it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The contract most logs come from.
pub const ADDRESS_A: &str = "0x00000000000000000000000000000000000000aa";
/// The contract of every other log.
pub const ADDRESS_B: &str = "0x00000000000000000000000000000000000000bb";
/// Every log's first topic.
pub const TOPIC: &str = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";

#[derive(Clone, Debug)]
struct SimBlock {
    hash: String,
    parent: String,
    logs: usize,
}

#[derive(Debug)]
struct ChainState {
    blocks: Vec<SimBlock>,
    /// Bumped by each reorg, so a new branch's hashes differ from the old one's.
    branch: u64,
    logs_per_block: usize,
}

/// One chain, shared by the upstreams that serve it.
#[derive(Clone, Debug)]
pub struct SimChain(Arc<Mutex<ChainState>>);

fn hash(branch: u64, number: u64) -> String {
    format!(
        "0x{:016x}{:048x}",
        branch + 1,
        number.wrapping_mul(0x9e37_79b9) ^ 0x5eed
    )
}

impl SimChain {
    /// A chain at height `height`, `logs_per_block` logs in each block from 1 on.
    pub fn new(height: u64, logs_per_block: usize) -> SimChain {
        let chain = SimChain(Arc::new(Mutex::new(ChainState {
            blocks: vec![SimBlock {
                hash: hash(0, 0),
                parent: format!("0x{:064x}", 0),
                logs: 0,
            }],
            branch: 0,
            logs_per_block,
        })));
        chain.mine(height as usize);
        chain
    }

    /// Adds `n` blocks.
    pub fn mine(&self, n: usize) {
        let mut s = self.0.lock().unwrap();
        for _ in 0..n {
            let number = s.blocks.len() as u64;
            let parent = s.blocks.last().unwrap().hash.clone();
            let block = SimBlock {
                hash: hash(s.branch, number),
                parent,
                logs: s.logs_per_block,
            };
            s.blocks.push(block);
        }
    }

    /// Replaces the last `depth` blocks with a new branch of `len` blocks.
    pub fn reorg(&self, depth: usize, len: usize) {
        {
            let mut s = self.0.lock().unwrap();
            let keep = s.blocks.len() - depth;
            s.blocks.truncate(keep);
            s.branch += 1;
        }
        self.mine(len);
    }

    /// The height of the head.
    pub fn height(&self) -> u64 {
        self.0.lock().unwrap().blocks.len() as u64 - 1
    }

    /// The hash of the canonical block at `number`.
    pub fn hash_at(&self, number: u64) -> String {
        self.0.lock().unwrap().blocks[number as usize].hash.clone()
    }

    /// The logs of the canonical block at `number`, as upstreams return them.
    pub fn logs_at(&self, number: u64) -> Vec<Value> {
        let s = self.0.lock().unwrap();
        logs_of(&s.blocks[number as usize], number)
    }

    fn block_json(b: &SimBlock, number: u64) -> Value {
        json!({
            "number": format!("0x{number:x}"),
            "hash": b.hash,
            "parentHash": b.parent,
            "timestamp": format!("0x{:x}", 1_700_000_000 + number * 12),
            // Not a real bloom: non-zero exactly when the block has logs.
            "logsBloom": format!("0x{}{}", "0".repeat(511), u8::from(b.logs > 0)),
            "gasUsed": "0x0",
            "transactions": [],
        })
    }
}

fn logs_of(b: &SimBlock, number: u64) -> Vec<Value> {
    (0..b.logs)
        .map(|i| {
            json!({
                "address": if i % 2 == 0 { ADDRESS_A } else { ADDRESS_B },
                "topics": [TOPIC, format!("0x{number:064x}")],
                "data": format!("0x{i:064x}"),
                "blockNumber": format!("0x{number:x}"),
                "blockHash": b.hash,
                "transactionHash": format!("0x{:062x}{i:02x}", number),
                "transactionIndex": format!("0x{i:x}"),
                "logIndex": format!("0x{i:x}"),
                "removed": false,
            })
        })
        .collect()
}

/// detour's configuration for chain "mainnet" (id 1) served by `upstreams` (named u0, u1, …),
/// with the tracker polling every 50 ms (unless `extra` says otherwise) and `extra` TOML before
/// the chain. Upstreams serving WebSocket get their `ws_url`.
pub fn sim_config(extra: &str, upstreams: &[&SimUpstream]) -> String {
    // `extra` may set the poll interval itself (it follows `[tracker]`).
    let poll = if extra.contains("poll_interval") {
        ""
    } else {
        "poll_interval = \"50ms\"\n"
    };
    let mut toml = format!(
        "[client]\nattempt_timeout = \"1s\"\nconnect_timeout = \"1s\"\n[tracker]\n{poll}{extra}\n[chains.mainnet]\nchain_id = 1\n"
    );
    for (i, u) in upstreams.iter().enumerate() {
        toml += &format!(
            "[[chains.mainnet.upstreams]]\nname = \"u{i}\"\nurl = \"{}\"\n",
            u.url()
        );
        if let Some(ws) = u.ws_url() {
            toml += &format!("ws_url = \"{ws}\"\n");
        }
    }
    toml
}

/// A log as a reorg reports it again: `"removed": true`.
pub fn removed(mut log: Value) -> Value {
    log["removed"] = json!(true);
    log
}

#[derive(Debug, Default)]
struct View {
    /// Blocks behind the chain's head this upstream is.
    lag: u64,
    /// Answers everything with HTTP 503.
    down: bool,
    /// Methods called (probes excluded).
    methods: Vec<String>,
    /// WebSocket: `eth_subscribe("newHeads")` calls answered.
    ws_subscribes: usize,
    /// WebSocket: `eth_subscribe("newPendingTransactions")` calls answered.
    pending_subscribes: usize,
    /// WebSocket: connections open now.
    ws_open: usize,
    /// WebSocket: sends no notifications (the connection stays up and answers pings).
    ws_stalled: bool,
    /// WebSocket: refuses handshakes.
    ws_refused: bool,
    /// WebSocket: bumped to close every open connection.
    ws_generation: u64,
    /// `eth_getLogs` ranges wider than this many blocks are refused with this message.
    logs_limit: Option<(u64, String)>,
    /// The block ranges of the `eth_getLogs` range queries answered.
    logs_ranges: Vec<(u64, u64)>,
}

/// One upstream serving a [`SimChain`].
pub struct SimUpstream {
    pub addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
    view: Arc<Mutex<View>>,
    _stop: oneshot::Sender<()>,
    _ws_task: Option<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SimUpstream {
    /// Serves `chain` (chain id 1) on 127.0.0.1:0.
    pub async fn start(chain: &SimChain) -> SimUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let view = Arc::new(Mutex::new(View::default()));
        let (chain, v) = (chain.clone(), view.clone());
        let stop = super::serve_http1(listener, move |req| handle(chain.clone(), v.clone(), req));
        SimUpstream {
            addr,
            ws_addr: None,
            view,
            _stop: stop,
            _ws_task: None,
        }
    }

    /// Like [`SimUpstream::start`], also serving `newHeads` over WebSocket: each connection
    /// sends the head it sees (lag applied) whenever it changes, so a node that mines several
    /// blocks between two looks skips heights, as real nodes do under load.
    pub async fn start_ws(chain: &SimChain) -> SimUpstream {
        let mut up = SimUpstream::start(chain).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        up.ws_addr = Some(listener.local_addr().unwrap());
        let (chain, view) = (chain.clone(), up.view.clone());
        up._ws_task = Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_ws(chain.clone(), view.clone(), stream));
            }
        })));
        up
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `ws_url` of an upstream started with [`SimUpstream::start_ws`].
    pub fn ws_url(&self) -> Option<String> {
        self.ws_addr.map(|a| format!("ws://{a}"))
    }

    /// `eth_subscribe("newHeads")` calls this upstream answered over WebSocket.
    pub fn ws_subscribes(&self) -> usize {
        self.view.lock().unwrap().ws_subscribes
    }

    /// `eth_subscribe("newPendingTransactions")` calls this upstream answered.
    pub fn pending_subscribes(&self) -> usize {
        self.view.lock().unwrap().pending_subscribes
    }

    /// The "pending transaction" hash this mock announces for each new height it sees.
    pub fn pending_hash(height: u64) -> String {
        format!("0x{height:064x}")
    }

    /// WebSocket connections open now.
    pub fn ws_open(&self) -> usize {
        self.view.lock().unwrap().ws_open
    }

    /// Stops (`true`) or resumes sending notifications, the connections staying up.
    pub fn set_ws_stalled(&self, stalled: bool) {
        self.view.lock().unwrap().ws_stalled = stalled;
    }

    /// Closes every open WebSocket connection; with `refuse`, handshakes fail until
    /// called again with `false`.
    pub fn drop_ws(&self, refuse: bool) {
        let mut v = self.view.lock().unwrap();
        v.ws_generation += 1;
        v.ws_refused = refuse;
    }

    /// Sees the chain `lag` blocks behind its head.
    pub fn set_lag(&self, lag: u64) {
        self.view.lock().unwrap().lag = lag;
    }

    /// Answers everything with 503 (`true`) or serves again.
    pub fn set_down(&self, down: bool) {
        self.view.lock().unwrap().down = down;
    }

    /// Refuses `eth_getLogs` ranges wider than `blocks` with `message` (`None`: no limit).
    pub fn set_logs_limit(&self, limit: Option<(u64, &str)>) {
        self.view.lock().unwrap().logs_limit = limit.map(|(n, m)| (n, m.to_owned()));
    }

    /// The block ranges of the `eth_getLogs` range queries answered (refused ones included).
    pub fn logs_ranges(&self) -> Vec<(u64, u64)> {
        self.view.lock().unwrap().logs_ranges.clone()
    }

    /// Methods called so far (health probes excluded).
    pub fn methods(&self) -> Vec<String> {
        self.view.lock().unwrap().methods.clone()
    }
}

async fn handle(
    chain: SimChain,
    view: Arc<Mutex<View>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let probe = req.headers().contains_key("x-detour-probe");
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (down, lag, logs_limit) = {
        let mut v = view.lock().unwrap();
        if !probe {
            let calls = match &parsed {
                Value::Array(list) => list.clone(),
                one => vec![one.clone()],
            };
            for c in calls {
                v.methods
                    .push(c["method"].as_str().unwrap_or_default().to_owned());
            }
        }
        (v.down, v.lag, v.logs_limit.clone())
    };
    if down {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"down")));
        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        return Ok(resp);
    }
    let answer = |call: &Value| -> Value {
        let s = chain.0.lock().unwrap();
        let visible = (s.blocks.len() as u64 - 1).saturating_sub(lag);
        let params = &call["params"];
        let at = |n: u64| -> Value {
            if n > visible {
                return Value::Null;
            }
            SimChain::block_json(&s.blocks[n as usize], n)
        };
        let by_tag = |p: &Value| -> Option<u64> {
            match p.as_str()? {
                "latest" | "pending" => Some(visible),
                // As anvil has them: finalized 64 blocks down, safe 32.
                "finalized" => Some(visible.saturating_sub(64)),
                "safe" => Some(visible.saturating_sub(32)),
                "earliest" => Some(0),
                q => u64::from_str_radix(q.trim_start_matches("0x"), 16).ok(),
            }
        };
        let result = match call["method"].as_str().unwrap_or_default() {
            "eth_chainId" => json!("0x1"),
            "eth_blockNumber" => json!(format!("0x{visible:x}")),
            "eth_getBlockByNumber" => by_tag(&params[0]).map_or(Value::Null, at),
            "eth_getBlockByHash" => {
                let want = params[0].as_str().unwrap_or_default().to_ascii_lowercase();
                s.blocks
                    .iter()
                    .enumerate()
                    .take(visible as usize + 1)
                    .find(|(_, b)| b.hash == want)
                    .map_or(Value::Null, |(n, b)| SimChain::block_json(b, n as u64))
            }
            "eth_getLogs" => {
                let q = &params[0];
                let mut out = Vec::new();
                if let Some(h) = q["blockHash"].as_str() {
                    let h = h.to_ascii_lowercase();
                    match s.blocks.iter().enumerate().find(|(_, b)| b.hash == h) {
                        Some((n, b)) => out = logs_of(b, n as u64),
                        None => {
                            return json!({"jsonrpc":"2.0","id":call["id"],
                                "error":{"code":-32000,"message":"unknown block"}})
                        }
                    }
                } else {
                    let from = by_tag(&q["fromBlock"]).unwrap_or(visible);
                    let to = by_tag(&q["toBlock"]).unwrap_or(visible).min(visible);
                    view.lock().unwrap().logs_ranges.push((from, to));
                    if let Some((n, message)) = &logs_limit {
                        if to >= from && to - from + 1 > *n {
                            return json!({"jsonrpc":"2.0","id":call["id"],
                                "error":{"code":-32005,"message":message}});
                        }
                    }
                    for n in from..=to {
                        out.extend(logs_of(&s.blocks[n as usize], n));
                    }
                }
                let address = q["address"].as_str().map(str::to_ascii_lowercase);
                Value::Array(
                    out.into_iter()
                        .filter(|l| address.as_deref().is_none_or(|a| l["address"] == a))
                        .collect(),
                )
            }
            // A node that holds no filter: as geth answers.
            "eth_getFilterChanges" | "eth_getFilterLogs" => {
                return json!({"jsonrpc":"2.0","id":call["id"],
                    "error":{"code":-32000,"message":"filter not found"}})
            }
            "eth_uninstallFilter" => json!(false),
            "eth_newFilter" | "eth_newBlockFilter" | "eth_newPendingTransactionFilter" => {
                json!("0x00000000000000000000000000000abc")
            }
            m => {
                return json!({"jsonrpc":"2.0","id":call["id"],
                    "error":{"code":-32601,"message":format!("the method {m} does not exist")}})
            }
        };
        json!({"jsonrpc":"2.0","id":call["id"],"result":result})
    };
    let out = match &parsed {
        Value::Array(list) => Value::Array(list.iter().map(answer).collect()),
        one => answer(one),
    };
    let mut resp = Response::new(Full::new(Bytes::from(out.to_string())));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

async fn serve_ws(chain: SimChain, view: Arc<Mutex<View>>, stream: tokio::net::TcpStream) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (generation, refused) = {
        let v = view.lock().unwrap();
        (v.ws_generation, v.ws_refused)
    };
    if refused {
        return;
    }
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    view.lock().unwrap().ws_open += 1;
    let mut subscription: Option<String> = None;
    let mut sent: Option<String> = None;
    // newPendingTransactions: one made-up hash per new height, from the height at subscribe.
    let mut pending: Option<(String, u64)> = None;
    let visible = |lag: u64| (chain.height()).saturating_sub(lag);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    loop {
        tokio::select! {
            m = ws.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let call: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let answer = if call["method"] == "eth_subscribe" && call["params"] == json!(["newHeads"]) {
                    let id = format!("0x{:032x}", view.lock().unwrap().ws_subscribes + 0xfeed);
                    view.lock().unwrap().ws_subscribes += 1;
                    subscription = Some(id.clone());
                    json!({"jsonrpc":"2.0","id":call["id"],"result":id})
                } else if call["method"] == "eth_subscribe"
                    && call["params"] == json!(["newPendingTransactions"])
                {
                    let id = "0x000000000000000000000000000beef1".to_owned();
                    let lag = {
                        let mut v = view.lock().unwrap();
                        v.pending_subscribes += 1;
                        v.lag
                    };
                    pending = Some((id.clone(), visible(lag)));
                    json!({"jsonrpc":"2.0","id":call["id"],"result":id})
                } else {
                    json!({"jsonrpc":"2.0","id":call["id"],
                        "error":{"code":-32601,"message":"not served over this mock's WebSocket"}})
                };
                if ws.send(Message::text(answer.to_string())).await.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {
                let (gen, stalled, lag) = {
                    let v = view.lock().unwrap();
                    (v.ws_generation, v.ws_stalled, v.lag)
                };
                if gen != generation {
                    break;
                }
                if stalled {
                    continue;
                }
                if let Some((id, from)) = &mut pending {
                    let to = visible(lag);
                    while *from < to {
                        *from += 1;
                        let note = json!({"jsonrpc":"2.0","method":"eth_subscription",
                            "params":{"subscription":id,"result":SimUpstream::pending_hash(*from)}});
                        if ws.send(Message::text(note.to_string())).await.is_err() {
                            break;
                        }
                    }
                }
                let Some(id) = &subscription else { continue };
                let head = {
                    let s = chain.0.lock().unwrap();
                    let n = (s.blocks.len() as u64 - 1).saturating_sub(lag);
                    let mut h = SimChain::block_json(&s.blocks[n as usize], n);
                    h.as_object_mut().unwrap().remove("transactions");
                    h
                };
                let hash = head["hash"].as_str().unwrap().to_owned();
                if sent.as_deref() == Some(hash.as_str()) {
                    continue;
                }
                let note = json!({"jsonrpc":"2.0","method":"eth_subscription",
                    "params":{"subscription":id,"result":head}});
                if ws.send(Message::text(note.to_string())).await.is_err() {
                    break;
                }
                sent = Some(hash);
            }
        }
    }
    view.lock().unwrap().ws_open -= 1;
}
