//! Pure upstream selection over a chain snapshot.
//!
//! 1. Tiers are tried lowest first; a higher tier serves only when no lower tier has a fit
//!    upstream that this request has not tried yet.
//! 2. Within a tier: power of two choices. Two distinct fit candidates are sampled (weighted by
//!    `weight`) and the one with the lower cost — peak-EWMA latency × (in-flight + 1) ÷ weight —
//!    wins. Sampling is O(1) (O(log n) with unequal weights), so the cost is flat in the number
//!    of upstreams; a linear scan happens only when random probes keep hitting unfit members.
//!    The loser takes the request instead when it has had no real answer for a while and is
//!    about as cheap (at most one such request per upstream every 2 s, see
//!    [`crate::state::upstream::EXPLORE`]): only real answers keep estimates comparable.
//! 3. "Fit" is relaxed step by step, each step over all tiers again, so a preference never
//!    turns into an outage:
//!    - strict: not cooling down, fresh enough for the request (not lagging or stale when it
//!      needs the latest state; head at or past the block it names), its region not degraded,
//!      and in another region than the attempts that already failed or stalled;
//!    - then any region, then degraded regions too; for a call that names a block no
//!      upstream is known to have yet, the highest known head; then lagging upstreams too;
//!    - last, when every untried upstream is cooling down, the one that recovers soonest:
//!      failing without trying is never better.
//!
//!    A chain with archive upstreams (`archive = true`, or learned) first tries, under the
//!    strict step, archive nodes for calls about old state (then upstreams not known to be
//!    pruned) and the other upstreams for everything else, before the steps above.
//!
//!    An upstream on the wrong chain (quarantined) is never chosen; one whose hostname never
//!    resolved is chosen only in that last step.
//!
//! We do not reuse tower's balancer: it needs `&mut self` over a discovered set, while here many
//! requests select concurrently from one shared, immutable snapshot whose state is atomics.

use crate::method::block::Archive;
use crate::state::pool::{Chain, Tier};

/// Random probes within a tier (at most twice its size) before falling back to a scan.
const PROBES: usize = 8;

/// What the request needs from an upstream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want<'a> {
    /// Upstreams not to pick: already tried for this request (or refused admission).
    pub exclude: &'a [usize],
    /// The request depends on the latest state: avoid lagging and stale upstreams.
    pub latest: bool,
    /// The request names this block number: avoid upstreams whose head is below it (0: none).
    pub min_block: u64,
    /// Regions (indices in [`Chain::regions`]) to avoid: where an attempt failed or stalled.
    pub avoid_regions: &'a [usize],
    /// Archive nodes first (old state), or others first (anything else).
    pub archive: Archive,
}

/// Picks the upstream (an index into `chain.upstreams`) for the next attempt, or `None` when
/// every upstream is excluded or quarantined.
pub fn select(chain: &Chain, now: u64, want: &Want<'_>) -> Option<usize> {
    let base = |i: usize| !want.exclude.contains(&i) && chain.upstreams[i].servable(now);
    let fresh = |i: usize| {
        (!want.latest || chain.fresh(i, now))
            && (want.min_block == 0 || chain.upstreams[i].has_block(want.min_block))
    };
    let healthy_region = |i: usize| !chain.regions[chain.upstreams[i].region_id].degraded();
    let elsewhere = |i: usize| !want.avoid_regions.contains(&chain.upstreams[i].region_id);

    let strict = |i: usize| base(i) && fresh(i) && healthy_region(i) && elsewhere(i);
    if want.archive != Archive::Any {
        if let Some(i) = archive_first(chain, now, want.archive, &strict) {
            return Some(i);
        }
    }
    if let Some(i) = over_tiers(chain, now, &strict) {
        return Some(i);
    }
    if !want.avoid_regions.is_empty() {
        if let Some(i) = over_tiers(chain, now, &|i| base(i) && fresh(i) && healthy_region(i)) {
            return Some(i);
        }
    }
    if let Some(i) = over_tiers(chain, now, &|i| base(i) && fresh(i)) {
        return Some(i);
    }
    if want.min_block > 0 {
        // Nobody is known to have the block yet: the highest head is the best bet (lower tier,
        // then lower cost, among equals).
        let best = (0..chain.upstreams.len())
            .filter(|&i| base(i))
            .max_by(|&a, &b| {
                let (ua, ub) = (&chain.upstreams[a], &chain.upstreams[b]);
                ua.state
                    .head()
                    .cmp(&ub.state.head())
                    .then(ub.tier.cmp(&ua.tier))
                    .then(ub.cost().total_cmp(&ua.cost()))
            });
        if best.is_some() {
            return best;
        }
    }
    if let Some(i) = over_tiers(chain, now, &base) {
        return Some(i);
    }
    // Every untried upstream is cooling down: try the one that recovers first.
    (0..chain.upstreams.len())
        .filter(|i| !want.exclude.contains(i) && !chain.upstreams[*i].quarantined())
        .min_by_key(|&i| {
            (
                chain.upstreams[i].state.cooldown_end(),
                chain.upstreams[i].tier,
            )
        })
}

