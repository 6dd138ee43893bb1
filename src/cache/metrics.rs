//! The cache's metrics, read at each scrape: per chain and method, what the cache answered
//! (hits, misses, merged reads, bypasses) and evicted (for room, by reorgs); per chain, the
//! bytes and entries held and the upstream calls saved.

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::store::Count;
use super::Caches;
use crate::follow::metrics::{write, Series};

/// The collector; registered with the proxy's metrics.
#[derive(Debug)]
pub struct CacheMetrics(pub Weak<Caches>);

impl Collector for CacheMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(caches) = self.0.upgrade() else {
            return Ok(());
        };
        let all = caches.all();
        let (mut requests, mut evictions): (Series<'_>, Series<'_>) = (Vec::new(), Vec::new());
        let (mut bytes, mut entries, mut saved) = (Vec::new(), Vec::new(), Vec::new());
        for cache in &all {
            let chain: &str = &cache.chain;
            for (count, label) in Count::ALL {
                let series = match count {
                    Count::EvictedSize | Count::EvictedReorg => &mut evictions,
                    _ => &mut requests,
                };
                let key = match count {
                    Count::EvictedSize | Count::EvictedReorg => "reason",
                    _ => "result",
                };
                for (method, n) in cache.stats.counts(count) {
                    series.push((vec![("chain", chain), ("method", method), (key, label)], n));
                }
            }
            let (held, len) = cache.held();
            bytes.push((vec![("chain", chain)], held));
            entries.push((vec![("chain", chain)], len as u64));
            let s = &cache.stats;
            saved.push((
                vec![("chain", chain)],
                s.total(Count::Hit) + s.total(Count::Merged) + s.total(Count::Shared),
            ));
        }
        write(
            &mut encoder,
            "cache_requests",
            "Cacheable client calls by chain, method and result (hit: from the cache; shared: from the cache shared by replicas through Redis; merged: the answer of an identical read in flight; miss: asked upstream; bypass: Cache-Control: no-cache)",
            MetricType::Counter,
            &requests,
        )?;
        write(
            &mut encoder,
            "cache_evictions",
            "Cached answers evicted, by chain, method and reason (size: for room; reorg: a reorg replaced their block, or following the chain stopped)",
            MetricType::Counter,
            &evictions,
        )?;
        write(
            &mut encoder,
            "cache_bytes",
            "Bytes the cache holds (answers, keys and bookkeeping), by chain",
            MetricType::Gauge,
            &bytes,
        )?;
        write(
            &mut encoder,
            "cache_entries",
            "Answers the cache holds, by chain",
            MetricType::Gauge,
            &entries,
        )?;
        write(
            &mut encoder,
            "cache_upstream_calls_saved",
            "Client calls answered without an upstream call of their own (cache hits, shared cache hits and merged reads), by chain",
            MetricType::Counter,
            &saved,
        )?;
        Ok(())
    }
}
