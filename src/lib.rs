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
//! - [`server`]: accept loop, HTTP/1.1 + HTTP/2, graceful shutdown.
//! - [`service`]: the embeddable service: route → parse → answer locally or fail over → respond.
//! - [`jsonrpc`]: envelopes kept as raw JSON; the standard error objects.
//! - [`route`]: method kinds (local, write, read).
//! - [`balance`]: pure selection: tiers, power of two choices over peak-EWMA cost.
//! - [`retry`]: the failover loop and what may be retried.
//! - [`forward`]: the upstream HTTP client (hyper + rustls), failure classification.
//! - [`classify`]: the error taxonomy (deterministic vs provider trouble).
//! - [`pool`]: the immutable snapshot behind `ArcSwap`, rebuilt on reload keeping live state.
//! - [`upstream`]: one upstream: target, secrets redaction, live state (EWMA, in-flight, cool-down).
//! - [`error`]: the one place failures become JSON-RPC error objects.
//!
//! # Request path
//! `POST /<chain>` → [`pool::Pool::route`] → body read within `server.max_body_bytes` →
//! [`jsonrpc::parse`] → `eth_chainId`/`net_version` answered locally → [`retry::failover`]:
//! [`balance::select`] an upstream, send the calls (ids rewritten to detour's own), classify the
//! answer, retry what failed on a different upstream → response written in request order with
//! the client's ids and the upstream's `result` bytes unchanged.

#![warn(missing_docs)]

pub mod admin;
pub mod balance;
pub mod classify;
pub mod config;
pub mod dns;
pub mod error;
pub mod forward;
pub mod health;
pub mod jsonrpc;
pub mod pool;
pub mod retry;
pub mod route;
pub mod server;
pub mod service;
pub mod upstream;

pub use config::{Config, ConfigError, Source};
pub use error::RpcError;
pub use server::serve;
pub use service::{Body, Detour};
