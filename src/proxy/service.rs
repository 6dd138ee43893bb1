//! The embeddable proxy: a cloneable `tower::Service` over HTTP requests (`Error = Infallible`),
//! and a JSON-RPC-level API for in-process callers.
//!
//! Request path: route by URL path → read the body (bounded) → parse the envelope →
//! answer `eth_chainId`/`net_version` and invalid entries locally → [`crate::failover`] the rest →
//! write the response in request order with the client's ids.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Full, Limited};
use serde_json::value::RawValue;
use tokio::time::Instant;

pub use super::accesslog::Peer;
use super::accesslog::{access_log, access_log_on, methods_summary, Served};
pub use super::response::UPSTREAM_HEADER;
use super::response::{
    error_bytes, index, json, overloaded, rate_limited, read_body, readiness, text, too_large,
    unauthorized, unknown_chain_body, unknown_chain_message, STATUS_PAGE,
};

use super::response::{wants_html, AnsweredBy, ClientReply, RpcBody};
use crate::cache::store::Ctx as CacheCtx;
use crate::cache::{Lookup, Ticket};
use crate::client::dns::Resolver;
use crate::client::forward::Forwarder;
use crate::client::stream::StreamOffer;
use crate::config::{Config, ConfigError, FiltersConfig, TrackerConfig};
use crate::failover::retry::{failover_from, CallResult, Indices, PerCall};
use crate::follow::filters::Registry;
use crate::follow::{CallFuture, ConnectFuture, Source};
use crate::method::kind::{method_kind, MethodKind};
use crate::proxy::access;
use crate::rpc::error::RpcError;
use crate::rpc::jsonrpc::{
    self, Call, Entry, Parsed, INVALID_REQUEST, PARSE_ERROR, RESOURCE_NOT_FOUND,
};
use crate::state::metrics::{Metrics, Outcome};
use crate::state::pool::{Chain, Pool};
use crate::state::upstream::us_at;

/// The response body type of [`Detour`]'s service.
pub type Body = Full<Bytes>;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy. Cheap to clone: clones share the pool, its live state and the upstream client.
#[derive(Clone, Debug)]
pub struct Detour {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The current snapshot; requests load it once and keep it to the end. The health task
    /// holds a weak reference to it.
    pool: Arc<ArcSwap<Pool>>,
    /// The shared upstream HTTP client.
    forwarder: Forwarder,
    /// Prometheus metrics.
    metrics: Metrics,
    /// Whether the background health task was started (it needs a Tokio runtime).
    health_started: AtomicBool,
    /// Shutting down: `/readyz` answers 503.
    draining: AtomicBool,
    /// The last reload's outcome, for `/status`.
    last_reload: std::sync::Mutex<Option<serde_json::Value>>,
    /// JSON-RPC requests being read or answered now (bounded by
    /// `server.max_requests_in_flight`).
    requests_in_flight: std::sync::atomic::AtomicUsize,
    /// The filters detour keeps, and the chain trackers under them.
    filters: Arc<Registry>,
    /// The response cache of each chain.
    caches: Arc<crate::cache::Caches>,
    /// WebSocket connections open now.
    websockets: Arc<std::sync::atomic::AtomicUsize>,
    /// Subscription notifications queued to WebSocket clients.
    notifications: Arc<std::sync::atomic::AtomicU64>,
    /// Turns `true` at shutdown: WebSocket connections close (1001).
    closing: tokio::sync::watch::Sender<bool>,
    /// State shared with other replicas through Redis, when `[shared]` names one.
    shared: Arc<arc_swap::ArcSwapOption<crate::shared::Shared>>,
    /// [`share_verdicts`] runs (only while `[shared]` names a Redis).
    sharing_verdicts: AtomicBool,
}

/// The tracker's way to the upstreams: [`Detour::request`], through the failover loop.
struct Upstreams(std::sync::Weak<Inner>);

impl Source for Upstreams {
    fn call<'a>(&'a self, chain: &'a str, method: &'static str, params: String) -> CallFuture<'a> {
        Box::pin(async move {
            let Some(inner) = self.0.upgrade() else {
                return Err(RpcError {
                    code: jsonrpc::INTERNAL_ERROR,
                    message: "detour is shutting down".into(),
                    data: None,
                });
            };
            let params = RawValue::from_string(params).map_err(|e| RpcError {
                code: jsonrpc::INTERNAL_ERROR,
                message: format!("params are not JSON: {e}"),
                data: None,
            })?;
            Detour { inner }
                .call_with(chain, method, Some(&params), true)
                .await
        })
    }

    fn settings(&self) -> Option<(TrackerConfig, FiltersConfig)> {
        let inner = self.0.upgrade()?;
        let pool = inner.pool.load();
        Some((pool.config.tracker, pool.config.filters))
    }

    fn finalized_interval(&self) -> std::time::Duration {
        match self.0.upgrade() {
            Some(inner) => inner.pool.load().config.cache.finalized_interval,
            None => std::time::Duration::from_secs(30),
        }
    }

    fn head_sources(&self, chain: &str) -> Vec<Arc<str>> {
        let Some(inner) = self.0.upgrade() else {
            return Vec::new();
        };
        let pool = inner.pool.load();
        let Some(chain) = pool.chain(chain) else {
            return Vec::new();
        };
        let now = crate::state::upstream::now_us();
        let mut fit: Vec<_> = chain
            .upstreams
            .iter()
            .filter(|u| u.endpoint.ws.is_some() && u.servable(now))
            .collect();
        fit.sort_by(|a, b| a.tier.cmp(&b.tier).then(a.cost().total_cmp(&b.cost())));
        fit.into_iter().map(|u| u.name.clone()).collect()
    }

    fn tier(&self, chain: &str, upstream: &str) -> Option<u32> {
        let inner = self.0.upgrade()?;
        let pool = inner.pool.load();
        let chain = pool.chain(chain)?;
        let up = chain.upstreams.iter().find(|u| &*u.name == upstream)?;
        Some(up.tier)
    }

    fn connect_ws<'a>(&'a self, chain: &'a str, upstream: &'a str) -> ConnectFuture<'a> {
        Box::pin(async move {
            let inner = self.0.upgrade().ok_or("detour is shutting down")?;
            let pool = inner.pool.load_full();
            let up = pool
                .chain(chain)
                .and_then(|c| c.upstreams.iter().find(|u| &*u.name == upstream))
                .ok_or("the upstream was removed")?;
            inner.forwarder.connect_ws(&up.endpoint).await
        })
    }

    fn observe_head(&self, chain: &str, upstream: &str, number: u64) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let pool = inner.pool.load();
        if let Some(c) = pool.chain(chain) {
            if let Some(i) = c.upstreams.iter().position(|u| &*u.name == upstream) {
                c.observe_head(i, crate::state::upstream::now_us(), number);
            }
        }
    }

    fn known_head(&self, chain: &str) -> Option<u64> {
        let inner = self.0.upgrade()?;
        let pool = inner.pool.load();
        pool.chain(chain)?.state.head()
    }
}

