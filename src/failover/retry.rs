//! Failover: the calls of one client request go to one upstream (as a batch when there are
//! several); whatever that upstream could not answer goes to the next one, until every call has
//! an answer, the chain's `max_attempts` upstreams were tried, or the request's deadline passed.
//!
//! Safety, per call:
//! - A read is retried after any provider trouble: connect failure, timeout, broken connection,
//!   HTTP 429/5xx, a body that is not JSON-RPC, or a JSON-RPC error the taxonomy
//!   ([`crate::rpc::classify`]) calls the provider's trouble.
//! - A write ([`MethodKind::Write`](crate::method::kind::MethodKind::Write)), or a method detour does not know
//!   ([`MethodKind::Unknown`](crate::method::kind::MethodKind::Unknown), unless `methods.reads` declares it a read), is retried only when
//!   the failure proves the upstream never acted on it (connect, DNS or TLS failure, HTTP 429,
//!   or a JSON-RPC error that declines it: method not served there, rate limited). Any other
//!   failure is reported to the client, never resent. These are never hedged.
//! - A deterministic JSON-RPC error (execution reverted, invalid params, …) is the answer; but
//!   "already known" for a raw transaction after a retry means it is in a mempool: its hash is
//!   the answer.
//! - A `null` block, transaction or receipt from an upstream behind the chain head is retried on
//!   another upstream (and returned only when no other upstream answers).
//!
//! Hedging: when every pending call is a read and the attempt in flight has not answered within
//! the hedge delay (twice that upstream's latency estimate, clamped to the chain's
//! `hedge.min_delay..=hedge.max_delay`), the same calls go to a second upstream, in another
//! region when one is usable. The first useful answer wins; the other attempt is dropped, and a
//! dropped attempt never counts as a failure (its wait is recorded as a latency sample).
//! Retries and hedges avoid the regions of attempts that failed or stalled.
//!
//! Upstream health follows each completed attempt: a connect failure, rate limit or rejected key
//! ejects the upstream at once; timeouts, 5xx and malformed answers are soft failures (a latency
//! penalty, and an ejection after a run of them); an answer is a success that lifts any
//! cool-down.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use smallvec::SmallVec;
use tokio::time::Instant;

use crate::client::forward::{Failure, Forwarder};
use crate::client::stream::StreamOffer;
use crate::method::block::{self, Archive, Need};
use crate::method::kind;
use crate::rpc::classify::{Class, Penalty};
use crate::rpc::error::{self, AttemptNote};
use crate::rpc::jsonrpc::Call;
use crate::select::balance::{self, Want};
use crate::state::metrics::{AttemptOutcome, Metrics};
use crate::state::pool::Chain;
use crate::state::quota::Take;
use crate::state::upstream::{now_us, us_at, Upstream};

use super::attempt::{attempt, Got};
use super::broadcast::{broadcast, is_already_known, tx_hash};
use super::health::{describe_rpc_error, record_health, severity};

/// The answer to one call: raw JSON of a result or of an error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// A `result` value, verbatim.
    Result(Bytes),
    /// An `error` object, verbatim.
    Error(Bytes),
}

/// One entry per call: inline for the common single call (no allocation), on the heap for
/// batches.
pub type PerCall<T> = SmallVec<[T; 1]>;

/// A few indices (calls of a chunk, upstreams tried or excluded, regions): inline up to 4.
pub type Indices = SmallVec<[usize; 4]>;

/// What [`failover`] did, for logs and response headers.
#[derive(Debug, Default)]
pub struct Report {
    /// Upstreams that answered at least one call, in order.
    pub answered_by: PerCall<Arc<str>>,
    /// Attempts that failed, in order.
    pub failures: Vec<AttemptNote>,
    /// Number of upstreams tried (hedges included).
    pub attempts: usize,
    /// Hedged attempts started.
    pub hedges: usize,
    /// Calls (indices) that got detour's own error: no upstream could answer, or a write
    /// failed where it may have been received.
    pub failed_calls: Vec<usize>,
    /// When the last attempt to finish ended (none when nothing was tried).
    pub finished: Option<Instant>,
}

