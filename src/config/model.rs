//! The configuration's types and their defaults, as TOML and the environment spell them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The built-in default configuration: public endpoints for five chains.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config.example.toml");

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The client-facing HTTP listener and request limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The shared HTTP client that talks to upstreams.
    #[serde(default)]
    pub client: ClientConfig,
    /// The optional admin listener (reload, cordon, config, status, metrics).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Following each chain's canonical chain (for filters).
    #[serde(default)]
    pub tracker: TrackerConfig,
    /// Filters detour keeps for clients (`eth_newFilter`, `eth_newBlockFilter`).
    #[serde(default)]
    pub filters: FiltersConfig,
    /// WebSocket clients (`ws://` on the same listener and paths).
    #[serde(default)]
    pub websocket: WebSocketConfig,
    /// The response cache and merged in-flight reads.
    #[serde(default)]
    pub cache: CacheConfig,
    /// `[shared]`: state shared with other replicas through Redis (unset: none).
    #[serde(default)]
    pub shared: SharedConfig,
    /// `[compute_units]`: what a call of a method costs, in compute units, overriding the
    /// built-in weights for every upstream (e.g. `eth_getLogs = 255`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub compute_units: BTreeMap<String, u32>,
    /// Client API keys (`[[api_keys]]`); when any is configured, every RPC request (and
    /// `/status`, `/metrics`) needs one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKey>,
    /// The chains served, by name; each is served at `/<name>` and `/<chain_id>`.
    #[serde(default)]
    pub chains: BTreeMap<String, ChainConfig>,
}

/// `[tracker]`: how detour follows a chain while filters need it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// How often the latest block is read. Default `1s`.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// The deepest reorg undone (blocks kept to compare against). Default 64.
    pub reorg_depth: usize,
    /// Most chain events (blocks added or removed) kept for filters that have not read them.
    /// Default 10000.
    pub max_events: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            reorg_depth: 64,
            max_events: 10_000,
        }
    }
}

/// `[filters]`: filters detour keeps for clients.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FiltersConfig {
    /// Whether detour keeps filters itself (default `true`). `false`: filter calls go to an
    /// upstream as they are, and a poll answered by another upstream finds no filter.
    pub emulate: bool,
    /// A filter not polled for this long is removed (geth's default). Default `5m`.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Most filters one client (API key, else IP address) may hold. Default 100.
    pub max_per_client: usize,
    /// Most filters in all. Default 10000.
    pub max_total: usize,
}

impl Default for FiltersConfig {
    fn default() -> Self {
        Self {
            emulate: true,
            timeout: Duration::from_secs(300),
            max_per_client: 100,
            max_total: 10_000,
        }
    }
}

/// `[cache]`: answers kept in memory and identical reads in flight merged, so repeated reads
/// cost no upstream call. What is cached, and for how long, is a table in the code
/// (`cache::rules`), per method, with its reason.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether answers are cached and identical reads in flight merged (default `true`).
    pub enabled: bool,
    /// Most bytes of answers kept per chain (keys included); the least recently used go first.
    /// Default 64 MiB.
    pub max_bytes: u64,
    /// Also cache answers that depend on the latest block (kept until the chain's head moves)
    /// and on recent blocks (kept until a reorg replaces them). These need the chain followed:
    /// while such reads arrive, detour follows the chain's head (over an upstream's WebSocket
    /// where one has a `ws_url`, else by polling every `tracker.poll_interval`). `false`: only
    /// final answers are cached, and the chain is not followed for the cache. Default `true`.
    pub head: bool,
    /// How long identical reads wait for the first one's answer before going upstream
    /// themselves. Default `1s`.
    #[serde(with = "duration")]
    pub merge_wait: Duration,
    /// How often the chain's `finalized` block is read while the chain is followed for the
    /// cache. Default `30s`.
    #[serde(with = "duration")]
    pub finalized_interval: Duration,
    /// Per method, a policy instead of the built-in one: `"never"` (not cached, not merged),
    /// `"final"` (only answers at final blocks), `"default"` (the built-in rule) or `"head"`
    /// (kept until the head moves, whatever the params: for a chain's own read methods).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub methods: BTreeMap<String, MethodCache>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            head: true,
            merge_wait: Duration::from_secs(1),
            finalized_interval: Duration::from_secs(30),
            methods: BTreeMap::new(),
        }
    }
}

