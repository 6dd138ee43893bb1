//! One attempt: the calls of a chunk sent to one upstream as one body (ids rewritten to
//! detour's own), and the upstream's reply read back into one entry per call, matched by id in
//! any order.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use smallvec::SmallVec;
use tokio::time::Instant;

use crate::client::forward::{self, Failure, Forwarder, Sent};
use crate::client::stream::{StreamEnd, StreamOffer, STREAMED};
use crate::client::UpstreamReply;
use crate::rpc::classify::{self, Class, Penalty};
use crate::rpc::jsonrpc::{self, Call};
use crate::state::metrics::Metrics;
use crate::state::upstream::{now_us, Upstream};

use super::retry::PerCall;

/// What one upstream said about one call.
#[derive(Debug, Clone)]
pub(super) enum Got {
    Result(Bytes),
    Error(Bytes, Class),
    Missing,
}

/// Sends one chunk of calls to one upstream, counted in flight, and reads what it said about
/// each; the answer is due within `timeout` of `started`. A single call with an `offer` may
/// have its result streamed: its answer is then [`STREAMED`] (the stream is in the offer), and
/// how the stream ends is counted in `metrics` under the chain named with the offer.
#[allow(clippy::too_many_arguments)]
pub(super) async fn attempt(
    fwd: &Forwarder,
    up: &Upstream,
    calls: &[&Call<'_>],
    chunk: &[usize],
    started: Instant,
    timeout: Duration,
    repeatable: bool,
    offer: Option<(&StreamOffer, &Metrics, &str)>,
) -> Result<PerCall<Got>, Failure> {
    let body = upstream_body(calls, chunk);
    let _in_flight = up.state.start();
    let reply = match (offer, chunk) {
        // Only a read streams: a write's answer is small, and must never be in doubt.
        (Some((offer, metrics, chain)), &[id]) if repeatable => {
            let pair = (offer, id);
            let sent = fwd.send_offered(&up.endpoint, body, started, timeout, repeatable, pair);
            match sent.await? {
                Sent::Reply(reply) => reply,
                Sent::Streaming(mut stream) => {
                    // Broken off later: a failure of this upstream's, as a malformed answer.
                    let state = up.state.clone();
                    let started = started.into_std();
                    let count = metrics.stream_ends(chain, &up.name);
                    stream.on_end(Box::new(move |how| {
                        if how == StreamEnd::Broken {
                            state.record_soft_failure(now_us(), started.elapsed());
                        }
                        count(how);
                    }));
                    if let Err(mut stream) = offer.give(stream) {
                        // A hedge whose answer began streaming after another attempt's did.
                        stream.disarm();
                        return Err(Failure::Transport(
                            "another attempt's answer is already streaming".into(),
                        ));
                    }
                    return Ok(smallvec::smallvec![Got::Result(STREAMED)]);
                }
            }
        }
        _ => {
            fwd.send_from(&up.endpoint, body, started, timeout, repeatable)
                .await?
        }
    };
    read_reply(&reply, chunk)
}

/// Sends a prepared body, counting it in flight.
pub(super) async fn send(
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
pub(super) fn upstream_body(calls: &[&Call<'_>], chunk: &[usize]) -> Bytes {
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
pub(super) fn sub(body: &Bytes, part: &str) -> Bytes {
    let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
    let p = part.as_ptr() as usize;
    if p >= start && p + part.len() <= end {
        body.slice_ref(part.as_bytes())
    } else {
        Bytes::copy_from_slice(part.as_bytes())
    }
}

pub(super) fn read_reply(reply: &UpstreamReply, chunk: &[usize]) -> Result<PerCall<Got>, Failure> {
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
