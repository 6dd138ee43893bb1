//! The upstream pool: one immutable snapshot of every chain and its upstreams.
//!
//! The service holds the current [`Pool`] behind an `ArcSwap`: a request loads it once and keeps
//! that snapshot to the end, so a reload never changes the ground under a request in flight.
//! [`Pool::new`] with a previous pool hands every unchanged upstream (same chain, name and
//! configuration) its old [`LiveState`](crate::upstream::LiveState), so latency history and
//! cool-downs survive a reload.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{Config, ConfigError};
use crate::upstream::Upstream;

/// A snapshot of the whole configuration, ready to route requests.
#[derive(Debug)]
pub struct Pool {
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
    /// `previous` has with the same chain, name and configuration.
    pub fn new(config: Config, previous: Option<&Pool>) -> Result<Pool, ConfigError> {
        config.validate()?;
        let mut chains = Vec::with_capacity(config.chains.len());
        let mut routes = HashMap::new();
        let single = config.chains.len() == 1;
        for (name, cc) in &config.chains {
            let prev_chain = previous.and_then(|p| p.chain(name));
            let mut upstreams = Vec::with_capacity(cc.upstreams.len());
            for (i, uc) in cc.upstreams.iter().enumerate() {
                let state = prev_chain
                    .and_then(|c| c.upstreams.iter().find(|u| u.config == *uc))
                    .map(|u| u.state.clone());
                let up =
                    Upstream::new(uc, config.client.attempt_timeout, state).map_err(|why| {
                        ConfigError {
                            problems: vec![(format!("chains.{name}.upstreams[{i}]"), why)],
                        }
                    })?;
                upstreams.push(Arc::new(up));
            }
            upstreams.sort_by_key(|u| u.tier);
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
            });
        }
        Ok(Pool {
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
    /// Whether at least one upstream is usable now (not cooling down).
    pub fn ready(&self, now: u64) -> bool {
        self.upstreams.iter().any(|u| u.usable(now))
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
    fn reload_keeps_state_of_unchanged_upstreams_only() {
        let old = Pool::new(config(""), None).unwrap();
        let new = Pool::new(config("weight = 5"), Some(&old)).unwrap();
        let (o, n) = (&old.chains[0], &new.chains[0]);
        // "b" is unchanged: same state. "a" changed its weight: fresh state.
        assert!(Arc::ptr_eq(&o.upstreams[1].state, &n.upstreams[1].state));
        assert!(!Arc::ptr_eq(&o.upstreams[0].state, &n.upstreams[0].state));
    }
}