/// `eth_blockNumber` answers never below what any replica answered. `Strict` (the default):
/// each answer raises the shared highest in Redis, and is raised to it, before it is served
/// (one atomic round trip). `Published`: answers are already at least the highest this
/// replica was told any replica answered (the others' raises reach it by pub/sub, see
/// [`Listener`]); only an answer above that (a head seen here first), or far below it (a
/// chain reset), takes the round trip, which also tells the others. Without Redis (down,
/// slow), the replica's own answers stand, as without `[shared]`.
#[inline(never)]
async fn share_block_number(
    shared: &Arc<crate::shared::Shared>,
    mode: crate::config::SharedBlockNumber,
    chain: &Chain,
    calls: &[&Call<'_>],
    got: &mut PerCall<CallResult>,
) {
    for (c, answer) in calls.iter().zip(got.iter_mut()) {
        if c.method != "eth_blockNumber" {
            continue;
        }
        let CallResult::Result(r) = answer else {
            continue;
        };
        let Some(n) = std::str::from_utf8(r)
            .ok()
            .and_then(|t| t.strip_prefix('"')?.strip_suffix('"'))
            .and_then(crate::method::block::parse_quantity)
        else {
            continue;
        };
        let known = chain.state.shared_block();
        let published = mode == crate::config::SharedBlockNumber::Published;
        let highest = if published && n <= known && known <= n + crate::shared::RESET_GAP {
            known
        } else {
            let Some(highest) = shared.raise_block(chain.chain_id, n).await else {
                return;
            };
            let reset = highest == n && known > n;
            chain.state.learn_shared_block(highest, reset);
            highest
        };
        if highest > n {
            chain.state.monotonic_block(highest);
            *answer = CallResult::Result(Bytes::from(format!("\"0x{highest:x}\"")));
        }
    }
}

/// How often this replica's ejections and recoveries are looked for, to tell the others.
const VERDICT_SCAN: std::time::Duration = std::time::Duration::from_millis(100);
/// The longest cool-down another replica's verdict can set here.
const REMOTE_COOLDOWN_MAX_MS: u64 = 5 * 60 * 1000;

/// Tells the other replicas (through [`crate::shared::Shared::publish`]) when one of this
/// replica's upstreams is ejected (a cool-down of its own) and when it recovers (an answer
/// lifted that cool-down). Polls the live state every [`VERDICT_SCAN`], so the request path
/// does nothing for it; runs while the proxy lives, idle while `[shared]` names no Redis.
async fn share_verdicts(inner: std::sync::Weak<Inner>) {
    // Per (chain id, upstream): the cool-down end last told (µs).
    let mut told: std::collections::HashMap<(u64, Arc<str>), u64> = Default::default();
    let mut budgets = Budgets::default();
    // Upstreams told to be on another chain.
    let mut wrong_chain: std::collections::HashSet<(u64, Arc<str>)> = Default::default();
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(VERDICT_SCAN).await;
        ticks += 1;
        if ticks % 2 == 0 {
            if let Some(inner) = inner.upgrade() {
                if let Some(shared) = inner.shared.load_full() {
                    let pool = inner.pool.load_full();
                    drop(inner);
                    budgets.share(&pool, &shared).await;
                }
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(shared) = inner.shared.load_full() else {
            // `[shared]` was removed by a reload: a later one starts this again.
            inner.sharing_verdicts.store(false, Relaxed);
            return;
        };
        let pool = inner.pool.load();
        let (now, unix) = (crate::state::upstream::now_us(), unix_ms());
        for chain in &pool.chains {
            for up in &chain.upstreams {
                let s = &up.state;
                let until = s.cooldown_end();
                let key = (chain.chain_id, up.name.clone());
                let last = told.get(&key).copied().unwrap_or(0);
                let verdict = |until_unix_ms, wrong_chain| crate::shared::Verdict {
                    chain_id: chain.chain_id,
                    upstream: up.name.to_string(),
                    until_unix_ms,
                    from: shared.replica().to_owned(),
                    wrong_chain,
                };
                // On another chain: told once, as a cool-down until its next chain check here.
                let wrong = s.chain_check() == crate::state::upstream::CHAIN_WRONG;
                let wrong_key = (chain.chain_id, up.name.clone());
                if wrong != wrong_chain.contains(&wrong_key) {
                    if wrong {
                        let ms = chain.health.chain_check_interval.as_millis() as u64;
                        shared.publish(verdict(unix + ms, true));
                        wrong_chain.insert(wrong_key);
                    } else {
                        shared.publish(verdict(0, false));
                        wrong_chain.remove(&wrong_key);
                    }
                }
                if until > now && until != s.remote_until() && until != last {
                    shared.publish(verdict(unix + (until - now) / 1000, false));
                    told.insert(key, until);
                } else if last != 0 && until == 0 {
                    shared.publish(verdict(0, false));
                    told.remove(&key);
                }
            }
        }
    }
}

/// What this replica asked of each upstream's budget when it last told the others, and its
/// parts of it over the last second, by (chain id, upstream).
#[derive(Default)]
struct Budgets(std::collections::HashMap<(u64, Arc<str>), Budget>);

#[derive(Default)]
struct Budget {
    /// Calls or compute units sent, and requests that waited (lifetime), when last told.
    sent: u64,
    waits: u64,
    /// When (µs).
    at: u64,
    /// The parts computed lately (when, µs; millionths), oldest first.
    parts: std::collections::VecDeque<(u64, u32)>,
    /// What each tick measured lately (when, µs; used per second; requests waited), oldest
    /// first.
    uses: std::collections::VecDeque<(u64, u64, bool)>,
}

impl Budgets {
    /// Tells the other replicas how this one used each upstream's budget over the last second
    /// (the most it sent per second between two ticks, and whether requests waited for room),
    /// and sets its part of the budget
    /// from what all of them told ([`crate::state::quota::fair_part`]). Budgets in compute
    /// units are shared by compute units, others by calls.
    ///
    /// A part in force is the smallest of those computed over the last [`SHARE_LIFE`]: a part
    /// shrinks at once, and grows only once the others' larger parts of the last second are
    /// out of their window, so what all replicas sent within any second stays within the
    /// parts of one moment, which add up to the whole.
    async fn share(&mut self, pool: &Pool, shared: &Arc<crate::shared::Shared>) {
        use crate::state::quota::{SHARE_LIFE, WHOLE};
        if !shared.available() {
            return;
        }
        for chain in &pool.chains {
            for up in chain.upstreams.iter().filter(|u| u.limits.any()) {
                let now = crate::state::upstream::now_us();
                let (calls, cu, waits) = up.state.quota.used();
                let (sent, limit) = match (up.limits.cu_per_second, up.limits.max_rps) {
                    (Some(cus), _) => (cu, cus),
                    (None, Some(rps)) => (calls, rps),
                    (None, None) => continue,
                };
                let budget = self
                    .0
                    .entry((chain.chain_id, up.name.clone()))
                    .or_insert_with(|| Budget {
                        sent,
                        waits,
                        at: now,
                        ..Default::default()
                    });
                let span = now.saturating_sub(budget.at).max(1);
                let used = sent.saturating_sub(budget.sent).saturating_mul(1_000_000) / span;
                let wants = waits > budget.waits || up.state.quota.waiting(now);
                (budget.sent, budget.waits, budget.at) = (sent, waits, now);
                // What this replica tells is its demand over the last second, not over the
                // last tick alone: a client that pauses for one tick (or a replica that was
                // not scheduled for one) would otherwise tell of no use, get a part of almost
                // nothing, and keep it for a second (parts grow only after SHARE_LIFE).
                let life = SHARE_LIFE.as_micros() as u64;
                budget.uses.push_back((now, used, wants));
                while budget.uses.front().is_some_and(|&(t, ..)| t + life < now) {
                    budget.uses.pop_front();
                }
                let mine = crate::shared::BudgetUse {
                    used: budget.uses.iter().map(|&(_, u, _)| u).max().unwrap_or(0),
                    wants_more: budget.uses.iter().any(|&(.., w)| w),
                };
                let Some(told) = shared
                    .share_budget(chain.chain_id, &up.name, mine, SHARE_LIFE)
                    .await
                else {
                    return;
                };
                let told: Vec<(u64, bool)> = told.iter().map(|u| (u.used, u.wants_more)).collect();
                let part = crate::state::quota::fair_part(&told, u64::from(limit));
                budget.parts.push_back((now, part.max(1)));
                while budget.parts.front().is_some_and(|&(t, _)| t + life < now) {
                    budget.parts.pop_front();
                }
                let in_force = budget.parts.iter().map(|&(_, p)| p).min().unwrap_or(WHOLE);
                let until = crate::state::upstream::now_us() + life;
                up.state.quota.set_share(in_force, until);
            }
        }
    }
}

/// What the other replicas tell this one, applied to its chains and upstreams (same chain id
/// and upstream name).
struct Listener(std::sync::Weak<Inner>);

impl crate::shared::Listener for Listener {
    fn verdict(&self, v: crate::shared::Verdict) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let pool = inner.pool.load();
        let found = pool
            .chains
            .iter()
            .filter(|c| c.chain_id == v.chain_id)
            .flat_map(|c| c.upstreams.iter().map(move |u| (c, u)))
            .find(|(_, u)| *u.name == *v.upstream);
        let Some((chain, up)) = found else {
            return;
        };
        if v.until_unix_ms == 0 {
            up.state.remote_recovered();
            tracing::info!(chain = &*chain.name, upstream = &*up.name, replica = %v.from,
                "another replica saw the upstream recover");
            return;
        }
        if v.wrong_chain {
            up.state.recheck_chain();
            tracing::warn!(chain = &*chain.name, upstream = &*up.name, replica = %v.from,
                "another replica found the upstream on another chain: checking its chain id here now");
        }
        let left = v
            .until_unix_ms
            .saturating_sub(unix_ms())
            .min(REMOTE_COOLDOWN_MAX_MS);
        if left > 0 {
            let now = crate::state::upstream::now_us();
            up.state.remote_eject(now + left * 1000);
            tracing::info!(chain = &*chain.name, upstream = &*up.name, replica = %v.from, cooldown_ms = left,
                "another replica ejected the upstream: cooling it down here too");
        }
    }

    fn highest_block(&self, chain_id: u64, n: u64) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        for chain in inner.pool.load().chains.iter() {
            if chain.chain_id == chain_id {
                let known = chain.state.shared_block();
                let reset = known > n.saturating_add(crate::shared::RESET_GAP);
                chain.state.learn_shared_block(n, reset);
            }
        }
    }

    fn resubscribed(&self) {
        if let Some(inner) = self.0.upgrade() {
            for chain in inner.pool.load().chains.iter() {
                chain.state.forget_shared_block();
            }
        }
    }
}

/// Counts a JSON-RPC request in flight until dropped.
struct RequestSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for RequestSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Detour {
    /// Builds the proxy from a configuration (validated here). Health checks start at once when
    /// called inside a Tokio runtime, else with the first request.
    pub fn new(config: Config) -> Result<Detour, ConfigError> {
        Self::with_resolver(config, Resolver::system())
    }

