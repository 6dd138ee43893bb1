//! The upstream pool: one immutable snapshot of every chain and its upstreams.
//!
//! The service holds the current [`Pool`] behind an `ArcSwap`: a request loads it once and keeps
//! that snapshot to the end, so a reload never changes the ground under a request in flight.
//! [`Pool::new`] with a previous pool hands every upstream with the same chain, name and URL its
//! old [`LiveState`](crate::state::upstream::LiveState), so latency history, heads and cool-downs
//! survive a reload (also one that only re-weights or re-tiers it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{Config, ConfigError, HealthConfig, HedgeConfig};
use crate::state::upstream::{Upstream, CHAIN_OK};

/// The lag allowance in blocks until a chain's block time is known.
pub const DEFAULT_MAX_LAG: u64 = 5;

/// A snapshot of the whole configuration, ready to route requests.
#[derive(Debug)]
pub struct Pool {
    /// The TLS server configuration when `[server.tls]` is set (files read at load).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Per-client rate limits, when configured (kept across reloads while unchanged).
    pub rate_limits: Option<Arc<crate::state::ratelimit::RateLimits>>,
    /// The validated configuration this snapshot was built from.
    pub config: Arc<Config>,
    /// The chains, in configuration order (sorted by name).
    pub chains: Vec<Chain>,
    /// URL path (without slashes) → index in `chains`.
    routes: HashMap<Box<str>, usize>,
}

/// One chain: its identity, its upstreams ordered by tier, and the tier boundaries.
#[derive(Debug)]
pub struct Chain {
    /// The configured name, also its first URL path.
    pub name: Arc<str>,
    /// The EIP-155 chain id.
    pub chain_id: u64,
    /// `eth_chainId`'s answer as raw JSON, e.g. `"0x1"` (shared, not copied, per request).
    pub chain_id_json: Bytes,
    /// `net_version`'s answer as raw JSON, e.g. `"1"`.
    pub net_version_json: Bytes,
    /// Most upstreams tried for one request.
    pub max_attempts: usize,
    /// Upstreams sorted by tier (stable: configuration order within a tier).
    pub upstreams: Vec<Arc<Upstream>>,
    /// Contiguous ranges of `upstreams` with the same tier, lowest tier first.
    pub tiers: Vec<Tier>,
    /// The URL paths this chain is served at, e.g. `["/mainnet", "/1"]`.
    pub paths: Vec<String>,
    /// Failure domains: one per `region` label, and one per upstream without a label.
    pub regions: Vec<Region>,
    /// Health-check settings.
    pub health: HealthConfig,
    /// Hedging settings.
    pub hedge: HedgeConfig,
    /// Send raw transactions to other regions too.
    pub broadcast_raw_transactions: bool,
    /// Chain-wide live state, shared across reloads while the chain id is unchanged.
    pub state: Arc<ChainState>,
    /// Cached metric handles.
    pub metrics: crate::state::metrics::ChainMetrics,
    /// Which methods the chain serves.
    pub policy: crate::method::policy::MethodPolicy,
    /// Some upstream lists methods it does not serve.
    pub any_unsupported: bool,
    /// Glob patterns of methods detour does not know that the configuration declares reads.
    pub declared_reads: Vec<String>,
    /// detour keeps filters itself (`filters.emulate`).
    pub filters_emulated: bool,
    /// Blocks below the head that count as final where the chain has no `finalized` tag.
    pub finality_depth: u64,
    /// The widest `eth_getLogs` range every upstream accepts: wider requests are split.
    pub logs_range: u64,
    /// Calls about state older than this many blocks go to archive upstreams first.
    pub archive_depth: u64,
    /// Some upstream is configured `archive = true`.
    pub archive_configured: bool,
}

/// The `eth_getLogs` block range an upstream accepts unless configured otherwise.
pub const DEFAULT_LOGS_RANGE: u64 = 10_000;

