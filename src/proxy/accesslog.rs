//! The access log: one info-level line per client JSON-RPC request (target `detour::access`):
//! chain, methods, upstreams, status, errors, attempts, duration, client address. Never a key.

use std::sync::Arc;

use http::StatusCode;
use tokio::time::Instant;

use crate::failover::retry::PerCall;
use crate::ops::ACCESS_TARGET;
use crate::rpc::jsonrpc::Entry;
use crate::state::pool::Pool;

/// The client's address, put in the request's extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// What answering one HTTP request took, for the access log and the response headers.
#[derive(Debug, Default)]
pub(crate) struct Served {
    /// Upstreams that answered, in order.
    pub(crate) answered_by: PerCall<Arc<str>>,
    /// The methods, summarised (filled only when the access log is on).
    pub(crate) methods: String,
    /// Entries in the request (a single request is one).
    pub(crate) calls: usize,
    /// Upstream attempts (hedges included).
    pub(crate) attempts: usize,
    /// Calls answered with an upstream's JSON-RPC error.
    pub(crate) errors: usize,
    /// Calls no upstream could answer.
    pub(crate) failed: usize,
    /// The API key's name, when keys are configured.
    pub(crate) client: Option<String>,
    /// The client's address, when it came over the network.
    pub(crate) peer: Option<std::net::IpAddr>,
    /// The WebSocket connection the request came on, which answers `eth_subscribe` and
    /// `eth_unsubscribe` (lent for the request and given back).
    pub(crate) session: Option<Box<super::ws::Subscriptions>>,
    /// When the last upstream attempt ended (none when no upstream was asked).
    pub(crate) finished: Option<Instant>,
    /// What the cache did for the request.
    pub(crate) cache: CacheMark,
    /// The client can take a streamed answer (HTTP/1.1 on detour's own server).
    pub(crate) may_stream: bool,
    /// The request's offer to stream a large result, when it made one (see
    /// [`crate::client::stream`]).
    pub(crate) stream: Option<crate::client::stream::StreamOffer>,
}

/// What the cache did for a request: the `x-detour-cache` header's value.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CacheMark {
    /// Calls answered from the cache or by an identical read in flight.
    pub(crate) hits: usize,
    /// Cacheable calls that went upstream.
    pub(crate) misses: usize,
    /// The client asked for fresh answers (`Cache-Control: no-cache`).
    pub(crate) bypass: bool,
    /// detour's own call (the tracker's): the cache is not used.
    pub(crate) internal: bool,
    /// The request sends a transaction (or another write).
    pub(crate) wrote: bool,
}

impl CacheMark {
    /// The header's value, when the cache had a say.
    pub(crate) fn header(self) -> Option<&'static str> {
        match (self.bypass, self.hits, self.misses) {
            (true, _, _) => Some("bypass"),
            (false, 0, 0) => None,
            (false, _, 0) => Some("hit"),
            (false, 0, _) => Some("miss"),
            (false, _, _) => Some("partial"),
        }
    }
}

/// Whether access-log lines are wanted: configured on, and not filtered out by `RUST_LOG`.
pub(crate) fn access_log_on(pool: &Pool) -> bool {
    pool.config.server.access_log && tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
}

/// `eth_call`, or for a batch `eth_call×3,eth_getBalance` (at most 5 names, then `…`).
pub(crate) fn methods_summary(entries: &[Entry<'_>]) -> String {
    let mut names: Vec<(&str, usize)> = Vec::new();
    for e in entries {
        let m = match e {
            Entry::Call(c) => &*c.method,
            Entry::Invalid { .. } => "(invalid)",
        };
        match names.iter_mut().find(|(n, _)| *n == m) {
            Some((_, k)) => *k += 1,
            None => names.push((m, 1)),
        }
    }
    let mut out = String::new();
    for (i, (n, k)) in names.iter().enumerate() {
        if i == 5 {
            out.push_str(",…");
            break;
        }
        if i > 0 {
            out.push(',');
        }
        // Method names come from the client: keep them short and printable in a log line.
        out.extend(n.chars().take(64).filter(|c| !c.is_control()));
        if *k > 1 {
            out.push('×');
            out.push_str(itoa::Buffer::new().format(*k));
        }
    }
    out
}

pub(crate) fn access_log(
    chain: &str,
    served: &Served,
    status: StatusCode,
    started: Instant,
    peer: Option<std::net::SocketAddr>,
) {
    tracing::info!(
        target: ACCESS_TARGET,
        chain,
        methods = %served.methods,
        calls = served.calls,
        status = status.as_u16(),
        errors = served.errors,
        failed = served.failed,
        upstreams = %Upstreams(&served.answered_by),
        attempts = served.attempts,
        // Microsecond precision, written as a log reader expects (0.058, not
        // 0.058412000000000006).
        ms = started.elapsed().as_micros() as f64 / 1000.0,
        peer = %OrDash(peer),
        client = served.client.as_deref().unwrap_or("-"),
        "request"
    );
}

/// The upstreams that answered, comma-separated (written into the line, not gathered first).
struct Upstreams<'a>(&'a PerCall<Arc<str>>);

impl std::fmt::Display for Upstreams<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, u) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(u)?;
        }
        Ok(())
    }
}

/// An optional value as its `Display`, or `-` (as access logs write a missing field).
pub(crate) struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}
