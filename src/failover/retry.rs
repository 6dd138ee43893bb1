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
use http::StatusCode;
use smallvec::SmallVec;
use tokio::time::Instant;

use crate::client::forward::{self, Failure, Forwarder};
use crate::client::UpstreamReply;
use crate::method::block::{self, Need};
use crate::method::kind;
use crate::rpc::classify::{self, Class, Penalty};
use crate::rpc::error::{self, AttemptNote};
use crate::rpc::jsonrpc::{self, Call};
use crate::select::balance::{self, Want};
use crate::state::metrics::{AttemptOutcome, Metrics};
use crate::state::pool::Chain;
use crate::state::upstream::{now_us, us_at, Upstream};

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

/// What one upstream said about one call.
#[derive(Debug, Clone)]
enum Got {
    Result(Bytes),
    Error(Bytes, Class),
    Missing,
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
    failover_from(fwd, metrics, chain, calls, Instant::now(), deadline).await
}

/// [`failover`] for calls that arrived at `now` (a clock read taken a moment ago, which the
/// first attempt takes as its start instead of reading the clock again).
pub(crate) async fn failover_from(
    fwd: &Forwarder,
    metrics: &Metrics,
    chain: &Chain,
    calls: &[&Call<'_>],
    now: Instant,
    deadline: Instant,
) -> (PerCall<CallResult>, Report) {
    // The first pass takes the calls' arrival as "now"; later ones read the clock.
    let mut arrived = Some(now);
    if let [call] = calls {
        if chain.broadcast_raw_transactions && call.method == "eth_sendRawTransaction" {
            return broadcast(fwd, chain, call, deadline).await;
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
            let Some(ui) = pick(chain, need, &mut exclude, &avoid_regions, us_at(now)) else {
                break;
            };
            tried.push(ui);
            if !may_hedge(&tried, &exclude, &pending) {
                // This attempt alone decides: await it right here.
                let sent = pending.clone();
                let done =
                    run_attempt(fwd, metrics, chain, ui, calls, &writes, sent, now, deadline).await;
                process(
                    metrics,
                    chain,
                    calls,
                    &writes,
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
                    fwd, metrics, chain, ui, calls, &writes, &pending, now, deadline,
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
                process(metrics, chain, calls, &writes, done, &mut answers, &mut fallback,
                        &mut report, &mut avoid_regions, &mut need, tried.len() > 1);
                pending.retain(|i| answers[*i].is_none());
                if inflight.is_empty() {
                    newest = None;
                } else if !pending.is_empty() && tried.len() < chain.max_attempts {
                    // What failed was the hedge of an attempt that is still stalled: fail
                    // over to the next upstream now rather than after another hedge delay.
                    let now = Instant::now();
                    if let Some(ui) = pick(chain, need, &mut exclude, &avoid_regions, us_at(now)) {
                        tried.push(ui);
                        inflight.push(launch(fwd, metrics, chain, ui, calls, &writes, &pending, now, deadline));
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
                match pick(chain, need, &mut exclude, &avoid_regions, us_at(now)) {
                    Some(ui) => {
                        tried.push(ui);
                        report.hedges += 1;
                        tracing::debug!(chain = &*chain.name, stalled = &*chain.upstreams[stalled].name,
                            hedge = &*chain.upstreams[ui].name, "hedging a slow read");
                        inflight.push(launch(fwd, metrics, chain, ui, calls, &writes, &pending, now, deadline));
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
        let failed = error::all_failed(&report.failures, timed_out);
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

/// `broadcast_raw_transactions`: one raw transaction goes to the selected upstream and, at the
/// same time, to the best usable upstream of every other region. The first success (a result,
/// or "already known": the transaction hash) is the answer; the other sends still complete in
/// the background so every mempool gets it. When none succeeds, the selected upstream's answer
/// is returned. Batches take the ordinary path.
async fn broadcast(
    fwd: &Forwarder,
    chain: &Chain,
    call: &Call<'_>,
    deadline: Instant,
) -> (PerCall<CallResult>, Report) {
    let mut report = Report::default();
    let mut exclude = Indices::new();
    let Some(primary) = pick(chain, block::need(call), &mut exclude, &[], now_us()) else {
        let failed = error::all_failed(&[], false);
        return (smallvec::smallvec![CallResult::Error(failed)], report);
    };
    let mut targets = vec![primary];
    let now = now_us();
    for (r, region) in chain.regions.iter().enumerate() {
        if r == chain.upstreams[primary].region_id {
            continue;
        }
        let best = region
            .members
            .iter()
            .copied()
            .filter(|&i| chain.upstreams[i].servable(now) && chain.fresh(i, now))
            .min_by(|&a, &b| {
                let (ua, ub) = (&chain.upstreams[a], &chain.upstreams[b]);
                (ua.tier, ua.cost())
                    .partial_cmp(&(ub.tier, ub.cost()))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        targets.extend(best);
    }
    let body = upstream_body(&[call], &[0]);
    let hash = tx_hash(call);
    let (tx, mut rx) = tokio::sync::mpsc::channel(targets.len());
    for &ui in &targets {
        let (fwd, up, body, tx) = (
            fwd.clone(),
            chain.upstreams[ui].clone(),
            body.clone(),
            tx.clone(),
        );
        let timeout = up
            .timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        // Detached: a send that loses the race still completes.
        tokio::spawn(async move {
            let (took, result) = send(&fwd, &up, body, timeout).await;
            let _ = tx.send((ui, took, result)).await;
        });
    }
    drop(tx);
    report.attempts = targets.len();
    let mut primary_answer: Option<CallResult> = None;
    while let Some((ui, took, result)) = rx.recv().await {
        let up = &chain.upstreams[ui];
        let got = result.and_then(|reply| read_reply(&reply, &[0]));
        let answer = match got {
            Ok(mut g) => match g.pop() {
                Some(Got::Result(r)) => {
                    up.state.record_success(now_us(), took);
                    Some(CallResult::Result(r))
                }
                Some(Got::Error(e, class)) => {
                    if class == Class::Deterministic {
                        up.state.record_success(now_us(), took);
                    }
                    match hash.clone().filter(|_| is_already_known(&e)) {
                        Some(h) => Some(CallResult::Result(h)),
                        None => {
                            report.failures.push(AttemptNote {
                                upstream: up.name.clone(),
                                reason: describe_rpc_error(up, &e),
                            });
                            if ui == primary {
                                primary_answer = Some(CallResult::Error(e));
                            }
                            None
                        }
                    }
                }
                _ => None,
            },
            Err(f) => {
                if matches!(f, Failure::Connect(_)) {
                    up.state.eject(now_us(), took, None);
                } else {
                    up.state.record_soft_failure(now_us(), took);
                }
                up.state.note_error(now_us(), &f.to_string());
                let note = AttemptNote {
                    upstream: up.name.clone(),
                    reason: f.to_string(),
                };
                // A send that never reached the upstream is no answer: the final error then
                // lists every attempt.
                if ui == primary && !f.never_processed() {
                    primary_answer = Some(CallResult::Error(error::write_not_retried(
                        &call.method,
                        &note,
                    )));
                }
                report.failures.push(note);
                None
            }
        };
        if let Some(a) = answer {
            report.answered_by.push(up.name.clone());
            return (smallvec::smallvec![a], report);
        }
    }
    let failed = || CallResult::Error(error::all_failed(&report.failures, false));
    (
        smallvec::smallvec![primary_answer.unwrap_or_else(failed)],
        report,
    )
}

/// Selects the next upstream and takes its admission (one trial at a time while half-open);
/// `now` in [`now_us`] microseconds.
fn pick(
    chain: &Chain,
    need: Need,
    exclude: &mut Indices,
    avoid_regions: &[usize],
    now: u64,
) -> Option<usize> {
    loop {
        let want = Want {
            exclude,
            latest: need.latest,
            min_block: need.min_block,
            avoid_regions,
        };
        let ui = balance::select(chain, now, &want)?;
        exclude.push(ui);
        let up = &chain.upstreams[ui];
        if up.state.admit(now, up.timeout) {
            return Some(ui);
        }
        tracing::trace!(
            upstream = &*up.name,
            "half-open: a trial request is already in flight"
        );
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
            let r = attempt(fwd, up, calls, &sent, started, timeout, repeatable).await;
            smallvec::smallvec![(sent, r)]
        } else {
            let chunks: Vec<Indices> = sent.chunks(size).map(Indices::from_slice).collect();
            // Boxed: rare, and it would make the common one-chunk future larger.
            let outcomes = Box::pin(join_all(chunks.iter().map(|chunk| {
                let repeatable = chunk.iter().all(|&i| chain.may_repeat(&calls[i].method));
                attempt(fwd, up, calls, chunk, started, timeout, repeatable)
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

fn is_already_known(error: &[u8]) -> bool {
    crate::failover::rawtx::already_known(&crate::rpc::error::RpcError::from_object(error).message)
}

/// The hash of the raw transaction in an `eth_sendRawTransaction` call, as a JSON string.
fn tx_hash(call: &Call<'_>) -> Option<Bytes> {
    let params: Vec<&str> = serde_json::from_str(call.params?.get()).ok()?;
    let hash = crate::failover::rawtx::hash(params.first()?)?;
    Some(Bytes::from(crate::failover::rawtx::hash_json(&hash)))
}

/// Which failure of a multi-chunk attempt decides the upstream's health.
fn severity(f: &Failure) -> u8 {
    match f {
        Failure::Connect(_) => 3,
        Failure::Status(s, _) if *s == StatusCode::TOO_MANY_REQUESTS => 2,
        _ => 1,
    }
}

#[allow(clippy::too_many_arguments)]
fn record_health(
    chain: &Chain,
    ui: usize,
    now: u64,
    worst: Option<&Failure>,
    elapsed: Duration,
    answered: usize,
    unhealthy: usize,
    rate_limited: bool,
    excused: bool,
) -> AttemptOutcome {
    let up = &chain.upstreams[ui];
    let state = &up.state;
    let outcome = match worst {
        Some(Failure::Connect(_)) => AttemptOutcome::ConnectError,
        Some(Failure::Timeout) => AttemptOutcome::Timeout,
        Some(Failure::Status(s, _)) if *s == StatusCode::TOO_MANY_REQUESTS => {
            AttemptOutcome::RateLimited
        }
        Some(_) => AttemptOutcome::Error,
        None if rate_limited => AttemptOutcome::RateLimited,
        None if answered == 0 => AttemptOutcome::ProviderError,
        None => AttemptOutcome::Success,
    };
    let failed = match worst {
        Some(f @ (Failure::Timeout | Failure::TooLarge(_))) if excused => {
            // Caused by the request: says nothing about the upstream's health (another
            // upstream is still asked). Shown on the status page, not counted.
            tracing::debug!(chain = &*chain.name, upstream = &*up.name, reason = %f,
                "attempt failed because of what was asked; not held against the upstream");
            state.note_excused(&f.to_string());
            return outcome;
        }
        Some(f @ Failure::Connect(_)) => {
            let cd = state.eject(now, elapsed, None);
            if f.is_dns() && state.successes.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                state.set_unresolvable();
            }
            if let Some(cd) = cd {
                tracing::warn!(chain = &*chain.name, upstream = &*up.name, reason = %f, cooldown = ?cd, "upstream ejected");
            }
            Some(f.to_string())
        }
        Some(f @ Failure::Status(s, retry_after)) if *s == StatusCode::TOO_MANY_REQUESTS => {
            if let Some(cd) = state.eject(now, elapsed, *retry_after) {
                tracing::warn!(chain = &*chain.name, upstream = &*up.name, cooldown = ?cd, "upstream rate limited (HTTP 429)");
            }
            Some(f.to_string())
        }
        Some(f @ Failure::Status(s, _))
            if *s == StatusCode::UNAUTHORIZED || *s == StatusCode::FORBIDDEN =>
        {
            if let Some(cd) = state.eject(now, elapsed, None) {
                tracing::warn!(chain = &*chain.name, upstream = &*up.name, reason = %f, cooldown = ?cd,
                    "upstream rejected detour's credentials: check its API key");
            }
            Some(f.to_string())
        }
        Some(f) => {
            if let Some(cd) = state.record_soft_failure(now, elapsed) {
                tracing::warn!(chain = &*chain.name, upstream = &*up.name, reason = %f, cooldown = ?cd, "upstream ejected after repeated failures");
            } else {
                tracing::debug!(chain = &*chain.name, upstream = &*up.name, reason = %f, "upstream attempt failed");
            }
            Some(f.to_string())
        }
        None if rate_limited => {
            if let Some(cd) = state.eject(now, elapsed, None) {
                tracing::warn!(chain = &*chain.name, upstream = &*up.name, cooldown = ?cd, "upstream rate limited (JSON-RPC error)");
            }
            Some("rate limited (JSON-RPC error)".to_string())
        }
        None if answered == 0 && unhealthy > 0 => {
            if let Some(cd) = state.record_soft_failure(now, elapsed) {
                tracing::warn!(chain = &*chain.name, upstream = &*up.name, cooldown = ?cd, "upstream ejected after repeated provider errors");
            }
            Some("provider error".to_string())
        }
        // Only "not supported here" answers: nothing learned about the upstream's health.
        None if answered == 0 => None,
        None => {
            state.record_success(now, elapsed);
            if chain.regions[up.region_id].degraded() {
                chain.update_region(ui, now);
            }
            None
        }
    };
    if let Some(why) = failed {
        state.note_error(now, &why);
        chain.update_region(ui, now);
    }
    outcome
}

fn describe_rpc_error(up: &Upstream, error: &[u8]) -> String {
    let e = crate::rpc::error::RpcError::from_object(error);
    up.redact(&format!("JSON-RPC error {}: {}", e.code, e.message))
}

/// Sends one chunk of calls to one upstream, counted in flight, and reads what it said about
/// each; the answer is due within `timeout` of `started`.
async fn attempt(
    fwd: &Forwarder,
    up: &Upstream,
    calls: &[&Call<'_>],
    chunk: &[usize],
    started: Instant,
    timeout: Duration,
    repeatable: bool,
) -> Result<PerCall<Got>, Failure> {
    let body = upstream_body(calls, chunk);
    let _in_flight = up.state.start();
    let reply = fwd
        .send_from(&up.endpoint, body, started, timeout, repeatable)
        .await?;
    read_reply(&reply, chunk)
}

/// Sends a prepared body, counting it in flight.
async fn send(
    fwd: &Forwarder,
    up: &Upstream,
    body: Bytes,
    timeout: Duration,
) -> (Duration, Result<UpstreamReply, Failure>) {
    let _in_flight = up.state.start();
    let started = Instant::now();
    let result = fwd.send(&up.endpoint, body, timeout).await;
    (started.elapsed(), result)
}

/// The body sent upstream: a single request for one call, else a batch. Ids are the calls'
/// indices, so answers can be matched whatever order they come in.
fn upstream_body(calls: &[&Call<'_>], chunk: &[usize]) -> Bytes {
    // Sized exactly: a buffer with room to spare would cost `Bytes` a second allocation.
    let size: usize = chunk
        .iter()
        .map(|&i| jsonrpc::upstream_call_len(i, calls[i]) + 1)
        .sum();
    let mut out = Vec::with_capacity(if chunk.len() == 1 { size - 1 } else { size + 1 });
    if let [i] = chunk {
        jsonrpc::write_upstream_call(&mut out, *i, calls[*i]);
    } else {
        out.push(b'[');
        for (k, &i) in chunk.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            jsonrpc::write_upstream_call(&mut out, i, calls[i]);
        }
        out.push(b']');
    }
    Bytes::from(out)
}

/// A zero-copy slice of `body` for a part of it (a copy if, against expectation, it is not).
fn sub(body: &Bytes, part: &str) -> Bytes {
    let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
    let p = part.as_ptr() as usize;
    if p >= start && p + part.len() <= end {
        body.slice_ref(part.as_bytes())
    } else {
        Bytes::copy_from_slice(part.as_bytes())
    }
}

fn read_reply(reply: &UpstreamReply, chunk: &[usize]) -> Result<PerCall<Got>, Failure> {
    let status_failure = || Failure::Status(reply.status, forward::retry_after(&reply.headers));
    if reply.status == StatusCode::TOO_MANY_REQUESTS {
        return Err(status_failure());
    }
    let Some(list) = jsonrpc::parse_upstream(&reply.body) else {
        return Err(if reply.status.is_success() {
            Failure::Malformed("response is not JSON-RPC")
        } else {
            status_failure()
        });
    };
    let got_of = |r: &jsonrpc::RawResponse<'_>| match (r.error, r.result) {
        (Some(e), _) => {
            let class = jsonrpc::error_fields(e).map_or(Class::Trouble(Penalty::Unhealthy), |f| {
                classify::classify(f.code, &f.message)
            });
            Got::Error(sub(&reply.body, e.get()), class)
        }
        (None, Some(r)) => Got::Result(sub(&reply.body, r.get())),
        (None, None) => Got::Missing,
    };
    let mut got: PerCall<Got> = SmallVec::from_elem(Got::Missing, chunk.len());
    let mut matched = 0;
    for r in &list {
        let k =
            r.id.and_then(|id| id.get().parse::<usize>().ok())
                .and_then(|id| chunk.binary_search(&id).ok());
        if let Some(k) = k {
            got[k] = got_of(r);
            matched += 1;
        }
    }
    if matched == 0 {
        // An error not tied to any id (e.g. `"id": null` for a rejected batch) applies to all.
        if let [r] = list.as_slice() {
            if r.error.is_some() {
                let g = got_of(r);
                return Ok(SmallVec::from_elem(g, chunk.len()));
            }
        }
        return Err(if reply.status.is_success() {
            Failure::Malformed("response answers none of the calls sent")
        } else {
            status_failure()
        });
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> UpstreamReply {
        UpstreamReply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: Default::default(),
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

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

    #[test]
    fn matches_answers_by_id_in_any_order() {
        let r = reply(
            200,
            r#"[{"jsonrpc":"2.0","id":5,"result":"b"},{"jsonrpc":"2.0","id":2,"result":"a"}]"#,
        );
        let got = read_reply(&r, &[2, 5]).unwrap();
        assert!(matches!(&got[0], Got::Result(b) if b == "\"a\""));
        assert!(matches!(&got[1], Got::Result(b) if b == "\"b\""));
    }

    #[test]
    fn missing_entries_and_foreign_ids() {
        let r = reply(
            200,
            r#"[{"jsonrpc":"2.0","id":2,"result":1},{"jsonrpc":"2.0","id":99,"result":2}]"#,
        );
        let got = read_reply(&r, &[2, 3]).unwrap();
        assert!(matches!(got[1], Got::Missing));
        let r = reply(200, r#"{"jsonrpc":"2.0","id":7,"result":1}"#);
        assert_eq!(
            read_reply(&r, &[0]).unwrap_err(),
            Failure::Malformed("response answers none of the calls sent")
        );
    }

    #[test]
    fn unkeyed_error_applies_to_the_whole_chunk() {
        let r = reply(
            200,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch too large"}}"#,
        );
        let got = read_reply(&r, &[0, 1, 2]).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got
            .iter()
            .all(|g| matches!(g, Got::Error(_, Class::Trouble(Penalty::Unsupported)))));
    }

    #[test]
    fn statuses() {
        assert!(
            matches!(read_reply(&reply(503, "oops"), &[0]), Err(Failure::Status(s, _)) if s == 503)
        );
        assert!(
            matches!(read_reply(&reply(429, r#"{"id":0,"result":1}"#), &[0]), Err(Failure::Status(s, _)) if s == 429)
        );
        assert_eq!(
            read_reply(&reply(200, "<html>"), &[0]).unwrap_err(),
            Failure::Malformed("response is not JSON-RPC")
        );
        // A JSON-RPC answer inside a 500 is still the answer.
        let got = read_reply(
            &reply(
                500,
                r#"{"jsonrpc":"2.0","id":0,"error":{"code":3,"message":"execution reverted"}}"#,
            ),
            &[0],
        )
        .unwrap();
        assert!(matches!(got[0], Got::Error(_, Class::Deterministic)));
    }

    #[test]
    fn results_are_zero_copy_slices() {
        let r = reply(200, r#"{"jsonrpc":"2.0","id":0,"result":{"big":"0x00"}}"#);
        let Got::Result(b) = &read_reply(&r, &[0]).unwrap()[0] else {
            panic!()
        };
        let start = r.body.as_ptr() as usize;
        assert!((start..start + r.body.len()).contains(&(b.as_ptr() as usize)));
    }
}