/// Chain-wide live state.
#[derive(Debug, Default)]
pub struct ChainState {
    /// The chain head: the highest head reported by a chain-verified upstream, plus one
    /// (0: none yet).
    head: AtomicU64,
    /// The highest block number answered to `eth_blockNumber` (answers never go backwards).
    served_block: AtomicU64,
    /// The highest block number answered by any replica sharing a Redis, as far as this one
    /// knows (its own raises and the others', told by pub/sub; 0: not known).
    shared_block: AtomicU64,
    /// Last client request (µs), to probe an idle chain slowly.
    last_traffic_us: AtomicU64,
    /// Some upstream's known head is below the chain head: requests must look at which block
    /// they need (set at once when the chain head rises, cleared by the health task).
    heads_differ: AtomicBool,
    /// When the chain head last rose (µs), for the block time.
    head_rose_us: AtomicU64,
    /// The chain's block time as observed from its head rising (µs, an average over about the
    /// last 10 rises; 0: not known yet).
    block_time_us: AtomicU64,
    /// Some upstream was learned not to keep old state: calls are routed by the age of the
    /// state they read.
    archive_learned: AtomicBool,
}

impl ChainState {
    /// Some upstream was learned not to keep old state.
    pub fn archive_learned(&self) {
        self.archive_learned.store(true, Relaxed);
    }

    /// The chain head, once an upstream reported one.
    #[inline]
    pub fn head(&self) -> Option<u64> {
        self.head.load(Relaxed).checked_sub(1)
    }

    /// Raises the chain head to `block` if higher, at `now` (µs).
    pub fn raise_head(&self, now: u64, block: u64) {
        let stored = block.saturating_add(1);
        let prev = self.head.fetch_max(stored, Relaxed);
        if stored <= prev || prev == 0 {
            if prev == 0 && stored > 0 {
                self.head_rose_us.store(now, Relaxed);
            }
            return;
        }
        if !self.heads_differ.load(Relaxed) {
            self.heads_differ.store(true, Relaxed);
        }
        let rose = self.head_rose_us.swap(now, Relaxed);
        let blocks = stored - prev;
        // A jump of thousands of blocks is a sync or a new upstream, not the chain's pace.
        if rose != 0 && now > rose && blocks <= 1_000 {
            let sample = (now - rose) / blocks;
            let prev_time = self.block_time_us.load(Relaxed);
            let next = if prev_time == 0 {
                sample
            } else {
                (prev_time * 9 + sample) / 10
            };
            self.block_time_us.store(next.max(1), Relaxed);
        }
    }

    /// The chain's observed block time, once the head rose twice.
    pub fn block_time(&self) -> Option<std::time::Duration> {
        let us = self.block_time_us.load(Relaxed);
        (us != 0).then(|| std::time::Duration::from_micros(us))
    }

    /// Whether some upstream may be behind the chain head (so lag checks matter now).
    #[inline]
    pub fn heads_differ(&self) -> bool {
        self.heads_differ.load(Relaxed)
    }

    /// Sets the chain head (recomputed from the upstreams by the health task).
    pub fn set_head(&self, block: u64) {
        self.head.store(block.saturating_add(1), Relaxed);
    }

    /// Records a client request at `now`.
    #[inline]
    pub fn touch(&self, now: u64) {
        // Skip the store (and the cache-line traffic) when it would change little.
        if now.saturating_sub(self.last_traffic_us.load(Relaxed)) > 100_000 {
            self.last_traffic_us.store(now, Relaxed);
        }
    }

    /// The last client request (µs; 0: none).
    pub fn last_traffic(&self) -> u64 {
        self.last_traffic_us.load(Relaxed)
    }

    /// The highest block number answered to `eth_blockNumber` (0: none yet).
    pub fn served_block(&self) -> u64 {
        self.served_block.load(Relaxed)
    }

    /// The highest block number any replica answered, as far as this one knows (0: not known).
    pub fn shared_block(&self) -> u64 {
        self.shared_block.load(Relaxed)
    }

    /// Any replica's highest answered block is `n` (told by Redis): answers here never go
    /// below it. `reset`: the chain was reset (a dev chain restarted), `n` replaces it.
    pub fn learn_shared_block(&self, n: u64, reset: bool) {
        if reset {
            self.shared_block.store(n, Relaxed);
        } else {
            self.shared_block.fetch_max(n, Relaxed);
            self.served_block.fetch_max(n, Relaxed);
        }
    }

    /// What is known of the other replicas' answers may be stale (messages were lost).
    pub fn forget_shared_block(&self) {
        self.shared_block.store(0, Relaxed);
    }

    /// The block number to answer to `eth_blockNumber` given an upstream's answer `block`: the
    /// highest ever answered, so answers never go backwards.
    pub fn monotonic_block(&self, block: u64) -> u64 {
        let prev = self.served_block.fetch_max(block, Relaxed);
        prev.max(block)
    }
}