/// The archive preference's first steps: old state to upstreams known to keep it, then to
/// those not known not to; anything else to upstreams not known to be archive nodes.
#[inline(never)]
fn archive_first(
    chain: &Chain,
    now: u64,
    archive: Archive,
    strict: &impl Fn(usize) -> bool,
) -> Option<usize> {
    let keeps = |i: usize| chain.upstreams[i].keeps_old_state();
    match archive {
        Archive::Old => over_tiers(chain, now, &|i| strict(i) && keeps(i) == Some(true))
            .or_else(|| over_tiers(chain, now, &|i| strict(i) && keeps(i).is_none())),
        Archive::Recent => over_tiers(chain, now, &|i| strict(i) && keeps(i) != Some(true)),
        Archive::Any => None,
    }
}

fn over_tiers(chain: &Chain, now: u64, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    chain
        .tiers
        .iter()
        .find_map(|tier| p2c(chain, tier, now, ok))
}

fn p2c(chain: &Chain, tier: &Tier, now: u64, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let n = tier.end - tier.start;
    if n == 1 {
        return ok(tier.start).then_some(tier.start);
    }
    let (mut a, mut b) = (None, None);
    {
        // Random probes find two fit candidates in O(1) when most are fit.
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
            // Probes kept missing: weighted draws over the fit members, without allocating.
            let a = weighted_scan(chain, tier, ok, None)?;
            match weighted_scan(chain, tier, ok, Some(a)) {
                Some(b) => (a, b),
                None => return Some(a),
            }
        }
    };
    debug_assert_ne!(a, b);
    let (ca, cb) = (chain.upstreams[a].cost(), chain.upstreams[b].cost());
    let (pick, other) = if cb < ca { (b, a) } else { (a, b) };
    let (cp, co) = if cb < ca { (cb, ca) } else { (ca, cb) };
    let pick = if chain.upstreams[other].state.explore(now, co, cp) {
        other
    } else {
        pick
    };
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
    use crate::state::pool::Pool;
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

    fn ex(exclude: &[usize]) -> Want<'_> {
        Want {
            exclude,
            ..Want::default()
        }
    }

    fn name(c: &Chain, i: Option<usize>) -> &str {
        &c.upstreams[i.unwrap()].name
    }

    #[test]
    fn a_block_nobody_is_known_to_have_goes_to_the_highest_head() {
        let p = pool(&[("own", 0, 1), ("high", 1, 1), ("mid", 1, 1)]);
        let c = &p.chains[0];
        for (i, head) in [(0, 100), (1, 104), (2, 102)] {
            c.upstreams[i].state.observe_head(1, head);
        }
        let want = |min_block, exclude: &'static [usize]| Want {
            min_block,
            exclude,
            ..Want::default()
        };
        for _ in 0..20 {
            // Some have it: the lowest tier that does, by cost as usual.
            assert_ne!(name(c, select(c, 2, &want(101, &[]))), "own");
            assert_eq!(name(c, select(c, 2, &want(103, &[]))), "high");
            // Nobody has it yet: the highest head, whatever its tier.
            assert_eq!(name(c, select(c, 2, &want(200, &[]))), "high");
            assert_eq!(name(c, select(c, 2, &want(200, &[1]))), "mid");
            // Tier 0 has it: tier 0.
            assert_eq!(name(c, select(c, 2, &want(100, &[]))), "own");
        }
    }

    #[test]
    fn lowest_usable_tier_wins() {
        let p = pool(&[("own", 0, 1), ("paid", 1, 1), ("paid2", 1, 1)]);
        let c = &p.chains[0];
        for _ in 0..50 {
            assert_eq!(name(c, select(c, 0, &ex(&[]))), "own");
        }
        // Tried (or ejected) "own": the paid tier serves.
        assert!(name(c, select(c, 0, &ex(&[0]))).starts_with("paid"));
        c.upstreams[0].state.eject(0, Duration::ZERO, None);
        assert!(name(c, select(c, 1, &ex(&[]))).starts_with("paid"));
        // Back as soon as the cool-down ends.
        assert_eq!(name(c, select(c, 60_000_000, &ex(&[]))), "own");
    }

    #[test]
    fn never_picks_a_tried_upstream() {
        let p = pool(&[("a", 0, 1), ("b", 0, 1), ("c", 0, 1)]);
        let c = &p.chains[0];
        for _ in 0..100 {
            let first = select(c, 0, &ex(&[])).unwrap();
            let second = select(c, 0, &ex(&[first])).unwrap();
            let third = select(c, 0, &ex(&[first, second])).unwrap();
            assert!(first != second && second != third && first != third);
            assert_eq!(select(c, 0, &ex(&[first, second, third])), None);
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
            assert_eq!(name(c, select(c, 0, &ex(&[]))), "fast");
        }
        // Load counts: 60 requests in flight make "fast" costlier than "slow".
        let _guards: Vec<_> = (0..60).map(|_| c.upstreams[0].state.start()).collect();
        assert_eq!(name(c, select(c, 0, &ex(&[]))), "slow");
    }

    #[test]
    fn a_close_loser_without_real_answers_gets_one_request_per_interval() {
        let ms = Duration::from_millis;
        let sec = 1_000_000;
        let count = |c: &Chain, now: u64, n: &str| {
            (0..200)
                .filter(|_| name(c, select(c, now, &ex(&[]))) == n)
                .count()
        };
        let p = pool(&[("fast", 0, 1), ("close", 0, 1)]);
        let c = &p.chains[0];
        c.upstreams[0].state.record_success(10 * sec, ms(1));
        c.upstreams[1].state.record_success(0, ms(2));
        // "close" last answered 10 s ago: it gets exactly one request, then waits 2 s.
        assert_eq!(count(c, 10 * sec, "close"), 1);
        assert_eq!(count(c, 11 * sec, "close"), 0);
        assert_eq!(count(c, 12 * sec, "close"), 1);
        // Once it has answered lately, it competes on its estimate alone.
        c.upstreams[1].state.record_success(13 * sec, ms(2));
        assert_eq!(count(c, 14 * sec, "close"), 0);

        // One far costlier (50× the winner) never gets one.
        let p = pool(&[("fast", 0, 1), ("slow", 0, 1)]);
        let c = &p.chains[0];
        c.upstreams[0].state.record_success(10 * sec, ms(1));
        c.upstreams[1].state.record_success(0, ms(50));
        assert_eq!(count(c, 60 * sec, "slow"), 0);
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
        assert_eq!(name(c, select(c, 0, &ex(&[]))), "heavy");
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
        assert_eq!(name(c, select(c, 1, &ex(&[]))), "b");
        assert_eq!(name(c, select(c, 1, &ex(&[1]))), "c");
        assert_eq!(name(c, select(c, 1, &ex(&[1, 2]))), "a");
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
            assert_eq!(name(c, select(c, 1, &ex(&[]))), "u199");
        }
    }
}
