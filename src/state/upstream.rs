//! One upstream: its configuration, where to send requests, and its live state.
//!
//! The live state ([`LiveState`]) is a handful of atomics shared by every request that picks this
//! upstream. It lives behind its own `Arc` so that a configuration reload can hand the same state
//! to the new snapshot when the upstream is unchanged. Nothing here takes a lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::client::endpoint::Endpoint;
use crate::client::ws::WsTarget;
use crate::config::target::Target;
use crate::config::UpstreamConfig;

/// Latency assumed for an upstream with no samples yet: low enough that a new upstream is tried.
pub const DEFAULT_RTT: Duration = Duration::from_millis(10);
/// How fast the latency estimate forgets (peak-EWMA decay constant): a slow answer's weight
/// falls to a third every second of samples. An upstream that gets no traffic is sampled only
/// by probes (every 2 s by default), so this is what brings a recovered one back: three probes
/// take a 300 ms estimate to a few ms, where a 3 s constant needed eight (16 s with no traffic).
/// A worse latency still counts at once, and under traffic [`MIN_SAMPLE_WEIGHT`] decides.
pub const DECAY: Duration = Duration::from_secs(1);
/// An answer slower than this is a stall, not a latency: it sets the estimate provisionally
/// (the next answer replaces it outright), so a stall's weight is bounded to one sample. Equal
/// to the default hedge `max_delay`: a read this slow would have been hedged.
pub const STALL: Duration = Duration::from_secs(1);
/// How fast the error rate forgets with time: a failure's weight falls to a third every
/// second, so an upstream that failed for a while and recovered competes evenly again after a
/// few seconds of successes (probes count), instead of after dozens of attempts.
pub const ERROR_DECAY: Duration = Duration::from_secs(1);
/// The least weight a new (faster) sample gets in the estimate.
pub const MIN_SAMPLE_WEIGHT: f64 = 0.25;
/// The latency a failed attempt is recorded as, at least, so that a fast-failing upstream does not
/// look attractive.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// First cool-down after an ejection; it doubles on each consecutive ejection.
pub const COOLDOWN_BASE: Duration = Duration::from_secs(1);
/// Longest cool-down (also the cap on an honoured `Retry-After`).
pub const COOLDOWN_MAX: Duration = Duration::from_secs(30);
/// An upstream that has not answered a real request for this long, while probes say it is about
/// as fast as the one it loses its pair to, gets one request (at most one per this interval):
/// probes time another method on another task, so only real answers compare like with like,
/// and without them a recovered upstream can lose every pair to measurement noise.
pub const EXPLORE: Duration = Duration::from_secs(2);
/// "About as fast" for [`EXPLORE`]: a cost at most this many times the winner's, plus
/// [`EXPLORE_SLACK`] (sub-millisecond estimates are mostly noise).
pub const EXPLORE_FACTOR: f64 = 2.0;
/// See [`EXPLORE_FACTOR`].
pub const EXPLORE_SLACK: Duration = Duration::from_millis(1);
/// How much a 100% recent error rate multiplies an upstream's cost (by 1 + this).
pub const ERROR_COST: f64 = 4.0;
/// Weight of each attempt's outcome in the error-rate average (about the last 10 attempts).
const ERROR_ALPHA: f64 = 0.1;
/// Consecutive soft failures (timeouts, 5xx, malformed answers) that eject an upstream.
pub const SOFT_FAILURES_TO_EJECT: u32 = 3;

/// Microseconds since a process-wide origin, on tokio's clock (so paused-time tests work).
pub fn now_us() -> u64 {
    us_at(tokio::time::Instant::now())
}

/// `at` in the microseconds of [`now_us`], for callers that read the clock already: a clock
/// read costs about 20 ns, so a request reads it as few times as it can.
pub fn us_at(at: tokio::time::Instant) -> u64 {
    static ORIGIN: OnceLock<tokio::time::Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(tokio::time::Instant::now);
    // u64 microseconds last 584 000 years.
    at.saturating_duration_since(origin).as_micros() as u64
}

/// One upstream of one chain, as configured, plus its shared live state.
#[derive(Debug)]
pub struct Upstream {
    /// The configured name (unique within the chain).
    pub name: Arc<str>,
    /// Priority tier: lower serves first.
    pub tier: u32,
    /// Relative preference within the tier.
    pub weight: u32,
    /// Failure-domain label.
    pub region: Option<Arc<str>>,
    /// Index of its failure domain in [`Chain::regions`](crate::state::pool::Chain::regions); an
    /// upstream without a `region` label is a domain of its own.
    pub region_id: usize,
    /// The URL with secrets masked, for display.
    pub display_url: String,
    /// Splits larger batches into chunks of at most this many calls.
    pub max_batch_len: Option<usize>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Glob patterns of methods it does not serve.
    pub unsupported_methods: Vec<String>,
    /// Its configured quota (`max_rps`, `compute_units_per_second`).
    pub limits: crate::state::quota::Limits,
    /// What each call costs here, in compute units.
    pub costs: crate::method::cost::Costs,
    /// `archive` as configured (unset: learned, see [`LiveState::archive_seen`]).
    pub archive: Option<bool>,
    /// The configuration this was built from, to recognise it across reloads.
    pub config: UpstreamConfig,
    /// Live state, shared across reloads while the upstream is unchanged.
    pub state: Arc<LiveState>,
    /// Cached metric handles.
    pub metrics: crate::state::metrics::UpstreamMetrics,
    /// Where requests go and what they carry, as the client sees it.
    pub endpoint: Endpoint,
}