/// A failure domain and whether it is degraded.
#[derive(Debug)]
pub struct Region {
    /// The label (or the upstream's name when it has none).
    pub name: Arc<str>,
    /// Whether the label came from configuration.
    pub labelled: bool,
    /// Member indices in [`Chain::upstreams`].
    pub members: Vec<usize>,
    /// Enough members failed recently: serve from other regions first.
    degraded: AtomicBool,
}

impl Region {
    /// Whether the region is degraded.
    #[inline]
    pub fn degraded(&self) -> bool {
        self.degraded.load(Relaxed)
    }
}

/// A range of a chain's upstreams that share a tier.
#[derive(Debug)]
pub struct Tier {
    /// The tier number.
    pub tier: u32,
    /// First index in [`Chain::upstreams`].
    pub start: usize,
    /// One past the last index.
    pub end: usize,
    /// Running sum of weights for weighted sampling; empty when all weights are equal.
    pub cumulative: Vec<u64>,
}

impl Pool {
    /// Builds a snapshot from a validated configuration, keeping the live state of upstreams that
    /// `previous` has with the same chain, name and URL (re-weighting or re-tiering keeps it).
    pub fn new(config: Config, previous: Option<&Pool>) -> Result<Pool, ConfigError> {
        config.validate()?;
        let mut chains = Vec::with_capacity(config.chains.len());
        let mut routes = HashMap::new();
        let single = config.chains.len() == 1;
        for (name, cc) in &config.chains {
            let prev_chain = previous
                .and_then(|p| p.chain(name))
                .filter(|c| c.chain_id == cc.chain_id);
            let mut upstreams = Vec::with_capacity(cc.upstreams.len());
            for (i, uc) in cc.upstreams.iter().enumerate() {
                let state = prev_chain
                    // Same name and URL: the same endpoint, whatever else changed (tier,
                    // weight, region, timeouts), so its health and history still hold.
                    .and_then(|c| {
                        c.upstreams
                            .iter()
                            .find(|u| u.config.name == uc.name && u.config.url == uc.url)
                    })
                    .map(|u| u.state.clone());
                let mut up =
                    Upstream::new(uc, config.client.attempt_timeout, state).map_err(|why| {
                        ConfigError {
                            problems: vec![(format!("chains.{name}.upstreams[{i}]"), why)],
                        }
                    })?;
                up.costs =
                    crate::method::cost::Costs::new(&config.compute_units, &uc.compute_units);
                upstreams.push(up);
            }
            upstreams.sort_by_key(|u| u.tier);
            let regions = regions(&mut upstreams);
            let upstreams: Vec<Arc<Upstream>> = upstreams.into_iter().map(Arc::new).collect();
            let tiers = tiers(&upstreams);
            let index = chains.len();
            let mut paths = vec![format!("/{name}"), format!("/{}", cc.chain_id)];
            routes.insert(name.as_str().into(), index);
            routes.insert(cc.chain_id.to_string().into(), index);
            if single {
                routes.insert("".into(), index);
                paths.push("/".into());
            }
            chains.push(Chain {
                name: name.as_str().into(),
                chain_id: cc.chain_id,
                chain_id_json: Bytes::from(format!("\"0x{:x}\"", cc.chain_id)),
                net_version_json: Bytes::from(format!("\"{}\"", cc.chain_id)),
                max_attempts: cc.max_attempts,
                upstreams,
                tiers,
                paths,
                regions,
                health: cc.health.clone(),
                hedge: cc.hedge.clone(),
                broadcast_raw_transactions: cc.broadcast_raw_transactions,
                state: prev_chain.map(|c| c.state.clone()).unwrap_or_default(),
                metrics: Default::default(),
                policy: crate::method::policy::MethodPolicy::new(
                    &cc.methods.allow,
                    &cc.methods.deny,
                ),
                any_unsupported: cc
                    .upstreams
                    .iter()
                    .any(|u| !u.unsupported_methods.is_empty()),
                declared_reads: cc.methods.reads.clone(),
                filters_emulated: config.filters.emulate,
                finality_depth: cc
                    .finality_depth
                    .unwrap_or(config.tracker.reorg_depth as u64),
                logs_range: cc
                    .upstreams
                    .iter()
                    .map(|u| u.max_logs_range.unwrap_or(DEFAULT_LOGS_RANGE))
                    .min()
                    .unwrap_or(DEFAULT_LOGS_RANGE)
                    .max(1),
                archive_depth: cc.archive_depth,
                archive_configured: cc.upstreams.iter().any(|u| u.archive == Some(true)),
            });
        }
        let tls = match &config.server.tls {
            Some(t) => Some(
                crate::config::tls::load(t).map_err(|(at, why)| ConfigError {
                    problems: vec![(at.to_string(), why)],
                })?,
            ),
            None => None,
        };
        let rate_limits = config.server.rate_limit.map(|quota| {
            previous
                .and_then(|p| p.rate_limits.clone())
                .filter(|r| r.quota() == quota)
                .unwrap_or_else(|| Arc::new(crate::state::ratelimit::RateLimits::new(quota)))
        });
        Ok(Pool {
            tls,
            rate_limits,
            config: Arc::new(config),
            chains,
            routes,
        })
    }

