//! detour: a JSON-RPC failover proxy for Ethereum-style nodes.
//!
//! It sits between clients (wallets, dApps, backends) and a pool of upstream node providers,
//! routes each request to a healthy, fast upstream, and fails over transparently when one breaks.
//! Use it as a binary (`detour`), or embed it: [`Detour`] is a `tower::Service` over HTTP
//! requests, and [`Detour::request`] sends one JSON-RPC call in process with failover.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = detour::Config::from_toml(r#"
//!     [chains.mainnet]
//!     chain_id = 1
//!     [[chains.mainnet.upstreams]]
//!     name = "own-node"
//!     url = "http://127.0.0.1:8546"
//!     [[chains.mainnet.upstreams]]
//!     name = "provider"
//!     url = "https://rpc.example/KEY"
//!     tier = 1
//! "#)?;
//! let proxy = detour::Detour::new(config)?;
//! let head = proxy.request("mainnet", "eth_blockNumber", None).await?;
//! println!("head: {}", head.get());
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: typed configuration (defaults ← TOML ← `DETOUR_*` env), validation.
//! - [`access`]: client API keys and CORS.
//! - [`server`]: accept loop, HTTP/1.1 (a fast path for plain POSTs, hyper for the rest) +
//!   HTTP/2, graceful shutdown.
//! - [`tls`]: the optional TLS listener (rustls), certificates re-read on reload.
//! - [`service`]: the embeddable service: route → parse → answer locally or fail over → respond.
//! - [`jsonrpc`]: envelopes kept as raw JSON (read in one pass by a scanner, serde_json for
//!   anything unusual); the standard error objects.
//! - [`route`]: method kinds (local, write, read); which block a call needs.
//! - [`policy`]: which methods a chain serves (allow/deny globs), and per-upstream exceptions.
//! - [`balance`]: pure selection: tiers, fitness (lag, regions, quarantine), power of two choices.
//! - [`retry`]: the failover loop: hedging, what may be retried, health updates.
//! - [`forward`]: the upstream HTTP client (hyper + rustls), failure classification.
//! - [`dns`]: the caching resolver that outlives resolver outages.
//! - [`classify`]: the error taxonomy (deterministic vs provider trouble).
//! - [`rawtx`]: raw transactions' hashes (blob transactions too) and "already known".
//! - [`pool`]: the immutable snapshot behind `ArcSwap`: chains, chain head, regions.
//! - [`upstream`]: one upstream: target, secrets redaction, live state (EWMA, head, cool-down).
//! - [`health`]: the background task: chain-id checks, head probes, hysteresis, regions.
//! - [`admin`]: `/status` and the states it reports.
//! - [`metrics`]: Prometheus metrics; request-path handles cached, live state read at scrape.
//! - [`error`]: the one place failures become JSON-RPC error objects.
//!
//! # Request path
//! `POST /<chain>` → [`pool::Pool::route`] → body read within `server.max_body_bytes` →
//! [`jsonrpc::parse`] → `eth_chainId`/`net_version` answered locally → [`retry::failover`]:
//! [`balance::select`] a fit upstream (fresh enough for the block the calls need, healthy
//! region), send the calls (ids rewritten to detour's own), hedge a slow read to another region,
//! classify the answer, retry what failed on a different upstream → response written in request
//! order with the client's ids and the upstream's `result` bytes unchanged, and an
//! `x-detour-upstream` header naming who answered. Meanwhile [`health::run`] probes every
//! upstream in the background.

#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod failover;
pub mod method;
pub mod ops;
pub mod proxy;
pub mod rpc;
pub mod select;
pub mod server;
pub mod state;

pub use config::{Config, ConfigError, Source};
pub use proxy::service::{Body, Detour, Reloaded};
pub use rpc::error::RpcError;
pub use server::serve;