impl Upstream {
    /// Builds an upstream from validated configuration; `state` carries over live state.
    pub fn new(
        config: &UpstreamConfig,
        default_timeout: Duration,
        state: Option<Arc<LiveState>>,
    ) -> Result<Upstream, String> {
        let target = Target::parse(&config.url).map_err(|why| format!("url {why}"))?;
        let mut secrets = target.secrets;
        let ws = match config.ws_url.as_deref().map(Target::parse_ws) {
            Some(Ok(ws)) => {
                secrets.extend(ws.secrets);
                Some(WsTarget {
                    uri: ws.uri,
                    authorization: ws.authorization,
                    display: ws.display,
                })
            }
            Some(Err(why)) => return Err(format!("ws_url {why}")),
            None => None,
        };
        let state = state.unwrap_or_default();
        let endpoint = Endpoint::new(
            config.name.as_str().into(),
            target.uri,
            target.authorization,
            secrets,
            &config.headers,
            state.idle.clone(),
            ws,
        )?;
        Ok(Upstream {
            name: config.name.as_str().into(),
            tier: config.tier,
            weight: config.weight.max(1),
            region: config.region.as_deref().map(Into::into),
            region_id: 0,
            display_url: target.display,
            max_batch_len: config.max_batch_len,
            timeout: config.timeout.unwrap_or(default_timeout),
            unsupported_methods: config.unsupported_methods.clone(),
            limits: crate::state::quota::Limits {
                max_rps: config.max_rps,
                cu_per_second: config.compute_units_per_second,
            },
            costs: crate::method::cost::Costs::new(&Default::default(), &config.compute_units),
            archive: config.archive,
            config: config.clone(),
            state,
            metrics: Default::default(),
            endpoint,
        })
    }

    /// Whether it keeps old state: as configured, else as learned (`None`: not known).
    pub fn keeps_old_state(&self) -> Option<bool> {
        self.archive.or(match self.state.archive_seen() {
            ARCHIVE_YES => Some(true),
            ARCHIVE_NO => Some(false),
            _ => None,
        })
    }

    /// Takes room in its quota for `calls` calls costing `cu` compute units at `now`.
    #[inline]
    pub fn take_quota(&self, now: u64, calls: u32, cu: u32) -> crate::state::quota::Take {
        self.state.quota.take(now, calls, cu, self.limits)
    }

    /// `text` with every secret of this upstream replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        self.endpoint.redact(text)
    }

    /// Whether new requests may be sent here now (not cooling down).
    #[inline]
    pub fn usable(&self, now: u64) -> bool {
        self.state.cooldown_until.load(Relaxed) <= now
    }

    /// Whether this upstream serves `method` (per its `unsupported_methods`).
    #[inline]
    pub fn supports(&self, method: &str) -> bool {
        !self
            .unsupported_methods
            .iter()
            .any(|p| crate::method::policy::glob(p, method))
    }

    /// Whether regular traffic may go here now: not cooling down, not on the wrong chain, not
    /// cordoned, and its hostname has resolved at least once.
    #[inline]
    pub fn servable(&self, now: u64) -> bool {
        self.usable(now) && !self.quarantined() && !self.state.unresolvable()
    }

    /// Whether this upstream must never be used: on the wrong chain, or cordoned by an operator.
    #[inline]
    pub fn quarantined(&self) -> bool {
        self.state.chain_check.load(Relaxed) == CHAIN_WRONG || self.state.cordoned()
    }

    /// Whether the chain check found this upstream on another chain.
    #[inline]
    pub fn wrong_chain(&self) -> bool {
        self.state.chain_check.load(Relaxed) == CHAIN_WRONG
    }

    /// Whether this upstream can serve a request that depends on the latest state: not more
    /// than `max_lag` blocks behind `chain_head`, and not stuck (head unchanged for `stale_us`
    /// while the chain moved on). An upstream whose head is not known yet is fresh.
    #[inline]
    pub fn fresh(&self, chain_head: Option<u64>, max_lag: u64, stale_us: u64, now: u64) -> bool {
        let (Some(head), Some(chain_head)) = (self.state.head(), chain_head) else {
            return true;
        };
        if head >= chain_head {
            return true;
        }
        chain_head - head <= max_lag
            && now.saturating_sub(self.state.head_changed_us.load(Relaxed)) <= stale_us
    }

    /// Whether this upstream may know block `n` (its head is unknown or at least `n`).
    #[inline]
    pub fn has_block(&self, n: u64) -> bool {
        self.state.head().is_none_or(|head| head >= n)
    }

    /// Selection cost: peak-EWMA latency × (in-flight + 1) × (1 + 4 × recent error rate)
    /// ÷ weight.
    #[inline]
    pub fn cost(&self) -> f64 {
        let s = &self.state;
        let rtt = f64::from_bits(s.ewma_ns.load(Relaxed));
        let errors = f64::from_bits(s.error_rate.load(Relaxed));
        rtt * f64::from(s.in_flight.load(Relaxed) + 1) * (1.0 + ERROR_COST * errors)
            / f64::from(self.weight)
    }
}

/// The chain check has not answered yet.
pub const CHAIN_UNKNOWN: u8 = 0;
/// `eth_chainId` matched the configured chain id.
pub const CHAIN_OK: u8 = 1;
/// `eth_chainId` named another chain: quarantined.
pub const CHAIN_WRONG: u8 = 2;

/// Counts events over the last [`Window::SPAN_US`] in a few time buckets, without locks.
#[derive(Debug, Default)]
pub struct Window {
    /// Each bucket packs (bucket epoch << 32 | count).
    buckets: [AtomicU64; 6],
}

impl Window {
    const BUCKET_US: u64 = 10_000_000;
    /// The span counted: one minute.
    pub const SPAN_US: u64 = 6 * Self::BUCKET_US;

