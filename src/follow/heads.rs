//! New heads over an upstream's WebSocket: one `eth_subscribe("newHeads")` per followed chain,
//! however many filters and subscribers read it. Each header it sends starts a tracker round
//! at once (the round links it by parent hash and fills in any height it skipped, over HTTP
//! with failover), so the WebSocket only says *when* to look: a lost, late or wrong
//! notification costs a round, never a block.
//!
//! The feed uses the best upstream [`Source::head_sources`] names (lower tier, then lower
//! cost) and gives it up when its socket closes or errs, when it stops answering pings, when
//! it is no longer fit (ejected, cordoned, removed), or when the chain's tracker says it lags
//! (polls found blocks it had not announced). An upstream given up is avoided for a while
//! ([`AVOID`]) when others are there; with none left, the tracker polls over HTTP as without
//! WebSocket upstreams, and the feed tries again after a back-off. When an upstream of a
//! better (lower) tier is fit again and has not been given up within [`AVOID`], the feed moves
//! back to it (checked every [`RETURN_AFTER`]; the tracker's rounds link the heads by parent
//! hash across the move, so it costs no height). Within a tier the source is kept while it
//! works: latency estimates move too often to chase.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::tracker::{Block, Tracker};
use super::Source;
use crate::client::ws::UpstreamSocket;

