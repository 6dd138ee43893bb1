//! Pure upstream selection over a chain snapshot.
//!
//! 1. Tiers are tried lowest first; a higher tier serves only when no lower tier has a usable
//!    upstream that this request has not tried yet.
//! 2. Within a tier: power of two choices. Two distinct usable candidates are sampled (weighted by
//!    `weight`) and the one with the lower cost — peak-EWMA latency × (in-flight + 1) ÷ weight —
//!    wins. Sampling is O(1) (O(log n) with unequal weights), so the cost is flat in the number
//!    of upstreams; a linear scan happens only when random probes keep hitting unusable members.
//! 3. When every untried upstream is cooling down, the one that recovers soonest is still tried:
//!    failing without trying is never better.
//!
//! We do not reuse tower's balancer: it needs `&mut self` over a discovered set, while here many
//! requests select concurrently from one shared, immutable snapshot whose state is atomics.

use crate::pool::{Chain, Tier};

/// Random probes within a tier (at most twice its size) before falling back to a scan.
const PROBES: usize = 8;

/// Picks the upstream (an index into `chain.upstreams`) for the next attempt, or `None` when
/// every upstream is in `tried`.
pub fn select(chain: &Chain, now: u64, tried: &[usize]) -> Option<usize> {
    for tier in &chain.tiers {
        if let Some(i) = p2c(chain, tier, now, tried) {
            return Some(i);
        }
    }
    // Every untried upstream is cooling down: try the one that recovers first.
    (0..chain.upstreams.len())
        .filter(|i| !tried.contains(i))
        .min_by_key(|&i| {
            (
                chain.upstreams[i].state.cooldown_end(),
                chain.upstreams[i].tier,
            )
        })
}

fn p2c(chain: &Chain, tier: &Tier, now: u64, tried: &[usize]) -> Option<usize> {
    let ok = |i: usize| !tried.contains(&i) && chain.upstreams[i].usable(now);
    let n = tier.end - tier.start;
    if n == 1 {
        return ok(tier.start).then_some(tier.start);
    }
    let (mut a, mut b) = (None, None);
    {
        // Random probes find two usable candidates in O(1) when most are usable.
        for _ in 0..PROBES.min(2 * n) {
            let i = sample(tier);
            if !ok(i) || a == Some(i) {
                continue;
            }
            if a.is_none() {
                a = Some(i);
            } else {
                b = Some(i);
                break;
            }
        }
    }
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            // Probes kept missing: weighted draws over the usable members, without allocating.
            let a = weighted_scan(chain, tier, &ok, None)?;
            match weighted_scan(chain, tier, &ok, Some(a)) {
                Some(b) => (a, b),
                None => return Some(a),
            }
        }
    };
    debug_assert_ne!(a, b);
    let (ca, cb) = (chain.upstreams[a].cost(), chain.upstreams[b].cost());
    let pick = if cb < ca { b } else { a };
    tracing::trace!(
        a = &*chain.upstreams[a].name,
        a_cost = ca,
        b = &*chain.upstreams[b].name,
        b_cost = cb,
        pick = &*chain.upstreams[pick].name,
        "p2c"
    );
    Some(pick)
}

/// One usable member of the tier other than `except`, with probability proportional to weight.
fn weighted_scan(
    chain: &Chain,
    tier: &Tier,
    ok: &impl Fn(usize) -> bool,
    except: Option<usize>,
) -> Option<usize> {
    let eligible = |i: &usize| Some(*i) != except && ok(*i);
    let weight = |i: usize| u64::from(chain.upstreams[i].weight);
    let total: u64 = (tier.start..tier.end).filter(eligible).map(weight).sum();
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u64(..total);
    for i in (tier.start..tier.end).filter(eligible) {
        if r < weight(i) {
            return Some(i);
        }
        r -= weight(i);
    }
    None
}