    /// Counts one event at `now`.
    pub fn add(&self, now: u64) {
        let epoch = now / Self::BUCKET_US;
        let b = &self.buckets[(epoch % 6) as usize];
        let mut cur = b.load(Relaxed);
        loop {
            let next = if cur >> 32 == epoch & 0xffff_ffff {
                cur + 1
            } else {
                ((epoch & 0xffff_ffff) << 32) | 1
            };
            match b.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Events in the last minute (up to a bucket's width more).
    pub fn count(&self, now: u64) -> u64 {
        let epoch = now / Self::BUCKET_US;
        self.buckets
            .iter()
            .map(|b| b.load(Relaxed))
            .filter(|v| {
                let e = v >> 32;
                e <= epoch & 0xffff_ffff && (epoch & 0xffff_ffff) - e < 6
            })
            .map(|v| v & 0xffff_ffff)
            .sum()
    }
}

/// Live state of an upstream. All fields are atomics updated without locks; races between
/// concurrent updates lose at most one sample, which an estimate can afford.
#[derive(Debug)]
pub struct LiveState {
    /// Peak-EWMA latency estimate in nanoseconds (f64 bits).
    ewma_ns: AtomicU64,
    /// The estimate is a stand-in (a stalled attempt's wait, an ejection's penalty), not a
    /// measurement: the next answer replaces it outright, so a recovered upstream is back at once.
    provisional: AtomicBool,
    /// Share of recent attempts that failed (an average over about the last 10, fading with
    /// [`ERROR_DECAY`]; f64 bits).
    error_rate: AtomicU64,
    /// When the error rate was last updated (µs).
    error_stamp_us: AtomicU64,
    /// When the estimate was last updated (µs since [`now_us`]'s origin).
    stamp_us: AtomicU64,
    /// Requests currently in flight to this upstream.
    in_flight: AtomicU32,
    /// No new requests until this time (µs); 0 when not ejected.
    cooldown_until: AtomicU64,
    /// Consecutive ejections without a success in between (sets the cool-down length).
    ejections: AtomicU32,
    /// Consecutive soft failures without a success in between.
    soft_failures: AtomicU32,
    /// Attempts answered successfully (lifetime counter).
    pub successes: AtomicU64,
    /// Attempts that failed (lifetime counter).
    pub failures: AtomicU64,
    /// Latest block number this upstream reported (probe or live `eth_blockNumber`), plus one;
    /// 0: none reported yet (block 0 is a real head on a fresh dev chain).
    head: AtomicU64,
    /// When `head` last changed (µs).
    head_changed_us: AtomicU64,
    /// When `head` was last reported, changed or not (µs); a probe is due after that.
    head_seen_us: AtomicU64,
    /// [`CHAIN_UNKNOWN`], [`CHAIN_OK`] or [`CHAIN_WRONG`].
    chain_check: AtomicU8,
    /// The chain id the upstream reported (for the status page when it is wrong).
    reported_chain_id: AtomicU64,
    /// When the chain id was last checked successfully (µs).
    chain_checked_us: AtomicU64,
    /// When the last probe was sent (µs).
    pub(crate) probe_at: AtomicU64,
    /// A probe is in flight.
    pub(crate) probing: AtomicBool,
    /// When the chain id was last asked (µs), answered or not.
    pub(crate) chain_check_at: AtomicU64,
    /// Consecutive failed probes.
    probe_failures: AtomicU32,
    /// Consecutive good probes.
    probe_successes: AtomicU32,
    /// When the half-open trial after a cool-down was handed out (µs).
    trial_at: AtomicU64,
    /// Last failure (µs); 0: never.
    last_failure_us: AtomicU64,
    /// Last success (µs); 0: never.
    last_success_us: AtomicU64,
    /// No [`EXPLORE`] request before this time (µs).
    explore_after: AtomicU64,
    /// Its hostname has never resolved (cleared by any success).
    unresolvable: AtomicBool,
    /// Taken out of rotation by an operator (admin API) until uncordoned or reloaded.
    cordoned: AtomicBool,
    /// Failures in the last minute.
    recent_failures: Window,
    /// The last failure, redacted, for the status page (taken only when something fails).
    last_error: Mutex<Option<String>>,
    /// Idle keep-alive connections (plain-HTTP upstreams; see [`crate::client::idle`]).
    pub(crate) idle: Arc<crate::client::idle::IdleConns>,
    /// What it was sent in the last second, against its quota (see [`crate::state::quota`]).
    pub quota: crate::state::quota::Quota,
    /// Whether it keeps old state, as learned from its answers: [`ARCHIVE_UNKNOWN`],
    /// [`ARCHIVE_YES`] or [`ARCHIVE_NO`].
    archive: AtomicU8,
    /// The cool-down another replica's verdict set (µs; 0: none), told apart from this
    /// replica's own.
    remote_until: AtomicU64,
}

/// Not known whether the upstream keeps old state.
pub const ARCHIVE_UNKNOWN: u8 = 0;
/// It answered a call about old state.
pub const ARCHIVE_YES: u8 = 1;
/// It said it no longer has old state ("missing trie node", "pruned", …).
pub const ARCHIVE_NO: u8 = 2;

impl Default for LiveState {
    fn default() -> Self {
        Self {
            ewma_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            provisional: AtomicBool::new(false),
            error_rate: AtomicU64::new(0f64.to_bits()),
            error_stamp_us: AtomicU64::new(0),
            stamp_us: AtomicU64::new(now_us()),
            in_flight: AtomicU32::new(0),
            cooldown_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            soft_failures: AtomicU32::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            head: AtomicU64::new(0),
            head_changed_us: AtomicU64::new(0),
            head_seen_us: AtomicU64::new(0),
            chain_check: AtomicU8::new(CHAIN_UNKNOWN),
            reported_chain_id: AtomicU64::new(0),
            chain_checked_us: AtomicU64::new(0),
            probe_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            chain_check_at: AtomicU64::new(0),
            probe_failures: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
            trial_at: AtomicU64::new(0),
            last_failure_us: AtomicU64::new(0),
            last_success_us: AtomicU64::new(0),
            explore_after: AtomicU64::new(0),
            unresolvable: AtomicBool::new(false),
            cordoned: AtomicBool::new(false),
            recent_failures: Window::default(),
            last_error: Mutex::new(None),
            idle: Default::default(),
            quota: Default::default(),
            archive: AtomicU8::new(ARCHIVE_UNKNOWN),
            remote_until: AtomicU64::new(0),
        }
    }
}

impl LiveState {
    /// Another replica ejected it until `until` (µs): cool it down here too (a longer
    /// cool-down of this replica's own stands).
    pub fn remote_eject(&self, until: u64) {
        self.remote_until.store(until, Relaxed);
        self.cooldown_until.fetch_max(until, Relaxed);
        // Only good probes from now on bring it back here early.
        self.probe_successes.store(0, Relaxed);
    }

    /// Another replica found it on another chain: its chain id is checked again at the next
    /// health tick (this replica quarantines it only on its own check).
    pub fn recheck_chain(&self) {
        if self.chain_check.load(Relaxed) == CHAIN_OK {
            // As if never checked: due now.
            self.chain_checked_us.store(0, Relaxed);
        }
    }

    /// Another replica saw it recover: a cool-down that came from a verdict of another
    /// replica ends (this replica's own stands until its own probes or answers lift it).
    pub fn remote_recovered(&self) {
        let r = self.remote_until.swap(0, Relaxed);
        if r != 0 {
            let _ = self.cooldown_until.compare_exchange(r, 0, Relaxed, Relaxed);
        }
    }

    /// The cool-down end another replica's verdict set (µs; 0: none).
    pub fn remote_until(&self) -> u64 {
        self.remote_until.load(Relaxed)
    }

    /// Whether it keeps old state, as learned ([`ARCHIVE_UNKNOWN`], …).
    pub fn archive_seen(&self) -> u8 {
        self.archive.load(Relaxed)
    }

    /// Learns whether it keeps old state: `true` after an answer about old state, `false`
    /// after it said that state is gone.
    pub fn learn_archive(&self, keeps_old_state: bool) {
        let v = if keeps_old_state {
            ARCHIVE_YES
        } else {
            ARCHIVE_NO
        };
        if self.archive.load(Relaxed) != v {
            self.archive.store(v, Relaxed);
        }
    }

    /// Counts a request in flight until the guard drops (also when the request is cancelled).
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// The current latency estimate.
    pub fn latency(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.ewma_ns.load(Relaxed)) as u64)
    }

    /// When the cool-down ends (µs), or `None` when not cooling down at `now`.
    pub fn cooldown_until(&self, now: u64) -> Option<u64> {
        let until = self.cooldown_until.load(Relaxed);
        (until > now).then_some(until)
    }

    /// Raw cool-down end, for ordering ejected upstreams by who recovers first.
    pub fn cooldown_end(&self) -> u64 {
        self.cooldown_until.load(Relaxed)
    }

    /// Admits a request: always, unless the cool-down has just ended (half-open), when only one
    /// trial request is let through until it reports; a trial that never reports (cancelled)
    /// is handed out again after `trial_timeout`.
    pub fn admit(&self, now: u64, trial_timeout: Duration) -> bool {
        let until = self.cooldown_until.load(Relaxed);
        if until == 0 || until > now {
            // Healthy, or chosen on purpose while cooling down (nothing better was left).
            return true;
        }
        let t = self.trial_at.load(Relaxed);
        if t >= until && now.saturating_sub(t) < trial_timeout.as_micros() as u64 {
            return false;
        }
        self.trial_at
            .compare_exchange(t, now.max(until), Relaxed, Relaxed)
            .is_ok()
    }

    /// Whether the cool-down has ended but no success has confirmed recovery yet.
    pub fn half_open(&self, now: u64) -> bool {
        let until = self.cooldown_until.load(Relaxed);
        until != 0 && until <= now
    }

    /// The latest reported head block, if any was reported.
    #[inline]
    pub fn head(&self) -> Option<u64> {
        self.head.load(Relaxed).checked_sub(1)
    }

    /// When the head was last reported (µs; 0: never).
    pub fn head_seen(&self) -> u64 {
        self.head_seen_us.load(Relaxed)
    }

    /// When the head last changed (µs; 0: never).
    pub fn head_changed(&self) -> u64 {
        self.head_changed_us.load(Relaxed)
    }

    /// Records a head reported by a probe or by live traffic.
    pub fn observe_head(&self, now: u64, block: u64) {
        let stored = block.saturating_add(1);
        let prev = self.head.swap(stored, Relaxed);
        if prev != stored {
            self.head_changed_us.store(now, Relaxed);
        }
        self.head_seen_us.store(now, Relaxed);
    }

    /// Raises the known head to `block` when an answer proved the upstream has it (a
    /// receipt or block at that height). Returns whether it rose.
    pub fn raise_head(&self, now: u64, block: u64) -> bool {
        let stored = block.saturating_add(1);
        if self.head.fetch_max(stored, Relaxed) < stored {
            self.head_changed_us.store(now, Relaxed);
            return true;
        }
        false
    }

    /// The chain check's verdict ([`CHAIN_UNKNOWN`], [`CHAIN_OK`] or [`CHAIN_WRONG`]).
    pub fn chain_check(&self) -> u8 {
        self.chain_check.load(Relaxed)
    }

    /// The chain id the upstream last reported (0: none yet).
    pub fn reported_chain_id(&self) -> u64 {
        self.reported_chain_id.load(Relaxed)
    }

    /// When the chain id was last checked (µs; 0: never).
    pub fn chain_checked(&self) -> u64 {
        self.chain_checked_us.load(Relaxed)
    }

    /// Records the chain id the upstream reported; returns whether the verdict changed.
    pub fn record_chain_id(&self, now: u64, reported: u64, expected: u64) -> bool {
        self.reported_chain_id.store(reported, Relaxed);
        self.chain_checked_us.store(now, Relaxed);
        let verdict = if reported == expected {
            CHAIN_OK
        } else {
            CHAIN_WRONG
        };
        self.chain_check.swap(verdict, Relaxed) != verdict
    }

    /// A good probe. Returns true when it brought an ejected upstream back (after `healthy_after`
    /// good probes in a row).
    pub fn probe_ok(&self, now: u64, rtt: Duration, healthy_after: u32) -> bool {
        self.probe_failures.store(0, Relaxed);
        let n = self.probe_successes.fetch_add(1, Relaxed) + 1;
        self.unresolvable.store(false, Relaxed);
        if self.cooldown_until.load(Relaxed) != 0 {
            if n >= healthy_after {
                self.record_success(now, rtt);
                return true;
            }
            return false;
        }
        // Real answers are the better sample: while they come, a probe may lower the estimate
        // (a recovery) but not raise it (a probe is another method, timed on another task).
        let answered_lately =
            now.saturating_sub(self.last_success_us.load(Relaxed)) < 2 * EXPLORE.as_micros() as u64;
        if !(answered_lately && rtt.as_nanos() as f64 > f64::from_bits(self.ewma_ns.load(Relaxed)))
        {
            self.observe_answer(now, rtt);
        }
        self.count_outcome(now, false);
        false
    }

    /// Whether this upstream, which costs `cost` and just lost its pair to one costing
    /// `winner`, takes the request anyway to refresh its estimate (see [`EXPLORE`]). Claims the
    /// interval's one request when it does.
    pub fn explore(&self, now: u64, cost: f64, winner: f64) -> bool {
        let every = EXPLORE.as_micros() as u64;
        if now.saturating_sub(self.last_success_us.load(Relaxed)) < every
            || cost > winner * EXPLORE_FACTOR + EXPLORE_SLACK.as_nanos() as f64
        {
            return false;
        }
        let after = self.explore_after.load(Relaxed);
        now >= after
            && self
                .explore_after
                .compare_exchange(after, now + every, Relaxed, Relaxed)
                .is_ok()
    }

    /// A failed probe. Returns the cool-down when it ejected the upstream (after
    /// `unhealthy_after` failed probes in a row, and only if it was not already cooling down).
    pub fn probe_failed(
        &self,
        now: u64,
        unhealthy_after: u32,
        why: &str,
        elapsed: Duration,
    ) -> Option<Duration> {
        self.probe_successes.store(0, Relaxed);
        let n = self.probe_failures.fetch_add(1, Relaxed) + 1;
        self.note_error(now, why);
        self.count_outcome(now, true);
        if n >= unhealthy_after && self.cooldown_until(now).is_none() {
            self.probe_failures.store(0, Relaxed);
            return self.eject(now, elapsed, None);
        }
        None
    }

    /// Marks the upstream's hostname as never resolved.
    pub fn set_unresolvable(&self) {
        self.unresolvable.store(true, Relaxed);
    }

    /// Whether the hostname has never resolved.
    pub fn unresolvable(&self) -> bool {
        self.unresolvable.load(Relaxed)
    }

    /// Takes the upstream out of rotation (`true`) or puts it back (`false`).
    pub fn set_cordoned(&self, on: bool) {
        self.cordoned.store(on, Relaxed);
    }

    /// Whether an operator took the upstream out of rotation.
    #[inline]
    pub fn cordoned(&self) -> bool {
        self.cordoned.load(Relaxed)
    }

    /// Remembers a failure's (already redacted) description for the status page.
    pub fn note_error(&self, now: u64, why: &str) {
        self.last_failure_us.store(now, Relaxed);
        self.recent_failures.add(now);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(why.to_owned());
        }
    }