/// How often an idle source is pinged; two intervals without any frame and it is given up.
pub const PING_EVERY: Duration = Duration::from_secs(10);
/// How long an upstream given up is passed over while another WebSocket upstream is usable.
pub const AVOID: Duration = Duration::from_secs(30);
/// First wait after a source failed; it doubles while attempts keep failing.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts when no WebSocket upstream could be followed.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A source followed this long was working: the next one is tried at once, and the back-off
/// starts over.
const STEADY: Duration = Duration::from_secs(5);
/// How long a source is kept, at least, before a better tier's upstream takes over again.
pub const RETURN_AFTER: Duration = Duration::from_secs(10);
/// Time for the `eth_subscribe` answer.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The follow task's side of a feed: the latest header, and a way to make it switch.
pub struct Feed {
    /// The latest header received (coalesced: a round reads the newest).
    pub heads: watch::Receiver<Option<Block>>,
    /// Send a reason to give the current source up (it lags).
    give_up: watch::Sender<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Feed {
    /// Starts following `tracker`'s chain over WebSocket upstreams from `source`.
    pub fn start(source: Arc<dyn Source>, tracker: Arc<Tracker>) -> Feed {
        let (heads_tx, heads) = watch::channel(None);
        let (give_up, give_up_rx) = watch::channel(None);
        let task = tokio::spawn(run(source, tracker, heads_tx, give_up_rx));
        Feed {
            heads,
            give_up,
            task,
        }
    }

    /// Gives the current source up, for `why` (it lags): the feed moves to another.
    pub fn give_up(&self, why: String) {
        self.give_up.send_replace(Some(why));
    }
}

async fn run(
    source: Arc<dyn Source>,
    tracker: Arc<Tracker>,
    heads: watch::Sender<Option<Block>>,
    mut give_up: watch::Receiver<Option<String>>,
) {
    let chain = tracker.chain.clone();
    let mut avoided: HashMap<Arc<str>, Instant> = HashMap::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some((settings, _)) = source.settings() else {
            return;
        };
        avoided.retain(|_, at| at.elapsed() < AVOID);
        let candidates = source.head_sources(&chain);
        let Some(upstream) = pick(&candidates, &avoided) else {
            tracker.set_source(None);
            tokio::time::sleep(settings.poll_interval.max(Duration::from_secs(1))).await;
            continue;
        };
        give_up.borrow_and_update();
        let stop = follow_one(
            &*source,
            &tracker,
            &upstream,
            &heads,
            &mut give_up,
            &avoided,
        )
        .await;
        let live_for = tracker.source().map(|_| tracker.source_age());
        if live_for.is_some() {
            // It was followed: polls stand in until the next source answers eth_subscribe.
            tracker.set_source(None);
            tracker.stats.source_changes.fetch_add(1, Relaxed);
        }
        let why = match stop {
            Stop::Better(why) => {
                // If the better one does not answer, it is given up and this one (not
                // avoided) is taken again.
                tracing::info!(
                    chain = &*chain,
                    upstream = &*upstream,
                    reason = %why,
                    "moving the head source back to a better tier"
                );
                backoff = MIN_BACKOFF;
                continue;
            }
            Stop::Failed(why) => why,
        };
        if live_for.is_some() {
            tracing::warn!(
                chain = &*chain,
                upstream = &*upstream,
                reason = %why,
                "stopped following heads over this upstream's WebSocket; polling until another is followed"
            );
        } else {
            tracing::debug!(
                chain = &*chain,
                upstream = &*upstream,
                reason = %why,
                "could not follow heads over this upstream's WebSocket"
            );
        }
        avoided.insert(upstream, Instant::now());
        // A source that served a while is replaced at once; failures in a row back off.
        if live_for.is_some_and(|t| t >= STEADY) {
            backoff = MIN_BACKOFF;
            continue;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The answer to the `eth_subscribe` call, or a notification.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<NotificationParams<'a>>,
}

#[derive(Deserialize)]
struct NotificationParams<'a> {
    #[serde(borrow)]
    subscription: &'a str,
    #[serde(borrow)]
    result: &'a RawValue,
}

/// Why an upstream subscription could not be made.
#[derive(Debug, Clone)]
pub(super) enum Refusal {
    /// The upstream answered `eth_subscribe` with this JSON-RPC error object.
    Upstream(String),
    /// The connection or the call failed (redacted).
    Failed(String),
}

/// Opens `upstream`'s WebSocket and calls `eth_subscribe` with `params` (a JSON array):
/// the socket and the upstream's subscription id.
pub(super) async fn open(
    source: &dyn Source,
    chain: &str,
    upstream: &str,
    params: &str,
) -> Result<(UpstreamSocket, String), Refusal> {
    let mut ws = source
        .connect_ws(chain, upstream)
        .await
        .map_err(Refusal::Failed)?;
    let subscribe =
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":{params}}}"#);
    if let Err(e) = ws.send(Message::text(subscribe)).await {
        return Err(Refusal::Failed(format!("sending eth_subscribe: {e}")));
    }
    let answer = async {
        while let Some(frame) = ws.next().await {
            let text = match frame {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => {
                    return Err(Refusal::Failed(format!(
                        "reading the eth_subscribe answer: {e}"
                    )))
                }
            };
            let Ok(m) = serde_json::from_str::<Incoming<'_>>(&text) else {
                continue;
            };
            if m.id != Some(1) {
                continue;
            }
            if let Some(e) = m.error {
                return Err(Refusal::Upstream(e.get().to_owned()));
            }
            return match m.result.map(|r| serde_json::from_str::<String>(r.get())) {
                Some(Ok(id)) => Ok(id),
                _ => Err(Refusal::Failed(
                    "eth_subscribe answered without a subscription id".into(),
                )),
            };
        }
        Err(Refusal::Failed(
            "the WebSocket closed before eth_subscribe was answered".into(),
        ))
    };
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, answer).await {
        Ok(Ok(id)) => Ok((ws, id)),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(Refusal::Failed(
            "eth_subscribe was not answered in time".into(),
        )),
    }
}

/// The best of `candidates` not given up lately; else the one given up longest ago.
pub(super) fn pick(
    candidates: &[Arc<str>],
    avoided: &HashMap<Arc<str>, Instant>,
) -> Option<Arc<str>> {
    candidates
        .iter()
        .find(|u| !avoided.contains_key(*u))
        .or_else(|| candidates.iter().min_by_key(|u| avoided.get(*u)))
        .cloned()
}

