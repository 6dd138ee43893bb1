//! Quotas per upstream: `max_rps` (calls per second) and `compute_units_per_second` (a budget
//! in the provider's compute units, each call costing its method's weight from
//! [`crate::method::cost`]), enforced before a request is sent.
//!
//! The window slides: what was sent in the last second, counted in 1 ms slots (sends within
//! one millisecond share a slot, so the log holds at most 1 000 entries whatever the limits),
//! each slot held a full second after its end. No second-long span ever holds more than the
//! limit, not merely each calendar second, and a burst is never followed by a second burst the
//! moment a second turns. An upstream whose budget has no room is skipped in selection, as if
//! cooling down; when every upstream is, the request waits for the earliest room (within its
//! deadline).
//!
//! A 429 lowers the effective budget for a while: to half the rate the upstream was being
//! sent when it refused (or its effective limit, if lower), held for the `Retry-After` it gave
//! (else [`LEARN_HOLD`]), then doubled every [`RECOVER_STEP`] until it is back at the limit it
//! came from. This works for upstreams with no configured quota too (a free endpoint that
//! rate-limits without saying how much): their recent rate is sampled by the health task.
//!
//! Replicas sharing a Redis (`[shared]`) spend one budget between them: each replica tells
//! the others, every [`SHARE_EVERY`], how much of the upstream's budget it used over the last
//! second and whether it had requests wait for more, and enforces its part of the configured limits (see
//! [`fair_part`] and [`Quota::set_share`]): replicas that use little get what they use and
//! some room to grow, those that want more split the rest evenly. The parts add up to the
//! limit, so the cluster never spends more than it; the request path reads one more atomic
//! and never waits for Redis. When the parts are not renewed (Redis unavailable), each replica
//! goes back to the whole budget after [`SHARE_LIFE`], as without `[shared]`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::Mutex;
use std::time::Duration;

/// The span a quota counts over.
pub const WINDOW_US: u64 = 1_000_000;
/// Sends within one slot share a log entry.
const SLOT_US: u64 = 1_000;
/// How long a limit learned from a 429 without `Retry-After` holds before it recovers.
pub const LEARN_HOLD: Duration = Duration::from_secs(30);
/// After the hold, a learned limit doubles this often.
pub const RECOVER_STEP: Duration = Duration::from_secs(10);
/// One learned limit per this span: the 429s of requests in flight together are one signal.
const LEARN_ONCE_US: u64 = WINDOW_US;
/// How often replicas tell each other what they ask of an upstream's budget.
pub const SHARE_EVERY: Duration = Duration::from_millis(200);
/// A replica's part of a budget holds this long unless renewed.
pub const SHARE_LIFE: Duration = Duration::from_secs(1);
/// A part of a budget, in millionths.
pub const WHOLE: u32 = 1_000_000;

/// An upstream's configured limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Calls per second (each call of a batch counts).
    pub max_rps: Option<u32>,
    /// Compute units per second.
    pub cu_per_second: Option<u32>,
}

impl Limits {
    /// Whether any limit is configured.
    pub fn any(&self) -> bool {
        self.max_rps.is_some() || self.cu_per_second.is_some()
    }
}

/// What [`Quota::take`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Within budget: counted, send it.
    Go,
    /// No room now; room for it from this time (µs, [`crate::state::upstream::now_us`]).
    Wait(u64),
    /// Larger than the whole budget: this upstream can never take it.
    Never,
}

/// What was sent in the last second and the limits in force, for `/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// Calls sent in the last second.
    pub calls: u64,
    /// Compute units spent in the last second.
    pub compute_units: u64,
    /// Calls per second allowed now (configured or learned, whichever is lower).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rps: Option<u64>,
    /// Compute units per second allowed now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute_units_per_second: Option<u64>,
    /// A 429 lowered the budget; these are its limits until it recovers.
    pub lowered: bool,
    /// This replica's part of the configured budget, shared with other replicas (1: all).
    pub share: f64,
}