/// `[shared]`: what several replicas share through a Redis (or Valkey) server.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SharedConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (TLS). Unset: nothing is
    /// shared. The password is a secret: never logged or shown.
    #[serde(
        deserialize_with = "super::load::expand_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub redis_url: Option<String>,
    /// Prefix of every key, so several deployments can share one server.
    pub prefix: String,
    /// The most a Redis operation on the request path may take; past it (or while Redis is
    /// unreachable) the request is served with this replica's own state.
    #[serde(with = "duration")]
    pub op_timeout: Duration,
    /// Final cached answers go to Redis too, so every replica serves them (with `[cache]`).
    pub cache: bool,
    /// How long Redis keeps a shared cached answer.
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    /// Answers larger than this stay in the replica's own cache only (a large value would
    /// not come back within `op_timeout`).
    pub cache_max_entry_bytes: u64,
    /// How `eth_blockNumber` answers are kept from going back across replicas.
    pub block_number: SharedBlockNumber,
    /// A PEM file of the root certificates a `rediss://` server is checked against, instead
    /// of the public (webpki) roots (a private CA). Read at start and at reloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            prefix: "detour".into(),
            op_timeout: Duration::from_millis(5),
            cache: true,
            cache_ttl: Duration::from_secs(86_400),
            cache_max_entry_bytes: 256 * 1024,
            block_number: SharedBlockNumber::Strict,
            ca_file: None,
        }
    }
}

/// `[shared] block_number`: how `eth_blockNumber` answers are kept from going back across
/// replicas.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SharedBlockNumber {
    /// Every answer is raised to the shared highest in Redis before it is served (one round
    /// trip each): never lower than any replica's earlier answer.
    Strict,
    /// Answers are raised to the highest this replica was told of (pub/sub); only a head seen
    /// here first takes a round trip. Lower only within pub/sub's delivery time.
    Published,
}

/// A method's cache policy, as `[cache.methods]` sets it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MethodCache {
    /// Never cached nor merged.
    Never,
    /// Cached only when the answer's block is final.
    Final,
    /// The built-in rule.
    Default,
    /// Kept until the chain's head moves, whatever the params.
    Head,
}

/// `[websocket]`: JSON-RPC and subscriptions over WebSocket, on the listener's chain paths.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Whether WebSocket upgrades are accepted (default `true`).
    pub enabled: bool,
    /// Most WebSocket connections open at once; beyond, an upgrade gets 503. Default 10000.
    pub max_connections: usize,
    /// Most subscriptions one connection may hold. Default 100.
    pub max_subscriptions: usize,
    /// Largest message a client may send (bytes). Default 10 MiB.
    pub max_message_bytes: usize,
    /// Most bytes queued for one client: a client that reads slower than its messages arrive
    /// is disconnected (close code 1008) when this is reached. Default 16 MiB.
    pub max_queued_bytes: usize,
    /// A ping goes to the client after this long without a message from it; no answer within
    /// another interval closes the connection. Default `30s`.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_connections: 10_000,
            max_subscriptions: 100,
            max_message_bytes: 10 * 1024 * 1024,
            max_queued_bytes: 16 * 1024 * 1024,
            ping_interval: Duration::from_secs(30),
        }
    }
}