/// Why a feed stopped following an upstream.
#[derive(Debug)]
pub(super) enum Stop {
    /// It failed (or was given up) for this reason.
    Failed(String),
    /// An upstream of a better tier is usable again.
    Better(String),
}

/// An upstream of a lower tier than `upstream`'s among `candidates` (best first) that has not
/// been given up within [`AVOID`], if any.
pub(super) fn better_tier(
    source: &dyn Source,
    chain: &str,
    upstream: &str,
    candidates: &[Arc<str>],
    avoided: &HashMap<Arc<str>, Instant>,
) -> Option<Arc<str>> {
    let tier = source.tier(chain, upstream)?;
    candidates
        .iter()
        .take_while(|u| &***u != upstream)
        .find(|u| {
            source.tier(chain, u).is_some_and(|t| t < tier)
                && avoided.get(*u).is_none_or(|at| at.elapsed() >= AVOID)
        })
        .cloned()
}

/// Follows heads over `upstream`'s WebSocket until it fails or a better tier is usable again
/// (`avoided`: upstreams given up lately, not to be returned to yet); returns why it stopped.
async fn follow_one(
    source: &dyn Source,
    tracker: &Tracker,
    upstream: &Arc<str>,
    heads: &watch::Sender<Option<Block>>,
    give_up: &mut watch::Receiver<Option<String>>,
    avoided: &HashMap<Arc<str>, Instant>,
) -> Stop {
    let chain = &*tracker.chain;
    let (ws, id) = match open(source, chain, upstream, r#"["newHeads"]"#).await {
        Ok(opened) => opened,
        Err(Refusal::Failed(why)) => return Stop::Failed(why),
        Err(Refusal::Upstream(e)) => {
            return Stop::Failed(format!("eth_subscribe(newHeads) failed: {e}"))
        }
    };
    let since = Instant::now();
    let better = || {
        if since.elapsed() < RETURN_AFTER {
            return None;
        }
        let candidates = source.head_sources(chain);
        better_tier(source, chain, upstream, &candidates, avoided)
            .map(|u| format!("{u} is of a better tier and usable again"))
    };
    tracker.set_source(Some(upstream.clone()));
    tracing::info!(
        chain = chain,
        upstream = &**upstream,
        "following the chain's heads over this upstream's WebSocket"
    );
    relay(
        source,
        chain,
        upstream,
        ws,
        &id,
        Some(give_up),
        better,
        |result| match Block::parse(result) {
            Ok(block) => {
                tracker.stats.ws_heads.fetch_add(1, Relaxed);
                source.observe_head(chain, upstream, block.number);
                heads.send_replace(Some(block));
            }
            Err(why) => tracing::debug!(
                chain = chain,
                upstream = &**upstream,
                "a newHeads notification was not a header: {why}"
            ),
        },
    )
    .await
}