/// An upstream's quota state (part of its live state, so it outlives reloads).
#[derive(Debug, Default)]
pub struct Quota {
    /// A learned limit is in force (configured limits are read from the upstream): without
    /// either, a send costs no lock.
    learned: AtomicBool,
    log: Mutex<Log>,
    /// Calls per second recently, sampled by the health task: what a 429 halves when no
    /// limit is in force.
    recent_rps: AtomicU32,
    /// Lifetime attempts and when they were last sampled, for `recent_rps`.
    sampled: AtomicU64,
    sampled_at: AtomicU64,
    /// This replica's part of the budget, in millionths of it, while other replicas share it
    /// (0: the whole budget).
    share: AtomicU32,
    /// Until when `share` holds (µs).
    share_until: AtomicU64,
    /// Calls and compute units sent within a configured budget, and requests that waited for
    /// room (lifetime): what replicas share the budget by.
    sent_calls: AtomicU64,
    sent_cu: AtomicU64,
    waits: AtomicU64,
    /// The latest room a waiting request was told of (µs): requests wait until then.
    waiting_until: AtomicU64,
}

#[derive(Debug, Default)]
struct Log {
    /// (slot, calls, compute units), oldest first.
    entries: VecDeque<(u64, u32, u32)>,
    calls: u64,
    cu: u64,
    learned: Option<Learned>,
}

#[derive(Debug, Clone, Copy)]
struct Learned {
    rps: u64,
    cu: Option<u64>,
    /// Held as they are until then (µs); they double every [`RECOVER_STEP`] after.
    hold_until: u64,
    /// When it was learned (µs).
    at: u64,
    /// Dropped once recovered to these (the limits it came from).
    ceiling_rps: u64,
    ceiling_cu: Option<u64>,
}

