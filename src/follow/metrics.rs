//! Metrics of following the chain, read at each scrape: per chain, the tracker's head and what
//! it did (blocks added, filled in, removed by reorgs; reorgs), filters and subscriptions by
//! kind; and the WebSocket connections and notifications the proxy counts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::filters::Registry;

/// The collector; registered with the proxy's metrics.
#[derive(Debug)]
pub struct FollowMetrics {
    /// The registry of filters and subscriptions.
    pub registry: Weak<Registry>,
    /// WebSocket connections open now.
    pub websockets: Arc<AtomicUsize>,
    /// Notifications queued to WebSocket clients.
    pub notifications: Arc<AtomicU64>,
}

pub(crate) type Series<'a> = Vec<(Vec<(&'static str, &'a str)>, u64)>;

pub(crate) fn write(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    series: &Series<'_>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    if let [(labels, value)] = series.as_slice() {
        if labels.is_empty() {
            return match kind {
                MetricType::Counter => ConstCounter::new(*value).encode(metric),
                _ => ConstGauge::new(*value as i64).encode(metric),
            };
        }
    }
    for (labels, value) in series {
        let family = metric.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*value).encode(family)?,
            _ => ConstGauge::new(*value as i64).encode(family)?,
        }
    }
    Ok(())
}

impl Collector for FollowMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        write(
            &mut encoder,
            "websocket_connections",
            "WebSocket client connections open",
            MetricType::Gauge,
            &vec![(vec![], self.websockets.load(Relaxed) as u64)],
        )?;
        write(
            &mut encoder,
            "websocket_notifications",
            "Subscription notifications sent to WebSocket clients",
            MetricType::Counter,
            &vec![(vec![], self.notifications.load(Relaxed))],
        )?;
        let Some(registry) = self.registry.upgrade() else {
            return Ok(());
        };
        write(
            &mut encoder,
            "websocket_relayed_subscriptions",
            "Upstream subscriptions relayed to WebSocket clients (kinds other than newHeads and logs), each shared by the clients with the same params",
            MetricType::Gauge,
            &vec![(vec![], registry.relays() as u64)],
        )?;
        let census = registry.census();
        let mut readers: Series<'_> = Vec::new();
        let (mut following, mut head) = (Vec::new(), Vec::new());
        let (mut added, mut backfilled, mut removed, mut reorgs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut ws_heads, mut source_changes) = (Vec::new(), Vec::new());
        let sources: Vec<Option<Arc<str>>> = census.iter().map(|(t, _, _)| t.source()).collect();
        let mut source = Vec::new();
        for (tracker, running, counts) in &census {
            let chain: &str = &tracker.chain;
            for (what, kind, n) in counts {
                let name = if *what == "filter" {
                    "filter"
                } else {
                    "subscription"
                };
                readers.push((
                    vec![("chain", chain), ("type", name), ("kind", kind)],
                    *n as u64,
                ));
            }
            following.push((vec![("chain", chain)], u64::from(*running)));
            if let Some(b) = tracker.head().filter(|_| *running) {
                head.push((vec![("chain", chain)], b.number));
            }
            let s = &tracker.stats;
            added.push((vec![("chain", chain)], s.added.load(Relaxed)));
            backfilled.push((vec![("chain", chain)], s.backfilled.load(Relaxed)));
            removed.push((vec![("chain", chain)], s.removed.load(Relaxed)));
            reorgs.push((vec![("chain", chain)], s.reorgs.load(Relaxed)));
            ws_heads.push((vec![("chain", chain)], s.ws_heads.load(Relaxed)));
            source_changes.push((vec![("chain", chain)], s.source_changes.load(Relaxed)));
        }
        for ((tracker, running, _), up) in census.iter().zip(&sources) {
            if *running {
                let labels = match up {
                    Some(up) => vec![
                        ("chain", &*tracker.chain),
                        ("via", "websocket"),
                        ("upstream", &**up),
                    ],
                    None => vec![("chain", &*tracker.chain), ("via", "polling")],
                };
                source.push((labels, 1));
            }
        }
        write(
            &mut encoder,
            "chain_readers",
            "Filters and subscriptions open, by chain, type (filter, subscription) and kind",
            MetricType::Gauge,
            &readers,
        )?;
        write(
            &mut encoder,
            "tracker_following",
            "1 while detour follows the chain for its filters and subscriptions",
            MetricType::Gauge,
            &following,
        )?;
        write(
            &mut encoder,
            "tracker_head_block",
            "The head the chain tracker followed to",
            MetricType::Gauge,
            &head,
        )?;
        write(
            &mut encoder,
            "tracker_blocks_added",
            "Blocks the tracker saw become canonical",
            MetricType::Counter,
            &added,
        )?;
        write(
            &mut encoder,
            "tracker_blocks_backfilled",
            "Of the blocks added, those filled in below a new head (missed polls, upstream switches)",
            MetricType::Counter,
            &backfilled,
        )?;
        write(
            &mut encoder,
            "tracker_blocks_removed",
            "Blocks dropped from the canonical chain by reorgs",
            MetricType::Counter,
            &removed,
        )?;
        write(
            &mut encoder,
            "tracker_reorgs",
            "Reorgs the tracker followed",
            MetricType::Counter,
            &reorgs,
        )?;
        write(
            &mut encoder,
            "tracker_source",
            "How each followed chain learns of new heads: via an upstream's WebSocket (named) or polling over HTTP",
            MetricType::Gauge,
            &source,
        )?;
        write(
            &mut encoder,
            "tracker_websocket_heads",
            "Heads announced by the chain's WebSocket source",
            MetricType::Counter,
            &ws_heads,
        )?;
        write(
            &mut encoder,
            "tracker_source_changes",
            "Times a WebSocket head source was given up (closed, silent, lagging or unfit)",
            MetricType::Counter,
            &source_changes,
        )?;
        Ok(())
    }
}