    /// Like [`Detour::new`], resolving upstream hostnames with `resolver` (tests use a stub).
    pub fn with_resolver(config: Config, resolver: Resolver) -> Result<Detour, ConfigError> {
        let tls = crate::config::tls::upstream_config(config.client.ca_file.as_deref())
            .map_err(|(at, why)| ConfigError::one(at, why))?;
        let forwarder = Forwarder::new(&config.client, resolver, tls);
        let shared = crate::shared::Shared::new(&config.shared)
            .map_err(|why| ConfigError::one("shared.redis_url", why))?;
        let shared = Arc::new(arc_swap::ArcSwapOption::new(shared));
        let pool = Arc::new(ArcSwap::from_pointee(Pool::new(config, None)?));
        let detour = Detour {
            inner: Arc::new_cyclic(|weak| {
                let filters = Registry::new(Arc::new(Upstreams(weak.clone())));
                let websockets = Arc::<std::sync::atomic::AtomicUsize>::default();
                let notifications = Arc::<std::sync::atomic::AtomicU64>::default();
                let follow = crate::follow::metrics::FollowMetrics {
                    registry: Arc::downgrade(&filters),
                    websockets: websockets.clone(),
                    notifications: notifications.clone(),
                };
                let caches = Arc::new(crate::cache::Caches::default());
                caches.update(&pool.load());
                let cache_metrics = crate::cache::metrics::CacheMetrics(Arc::downgrade(&caches));
                let shared_metrics = crate::shared::metrics::SharedMetrics(Arc::downgrade(&shared));
                let metrics = Metrics::new(
                    Arc::downgrade(&pool),
                    vec![
                        Box::new(follow),
                        Box::new(cache_metrics),
                        Box::new(shared_metrics),
                    ],
                );
                Inner {
                    pool,
                    forwarder,
                    metrics,
                    health_started: AtomicBool::new(false),
                    draining: AtomicBool::new(false),
                    last_reload: std::sync::Mutex::new(None),
                    requests_in_flight: Default::default(),
                    filters,
                    caches,
                    websockets,
                    notifications,
                    closing: tokio::sync::watch::Sender::new(false),
                    shared,
                    sharing_verdicts: AtomicBool::new(false),
                }
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            detour.start_health();
        }
        Ok(detour)
    }

    /// Starts the health task once (a no-op after the first call).
    #[inline]
    fn start_health(&self) {
        if self.inner.health_started.load(Relaxed) || self.inner.health_started.swap(true, Relaxed)
        {
            return;
        }
        let weak = Arc::downgrade(&self.inner.pool);
        tokio::spawn(crate::ops::health::run(weak, self.inner.forwarder.clone()));
        if let Some(shared) = self.inner.shared.load_full() {
            self.start_sharing(&shared);
        }
    }

    /// Connects to Redis and starts telling and hearing upstream verdicts (in a runtime).
    fn start_sharing(&self, shared: &Arc<crate::shared::Shared>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        shared.start();
        shared.subscribe(Arc::new(Listener(Arc::downgrade(&self.inner))));
        if !self.inner.sharing_verdicts.swap(true, Relaxed) {
            tokio::spawn(share_verdicts(Arc::downgrade(&self.inner)));
        }
    }

    /// The filters and subscriptions' registry.
    pub(crate) fn filters(&self) -> &Arc<Registry> {
        &self.inner.filters
    }

    /// The count of open WebSocket connections.
    pub(crate) fn websockets(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.inner.websockets.clone()
    }

    /// Counts notifications queued to WebSocket clients.
    pub(crate) fn notified(&self, n: usize) {
        self.inner.notifications.fetch_add(n as u64, Relaxed);
    }

    /// A receiver that turns `true` when WebSocket connections are to close.
    pub(crate) fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Closes every WebSocket connection (close code 1001) and waits until they are closed,
    /// for at most `grace`.
    pub(crate) async fn close_websockets(&self, grace: std::time::Duration) {
        self.inner.closing.send_replace(true);
        let until = Instant::now() + grace;
        while self.inner.websockets.load(Relaxed) > 0 && Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Answers one WebSocket message for `chain`, as an HTTP request is answered (rate limits,
    /// requests in flight, metrics, access log). `subs` answers subscription calls; `None`
    /// when the message has none. The answer's text, or `None` for notifications only.
    pub(crate) async fn ws_message(
        &self,
        chain: &str,
        client: &super::ws::Client,
        body: &[u8],
        subs: &mut Option<Box<super::ws::Subscriptions>>,
    ) -> Option<RpcBody> {
        let started = Instant::now();
        let pool = self.pool();
        let chain = pool.route(chain)?;
        let refuse = |code: i64, message: &str, data: Option<&str>| {
            // Every call of the message gets the refusal, with its id.
            let answers = refusals(body, code, message, data);
            (!answers.is_empty()).then(|| RpcBody::Whole(Bytes::from(answers)))
        };
        if let Some(limits) = &pool.rate_limits {
            let who = access::client_id(client.key.as_deref(), client.peer.map(|p| p.ip()));
            let shared = self.inner.shared.load_full();
            if let Err(wait) = limits.admit(&who, shared.as_ref()).await {
                let data = format!(
                    "{{\"retry_after_seconds\":{}}}",
                    super::response::retry_after_secs(wait)
                );
                return refuse(-32005, "rate limit exceeded", Some(&data));
            }
        }
        let max = pool.config.server.max_requests_in_flight;
        let Some(_slot) = self.request_slot(max) else {
            let why = format!("{max} requests are in flight (server.max_requests_in_flight)");
            return refuse(-32005, "server busy", Some(&jsonrpc::json_string(&why)));
        };
        let mut served = Served {
            client: client.key.clone(),
            peer: client.peer.map(|p| p.ip()),
            session: subs.take(),
            ..Served::default()
        };
        let out = self.rpc(&pool, chain, body, started, &mut served).await;
        *subs = served.session.take();
        self.record_duration(chain, &served, started);
        if access_log_on(&pool) {
            access_log(&chain.name, &served, StatusCode::OK, started, client.peer);
        }
        out
    }

    /// A slot among `server.max_requests_in_flight` (`max`), held until dropped; `None` when
    /// all are taken.
    #[inline]
    fn request_slot(&self, max: usize) -> Option<RequestSlot<'_>> {
        let in_flight = &self.inner.requests_in_flight;
        if in_flight.fetch_add(1, Relaxed) >= max {
            in_flight.fetch_sub(1, Relaxed);
            tracing::debug!(
                max,
                "request refused: server.max_requests_in_flight reached"
            );
            return None;
        }
        Some(RequestSlot(in_flight))
    }

    /// Records how long a request that arrived at `started` took (until its answer was ready,
    /// which it returns).
    #[inline]
    fn record_duration(&self, chain: &Chain, served: &Served, started: Instant) -> Instant {
        // The answer is ready when the last attempt ended (what remains is assembling it, well
        // under a microsecond): that clock read stands for this one.
        let ready = served.finished.unwrap_or_else(Instant::now);
        chain.metrics.duration(
            &self.inner.metrics,
            &chain.name,
            ready.saturating_duration_since(started).as_secs_f64(),
        );
        ready
    }

    /// Marks the proxy as shutting down: `/readyz` answers 503 from now on (requests are
    /// still served). [`crate::serve`] calls this when its shutdown future completes.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Relaxed);
    }

    /// The `/status` document (per chain and upstream: state, head, lag, latency, errors).
    pub fn status(&self) -> serde_json::Value {
        let mut status = crate::ops::status::status(&self.pool());
        if let Some(chains) = status["chains"].as_array_mut() {
            for c in chains {
                let name = c["name"].as_str().unwrap_or_default().to_owned();
                c["filters"] = self.inner.filters.describe(&name);
                if let Some(cache) = self.inner.caches.chain(&name) {
                    let pool = self.pool();
                    c["cache"] = cache.describe(&pool.config.cache, &pool.config.tracker);
                }
            }
        }
        if let Some(last) = self.inner.last_reload.lock().ok().and_then(|l| l.clone()) {
            status["last_reload"] = last;
        }
        status["draining"] = self.inner.draining.load(Relaxed).into();
        if let Some(shared) = self.inner.shared.load_full() {
            status["shared"] = shared.status();
        }
        status
    }

    /// Swaps in a new configuration atomically. Upstreams with the same chain, name and URL keep
    /// their live state (also when re-weighted or re-tiered);
    /// requests in flight finish on the snapshot they started with. On error nothing changes.
    /// (The upstream client's settings, `[client]`, apply from the next start.)
    ///
    /// Returns the settings that changed but apply only after a restart (the listen addresses,
    /// worker threads, the upstream client, header timeout). Cordons end with a reload.
    pub fn reload(&self, config: Config) -> Result<Reloaded, ConfigError> {
        let current = self.inner.pool.load_full();
        let restart_needed = restart_needed(&current.config, &config);
        let next = match Pool::new(config, Some(&current)) {
            Ok(next) => next,
            Err(e) => {
                self.reload_failed(&e);
                return Err(e);
            }
        };
        self.inner.metrics.reload(true);
        if let Ok(mut last) = self.inner.last_reload.lock() {
            *last = Some(serde_json::json!({
                "ok": true,
                "at_unix_ms": unix_ms(),
                "restart_needed": restart_needed,
            }));
        }
        for up in next.chains.iter().flat_map(|c| &c.upstreams) {
            up.state.set_cordoned(false);
        }
        self.inner.caches.update(&next);
        if next.config.shared != current.config.shared {
            // Validated with the rest: a URL that does not parse was refused above.
            match crate::shared::Shared::new(&next.config.shared) {
                Ok(shared) => {
                    self.inner.shared.store(shared.clone());
                    if let Some(s) = &shared {
                        self.start_sharing(s);
                    }
                }
                Err(why) => tracing::error!(reason = %why,
                    "[shared] not changed: the new settings cannot be used"),
            }
        }
        self.inner.pool.store(Arc::new(next));
        if !restart_needed.is_empty() {
            tracing::warn!(settings = ?restart_needed, "these settings changed but apply only after a restart");
        }
        Ok(Reloaded { restart_needed })
    }

    /// Records a reload that failed before it reached [`Detour::reload`] (e.g. the file could
    /// not be read): counted in metrics and shown in `/status`; nothing else changes.
    pub fn reload_failed(&self, error: &ConfigError) {
        self.inner.metrics.reload(false);
        if let Ok(mut last) = self.inner.last_reload.lock() {
            *last = Some(serde_json::json!({
                "ok": false,
                "at_unix_ms": unix_ms(),
                "error": error.to_string(),
            }));
        }
    }

    /// Takes upstream `name` of `chain` out of rotation (`true`) or puts it back (`false`),
    /// until the next reload. `false` when there is no such upstream.
    pub fn cordon(&self, chain: &str, name: &str, on: bool) -> bool {
        let pool = self.pool();
        let Some(up) = pool
            .route(chain)
            .and_then(|c| c.upstreams.iter().find(|u| &*u.name == name))
        else {
            return false;
        };
        up.state.set_cordoned(on);
        tracing::warn!(
            chain,
            upstream = name,
            cordoned = on,
            "upstream cordon changed by an operator"
        );
        true
    }

    /// The Prometheus exposition text (`GET /metrics`).
    pub fn metrics(&self) -> String {
        self.inner.metrics.encode()
    }

    /// The current snapshot.
    pub fn pool(&self) -> Arc<Pool> {
        self.inner.pool.load_full()
    }

    /// One line per chain: its paths and its upstreams (names, tiers, redacted URLs).
    pub fn describe(&self) -> Vec<String> {
        self.pool()
            .chains
            .iter()
            .map(|c| {
                let ups: Vec<String> = c
                    .upstreams
                    .iter()
                    .map(|u| {
                        let region = u
                            .region
                            .as_deref()
                            .map(|r| format!(", {r}"))
                            .unwrap_or_default();
                        format!("{} (tier {}{region}, {})", u.name, u.tier, u.display_url)
                    })
                    .collect();
                format!(
                    "chain {} (id {}) at {} -> {}",
                    c.name,
                    c.chain_id,
                    c.paths.join(" "),
                    ups.join("; ")
                )
            })
            .collect()
    }

    /// Handles a raw JSON-RPC body for a chain (by name or decimal id), as the HTTP path does.
    /// Returns the response body, or `None` when the request held only notifications.
    /// An unknown chain is an `Err` carrying the JSON-RPC error response.
    pub async fn handle_jsonrpc(&self, chain: &str, body: &[u8]) -> Result<Option<Bytes>, Bytes> {
        self.start_health();
        let pool = self.pool();
        match pool.route(chain) {
            Some(c) => {
                let served = &mut Served::default();
                Ok(self
                    .rpc(&pool, c, body, Instant::now(), served)
                    .await
                    .map(RpcBody::into_bytes))
            }
            None => Err(unknown_chain_body(&pool, chain)),
        }
    }

    /// Sends one JSON-RPC call to a chain (by name or decimal id) with failover, in process,
    /// and returns the upstream's `result` verbatim.
    pub async fn request(
        &self,
        chain: &str,
        method: &str,
        params: Option<&RawValue>,
    ) -> Result<Box<RawValue>, RpcError> {
        self.call_with(chain, method, params, false).await
    }

    /// [`Detour::request`]; `internal`: detour's own call (the chain tracker's), which
    /// neither reads nor fills the cache: the tracker must see the chain as it is.
    async fn call_with(
        &self,
        chain: &str,
        method: &str,
        params: Option<&RawValue>,
        internal: bool,
    ) -> Result<Box<RawValue>, RpcError> {
        self.start_health();
        let pool = self.pool();
        let c = routed(&pool, chain)?;
        if let Some(p) = params {
            if !matches!(p.get().as_bytes().first(), Some(b'[' | b'{')) {
                return Err(RpcError {
                    code: -32602,
                    message: "params must be a JSON array or object".into(),
                    data: None,
                });
            }
        }
        let id = RawValue::from_string("0".into()).map_err(|e| RpcError {
            code: jsonrpc::INTERNAL_ERROR,
            message: e.to_string(),
            data: None,
        })?;
        let call = Call {
            id: Some(jsonrpc::Raw::from(&*id)),
            method: method.into(),
            params: params.map(jsonrpc::Raw::from),
        };
        let now = Instant::now();
        let deadline = now + pool.config.server.request_timeout;
        let mut served = Served::default();
        served.cache.internal = internal;
        let mut answers = self
            .answer_calls(&pool, c, &[&call], now, deadline, &mut served)
            .await;
        match answers.pop() {
            Some(CallResult::Result(r)) => {
                let text = String::from_utf8(r.to_vec()).map_err(|_| RpcError {
                    code: jsonrpc::INTERNAL_ERROR,
                    message: "upstream result is not UTF-8".into(),
                    data: None,
                })?;
                RawValue::from_string(text).map_err(|e| RpcError {
                    code: jsonrpc::INTERNAL_ERROR,
                    message: format!("upstream result is not JSON: {e}"),
                    data: None,
                })
            }
            Some(CallResult::Error(e)) => Err(RpcError::from_object(&e)),
            None => Err(RpcError::from_object(&crate::rpc::error::all_failed(
                &[],
                false,
            ))),
        }
    }

    /// Subscribes in process to `params` (as `eth_subscribe` takes them: `["newHeads"]`, or
    /// `["logs", {"address": …, "topics": […]}]`) on a chain (by name or decimal id). The
    /// stream yields each notification's `result` as geth sends it, with the guarantees of
    /// WebSocket subscriptions: every canonical head (or matching log) once, in order, through
    /// upstream failures; after a reorg, dropped logs again with `"removed": true`. It ends
    /// with an error if the consumer falls more than `tracker.max_events` events behind; once
    /// every clone of the proxy is dropped it yields nothing more. Dropping the stream
    /// unsubscribes.
    ///
    /// Other kinds (`["newPendingTransactions"]`, `["syncing"]`, a provider's own) are relayed
    /// best effort from one upstream's WebSocket (an upstream with a `ws_url`), shared with
    /// every WebSocket client and stream subscribed to the same params, and made again on
    /// another upstream when that one fails (what is sent meanwhile is missed, as is what a
    /// consumer 4 096 notifications behind misses). The upstream's refusal is this call's
    /// error.
    pub async fn subscribe(
        &self,
        chain: &str,
        params: &RawValue,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Box<RawValue>, RpcError>>, RpcError>
    {
        self.start_health();
        let pool = self.pool();
        let c = routed(&pool, chain)?;
        let invalid = |message: String| RpcError {
            code: jsonrpc::INVALID_PARAMS,
            message,
            data: None,
        };
        let Some(topic) =
            crate::follow::subscribe::Topic::parse(Some(params.get())).map_err(invalid)?
        else {
            return self.subscribe_relayed(&c.name, params.get()).await;
        };
        let sub = self
            .inner
            .filters
            .subscribe(&c.name, topic, &pool.config.tracker)
            .await
            .map_err(|why| RpcError {
                code: -32000,
                message: format!("could not read the chain head to start the subscription: {why}"),
                data: None,
            })?;
        let state = (
            sub,
            std::collections::VecDeque::<Box<RawValue>>::new(),
            false,
        );
        let stream = futures_util::stream::unfold(
            state,
            |(mut sub, mut ready, ended)| async move {
                loop {
                    if let Some(next) = ready.pop_front() {
                        return Some((Ok(next), (sub, ready, ended)));
                    }
                    if ended {
                        return None;
                    }
                    let read = sub.results(|r| {
                        if let Ok(v) = RawValue::from_string(r.to_owned()) {
                            ready.push_back(v);
                        }
                    });
                    if let Err(lost) = read {
                        let e = RpcError {
                        code: -32000,
                        message: format!(
                            "the subscriber fell {} events behind (tracker.max_events); the subscription ended",
                            lost.0
                        ),
                        data: None,
                    };
                        return Some((Err(e), (sub, ready, true)));
                    }
                    if ready.is_empty() && !sub.changed().await {
                        return None;
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }

    /// [`Detour::subscribe`] for the kinds relayed from an upstream's WebSocket.
    async fn subscribe_relayed(
        &self,
        chain: &str,
        params: &str,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Box<RawValue>, RpcError>>, RpcError>
    {
        let kind = crate::follow::subscribe::kind_of(params).unwrap_or_default();
        let relayed = self
            .inner
            .filters
            .relay(chain, &kind, params)
            .await
            .map_err(|e| match e {
                crate::follow::relay::RelayError::Upstream(e) => {
                    RpcError::from_object(e.as_bytes())
                }
                crate::follow::relay::RelayError::Unavailable(why) => RpcError {
                    code: -32000,
                    message: format!("cannot subscribe to {kind}: {why}"),
                    data: None,
                },
            })?;
        let chain: Arc<str> = chain.into();
        let stream = futures_util::stream::unfold(relayed, move |mut relayed| {
            let chain = chain.clone();
            async move {
                loop {
                    match relayed.next().await {
                        Ok(result) => match RawValue::from_string(result.to_string()) {
                            Ok(v) => return Some((Ok(v), relayed)),
                            Err(_) => continue,
                        },
                        Err(missed) => tracing::debug!(
                            chain = &*chain,
                            missed,
                            "a relayed subscription's consumer fell behind: notifications skipped"
                        ),
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    /// Answers local calls and forwards the rest; one answer per call, in order. What it took
    /// goes into `served`. The request arrived at `now`.
    async fn answer_calls(
        &self,
        pool: &Pool,
        chain: &Chain,
        calls: &[&Call<'_>],
        now: Instant,
        deadline: Instant,
        served: &mut Served,
    ) -> PerCall<CallResult> {
        let shared = match pool.config.shared.redis_url.is_some() {
            true => self.inner.shared.load_full(),
            false => None,
        };
        if shared.is_none() && !calls.iter().any(|c| c.method == "eth_getLogs") {
            return self
                .answer_each(pool, chain, calls, now, deadline, served)
                .await;
        }
        let mut got = self
            .answer_each(pool, chain, calls, now, deadline, served)
            .await;
        if calls.iter().any(|c| c.method == "eth_getLogs") {
            self.narrow_rejected_logs(pool, chain, calls, &mut got, now, deadline)
                .await;
        }
        if let Some(shared) = &shared {
            if calls.iter().any(|c| c.method == "eth_blockNumber") {
                let mode = pool.config.shared.block_number;
                share_block_number(shared, mode, chain, calls, &mut got).await;
            }
        }
        got
    }

    /// An `eth_getLogs` range that every upstream rejected as too wide or too large (a limit
    /// narrower than `max_logs_range`, or one that changed) is asked again in halves.
    #[inline(never)]
    async fn narrow_rejected_logs(
        &self,
        pool: &Pool,
        chain: &Chain,
        calls: &[&Call<'_>],
        got: &mut PerCall<CallResult>,
        now: Instant,
        deadline: Instant,
    ) {
        for (c, answer) in calls.iter().zip(got.iter_mut()) {
            if c.method != "eth_getLogs" || !crate::failover::getlogs::rejected_answer(answer) {
                continue;
            }
            let finalized = self.finalized_block(&chain.name);
            let plan = crate::failover::getlogs::plan(c.params, chain.state.head(), finalized, 1);
            let Some(plan) = plan else {
                continue;
            };
            let half = plan.span().div_ceil(2);
            *answer = crate::failover::getlogs::run(
                &self.inner.forwarder,
                &self.inner.metrics,
                chain,
                plan,
                half,
                now,
                deadline,
                pool.config.client.max_response_bytes,
            )
            .await;
        }
    }

    /// [`Detour::answer_calls`] for each call: answered here, from the cache, split, or
    /// forwarded.
    async fn answer_each(
        &self,
        pool: &Pool,
        chain: &Chain,
        calls: &[&Call<'_>],
        now: Instant,
        deadline: Instant,
        served: &mut Served,
    ) -> PerCall<CallResult> {
        chain.state.touch(us_at(now));
        let m = &self.inner.metrics;
        // Calls answered here (refused, or the chain's id) get their answer now; the rest are
        // forwarded. Plain loops: these lists hold one call nearly always, and SmallVec's
        // collect cost more than the work.
        let mut answers: PerCall<Option<CallResult>> = PerCall::new();
        let mut remote = Indices::new();
        let mut own_calls = Indices::new();
        for (i, c) in calls.iter().enumerate() {
            let local = if let Err(refusal) = chain.policy.check(&c.method) {
                chain
                    .metrics
                    .call(m, &chain.name, &c.method, Outcome::Denied);
                served.errors += 1;
                Some(CallResult::Error(crate::method::policy::method_refused(
                    &chain.name,
                    &c.method,
                    &refusal,
                )))
            } else {
                let local = match method_kind(&c.method) {
                    MethodKind::ChainId => Some(chain.chain_id_json.clone()),
                    MethodKind::NetVersion => Some(chain.net_version_json.clone()),
                    MethodKind::Filter if chain.filters_emulated => {
                        own_calls.push(i);
                        answers.push(None);
                        continue;
                    }
                    MethodKind::Subscription => {
                        own_calls.push(i);
                        answers.push(None);
                        continue;
                    }
                    MethodKind::Write => {
                        served.cache.wrote = true;
                        None
                    }
                    _ => None,
                };
                match local.map(|answer| (answer, crate::rpc::error::no_params(c.params))) {
                    Some((answer, Ok(()))) => {
                        chain.metrics.call(m, &chain.name, &c.method, Outcome::Ok);
                        Some(CallResult::Result(answer))
                    }
                    Some((_, Err(invalid))) => {
                        // As a node answers: these methods take no params.
                        chain
                            .metrics
                            .call(m, &chain.name, &c.method, Outcome::RpcError);
                        served.errors += 1;
                        Some(CallResult::Error(invalid))
                    }
                    None => None,
                }
            };
            if local.is_none() {
                remote.push(i);
            }
            answers.push(local);
        }
        if !own_calls.is_empty() {
            self.answer_own(chain, calls, &own_calls, &mut answers, &mut remote, served)
                .await;
        }
        if remote.is_empty() {
            return answers.into_iter().flatten().collect();
        }
        if calls.iter().any(|c| c.method == "eth_getLogs") {
            self.split_logs(pool, chain, calls, &mut remote, &mut answers, now, deadline)
                .await;
            if remote.is_empty() {
                return finish(answers);
            }
        }
        let cache = match pool.config.cache.enabled && !served.cache.internal {
            true => self.inner.caches.chain(&chain.name),
            false => None,
        };
        match cache {
            Some(cache) if served.cache.wrote => {
                let got = self
                    .answer_cached(
                        pool, chain, calls, &cache, remote, answers, now, deadline, served,
                    )
                    .await;
                // A write may be mined at once (a dev chain mines each transaction): answers
                // about the head are asked again, not served from before it.
                cache.head_changed();
                got
            }
            Some(cache) => {
                self.answer_cached(
                    pool, chain, calls, &cache, remote, answers, now, deadline, served,
                )
                .await
            }
            None => {
                self.forward(chain, calls, remote, answers, now, deadline, served)
                    .await
            }
        }
    }

    /// The chain's finalized block, where detour follows the chain and has read it.
    fn finalized_block(&self, chain: &str) -> Option<u64> {
        self.inner.filters.tracker(chain)?.finalized()
    }

    /// Answers the `eth_getLogs` calls at `remote` that are wider than the chain's narrowest
    /// upstream range, in chunks (see [`crate::failover::getlogs`]); they leave `remote`.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    async fn split_logs(
        &self,
        pool: &Pool,
        chain: &Chain,
        calls: &[&Call<'_>],
        remote: &mut Indices,
        answers: &mut PerCall<Option<CallResult>>,
        now: Instant,
        deadline: Instant,
    ) {
        let mut k = 0;
        while k < remote.len() {
            let c = calls[remote[k]];
            let plan = (c.method == "eth_getLogs")
                .then(|| {
                    let finalized = self.finalized_block(&chain.name);
                    let head = chain.state.head();
                    crate::failover::getlogs::plan(c.params, head, finalized, chain.logs_range)
                })
                .flatten();
            let Some(plan) = plan else {
                k += 1;
                continue;
            };
            let answer = crate::failover::getlogs::run(
                &self.inner.forwarder,
                &self.inner.metrics,
                chain,
                plan,
                chain.logs_range,
                now,
                deadline,
                pool.config.client.max_response_bytes,
            )
            .await;
            let outcome = match answer {
                CallResult::Result(_) => Outcome::Ok,
                CallResult::Error(_) => Outcome::RpcError,
            };
            chain
                .metrics
                .call(&self.inner.metrics, &chain.name, &c.method, outcome);
            answers[remote[k]] = Some(answer);
            remote.remove(k);
        }
    }

    /// Answers the calls at `remote` from `cache` where it can, and forwards the rest: their
    /// answers are offered to the cache. Identical reads already in flight are waited for.
    #[allow(clippy::too_many_arguments)]
    async fn answer_cached(
        &self,
        pool: &Pool,
        chain: &Chain,
        calls: &[&Call<'_>],
        cache: &crate::cache::ChainCache,
        mut remote: Indices,
        mut answers: PerCall<Option<CallResult>>,
        now: Instant,
        deadline: Instant,
        served: &mut Served,
    ) -> PerCall<CallResult> {
        let m = &self.inner.metrics;
        let ctx = CacheCtx {
            config: &pool.config.cache,
            tracker: &pool.config.tracker,
            registry: &self.inner.filters,
            known_head: chain.state.head(),
            depth: chain.finality_depth,
            now_us: us_at(now),
        };
        let mut tickets: smallvec::SmallVec<[(usize, Ticket); 1]> = smallvec::SmallVec::new();
        let mut waiting: Vec<(usize, crate::cache::Waiter)> = Vec::new();
        let bypass = served.cache.bypass;
        let mut k = 0;
        while k < remote.len() {
            let i = remote[k];
            let c = calls[i];
            let forward = match cache.lookup(&c.method, c.params, bypass, &ctx) {
                Lookup::Skip => true,
                Lookup::Hit(result) => {
                    chain.metrics.call(m, &chain.name, &c.method, Outcome::Ok);
                    served.cache.hits += 1;
                    answers[i] = Some(CallResult::Result(result));
                    false
                }
                Lookup::Wait(w) => {
                    waiting.push((i, w));
                    false
                }
                Lookup::Miss(t) => {
                    served.cache.misses += 1;
                    tickets.push((i, t));
                    true
                }
            };
            if forward {
                k += 1;
            } else {
                remote.remove(k);
            }
        }
        if !tickets.is_empty() && pool.config.shared.cache {
            if let Some(shared) = self.shared_now() {
                // Boxed: only with a Redis, so the usual path's future stays small.
                tickets = Box::pin(self.answer_shared(
                    &shared,
                    pool,
                    chain,
                    calls,
                    tickets,
                    &mut remote,
                    &mut answers,
                    &ctx,
                    served,
                ))
                .await;
            }
        }
        if !waiting.is_empty() {
            // Rare: boxed, so the usual path's future stays small.
            return Box::pin(self.answer_merged(
                pool, chain, calls, remote, answers, tickets, waiting, &ctx, now, deadline, served,
            ))
            .await;
        }
        if remote.is_empty() {
            return finish(answers);
        }
        let got = if remote.len() == calls.len() {
            self.forward_calls(chain, calls, now, deadline, served)
                .await
        } else {
            let sent: PerCall<&Call<'_>> = remote.iter().map(|&i| calls[i]).collect();
            self.forward_calls(chain, &sent, now, deadline, served)
                .await
        };
        complete(tickets, &remote, &got, &ctx);
        if remote.len() == calls.len() && got.len() == calls.len() {
            return got;
        }
        for (&i, a) in remote.iter().zip(got) {
            answers[i] = Some(a);
        }
        finish(answers)
    }

    /// Redis, when `[shared]` names one and it answers lately.
    fn shared_now(&self) -> Option<Arc<crate::shared::Shared>> {
        self.inner
            .shared
            .load()
            .as_ref()
            .filter(|s| s.available())
            .cloned()
    }

    /// Looks the calls that missed this replica's cache up in the cache shared by replicas
    /// (only those whose answer may be final; one round trip each, at once, within
    /// `op_timeout`): those found there are answered (and taken out of `remote`); the
    /// tickets of the others are returned, to go upstream, marked to share their answer.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    async fn answer_shared<'c>(
        &self,
        shared: &Arc<crate::shared::Shared>,
        pool: &Pool,
        chain: &Chain,
        calls: &[&Call<'_>],
        tickets: smallvec::SmallVec<[(usize, Ticket<'c>); 1]>,
        remote: &mut Indices,
        answers: &mut PerCall<Option<CallResult>>,
        ctx: &CacheCtx<'_>,
        served: &mut Served,
    ) -> smallvec::SmallVec<[(usize, Ticket<'c>); 1]> {
        use crate::shared::Stored;
        let ids: Vec<Option<String>> = tickets.iter().map(|(_, t)| t.shared_id()).collect();
        let bypass = served.cache.bypass;
        let found = futures_util::future::join_all(ids.iter().map(|id| async move {
            match id {
                // A fresh answer was asked for: it replaces the shared one.
                Some(_) if bypass => Some(Stored::Missing(2)),
                Some(id) => shared.cached(chain.chain_id, id).await,
                None => None,
            }
        }))
        .await;
        let mut left = smallvec::SmallVec::new();
        for (((i, mut ticket), stored), id) in tickets.into_iter().zip(found).zip(ids) {
            let asked = match stored {
                Some(Stored::Found(value)) => match ticket.from_shared(&value, ctx) {
                    Some(result) => {
                        let m = &self.inner.metrics;
                        chain
                            .metrics
                            .call(m, &chain.name, &calls[i].method, Outcome::Ok);
                        served.cache.hits += 1;
                        served.cache.misses -= 1;
                        answers[i] = Some(CallResult::Result(result));
                        if let Some(k) = remote.iter().position(|&r| r == i) {
                            remote.remove(k);
                        }
                        continue;
                    }
                    // Not good here (another block at that height): replaced by ours.
                    None => 2,
                },
                Some(Stored::Missing(asked)) => asked,
                None => 0,
            };
            if let (true, Some(id)) = (asked > 0, id) {
                ticket.share(shared.clone(), id, asked, &pool.config.shared);
            }
            left.push((i, ticket));
        }
        left
    }

    /// [`Detour::answer_cached`] when some calls wait for identical reads in flight: those
    /// wait (at most `cache.merge_wait`) while the rest are forwarded; a wait that ends without
    /// an answer is forwarded after.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    async fn answer_merged(
        &self,
        pool: &Pool,
        chain: &Chain,
        calls: &[&Call<'_>],
        remote: Indices,
        mut answers: PerCall<Option<CallResult>>,
        tickets: smallvec::SmallVec<[(usize, Ticket<'_>); 1]>,
        waiting: Vec<(usize, crate::cache::Waiter)>,
        ctx: &CacheCtx<'_>,
        now: Instant,
        deadline: Instant,
        served: &mut Served,
    ) -> PerCall<CallResult> {
        let m = &self.inner.metrics;
        let wait_limit = pool
            .config
            .cache
            .merge_wait
            .min(deadline.saturating_duration_since(now) / 2);
        let waits = futures_util::future::join_all(
            waiting
                .into_iter()
                .map(|(i, w)| async move { (i, w.wait(wait_limit).await) }),
        );
        let remote_ref = &remote;
        let forwarded = async {
            if remote_ref.is_empty() {
                return PerCall::new();
            }
            let sent: PerCall<&Call<'_>> = remote_ref.iter().map(|&i| calls[i]).collect();
            let got = self
                .forward_calls(chain, &sent, now, deadline, served)
                .await;
            // The answers go to the cache, and to the reads waiting for them, at once.
            complete(tickets, remote_ref, &got, ctx);
            got
        };
        let (got, merged) = tokio::join!(forwarded, waits);
        for (&i, a) in remote.iter().zip(got) {
            answers[i] = Some(a);
        }
        let mut late = Indices::new();
        for (i, merged) in merged {
            match merged {
                Some(result) => {
                    chain
                        .metrics
                        .call(m, &chain.name, &calls[i].method, Outcome::Ok);
                    served.cache.hits += 1;
                    answers[i] = Some(CallResult::Result(result));
                }
                // The first read failed or was slow: this one goes on its own.
                None => {
                    served.cache.misses += 1;
                    late.push(i);
                }
            }
        }
        if !late.is_empty() {
            late.sort_unstable();
            let sent: PerCall<&Call<'_>> = late.iter().map(|&i| calls[i]).collect();
            let got = self
                .forward_calls(chain, &sent, Instant::now(), deadline, served)
                .await;
            for (&i, a) in late.iter().zip(got) {
                answers[i] = Some(a);
            }
        }
        finish(answers)
    }

    /// Forwards the calls at `remote` (in request order) with failover, and returns every
    /// call's answer: those in `answers` and the forwarded ones.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        chain: &Chain,
        calls: &[&Call<'_>],
        remote: Indices,
        mut answers: PerCall<Option<CallResult>>,
        now: Instant,
        deadline: Instant,
        served: &mut Served,
    ) -> PerCall<CallResult> {
        // All forwarded (the usual case): the calls go as they are.
        let all = remote.len() == calls.len();
        let subset: PerCall<&Call<'_>>;
        let sent = if all {
            calls
        } else {
            subset = remote.iter().map(|&i| calls[i]).collect();
            &subset
        };
        let got = self.forward_calls(chain, sent, now, deadline, served).await;
        if all && got.len() == calls.len() {
            return got;
        }
        for (i, a) in remote.into_iter().zip(got) {
            answers[i] = Some(a);
        }
        finish(answers)
    }

    /// Forwards `sent` with failover: one answer per call, in order. What it took goes into
    /// `served`.
    async fn forward_calls(
        &self,
        chain: &Chain,
        sent: &[&Call<'_>],
        now: Instant,
        deadline: Instant,
        served: &mut Served,
    ) -> PerCall<CallResult> {
        let m = &self.inner.metrics;
        let (got, report) = failover_from(
            &self.inner.forwarder,
            m,
            chain,
            sent,
            now,
            deadline,
            served.stream.as_ref(),
        )
        .await;
        chain.metrics.attempts(
            m,
            &chain.name,
            report.attempts.saturating_sub(1 + report.hedges),
            report.hedges,
        );
        for (k, a) in got.iter().enumerate() {
            let outcome = match a {
                CallResult::Result(_) => Outcome::Ok,
                CallResult::Error(_) if report.failed_calls.contains(&k) => Outcome::Failed,
                CallResult::Error(_) => Outcome::RpcError,
            };
            served.errors += usize::from(outcome == Outcome::RpcError);
            served.failed += usize::from(outcome == Outcome::Failed);
            chain.metrics.call(m, &chain.name, &sent[k].method, outcome);
        }
        tracing::debug!(
            chain = &*chain.name,
            calls = sent.len(),
            attempts = report.attempts,
            hedges = report.hedges,
            answered_by = ?report.answered_by,
            failures = ?report.failures,
            "forwarded"
        );
        if served.answered_by.is_empty() {
            served.answered_by = report.answered_by;
        } else {
            served.answered_by.extend(report.answered_by);
        }
        served.attempts += report.attempts;
        served.finished = report.finished.or(served.finished);
        got
    }

    /// Answers the calls at `which` that detour answers itself: filter calls from detour's
    /// filters (a call naming a filter id detour does not hold joins `remote`, to go upstream
    /// as it is), and subscription calls from the WebSocket connection's session.
    #[inline(never)]
    async fn answer_own(
        &self,
        chain: &Chain,
        calls: &[&Call<'_>],
        which: &Indices,
        answers: &mut PerCall<Option<CallResult>>,
        remote: &mut Indices,
        served: &mut Served,
    ) {
        let m = &self.inner.metrics;
        for &i in which {
            let c = calls[i];
            let answer = if method_kind(&c.method) == MethodKind::Subscription {
                Some(match served.session.as_mut() {
                    Some(subs) => subs.answer(self, chain, &c.method, c.params).await,
                    // As geth answers over HTTP.
                    None => CallResult::Error(Bytes::from(jsonrpc::error_object(
                        jsonrpc::METHOD_NOT_FOUND,
                        "notifications not supported",
                        None,
                    ))),
                })
            } else {
                let client = access::client_id(served.client.as_deref(), served.peer);
                self.inner
                    .filters
                    .answer(&chain.name, &client, &c.method, c.params)
                    .await
            };
            match answer {
                Some(a) => {
                    let outcome = match a {
                        CallResult::Result(_) => Outcome::Ok,
                        CallResult::Error(_) => Outcome::RpcError,
                    };
                    served.errors += usize::from(outcome == Outcome::RpcError);
                    chain.metrics.call(m, &chain.name, &c.method, outcome);
                    answers[i] = Some(a);
                }
                None => remote.push(i),
            }
        }
        // Forwarded calls go in request order.
        remote.sort_unstable();
    }

    /// Parses a body that arrived at `now`, answers it, and writes the response (`None`:
    /// notifications only). What it took goes into `served`.
    async fn rpc(
        &self,
        pool: &Pool,
        chain: &Chain,
        body: &[u8],
        now: Instant,
        served: &mut Served,
    ) -> Option<RpcBody> {
        let deadline = now + pool.config.server.request_timeout;
        let (entries, batch) = match jsonrpc::parse(body, pool.config.server.max_batch_len) {
            Parsed::Single(e) => (smallvec::smallvec![e], false),
            Parsed::Batch(v) => (PerCall::from_vec(v), true),
            Parsed::ParseError => {
                return Some(RpcBody::Whole(error_bytes(
                    PARSE_ERROR,
                    "Parse error",
                    Some("\"the body is not valid JSON\""),
                )));
            }
            Parsed::EmptyBatch => {
                return Some(RpcBody::Whole(error_bytes(
                    INVALID_REQUEST,
                    "Invalid Request",
                    Some("\"empty batch\""),
                )));
            }
            Parsed::BatchTooLong(len) => {
                let why = format!(
                    "batch of {len} requests exceeds the limit of {} (server.max_batch_len)",
                    pool.config.server.max_batch_len
                );
                return Some(RpcBody::Whole(error_bytes(
                    INVALID_REQUEST,
                    "Invalid Request",
                    Some(&jsonrpc::json_string(&why)),
                )));
            }
        };
        let mut calls: PerCall<&Call<'_>> = PerCall::new();
        for e in &entries {
            if let Entry::Call(c) = e {
                calls.push(c);
            }
        }
        served.calls = entries.len();
        if access_log_on(pool) {
            served.methods = methods_summary(&entries);
        }
        let min_bytes = pool.config.client.stream_min_bytes;
        if let (true, false, [Entry::Call(c)]) = (served.may_stream, batch, &entries[..]) {
            // Taken only by a call that may be sent twice (a read): see `attempt`.
            if min_bytes > 0 && c.id.is_some() {
                served.stream = Some(StreamOffer::new(min_bytes, deadline));
            }
        }
        let mut answers = if calls.is_empty() {
            PerCall::new()
        } else {
            self.answer_calls(pool, chain, &calls, now, deadline, served)
                .await
        }
        .into_iter();
        // A single result goes back as the envelope's start and the upstream's bytes, which
        // the fast path writes without copying them into a new buffer first.
        if let ([Entry::Call(Call { id: Some(id), .. })], [CallResult::Result(_)]) =
            (&entries[..], answers.as_slice())
        {
            if !batch {
                let Some(CallResult::Result(result)) = answers.next() else {
                    unreachable!("matched above")
                };
                if result.is_empty() {
                    // STREAMED: the result is on its way, in the offer.
                    let stream = served.stream.as_ref().and_then(StreamOffer::take);
                    return Some(match stream {
                        Some(stream) => RpcBody::Stream {
                            id: id.get().as_bytes().into(),
                            stream,
                        },
                        None => RpcBody::Whole(error_bytes(
                            jsonrpc::INTERNAL_ERROR,
                            "Internal error",
                            Some("\"a streamed answer was lost\""),
                        )),
                    });
                }
                return Some(RpcBody::Result {
                    id: id.get().as_bytes().into(),
                    result,
                });
            }
        }
        let answer_bytes: usize = answers
            .as_slice()
            .iter()
            .map(|a| match a {
                CallResult::Result(b) | CallResult::Error(b) => b.len(),
            })
            .sum();
        // A single answer is sized exactly: a buffer with room to spare would cost `Bytes` a
        // second allocation.
        let capacity = match (&entries[..], answers.as_slice()) {
            ([Entry::Call(c)], [a]) if !batch && c.id.is_some() => {
                jsonrpc::result_len(c.id, answer_bytes)
                    - usize::from(matches!(a, CallResult::Error(_)))
            }
            _ => answer_bytes + 64 * entries.len() + 2,
        };
        let mut out = Vec::with_capacity(capacity);
        if batch {
            out.push(b'[');
        }
        let mut written = 0;
        for e in &entries {
            let (id, answer) = match e {
                Entry::Call(c) => {
                    // Every call has an answer (kept aligned); a notification's is dropped.
                    let Some(answer) = answers.next() else {
                        continue;
                    };
                    match c.id {
                        Some(id) => (Some(id), answer),
                        None => continue,
                    }
                }
                Entry::Invalid { id, reason } => {
                    let err = jsonrpc::error_object(
                        INVALID_REQUEST,
                        "Invalid Request",
                        Some(&jsonrpc::json_string(reason)),
                    );
                    (*id, CallResult::Error(err.into()))
                }
            };
            if written > 0 {
                out.push(b',');
            }
            written += 1;
            match &answer {
                CallResult::Result(r) => jsonrpc::write_result(&mut out, id, r),
                CallResult::Error(err) => jsonrpc::write_error(&mut out, id, err),
            }
        }
        if written == 0 {
            return None;
        }
        if batch {
            out.push(b']');
        }
        Some(RpcBody::Whole(Bytes::from(out)))
    }

    /// Answers a request from the client at `peer` (detour's own server passes the address
    /// here; other callers may put a [`Peer`] in the request's extensions instead).
    pub(crate) async fn serve_http<B>(
        &self,
        req: Request<B>,
        peer: Option<std::net::SocketAddr>,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.answer(req, peer, false).await.into_response()
    }

    /// [`Detour::serve_http`]'s answer, with a JSON-RPC answer kept as a [`ClientReply::Rpc`] (which
    /// the HTTP/1.1 fast path writes without building a header map). `may_stream`: the caller
    /// writes a streamed result ([`RpcBody::Stream`]) itself.
    pub(crate) async fn answer<B>(
        &self,
        req: Request<B>,
        peer: Option<std::net::SocketAddr>,
        may_stream: bool,
    ) -> ClientReply
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let peer = peer.or_else(|| req.extensions().get::<Peer>().map(|p| p.0));
        let pool = self.pool();
        let cors = req
            .headers()
            .get(http::header::ORIGIN)
            .and_then(|o| access::allowed_origin(&pool.config.server, o));
        if req.method() == Method::OPTIONS {
            // A CORS preflight: allowed origins get the headers, others nothing to go on.
            let mut resp = Response::new(Body::default());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            if let Some(origin) = cors {
                access::add_cors(resp.headers_mut(), origin);
                access::add_preflight(resp.headers_mut());
            }
            return ClientReply::Http(resp);
        }
        // A browser's answer gets CORS headers through a complete response: not streamed.
        let may_stream = may_stream && cors.is_none();
        let reply = self.route_http(req, pool, peer, may_stream).await;
        match cors {
            Some(origin) => {
                let mut resp = reply.into_response();
                access::add_cors(resp.headers_mut(), origin);
                ClientReply::Http(resp)
            }
            None => reply,
        }
    }

    async fn route_http<B>(
        &self,
        req: Request<B>,
        pool: Arc<Pool>,
        peer: Option<std::net::SocketAddr>,
        may_stream: bool,
    ) -> ClientReply
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        self.start_health();
        let path = req.uri().path();
        let method = req.method();
        match (method, path) {
            (&Method::GET | &Method::HEAD, "/healthz") => {
                return text(StatusCode::OK, "ok\n").into()
            }
            (&Method::GET | &Method::HEAD, "/readyz") => {
                if self.inner.draining.load(Relaxed) {
                    let body = Bytes::from_static(b"{\"ready\":false,\"draining\":true}");
                    return json(StatusCode::SERVICE_UNAVAILABLE, body).into();
                }
                return readiness(&pool).into();
            }
            (&Method::GET | &Method::HEAD, "/status" | "/metrics")
                if access::authenticate(
                    &pool.config.api_keys,
                    access::presented(req.headers(), None),
                )
                .is_err() =>
            {
                return unauthorized().into();
            }
            (&Method::GET | &Method::HEAD, "/status") if !wants_html(&req) => {
                let body = serde_json::to_string_pretty(&self.status()).unwrap_or_default();
                return json(StatusCode::OK, Bytes::from(body)).into();
            }
            (&Method::GET | &Method::HEAD, "/status" | "/status.html") => {
                let mut resp = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                // The page loads nothing from elsewhere; keep it that way.
                resp.headers_mut().insert(
                    http::header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                    ),
                );
                return resp.into();
            }
            (&Method::GET | &Method::HEAD, "/metrics") => {
                let mut resp = Response::new(Full::new(Bytes::from(self.metrics())));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                return resp.into();
            }
            (&Method::GET | &Method::HEAD, "/") if !super::ws::is_upgrade(&req) => {
                return index(&pool).into()
            }
            _ => {}
        }
        let (chain_path, path_key) = access::split_path(path);
        let chain = match pool.route(chain_path) {
            // A second path segment is a key, and only where keys are configured.
            Some(c) if path_key.is_none() || !pool.config.api_keys.is_empty() => c,
            _ => {
                // Never echo a path segment that may be a key.
                let shown = if path_key.is_some() {
                    format!("/{chain_path}/…")
                } else {
                    path.to_owned()
                };
                return json(StatusCode::NOT_FOUND, unknown_chain_body(&pool, &shown)).into();
            }
        };
        let client = match access::authenticate(
            &pool.config.api_keys,
            access::presented(req.headers(), path_key),
        ) {
            Ok(client) => client.map(str::to_owned),
            Err(()) => {
                // Failed attempts count against the address too: no unlimited key guessing.
                if let (Some(limits), Some(addr)) = (&pool.rate_limits, peer) {
                    let shared = self.inner.shared.load_full();
                    let who = format!("ip:{}", addr.ip());
                    if let Err(wait) = limits.admit(&who, shared.as_ref()).await {
                        return rate_limited(wait).into();
                    }
                }
                return unauthorized().into();
            }
        };
        if let Some(limits) = &pool.rate_limits {
            let who = access::client_id(client.as_deref(), peer.map(|p| p.ip()));
            let shared = self.inner.shared.load_full();
            if let Err(wait) = limits.admit(&who, shared.as_ref()).await {
                return rate_limited(wait).into();
            }
        }
        if method == Method::GET && super::ws::is_upgrade(&req) {
            let client = super::ws::Client { key: client, peer };
            return super::ws::upgrade(self, req, chain, client).into();
        }
        let max = pool.config.server.max_requests_in_flight;
        let Some(_slot) = self.request_slot(max) else {
            return overloaded(max).into();
        };
        if method != Method::POST {
            let mut resp = json(
                StatusCode::METHOD_NOT_ALLOWED,
                Bytes::from(jsonrpc::error_response(
                    None,
                    INVALID_REQUEST,
                    "Invalid Request",
                    Some(&jsonrpc::json_string(&format!(
                        "{method} is not allowed here; send JSON-RPC with POST"
                    ))),
                )),
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return resp.into();
        }
        let fresh = wants_fresh(req.headers());
        let limit = pool.config.server.max_body_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return too_large(limit).into();
        }
        let read = {
            // Scoped, so that the reading's state is not kept beside the answering's.
            let mut read = std::pin::pin!(read_body(Limited::new(req.into_body(), limit)));
            // A body that is all here already (the fast path's always is) needs no timer.
            match futures_util::FutureExt::now_or_never(&mut read) {
                Some(done) => Ok(done),
                None => tokio::time::timeout(pool.config.server.body_read_timeout, read).await,
            }
        };
        let body = match read {
            Err(_elapsed) => {
                // A client sending its body a byte at a time gives up its slot here.
                let why = format!(
                    "the request body did not arrive within {:?} (server.body_read_timeout)",
                    pool.config.server.body_read_timeout
                );
                return json(
                    StatusCode::REQUEST_TIMEOUT,
                    error_bytes(
                        INVALID_REQUEST,
                        "Invalid Request",
                        Some(&jsonrpc::json_string(&why)),
                    ),
                )
                .into();
            }
            Ok(Ok(body)) => body,
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return too_large(limit).into()
            }
            Ok(Err(_)) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    error_bytes(
                        INVALID_REQUEST,
                        "Invalid Request",
                        Some("\"the request body could not be read\""),
                    ),
                )
                .into();
            }
        };
        let mut served = Served {
            client,
            peer: peer.map(|p| p.ip()),
            may_stream,
            ..Served::default()
        };
        served.cache.bypass = fresh;
        let out = self.rpc(&pool, chain, &body, started, &mut served).await;
        let ready = self.record_duration(chain, &served, started);
        let logging = access_log_on(&pool);
        // The access log names the upstreams too.
        let answered_by = if logging {
            served.answered_by.clone()
        } else {
            std::mem::take(&mut served.answered_by)
        };
        let reply = ClientReply::Rpc {
            body: out,
            upstream: AnsweredBy(answered_by),
            cache: served.cache.header(),
            ready,
        };
        if logging {
            access_log(&chain.name, &served, reply.status(), started, peer);
        }
        reply
    }
}

/// Whether the client asks for answers fresh from an upstream (`Cache-Control: no-cache` or
/// `no-store`, or `Pragma: no-cache`): the cache is not read (what comes back is still cached).
fn wants_fresh(headers: &http::HeaderMap) -> bool {
    if headers.is_empty() {
        return false;
    }
    let says = |name: http::header::HeaderName, what: &[&str]| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|d| what.iter().any(|w| d.trim().eq_ignore_ascii_case(w)))
            })
        })
    };
    says(http::header::CACHE_CONTROL, &["no-cache", "no-store"])
        || says(http::header::PRAGMA, &["no-cache"])
}

/// Offers each ticket's answer (`got` holds the answers of the calls at `sent`, in order) to
/// the cache and to the reads waiting for it.
fn complete(
    tickets: smallvec::SmallVec<[(usize, Ticket<'_>); 1]>,
    sent: &Indices,
    got: &PerCall<CallResult>,
    ctx: &CacheCtx<'_>,
) {
    for (i, ticket) in tickets {
        let answer = sent.binary_search(&i).ok().and_then(|k| got.get(k));
        ticket.complete(
            match answer {
                // A streamed result (empty here) is neither cached nor given to reads that
                // wait for it: those go upstream on their own.
                Some(CallResult::Result(r)) if !r.is_empty() => Ok(r),
                _ => Err(()),
            },
            ctx,
        );
    }
}

/// Every call's answer; a call left without one (which should not happen) gets detour's own
/// error rather than being dropped.
fn finish(answers: PerCall<Option<CallResult>>) -> PerCall<CallResult> {
    let mut out = PerCall::with_capacity(answers.len());
    for a in answers {
        out.push(a.unwrap_or_else(|| CallResult::Error(crate::rpc::error::all_failed(&[], false))));
    }
    out
}

/// The chain a library call names (by name or decimal id), or the error for an unknown one.
fn routed<'p>(pool: &'p Pool, chain: &str) -> Result<&'p Chain, RpcError> {
    pool.route(chain).ok_or_else(|| RpcError {
        code: RESOURCE_NOT_FOUND,
        message: unknown_chain_message(pool, chain),
        data: None,
    })
}

/// The answer to each call of `body` (a call or a batch) with this error, as the body would
/// be answered; empty when it holds no call with an id.
fn refusals(body: &[u8], code: i64, message: &str, data: Option<&str>) -> String {
    let entries = match jsonrpc::parse(body, usize::MAX) {
        Parsed::Single(e) => vec![e],
        Parsed::Batch(v) => v,
        _ => return error_bytes_string(code, message, data),
    };
    let answers: Vec<String> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Call(Call { id: Some(id), .. }) => Some(*id),
            _ => None,
        })
        .map(|id| {
            String::from_utf8_lossy(&jsonrpc::error_response(Some(id), code, message, data))
                .into_owned()
        })
        .collect();
    match (entries.len(), answers.len()) {
        (_, 0) => String::new(),
        (1, 1) if !body.trim_ascii_start().starts_with(b"[") => answers.join(""),
        _ => format!("[{}]", answers.join(",")),
    }
}

fn error_bytes_string(code: i64, message: &str, data: Option<&str>) -> String {
    String::from_utf8_lossy(&error_bytes(code, message, data)).into_owned()
}

impl<B> tower_service::Service<Request<B>> for Detour
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.serve_http(req, None).await) })
    }
}

// === Reload ===

/// What a reload could not apply live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings that changed but take effect only after a restart.
    pub restart_needed: Vec<&'static str>,
}

/// The settings that differ between `old` and `new` and cannot change while running.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let (o, n) = (&old.server, &new.server);
    if o.listen != n.listen {
        out.push("server.listen");
    }
    if o.worker_threads != n.worker_threads {
        out.push("server.worker_threads");
    }
    if o.header_read_timeout != n.header_read_timeout {
        out.push("server.header_read_timeout");
    }
    if o.max_connections != n.max_connections {
        out.push("server.max_connections");
    }
    if old.client != new.client {
        out.push("client");
    }
    if old.admin.listen != new.admin.listen {
        out.push("admin.listen");
    }
    out
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
