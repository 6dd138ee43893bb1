//! Subscriptions detour does not build from its tracker (`newPendingTransactions`, `syncing`,
//! a provider's own kinds) are relayed from one upstream's WebSocket (`ws_url`), best effort:
//! one upstream subscription per chain and params, however many clients share it; when that
//! upstream fails, the subscription is made again on another and its notifications go on
//! under the same detour id (what the upstream sent meanwhile is lost: these kinds have no
//! history to fill in from).
//!
//! The first subscriber waits for the upstream's answer: an upstream's error (an unknown kind,
//! bad params) is the client's answer, byte for byte; with no usable WebSocket upstream the
//! client gets a `-32000` that says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::heads::{open, pick, relay, Refusal, Stop};
use super::Source;

/// Notifications a slow client may fall behind by before it misses some.
const BUFFER: usize = 4096;
/// Longest wait for the first upstream subscription.
const FIRST_ANSWER: Duration = Duration::from_secs(10);

/// Where a relay stands.
#[derive(Debug, Clone)]
enum State {
    /// Subscribing for the first time.
    Opening,
    /// Subscribed on this upstream (or re-subscribing after it failed).
    Live,
    /// The first attempt ended: the upstream's error object, or why none could be asked.
    Refused(Refusal),
}

/// One upstream subscription, shared by the clients with the same chain and params.
struct Relay {
    results: broadcast::Sender<Arc<str>>,
    state: watch::Receiver<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A relay's chain and params.
type Key = (Arc<str>, Box<str>);

/// The relays open now, by chain and params.
#[derive(Default)]
pub struct Relays {
    open: Mutex<HashMap<Key, Weak<Relay>>>,
}

impl std::fmt::Debug for Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relays").finish_non_exhaustive()
    }
}

/// A client's share of a relayed subscription: dropped, it leaves (the last one closes the
/// upstream subscription).
pub struct Relayed {
    relay: Arc<Relay>,
    rx: broadcast::Receiver<Arc<str>>,
    kind: Box<str>,
}

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relayed").field("kind", &self.kind).finish()
    }
}

/// Why a relayed subscription could not be made.
#[derive(Debug)]
pub enum RelayError {
    /// The upstream's JSON-RPC error object, for the client as it is.
    Upstream(String),
    /// No upstream WebSocket could be asked: why.
    Unavailable(String),
}

