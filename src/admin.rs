//! detour's own endpoints: `/healthz`, `/readyz`, `/status` and the index page.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

use crate::pool::{Chain, Pool};
use crate::upstream::{now_us, Upstream, CHAIN_OK, CHAIN_UNKNOWN, CHAIN_WRONG};

/// Every state an upstream is in now, most important first; empty means healthy.
///
/// `wrong_chain` and `unresolvable` serve nothing; `cooling_down` serves only when nothing else
/// can; `half_open` admits one trial request; `lagging`, `stale` and `degraded_region` serve
/// only after the healthy upstreams of the chain.
pub fn states(chain: &Chain, i: usize, now: u64) -> Vec<&'static str> {
    let up = &chain.upstreams[i];
    let s = &up.state;
    let mut out = Vec::new();
    if up.quarantined() {
        out.push("wrong_chain");
    }
    if s.unresolvable() {
        out.push("unresolvable");
    }
    if s.cooldown_until(now).is_some() {
        out.push("cooling_down");
    } else if s.half_open(now) {
        out.push("half_open");
    }
    let head = s.head();
    let chain_head = chain.state.head();
    if head != 0 && head < chain_head {
        if chain_head - head > chain.health.max_lag_blocks {
            out.push("lagging");
        } else if !chain.fresh(i, now) {
            out.push("stale");
        }
    }
    if chain.regions[up.region_id].degraded() {
        out.push("degraded_region");
    }
    out
}

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
        "chain_check": chain_check,
        "reported_chain_id": (s.reported_chain_id() != 0).then(|| s.reported_chain_id()),
        "head": (head != 0).then_some(head),
        "lag": (head != 0 && chain_head != 0).then(|| chain_head.saturating_sub(head)),
        "head_age_ms": (s.head_changed() != 0).then(|| now.saturating_sub(s.head_changed()) / 1000),
        "cooldown_remaining_ms": s.cooldown_until(now).map(|t| (t - now) / 1000),
        "latency_ms": s.latency().as_secs_f64() * 1000.0,
        "in_flight": s.in_flight(),
        "error_rate": (s.error_rate() * 1000.0).round() / 1000.0,
        "errors_last_minute": s.recent_failures(now),
        "successes": s.successes.load(std::sync::atomic::Ordering::Relaxed),
        "failures": s.failures.load(std::sync::atomic::Ordering::Relaxed),
        "last_error": s.last_error(),
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
                "head": (head != 0).then_some(head),
                "probe_interval_ms": crate::health::probe_interval(c, now).as_millis() as u64,
                "max_lag_blocks": c.health.max_lag_blocks,
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

/// `/status` as a response body.
pub fn status_body(pool: &Pool) -> (StatusCode, Bytes) {
    let text = serde_json::to_string_pretty(&status(pool)).unwrap_or_else(|_| "{}".into());
    (StatusCode::OK, Bytes::from(text))
}