/// Hands each notification's `result` of subscription `id` on `ws` to `each` until the socket
/// fails, goes silent (no frame, no pong, for two [`PING_EVERY`]), the upstream is no longer
/// fit, `give_up` says why to stop, or `better` (asked every second) names a reason to move to
/// another upstream; returns why it stopped.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay(
    source: &dyn Source,
    chain: &str,
    upstream: &Arc<str>,
    mut ws: UpstreamSocket,
    id: &str,
    mut give_up: Option<&mut watch::Receiver<Option<String>>>,
    better: impl Fn() -> Option<String>,
    mut each: impl FnMut(&RawValue),
) -> Stop {
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_frame = Instant::now();
    let mut pinged = Instant::now();
    loop {
        let give_up_changed = async {
            match give_up.as_deref_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = ws.next() => {
                last_frame = Instant::now();
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(c))) => {
                        return Stop::Failed(match c {
                            Some(c) => format!("the upstream closed the WebSocket ({}: {})", c.code, c.reason),
                            None => "the upstream closed the WebSocket".into(),
                        });
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Stop::Failed(format!("WebSocket error: {e}")),
                    None => return Stop::Failed("the WebSocket closed".into()),
                };
                let Ok(m) = serde_json::from_str::<Incoming<'_>>(&text) else {
                    continue;
                };
                if let Some(p) = m.params.filter(|p| p.subscription == id) {
                    each(p.result);
                }
            }
            _ = check.tick() => {
                if !source.head_sources(chain).contains(upstream) {
                    return Stop::Failed("it is no longer fit to serve (ejected, cordoned or removed)".into());
                }
                if last_frame.elapsed() >= 2 * PING_EVERY {
                    return Stop::Failed(format!("silent for {} s: no notifications, no pong", last_frame.elapsed().as_secs()));
                }
                if let Some(why) = better() {
                    let _ = ws.close(None).await;
                    return Stop::Better(why);
                }
                if last_frame.elapsed() >= PING_EVERY && pinged.elapsed() >= PING_EVERY {
                    pinged = Instant::now();
                    if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                        return Stop::Failed(format!("WebSocket error: {e}"));
                    }
                }
            }
            true = give_up_changed => {
                let why = give_up.as_deref_mut().and_then(|rx| rx.borrow_and_update().clone());
                if let Some(why) = why {
                    let _ = ws.close(None).await;
                    return Stop::Failed(why);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FiltersConfig, TrackerConfig};
    use crate::follow::CallFuture;

    /// Upstreams `a`, `b` (tier 0), `c` (tier 1), `d` (tier 2).
    struct Tiers;

    impl Source for Tiers {
        fn call<'a>(&'a self, _: &'a str, _: &'static str, _: String) -> CallFuture<'a> {
            unreachable!("not called")
        }
        fn settings(&self) -> Option<(TrackerConfig, FiltersConfig)> {
            None
        }
        fn tier(&self, _: &str, upstream: &str) -> Option<u32> {
            match upstream {
                "a" | "b" => Some(0),
                "c" => Some(1),
                "d" => Some(2),
                _ => None,
            }
        }
    }

    #[test]
    fn a_better_tier_takes_over_only_when_not_given_up_lately() {
        let names = |v: &[&str]| -> Vec<Arc<str>> { v.iter().map(|&s| Arc::from(s)).collect() };
        let none = HashMap::new();
        let better = |current: &str, candidates: &[&str], avoided: &HashMap<Arc<str>, Instant>| {
            better_tier(&Tiers, "x", current, &names(candidates), avoided).map(|u| u.to_string())
        };
        // The best of a better tier, first in the ranking.
        assert_eq!(
            better("d", &["b", "a", "c", "d"], &none).as_deref(),
            Some("b")
        );
        assert_eq!(better("d", &["c", "d"], &none).as_deref(), Some("c"));
        // The same tier ranked ahead (a latency estimate) is no reason to move.
        assert_eq!(better("a", &["b", "a", "c"], &none), None);
        assert_eq!(better("c", &["c", "a"], &none), None, "ranked behind");
        assert_eq!(better("c", &["c"], &none), None);
        // One given up lately waits out AVOID; another of a better tier may take over.
        let lately: HashMap<Arc<str>, Instant> = [(Arc::from("b"), Instant::now())].into();
        assert_eq!(better("c", &["b", "a", "c"], &lately).as_deref(), Some("a"));
        assert_eq!(better("c", &["b", "c"], &lately), None);
        let long_ago: HashMap<Arc<str>, Instant> =
            [(Arc::from("b"), Instant::now() - AVOID)].into();
        assert_eq!(better("c", &["b", "c"], &long_ago).as_deref(), Some("b"));
        // An upstream whose tier is unknown (removed) is not moved from by this rule.
        assert_eq!(better("gone", &["a", "gone"], &none), None);
    }
}
