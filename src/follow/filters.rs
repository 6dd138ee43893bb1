//! Filters kept in detour, on the chain tracker: `eth_newFilter`, `eth_newBlockFilter`,
//! `eth_newPendingTransactionFilter` (its hashes relayed from an upstream's WebSocket, see
//! [`super::relay`]), `eth_getFilterChanges`, `eth_getFilterLogs` and `eth_uninstallFilter`,
//! answered as geth answers them. A filter is detour's, not an upstream's: its id stays valid whichever upstream
//! serves the next poll, through failovers and reloads, and its changes are every block (or
//! matching log) once, in order, with logs of blocks a reorg dropped reported again with
//! `"removed": true`.
//!
//! A chain's tracker runs while the chain has filters: it polls the latest block every
//! `tracker.poll_interval`, and stops when the last filter is gone. A filter not polled for
//! `filters.timeout` (5 minutes, as geth) is removed; a client may hold `filters.max_per_client`
//! and all clients `filters.max_total`, and a filter beyond either is refused with a clear error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::heads::Feed;
use super::relay::{RelayError, Relayed, Relays};
use super::tracker::{Event, Log, Settings, Tracker};
use super::Source;
use crate::config::{FiltersConfig, TrackerConfig};
use crate::failover::retry::CallResult;
use crate::rpc::jsonrpc::{self, Raw, INVALID_PARAMS};

/// geth's code and message for an unknown (or expired) filter id.
const NOT_FOUND: (i64, &str) = (-32000, "filter not found");

/// The filter methods detour answers itself.
pub const METHODS: &[&str] = &[
    "eth_newFilter",
    "eth_newBlockFilter",
    "eth_newPendingTransactionFilter",
    "eth_getFilterChanges",
    "eth_getFilterLogs",
    "eth_uninstallFilter",
];

/// Every chain's tracker and every filter.
pub struct Registry {
    source: Arc<dyn Source>,
    chains: Mutex<HashMap<Arc<str>, Arc<Followed>>>,
    book: Mutex<Book>,
    /// Subscriptions of other kinds, relayed from upstreams' WebSockets.
    relays: Relays,
}

/// A followed chain's tracker, whether it is followed now, and its readers as (`filter` or
/// `subscription`, kind, count).
pub type Census = (Arc<Tracker>, bool, Vec<(&'static str, &'static str, usize)>);

/// Who reads the trackers: filters and subscriptions, under one lock, so that a chain's task
/// stops only when it has neither, and nothing joins a task that is stopping.
#[derive(Debug, Default)]
pub(super) struct Book {
    filters: HashMap<Box<str>, Filter>,
    /// Subscriptions, by a number of their own: their chain, kind and the event each reads
    /// next.
    pub(super) subs: HashMap<u64, (Arc<str>, &'static str, Arc<AtomicU64>)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("filters", &self.lock_book().filters.len())
            .finish_non_exhaustive()
    }
}

/// A chain being followed.
#[derive(Debug)]
struct Followed {
    tracker: Arc<Tracker>,
    /// Its task runs. Set and cleared under the filters' lock.
    running: AtomicBool,
    /// Held while a chain's first filter starts it.
    starting: tokio::sync::Mutex<()>,
    /// The response cache wants the chain followed until then (µs, as `now_us` counts).
    leased_until: AtomicU64,
    /// When the cache last started following the chain (µs, as `now_us` counts): one try a
    /// second at most.
    lease_started: AtomicU64,
}

#[derive(Debug)]
struct Filter {
    chain: Arc<str>,
    client: Arc<str>,
    kind: Kind,
    /// The tracker event to read from next.
    next: u64,
    last_poll: Instant,
}

#[derive(Debug)]
enum Kind {
    Blocks,
    Logs(Criteria),
    /// Pending transactions' hashes, relayed from one upstream's WebSocket
    /// `newPendingTransactions` (best effort, as the subscription).
    Pending(Relayed),
}

/// A log filter's criteria, as `eth_newFilter` was given them.
#[derive(Debug)]
pub struct Criteria {
    /// The criteria object, verbatim (for `eth_getFilterLogs`).
    raw: String,
    from: Option<u64>,
    to: Option<u64>,
    addresses: Vec<Box<str>>,
    /// Per position: any topic (`None`), or one of these.
    topics: Vec<Option<Vec<Box<str>>>>,
}