/// What came back for one chunk of calls (indices into the request's calls).
type ChunkResult = (Indices, Result<PerCall<Got>, Failure>);

/// A finished attempt: the upstream, how long it took, and per chunk of calls what came back.
struct Done {
    upstream: usize,
    elapsed: Duration,
    /// When the attempt ended.
    finished: Instant,
    results: PerCall<ChunkResult>,
}

type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Done> + Send + 'a>>;

/// Forwards `calls` to the chain's upstreams with failover; returns one answer per call.
pub async fn failover(
    fwd: &Forwarder,
    metrics: &Metrics,
    chain: &Chain,
    calls: &[&Call<'_>],
    deadline: Instant,
) -> (PerCall<CallResult>, Report) {
    failover_from(fwd, metrics, chain, calls, Instant::now(), deadline, None).await
}

/// [`failover`] for calls that arrived at `now` (a clock read taken a moment ago, which the
/// first attempt takes as its start instead of reading the clock again). With an `offer`
/// (one read call), an attempt may stream a large result: the call's answer is then
/// [`crate::client::stream::STREAMED`] and the stream is in the offer.
pub(crate) async fn failover_from(
    fwd: &Forwarder,
    metrics: &Metrics,
    chain: &Chain,
    calls: &[&Call<'_>],
    now: Instant,
    deadline: Instant,
    offer: Option<&StreamOffer>,
) -> (PerCall<CallResult>, Report) {
    // The first pass takes the calls' arrival as "now"; later ones read the clock.
    let mut arrived = Some(now);
    if let [call] = calls {
        if chain.broadcast_raw_transactions && call.method == "eth_sendRawTransaction" {
            return broadcast(fwd, metrics, chain, call, deadline).await;
        }
    }
    let n = calls.len();
    let mut answers: PerCall<Option<CallResult>> = SmallVec::from_elem(None, n);
    // What each pending call got on its latest attempt that is worth returning if nothing
    // better comes: a provider-trouble error, or a `null` from an upstream that was behind.
    let mut fallback: PerCall<Option<CallResult>> = SmallVec::from_elem(None, n);
    // Plain loops rather than collects: one call nearly always, and SmallVec's collect costs
    // more than the work.
    let mut writes: SmallVec<[bool; 8]> = SmallVec::new();
    let mut pending = Indices::new();
    for (i, c) in calls.iter().enumerate() {
        // Writes and methods detour does not know: one upstream at a time.
        writes.push(!chain.may_repeat(&c.method));
        pending.push(i);
    }
    // Which block the calls need matters only while some upstream is behind the chain head;
    // otherwise every upstream is fresh and the params need not be looked into.
    let mut need = if chain.state.heads_differ() {
        calls
            .iter()
            .fold(Need::default(), |acc, c| acc.merge(block::need(c)))
    } else {
        Need {
            latest: true,
            min_block: 0,
        }
    };
    // Archive nodes for old state, the others for the rest, on chains that have both.
    let archive = match chain.archive_routing() {
        true => archive_need(chain, calls),
        false => Archive::Any,
    };
    let mut tried = Indices::new();
    let mut exclude = Indices::new();
    if chain.any_unsupported {
        // Upstreams that do not serve one of these methods are not asked (unless none does).
        let cannot: Indices = (0..chain.upstreams.len())
            .filter(|&u| {
                calls
                    .iter()
                    .any(|c| !chain.upstreams[u].supports(&c.method))
            })
            .collect();
        if cannot.len() < chain.upstreams.len() {
            exclude = cannot;
        }
    }
    let mut avoid_regions = Indices::new();
    let mut throttled = Throttled::default();
    let mut report = Report::default();
    // Created when a second attempt may run alongside the first (a hedge): a lone attempt
    // is awaited directly, with no set, box or timer.
    let mut inflight: Option<FuturesUnordered<AttemptFuture<'_>>> = None;
    // When the newest attempt in flight started, and its upstream (for the hedge delay).
    let mut newest: Option<(Instant, usize)> = None;

    loop {
        if pending.is_empty() {
            break;
        }
        let now = arrived.take().unwrap_or_else(Instant::now);
        if now >= deadline {
            break;
        }
        // A hedge needs someone left to hedge to: otherwise no timer is armed (a timer per
        // request costs a timer-wheel entry and, being the runtime's earliest, a wake-up of
        // its driver).
        let may_hedge = |tried: &[usize], exclude: &[usize], pending: &[usize]| {
            chain.hedge.enabled
                && tried.len() < chain.max_attempts
                && exclude.len() < chain.upstreams.len()
                && pending.iter().all(|&i| !writes[i])
        };
        if inflight.as_ref().is_none_or(FuturesUnordered::is_empty) {
            if tried.len() >= chain.max_attempts {
                break;
            }
            let Some(ui) = pick(
                metrics,
                chain,
                need,
                archive,
                &mut exclude,
                &avoid_regions,
                us_at(now),
                calls,
                &pending,
                &mut throttled,
            ) else {
                // Every upstream left is at its quota: wait for room, within the deadline.
                // Boxed: its timer stays out of this future, which every request builds
                // (about 70 instructions a request, callgrind), while waiting is rare.
                if Box::pin(throttled.wait(&mut exclude, deadline)).await {
                    continue;
                }
                break;
            };
            tried.push(ui);
            if !may_hedge(&tried, &exclude, &pending) {
                // This attempt alone decides: await it right here.
                let sent = pending.clone();
                let done = run_attempt(
                    fwd, metrics, chain, ui, calls, &writes, sent, now, deadline, offer,
                )
                .await;
                process(
                    metrics,
                    chain,
                    calls,
                    &writes,
                    archive,
                    done,
                    &mut answers,
                    &mut fallback,
                    &mut report,
                    &mut avoid_regions,
                    &mut need,
                    tried.len() > 1,
                );
                pending.retain(|i| answers[*i].is_none());
                continue;
            }
            inflight
                .get_or_insert_with(FuturesUnordered::new)
                .push(launch(
                    fwd, metrics, chain, ui, calls, &writes, &pending, now, deadline, offer,
                ));
            newest = Some((now, ui));
        }
        let inflight = inflight.get_or_insert_with(FuturesUnordered::new);
        let hedge_at = newest
            .filter(|_| inflight.len() == 1 && may_hedge(&tried, &exclude, &pending))
            .map(|(started, ui)| started + hedge_delay(chain, ui));
        let hedge_sleep = async {
            match hedge_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some(done) = inflight.next() => {
                process(metrics, chain, calls, &writes, archive, done, &mut answers, &mut fallback,
                        &mut report, &mut avoid_regions, &mut need, tried.len() > 1);
                pending.retain(|i| answers[*i].is_none());
                if inflight.is_empty() {
                    newest = None;
                } else if !pending.is_empty() && tried.len() < chain.max_attempts {
                    // What failed was the hedge of an attempt that is still stalled: fail
                    // over to the next upstream now rather than after another hedge delay.
                    let now = Instant::now();
                    if let Some(ui) = pick(metrics, chain, need, archive, &mut exclude, &avoid_regions, us_at(now), calls, &pending, &mut throttled) {
                        tried.push(ui);
                        inflight.push(launch(fwd, metrics, chain, ui, calls, &writes, &pending, now, deadline, offer));
                        newest = Some((now, ui));
                    }
                }
            }
            () = hedge_sleep => {
                let Some((_, stalled)) = newest else { continue };
                let region = chain.upstreams[stalled].region_id;
                if !avoid_regions.contains(&region) {
                    avoid_regions.push(region);
                }
                let now = Instant::now();
                match pick(metrics, chain, need, archive, &mut exclude, &avoid_regions, us_at(now), calls, &pending, &mut throttled) {
                    Some(ui) => {
                        tried.push(ui);
                        report.hedges += 1;
                        tracing::debug!(chain = &*chain.name, stalled = &*chain.upstreams[stalled].name,
                            hedge = &*chain.upstreams[ui].name, "hedging a slow read");
                        inflight.push(launch(fwd, metrics, chain, ui, calls, &writes, &pending, now, deadline, offer));
                        newest = Some((now, ui));
                    }
                    // Nobody to hedge to: wait for the attempt in flight.
                    None => newest = None,
                }
            }
            // No deadline branch: every attempt's own timeout ends by the deadline.
        }
    }
    // Attempts still in flight lost the race (or the deadline passed): dropped, not failures.
    drop(inflight);
    report.attempts = tried.len();

    if !pending.is_empty() {
        if tried.is_empty() {
            // Nothing could be tried: say why (every upstream is on the wrong chain, or
            // cordoned by an operator).
            for up in chain.upstreams.iter().filter(|u| u.quarantined()) {
                let reason = if up.state.cordoned() {
                    "cordoned by an operator".to_string()
                } else {
                    format!(
                        "quarantined: on the wrong chain (expected {}, got {})",
                        chain.chain_id,
                        up.state.reported_chain_id()
                    )
                };
                report.failures.push(AttemptNote {
                    upstream: up.name.clone(),
                    reason,
                });
            }
        }
        let timed_out = Instant::now() >= deadline;
        let failed = if tried.is_empty() && !throttled.list.is_empty() {
            report.failures = throttled.notes(chain, now_us());
            error::over_quota(&report.failures)
        } else {
            report.failures.extend(throttled.notes(chain, now_us()));
            error::all_failed(&report.failures, timed_out)
        };
        for &i in &pending {
            answers[i] = Some(match fallback[i].take() {
                Some(a) => a,
                None => {
                    report.failed_calls.push(i);
                    CallResult::Error(failed.clone())
                }
            });
        }
    }
    let mut out = PerCall::with_capacity(n);
    for a in answers {
        out.push(a.unwrap_or_else(|| CallResult::Error(error::all_failed(&[], false))));
    }
    (out, report)
}

/// Where the calls' state is read: old if any call's is.
#[inline(never)]
fn archive_need(chain: &Chain, calls: &[&Call<'_>]) -> Archive {
    let head = chain.state.head();
    let old = calls
        .iter()
        .any(|c| block::archive_need(c, head, chain.archive_depth) == Archive::Old);
    if old {
        Archive::Old
    } else {
        Archive::Recent
    }
}

/// Upstreams a request skipped because their quota had no room, and when the first of them
/// has room again.
#[derive(Debug, Default)]
pub(super) struct Throttled {
    /// The upstreams skipped (in `exclude` too, until the request waits for room).
    list: Indices,
    /// When the first has room (µs, [`now_us`]); `u64::MAX`: none ever will (too large).
    room_at: u64,
}

impl Throttled {
    /// Waits until an upstream skipped for its quota has room, if that comes before
    /// `deadline`, and takes the skipped ones out of `exclude`. `false`: waiting is no use.
    async fn wait(&mut self, exclude: &mut Indices, deadline: Instant) -> bool {
        if self.list.is_empty() || self.room_at == u64::MAX {
            return false;
        }
        let now = Instant::now();
        let wait = Duration::from_micros(self.room_at.saturating_sub(us_at(now)));
        if now + wait >= deadline {
            return false;
        }
        tokio::time::sleep(wait).await;
        exclude.retain(|i| !self.list.contains(i));
        self.list.clear();
        true
    }

    /// Why the skipped upstreams were not tried, for the error.
    fn notes(&self, chain: &Chain, now: u64) -> Vec<AttemptNote> {
        self.list
            .iter()
            .map(|&i| {
                let up = &chain.upstreams[i];
                let u = up.state.quota.usage(now, up.limits);
                let mut reason = String::from("over its quota (");
                if let Some(r) = u.max_rps {
                    reason.push_str(&format!("{} of {r} calls per second", u.calls));
                }
                if let Some(c) = u.compute_units_per_second {
                    if u.max_rps.is_some() {
                        reason.push_str(", ");
                    }
                    reason.push_str(&format!(
                        "{} of {c} compute units per second",
                        u.compute_units
                    ));
                }
                if u.lowered {
                    reason.push_str(", lowered after a 429");
                }
                reason.push(')');
                AttemptNote {
                    upstream: up.name.clone(),
                    reason,
                }
            })
            .collect()
    }
}

/// Selects the next upstream, takes its admission (one trial at a time while half-open) and
/// room in its quota for the `pending` calls (an upstream without room is skipped and noted in
/// `throttled`); `now` in [`now_us`] microseconds.
#[allow(clippy::too_many_arguments)]
pub(super) fn pick(
    metrics: &Metrics,
    chain: &Chain,
    need: Need,
    archive: Archive,
    exclude: &mut Indices,
    avoid_regions: &[usize],
    now: u64,
    calls: &[&Call<'_>],
    pending: &[usize],
    throttled: &mut Throttled,
) -> Option<usize> {
    loop {
        let want = Want {
            exclude,
            latest: need.latest,
            min_block: need.min_block,
            avoid_regions,
            archive,
        };
        let ui = balance::select(chain, now, &want)?;
        exclude.push(ui);
        let up = &chain.upstreams[ui];
        if !up.state.admit(now, up.timeout) {
            tracing::trace!(
                upstream = &*up.name,
                "half-open: a trial request is already in flight"
            );
            continue;
        }
        let cu = pending.iter().map(|&i| up.costs.of(&calls[i].method)).sum();
        match up.take_quota(now, pending.len() as u32, cu) {
            Take::Go => {
                up.metrics
                    .compute_units(metrics, &chain.name, &up.name, u64::from(cu));
                return Some(ui);
            }
            Take::Wait(at) => {
                if throttled.list.is_empty() || at < throttled.room_at {
                    throttled.room_at = at;
                }
                throttled.list.push(ui);
            }
            Take::Never => {
                if throttled.list.is_empty() {
                    throttled.room_at = u64::MAX;
                }
                throttled.list.push(ui);
            }
        }
        up.metrics.throttled(metrics, &chain.name, &up.name);
    }
}

/// The hedge delay after an attempt to upstream `ui` started.
fn hedge_delay(chain: &Chain, ui: usize) -> Duration {
    let est = chain.upstreams[ui].state.latency().saturating_mul(2);
    est.clamp(chain.hedge.min_delay, chain.hedge.max_delay)
}

#[allow(clippy::too_many_arguments)]
fn launch<'a>(
    fwd: &'a Forwarder,
    metrics: &'a Metrics,
    chain: &'a Chain,
    ui: usize,
    calls: &'a [&'a Call<'a>],
    once: &'a [bool],
    pending: &[usize],
    started: Instant,
    deadline: Instant,
    offer: Option<&'a StreamOffer>,
) -> AttemptFuture<'a> {
    Box::pin(run_attempt(
        fwd,
        metrics,
        chain,
        ui,
        calls,
        once,
        Indices::from_slice(pending),
        started,
        deadline,
        offer,
    ))
}

/// One attempt, begun at `started` (the caller's clock read, taken just before): the pending
/// calls (`sent`) to upstream `ui`, in chunks of its batch limit. `once[i]`: call `i` must not
/// reach an upstream twice (a write, or a method detour does not know).
#[allow(clippy::too_many_arguments)]
async fn run_attempt<'a>(
    fwd: &'a Forwarder,
    metrics: &'a Metrics,
    chain: &'a Chain,
    ui: usize,
    calls: &'a [&'a Call<'a>],
    once: &'a [bool],
    sent: Indices,
    started: Instant,
    deadline: Instant,
    offer: Option<&'a StreamOffer>,
) -> Done {
    {
        let up = &chain.upstreams[ui];
        // The clock is read once, at the end of an attempt; its start is the caller's.
        let timeout = up.timeout.min(deadline.saturating_duration_since(started));
        let size = up.max_batch_len.unwrap_or(usize::MAX);
        let mut guard = Cancelled {
            metrics,
            chain,
            up,
            started,
            done: false,
        };
        let results = if sent.len() <= size {
            // One chunk (the common case): no chunk lists to build.
            let repeatable = sent.iter().all(|&i| !once[i]);
            let offer = offer.map(|o| (o, metrics, &*chain.name));
            let r = attempt(fwd, up, calls, &sent, started, timeout, repeatable, offer).await;
            smallvec::smallvec![(sent, r)]
        } else {
            let chunks: Vec<Indices> = sent.chunks(size).map(Indices::from_slice).collect();
            // Boxed: rare, and it would make the common one-chunk future larger.
            let outcomes = Box::pin(join_all(chunks.iter().map(|chunk| {
                let repeatable = chunk.iter().all(|&i| chain.may_repeat(&calls[i].method));
                attempt(fwd, up, calls, chunk, started, timeout, repeatable, None)
            })))
            .await;
            chunks.into_iter().zip(outcomes).collect()
        };
        // The chunks ran side by side: the attempt took as long as the slowest.
        let finished = Instant::now();
        guard.done = true;
        Done {
            upstream: ui,
            elapsed: finished.saturating_duration_since(started),
            finished,
            results,
        }
    }
}

/// Records the wait of an attempt dropped before it finished (a lost hedge race) as a latency
/// sample, never as a failure.
struct Cancelled<'a> {
    metrics: &'a Metrics,
    chain: &'a Chain,
    up: &'a Upstream,
    started: Instant,
    done: bool,
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.up
                .state
                .record_cancelled(now_us(), self.started.elapsed());
            self.up.metrics.attempt(
                self.metrics,
                &self.chain.name,
                &self.up.name,
                AttemptOutcome::Cancelled,
                None,
            );
        }
    }
}

