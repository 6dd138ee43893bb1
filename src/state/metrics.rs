//! Prometheus metrics (`GET /metrics`, OpenMetrics text via the `prometheus-client` crate).
//!
//! Counters and histograms on the request path are resolved to their label set once and then
//! only incremented (an atomic add): per chain for each known method, per upstream for each
//! outcome, each handle cached in a `OnceLock` where it is used. Gauges that describe live state
//! (upstream state, head, lag, latency estimate, in-flight) are read from the current pool at
//! scrape time by a collector, so they cost nothing between scrapes.
//!
//! The `method` label is bounded: methods outside [`KNOWN_METHODS`] count as `other`.

use std::sync::{Arc, OnceLock, Weak};

use crate::client::stream::StreamEnd;
use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::{Registry, Unit};

use crate::state::pool::Pool;
use crate::state::upstream::now_us;

/// Methods that get their own `method` label value, sorted (binary search); others are `other`.
pub const KNOWN_METHODS: &[&str] = &[
    "debug_traceBlockByHash",
    "debug_traceBlockByNumber",
    "debug_traceCall",
    "debug_traceTransaction",
    "eth_accounts",
    "eth_blobBaseFee",
    "eth_blockNumber",
    "eth_call",
    "eth_chainId",
    "eth_coinbase",
    "eth_createAccessList",
    "eth_estimateGas",
    "eth_feeHistory",
    "eth_gasPrice",
    "eth_getBalance",
    "eth_getBlockByHash",
    "eth_getBlockByNumber",
    "eth_getBlockReceipts",
    "eth_getBlockTransactionCountByHash",
    "eth_getBlockTransactionCountByNumber",
    "eth_getCode",
    "eth_getFilterChanges",
    "eth_getFilterLogs",
    "eth_getLogs",
    "eth_getProof",
    "eth_getStorageAt",
    "eth_getTransactionByBlockHashAndIndex",
    "eth_getTransactionByBlockNumberAndIndex",
    "eth_getTransactionByHash",
    "eth_getTransactionCount",
    "eth_getTransactionReceipt",
    "eth_getUncleByBlockHashAndIndex",
    "eth_getUncleByBlockNumberAndIndex",
    "eth_getUncleCountByBlockHash",
    "eth_getUncleCountByBlockNumber",
    "eth_maxPriorityFeePerGas",
    "eth_newBlockFilter",
    "eth_newFilter",
    "eth_newPendingTransactionFilter",
    "eth_protocolVersion",
    "eth_sendRawTransaction",
    "eth_sendTransaction",
    "eth_sign",
    "eth_signTransaction",
    "eth_signTypedData_v4",
    "eth_subscribe",
    "eth_syncing",
    "eth_uninstallFilter",
    "eth_unsubscribe",
    "net_listening",
    "net_peerCount",
    "net_version",
    "trace_block",
    "trace_call",
    "trace_filter",
    "trace_transaction",
    "txpool_content",
    "txpool_status",
    "web3_clientVersion",
    "web3_sha3",
];

/// The `method` label slot of a method: its index in [`KNOWN_METHODS`], or the last slot.
///
/// Looked up among the known methods of the same length, last byte first: one or two
/// comparisons for most methods, where a binary search over all of them made seven.
pub fn method_slot(method: &str) -> usize {
    static BY_LEN: std::sync::OnceLock<Vec<Vec<u16>>> = std::sync::OnceLock::new();
    let by_len = BY_LEN.get_or_init(|| {
        let longest = KNOWN_METHODS.iter().map(|m| m.len()).max().unwrap_or(0);
        let mut by_len = vec![Vec::new(); longest + 1];
        for (slot, m) in KNOWN_METHODS.iter().enumerate() {
            by_len[m.len()].push(slot as u16);
        }
        by_len
    });
    let (Some(slots), Some(&last)) = (by_len.get(method.len()), method.as_bytes().last()) else {
        return KNOWN_METHODS.len();
    };
    slots
        .iter()
        .map(|&slot| usize::from(slot))
        .find(|&slot| {
            let known = KNOWN_METHODS[slot].as_bytes();
            known[known.len() - 1] == last && known == method.as_bytes()
        })
        .unwrap_or(KNOWN_METHODS.len())
}

