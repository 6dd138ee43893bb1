//! Background health checks: chain-id verification, head probes, the chain head, regions.
//!
//! One task per [`Detour`](crate::Detour) walks the current pool snapshot every tick:
//! - **Chain check**: `eth_chainId` at start, then every `health.chain_check_interval`. An
//!   upstream on another chain is quarantined (never served) with an error log and a status
//!   entry; it comes back if a later check finds the right chain.
//! - **Head probes**: `eth_blockNumber` every `health.probe_interval` while the chain has client
//!   traffic, every `health.idle_probe_interval` once it has had none for `health.idle_after`
//!   (an idle proxy does not hammer public endpoints). A head that live traffic revealed
//!   (an `eth_blockNumber` answer) counts as a probe, so a busy chain costs no probes.
//! - **Hysteresis**: `health.unhealthy_after` failed probes in a row eject an upstream (a
//!   cool-down, as a live failure would); `health.healthy_after` good probes in a row bring an
//!   ejected upstream back before its cool-down ends. Live traffic still ejects at once on a
//!   connect failure (see [`crate::failover::retry`]).
//! - **Chain head and regions**: recomputed each tick from the upstreams' state, so a head that
//!   only an ejected upstream reported, or a region failure that is over, does not linger.
//!
//! The task holds only a weak reference to the proxy and ends when the last clone is dropped.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::time::Instant;

use crate::client::forward::{Failure, Forwarder};
use crate::method::block::parse_quantity;
use crate::rpc::jsonrpc;
use crate::state::pool::{Chain, Pool};
use crate::state::upstream::{now_us, CHAIN_OK, CHAIN_UNKNOWN, CHAIN_WRONG};

const BLOCK_NUMBER: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#;
const CHAIN_ID: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;

/// Runs the health checks until the pool is dropped.
pub async fn run(pool: Weak<ArcSwap<Pool>>, fwd: Forwarder) {
    let mut ticks: u64 = 0;
    loop {
        let Some(current) = pool.upgrade().map(|p| p.load_full()) else {
            return;
        };
        ticks += 1;
        if ticks % 64 == 0 {
            if let Some(limits) = &current.rate_limits {
                limits.forget_idle();
            }
        }
        let tick = tick(&current);
        let now = now_us();
        for (ci, chain) in current.chains.iter().enumerate() {
            for i in 0..chain.upstreams.len() {
                let upstream = &chain.upstreams[i];
                let s = &upstream.state;
                s.quota
                    .sample(now, s.successes.load(Relaxed) + s.failures.load(Relaxed));
                if let Some(job) = due(chain, i, now) {
                    let up = &chain.upstreams[i].state;
                    // Probes count against the upstream's quota: with no room, live traffic
                    // is keeping it busy (and reporting its head) anyway.
                    let (calls, cu) = match job.chain_check {
                        true => (
                            2,
                            upstream.costs.of("eth_blockNumber") + upstream.costs.of("eth_chainId"),
                        ),
                        false => (1, upstream.costs.of("eth_blockNumber")),
                    };
                    if upstream.take_quota(now, calls, cu) != crate::state::quota::Take::Go {
                        up.probe_at.store(now, Relaxed);
                        continue;
                    }
                    up.probing.store(true, Relaxed);
                    up.probe_at.store(now, Relaxed);
                    if job.chain_check {
                        up.chain_check_at.store(now, Relaxed);
                    }
                    tokio::spawn(probe(current.clone(), ci, i, job, fwd.clone()));
                }
            }
            chain.recompute_head(now);
            chain.update_regions(now);
        }
        drop(current);
        tokio::time::sleep(tick).await;
    }
}