/// `[server]`: the listener clients connect to.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8545`.
    pub listen: SocketAddr,
    /// Deadline for a whole client request, failover included. Default `10s`.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Largest request body accepted; larger ones get 413 without being read. Default 10 MiB.
    pub max_body_bytes: usize,
    /// Most members in one batch. Default 1000.
    pub max_batch_len: usize,
    /// How long in-flight requests may take to finish after a shutdown signal. Default `10s`.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// After a shutdown signal, keep accepting for this long while `/readyz` answers 503, so
    /// load balancers stop sending before the listener closes. Default `0s`.
    #[serde(with = "duration")]
    pub shutdown_delay: Duration,
    /// Time a client has to send its request headers. Default `10s`.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Time a client has to send its whole request body. Default `10s`.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// Most client connections open at once; further clients wait to be accepted until one
    /// closes. Raise the open-files limit to match. Default 10000.
    pub max_connections: usize,
    /// Most JSON-RPC requests being read or answered at once, over all connections (HTTP/2
    /// multiplexes many on one). Beyond it a request gets 503 with `Retry-After: 1` at once,
    /// instead of queueing behind stalled upstreams until memory runs out. Default 10000.
    pub max_requests_in_flight: usize,
    /// Most concurrent requests (streams) on one HTTP/2 client connection. Default 256.
    pub http2_max_streams: u32,
    /// An HTTP/2 client connection with no request for this long is closed (GOAWAY), as an
    /// HTTP/1 one is after `header_read_timeout` without a request. Default `60s`.
    #[serde(with = "duration")]
    pub http2_idle_timeout: Duration,
    /// HTTP/2 keep-alive: a client connection that sends nothing for this long gets a ping,
    /// and is closed when the ping is not answered within as long again: a vanished client
    /// does not hold its connection forever. Default `20s`.
    #[serde(with = "duration")]
    pub http2_keep_alive: Duration,
    /// Per-client rate limit (clients are API keys, else IP addresses). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Serve HTTPS instead of plain HTTP. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Origins browsers may call from (CORS), e.g. `["https://app.example"]`, or `["*"]`.
    /// Default: any origin on a loopback listener, none otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_origins: Option<Vec<String>>,
    /// One info-level log line per client JSON-RPC request (target `detour::access`): chain,
    /// methods, upstreams, status, errors, attempts, duration, client address. Default true.
    pub access_log: bool,
    /// Runtime worker threads; 0 means one per CPU core. One worker (also 0 on one core) runs
    /// Tokio's single-threaded scheduler, with the lowest latency and CPU per request; more
    /// serve more concurrent load. Needs a restart to change. Default 0.
    pub worker_threads: usize,
    /// Serve plain HTTP/1.1 JSON-RPC `POST`s on detour's own fast path (hyper's server takes
    /// every other request). Off, hyper's server takes every HTTP/1 connection: the same
    /// answers at a higher cost per request, a switch for diagnosis. Default true.
    pub http1_fast_path: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8545)),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 10 * 1024 * 1024,
            max_batch_len: 1000,
            shutdown_grace: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_requests_in_flight: 10_000,
            http2_max_streams: 256,
            http2_idle_timeout: Duration::from_secs(60),
            http2_keep_alive: Duration::from_secs(20),
            access_log: true,
            cors_origins: None,
            tls: None,
            rate_limit: None,
            worker_threads: 0,
            http1_fast_path: true,
        }
    }
}

/// `[[api_keys]]`: one client allowed to use the proxy.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Shown in the access log (the key never is).
    #[serde(deserialize_with = "super::load::expand")]
    pub name: String,
    /// The key: sent as `Authorization: Bearer <key>`, or as a path segment
    /// (`/mainnet/<key>`) by wallets that can only set a URL. At least 16 characters.
    #[serde(deserialize_with = "super::load::expand")]
    pub key: String,
}

/// `[server.rate_limit]`: HTTP requests per client (a batch is one request).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed at once above the sustained rate. Default: `per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// `[server.tls]`: certificate and key, PEM files (re-read on every reload).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    #[serde(deserialize_with = "super::load::expand")]
    pub cert: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(deserialize_with = "super::load::expand")]
    pub key: String,
}

/// `[admin]`: a separate listener for operators. Off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener, e.g. `127.0.0.1:9545`. Default: none (off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Bearer token the admin endpoints require (`Authorization: Bearer <token>`); usually
    /// `"${DETOUR_ADMIN_TOKEN}"` or set with `DETOUR_ADMIN__TOKEN`. Default: none (no auth;
    /// keep the listener on loopback then).
    #[serde(
        deserialize_with = "super::load::expand_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub token: Option<String>,
}