fn method_label(slot: usize) -> &'static str {
    KNOWN_METHODS.get(slot).copied().unwrap_or("other")
}

/// How a client call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A result (from an upstream or answered locally).
    Ok,
    /// A JSON-RPC error that an upstream returned (deterministic, or provider trouble left
    /// after every attempt).
    RpcError,
    /// No upstream could answer (detour's own `-32603`).
    Failed,
    /// Refused by the chain's method policy (never sent upstream).
    Denied,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::RpcError,
        Outcome::Failed,
        Outcome::Denied,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::RpcError => "rpc_error",
            Outcome::Failed => "failed",
            Outcome::Denied => "denied",
        }
    }
}

/// How one upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Answered (results, or deterministic errors that are the client's answer).
    Success,
    /// Connection refused, DNS or TLS failure, connect timeout.
    ConnectError,
    /// No answer within the attempt timeout.
    Timeout,
    /// HTTP 429 or a JSON-RPC rate-limit error.
    RateLimited,
    /// Another HTTP error status, a broken connection, a malformed or oversized answer.
    Error,
    /// A JSON-RPC error that is the provider's trouble (behind, unsupported, overloaded).
    ProviderError,
    /// Dropped because another attempt (a hedge) answered first.
    Cancelled,
}

impl AttemptOutcome {
    /// Every outcome, in slot order.
    pub const ALL: [AttemptOutcome; 7] = [
        AttemptOutcome::Success,
        AttemptOutcome::ConnectError,
        AttemptOutcome::Timeout,
        AttemptOutcome::RateLimited,
        AttemptOutcome::Error,
        AttemptOutcome::ProviderError,
        AttemptOutcome::Cancelled,
    ];