    /// The chain served at `path` (`/mainnet`, `/1`, `/mainnet/`, or `/` with one chain).
    pub fn route(&self, path: &str) -> Option<&Chain> {
        let key = path.strip_prefix('/').unwrap_or(path);
        let key = key.strip_suffix('/').unwrap_or(key);
        self.routes.get(key).map(|&i| &self.chains[i])
    }

    /// The chain with this configured name.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| &*c.name == name)
    }

    /// Every served RPC path, for error messages and the index page.
    pub fn paths(&self) -> Vec<&str> {
        self.chains
            .iter()
            .flat_map(|c| c.paths.iter().map(String::as_str))
            .collect()
    }
}

/// Groups upstreams into failure domains and sets each one's `region_id`.
fn regions(upstreams: &mut [Upstream]) -> Vec<Region> {
    let mut out: Vec<Region> = Vec::new();
    for (i, up) in upstreams.iter_mut().enumerate() {
        let found = up
            .region
            .as_ref()
            .and_then(|label| out.iter().position(|r| r.labelled && *r.name == **label));
        let id = match found {
            Some(id) => id,
            None => {
                out.push(Region {
                    name: up.region.clone().unwrap_or_else(|| up.name.clone()),
                    labelled: up.region.is_some(),
                    members: Vec::new(),
                    degraded: AtomicBool::new(false),
                });
                out.len() - 1
            }
        };
        out[id].members.push(i);
        up.region_id = id;
    }
    out
}

fn tiers(upstreams: &[Arc<Upstream>]) -> Vec<Tier> {
    let mut out: Vec<Tier> = Vec::new();
    for (i, up) in upstreams.iter().enumerate() {
        match out.last_mut() {
            Some(t) if t.tier == up.tier => t.end = i + 1,
            _ => out.push(Tier {
                tier: up.tier,
                start: i,
                end: i + 1,
                cumulative: Vec::new(),
            }),
        }
    }
    for t in &mut out {
        let members = &upstreams[t.start..t.end];
        if members.iter().any(|u| u.weight != members[0].weight) {
            let mut sum = 0u64;
            t.cumulative = members
                .iter()
                .map(|u| {
                    sum += u64::from(u.weight);
                    sum
                })
                .collect();
        }
    }
    out
}

impl Chain {
    /// Whether calls are routed by the age of the state they read: some upstream is
    /// configured as an archive node, or was learned not to be one.
    #[inline]
    pub fn archive_routing(&self) -> bool {
        self.archive_configured || self.state.archive_learned.load(Relaxed)
    }

    /// Whether a call of `method` may reach a second upstream after the first may have seen
    /// it (hedges, retries after a timeout): known reads, and methods `methods.reads` declares.
    #[inline]
    pub fn may_repeat(&self, method: &str) -> bool {
        match crate::method::kind::method_kind(method) {
            crate::method::kind::MethodKind::Unknown => self
                .declared_reads
                .iter()
                .any(|p| crate::method::policy::glob(p, method)),
            kind => kind.may_repeat(),
        }
    }

    /// Whether at least one upstream is servable now (not cooling down, not on another chain,
    /// its hostname resolved).
    pub fn ready(&self, now: u64) -> bool {
        self.upstreams.iter().any(|u| u.servable(now))
    }

    /// Whether upstream `i` can serve a request needing the latest state now.
    #[inline]
    pub fn fresh(&self, i: usize, now: u64) -> bool {
        self.upstreams[i].fresh(
            self.state.head(),
            self.max_lag(),
            self.health.stale_after.as_micros() as u64,
            now,
        )
    }

