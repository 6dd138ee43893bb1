//! Failover: the calls of one client request go to one upstream (as a batch when there are
//! several); whatever that upstream could not answer goes to the next one, until every call has
//! an answer, the chain's `max_attempts` upstreams were tried, or the request's deadline passed.
//!
//! Safety, per call:
//! - A read is retried after any provider trouble: connect failure, timeout, broken connection,
//!   HTTP 429/5xx, a body that is not JSON-RPC, or a JSON-RPC error the taxonomy
//!   ([`crate::classify`]) calls the provider's trouble.
//! - A write ([`MethodKind::Write`]) is retried only when the failure proves the upstream never
//!   acted on it (connect, DNS or TLS failure, HTTP 429). Any other failure is reported to the
//!   client, never resent.
//! - A deterministic JSON-RPC error (execution reverted, invalid params, …) is the answer.
//!
//! Upstream health follows each attempt: a connect failure or rate limit ejects the upstream at
//! once; timeouts, 5xx and malformed answers are soft failures (a latency penalty, and an
//! ejection after a run of them); an answer is a success that lifts any cool-down.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::StatusCode;
use tokio::time::Instant;

use crate::balance;
use crate::classify::{self, Class, Penalty};
use crate::error::{self, AttemptNote};
use crate::forward::{self, Failure, Forwarder, Reply};
use crate::jsonrpc::{self, Call};
use crate::pool::Chain;
use crate::route::{method_kind, MethodKind};
use crate::upstream::{now_us, Upstream};

/// The answer to one call: raw JSON of a result or of an error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A `result` value, verbatim.
    Result(Bytes),
    /// An `error` object, verbatim.
    Error(Bytes),
}

/// What [`failover`] did, for logs and response headers.
#[derive(Debug, Default)]
pub struct Report {
    /// Upstreams that answered at least one call, in order.
    pub answered_by: Vec<Arc<str>>,
    /// Attempts that failed, in order.
    pub failures: Vec<AttemptNote>,
    /// Number of upstreams tried.
    pub attempts: usize,
}

/// What one upstream said about one call.
#[derive(Debug, Clone)]
enum Got {
    Result(Bytes),
    Error(Bytes, Class),
    Missing,
}

/// Forwards `calls` to the chain's upstreams with failover; returns one answer per call.
pub async fn failover(
    fwd: &Forwarder,
    chain: &Chain,
    calls: &[&Call<'_>],
    deadline: Instant,
) -> (Vec<Answer>, Report) {
    let n = calls.len();
    let mut answers: Vec<Option<Answer>> = vec![None; n];
    // The provider-trouble error each pending call got on its latest attempt, if any.
    let mut last_error: Vec<Option<Bytes>> = vec![None; n];
    let writes: Vec<bool> = calls
        .iter()
        .map(|c| method_kind(&c.method) == MethodKind::Write)
        .collect();
    let mut pending: Vec<usize> = (0..n).collect();
    let mut tried: Vec<usize> = Vec::with_capacity(chain.max_attempts);
    let mut report = Report::default();

    while !pending.is_empty() && tried.len() < chain.max_attempts {
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            break;
        }
        let Some(ui) = balance::select(chain, now_us(), &tried) else {
            break;
        };
        tried.push(ui);
        let up = &chain.upstreams[ui];
        let timeout = up.timeout.min(remaining);
        let size = up.max_batch_len.unwrap_or(usize::MAX);
        let chunks: Vec<&[usize]> = pending.chunks(size).collect();
        let results = if let [chunk] = chunks.as_slice() {
            vec![attempt(fwd, up, calls, chunk, timeout).await]
        } else {
            join_all(
                chunks
                    .iter()
                    .map(|chunk| attempt(fwd, up, calls, chunk, timeout)),
            )
            .await
        };

        let mut still = Vec::with_capacity(pending.len());
        let mut worst: Option<Failure> = None;
        let mut elapsed = Duration::ZERO;
        // Calls answered, calls whose trouble says the upstream is unwell, any rate limit.
        let (mut answered, mut unhealthy, mut rate_limited) = (0usize, 0usize, false);
        let mut rpc_trouble: Option<String> = None;
        for (chunk, (took, result)) in chunks.iter().zip(results) {
            elapsed = elapsed.max(took);
            match result {
                Err(failure) => {
                    let note = AttemptNote {
                        upstream: up.name.clone(),
                        reason: failure.to_string(),
                    };
                    for &i in chunk.iter() {
                        last_error[i] = None;
                        if writes[i] && !failure.never_processed() {
                            answers[i] = Some(Answer::Error(error::write_not_retried(
                                &calls[i].method,
                                &note,
                            )));
                        } else {
                            still.push(i);
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
                        match g {
                            Got::Result(r) => {
                                answered += 1;
                                answers[i] = Some(Answer::Result(r));
                            }
                            Got::Error(e, Class::Deterministic) => {
                                answered += 1;
                                answers[i] = Some(Answer::Error(e));
                            }
                            Got::Error(e, Class::Trouble(penalty)) => {
                                unhealthy += usize::from(penalty == Penalty::Unhealthy);
                                rate_limited |= penalty == Penalty::RateLimited;
                                if rpc_trouble.is_none() {
                                    rpc_trouble = Some(describe_rpc_error(up, &e));
                                }
                                if writes[i] {
                                    // The upstream answered and declined; its answer stands.
                                    answers[i] = Some(Answer::Error(e));
                                } else {
                                    last_error[i] = Some(e);
                                    still.push(i);
                                }
                            }
                            Got::Missing => {
                                unhealthy += 1;
                                last_error[i] = None;
                                let failure = Failure::Malformed(
                                    "a call got no answer in the batch response",
                                );
                                rpc_trouble.get_or_insert_with(|| failure.to_string());
                                if writes[i] {
                                    let note = AttemptNote {
                                        upstream: up.name.clone(),
                                        reason: failure.to_string(),
                                    };
                                    answers[i] = Some(Answer::Error(error::write_not_retried(
                                        &calls[i].method,
                                        &note,
                                    )));
                                } else {
                                    still.push(i);
                                }
                            }
                        }
                    }
                }
            }
        }
        record_health(
            up,
            worst.as_ref(),
            elapsed,
            answered,
            unhealthy,
            rate_limited,
        );
        if let Some(f) = &worst {
            report.failures.push(AttemptNote {
                upstream: up.name.clone(),
                reason: f.to_string(),
            });
        } else if let Some(why) = rpc_trouble {
            report.failures.push(AttemptNote {
                upstream: up.name.clone(),
                reason: why,
            });
        }
        if answered > 0 {
            report.answered_by.push(up.name.clone());
        }
        still.sort_unstable();
        pending = still;
    }
    report.attempts = tried.len();

    if !pending.is_empty() {
        let timed_out = Instant::now() >= deadline;
        let failed = error::all_failed(&report.failures, timed_out);
        for &i in &pending {
            answers[i] = Some(Answer::Error(
                last_error[i].take().unwrap_or_else(|| failed.clone()),
            ));
        }
    }
    let answers = answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Answer::Error(error::all_failed(&[], false))))
        .collect();
    (answers, report)
}