    fn label(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::ConnectError => "connect_error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::RateLimited => "rate_limited",
            AttemptOutcome::Error => "error",
            AttemptOutcome::ProviderError => "provider_error",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

type Labels2 = [(&'static str, String); 2];
type Labels3 = [(&'static str, String); 3];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The metric families. One per [`crate::Detour`]; cheap handles are cached in the pool.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels3, Counter>,
    request_duration: HistogramFamily<[(&'static str, String); 1]>,
    upstream_requests: Family<Labels3, Counter>,
    upstream_latency: HistogramFamily<Labels2>,
    failovers: Family<[(&'static str, String); 1], Counter>,
    hedges: Family<[(&'static str, String); 1], Counter>,
    reloads: Family<[(&'static str, &'static str); 1], Counter>,
    logs_chunks: Family<[(&'static str, String); 2], Counter>,
    compute_units: Family<Labels2, Counter>,
    throttled: Family<Labels2, Counter>,
    streamed: Family<Labels3, Counter>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

impl Metrics {
    /// Creates the families, and a collector that reads live upstream state from `pool` at
    /// each scrape; `extra` collectors (the layers above's own) are read at each scrape too.
    pub fn new(
        pool: Weak<ArcSwap<Pool>>,
        extra: Vec<Box<dyn prometheus_client::collector::Collector>>,
    ) -> Metrics {
        let mut registry = Registry::with_prefix("detour");
        let requests = Family::<Labels3, Counter>::default();
        let request_duration: HistogramFamily<[(&'static str, String); 1]> =
            Family::new_with_constructor(latency_histogram);
        let upstream_requests = Family::<Labels3, Counter>::default();
        let upstream_latency: HistogramFamily<Labels2> =
            Family::new_with_constructor(latency_histogram);
        let failovers = Family::default();
        let hedges = Family::default();
        let reloads = Family::default();
        let logs_chunks = Family::default();
        let compute_units = Family::<Labels2, Counter>::default();
        let throttled = Family::<Labels2, Counter>::default();
        let streamed = Family::<Labels3, Counter>::default();
        registry.register(
            "requests",
            "Client JSON-RPC calls by chain, method and outcome (ok, rpc_error, failed, denied)",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time to answer a client HTTP request, failover included",
            Unit::Seconds,
            request_duration.clone(),
        );
        registry.register(
            "upstream_requests",
            "Attempts sent to upstreams by outcome (success, connect_error, timeout, rate_limited, error, provider_error, cancelled)",
            upstream_requests.clone(),
        );
        registry.register_with_unit(
            "upstream_latency",
            "Time an upstream took to answer an attempt",
            Unit::Seconds,
            upstream_latency.clone(),
        );
        registry.register(
            "failovers",
            "Attempts beyond the first for a client request (retries on another upstream)",
            failovers.clone(),
        );
        registry.register(
            "hedges",
            "Hedged attempts started for slow reads",
            hedges.clone(),
        );
        registry.register(
            "getlogs_chunks",
            "Chunks a wide eth_getLogs was split into, by chain and kind (range: the chain's narrowest upstream range; halved: a chunk every upstream rejected as too wide or too large, asked again in halves)",
            logs_chunks.clone(),
        );
        registry.register(
            "upstream_compute_units",
            "Compute units sent to each upstream (each call at its method's weight: the built-in table under [compute_units] and the upstream's own; health probes count against quotas but not here)",
            compute_units.clone(),
        );
        registry.register(
            "upstream_throttled",
            "Times an upstream was skipped because its quota (max_rps, compute_units_per_second, or a budget lowered after a 429) had no room",
            throttled.clone(),
        );
        registry.register(
            "streamed_answers",
            "Large answers streamed to the client as they arrived (client.stream_min_bytes), by chain, upstream and how they ended (complete; broken: the upstream closed mid-answer, sent a malformed answer or went over client.max_response_bytes, and the client's connection was cut; timeout: the request's deadline passed; abandoned: the client went away)",
            streamed.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result (ok, error)",
            reloads.clone(),
        );
        registry.register(
            "build",
            "detour's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(LiveState { pool }));
        for collector in extra {
            registry.register_collector(collector);
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_requests,
            upstream_latency,
            failovers,
            hedges,
            reloads,
            logs_chunks,
            compute_units,
            throttled,
            streamed,
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts an `eth_getLogs` chunk asked for (`halved`: after a rejection of a wider one).
    pub fn logs_chunk(&self, chain: &str, halved: bool) {
        self.logs_chunks
            .get_or_create(&[
                ("chain", chain.to_owned()),
                ("kind", if halved { "halved" } else { "range" }.to_owned()),
            ])
            .inc();
    }

    /// What counts how a stream of `upstream`'s answer ends (see the metric's help).
    pub(crate) fn stream_ends(
        &self,
        chain: &str,
        upstream: &str,
    ) -> impl Fn(StreamEnd) + Send + Sync + 'static {
        let counter = |how: StreamEnd| {
            self.streamed
                .get_or_create(&[
                    ("chain", chain.to_owned()),
                    ("upstream", upstream.to_owned()),
                    ("outcome", how.label().to_owned()),
                ])
                .clone()
        };
        let counters = StreamEnd::ALL.map(counter);
        move |how| {
            counters[how as usize].inc();
        }
    }

    /// Counts a configuration reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&[("result", if ok { "ok" } else { "error" })])
            .inc();
    }
}

/// A chain's cached handles.
#[derive(Debug, Default)]
pub struct ChainMetrics {
    /// Per method slot, per [`Outcome`].
    calls: OnceLock<Vec<[OnceLock<Counter>; 4]>>,
    duration: OnceLock<Histogram>,
    failovers: OnceLock<Counter>,
    hedges: OnceLock<Counter>,
}

impl ChainMetrics {
    /// Counts one client call.
    pub fn call(&self, m: &Metrics, chain: &str, method: &str, outcome: Outcome) {
        let slots = self.calls.get_or_init(|| {
            (0..=KNOWN_METHODS.len())
                .map(|_| Default::default())
                .collect()
        });
        let slot = method_slot(method);
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        slots[slot][i]
            .get_or_init(|| {
                m.requests
                    .get_or_create(&[
                        ("chain", chain.to_owned()),
                        ("method", method_label(slot).to_owned()),
                        ("outcome", outcome.label().to_owned()),
                    ])
                    .clone()
            })
            .inc();
    }

    /// Records a client request's duration.
    pub fn duration(&self, m: &Metrics, chain: &str, seconds: f64) {
        self.duration
            .get_or_init(|| {
                m.request_duration
                    .get_or_create(&[("chain", chain.to_owned())])
                    .clone()
            })
            .observe(seconds);
    }

    /// Counts failovers and hedges of one request.
    pub fn attempts(&self, m: &Metrics, chain: &str, failovers: usize, hedges: usize) {
        if failovers > 0 {
            self.failovers
                .get_or_init(|| {
                    m.failovers
                        .get_or_create(&[("chain", chain.to_owned())])
                        .clone()
                })
                .inc_by(failovers as u64);
        }
        if hedges > 0 {
            self.hedges
                .get_or_init(|| {
                    m.hedges
                        .get_or_create(&[("chain", chain.to_owned())])
                        .clone()
                })
                .inc_by(hedges as u64);
        }
    }
}

/// An upstream's cached handles.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    outcomes: [OnceLock<Counter>; 7],
    latency: OnceLock<Histogram>,
    compute_units: OnceLock<Counter>,
    throttled: OnceLock<Counter>,
}

impl UpstreamMetrics {
    /// Counts the compute units of an attempt sent to the upstream.
    #[inline]
    pub fn compute_units(&self, m: &Metrics, chain: &str, upstream: &str, cu: u64) {
        if cu == 0 {
            return;
        }
        self.compute_units
            .get_or_init(|| {
                m.compute_units
                    .get_or_create(&[
                        ("chain", chain.to_owned()),
                        ("upstream", upstream.to_owned()),
                    ])
                    .clone()
            })
            .inc_by(cu);
    }

    /// Counts a skip of the upstream for its quota.
    pub fn throttled(&self, m: &Metrics, chain: &str, upstream: &str) {
        self.throttled
            .get_or_init(|| {
                m.throttled
                    .get_or_create(&[
                        ("chain", chain.to_owned()),
                        ("upstream", upstream.to_owned()),
                    ])
                    .clone()
            })
            .inc();
    }

    /// Counts one attempt, with its duration when it got an answer.
    pub fn attempt(
        &self,
        m: &Metrics,
        chain: &str,
        upstream: &str,
        outcome: AttemptOutcome,
        seconds: Option<f64>,
    ) {
        let i = AttemptOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.outcomes[i]
            .get_or_init(|| {
                m.upstream_requests
                    .get_or_create(&[
                        ("chain", chain.to_owned()),
                        ("upstream", upstream.to_owned()),
                        ("outcome", outcome.label().to_owned()),
                    ])
                    .clone()
            })
            .inc();
        if let Some(s) = seconds {
            self.latency
                .get_or_init(|| {
                    m.upstream_latency
                        .get_or_create(&[
                            ("chain", chain.to_owned()),
                            ("upstream", upstream.to_owned()),
                        ])
                        .clone()
                })
                .observe(s);
        }
    }
}

/// Reads live state from the current pool at each scrape.
#[derive(Debug)]
struct LiveState {
    pool: Weak<ArcSwap<Pool>>,
}

/// Every state `detour_upstream_state` reports (1 for the ones that apply, else 0).
const STATES: &[&str] = &[
    "healthy",
    "cordoned",
    "wrong_chain",
    "unresolvable",
    "cooling_down",
    "at_quota",
    "half_open",
    "lagging",
    "stale",
    "degraded_region",
];

fn gauge<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(L, f64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, ConstGauge::<f64>::TYPE)?;
    for (labels, value) in series {
        let family = metric.encode_family(labels)?;
        ConstGauge::new(*value).encode(family)?;
    }
    Ok(())
}

impl Collector for LiveState {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(pool) = self.pool.upgrade().map(|p| p.load_full()) else {
            return Ok(());
        };
        let now = now_us();
        let mut state = Vec::new();
        let (mut head, mut lag, mut latency, mut in_flight) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut chain_head = Vec::new();
        for chain in &pool.chains {
            let ch = chain.state.head();
            if let Some(ch) = ch {
                chain_head.push(([("chain", chain.name.to_string())], ch as f64));
            }
            for (i, up) in chain.upstreams.iter().enumerate() {
                let labels = [
                    ("chain", chain.name.to_string()),
                    ("upstream", up.name.to_string()),
                ];
                let active = crate::state::status::states(chain, i, now);
                for s in STATES {
                    let on = if *s == "healthy" {
                        active.is_empty()
                    } else {
                        active.contains(s)
                    };
                    state.push((
                        [
                            ("chain", chain.name.to_string()),
                            ("upstream", up.name.to_string()),
                            ("state", (*s).to_string()),
                        ],
                        if on { 1.0 } else { 0.0 },
                    ));
                }
                if let Some(h) = up.state.head() {
                    head.push((labels.clone(), h as f64));
                    if let Some(ch) = ch {
                        lag.push((labels.clone(), ch.saturating_sub(h) as f64));
                    }
                }
                latency.push((labels.clone(), up.state.latency().as_secs_f64()));
                in_flight.push((labels, f64::from(up.state.in_flight())));
            }
        }
        gauge(
            &mut encoder,
            "upstream_state",
            "1 for each state an upstream is in (healthy when none of the others)",
            None,
            &state,
        )?;
        gauge(
            &mut encoder,
            "upstream_head_block",
            "Latest block number the upstream reported",
            None,
            &head,
        )?;
        gauge(
            &mut encoder,
            "upstream_lag_blocks",
            "Blocks the upstream is behind the chain head",
            None,
            &lag,
        )?;
        gauge(
            &mut encoder,
            "upstream_latency_estimate",
            "The latency estimate selection uses (peak EWMA)",
            Some(&Unit::Seconds),
            &latency,
        )?;
        gauge(
            &mut encoder,
            "upstream_in_flight",
            "Attempts in flight to the upstream",
            None,
            &in_flight,
        )?;
        gauge(
            &mut encoder,
            "chain_head_block",
            "The chain head: the highest head of the chain-verified upstreams",
            None,
            &chain_head,
        )?;
        Ok(())
    }
}

/// The shared handle type the pool keeps.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_are_sorted_and_slots_are_bounded() {
        assert!(KNOWN_METHODS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(method_label(method_slot("eth_call")), "eth_call");
        for (slot, m) in KNOWN_METHODS.iter().enumerate() {
            assert_eq!(method_slot(m), slot);
            // Same length, one byte off (first, middle, last): not this method.
            for at in [0, m.len() / 2, m.len() - 1] {
                let mut near = m.as_bytes().to_vec();
                near[at] ^= 0x20;
                let near = String::from_utf8(near).unwrap();
                if !KNOWN_METHODS.contains(&near.as_str()) {
                    assert_eq!(method_slot(&near), KNOWN_METHODS.len(), "{near}");
                }
            }
        }
        assert_eq!(method_label(method_slot("eth_madeUp_123")), "other");
        assert_eq!(method_label(method_slot("")), "other");
    }
}