    /// How many blocks an upstream may be behind the chain head and still serve the latest
    /// state: `health.max_lag_blocks` when configured; otherwise the blocks the chain makes in
    /// one `health.probe_interval` (at least 1). Heads are learned at that pace, so an upstream
    /// at the head may look that far behind until it is asked again; a smaller allowance would
    /// turn every probe cycle into flapping. 1 block on mainnet (12 s) and on 2 s chains with
    /// the default 2 s probes, 2 on a 1 s chain, 8 on Arbitrum (0.25 s). Until the block time
    /// is known (the head has risen twice), [`DEFAULT_MAX_LAG`].
    #[inline]
    pub fn max_lag(&self) -> u64 {
        if let Some(n) = self.health.max_lag_blocks {
            return n;
        }
        let block_us = self.state.block_time_us.load(Relaxed);
        if block_us == 0 {
            return DEFAULT_MAX_LAG;
        }
        let window = self.health.probe_interval.as_micros() as u64;
        window.div_ceil(block_us).clamp(1, 1_000)
    }

    /// Records that upstream `i` proved to have `block` (an answer that names it: a receipt, a
    /// transaction, a block): its known head, and the chain's, rise to it if lower.
    pub fn observe_has_block(&self, i: usize, now: u64, block: u64) {
        let up = &self.upstreams[i];
        if up.state.raise_head(now, block) && up.state.chain_check() == CHAIN_OK {
            self.state.raise_head(now, block);
        }
    }

    /// Recomputes the chain head from the chain-verified upstreams that are not cooling down
    /// (so one upstream's bogus or abandoned head does not stick forever).
    pub fn recompute_head(&self, now: u64) {
        let head = self
            .upstreams
            .iter()
            .filter(|u| u.state.chain_check() == CHAIN_OK && u.usable(now))
            .filter_map(|u| u.state.head())
            .max();
        if let Some(head) = head {
            self.state.set_head(head);
        }
        // The served block number stays within `max_lag_blocks` of what verified upstreams
        // reported lately (cooling down ones included, so a failover does not step answers
        // back, and the allowance covers a node that steps back a block or two): a bogus
        // answer, or one from an upstream a reload removed, decays instead of sticking.
        let window = self.health.stale_after.as_micros() as u64;
        let recent = self
            .upstreams
            .iter()
            .filter(|u| u.state.chain_check() == CHAIN_OK && !u.quarantined())
            .filter(|u| now.saturating_sub(u.state.head_seen()) <= window)
            .filter_map(|u| u.state.head())
            .max();
        if let Some(recent) = recent {
            if self.state.served_block() > recent.saturating_add(self.max_lag()) {
                self.state.served_block.fetch_min(recent, Relaxed);
            }
        }
        let chain_head = self.state.head();
        let differ = self.upstreams.iter().any(|u| {
            !u.quarantined() && u.state.head().zip(chain_head).is_some_and(|(h, c)| h < c)
        });
        self.state.heads_differ.store(differ, Relaxed);
    }

    /// Records a head reported for upstream `i` (by a probe or live traffic).
    pub fn observe_head(&self, i: usize, now: u64, block: u64) {
        let up = &self.upstreams[i];
        up.state.observe_head(now, block);
        if up.state.chain_check() == CHAIN_OK {
            self.state.raise_head(now, block);
        }
    }

    /// Recomputes whether upstream `i`'s region is degraded; returns the new verdict when it
    /// changed. Cheap to call after every failure; after a success only when degraded.
    pub fn update_region(&self, i: usize, now: u64) -> Option<bool> {
        let region = &self.regions[self.upstreams[i].region_id];
        self.set_region(region, now)
    }

    fn set_region(&self, region: &Region, now: u64) -> Option<bool> {
        let verdict = self.region_failing(region, now);
        if region.degraded.swap(verdict, Relaxed) == verdict {
            return None;
        }
        if verdict {
            tracing::warn!(
                chain = &*self.name,
                region = &*region.name,
                "region degraded: its upstreams serve only after other regions'"
            );
        } else {
            tracing::info!(
                chain = &*self.name,
                region = &*region.name,
                "region recovered"
            );
        }
        Some(verdict)
    }

    fn region_failing(&self, region: &Region, now: u64) -> bool {
        let n = region.members.len();
        if n < 2 {
            // A domain of one is the upstream itself: its own health covers it.
            return false;
        }
        let window = self.health.region_window.as_micros() as u64;
        let failing = region
            .members
            .iter()
            .filter(|&&m| self.upstreams[m].state.failing(now, window))
            .count();
        failing > 0 && failing as f64 >= self.health.region_failure_share * n as f64
    }