/// Which failure of a multi-chunk attempt decides the upstream's health.
fn severity(f: &Failure) -> u8 {
    match f {
        Failure::Connect(_) => 3,
        Failure::Status(s, _) if *s == StatusCode::TOO_MANY_REQUESTS => 2,
        _ => 1,
    }
}

fn record_health(
    up: &Upstream,
    worst: Option<&Failure>,
    elapsed: Duration,
    answered: usize,
    unhealthy: usize,
    rate_limited: bool,
) {
    let now = now_us();
    let state = &up.state;
    match worst {
        Some(f @ Failure::Connect(_)) => {
            let cd = state.eject(now, elapsed, None);
            tracing::warn!(upstream = &*up.name, reason = %f, cooldown = ?cd, "upstream ejected");
        }
        Some(Failure::Status(s, retry_after)) if *s == StatusCode::TOO_MANY_REQUESTS => {
            let cd = state.eject(now, elapsed, *retry_after);
            tracing::warn!(upstream = &*up.name, cooldown = ?cd, "upstream rate limited (HTTP 429)");
        }
        Some(f) => {
            if let Some(cd) = state.record_soft_failure(now, elapsed) {
                tracing::warn!(upstream = &*up.name, reason = %f, cooldown = ?cd, "upstream ejected after repeated failures");
            } else {
                tracing::debug!(upstream = &*up.name, reason = %f, "upstream attempt failed");
            }
        }
        None if rate_limited => {
            let cd = state.eject(now, elapsed, None);
            tracing::warn!(upstream = &*up.name, cooldown = ?cd, "upstream rate limited (JSON-RPC error)");
        }
        None if answered == 0 && unhealthy > 0 => {
            if let Some(cd) = state.record_soft_failure(now, elapsed) {
                tracing::warn!(upstream = &*up.name, cooldown = ?cd, "upstream ejected after repeated provider errors");
            }
        }
        // Only "not supported here" answers: nothing learned about the upstream's health.
        None if answered == 0 => {}
        None => state.record_success(now, elapsed),
    }
}

fn describe_rpc_error(up: &Upstream, error: &[u8]) -> String {
    let e = crate::error::RpcError::from_object(error);
    up.redact(&format!("JSON-RPC error {}: {}", e.code, e.message))
}

/// Sends one chunk of calls to one upstream and reads what it said about each.
async fn attempt(
    fwd: &Forwarder,
    up: &Upstream,
    calls: &[&Call<'_>],
    chunk: &[usize],
    timeout: Duration,
) -> (Duration, Result<Vec<Got>, Failure>) {
    let body = upstream_body(calls, chunk);
    let _in_flight = up.state.start();
    let started = Instant::now();
    let result = fwd.send(up, body, timeout).await;
    let took = started.elapsed();
    (took, result.and_then(|reply| read_reply(&reply, chunk)))
}

/// The body sent upstream: a single request for one call, else a batch. Ids are the calls'
/// indices, so answers can be matched whatever order they come in.
fn upstream_body(calls: &[&Call<'_>], chunk: &[usize]) -> Bytes {
    let size: usize = chunk
        .iter()
        .map(|&i| 48 + calls[i].method.len() + calls[i].params.map_or(0, |p| p.get().len()))
        .sum();
    let mut out = Vec::with_capacity(size + 2);
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

fn read_reply(reply: &Reply, chunk: &[usize]) -> Result<Vec<Got>, Failure> {
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
    let mut got = vec![Got::Missing; chunk.len()];
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
                return Ok(vec![g; chunk.len()]);
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

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: Default::default(),
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
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
