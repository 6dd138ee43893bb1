//! Following the chain: a tracker per chain ([`tracker`]) that follows the canonical chain
//! through detour's own failover (gap-free: every height once, in order; reorgs undone from the
//! fork point), and the filters detour keeps on it ([`filters`]: `eth_newFilter`,
//! `eth_newBlockFilter`, `eth_getFilterChanges`, `eth_getFilterLogs`, `eth_uninstallFilter`),
//! so no upstream failure loses a filter.
//!
//! The tracker asks upstreams through a [`Source`], which the proxy implements with its
//! failover loop: the tracker's calls are routed, retried, metered and logged like clients'.
//! Where upstreams have a `ws_url`, new heads come from one upstream's WebSocket `newHeads`
//! ([`heads`]) and trigger rounds at once; polling over HTTP stands in whenever no WebSocket
//! upstream is usable. Subscription kinds the tracker does not serve are relayed from an
//! upstream's WebSocket ([`relay`]).

pub mod filters;
pub mod heads;
pub mod metrics;
pub mod relay;
pub mod subscribe;
pub mod tracker;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::config::{FiltersConfig, TrackerConfig};
use crate::rpc::error::RpcError;

/// A call's future, as a [`Source`] returns it.
pub type CallFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Box<RawValue>, RpcError>> + Send + 'a>>;

/// How the tracker reads the chain: one JSON-RPC call to a chain's upstreams, with failover.
pub trait Source: Send + Sync + 'static {
    /// Calls `method` with `params` (a JSON array) on `chain`; the `result` or the error.
    fn call<'a>(&'a self, chain: &'a str, method: &'static str, params: String) -> CallFuture<'a>;

    /// The settings in force now; `None` once the proxy is gone (the tracker's task ends).
    fn settings(&self) -> Option<(TrackerConfig, FiltersConfig)>;

    /// How often the chain's `finalized` block is read while the cache has the chain followed.
    fn finalized_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(30)
    }

    /// The upstreams of `chain` with a `ws_url` that may serve now, best first (lower tier,
    /// then lower cost). Default: none (the chain is polled over HTTP).
    fn head_sources(&self, _chain: &str) -> Vec<Arc<str>> {
        Vec::new()
    }

    /// The tier of `chain`'s upstream `upstream` (lower serves first); `None`: unknown.
    fn tier(&self, _chain: &str, _upstream: &str) -> Option<u32> {
        None
    }

    /// Opens the WebSocket of `chain`'s upstream `upstream`.
    fn connect_ws<'a>(&'a self, _chain: &'a str, _upstream: &'a str) -> ConnectFuture<'a> {
        Box::pin(async { Err("no WebSocket upstreams".to_string()) })
    }

    /// A `newHeads` notification showed that `upstream` has block `number`.
    fn observe_head(&self, _chain: &str, _upstream: &str, _number: u64) {}

    /// The highest block `chain`'s upstreams are known to have (health checks, answers).
    fn known_head(&self, _chain: &str) -> Option<u64> {
        None
    }
}

/// An upstream WebSocket being opened, as a [`Source`] returns it.
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<crate::client::ws::UpstreamSocket, String>> + Send + 'a>>;