    /// Recomputes every region (the health task does this each tick so windows expire).
    pub fn update_regions(&self, now: u64) {
        for r in &self.regions {
            self.set_region(r, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml(&format!(
            r#"
            [chains.mainnet]
            chain_id = 1
            [[chains.mainnet.upstreams]]
            name = "b"
            url = "http://127.0.0.1:2"
            tier = 1
            [[chains.mainnet.upstreams]]
            name = "a"
            url = "http://127.0.0.1:1"
            {extra}
            "#
        ))
        .unwrap()
    }

    #[test]
    fn routes_by_name_id_and_root_when_single() {
        let p = Pool::new(config(""), None).unwrap();
        for path in ["/mainnet", "/mainnet/", "/1", "/", ""] {
            assert_eq!(p.route(path).map(|c| &*c.name), Some("mainnet"), "{path}");
        }
        assert!(p.route("/2").is_none());
        assert_eq!(p.paths(), ["/mainnet", "/1", "/"]);
        assert_eq!(p.chains[0].chain_id_json, "\"0x1\"");
    }

    #[test]
    fn the_lag_allowance_follows_the_block_time() {
        let p = Pool::new(config(""), None).unwrap();
        let c = &p.chains[0];
        assert_eq!(c.max_lag(), DEFAULT_MAX_LAG, "block time unknown yet");
        let sec = 1_000_000;
        // A 1 s chain seen through 2 s probes: the head rises 2 blocks every 2 s.
        for k in 0..10 {
            c.state.raise_head(k * 2 * sec, 100 + 2 * k);
        }
        assert_eq!(
            c.state.block_time(),
            Some(std::time::Duration::from_secs(1))
        );
        assert_eq!(c.max_lag(), 2, "the blocks of one 2 s probe interval");
        // A 12 s chain: one block.
        let p = Pool::new(config(""), None).unwrap();
        let c = &p.chains[0];
        for k in 0..10 {
            c.state.raise_head(k * 12 * sec, 100 + k);
        }
        assert_eq!(c.max_lag(), 1);
        // A sync's jump of thousands of blocks does not count as the chain's pace.
        c.state.raise_head(200 * sec, 1_000_000);
        assert_eq!(
            c.state.block_time(),
            Some(std::time::Duration::from_secs(12))
        );
        // A configured allowance wins.
        let p = Pool::new(config("").tap_lag(7), None).unwrap();
        assert_eq!(p.chains[0].max_lag(), 7);
    }

    trait TapLag {
        fn tap_lag(self, n: u64) -> Config;
    }

    impl TapLag for Config {
        fn tap_lag(mut self, n: u64) -> Config {
            for c in self.chains.values_mut() {
                c.health.max_lag_blocks = Some(n);
            }
            self
        }
    }

    #[test]
    fn upstreams_sorted_by_tier() {
        let p = Pool::new(config(""), None).unwrap();
        let c = &p.chains[0];
        let names: Vec<_> = c.upstreams.iter().map(|u| &*u.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c.tiers.len(), 2);
        assert_eq!(
            (c.tiers[0].start, c.tiers[0].end, c.tiers[1].tier),
            (0, 1, 1)
        );
    }

    #[test]
    fn reload_keeps_state_of_the_same_endpoints() {
        let old = Pool::new(config(""), None).unwrap();
        let new = Pool::new(config("weight = 5\ntier = 2"), Some(&old)).unwrap();
        // "a" was re-weighted and re-tiered: the same endpoint, so the same live state
        // (cool-downs and heads survive); "b" is unchanged.
        let find = |p: &Pool, n: &str| {
            p.chains[0]
                .upstreams
                .iter()
                .find(|u| &*u.name == n)
                .unwrap()
                .state
                .clone()
        };
        assert!(Arc::ptr_eq(&find(&old, "a"), &find(&new, "a")));
        assert!(Arc::ptr_eq(&find(&old, "b"), &find(&new, "b")));
        // A new URL is a new endpoint: fresh state.
        let moved = Pool::new(
            Config::from_toml(
                &old.config
                    .to_toml()
                    .replace("http://127.0.0.1:1", "http://127.0.0.1:9"),
            )
            .unwrap(),
            Some(&new),
        )
        .unwrap();
        assert!(!Arc::ptr_eq(&find(&new, "a"), &find(&moved, "a")));
    }
}
