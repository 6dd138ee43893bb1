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
//! `src/` is in folders by stage, from the bottom up; each uses only the folders above it in
//! this list (`tests/layout.rs` fails on a path that points the other way).
//!
//! - [`config`]: the configuration's types and defaults ([`config::model`]), loading (defaults ←
//!   TOML ← `DETOUR_*` env, `${VAR}`: [`config::load`]), [`config::validate`], upstream URLs
//!   ([`config::target`]: parsed, credentials to a header, secrets masked) and certificate files
//!   ([`config::tls`]).
//! - [`rpc`]: JSON-RPC envelopes kept as raw JSON ([`rpc::jsonrpc`], read in one pass by a
//!   scanner, serde_json for anything unusual), the error objects detour writes
//!   ([`rpc::error`]) and the taxonomy of the errors upstreams answer ([`rpc::classify`]).
//! - [`method`]: what a method is ([`method::kind`]: local, filter, write, read), which block a call
//!   needs and which answers prove one ([`method::block`]), which methods a chain serves
//!   ([`method::policy`]).
//! - [`client`]: talking to upstreams: [`client::forward`] (the `Forwarder`, failure
//!   classification), detour's own HTTP/1.1 connections and their idle pool for plain-HTTP
//!   upstreams, hyper + rustls for HTTPS and HTTP/2, WebSocket connections to upstreams
//!   ([`client::ws`]), the caching resolver ([`client::dns`]), and what an upstream is to the
//!   client ([`client::endpoint`]).
//! - [`shared`]: state shared with other replicas through Redis (`[shared] redis_url`,
//!   optional), failing open to the replica's own state.
//! - [`state`]: what lives between requests: each upstream's lock-free live state
//!   ([`state::upstream`]), the pool snapshot behind `ArcSwap` with the chain's head and regions
//!   ([`state::pool`]), the states `/status` reports ([`state::status`]), client rate limiters
//!   ([`state::ratelimit`]) and the metrics' counters ([`state::metrics`]).
//! - [`select`]: choosing an upstream: tiers, fitness (lag, regions, quarantine), power of two
//!   choices ([`select::balance`]).
//! - [`failover`]: the failover loop ([`failover::retry`]): attempts, hedges, reading what
//!   upstreams answered, what may be retried, health updates, broadcast of raw transactions
//!   and their hashes ([`failover::rawtx`]).
//! - [`follow`]: following the chain: a tracker per chain ([`follow::tracker`]: the canonical
//!   chain by parent hash, every height once, reorgs from the fork point), new heads from an
//!   upstream's WebSocket ([`follow::heads`]), the filters and subscriptions detour keeps on
//!   it ([`follow::filters`], [`follow::subscribe`]), and other subscription kinds relayed
//!   from an upstream's WebSocket ([`follow::relay`]).
//! - [`cache`]: the response cache and merged in-flight reads: what is cacheable and for how
//!   long ([`cache::rules`], a table with reasons), one store per chain bounded by bytes, told
//!   of heads and reorgs by the chain's tracker ([`cache::store`]).
//! - [`ops`]: the background health probes ([`ops::health`]) and the `/status` document
//!   ([`ops::status`]).
//! - [`proxy`]: the embeddable `tower::Service` ([`proxy::service`]: endpoints, the request
//!   path, responses and the access log beside it), client API keys and CORS
//!   ([`proxy::access`]), reloads and the admin API ([`proxy::admin`]), WebSocket clients
//!   (`proxy/ws.rs`, their frames read and written by `proxy/wsframe.rs`).
//! - [`server`]: the accept loop, HTTP/1.1 (a fast path for plain POSTs, hyper for the rest)
//!   and HTTP/2, TLS, timeouts, draining and graceful shutdown.
//!
//! # Request path
//! A request is read in [`server`] (the HTTP/1.1 fast path, or hyper), served by
//! [`proxy::service`]: `POST /<chain>` → [`state::pool::Pool::route`] → body read within
//! `server.max_body_bytes` → parsed by [`rpc::jsonrpc::parse`] → `eth_chainId`/`net_version`
//! answered locally, methods checked against [`method::policy`] → [`failover::retry::failover`]:
//! [`select::balance::select`] picks a fit upstream (fresh enough for the block
//! [`method::block::need`] says the calls need, healthy region), [`client::forward`] sends
//! the calls (ids rewritten to detour's own), a slow read is hedged to another region, the
//! answer is classified ([`rpc::classify`]), what failed is retried on a different upstream →
//! the response is written in request order with the client's ids and the upstream's `result`
//! bytes unchanged, and an `x-detour-upstream` header naming who answered. Meanwhile
//! [`ops::health::run`] probes every upstream in the background.

#![warn(missing_docs)]

pub mod cache;
pub mod client;
pub mod config;
pub mod failover;
pub mod follow;
pub mod method;
pub mod ops;
pub mod proxy;
pub mod rpc;
pub mod select;
pub mod server;
pub mod shared;
pub mod state;

pub use config::{Config, ConfigError, Source};
pub use proxy::service::{Body, Detour, Reloaded};
pub use rpc::error::RpcError;
pub use server::serve;