/// How often the task wakes: a quarter of the shortest probe interval, within 10–250 ms.
fn tick(pool: &Pool) -> Duration {
    let shortest = pool
        .chains
        .iter()
        .map(|c| c.health.probe_interval)
        .min()
        .unwrap_or(Duration::from_secs(1));
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// What a probe of one upstream should ask.
#[derive(Debug, Clone, Copy)]
struct Job {
    chain_check: bool,
}

/// The probe interval that applies to the chain now.
pub fn probe_interval(chain: &Chain, now: u64) -> Duration {
    let last = chain.state.last_traffic();
    let idle = last == 0 || now.saturating_sub(last) > chain.health.idle_after.as_micros() as u64;
    if idle {
        chain.health.idle_probe_interval
    } else {
        chain.health.probe_interval
    }
}

fn due(chain: &Chain, i: usize, now: u64) -> Option<Job> {
    let s = &chain.upstreams[i].state;
    if s.probing.load(Relaxed) {
        return None;
    }
    let interval = probe_interval(chain, now).as_micros() as u64;
    let since = |t: u64| {
        if t == 0 {
            u64::MAX
        } else {
            now.saturating_sub(t)
        }
    };
    let chain_check = match s.chain_check() {
        // Until verified, ask again at every probe.
        CHAIN_UNKNOWN => since(s.chain_check_at.load(Relaxed)) >= interval,
        _ => since(s.chain_checked()) >= chain.health.chain_check_interval.as_micros() as u64,
    };
    // A head reported by live traffic counts as a probe.
    let last = s.probe_at.load(Relaxed).max(s.head_seen());
    let head_due = since(last) >= interval;
    (chain_check || head_due).then_some(Job { chain_check })
}

async fn probe(pool: Arc<Pool>, ci: usize, i: usize, job: Job, fwd: Forwarder) {
    let chain = &pool.chains[ci];
    let up = &chain.upstreams[i];
    let h = &chain.health;
    let timeout = up.timeout.min(Duration::from_secs(10));
    if job.chain_check {
        let started = Instant::now();
        match ask(&fwd, up, CHAIN_ID, timeout).await {
            Ok(id) => {
                let now = now_us();
                if up.state.record_chain_id(now, id, chain.chain_id) {
                    match up.state.chain_check() {
                        CHAIN_WRONG => tracing::error!(
                            chain = &*chain.name,
                            upstream = &*up.name,
                            expected = chain.chain_id,
                            got = id,
                            "upstream is on the wrong chain (expected {}, got {id}): quarantined, it serves nothing",
                            chain.chain_id
                        ),
                        CHAIN_OK => tracing::info!(
                            chain = &*chain.name,
                            upstream = &*up.name,
                            "chain id verified"
                        ),
                        _ => {}
                    }
                    if up.state.chain_check() == CHAIN_WRONG {
                        up.state.note_error(
                            now,
                            &format!("wrong chain: expected {}, got {id}", chain.chain_id),
                        );
                    }
                }
            }
            Err(why) => failed(chain, i, &why, started.elapsed()),
        }
    }
    if up.state.chain_check() != CHAIN_WRONG {
        let started = Instant::now();
        match ask(&fwd, up, BLOCK_NUMBER, timeout).await {
            Ok(head) => {
                let now = now_us();
                chain.observe_head(i, now, head);
                if up.state.probe_ok(now, started.elapsed(), h.healthy_after) {
                    tracing::info!(
                        chain = &*chain.name,
                        upstream = &*up.name,
                        "upstream answers probes again: back in rotation"
                    );
                }
                if chain.regions[up.region_id].degraded() {
                    chain.update_region(i, now);
                }
            }
            Err(why) => failed(chain, i, &why, started.elapsed()),
        }
    }
    up.state.probing.store(false, Relaxed);
}

fn failed(chain: &Chain, i: usize, why: &ProbeError, elapsed: Duration) {
    let up = &chain.upstreams[i];
    let now = now_us();
    let text = why.to_string();
    if let ProbeError::Failure(f) = why {
        if f.is_dns() && up.state.successes.load(Relaxed) == 0 && up.state.head().is_none() {
            up.state.set_unresolvable();
        }
    }
    match up
        .state
        .probe_failed(now, chain.health.unhealthy_after, &text, elapsed)
    {
        Some(cd) => tracing::warn!(
            chain = &*chain.name,
            upstream = &*up.name,
            reason = %text,
            cooldown = ?cd,
            "upstream failed {} probes in a row: ejected",
            chain.health.unhealthy_after
        ),
        None => {
            tracing::debug!(chain = &*chain.name, upstream = &*up.name, reason = %text, "probe failed")
        }
    }
    chain.update_region(i, now);
}

/// Why a probe failed.
#[derive(Debug)]
enum ProbeError {
    Failure(Failure),
    BadAnswer(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Failure(x) => write!(f, "probe: {x}"),
            ProbeError::BadAnswer(x) => write!(f, "probe: {x}"),
        }
    }
}

/// Sends a one-call request and reads a quantity result.
async fn ask(
    fwd: &Forwarder,
    up: &crate::state::upstream::Upstream,
    body: &'static [u8],
    timeout: Duration,
) -> Result<u64, ProbeError> {
    let what = if body == CHAIN_ID { "chain-id" } else { "head" };
    let reply = fwd
        .send_probe(&up.endpoint, Bytes::from_static(body), timeout, what)
        .await
        .map_err(ProbeError::Failure)?;
    if !reply.status.is_success() {
        return Err(ProbeError::Failure(Failure::Status(
            reply.status,
            crate::client::forward::retry_after(&reply.headers),
        )));
    }
    let list = jsonrpc::parse_upstream(&reply.body)
        .ok_or_else(|| ProbeError::BadAnswer("answer is not JSON-RPC".into()))?;
    let first = list
        .first()
        .ok_or_else(|| ProbeError::BadAnswer("empty answer".into()))?;
    if let Some(e) = first.error {
        let fields = jsonrpc::error_fields(e).unwrap_or_default();
        return Err(ProbeError::BadAnswer(up.redact(&format!(
            "JSON-RPC error {}: {}",
            fields.code, fields.message
        ))));
    }
    let result = first
        .result
        .ok_or_else(|| ProbeError::BadAnswer("answer has no result".into()))?;
    result
        .get()
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .and_then(parse_quantity)
        .ok_or_else(|| ProbeError::BadAnswer("result is not a hex quantity".into()))
}