impl Criteria {
    /// Parses `eth_newFilter`'s criteria object; the error is the `-32602` message.
    pub fn parse(raw: &str) -> Result<Criteria, String> {
        let v: Value = serde_json::from_str(raw).map_err(|e| format!("invalid argument 0: {e}"))?;
        let Value::Object(o) = &v else {
            return Err("invalid argument 0: the filter criteria must be an object".into());
        };
        let bound = |key: &str| -> Result<Option<u64>, String> {
            match o.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => match s.as_str() {
                    "latest" | "pending" | "safe" | "finalized" => Ok(None),
                    "earliest" => Ok(Some(0)),
                    q => crate::method::block::parse_quantity(q)
                        .map(Some)
                        .ok_or_else(|| {
                            format!("invalid argument 0: {key} {q:?} is not a block number or tag")
                        }),
                },
                Some(_) => Err(format!(
                    "invalid argument 0: {key} must be a block number or tag"
                )),
            }
        };
        let (from, to) = (bound("fromBlock")?, bound("toBlock")?);
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return Err("invalid from and to block combination".into());
            }
        }
        let hex_of = |s: &str, bytes: usize, what: &str| -> Result<Box<str>, String> {
            let digits = s.strip_prefix("0x").unwrap_or("");
            if digits.len() != bytes * 2 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "invalid argument 0: {what} {s:?} is not {bytes} bytes of hex"
                ));
            }
            Ok(s.to_ascii_lowercase().into())
        };
        let addresses = match o.get("address") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(a)) => vec![hex_of(a, 20, "address")?],
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| match a {
                    Value::String(a) => hex_of(a, 20, "address"),
                    _ => Err("invalid argument 0: an address must be a string".into()),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err("invalid argument 0: address must be a string or an array".into())
            }
        };
        let topics = match o.get("topics") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(positions)) => {
                if positions.len() > 4 {
                    return Err("invalid argument 0: more than 4 topics".into());
                }
                positions
                    .iter()
                    .map(|p| match p {
                        Value::Null => Ok(None),
                        Value::String(t) => Ok(Some(vec![hex_of(t, 32, "topic")?])),
                        Value::Array(any) => {
                            let mut list = Vec::with_capacity(any.len());
                            for t in any {
                                match t {
                                    // A null among alternatives matches anything there.
                                    Value::Null => return Ok(None),
                                    Value::String(t) => list.push(hex_of(t, 32, "topic")?),
                                    _ => {
                                        return Err(
                                            "invalid argument 0: a topic must be a string".into()
                                        )
                                    }
                                }
                            }
                            Ok(if list.is_empty() { None } else { Some(list) })
                        }
                        _ => Err(
                            "invalid argument 0: a topic must be a string, an array or null".into(),
                        ),
                    })
                    .collect::<Result<_, String>>()?
            }
            Some(_) => return Err("invalid argument 0: topics must be an array".into()),
        };
        Ok(Criteria {
            raw: raw.to_owned(),
            from,
            to,
            addresses,
            topics,
        })
    }

    /// Whether a log of block `number` matches.
    pub(super) fn matches(&self, number: u64, log: &Log) -> bool {
        if self.from.is_some_and(|f| number < f) || self.to.is_some_and(|t| number > t) {
            return false;
        }
        if !self.addresses.is_empty() && !self.addresses.contains(&log.address) {
            return false;
        }
        self.topics.iter().enumerate().all(|(i, want)| match want {
            None => true,
            Some(any) => log.topics.get(i).is_some_and(|t| any.contains(t)),
        })
    }
}

/// A log object with `"removed": true` (the upstream's bytes otherwise).
pub(super) fn removed(raw: &str) -> String {
    if let Some(at) = raw.find("\"removed\":false") {
        let mut out = String::with_capacity(raw.len());
        out.push_str(&raw[..at]);
        out.push_str("\"removed\":true");
        out.push_str(&raw[at + "\"removed\":false".len()..]);
        return out;
    }
    match raw.rfind('}') {
        Some(end) if raw[..end].trim_end().ends_with('{') => "{\"removed\":true}".to_owned(),
        Some(end) => format!("{},\"removed\":true}}", raw[..end].trim_end()),
        None => raw.to_owned(),
    }
}