    /// Remembers, for the status page, a failure the request caused (an answer over the size
    /// limit, a heavy call's timeout): shown as the last error, counted nowhere.
    pub fn note_excused(&self, why: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(why.to_owned());
        }
    }

    /// The last failure's description, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    /// Failures in about the last minute.
    pub fn recent_failures(&self, now: u64) -> u64 {
        self.recent_failures.count(now)
    }

    /// Whether the upstream failed within `window_us` of `now` and has not succeeded since, or
    /// is cooling down.
    pub fn failing(&self, now: u64, window_us: u64) -> bool {
        let f = self.last_failure_us.load(Relaxed);
        (f != 0 && f > self.last_success_us.load(Relaxed) && now.saturating_sub(f) <= window_us)
            || self.cooldown_until(now).is_some()
    }

    /// A cancelled attempt (a hedge lost the race): the time it waited is a lower bound on its
    /// latency, recorded so a stalled upstream stops looking fast, but it is not a failure.
    pub fn record_cancelled(&self, now: u64, waited: Duration) {
        let prev = f64::from_bits(self.ewma_ns.load(Relaxed));
        let waited_ns = waited.as_nanos() as f64;
        if waited_ns > prev {
            self.ewma_ns.store(waited_ns.to_bits(), Relaxed);
            self.stamp_us.store(now, Relaxed);
            self.provisional.store(true, Relaxed);
        }
    }

    /// The current recent error rate (0 to 1).
    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate.load(Relaxed))
    }

    fn count_outcome(&self, now: u64, failed: bool) {
        let prev = f64::from_bits(self.error_rate.load(Relaxed));
        if prev == 0.0 && !failed {
            // Settled at zero: no store (and no cache-line traffic) on the common path.
            return;
        }
        let since = now.saturating_sub(self.error_stamp_us.swap(now, Relaxed)) as f64;
        let faded = prev * (-since / ERROR_DECAY.as_micros() as f64).exp();
        let next = faded * (1.0 - ERROR_ALPHA) + if failed { ERROR_ALPHA } else { 0.0 };
        self.error_rate
            .store(if next < 1e-6 { 0.0 } else { next }.to_bits(), Relaxed);
    }

    /// A measured answer time: replaces a provisional estimate, else feeds the peak-EWMA; a
    /// [`STALL`] is itself provisional.
    fn observe_answer(&self, now: u64, rtt: Duration) {
        if rtt >= STALL {
            self.ewma_ns
                .store((rtt.as_nanos() as f64).to_bits(), Relaxed);
            self.stamp_us.store(now, Relaxed);
            self.provisional.store(true, Relaxed);
        } else if self.provisional.load(Relaxed) && self.provisional.swap(false, Relaxed) {
            self.ewma_ns
                .store((rtt.as_nanos() as f64).to_bits(), Relaxed);
            self.stamp_us.store(now, Relaxed);
        } else {
            self.observe(now, rtt);
        }
    }

    fn observe(&self, now: u64, rtt: Duration) {
        let rtt = rtt.as_nanos() as f64;
        let prev = f64::from_bits(self.ewma_ns.load(Relaxed));
        let stamp = self.stamp_us.swap(now, Relaxed);
        let first_sample = self.successes.load(Relaxed) + self.failures.load(Relaxed) == 0;
        let next = if rtt > prev || first_sample {
            // The first sample replaces the assumed default outright.
            // Peak: jump to a worse latency at once, so a slowing upstream is avoided quickly.
            rtt
        } else {
            let elapsed = now.saturating_sub(stamp) as f64;
            // Every sample moves the estimate by at least a quarter of the way, however close
            // it follows the previous one: a burst of fast answers after a stall counts.
            let w = (-elapsed / DECAY.as_micros() as f64)
                .exp()
                .min(1.0 - MIN_SAMPLE_WEIGHT);
            if rtt * 2.0 >= prev {
                // Near the estimate (the steady state): a linear mean, no logarithms.
                prev * w + rtt * (1.0 - w)
            } else {
                // Far below it: down the way geometrically (a weighted mean of logarithms).
                // A recovery from 300 ms to 1 ms is a factor to forget, not 299 ms, so it
                // takes a few samples rather than the dozens a linear mean needs while the
                // slow one dominates.
                prev * ((1.0 - w) * (rtt.max(1.0) / prev).ln()).exp()
            }
        };
        self.ewma_ns.store(next.to_bits(), Relaxed);
    }

    /// An attempt that got an answer: latency sample, failures forgiven, cool-down lifted.
    pub fn record_success(&self, now: u64, rtt: Duration) {
        self.observe_answer(now, rtt);
        self.count_outcome(now, false);
        self.successes.fetch_add(1, Relaxed);
        self.last_success_us.store(now, Relaxed);
        if self.unresolvable.load(Relaxed) {
            self.unresolvable.store(false, Relaxed);
        }
        if self.soft_failures.load(Relaxed) != 0 {
            self.soft_failures.store(0, Relaxed);
        }
        if self.ejections.load(Relaxed) != 0 {
            // Back from an ejection: its failures are accounted for by the ejection, not held
            // against it any longer (the latency stand-in was replaced above, too).
            self.ejections.store(0, Relaxed);
            self.error_rate.store(0f64.to_bits(), Relaxed);
        }
        if self.cooldown_until.load(Relaxed) != 0 {
            self.cooldown_until.store(0, Relaxed);
        }
    }

    /// A failure that proves the upstream unreachable (refused, DNS, TLS): eject at once.
    /// `at_least` extends the cool-down (e.g. `Retry-After`), capped at [`COOLDOWN_MAX`].
    ///
    /// Cool-downs double per outage, not per failed request: only the transition into a
    /// cool-down counts. Requests that were in flight when the upstream went down fail too, and
    /// under load there are hundreds of them; each is a failure (latency penalty, error rate),
    /// but they extend the cool-down only by a longer `Retry-After`. The half-open trial that
    /// fails after the cool-down is a new transition, so a lasting outage still backs off.
    /// Returns the cool-down when this call started one, `None` when one was running.
    pub fn eject(
        &self,
        now: u64,
        elapsed: Duration,
        at_least: Option<Duration>,
    ) -> Option<Duration> {
        self.observe(now, elapsed.max(FAILURE_PENALTY));
        self.provisional.store(true, Relaxed);
        self.count_outcome(now, true);
        self.failures.fetch_add(1, Relaxed);
        self.last_failure_us.store(now, Relaxed);
        self.soft_failures.store(0, Relaxed);
        self.probe_successes.store(0, Relaxed);
        let current = self.cooldown_until.load(Relaxed);
        if current > now {
            if let Some(d) = at_least {
                let until = now + d.min(COOLDOWN_MAX).as_micros() as u64;
                self.cooldown_until.fetch_max(until, Relaxed);
            }
            return None;
        }
        let n = self.ejections.load(Relaxed).min(16);
        let backoff = COOLDOWN_BASE.saturating_mul(1 << n).min(COOLDOWN_MAX);
        let cooldown = at_least
            .map_or(backoff, |d| d.max(backoff))
            .min(COOLDOWN_MAX);
        let until = now + cooldown.as_micros() as u64;
        // Of concurrent failures that all saw no cool-down, one starts it.
        match self
            .cooldown_until
            .compare_exchange(current, until, Relaxed, Relaxed)
        {
            Ok(_) => {
                self.ejections.fetch_add(1, Relaxed);
                Some(cooldown)
            }
            Err(_) => None,
        }
    }

    /// A failure that may be passing (timeout, 5xx, malformed answer): the latency estimate takes
    /// a penalty, and enough of them in a row eject. Returns the cool-down if it ejected.
    pub fn record_soft_failure(&self, now: u64, elapsed: Duration) -> Option<Duration> {
        let n = self.soft_failures.fetch_add(1, Relaxed) + 1;
        if n >= SOFT_FAILURES_TO_EJECT {
            return self.eject(now, elapsed, None);
        }
        self.observe(now, elapsed.max(FAILURE_PENALTY));
        // A stand-in, not a measurement: the next answer replaces it.
        self.provisional.store(true, Relaxed);
        self.count_outcome(now, true);
        self.failures.fetch_add(1, Relaxed);
        self.last_failure_us.store(now, Relaxed);
        None
    }
}

