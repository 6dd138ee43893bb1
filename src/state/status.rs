//! The states an upstream is in, as `/status` and the metrics report them.

use crate::state::pool::Chain;

/// Every state an upstream is in now, most important first; empty means healthy.
///
/// `cordoned` (by an operator) and `wrong_chain` serve nothing; `unresolvable` serves only as
/// a last resort; `cooling_down` serves only when nothing else
/// can; `half_open` admits one trial request; `at_quota` has used its budget for the last
/// second (skipped until it has room); `lagging`, `stale` and `degraded_region` serve
/// only after the healthy upstreams of the chain.
pub fn states(chain: &Chain, i: usize, now: u64) -> Vec<&'static str> {
    let up = &chain.upstreams[i];
    let s = &up.state;
    let mut out = Vec::new();
    if up.state.cordoned() {
        out.push("cordoned");
    }
    if up.wrong_chain() {
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
    if s.quota.active(up.limits) {
        let u = s.quota.usage(now, up.limits);
        if u.max_rps.is_some_and(|r| u.calls >= r)
            || u.compute_units_per_second
                .is_some_and(|c| u.compute_units >= c)
        {
            out.push("at_quota");
        }
    }
    if let Some((head, chain_head)) = s.head().zip(chain.state.head()).filter(|(h, c)| h < c) {
        if chain_head - head > chain.max_lag() {
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