fn error(code: i64, message: &str) -> CallResult {
    CallResult::Error(Bytes::from(jsonrpc::error_object(code, message, None)))
}

fn result(json: String) -> CallResult {
    CallResult::Result(Bytes::from(json))
}

/// The one string argument of `eth_getFilterChanges` & co.
fn filter_id(params: Option<Raw<'_>>) -> Result<Box<str>, CallResult> {
    let args: Vec<Value> = params
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .ok_or_else(|| error(INVALID_PARAMS, "missing value for required argument 0"))?;
    match args.as_slice() {
        [Value::String(id)] => Ok(id.to_ascii_lowercase().into()),
        [_] => Err(error(
            INVALID_PARAMS,
            "invalid argument 0: the filter id must be a string",
        )),
        [] => Err(error(
            INVALID_PARAMS,
            "missing value for required argument 0",
        )),
        _ => Err(error(INVALID_PARAMS, "too many arguments, want at most 1")),
    }
}

/// A new filter id: 16 random bytes as hex, as geth's.
fn new_id() -> Box<str> {
    format!("0x{:032x}", fastrand::u128(..)).into()
}

impl Book {
    /// How many filters and subscriptions of each kind read `chain`'s tracker:
    /// (type, kind, count).
    fn readers(&self, chain: &str) -> [(&'static str, &'static str, usize); 5] {
        let (mut blocks, mut logs, mut pending) = (0, 0, 0);
        for f in self.filters.values().filter(|f| &*f.chain == chain) {
            match f.kind {
                Kind::Blocks => blocks += 1,
                Kind::Logs(_) => logs += 1,
                Kind::Pending(_) => pending += 1,
            }
        }
        let subs = |kind: &str| {
            self.subs
                .values()
                .filter(|(c, k, _)| &**c == chain && *k == kind)
                .count()
        };
        [
            ("filter", "blocks", blocks),
            ("filter", "logs", logs),
            ("filter", "pendingTransactions", pending),
            ("subscription", "newHeads", subs("newHeads")),
            ("subscription", "logs", subs("logs")),
        ]
    }
}

impl Registry {
    /// A registry that reads chains through `source`.
    pub fn new(source: Arc<dyn Source>) -> Arc<Registry> {
        Arc::new(Registry {
            source,
            chains: Mutex::default(),
            book: Mutex::default(),
            relays: Relays::default(),
        })
    }

    pub(super) fn lock_book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn followed(&self, chain: &str, settings: &TrackerConfig) -> Arc<Followed> {
        let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = chains.get(chain) {
            return f.clone();
        }
        let name: Arc<str> = chain.into();
        let followed = Arc::new(Followed {
            tracker: Arc::new(Tracker::new(name.clone(), tracker_settings(settings))),
            running: AtomicBool::new(false),
            starting: tokio::sync::Mutex::new(()),
            leased_until: AtomicU64::new(0),
            lease_started: AtomicU64::new(0),
        });
        chains.insert(name, followed.clone());
        followed
    }

    /// The tracker of `chain`, which tells `observer` (the response cache) of every change
    /// from now on, whoever has the chain followed.
    pub fn observe(
        &self,
        chain: &str,
        tracker_config: &TrackerConfig,
        observer: Weak<dyn super::tracker::Observer>,
    ) -> Arc<Tracker> {
        let followed = self.followed(chain, tracker_config);
        followed.tracker.set_observer(observer);
        followed.tracker.clone()
    }

