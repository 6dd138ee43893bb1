//! The response cache and merged in-flight reads, per chain.
//!
//! - [`rules`]: what is cacheable and for how long (a table, with reasons).
//! - [`store`]: one chain's cache: the entries (bounded by bytes, least recently used out
//!   first, through `quick_cache`), the index of entries that a reorg may invalidate, the reads
//!   in flight that identical reads wait for, and what it did (for metrics).
//!
//! A chain's cache learns the chain's head and reorgs from the chain tracker
//! ([`crate::follow::tracker`]), which tells it of every change before the change is visible to
//! anyone: a reorg at height `h` evicts every non-final entry at or above `h` before any further
//! answer is served from the cache. Answers that depend on the head or on recent blocks are
//! cached only while the chain is followed; the cache keeps the chain followed while such reads
//! arrive.

pub mod metrics;
pub mod rules;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::state::pool::Pool;
pub use store::{ChainCache, Lookup, Ticket, Waiter};

/// The response header that says how a request was served: `hit` (every call from the cache),
/// `partial` (some), `miss` (none, though some were cacheable), `bypass` (the client asked for
/// fresh answers with `Cache-Control: no-cache`).
pub const CACHE_HEADER: &str = "x-detour-cache";

/// The caches of every chain, by name. A reload keeps a chain's cache while its chain id is
/// the same; a removed chain's cache is dropped.
#[derive(Debug, Default)]
pub struct Caches {
    chains: ArcSwap<ByChain>,
}

type ByChain = HashMap<Arc<str>, Arc<ChainCache>, foldhash::fast::RandomState>;

impl Caches {
    /// Caches for the chains of `pool` (keeping those of `self` that still apply).
    pub fn update(&self, pool: &Pool) {
        let old = self.chains.load();
        let mut chains = ByChain::default();
        for chain in &pool.chains {
            let cache = match old.get(&chain.name) {
                Some(c) if c.chain_id == chain.chain_id => {
                    c.set_capacity(pool.config.cache.max_bytes);
                    c.clone()
                }
                _ => ChainCache::new(
                    chain.name.clone(),
                    chain.chain_id,
                    pool.config.cache.max_bytes,
                ),
            };
            chains.insert(chain.name.clone(), cache);
        }
        self.chains.store(Arc::new(chains));
    }

    /// The cache of `chain`.
    #[inline]
    pub fn chain(&self, chain: &str) -> Option<Arc<ChainCache>> {
        self.chains.load().get(chain).cloned()
    }

    /// Every chain's cache, for metrics and `/status`.
    pub fn all(&self) -> Vec<Arc<ChainCache>> {
        let mut all: Vec<_> = self.chains.load().values().cloned().collect();
        all.sort_by(|a, b| a.chain.cmp(&b.chain));
        all
    }
}
