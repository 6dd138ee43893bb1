//! The `/status` document: per chain and per upstream, state, head, lag, latency, load, errors.

use serde_json::{json, Value};

use crate::state::pool::{Chain, Pool};
use crate::state::status::states;
use crate::state::upstream::{now_us, Upstream, CHAIN_OK, CHAIN_UNKNOWN, CHAIN_WRONG};

fn upstream_json(chain: &Chain, i: usize, now: u64) -> Value {
    let up: &Upstream = &chain.upstreams[i];
    let s = &up.state;
    let states = states(chain, i, now);
    let head = s.head();
    let chain_head = chain.state.head();
    let chain_check = match s.chain_check() {
        CHAIN_OK => "verified",
        CHAIN_WRONG => "wrong",
        CHAIN_UNKNOWN => "pending",
        _ => "unknown",
    };
    json!({
        "name": &*up.name,
        "state": states.first().copied().unwrap_or("healthy"),
        "states": states,
        "tier": up.tier,
        "weight": up.weight,
        "region": up.region.as_deref(),
        "endpoint": up.display_url,
        "ws_endpoint": up.endpoint.ws.as_ref().map(|w| w.display.as_str()),
        "chain_check": chain_check,
        "reported_chain_id": (s.reported_chain_id() != 0).then(|| s.reported_chain_id()),
        "head": head,
        "lag": head.zip(chain_head).map(|(h, c)| c.saturating_sub(h)),
        "head_age_ms": (s.head_changed() != 0).then(|| now.saturating_sub(s.head_changed()) / 1000),
        "cooldown_remaining_ms": s.cooldown_until(now).map(|t| (t - now) / 1000),
        "latency_ms": s.latency().as_secs_f64() * 1000.0,
        "in_flight": s.in_flight(),
        "error_rate": (s.error_rate() * 1000.0).round() / 1000.0,
        "errors_last_minute": s.recent_failures(now),
        "successes": s.successes.load(std::sync::atomic::Ordering::Relaxed),
        "failures": s.failures.load(std::sync::atomic::Ordering::Relaxed),
        "last_error": s.last_error(),
        "quota": up.state.quota.active(up.limits).then(|| s.quota.usage(now, up.limits)),
        "archive": up.keeps_old_state(),
        "archive_from": match (up.archive, up.keeps_old_state()) {
            (Some(_), _) => Some("config"),
            (None, Some(_)) => Some("learned"),
            (None, None) => None,
        },
    })
}

/// The `/status` document: per chain and per upstream, state, head, lag, latency, load, errors.
/// Names and redacted endpoints only: no URL path, query, key or header value.
pub fn status(pool: &Pool) -> Value {
    let now = now_us();
    let chains: Vec<Value> = pool
        .chains
        .iter()
        .map(|c| {
            let head = c.state.head();
            json!({
                "name": &*c.name,
                "chain_id": c.chain_id,
                "paths": c.paths,
                "ready": c.ready(now),
                "head": head,
                "probe_interval_ms": crate::ops::health::probe_interval(c, now).as_millis() as u64,
                "max_lag_blocks": c.max_lag(),
                "block_time_ms": c.state.block_time().map(|t| t.as_millis() as u64),
                "regions": c.regions.iter().filter(|r| r.labelled).map(|r| json!({
                    "name": &*r.name,
                    "degraded": r.degraded(),
                    "upstreams": r.members.iter().map(|&m| &*c.upstreams[m].name).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "upstreams": (0..c.upstreams.len()).map(|i| upstream_json(c, i, now)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "name": "detour",
        "version": env!("CARGO_PKG_VERSION"),
        "chains": chains,
    })
}
