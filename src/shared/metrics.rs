//! The shared state's metrics, read at each scrape: whether Redis is available, and the
//! operations, errors and timeouts of the request path.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use arc_swap::ArcSwapOption;

use super::Shared;

/// The collector; registered with the proxy's metrics (it writes nothing while `[shared]`
/// names no Redis).
#[derive(Debug)]
pub struct SharedMetrics(pub Weak<ArcSwapOption<Shared>>);

impl Collector for SharedMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(s) = self.0.upgrade().and_then(|s| s.load_full()) else {
            return Ok(());
        };
        let up = encoder.encode_descriptor(
            "shared_up",
            "Whether Redis ([shared] redis_url) answers: 1, state is shared; 0, this replica serves with its own",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(s.up.load(Relaxed))).encode(up)?;
        for (name, help, value) in [
            ("shared_operations", "Redis operations on the request path", &s.ops),
            ("shared_errors", "Redis operations on the request path that failed", &s.errors),
            (
                "shared_timeouts",
                "Redis operations on the request path that took over [shared] op_timeout (the request went on without them)",
                &s.timeouts,
            ),
        ] {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value.load(Relaxed)).encode(m)?;
        }
        Ok(())
    }
}