/// Folds a finished attempt into the answers, the report and the upstream's health.
#[allow(clippy::too_many_arguments)]
fn process(
    metrics: &Metrics,
    chain: &Chain,
    calls: &[&Call<'_>],
    writes: &[bool],
    archive: Archive,
    done: Done,
    answers: &mut [Option<CallResult>],
    fallback: &mut [Option<CallResult>],
    report: &mut Report,
    avoid_regions: &mut Indices,
    need: &mut Need,
    retried: bool,
) {
    let ui = done.upstream;
    let up = &chain.upstreams[ui];
    report.finished = Some(done.finished);
    let now = us_at(done.finished);
    // How far behind the chain head this upstream is, when both are known and it is behind.
    let behind_by = up
        .state
        .head()
        .zip(chain.state.head())
        .and_then(|(h, c)| c.checked_sub(h))
        .filter(|&d| d > 0);
    let behind = behind_by.is_some();
    let mut worst: Option<Failure> = None;
    // Calls answered, calls whose trouble says the upstream is unwell, any rate limit.
    let (mut answered, mut unhealthy, mut rate_limited) = (0usize, 0usize, false);
    let mut rpc_trouble: Option<String> = None;
    // Calls whose final answer came from this upstream.
    let mut settled = 0usize;
    // The failure was the request's doing, not the upstream's: an answer over the size limit,
    // or a heavy call (a trace, a wide log query) that ran out of time.
    let mut excused = false;
    for (chunk, result) in done.results {
        match result {
            Err(failure) => {
                let note = AttemptNote {
                    upstream: up.name.clone(),
                    reason: failure.to_string(),
                };
                excused |= matches!(failure, Failure::TooLarge(_))
                    || (matches!(failure, Failure::Timeout)
                        && chunk.iter().any(|&i| kind::heavy(&calls[i].method)));
                for &i in &chunk {
                    if answers[i].is_some() {
                        continue;
                    }
                    if writes[i] && !failure.never_processed() {
                        answers[i] = Some(CallResult::Error(error::write_not_retried(
                            &calls[i].method,
                            &note,
                        )));
                        report.failed_calls.push(i);
                    } else if matches!(fallback[i], Some(CallResult::Error(_))) {
                        // The final error will list every attempt, this one included; a `null`
                        // from an upstream that was behind is kept: it is still an answer.
                        fallback[i] = None;
                    }
                }
                if worst
                    .as_ref()
                    .is_none_or(|w| severity(&failure) > severity(w))
                {
                    worst = Some(failure);
                }
            }
            Ok(got) => {
                for (&i, g) in chunk.iter().zip(got) {
                    if answers[i].is_some() {
                        // A hedge already answered this call.
                        continue;
                    }
                    let method = &*calls[i].method;
                    match g {
                        Got::Result(r) => {
                            if behind
                                && r.as_ref() == b"null"
                                && block::null_may_mean_behind(method)
                            {
                                // This upstream may just not have it yet: ask one that is up to date.
                                fallback[i] = Some(CallResult::Result(r));
                                rpc_trouble.get_or_insert_with(|| {
                                    format!(
                                        "null from an upstream {} blocks behind",
                                        behind_by.unwrap_or(0)
                                    )
                                });
                                answered += 1;
                                continue;
                            }
                            answered += 1;
                            settled += 1;
                            if archive == Archive::Old
                                && up.archive.is_none()
                                && block::reads_state(method)
                            {
                                // It answered about old state: it keeps it.
                                up.state.learn_archive(true);
                            }
                            let r = if method == "eth_blockNumber" {
                                block_number(chain, ui, r, now)
                            } else {
                                if let Some(block) = block::proven_block(method, &r) {
                                    chain.observe_has_block(ui, now, block);
                                }
                                r
                            };
                            answers[i] = Some(CallResult::Result(r));
                        }
                        Got::Error(e, Class::Deterministic) => {
                            answered += 1;
                            settled += 1;
                            let known = (retried || chain.broadcast_raw_transactions)
                                && method == "eth_sendRawTransaction"
                                && is_already_known(&e);
                            answers[i] = Some(match known.then(|| tx_hash(calls[i])).flatten() {
                                Some(hash) => CallResult::Result(hash),
                                None => CallResult::Error(e),
                            });
                        }
                        Got::Error(e, Class::Trouble(penalty)) => {
                            unhealthy += usize::from(penalty == Penalty::Unhealthy);
                            if penalty == Penalty::Unhealthy && up.archive.is_none() {
                                learn_pruned(chain, up, &e);
                            }
                            rate_limited |= penalty == Penalty::RateLimited;
                            if penalty == Penalty::NotYet {
                                // Whoever has no higher head than this one likely lacks the
                                // block too: the next pick looks above it first.
                                if let Some(head) = up.state.head() {
                                    need.min_block = need.min_block.max(head + 1);
                                }
                            }
                            if rpc_trouble.is_none() {
                                rpc_trouble = Some(describe_rpc_error(up, &e));
                            }
                            let declined = matches!(
                                penalty,
                                Penalty::Unsupported | Penalty::RateLimited | Penalty::NotYet
                            );
                            if writes[i] && !declined {
                                // It may have acted on it (an internal error, say): its
                                // answer stands.
                                answers[i] = Some(CallResult::Error(e));
                            } else {
                                // A read, or a call declined without being acted on (method
                                // not served here, rate limited): another upstream may serve it.
                                fallback[i] = Some(CallResult::Error(e));
                            }
                        }
                        Got::Missing => {
                            unhealthy += 1;
                            let failure =
                                Failure::Malformed("a call got no answer in the batch response");
                            rpc_trouble.get_or_insert_with(|| failure.to_string());
                            if writes[i] {
                                let note = AttemptNote {
                                    upstream: up.name.clone(),
                                    reason: failure.to_string(),
                                };
                                answers[i] = Some(CallResult::Error(error::write_not_retried(
                                    &calls[i].method,
                                    &note,
                                )));
                                report.failed_calls.push(i);
                            }
                        }
                    }
                }
            }
        }
    }
    let outcome = record_health(
        chain,
        ui,
        now,
        worst.as_ref(),
        done.elapsed,
        answered,
        unhealthy,
        rate_limited,
        excused,
    );
    let seconds = (outcome == AttemptOutcome::Success).then_some(done.elapsed.as_secs_f64());
    up.metrics
        .attempt(metrics, &chain.name, &up.name, outcome, seconds);
    let trouble = worst.as_ref().map(ToString::to_string).or(rpc_trouble);
    if let Some(reason) = trouble {
        if !avoid_regions.contains(&up.region_id) {
            avoid_regions.push(up.region_id);
        }
        report.failures.push(AttemptNote {
            upstream: up.name.clone(),
            reason,
        });
    }
    if settled > 0 {
        report.answered_by.push(up.name.clone());
    }
}

/// An upstream that says the state asked for is gone is not an archive node: from now on the
/// chain routes old state elsewhere first.
#[cold]
fn learn_pruned(chain: &Chain, up: &Upstream, error: &[u8]) {
    let e = crate::rpc::error::RpcError::from_object(error);
    if crate::rpc::classify::state_missing(&e.message) && up.keeps_old_state() != Some(false) {
        tracing::info!(
            chain = &*chain.name,
            upstream = &*up.name,
            "upstream does not keep old state: calls about old state go to others first"
        );
        up.state.learn_archive(false);
        chain.state.archive_learned();
    }
}

/// An `eth_blockNumber` answer: the upstream's head, and the chain's answers never go backwards.
fn block_number(chain: &Chain, ui: usize, raw: Bytes, now: u64) -> Bytes {
    let text = std::str::from_utf8(&raw).unwrap_or("");
    let Some(n) = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(block::parse_quantity)
    else {
        return raw;
    };
    chain.observe_head(ui, now, n);
    // Only upstreams verified to be on this chain feed the number answers never go below;
    // an unverified one's answer is lifted to it like any other.
    let served = if chain.upstreams[ui].state.chain_check() == crate::state::upstream::CHAIN_OK {
        chain.state.monotonic_block(n)
    } else {
        n.max(chain.state.served_block())
    };
    if served > n {
        Bytes::from(format!("\"0x{served:x}\""))
    } else {
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_block_number_cannot_be_poisoned() {
        let toml = |extra: &str| {
            format!(
                "[chains.c]\nchain_id = 1\n[[chains.c.upstreams]]\nname = \"good\"\nurl = \"http://127.0.0.1:1\"\n{extra}"
            )
        };
        let with_liar =
            toml("[[chains.c.upstreams]]\nname = \"liar\"\nurl = \"http://127.0.0.1:2\"\n");
        let pool =
            crate::state::pool::Pool::new(crate::Config::from_toml(&with_liar).unwrap(), None)
                .unwrap();
        let c = &pool.chains[0];
        let at = |ui: usize| {
            c.upstreams
                .iter()
                .position(|u| *u.name == *["good", "liar"][ui])
                .unwrap()
        };
        let (good, liar) = (at(0), at(1));
        let answer = |ui: usize, n: &str, now: u64| {
            String::from_utf8(block_number(c, ui, Bytes::from(format!("\"{n}\"")), now).to_vec())
                .unwrap()
        };
        c.upstreams[good].state.record_chain_id(1, 1, 1);
        assert_eq!(answer(good, "0x10", 1), "\"0x10\"");
        // Not yet verified: a huge number is passed on as its own answer, but feeds nothing.
        assert_eq!(answer(liar, "0xffffffffff", 2), "\"0xffffffffff\"");
        assert_eq!(answer(good, "0x11", 3), "\"0x11\"");
        // Its low answer is lifted to the chain's, like any other.
        assert_eq!(answer(liar, "0x1", 4), "\"0x11\"");
        // Verified, then wrong: a bogus jump sticks only until the health task sees that no
        // verified upstream lately reported anything near it (here: the liar is removed by a
        // reload, which keeps the chain's state).
        c.upstreams[liar].state.record_chain_id(5, 1, 1);
        assert_eq!(answer(liar, "0xffffffffff", 6), "\"0xffffffffff\"");
        assert_eq!(answer(good, "0x12", 7), "\"0xffffffffff\"");
        let reloaded = crate::state::pool::Pool::new(
            crate::Config::from_toml(&toml("")).unwrap(),
            Some(&pool),
        )
        .unwrap();
        let c2 = &reloaded.chains[0];
        c2.recompute_head(8);
        let good2 = Bytes::from_static(b"\"0x12\"");
        assert_eq!(block_number(c2, 0, good2, 9), "\"0x12\"");
        // A step back within max_lag_blocks is not a reason to decay: answers stay monotonic.
        c2.upstreams[0].state.observe_head(10, 0x11);
        c2.recompute_head(10);
        assert_eq!(
            block_number(c2, 0, Bytes::from_static(b"\"0x11\""), 11),
            "\"0x12\""
        );
    }
}