/// Decrements the in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<LiveState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_masks_url_parts_and_header_values() {
        let mut cfg: UpstreamConfig =
            toml::from_str("name = \"a\"\nurl = \"https://x.example/v3/0123456789abcdef\"")
                .unwrap();
        cfg.headers.insert("x-api-key".into(), "HEADERKEY".into());
        let up = Upstream::new(&cfg, Duration::from_secs(1), None).unwrap();
        let msg = up.redact(
            "failed https://x.example/v3/0123456789abcdef and HEADERKEY and 0123456789abcdef",
        );
        assert!(
            !msg.contains("0123456789abcdef") && !msg.contains("HEADERKEY"),
            "{msg}"
        );
        assert!(up.endpoint.headers["x-api-key"].is_sensitive());
    }

    #[test]
    fn cooldown_grows_per_outage_and_resets() {
        let s = LiveState::default();
        let sec = 1_000_000;
        let mut t = sec;
        // Each ejection comes as the previous cool-down ends (a failed half-open trial): it
        // doubles.
        for want in [1, 2, 4, 8, 16, 30, 30] {
            assert_eq!(
                s.eject(t, Duration::ZERO, None),
                Some(Duration::from_secs(want))
            );
            t += want * sec;
        }
        assert!(s.cooldown_until(t - 1).is_some());
        s.record_success(t, Duration::from_millis(1));
        assert!(s.cooldown_until(t).is_none());
        assert_eq!(
            s.eject(t, Duration::ZERO, None),
            Some(Duration::from_secs(1))
        );
        t += sec;
        assert_eq!(
            s.eject(t, Duration::ZERO, Some(Duration::from_secs(7))),
            Some(Duration::from_secs(7))
        );
        t += 7 * sec;
        assert_eq!(
            s.eject(t, Duration::ZERO, Some(Duration::from_secs(3600))),
            Some(COOLDOWN_MAX)
        );
    }

    #[test]
    fn failures_during_a_cooldown_do_not_escalate_it() {
        let s = LiveState::default();
        let sec = 1_000_000;
        // An upstream under load goes down: 500 requests in flight fail within 10 ms.
        assert_eq!(s.eject(sec, Duration::ZERO, None), Some(COOLDOWN_BASE));
        for i in 0..500 {
            assert_eq!(s.eject(sec + i * 20, Duration::ZERO, None), None);
            assert_eq!(s.record_soft_failure(sec + i * 20, Duration::ZERO), None);
        }
        assert_eq!(
            s.cooldown_until(sec),
            Some(2 * sec),
            "still the first, 1 s cool-down"
        );
        assert!(s.failures.load(Relaxed) > 1000, "each failure still counts");
        // A longer Retry-After during the cool-down extends it, without escalating.
        assert_eq!(
            s.eject(sec + 1, Duration::ZERO, Some(Duration::from_secs(3))),
            None
        );
        assert_eq!(s.cooldown_until(sec + 1), Some(4 * sec + 1));
        // The trial after it fails: the second cool-down of this outage, 2 s.
        assert_eq!(
            s.eject(5 * sec, Duration::ZERO, None),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn concurrent_failures_start_one_cooldown() {
        let s = Arc::new(LiveState::default());
        let started: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let s = &s;
                    scope.spawn(move || {
                        (0..1000)
                            .filter(|_| s.eject(1_000_000, Duration::ZERO, None).is_some())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(started, 1);
        assert_eq!(s.cooldown_until(1_000_000), Some(2_000_000));
    }

    #[test]
    fn soft_failures_eject_after_a_run() {
        let s = LiveState::default();
        assert!(s.record_soft_failure(10, Duration::ZERO).is_none());
        assert!(s.record_soft_failure(10, Duration::ZERO).is_none());
        assert!(s.record_soft_failure(10, Duration::ZERO).is_some());
    }

    #[test]
    fn half_open_admits_one_trial_until_it_reports() {
        let s = LiveState::default();
        let t = Duration::from_secs(5);
        assert!(s.admit(0, t), "healthy: always admitted");
        s.eject(0, Duration::ZERO, None); // cool-down until 1 s
        assert!(
            s.admit(500_000, t),
            "chosen while cooling down: nothing better was left"
        );
        // The cool-down is over: one trial at a time.
        assert!(s.half_open(1_000_000));
        assert!(s.admit(1_000_000, t));
        assert!(
            !s.admit(1_000_001, t),
            "a second request waits for the trial"
        );
        assert!(!s.admit(3_000_000, t));
        // A trial that never reports (cancelled) is handed out again after the trial timeout.
        assert!(s.admit(6_000_001, t));
        // The trial fails: a longer cool-down (2 s), then a new trial.
        s.eject(6_100_000, Duration::ZERO, None);
        assert!(s.cooldown_until(7_000_000).is_some());
        assert!(s.admit(8_100_000, t));
        assert!(!s.admit(8_100_001, t));
        // The trial succeeds: full traffic.
        s.record_success(8_200_000, Duration::from_millis(1));
        assert!(!s.half_open(8_200_001));
        assert!(s.admit(8_200_001, t) && s.admit(8_200_002, t));
    }

    #[test]
    fn probe_hysteresis_needs_runs_both_ways() {
        let s = LiveState::default();
        let ms = Duration::from_millis(1);
        // Two failures, then a success: the run is broken, nothing happens.
        assert!(s.probe_failed(10, 3, "x", ms).is_none());
        assert!(s.probe_failed(20, 3, "x", ms).is_none());
        assert!(!s.probe_ok(30, ms, 2));
        assert!(s.probe_failed(40, 3, "x", ms).is_none());
        assert!(s.probe_failed(50, 3, "x", ms).is_none());
        assert!(s.cooldown_until(60).is_none());
        // The third in a row ejects.
        assert!(s.probe_failed(60, 3, "x", ms).is_some());
        assert!(s.cooldown_until(70).is_some());
        assert_eq!(s.last_error().as_deref(), Some("x"));
        // Further failures while cooling down do not stack cool-downs.
        assert!(s.probe_failed(80, 3, "x", ms).is_none());
        // One good probe is not enough; two in a row bring it back early.
        assert!(!s.probe_ok(90, ms, 2));
        assert!(s.probe_ok(100, ms, 2));
        assert!(s.cooldown_until(110).is_none());
    }

    #[test]
    fn failure_window_counts_the_last_minute() {
        let w = Window::default();
        let sec = 1_000_000;
        for t in [0, 5 * sec, 15 * sec, 59 * sec] {
            w.add(t);
        }
        assert_eq!(w.count(59 * sec), 4);
        assert_eq!(
            w.count(65 * sec),
            2,
            "the first bucket (0 s and 5 s) aged out"
        );
        assert_eq!(w.count(200 * sec), 0);
    }

    #[test]
    fn lag_and_stale_heads() {
        let cfg: UpstreamConfig = toml::from_str("name = \"a\"\nurl = \"http://x\"").unwrap();
        let up = Upstream::new(&cfg, Duration::from_secs(1), None).unwrap();
        let stale = 60_000_000;
        assert!(up.fresh(Some(100), 5, stale, 0), "unknown head: fresh");
        up.state.observe_head(1_000_000, 98);
        assert!(up.fresh(Some(100), 5, stale, 2_000_000), "2 behind: fresh");
        assert!(
            !up.fresh(Some(110), 5, stale, 2_000_000),
            "12 behind: lagging"
        );
        assert!(
            !up.fresh(Some(100), 5, stale, 62_000_000),
            "unchanged 61 s while behind: stale"
        );
        assert!(
            up.fresh(Some(98), 5, stale, 62_000_000),
            "unchanged but at the head: fine"
        );
        assert!(up.has_block(98) && !up.has_block(99));
        // Block 0 is a real head (a fresh dev chain), not "unknown".
        up.state.observe_head(63_000_000, 0);
        assert_eq!(up.state.head(), Some(0));
        assert!(
            !up.fresh(Some(10), 5, stale, 63_000_001),
            "a node reset to genesis lags"
        );
    }

    #[test]
    fn a_stall_or_an_ejection_is_forgotten_at_the_first_answer() {
        let s = LiveState::default();
        let ms = Duration::from_millis;
        s.record_success(0, ms(2));
        // A hedge lost the race after waiting 800 ms: the estimate jumps...
        s.record_cancelled(1_000, ms(800));
        assert_eq!(s.latency(), ms(800));
        // ...and the next answer (a probe) replaces it, instead of decaying for a minute.
        assert!(!s.probe_ok(2_000, ms(3), 2));
        assert_eq!(s.latency(), ms(3));
        // Same after an ejection's penalty, and its error rate starts afresh.
        s.eject(3_000, ms(1), None);
        assert!(s.latency() >= FAILURE_PENALTY);
        assert!(s.error_rate() > 0.0);
        s.record_success(4_000, ms(2));
        assert_eq!(s.latency(), ms(2));
        assert_eq!(s.error_rate(), 0.0);
        // A measured slow answer is not provisional: it decays as usual.
        s.record_success(5_000, ms(500));
        s.record_success(6_000, ms(2));
        assert!(s.latency() > ms(100), "{:?}", s.latency());
    }

    #[test]
    fn error_rate_raises_cost_and_fades_with_successes() {
        let cfg: UpstreamConfig = toml::from_str("name = \"a\"\nurl = \"http://x\"").unwrap();
        let up = Upstream::new(&cfg, Duration::from_secs(1), None).unwrap();
        up.state.record_success(0, Duration::from_millis(10));
        let clean = up.cost();
        up.state.record_soft_failure(1, Duration::from_millis(10));
        up.state.record_success(2, Duration::from_millis(10));
        assert!(up.state.error_rate() > 0.05);
        for i in 0..100 {
            up.state.record_success(3 + i, Duration::from_millis(10));
        }
        assert!(up.state.error_rate() < 0.001);
        assert!((up.cost() - clean).abs() / clean < 0.01);
    }

    #[test]
    fn error_rate_fades_with_time_too() {
        let s = LiveState::default();
        let sec = 1_000_000;
        // A run of failures (not enough to eject), then quiet: the next successes are probes.
        s.record_soft_failure(sec, Duration::from_millis(10));
        s.record_soft_failure(sec + 1, Duration::from_millis(10));
        let hot = s.error_rate();
        assert!(hot > 0.15, "{hot}");
        s.record_success(3 * sec, Duration::from_millis(10));
        assert!(s.error_rate() < hot / 5.0, "{}", s.error_rate());
        s.record_success(5 * sec, Duration::from_millis(10));
        assert!(s.error_rate() < 0.01, "{}", s.error_rate());
    }

    #[test]
    fn a_recovered_upstream_competes_again_within_a_few_probes() {
        let sec = 1_000_000;
        let ms = Duration::from_millis;
        let peer = LiveState::default();
        peer.record_success(0, ms(1));
        // Frozen: attempts time out (soft failures, short of an ejection), a probe answers
        // after 8 s when the process resumes.
        let frozen = LiveState::default();
        frozen.record_success(0, ms(1));
        frozen.record_soft_failure(sec, Duration::from_secs(5));
        frozen.record_soft_failure(2 * sec, Duration::from_secs(5));
        assert!(!frozen.probe_ok(10 * sec, Duration::from_secs(8), 2));
        assert!(
            frozen.latency() >= Duration::from_secs(5),
            "stalled: no traffic"
        );
        // The first fast probe after recovery: back to a fair estimate at once.
        frozen.probe_ok(12 * sec, ms(1), 2);
        assert_eq!(frozen.latency(), ms(1));
        // Slow for 10 s (300 ms answers: real, below a stall), then fast probes every 2 s.
        let slow = LiveState::default();
        for t in 0..20 {
            slow.record_success(t * sec / 2, ms(300));
        }
        let mut t = 10 * sec;
        let mut probes = 0;
        while slow.latency() > ms(3) {
            t += 2 * sec;
            slow.probe_ok(t, ms(1), 2);
            probes += 1;
        }
        assert!(probes <= 2, "{probes} probes to get back");
    }

    #[test]
    fn probes_lower_but_do_not_raise_an_estimate_that_real_answers_keep() {
        let sec = 1_000_000;
        let ms = Duration::from_millis;
        let s = LiveState::default();
        s.record_success(10 * sec, ms(1));
        // A slower probe a second later: real answers are recent, the estimate stays.
        s.probe_ok(11 * sec, ms(5), 2);
        assert_eq!(s.latency(), ms(1));
        // A faster probe still counts.
        s.probe_ok(11 * sec + 1, Duration::from_micros(500), 2);
        assert!(s.latency() < ms(1), "{:?}", s.latency());
        // Without real answers for a while, probes are the only sample: they count both ways.
        s.probe_ok(20 * sec, ms(5), 2);
        assert_eq!(s.latency(), ms(5));
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let s = LiveState::default();
        s.record_success(0, Duration::from_millis(100));
        assert_eq!(s.latency(), Duration::from_millis(100));
        s.record_success(DECAY.as_micros() as u64 * 5, Duration::from_millis(1));
        assert!(s.latency() < Duration::from_millis(2), "{:?}", s.latency());
    }
}