    /// Keeps `chain` followed until `until_us` (µs, as `now_us` counts) at least, for the
    /// response cache; following starts in the background when the chain is not followed now
    /// (one try a second at most).
    pub fn lease(self: &Arc<Self>, chain: &str, tracker_config: &TrackerConfig, until_us: u64) {
        let followed = self.followed(chain, tracker_config);
        followed.leased_until.fetch_max(until_us, Relaxed);
        let now = crate::state::upstream::now_us();
        let last = followed.lease_started.load(Relaxed);
        if !followed.running.load(Relaxed)
            && (last == 0 || now.saturating_sub(last) >= 1_000_000)
            && followed
                .lease_started
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let registry = self.clone();
            let chain = chain.to_owned();
            let config = *tracker_config;
            tokio::spawn(async move {
                if let Err(why) = registry.join(&chain, &config, |_, _| ()).await {
                    tracing::debug!(chain, error = %why, "could not start following the chain for the cache");
                }
            });
        }
    }

    /// Subscribes to a kind detour does not build (`params`: `eth_subscribe`'s, `kind` the
    /// first of them) by relaying it from an upstream's WebSocket; see [`super::relay`].
    pub async fn relay(
        &self,
        chain: &str,
        kind: &str,
        params: &str,
    ) -> Result<Relayed, RelayError> {
        self.relays
            .subscribe(&self.source, chain, kind, params)
            .await
    }

    /// Upstream subscriptions relayed now.
    pub fn relays(&self) -> usize {
        self.relays.len()
    }

    /// The tracker of `chain`, if it is followed now (for tests and status).
    pub fn tracker(&self, chain: &str) -> Option<Arc<Tracker>> {
        let chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        chains
            .get(chain)
            .filter(|f| f.running.load(Relaxed))
            .map(|f| f.tracker.clone())
    }

    /// What `/status` shows of a chain's filters: how many are open, whether the chain is
    /// followed, and the head it followed to.
    pub fn describe(&self, chain: &str) -> Value {
        let [(_, _, blocks), (_, _, logs), (_, _, pending), (_, _, heads_subs), (_, _, logs_subs)] =
            self.lock_book().readers(chain);
        let followed = {
            let chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
            chains.get(chain).cloned()
        };
        let following = followed.as_ref().is_some_and(|f| f.running.load(Relaxed));
        let tracker = followed.filter(|_| following).map(|f| f.tracker.clone());
        let head = tracker
            .as_ref()
            .and_then(|t| t.head())
            .map(|b| serde_json::json!({"number": b.number, "hash": &*b.hash}));
        let source = tracker.as_ref().map(|t| match t.source() {
            Some(up) => serde_json::json!({"via": "websocket", "upstream": &*up}),
            None => serde_json::json!({"via": "polling"}),
        });
        serde_json::json!({
            "block_filters": blocks,
            "log_filters": logs,
            "pending_transaction_filters": pending,
            "subscriptions": {"newHeads": heads_subs, "logs": logs_subs},
            "following": following,
            "head": head,
            "source": source,
        })
    }

    /// Per followed chain: its tracker, whether it is followed now, and how many filters and
    /// subscriptions of each kind read it (for metrics).
    pub fn census(&self) -> Vec<Census> {
        let followed: Vec<Arc<Followed>> = {
            let chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
            chains.values().cloned().collect()
        };
        let book = self.lock_book();
        followed
            .into_iter()
            .map(|f| {
                let readers = book.readers(&f.tracker.chain).to_vec();
                (f.tracker.clone(), f.running.load(Relaxed), readers)
            })
            .collect()
    }

    /// Filters open now.
    pub fn len(&self) -> usize {
        self.lock_book().filters.len()
    }

    /// Whether no filter is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers one filter call (`method` is one of [`METHODS`]) for `client` on `chain`.
    /// `None`: the id is not one of detour's filters (an upstream's, such as a pending
    /// transactions filter): the call goes to an upstream as it is.
    pub async fn answer(
        self: &Arc<Self>,
        chain: &str,
        client: &str,
        method: &str,
        params: Option<Raw<'_>>,
    ) -> Option<CallResult> {
        let Some((tracker_config, filters_config)) = self.source.settings() else {
            return Some(error(jsonrpc::INTERNAL_ERROR, "detour is shutting down"));
        };
        Some(match method {
            "eth_newFilter" => {
                let args: Option<Vec<&serde_json::value::RawValue>> =
                    params.and_then(|p| serde_json::from_str(p.get()).ok());
                let criteria = match args.as_deref() {
                    Some([c]) => Criteria::parse(c.get()),
                    Some([]) | None => Err("missing value for required argument 0".into()),
                    Some(_) => Err("too many arguments, want at most 1".into()),
                };
                match criteria {
                    Ok(c) => {
                        self.install(
                            chain,
                            client,
                            Kind::Logs(c),
                            &tracker_config,
                            &filters_config,
                        )
                        .await
                    }
                    Err(why) => error(INVALID_PARAMS, &why),
                }
            }
            "eth_newBlockFilter" => match params.map(|p| p.get().trim()) {
                None | Some("[]") => {
                    self.install(
                        chain,
                        client,
                        Kind::Blocks,
                        &tracker_config,
                        &filters_config,
                    )
                    .await
                }
                Some(_) => error(INVALID_PARAMS, "too many arguments, want at most 0"),
            },
            "eth_newPendingTransactionFilter" => match params.map(|p| p.get().trim()) {
                None | Some("[]") => {
                    const PARAMS: &str = r#"["newPendingTransactions"]"#;
                    match self.relay(chain, "newPendingTransactions", PARAMS).await {
                        Ok(relayed) => {
                            self.install(
                                chain,
                                client,
                                Kind::Pending(relayed),
                                &tracker_config,
                                &filters_config,
                            )
                            .await
                        }
                        Err(RelayError::Upstream(e)) => CallResult::Error(Bytes::from(e)),
                        // No upstream WebSocket: the filter is made on an upstream over HTTP,
                        // as without emulation (its polls follow it there while it lasts).
                        Err(RelayError::Unavailable(_)) => return None,
                    }
                }
                Some(_) => error(INVALID_PARAMS, "too many arguments, want at most 0"),
            },
            "eth_getFilterChanges" => match filter_id(params) {
                Ok(id) => self.changes(chain, &id)?,
                Err(e) => e,
            },
            "eth_getFilterLogs" => match filter_id(params) {
                Ok(id) => self.logs(chain, &id).await?,
                Err(e) => e,
            },
            "eth_uninstallFilter" => match filter_id(params) {
                Ok(id) => self.uninstall(chain, &id)?,
                Err(e) => e,
            },
            _ => error(jsonrpc::METHOD_NOT_FOUND, "not a filter method"),
        })
    }

    async fn install(
        self: &Arc<Self>,
        chain: &str,
        client: &str,
        kind: Kind,
        tracker_config: &TrackerConfig,
        limits: &FiltersConfig,
    ) -> CallResult {
        {
            let book = self.lock_book();
            if book.filters.len() >= limits.max_total {
                return error(
                    -32000,
                    &format!(
                        "too many filters open ({}; filters.max_total): uninstall some, or let them expire",
                        limits.max_total
                    ),
                );
            }
            let mine = book
                .filters
                .values()
                .filter(|f| &*f.client == client)
                .count();
            if mine >= limits.max_per_client {
                return error(
                    -32000,
                    &format!(
                        "this client has {mine} filters open (filters.max_per_client); uninstall some, or let them expire"
                    ),
                );
            }
        }
        let id = new_id();
        let added = self
            .join(chain, tracker_config, |book, tracker| {
                let next = match kind {
                    Kind::Logs(_) => tracker.join_logs(),
                    Kind::Blocks | Kind::Pending(_) => tracker.next_seq(),
                };
                book.filters.insert(
                    id.clone(),
                    Filter {
                        chain: tracker.chain.clone(),
                        client: client.into(),
                        kind,
                        next,
                        last_poll: Instant::now(),
                    },
                );
            })
            .await;
        match added {
            Ok(()) => result(format!("\"{id}\"")),
            Err(why) => error(
                -32000,
                &format!("could not read the chain head to start the filter: {why}"),
            ),
        }
    }

    /// Adds a reader of `chain`'s tracker with `add` (under the book's lock), starting the
    /// chain's task first when it is not running: a first round then sets where readers start.
    pub(super) async fn join<T>(
        self: &Arc<Self>,
        chain: &str,
        tracker_config: &TrackerConfig,
        add: impl FnOnce(&mut Book, &Arc<Tracker>) -> T,
    ) -> Result<T, String> {
        let followed = self.followed(chain, tracker_config);
        // Starts are one at a time per chain; the task stops, and readers join a running one,
        // under the book's lock, so a reader never joins a task that is stopping.
        let _start = followed.starting.lock().await;
        if !followed.running.load(Relaxed) {
            followed.tracker.reset();
            followed.tracker.round(&*self.source).await?;
            followed.tracker.checked();
        }
        let mut book = self.lock_book();
        let added = add(&mut book, &followed.tracker);
        if !followed.running.swap(true, Relaxed) {
            tokio::spawn(follow(Arc::downgrade(self), followed.clone()));
        }
        drop(book);
        Ok(added)
    }

    fn changes(&self, chain: &str, id: &str) -> Option<CallResult> {
        let tracker = {
            let chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
            chains.get(chain).map(|f| f.tracker.clone())
        };
        let mut book = self.lock_book();
        let (Some(tracker), Some(filter)) = (tracker, book.filters.get_mut(id)) else {
            return None;
        };
        if &*filter.chain != chain {
            return None;
        }
        filter.last_poll = Instant::now();
        let (events, next, lost) = tracker.read(filter.next);
        filter.next = next;
        if lost > 0 && !matches!(filter.kind, Kind::Pending(_)) {
            tracing::warn!(
                chain,
                lost,
                "a filter fell more than tracker.max_events behind: some of its changes are lost"
            );
        }
        let mut out = String::from("[");
        let mut push = |item: &str| {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(item);
        };
        if let Kind::Pending(relayed) = &mut filter.kind {
            // It reads the tracker only to keep it going; its changes are the relay's.
            let (hashes, missed) = relayed.drain();
            if missed > 0 {
                tracing::debug!(
                    chain,
                    missed,
                    "a pending transactions filter was polled too rarely: hashes skipped"
                );
            }
            for hash in &hashes {
                push(hash);
            }
        }
        for event in &events {
            match (&filter.kind, event) {
                (Kind::Pending(_), _) => {}
                (Kind::Blocks, Event::Added(b)) => push(&format!("\"{}\"", b.hash)),
                (Kind::Blocks, Event::Removed(_)) => {}
                (Kind::Logs(c), Event::Added(b)) => {
                    for log in b.logs.iter().flatten().filter(|l| c.matches(b.number, l)) {
                        push(log.raw.get());
                    }
                }
                (Kind::Logs(c), Event::Removed(b)) => {
                    for log in b.logs.iter().flatten().filter(|l| c.matches(b.number, l)) {
                        push(&removed(log.raw.get()));
                    }
                }
            }
        }
        out.push(']');
        Some(result(out))
    }

    async fn logs(&self, chain: &str, id: &str) -> Option<CallResult> {
        let criteria = {
            let mut book = self.lock_book();
            match book.filters.get_mut(id) {
                Some(f) if &*f.chain == chain => {
                    f.last_poll = Instant::now();
                    match &f.kind {
                        Kind::Logs(c) => c.raw.clone(),
                        // As geth: a block or pending transactions filter has no logs.
                        Kind::Blocks | Kind::Pending(_) => {
                            return Some(error(NOT_FOUND.0, NOT_FOUND.1))
                        }
                    }
                }
                _ => return None,
            }
        };
        Some(
            match self
                .source
                .call(chain, "eth_getLogs", format!("[{criteria}]"))
                .await
            {
                Ok(logs) => CallResult::Result(Bytes::from(logs.get().to_owned())),
                Err(e) => CallResult::Error(Bytes::from(jsonrpc::error_object(
                    e.code,
                    &e.message,
                    e.data.as_deref().map(|d| d.get()),
                ))),
            },
        )
    }

    fn uninstall(&self, chain: &str, id: &str) -> Option<CallResult> {
        let mut book = self.lock_book();
        match book.filters.get(id) {
            Some(f) if &*f.chain == chain => {}
            _ => return None,
        }
        let f = book.filters.remove(id)?;
        drop(book);
        if matches!(f.kind, Kind::Logs(_)) {
            let chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(followed) = chains.get(chain) {
                followed.tracker.leave_logs();
            }
        }
        Some(result("true".into()))
    }

    /// Removes the chain's filters not polled within `timeout` and returns the lowest event a
    /// remaining one still needs; with none left, marks the chain's task stopped (under the
    /// filters' lock, so that no filter joins it meanwhile) and returns `None`.
    fn sweep(&self, followed: &Followed, timeout: std::time::Duration) -> Option<u64> {
        let now = Instant::now();
        let chain = &followed.tracker.chain;
        let mut oldest = None;
        let mut book = self.lock_book();
        book.filters.retain(|_, f| {
            if f.chain != *chain {
                return true;
            }
            if now.duration_since(f.last_poll) >= timeout {
                tracing::debug!(
                    chain = &**chain,
                    "a filter expired (not polled within filters.timeout)"
                );
                if matches!(f.kind, Kind::Logs(_)) {
                    followed.tracker.leave_logs();
                }
                return false;
            }
            oldest = Some(oldest.map_or(f.next, |o: u64| o.min(f.next)));
            true
        });
        for (sub_chain, _, next) in book.subs.values() {
            if sub_chain == chain {
                let next = next.load(Relaxed);
                oldest = Some(oldest.map_or(next, |o: u64| o.min(next)));
            }
        }
        if oldest.is_none()
            && followed.leased_until.load(Relaxed) > crate::state::upstream::now_us()
        {
            // Only the cache reads the chain: it is told of changes as they happen, and keeps
            // no events back.
            oldest = Some(followed.tracker.next_seq());
        }
        if oldest.is_none() {
            followed.running.store(false, Relaxed);
        }
        oldest
    }
}

