//! Upstream health as attempts see it: what each outcome does to the upstream's live state
//! (ejections, soft failures, latency samples, known heads), and how failures are described.

use std::time::Duration;

use http::StatusCode;

use crate::client::forward::Failure;
use crate::state::metrics::AttemptOutcome;
use crate::state::pool::Chain;
use crate::state::upstream::Upstream;

/// Which failure of a multi-chunk attempt decides the upstream's health.
pub(super) fn severity(f: &Failure) -> u8 {
    match f {
        Failure::Connect(_) => 3,
        Failure::Status(s, _) if *s == StatusCode::TOO_MANY_REQUESTS => 2,
        _ => 1,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn record_health(
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
            lower_budget(chain, up, now, *retry_after);
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
            lower_budget(chain, up, now, None);
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

/// A rate limit lowers the upstream's budget for a while (see [`crate::state::quota`]).
fn lower_budget(chain: &Chain, up: &Upstream, now: u64, retry_after: Option<std::time::Duration>) {
    let s = &up.state;
    let attempts = s.successes.load(std::sync::atomic::Ordering::Relaxed)
        + s.failures.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(rps) = s.quota.rate_limited(now, retry_after, up.limits, attempts) {
        tracing::warn!(chain = &*chain.name, upstream = &*up.name, max_rps = rps, hold = ?retry_after.unwrap_or(crate::state::quota::LEARN_HOLD),
            "upstream rate limited: its budget is lowered for a while");
    }
}

pub(super) fn describe_rpc_error(up: &Upstream, error: &[u8]) -> String {
    let e = crate::rpc::error::RpcError::from_object(error);
    up.redact(&format!("JSON-RPC error {}: {}", e.code, e.message))
}
