//! `eth_getLogs` that providers accept: a request wider than the chain's narrowest upstream
//! range (`max_logs_range`) is split into chunks of that many blocks, sent a few at a time,
//! each with failover of its own, and the logs joined in block order. A chunk every upstream
//! rejects as too wide or too large ("block range too large", "query returned more than 10000
//! results", … in [`crate::rpc::classify::RANGE_REJECTED`]) is halved and asked again, down to
//! a single block. `blockHash` queries are never split; `latest` (or no bound) is read as the
//! tracked chain head, `finalized` as the finalized block where detour follows the chain and
//! has read it; ranges ending at `pending` or `safe`, or at a tag detour has not read, go as
//! they are.
//!
//! What is checked: every chunk's answer is a JSON array (its elements are passed on as the
//! upstream wrote them); the joined answer is bounded by `client.max_response_bytes`, past which
//! the call gets an error asking for a narrower range. A chunk that fails for another reason
//! fails the call with that chunk's error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::retry::{failover_from, CallResult};
use crate::client::forward::Forwarder;
use crate::method::block::{self, Tag};
use crate::rpc::jsonrpc::{self, Call, Raw};
use crate::state::metrics::Metrics;
use crate::state::pool::Chain;

/// Chunks asked at once for one request.
const PARALLEL: usize = 4;

/// A wide `eth_getLogs` request, ready to split.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The filter's other fields (`address`, `topics`), as the client sent them.
    filter: Map<String, Value>,
    /// The first and last block, inclusive.
    from: u64,
    to: u64,
}

/// The plan for an `eth_getLogs` call's `params`, if it is wider than `range` blocks: `None`
/// when it goes as it is (narrow enough, by `blockHash`, a moving tag, or params detour does
/// not read: the upstream says what is wrong with them). `head`: the chain head; `finalized`:
/// its finalized block, where known.
pub fn plan(
    params: Option<Raw<'_>>,
    head: Option<u64>,
    finalized: Option<u64>,
    range: u64,
) -> Option<Plan> {
    let list: Vec<Value> = serde_json::from_str(params?.get()).ok()?;
    let [Value::Object(filter)] = <[Value; 1]>::try_from(list).ok()? else {
        return None;
    };
    if filter.contains_key("blockHash") {
        return None;
    }
    let at = |key: &str| -> Option<u64> {
        match filter.get(key) {
            None => head,
            Some(Value::String(s)) if s == "finalized" => finalized,
            Some(Value::String(s)) => match block::tag(&format!("\"{s}\"")) {
                Tag::Latest => head,
                Tag::Number(n) => Some(n),
                _ => None,
            },
            Some(_) => None,
        }
    };
    let (from, to) = (at("fromBlock")?, at("toBlock")?);
    if to < from || to - from < range {
        return None;
    }
    let mut filter = filter;
    filter.remove("fromBlock");
    filter.remove("toBlock");
    Some(Plan { filter, from, to })
}

impl Plan {
    /// How many blocks it covers.
    pub fn span(&self) -> u64 {
        self.to - self.from + 1
    }
}

/// Whether an answer is an error saying the range was too wide or the answer too large.
pub fn rejected_answer(answer: &CallResult) -> bool {
    matches!(answer, CallResult::Error(e) if rejected(e))
}

/// Answers the planned call: every chunk's logs, in block order, as one JSON array.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    fwd: &Forwarder,
    metrics: &Metrics,
    chain: &Chain,
    plan: Plan,
    range: u64,
    now: Instant,
    deadline: Instant,
    max_bytes: usize,
) -> CallResult {
    let plan = Arc::new(plan);
    let spans: Vec<(u64, u64)> = (0..)
        .map(|k: u64| plan.from.saturating_add(k.saturating_mul(range)))
        .take_while(|&start| start <= plan.to)
        .map(|start| (start, start.saturating_add(range - 1).min(plan.to)))
        .collect();
    let permits = tokio::sync::Semaphore::new(PARALLEL);
    let ctx = Ctx {
        fwd,
        metrics,
        chain,
        plan: &plan,
        now,
        deadline,
        permits: &permits,
    };
    let parts =
        futures_util::future::join_all(spans.iter().map(|&(a, b)| ctx.fetch(a, b, false))).await;
    let mut out =
        Vec::with_capacity(2 + parts.iter().flatten().map(|p| p.len() + 1).sum::<usize>());
    out.push(b'[');
    for part in parts {
        let part = match part {
            Ok(part) => part,
            Err(error) => return error,
        };
        for logs in part {
            let inner = inner(&logs);
            if inner.is_empty() {
                continue;
            }
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(inner);
            if out.len() > max_bytes {
                return CallResult::Error(Bytes::from(jsonrpc::error_object(
                    jsonrpc::LIMIT_EXCEEDED,
                    "the logs of this range exceed client.max_response_bytes; ask for a narrower range",
                    None,
                )));
            }
        }
    }
    out.push(b']');
    CallResult::Result(Bytes::from(out))
}

/// The elements of a JSON array's text, without the brackets.
fn inner(array: &[u8]) -> &[u8] {
    let text = array.trim_ascii();
    let text = text.strip_prefix(b"[").unwrap_or(text);
    let text = text.strip_suffix(b"]").unwrap_or(text);
    text.trim_ascii()
}

struct Ctx<'a> {
    fwd: &'a Forwarder,
    metrics: &'a Metrics,
    chain: &'a Chain,
    plan: &'a Plan,
    now: Instant,
    deadline: Instant,
    permits: &'a tokio::sync::Semaphore,
}

type Parts = Result<Vec<Bytes>, CallResult>;