fn tracker_settings(c: &TrackerConfig) -> Settings {
    Settings {
        reorg_depth: c.reorg_depth,
        max_events: c.max_events,
    }
}

/// How often a followed chain's filters and subscriptions are swept at most (expired filters
/// removed, the oldest event still needed found), whatever the rate of heads.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Polls that found blocks the WebSocket source had not announced, with no block first
/// announced by it in between, before it is given up as lagging.
const LAGGING_POLLS: u32 = 3;

/// Beside a WebSocket source, one poll in this many runs even when nobody is known past the
/// tracked head: it finds a reorg that kept the height which the source did not announce.
const VERIFY_EVERY: u32 = 10;

/// A chain's tracker task, while the chain has filters or subscriptions: a round at each head
/// a WebSocket upstream announces, and every `tracker.poll_interval` a poll over HTTP, which
/// with a WebSocket source is only sent when the chain's upstreams are known to be past the
/// tracked head (health checks and answers say so at no cost).
async fn follow(registry: Weak<Registry>, followed: Arc<Followed>) {
    let chain = followed.tracker.chain.clone();
    tracing::debug!(
        chain = &*chain,
        "following the chain for its filters and subscriptions"
    );
    let Some(mut feed) = registry
        .upgrade()
        .map(|r| Feed::start(r.source.clone(), followed.tracker.clone()))
    else {
        followed.running.store(false, Relaxed);
        return;
    };
    let mut failing = false;
    let mut lagging = 0;
    let mut quiet_polls = 0;
    let mut period = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut finalized_read: Option<Instant> = None;
    let (mut needed, mut swept) = (None, Instant::now());
    while let Some((tracker_config, _)) = registry.upgrade().and_then(|r| r.source.settings()) {
        if period != tracker_config.poll_interval {
            period = tracker_config.poll_interval;
            tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let head = tokio::select! {
            _ = tick.tick() => None,
            Ok(()) = feed.heads.changed() => feed.heads.borrow_and_update().clone(),
        };
        let Some(registry) = registry.upgrade() else {
            break;
        };
        let Some((_, filters_config)) = registry.source.settings() else {
            break;
        };
        let finalized_interval = registry.source.finalized_interval();
        // Readers only move forward and new ones start at the newest event, so the lowest
        // event needed, found at the last sweep, is still safe to keep from: sweeping (a pass
        // over every filter and subscription) need not run at every head.
        let sweep_every = SWEEP_EVERY.min(filters_config.timeout / 4);
        if needed.is_none() || swept.elapsed() >= sweep_every {
            swept = Instant::now();
            needed = registry.sweep(&followed, filters_config.timeout);
        }
        let Some(needed) = needed else {
            tracing::debug!(
                chain = &*chain,
                "no filters, subscriptions or cache reads left; no longer following the chain"
            );
            drop(feed);
            followed.tracker.set_source(None);
            followed.tracker.stopped();
            return;
        };
        if followed.leased_until.load(Relaxed) > crate::state::upstream::now_us()
            && finalized_read.is_none_or(|at: Instant| at.elapsed() >= finalized_interval)
        {
            finalized_read = Some(Instant::now());
            read_finalized(&*registry.source, &followed.tracker).await;
        }
        let polled = head.is_none();
        if polled && followed.tracker.source().is_some() {
            let tip = followed.tracker.head().map(|b| b.number);
            quiet_polls += 1;
            if tip.is_some()
                && registry.source.known_head(&chain) <= tip
                && quiet_polls < VERIFY_EVERY
            {
                // Heads come over the WebSocket and nobody is known to be past them.
                followed.tracker.checked();
                followed.tracker.forget_before(Some(needed));
                continue;
            }
        }
        if polled {
            quiet_polls = 0;
        }
        match followed.tracker.round_from(&*registry.source, head).await {
            Ok(round) => {
                followed.tracker.checked();
                if failing {
                    tracing::info!(chain = &*chain, "following the chain again");
                    failing = false;
                }
                if followed.tracker.source().is_some() && round.added > 0 {
                    if !polled {
                        lagging = 0;
                    } else {
                        lagging += 1;
                        if lagging >= LAGGING_POLLS {
                            lagging = 0;
                            feed.give_up(format!(
                                "it lags: {LAGGING_POLLS} polls in a row found blocks it had not announced"
                            ));
                        }
                    }
                }
                if round.removed > 0 {
                    tracing::info!(
                        chain = &*chain,
                        removed = round.removed,
                        added = round.added,
                        "reorg: blocks dropped from the canonical chain"
                    );
                } else if round.backfilled > 0 {
                    tracing::debug!(
                        chain = &*chain,
                        blocks = round.backfilled,
                        "heights filled in"
                    );
                }
            }
            Err(why) => {
                if !failing {
                    tracing::warn!(chain = &*chain, error = %why, "could not follow the chain this round; retrying");
                    failing = true;
                }
            }
        }
        followed.tracker.forget_before(Some(needed));
    }
    // The proxy is gone.
    drop(feed);
    followed.running.store(false, Relaxed);
    followed.tracker.stopped();
}

/// Reads the chain's `finalized` block into the tracker (the cache keeps answers at final
/// blocks for good). An upstream that does not know the tag answers with an error: the chain
/// is taken to have none, and the cache counts blocks below the head instead.
async fn read_finalized(source: &dyn Source, tracker: &Tracker) {
    let chain = &*tracker.chain;
    match source
        .call(
            chain,
            "eth_getBlockByNumber",
            "[\"finalized\",false]".into(),
        )
        .await
    {
        Ok(block) => match super::tracker::Block::parse(&block) {
            Ok(b) => tracker.set_finalized(Some(b.number)),
            Err(why) => tracing::debug!(chain, error = %why, "the finalized block is not a block"),
        },
        Err(e)
            if e.code == jsonrpc::INVALID_PARAMS
                || e.code == -32000
                || e.code == jsonrpc::METHOD_NOT_FOUND =>
        {
            tracing::debug!(chain, error = %e.message, "the chain has no finalized block tag");
            tracker.set_finalized(None);
        }
        Err(e) => tracing::debug!(chain, error = %e.message, "could not read the finalized block"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_logs_say_so() {
        assert_eq!(
            removed(r#"{"address":"0x1","removed":false,"logIndex":"0x0"}"#),
            r#"{"address":"0x1","removed":true,"logIndex":"0x0"}"#
        );
        assert_eq!(
            removed(r#"{"address":"0x1"}"#),
            r#"{"address":"0x1","removed":true}"#
        );
        assert_eq!(removed("{}"), r#"{"removed":true}"#);
    }

    #[test]
    fn criteria_as_geth_reads_them() {
        let a = "0x00000000000000000000000000000000000000aa";
        let t = "0x00000000000000000000000000000000000000000000000000000000000000bb";
        let c = Criteria::parse(&format!(
            r#"{{"fromBlock":"0x10","address":["{a}"],"topics":[null,["{t}"]]}}"#
        ))
        .unwrap();
        let log = |addr: &str, topics: &[&str]| Log {
            raw: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            address: addr.into(),
            topics: topics.iter().map(|t| (*t).into()).collect(),
        };
        assert!(c.matches(0x10, &log(a, &[t, t])));
        assert!(!c.matches(0x0f, &log(a, &[t, t])), "below fromBlock");
        assert!(!c.matches(0x10, &log(a, &[t])), "too few topics");
        assert!(!c.matches(0x10, &log(&a.replace("aa", "ab"), &[t, t])));
        assert!(Criteria::parse(r#"{"fromBlock":"0x2","toBlock":"0x1"}"#).is_err());
        assert!(Criteria::parse(r#"{"address":"0x12"}"#).is_err());
        assert!(Criteria::parse(r#"{"topics":[null,null,null,null,null]}"#).is_err());
        assert!(Criteria::parse("[]").is_err());
        let any = Criteria::parse("{}").unwrap();
        assert!(any.matches(1, &log(a, &[])));
    }
}