/// One index of the tier, with probability proportional to weight.
fn sample(tier: &Tier) -> usize {
    if tier.cumulative.is_empty() {
        return tier.start + fastrand::usize(..tier.end - tier.start);
    }
    let total = *tier.cumulative.last().unwrap_or(&1);
    let r = fastrand::u64(..total);
    tier.start + tier.cumulative.partition_point(|&c| c <= r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pool::Pool;
    use std::time::Duration;

    fn pool(upstreams: &[(&str, u32, u32)]) -> Pool {
        let mut toml = String::from("[chains.c]\nchain_id = 1\n");
        for (i, (name, tier, weight)) in upstreams.iter().enumerate() {
            toml += &format!(
                "[[chains.c.upstreams]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:{}\"\ntier = {tier}\nweight = {weight}\n",
                i + 1
            );
        }
        Pool::new(Config::from_toml(&toml).unwrap(), None).unwrap()
    }

    fn name(c: &Chain, i: Option<usize>) -> &str {
        &c.upstreams[i.unwrap()].name
    }

    #[test]
    fn lowest_usable_tier_wins() {
        let p = pool(&[("own", 0, 1), ("paid", 1, 1), ("paid2", 1, 1)]);
        let c = &p.chains[0];
        for _ in 0..50 {
            assert_eq!(name(c, select(c, 0, &[])), "own");
        }
        // Tried (or ejected) "own": the paid tier serves.
        assert!(name(c, select(c, 0, &[0])).starts_with("paid"));
        c.upstreams[0].state.eject(0, Duration::ZERO, None);
        assert!(name(c, select(c, 1, &[])).starts_with("paid"));
        // Back as soon as the cool-down ends.
        assert_eq!(name(c, select(c, 60_000_000, &[])), "own");
    }

    #[test]
    fn never_picks_a_tried_upstream() {
        let p = pool(&[("a", 0, 1), ("b", 0, 1), ("c", 0, 1)]);
        let c = &p.chains[0];
        for _ in 0..100 {
            let first = select(c, 0, &[]).unwrap();
            let second = select(c, 0, &[first]).unwrap();
            let third = select(c, 0, &[first, second]).unwrap();
            assert!(first != second && second != third && first != third);
            assert_eq!(select(c, 0, &[first, second, third]), None);
        }
    }

    #[test]
    fn lower_cost_wins_the_pair() {
        let p = pool(&[("fast", 0, 1), ("slow", 0, 1)]);
        let c = &p.chains[0];
        c.upstreams[0]
            .state
            .record_success(0, Duration::from_millis(1));
        c.upstreams[1]
            .state
            .record_success(0, Duration::from_millis(50));
        for _ in 0..50 {
            assert_eq!(name(c, select(c, 0, &[])), "fast");
        }
        // Load counts: 60 requests in flight make "fast" costlier than "slow".
        let _guards: Vec<_> = (0..60).map(|_| c.upstreams[0].state.start()).collect();
        assert_eq!(name(c, select(c, 0, &[])), "slow");
    }

    #[test]
    fn weight_divides_cost() {
        let p = pool(&[("light", 0, 1), ("heavy", 0, 3)]);
        let c = &p.chains[0];
        c.upstreams[0]
            .state
            .record_success(0, Duration::from_millis(10));
        c.upstreams[1]
            .state
            .record_success(0, Duration::from_millis(20));
        // 20ms / 3 < 10ms / 1.
        assert_eq!(name(c, select(c, 0, &[])), "heavy");
    }

    #[test]
    fn weighted_sampling_follows_weights() {
        let p = pool(&[("a", 0, 1), ("b", 0, 3)]);
        let tier = &p.chains[0].tiers[0];
        let hits_b = (0..4000).filter(|_| sample(tier) == 1).count();
        assert!((2700..3300).contains(&hits_b), "{hits_b}");
    }

    #[test]
    fn all_ejected_still_tries_soonest_to_recover() {
        let p = pool(&[("a", 0, 1), ("b", 0, 1), ("c", 1, 1)]);
        let c = &p.chains[0];
        c.upstreams[0]
            .state
            .eject(0, Duration::ZERO, Some(Duration::from_secs(20)));
        c.upstreams[1]
            .state
            .eject(0, Duration::ZERO, Some(Duration::from_secs(5)));
        c.upstreams[2]
            .state
            .eject(0, Duration::ZERO, Some(Duration::from_secs(10)));
        assert_eq!(name(c, select(c, 1, &[])), "b");
        assert_eq!(name(c, select(c, 1, &[1])), "c");
        assert_eq!(name(c, select(c, 1, &[1, 2])), "a");
    }

    #[test]
    fn mostly_ejected_large_tier_still_finds_the_usable_one() {
        let ups: Vec<(String, u32, u32)> = (0..200).map(|i| (format!("u{i}"), 0, 1)).collect();
        let refs: Vec<(&str, u32, u32)> =
            ups.iter().map(|(n, t, w)| (n.as_str(), *t, *w)).collect();
        let p = pool(&refs);
        let c = &p.chains[0];
        for u in &c.upstreams[..199] {
            u.state.eject(0, Duration::ZERO, None);
        }
        for _ in 0..20 {
            assert_eq!(name(c, select(c, 1, &[])), "u199");
        }
    }
}
