//! Raw transactions broadcast to every region (`broadcast_raw_transactions`): the first success
//! answers, and "already known" from a mempool means the transaction is in: its hash answers.

use bytes::Bytes;
use tokio::time::Instant;

use crate::client::forward::{Failure, Forwarder};
use crate::method::block::{self, Archive};
use crate::rpc::classify::Class;
use crate::rpc::error::{self, AttemptNote};
use crate::rpc::jsonrpc::Call;
use crate::state::metrics::Metrics;
use crate::state::pool::Chain;
use crate::state::quota::Take;
use crate::state::upstream::now_us;

use super::attempt::{read_reply, send, upstream_body, Got};
use super::health::describe_rpc_error;
use super::retry::{pick, CallResult, Indices, PerCall, Report, Throttled};

/// `broadcast_raw_transactions`: one raw transaction goes to the selected upstream and, at the
/// same time, to the best usable upstream of every other region. The first success (a result,
/// or "already known": the transaction hash) is the answer; the other sends still complete in
/// the background so every mempool gets it. When none succeeds, the selected upstream's answer
/// is returned. Batches take the ordinary path.
pub(super) async fn broadcast(
    fwd: &Forwarder,
    metrics: &Metrics,
    chain: &Chain,
    call: &Call<'_>,
    deadline: Instant,
) -> (PerCall<CallResult>, Report) {
    let mut report = Report::default();
    let mut exclude = Indices::new();
    let mut throttled = Throttled::default();
    let primary = pick(
        metrics,
        chain,
        block::need(call),
        Archive::Recent,
        &mut exclude,
        &[],
        now_us(),
        &[call],
        &[0],
        &mut throttled,
    );
    let Some(primary) = primary else {
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
        // Only where its quota has room: a send it would refuse helps no one.
        let best = best.filter(|&i| {
            let up = &chain.upstreams[i];
            up.take_quota(now, 1, up.costs.of(&call.method)) == Take::Go
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

pub(super) fn is_already_known(error: &[u8]) -> bool {
    crate::failover::rawtx::already_known(&crate::rpc::error::RpcError::from_object(error).message)
}

/// The hash of the raw transaction in an `eth_sendRawTransaction` call, as a JSON string.
pub(super) fn tx_hash(call: &Call<'_>) -> Option<Bytes> {
    let params: Vec<&str> = serde_json::from_str(call.params?.get()).ok()?;
    let hash = crate::failover::rawtx::hash(params.first()?)?;
    Some(Bytes::from(crate::failover::rawtx::hash_json(&hash)))
}