impl Learned {
    /// The limits it allows at `now`, or `None` once it has recovered.
    fn at(&self, now: u64) -> Option<(u64, Option<u64>)> {
        if now < self.hold_until {
            return Some((self.rps, self.cu));
        }
        let steps = (now - self.hold_until) / RECOVER_STEP.as_micros() as u64;
        let grow = |v: u64| v.saturating_mul(1u64 << steps.min(40));
        let rps = grow(self.rps);
        let cu = self.cu.map(grow);
        let recovered =
            rps >= self.ceiling_rps && cu.zip(self.ceiling_cu).is_none_or(|(c, top)| c >= top);
        (!recovered).then_some((rps, cu))
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Log {
    /// Forgets what left the window by `now`.
    fn expire(&mut self, now: u64) {
        while let Some(&(slot, calls, cu)) = self.entries.front() {
            if (slot + 1) * SLOT_US + WINDOW_US > now {
                break;
            }
            self.entries.pop_front();
            self.calls -= u64::from(calls);
            self.cu -= u64::from(cu);
        }
    }

    /// The limits in force at `now`: configured, lowered by a learned one.
    fn limits(&mut self, now: u64, limits: Limits) -> (Option<u64>, Option<u64>, bool) {
        let rps = limits.max_rps.map(u64::from);
        let cu = limits.cu_per_second.map(u64::from);
        match self.learned.as_ref().map(|l| l.at(now)) {
            Some(Some((lr, lc))) => (min_opt(rps, Some(lr)), min_opt(cu, lc), true),
            Some(None) => {
                self.learned = None;
                (rps, cu, false)
            }
            None => (rps, cu, false),
        }
    }

    /// When `calls` calls costing `cu` fit under the limits, given what is logged.
    fn room_at(&self, calls: u64, cu: u64, rps: Option<u64>, cus: Option<u64>) -> u64 {
        let (mut held_calls, mut held_cu) = (self.calls, self.cu);
        let fits =
            |c: u64, u: u64| rps.is_none_or(|r| c + calls <= r) && cus.is_none_or(|b| u + cu <= b);
        for &(slot, c, u) in &self.entries {
            held_calls -= u64::from(c);
            held_cu -= u64::from(u);
            if fits(held_calls, held_cu) {
                return (slot + 1) * SLOT_US + WINDOW_US;
            }
        }
        // Nothing logged (the limits just fell): soon.
        0
    }
}

impl Quota {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether sends must go through [`Quota::take`] at all.
    #[inline]
    pub fn active(&self, limits: Limits) -> bool {
        limits.any() || self.learned.load(Relaxed)
    }

    /// The configured limits, scaled to this replica's part of them while it shares them with
    /// other replicas (at least 1 where one is set).
    fn part(&self, now: u64, limits: Limits) -> Limits {
        let share = self.share.load(Relaxed);
        if share == 0 || share >= WHOLE || now > self.share_until.load(Relaxed) {
            return limits;
        }
        let scale = |v: u32| ((u64::from(v) * u64::from(share) / u64::from(WHOLE)) as u32).max(1);
        Limits {
            max_rps: limits.max_rps.map(scale),
            cu_per_second: limits.cu_per_second.map(scale),
        }
    }

    /// Sets this replica's part of the budget, `share` millionths of it, until `until` (µs);
    /// [`WHOLE`] or more: all of it.
    pub fn set_share(&self, share: u32, until: u64) {
        self.share_until.store(until, Relaxed);
        self.share.store(share.min(WHOLE), Relaxed);
    }

    /// Calls and compute units sent within the configured budget so far, and requests that
    /// waited for room (lifetime counts).
    pub fn used(&self) -> (u64, u64, u64) {
        (
            self.sent_calls.load(Relaxed),
            self.sent_cu.load(Relaxed),
            self.waits.load(Relaxed),
        )
    }

    /// Whether requests may be waiting for room at `now`.
    pub fn waiting(&self, now: u64) -> bool {
        now < self.waiting_until.load(Relaxed)
    }

    /// A request is told to wait for room until `at`.
    fn wait(&self, at: u64) -> Take {
        self.waits.fetch_add(1, Relaxed);
        self.waiting_until.fetch_max(at, Relaxed);
        Take::Wait(at)
    }

    /// Takes room for `calls` calls costing `cu` compute units at `now` (µs), if the budget
    /// has it.
    pub fn take(&self, now: u64, calls: u32, cu: u32, configured: Limits) -> Take {
        if !self.active(configured) {
            return Take::Go;
        }
        let limits = self.part(now, configured);
        let mut log = self.lock();
        log.expire(now);
        let (rps, cus, learned) = log.limits(now, limits);
        if !learned {
            self.learned.store(false, Relaxed);
        }
        if rps.is_none() && cus.is_none() {
            return Take::Go;
        }
        let (calls, cu) = (u64::from(calls), u64::from(cu));
        let too_big = |limit: Option<u64>, v: u64| limit.is_some_and(|l| v > l);
        if too_big(rps, calls) || too_big(cus, cu) {
            // Larger than a lowered budget may fit once it recovers; never over a configured one.
            return match too_big(configured.max_rps.map(u64::from), calls)
                || too_big(configured.cu_per_second.map(u64::from), cu)
            {
                true => Take::Never,
                false => self.wait(now + RECOVER_STEP.as_micros() as u64),
            };
        }
        if rps.is_some_and(|r| log.calls + calls > r) || cus.is_some_and(|b| log.cu + cu > b) {
            return self.wait(log.room_at(calls, cu, rps, cus).max(now + 1));
        }
        if configured.any() {
            self.sent_calls.fetch_add(calls, Relaxed);
            self.sent_cu.fetch_add(cu, Relaxed);
        }
        let slot = now / SLOT_US;
        let (calls, cu) = (calls as u32, cu as u32);
        match log.entries.back_mut() {
            Some(last) if last.0 == slot => {
                last.1 = last.1.saturating_add(calls);
                last.2 = last.2.saturating_add(cu);
            }
            _ => log.entries.push_back((slot, calls, cu)),
        }
        log.calls += u64::from(calls);
        log.cu += u64::from(cu);
        Take::Go
    }

    /// The upstream answered 429 at `now`: lower its budget (see the module docs). Returns the
    /// lowered calls per second when this changed it.
    /// `attempts`: the upstream's lifetime attempt count, for the rate since the last sample
    /// (a burst the once-a-second sample has not seen yet).
    pub fn rate_limited(
        &self,
        now: u64,
        retry_after: Option<Duration>,
        limits: Limits,
        attempts: u64,
    ) -> Option<u64> {
        let limits = self.part(now, limits);
        let mut log = self.lock();
        if log.learned.is_some_and(|l| now < l.at + LEARN_ONCE_US) {
            return None;
        }
        log.expire(now);
        let (rps, cus, _) = log.limits(now, limits);
        // The rate it refused: what the log holds where a limit was in force, else the sample.
        let sent = match rps.is_some() || cus.is_some() {
            true => log.calls,
            false => {
                u64::from(self.recent_rps.load(Relaxed)).max(self.rate_since_sample(now, attempts))
            }
        };
        let base = rps.map_or(sent, |r| r.min(sent.max(1)));
        let lowered = (base / 2).max(1);
        let cu = cus.map(|b| (b.min(log.cu.max(1)) / 2).max(1));
        let hold = retry_after
            .unwrap_or(LEARN_HOLD)
            .min(Duration::from_secs(600));
        log.learned = Some(Learned {
            rps: lowered,
            cu,
            hold_until: now + hold.as_micros() as u64,
            at: now,
            ceiling_rps: rps.unwrap_or(sent.max(2)),
            ceiling_cu: cus,
        });
        self.learned.store(true, Relaxed);
        Some(lowered)
    }

    /// What the last second held and the limits in force at `now`.
    pub fn usage(&self, now: u64, limits: Limits) -> Usage {
        let part = self.part(now, limits);
        let share = if part == limits {
            1.0
        } else {
            f64::from(self.share.load(Relaxed)) / f64::from(WHOLE)
        };
        let limits = part;
        let mut log = self.lock();
        log.expire(now);
        let (max_rps, compute_units_per_second, lowered) = log.limits(now, limits);
        Usage {
            calls: log.calls,
            compute_units: log.cu,
            max_rps,
            compute_units_per_second,
            lowered,
            share,
        }
    }

    /// Attempts per second since the last sample, once that is at least 100 ms ago.
    fn rate_since_sample(&self, now: u64, attempts: u64) -> u64 {
        let span = now.saturating_sub(self.sampled_at.load(Relaxed));
        if self.sampled_at.load(Relaxed) == 0 || span < WINDOW_US / 10 {
            return 0;
        }
        attempts
            .saturating_sub(self.sampled.load(Relaxed))
            .saturating_mul(WINDOW_US)
            / span
    }

    /// Samples the lifetime count of attempts (`attempts`) at `now`, at most once a second,
    /// into the recent rate a 429 halves.
    pub fn sample(&self, now: u64, attempts: u64) {
        let at = self.sampled_at.load(Relaxed);
        if at == 0 {
            self.sampled_at.store(now, Relaxed);
            self.sampled.store(attempts, Relaxed);
            return;
        }
        let span = now.saturating_sub(at);
        if span < WINDOW_US {
            return;
        }
        let done = attempts.saturating_sub(self.sampled.load(Relaxed));
        let rps = done.saturating_mul(WINDOW_US) / span;
        self.recent_rps
            .store(rps.min(u64::from(u32::MAX)) as u32, Relaxed);
        self.sampled_at.store(now, Relaxed);
        self.sampled.store(attempts, Relaxed);
    }
}

/// This replica's part of a budget of `limit` (per second), in millionths, from what each
/// replica sharing it told (`(used per second, wants more)`, this replica's first): max-min
/// fair. A replica that did not want more needs what it used and a quarter more (and 1), to
/// grow; the limit is shared out evenly, no replica given more than it needs, those that want
/// more splitting what is left; what no one needs is split evenly on top. The parts add up to
/// at most the whole.
pub fn fair_part(told: &[(u64, bool)], limit: u64) -> u32 {
    let n = told.len();
    if n <= 1 || limit == 0 {
        return WHOLE;
    }
    let needs: Vec<u64> = told
        .iter()
        .map(|&(used, more)| match more {
            true => u64::MAX,
            false => used.saturating_add(used / 4).saturating_add(1),
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| needs[i]);
    let (mut left, mut given) = (limit, vec![0u64; n]);
    for (k, &i) in order.iter().enumerate() {
        let give = needs[i].min(left / (n - k) as u64);
        given[i] = give;
        left -= give;
    }
    let mine = given[0] + left / n as u64;
    (u128::from(mine) * u128::from(WHOLE) / u128::from(limit)).min(u128::from(WHOLE)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = WINDOW_US;

    fn rps(n: u32) -> Limits {
        Limits {
            max_rps: Some(n),
            cu_per_second: None,
        }
    }

    #[test]
    fn no_limits_no_lock() {
        let q = Quota::default();
        for t in 0..10_000 {
            assert_eq!(q.take(t, 1, 10, Limits::default()), Take::Go);
        }
        assert!(!q.active(Limits::default()));
    }

    #[test]
    fn the_window_slides() {
        let q = Quota::default();
        let l = rps(3);
        assert_eq!(q.take(10, 1, 0, l), Take::Go);
        assert_eq!(q.take(400_000, 2, 0, l), Take::Go);
        // Full until the first send's slot has been a second old.
        let Take::Wait(at) = q.take(900_000, 1, 0, l) else {
            panic!("over the limit")
        };
        assert_eq!(at, SLOT_US + S);
        assert!(matches!(q.take(at - 1, 1, 0, l), Take::Wait(_)));
        assert_eq!(q.take(at, 1, 0, l), Take::Go);
        // The two sent at 0.4 s hold until 1.401 s, whatever calendar second it is.
        assert!(
            matches!(q.take(1_300_000, 1, 0, l), Take::Wait(a) if a == 400 * SLOT_US + SLOT_US + S)
        );
        // A batch larger than the limit never fits.
        assert_eq!(q.take(5 * S, 4, 0, l), Take::Never);
        assert_eq!(q.usage(5 * S, l).calls, 0);
    }

    #[test]
    fn compute_units_are_a_budget_of_their_own() {
        let q = Quota::default();
        let l = Limits {
            max_rps: Some(100),
            cu_per_second: Some(50),
        };
        assert_eq!(q.take(0, 1, 26, l), Take::Go);
        assert_eq!(q.take(1, 1, 19, l), Take::Go);
        assert!(matches!(q.take(2, 1, 26, l), Take::Wait(_)));
        assert_eq!(q.take(3, 1, 5, l), Take::Go);
        assert_eq!(q.take(4, 1, 51, l), Take::Never);
        let u = q.usage(5, l);
        assert_eq!((u.calls, u.compute_units), (3, 50));
        assert_eq!(q.usage(S + SLOT_US, l).compute_units, 0);
    }

    #[test]
    fn a_429_halves_the_rate_then_it_recovers() {
        let q = Quota::default();
        let l = rps(100);
        for t in 0..40 {
            assert_eq!(q.take(t * 1000, 1, 0, l), Take::Go);
        }
        let hold = Duration::from_secs(5);
        assert_eq!(q.rate_limited(50_000, Some(hold), l, 0), Some(20));
        // A second 429 from requests in flight at the same time is the same signal.
        assert_eq!(q.rate_limited(60_000, None, l, 0), None);
        let u = q.usage(60_000, l);
        assert!(u.lowered);
        assert_eq!(u.max_rps, Some(20));
        // Held for Retry-After, then doubled every step until back at 100.
        let after = 50_000 + 5 * S;
        assert_eq!(q.usage(after, l).max_rps, Some(20));
        assert_eq!(q.usage(after + 10 * S, l).max_rps, Some(40));
        assert_eq!(q.usage(after + 20 * S, l).max_rps, Some(80));
        let back = q.usage(after + 30 * S, l);
        assert_eq!((back.max_rps, back.lowered), (Some(100), false));
    }

    #[test]
    fn a_shared_budget_is_spent_in_parts_until_they_lapse() {
        let q = Quota::default();
        let l = rps(100);
        q.set_share(WHOLE / 4, S);
        for t in 0..25 {
            assert_eq!(q.take(t, 1, 0, l), Take::Go);
        }
        assert!(matches!(q.take(30, 1, 0, l), Take::Wait(_)));
        // A batch over the part but within the whole budget waits; over the whole, never.
        assert!(matches!(q.take(40, 50, 0, l), Take::Wait(_)));
        assert_eq!(q.take(40, 101, 0, l), Take::Never);
        let u = q.usage(50, l);
        assert_eq!((u.max_rps, u.share), (Some(25), 0.25));
        assert_eq!(q.used(), (25, 0, 2));
        // Not renewed: the whole budget again.
        assert_eq!(q.take(S + 1, 1, 0, l), Take::Go);
        assert_eq!(q.usage(S + 1, l).max_rps, Some(100));
        // A tiny part is still one call a second.
        q.set_share(1, 3 * S);
        assert_eq!(q.usage(2 * S, l).max_rps, Some(1));
    }

    #[test]
    fn parts_are_max_min_fair_and_add_up_to_at_most_the_whole() {
        let part = |told: &[(u64, bool)], limit| f64::from(fair_part(told, limit)) / 1e6;
        // Alone: all of it. Three idle: a third each.
        assert_eq!(part(&[(5, true)], 30), 1.0);
        assert!((part(&[(0, false), (0, false), (0, false)], 30) - 1.0 / 3.0).abs() < 0.01);
        // Two want more, one idle: the idle one keeps a little, the others split the rest.
        let told = [(10, true), (10, true), (0, false)];
        assert!((part(&told, 30) - 14.0 / 30.0).abs() < 0.01);
        let idle = [(0, false), (10, true), (10, true)];
        assert!((part(&idle, 30) - 1.0 / 30.0).abs() < 0.01);
        // One uses little and does not want more: it keeps what it uses and a quarter more.
        let told = [(8, false), (20, true)];
        assert!((part(&told, 30) - 11.0 / 30.0).abs() < 0.01);
        // Every mix adds up to at most the whole.
        for told in [
            vec![(3, false), (40, true), (0, false), (7, true)],
            vec![(100, false), (100, false)],
            vec![(1, true); 7],
        ] {
            let sum: u64 = (0..told.len())
                .map(|i| {
                    let mut t = told.clone();
                    t.swap(0, i);
                    u64::from(fair_part(&t, 30))
                })
                .sum();
            assert!(sum <= u64::from(WHOLE), "{told:?}: {sum}");
        }
    }

    #[test]
    fn a_burst_the_sample_has_not_seen_counts() {
        let q = Quota::default();
        q.sample(1, 0);
        q.sample(S + 1, 10);
        // 200 attempts in the 500 ms since the last sample: 400 a second, halved.
        assert_eq!(
            q.rate_limited(S + 1 + S / 2, None, Limits::default(), 210),
            Some(200)
        );
    }

    #[test]
    fn an_unlimited_upstream_learns_from_a_429() {
        let q = Quota::default();
        let none = Limits::default();
        q.sample(1, 0);
        q.sample(2 * S + 1, 300);
        assert_eq!(q.rate_limited(3 * S, None, none, 300), Some(75));
        assert!(q.active(none));
        for t in 0..75 {
            assert_eq!(q.take(3 * S + t, 1, 0, none), Take::Go);
        }
        assert!(matches!(q.take(3 * S + 80, 1, 0, none), Take::Wait(_)));
        // Recovered past the rate it refused at: no limit, no lock.
        let later = 3 * S + LEARN_HOLD.as_micros() as u64 + 3 * RECOVER_STEP.as_micros() as u64;
        assert_eq!(q.take(later, 1, 0, none), Take::Go);
        assert!(!q.active(none));
    }
}