/// `[client]`: how detour talks to upstreams.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// TCP + TLS connect timeout. Default `3s`.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Default per-attempt timeout (request sent to body read). Default `5s`.
    #[serde(with = "duration")]
    pub attempt_timeout: Duration,
    /// Largest upstream response body accepted; larger ones fail over. Default 128 MiB.
    pub max_response_bytes: usize,
    /// A single call's answer at least this large, from a plain-`http://` upstream to an
    /// HTTP/1.1 client, is streamed: its result goes to the client as it arrives (chunked),
    /// once the upstream's envelope has said a result follows, instead of after the whole
    /// answer. Failover is decided on everything before that; an upstream that breaks off
    /// after it cuts the client's connection (the client sees an incomplete answer, never a
    /// short valid one). Streamed answers are not cached. 0: never stream. Default 4 MiB.
    pub stream_min_bytes: usize,
    /// Idle keep-alive connections are closed after this. Default `90s`.
    #[serde(with = "duration")]
    pub pool_idle_timeout: Duration,
    /// Idle keep-alive connections kept per upstream (for HTTPS upstreams: per host). 0 closes
    /// every connection after its answer. Default 1024: a burst of concurrent requests leaves
    /// its connections for the next one instead of closing them (each close leaves a socket in
    /// TIME_WAIT, and a pool too small for the load closes and reopens one per request). Idle
    /// ones close after `pool_idle_timeout`; plain-HTTP ones below the 16 most recently used
    /// let their read buffers go after a second idle.
    pub pool_max_idle_per_host: usize,
    /// How long a resolved upstream hostname is reused before it is resolved again. Default `30s`.
    #[serde(with = "duration")]
    pub dns_refresh: Duration,
    /// When resolving fails, the last good addresses keep being used (with a warning) for at most
    /// this long after they were last resolved. Default `1h`.
    #[serde(with = "duration")]
    pub dns_max_stale: Duration,
    /// A PEM file of root certificates that HTTPS upstreams may also chain to (a private CA of
    /// self-hosted nodes), besides the public (webpki) roots. Read at start. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// HTTP/2 upstream connections (HTTPS upstreams that agree on h2) are pinged after this
    /// long without a frame, busy or idle. Default `10s`.
    #[serde(with = "duration")]
    pub http2_keep_alive_interval: Duration,
    /// An unanswered ping closes the HTTP/2 connection after this, so requests move to a new
    /// one instead of stalling on a blackholed path until TCP gives up. Default `5s`.
    #[serde(with = "duration")]
    pub http2_keep_alive_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(5),
            max_response_bytes: 128 * 1024 * 1024,
            stream_min_bytes: 4 * 1024 * 1024,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 1024,
            dns_refresh: Duration::from_secs(30),
            dns_max_stale: Duration::from_secs(3600),
            ca_file: None,
            http2_keep_alive_interval: Duration::from_secs(10),
            http2_keep_alive_timeout: Duration::from_secs(5),
        }
    }
}

/// `[chains.<name>]`: one chain and its upstreams.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// The EIP-155 chain id; `eth_chainId` and `net_version` are answered from it.
    pub chain_id: u64,
    /// Most upstreams tried for one request. Default 3.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: usize,
    /// Also send each `eth_sendRawTransaction` to one healthy upstream of every other region,
    /// answering with the first success. Default false.
    #[serde(default)]
    pub broadcast_raw_transactions: bool,
    /// Health checks: probes, head tracking, lag, hysteresis, failure domains.
    #[serde(default)]
    pub health: HealthConfig,
    /// Hedged reads.
    #[serde(default)]
    pub hedge: HedgeConfig,
    /// Which methods this chain serves.
    #[serde(default)]
    pub methods: MethodsConfig,
    /// The upstreams serving this chain.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// How many blocks below the head count as final where the chain has no `finalized`
    /// block tag (the cache keeps answers at final blocks for good). Default: the tracker's
    /// `reorg_depth` (64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finality_depth: Option<u64>,
    /// A call about state more than this many blocks below the head (or at a block hash the
    /// chain tracker does not hold) goes to archive upstreams first; other calls prefer the
    /// non-archive ones. Default 128 (what a full node keeps).
    #[serde(default = "default_archive_depth")]
    pub archive_depth: u64,
}