impl<'a> Ctx<'a> {
    /// The logs of blocks `from..=to`, as one or more JSON arrays in order; halved while every
    /// upstream rejects the range as too wide or its answer as too large.
    fn fetch(
        &'a self,
        from: u64,
        to: u64,
        halved: bool,
    ) -> Pin<Box<dyn Future<Output = Parts> + Send + 'a>> {
        Box::pin(async move {
            let answer = {
                let _permit = self.permits.acquire().await;
                self.metrics.logs_chunk(&self.chain.name, halved);
                self.ask(from, to).await
            };
            match answer {
                CallResult::Result(logs) if logs.trim_ascii_start().starts_with(b"[") => {
                    Ok(vec![logs])
                }
                CallResult::Result(other) => {
                    Err(CallResult::Error(Bytes::from(jsonrpc::error_object(
                        jsonrpc::INTERNAL_ERROR,
                        "an upstream answered eth_getLogs with something other than an array",
                        Some(&jsonrpc::json_string(&String::from_utf8_lossy(
                            &other[..other.len().min(80)],
                        ))),
                    ))))
                }
                CallResult::Error(e) if from < to && rejected(&e) => {
                    let mid = from + (to - from) / 2;
                    let (low, high) = futures_util::future::join(
                        self.fetch(from, mid, true),
                        self.fetch(mid + 1, to, true),
                    )
                    .await;
                    let mut low = low?;
                    low.extend(high?);
                    Ok(low)
                }
                CallResult::Error(e) => Err(CallResult::Error(e)),
            }
        })
    }

    async fn ask(&self, from: u64, to: u64) -> CallResult {
        let mut filter = self.plan.filter.clone();
        filter.insert("fromBlock".into(), Value::String(format!("0x{from:x}")));
        filter.insert("toBlock".into(), Value::String(format!("0x{to:x}")));
        let params = Value::Array(vec![Value::Object(filter)]).to_string();
        let Ok(params) = serde_json::value::RawValue::from_string(params) else {
            return CallResult::Error(crate::rpc::error::all_failed(&[], false));
        };
        let call = Call {
            id: None,
            method: "eth_getLogs".into(),
            params: Some(Raw::from(&*params)),
        };
        let (mut got, _) = failover_from(
            self.fwd,
            self.metrics,
            self.chain,
            &[&call],
            self.now,
            self.deadline,
            None,
        )
        .await;
        got.pop()
            .unwrap_or_else(|| CallResult::Error(crate::rpc::error::all_failed(&[], false)))
    }
}

/// Whether an error object says the range was too wide or the answer too large.
fn rejected(error: &[u8]) -> bool {
    let e = crate::rpc::error::RpcError::from_object(error);
    crate::rpc::classify::range_rejected(&e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(params: &str, head: Option<u64>, range: u64) -> Option<(u64, u64)> {
        let raw = serde_json::value::RawValue::from_string(params.into()).unwrap();
        plan(Some(Raw::from(&*raw)), head, Some(400), range).map(|p| (p.from, p.to))
    }

    #[test]
    fn what_is_split() {
        let wide = r#"[{"fromBlock":"0x0","toBlock":"0x3e8","address":"0xab"}]"#;
        assert_eq!(plan_of(wide, None, 100), Some((0, 1000)));
        assert_eq!(plan_of(wide, None, 1001), None);
        assert_eq!(plan_of(wide, None, 1000), Some((0, 1000)));
        // latest and a missing end are the head.
        assert_eq!(
            plan_of(r#"[{"fromBlock":"0x10"}]"#, Some(500), 100),
            Some((16, 500))
        );
        assert_eq!(
            plan_of(
                r#"[{"fromBlock":"earliest","toBlock":"latest"}]"#,
                Some(500),
                100
            ),
            Some((0, 500))
        );
        assert_eq!(plan_of(r#"[{"fromBlock":"0x10"}]"#, None, 100), None);
        // finalized is the finalized block where it is known.
        assert_eq!(
            plan_of(
                r#"[{"fromBlock":"0x0","toBlock":"finalized"}]"#,
                Some(500),
                10
            ),
            Some((0, 400))
        );
        // Never split: by hash, moving tags, reversed or odd params.
        assert_eq!(
            plan_of(
                r#"[{"blockHash":"0xab","fromBlock":"0x0","toBlock":"0x3e8"}]"#,
                None,
                10
            ),
            None
        );
        assert_eq!(
            plan_of(r#"[{"fromBlock":"0x0","toBlock":"safe"}]"#, Some(500), 10),
            None
        );
        assert_eq!(
            plan_of(r#"[{"fromBlock":"0x3e8","toBlock":"0x0"}]"#, None, 10),
            None
        );
        assert_eq!(
            plan_of(r#"[{"fromBlock":1,"toBlock":"0x3e8"}]"#, None, 10),
            None
        );
        assert_eq!(plan_of(r#"[]"#, None, 10), None);
        assert_eq!(plan_of(r#"[{},{}]"#, Some(500), 10), None);
    }

    #[test]
    fn arrays_are_joined_by_their_elements() {
        assert_eq!(
            inner(b" [ {\"a\":1}, {\"b\":2} ] "),
            b"{\"a\":1}, {\"b\":2}"
        );
        assert_eq!(inner(b"[]"), b"");
        assert!(rejected(
            br#"{"code":-32005,"message":"query returned more than 10000 results"}"#
        ));
        assert!(rejected(
            br#"{"code":-32000,"message":"block range is too wide"}"#
        ));
        assert!(!rejected(
            br#"{"code":-32000,"message":"execution reverted"}"#
        ));
    }
}