impl Relays {
    /// Subscribes to `params` (the JSON array `eth_subscribe` got; `kind` its first member)
    /// on `chain` through one of its upstreams' WebSockets, sharing a relay already open.
    pub async fn subscribe(
        &self,
        source: &Arc<dyn Source>,
        chain: &str,
        kind: &str,
        params: &str,
    ) -> Result<Relayed, RelayError> {
        let key: Key = (chain.into(), params.trim().into());
        let relay = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.retain(|_, r| r.strong_count() > 0);
            match open.get(&key).and_then(Weak::upgrade) {
                Some(relay) => relay,
                None => {
                    let relay = Arc::new(start(source.clone(), key.0.clone(), key.1.clone()));
                    open.insert(key.clone(), Arc::downgrade(&relay));
                    relay
                }
            }
        };
        // Joined before the first notification can be sent: none is missed.
        let rx = relay.results.subscribe();
        let mut state = relay.state.clone();
        let settled = tokio::time::timeout(
            FIRST_ANSWER,
            state.wait_for(|s| !matches!(s, State::Opening)),
        )
        .await;
        let outcome = match settled {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => State::Refused(Refusal::Failed("the relay stopped".into())),
            Err(_) => State::Refused(Refusal::Failed(
                "no upstream answered eth_subscribe in time".into(),
            )),
        };
        match outcome {
            State::Live | State::Opening => Ok(Relayed {
                relay,
                rx,
                kind: kind.into(),
            }),
            State::Refused(why) => {
                let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
                if open
                    .get(&key)
                    .is_some_and(|r| r.as_ptr() == Arc::as_ptr(&relay))
                {
                    open.remove(&key);
                }
                Err(match why {
                    Refusal::Upstream(e) => RelayError::Upstream(e),
                    Refusal::Failed(e) => RelayError::Unavailable(e),
                })
            }
        }
    }

    /// Relays open now (for tests and status).
    pub fn len(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.values().filter(|r| r.strong_count() > 0).count()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Relayed {
    /// The subscription kind (the first of its params).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The next notification's `result`, as the upstream sent it; `Err(n)`: this client fell
    /// `n` notifications behind and missed them (best effort, it goes on).
    pub async fn next(&mut self) -> Result<Arc<str>, u64> {
        loop {
            match self.rx.recv().await {
                Ok(r) => return Ok(r),
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(n),
                // The relay lives as long as this share of it: never closed under it.
                Err(broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// The notifications' results received since the last call, without waiting, and how
    /// many were skipped because they were not read in time (a filter polled too rarely).
    pub fn drain(&mut self) -> (Vec<Arc<str>>, u64) {
        let (mut results, mut missed) = (Vec::new(), 0);
        loop {
            match self.rx.try_recv() {
                Ok(r) => results.push(r),
                Err(broadcast::error::TryRecvError::Lagged(n)) => missed += n,
                Err(_) => return (results, missed),
            }
        }
    }

    /// Whether the relay shares its upstream subscription with `other`.
    pub fn shares_with(&self, other: &Relayed) -> bool {
        Arc::ptr_eq(&self.relay, &other.relay)
    }
}

fn start(source: Arc<dyn Source>, chain: Arc<str>, params: Box<str>) -> Relay {
    let (results, _) = broadcast::channel(BUFFER);
    let (state_tx, state) = watch::channel(State::Opening);
    let task = tokio::spawn(run(source, chain, params, results.clone(), state_tx));
    Relay {
        results,
        state,
        task,
    }
}

async fn run(
    source: Arc<dyn Source>,
    chain: Arc<str>,
    params: Box<str>,
    results: broadcast::Sender<Arc<str>>,
    state: watch::Sender<State>,
) {
    let mut avoided: HashMap<Arc<str>, Instant> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    // Until the first subscription is made: each upstream is asked once, and the first
    // upstream error is the answer if none accepts.
    let mut first = true;
    let mut refused: Option<String> = None;
    loop {
        avoided.retain(|_, at| at.elapsed() < super::heads::AVOID);
        let candidates = source.head_sources(&chain);
        if first && candidates.iter().all(|c| avoided.contains_key(c)) {
            let why = match refused.take() {
                Some(e) => Refusal::Upstream(e),
                None if candidates.is_empty() => Refusal::Failed(
                    "no upstream of this chain with a ws_url is usable: subscriptions other than newHeads and logs are relayed from an upstream's WebSocket".to_owned(),
                ),
                None => Refusal::Failed("no upstream WebSocket could be subscribed".to_owned()),
            };
            state.send_replace(State::Refused(why));
            return;
        }
        let Some(upstream) = pick(&candidates, &avoided) else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            continue;
        };
        match open(&*source, &chain, &upstream, &params).await {
            Ok((ws, id)) => {
                first = false;
                state.send_replace(State::Live);
                tracing::info!(
                    chain = &*chain,
                    upstream = &*upstream,
                    subscription = &*params,
                    "relaying a subscription from this upstream's WebSocket"
                );
                let since = Instant::now();
                // Relayed kinds stay where they are while it works: a move loses what is sent
                // meanwhile.
                let stop = relay(
                    &*source,
                    &chain,
                    &upstream,
                    ws,
                    &id,
                    None,
                    || None,
                    |result| {
                        let _ = results.send(result.get().into());
                    },
                )
                .await;
                let (Stop::Failed(why) | Stop::Better(why)) = stop;
                tracing::warn!(
                    chain = &*chain,
                    upstream = &*upstream,
                    subscription = &*params,
                    reason = %why,
                    "a relayed subscription's upstream failed; subscribing on another"
                );
                if since.elapsed() >= Duration::from_secs(5) {
                    backoff = Duration::from_millis(100);
                }
            }
            Err(why) => {
                tracing::debug!(
                    chain = &*chain,
                    upstream = &*upstream,
                    reason = ?why,
                    "could not relay a subscription from this upstream's WebSocket"
                );
                if let (true, Refusal::Upstream(e)) = (first, why) {
                    refused.get_or_insert(e);
                }
            }
        }
        avoided.insert(upstream, Instant::now());
        if !first {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}