fn default_archive_depth() -> u64 {
    128
}

fn default_max_attempts() -> usize {
    3
}

/// `[chains.<name>.health]`: how upstream health is checked and judged.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Head probe (`eth_blockNumber`) interval while the chain has client traffic. Default `2s`.
    #[serde(with = "duration")]
    pub probe_interval: Duration,
    /// Probe interval once the chain has had no client traffic for `idle_after`. Default `30s`.
    #[serde(with = "duration")]
    pub idle_probe_interval: Duration,
    /// Time without client traffic after which the chain counts as idle. Default `60s`.
    #[serde(with = "duration")]
    pub idle_after: Duration,
    /// How often each upstream's `eth_chainId` is checked again once verified. Default `5m`.
    #[serde(with = "duration")]
    pub chain_check_interval: Duration,
    /// An upstream more than this many blocks behind the chain head serves no request that
    /// depends on the latest state until it catches up. Default: unset, the blocks the chain
    /// makes in one `probe_interval`, at least 1 (see [`crate::state::pool::Chain::max_lag`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lag_blocks: Option<u64>,
    /// An upstream whose head has not moved for this long while the chain head moved is stale
    /// and excluded like a lagging one. Default `60s`.
    #[serde(with = "duration")]
    pub stale_after: Duration,
    /// Consecutive failed probes that take an upstream out of rotation. Default 3.
    pub unhealthy_after: u32,
    /// Consecutive good probes that bring an ejected upstream back before its cool-down ends.
    /// Default 2.
    pub healthy_after: u32,
    /// Share of a region's upstreams (0 to 1) that must fail within `region_window` for the
    /// region to be degraded (its members then serve only after other regions). Default 0.5.
    pub region_failure_share: f64,
    /// Window in which failures count towards a region's degradation. Default `10s`.
    #[serde(with = "duration")]
    pub region_window: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(2),
            idle_probe_interval: Duration::from_secs(30),
            idle_after: Duration::from_secs(60),
            chain_check_interval: Duration::from_secs(300),
            max_lag_blocks: None,
            stale_after: Duration::from_secs(60),
            unhealthy_after: 3,
            healthy_after: 2,
            region_failure_share: 0.5,
            region_window: Duration::from_secs(10),
        }
    }
}

/// `[chains.<name>.methods]`: the method policy (see [`crate::method::policy`]).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MethodsConfig {
    /// Glob patterns of methods served; an exact name here is served even if `deny` matches
    /// it. Default `["*"]`.
    pub allow: Vec<String>,
    /// Glob patterns of methods refused with `-32601` (never sent upstream). Default:
    /// [`DEFAULT_DENY`].
    pub deny: Vec<String>,
    /// Glob patterns of methods detour does not know that are reads (safe to hedge and to
    /// retry on another upstream). A method detour does not know is otherwise sent to one
    /// upstream at a time, like a write. Default empty.
    pub reads: Vec<String>,
}

/// Methods denied unless the configuration says otherwise: node administration, the node's own
/// keys and accounts, mining and consensus-engine control, mempool dumps, and dev-chain state
/// manipulation.
pub const DEFAULT_DENY: &[&str] = &[
    "admin_*",
    "personal_*",
    "debug_*",
    "miner_*",
    "engine_*",
    "txpool_*",
    "clique_*",
    "les_*",
    "signer_*",
    "parity_*",
    "eth_sign",
    "eth_signTransaction",
    "eth_sendTransaction",
    "eth_signTypedData",
    "eth_signTypedData_v1",
    "eth_signTypedData_v3",
    "eth_signTypedData_v4",
    "anvil_*",
    "hardhat_*",
    "evm_*",
];

impl Default for MethodsConfig {
    fn default() -> Self {
        Self {
            allow: vec!["*".into()],
            deny: DEFAULT_DENY.iter().map(|s| s.to_string()).collect(),
            reads: Vec::new(),
        }
    }
}

/// `[chains.<name>.hedge]`: a second attempt for a read whose first attempt is slow.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HedgeConfig {
    /// Hedge reads (never writes). Default true.
    pub enabled: bool,
    /// The hedge delay is twice the first upstream's latency estimate, but at least this.
    /// Default `50ms`.
    #[serde(with = "duration")]
    pub min_delay: Duration,
    /// …and at most this. Default `1s`.
    #[serde(with = "duration")]
    pub max_delay: Duration,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// `[[chains.<name>.upstreams]]`: one upstream node or provider.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Unique within the chain; used in logs, status and errors (the URL never is).
    #[serde(deserialize_with = "super::load::expand")]
    pub name: String,
    /// `http://` or `https://` URL, which may carry an API key (it is treated as a secret).
    #[serde(deserialize_with = "super::load::expand")]
    pub url: String,
    /// `ws://` or `wss://` URL of the same node's WebSocket endpoint, used to follow the chain's
    /// heads (`newHeads`) for subscriptions and filters. Never derived from `url` (providers
    /// put it on another path or port); unset: this upstream is read over HTTP only. It may
    /// carry an API key like `url`, and is as secret.
    #[serde(
        default,
        deserialize_with = "super::load::expand_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub ws_url: Option<String>,
    /// Priority: lower is preferred; a higher tier serves only when no lower tier can. Default 0.
    #[serde(default)]
    pub tier: u32,
    /// Relative preference within a tier (divides the upstream's cost). Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failure-domain label, free text (e.g. `aws:us-east-1`). Optional.
    #[serde(
        default,
        deserialize_with = "super::load::expand_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub region: Option<String>,
    /// Extra request headers (e.g. an API key header); values are secrets.
    #[serde(
        default,
        deserialize_with = "super::load::expand_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub headers: BTreeMap<String, String>,
    /// Largest batch this upstream accepts; larger batches are split and reassembled in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_len: Option<usize>,
    /// Widest `eth_getLogs` block range this upstream accepts. A wider request is split into
    /// chunks of the chain's narrowest upstream range. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_logs_range: Option<u64>,
    /// Calls per second this upstream may be sent (each call of a batch counts, and health
    /// probes too), over a sliding one-second window. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rps: Option<u32>,
    /// Compute units per second this upstream may be sent (each call costs its method's
    /// weight), over a sliding one-second window. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_units_per_second: Option<u32>,
    /// This upstream's own method weights, over `[compute_units]` and the built-in ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub compute_units: BTreeMap<String, u32>,
    /// Whether this upstream keeps old state (an archive node). Unset: learned from its
    /// answers to calls about old state (an answer: archive; "missing trie node" and the like:
    /// not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<bool>,
    /// Per-attempt timeout for this upstream. Default: `client.attempt_timeout`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Glob patterns of methods this upstream does not serve: calls of them go to other
    /// upstreams. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsupported_methods: Vec<String>,
}

fn default_weight() -> u32 {
    1
}

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A TOML file.
    File(PathBuf),
    /// The built-in default (the content of `config.example.toml`).
    BuiltIn,
}

impl Source {
    /// Picks the source the way the CLI does: an explicit path, else `DETOUR_CONFIG`, else
    /// `./detour.toml` if it exists, else the built-in default.
    pub fn discover(explicit: Option<&Path>) -> Source {
        if let Some(path) = explicit {
            return Source::File(path.to_owned());
        }
        if let Some(path) = std::env::var_os("DETOUR_CONFIG").filter(|p| !p.is_empty()) {
            return Source::File(PathBuf::from(path));
        }
        let local = Path::new("detour.toml");
        if local.is_file() {
            return Source::File(local.to_owned());
        }
        Source::BuiltIn
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltIn => f.write_str("built-in default config"),
        }
    }
}

/// Why a configuration could not be loaded: one line per problem, each naming where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `(where, why)` pairs: where is "file: key" when known.
    pub problems: Vec<(String, String)>,
}

impl ConfigError {
    pub(crate) fn one(at: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            problems: vec![(at.into(), why.into())],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (at, why)) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{at}: {why}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// === Durations as "500ms", "10s" ===

mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "\"{s}\" is not a duration ({e}); write e.g. \"500ms\", \"10s\" or \"2m\""
            ))
        })
    }
}

mod opt_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }
}
