//! Typed configuration: serde defaults ← TOML (a file, or the built-in default) ← `DETOUR_*`
//! environment variables, then [`Config::validate`].
//!
//! Every field is documented in `config.example.toml`, which is also the built-in default
//! configuration (it is compiled into the binary). `${VAR}` inside any string value is replaced by
//! that environment variable while the file is read, so an error still names the file and the key.

pub mod target;
pub mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The built-in default configuration: public endpoints for five chains.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config.example.toml");

/// Top-level sections that `DETOUR_<SECTION>__<KEY>` environment variables may set. Other
/// `DETOUR_*` variables (`DETOUR_CONFIG`, or a secret like `DETOUR_INFURA_KEY` referenced as
/// `${DETOUR_INFURA_KEY}`) are not configuration keys.
const ENV_SECTIONS: &[&str] = &["server", "client", "admin", "chains"];

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
    /// Client API keys (`[[api_keys]]`); when any is configured, every RPC request (and
    /// `/status`, `/metrics`) needs one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKey>,
    /// The chains served, by name; each is served at `/<name>` and `/<chain_id>`.
    #[serde(default)]
    pub chains: BTreeMap<String, ChainConfig>,
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
    #[serde(deserialize_with = "expand")]
    pub name: String,
    /// The key: sent as `Authorization: Bearer <key>`, or as a path segment
    /// (`/mainnet/<key>`) by wallets that can only set a URL. At least 16 characters.
    #[serde(deserialize_with = "expand")]
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
    #[serde(deserialize_with = "expand")]
    pub cert: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(deserialize_with = "expand")]
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
        deserialize_with = "expand_opt",
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
    #[serde(deserialize_with = "expand")]
    pub name: String,
    /// `http://` or `https://` URL, which may carry an API key (it is treated as a secret).
    #[serde(deserialize_with = "expand")]
    pub url: String,
    /// Priority: lower is preferred; a higher tier serves only when no lower tier can. Default 0.
    #[serde(default)]
    pub tier: u32,
    /// Relative preference within a tier (divides the upstream's cost). Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failure-domain label, free text (e.g. `aws:us-east-1`). Optional.
    #[serde(
        default,
        deserialize_with = "expand_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub region: Option<String>,
    /// Extra request headers (e.g. an API key header); values are secrets.
    #[serde(
        default,
        deserialize_with = "expand_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub headers: BTreeMap<String, String>,
    /// Largest batch this upstream accepts; larger batches are split and reassembled in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_len: Option<usize>,
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

impl Config {
    /// Loads from `source`, applies `DETOUR_*` environment overrides, and validates.
    pub fn load(source: &Source) -> Result<Config, ConfigError> {
        let figment = match source {
            Source::File(path) => {
                if !path.is_file() {
                    return Err(ConfigError::one(
                        path.display().to_string(),
                        "no such file (or not a regular file)",
                    ));
                }
                Figment::from(Toml::file_exact(path))
            }
            Source::BuiltIn => Figment::from(Toml::string(DEFAULT_CONFIG_TOML)),
        };
        env_typos()?;
        let env = Env::prefixed("DETOUR_")
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                ENV_SECTIONS
                    .iter()
                    .any(|s| key.strip_prefix(s).is_some_and(|r| r.starts_with("__")))
            })
            .split("__");
        Self::extract(figment.merge(env), source)
    }

    /// Parses TOML text without environment overrides (for tests and embedding), and validates.
    pub fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        Self::extract(Figment::from(Toml::string(toml)), &Source::BuiltIn)
    }

    fn extract(figment: Figment, source: &Source) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|e| from_figment(e, source))?;
        config.validate().map_err(|mut e| {
            for (at, _) in &mut e.problems {
                *at = format!("{source}: {at}");
            }
            e
        })?;
        Ok(config)
    }

    /// Checks what types cannot: names, URLs, uniqueness, non-zero limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |at: String, why: String| problems.push((at, why));
        let s = &self.server;
        for (key, d) in [
            ("server.request_timeout", s.request_timeout),
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.body_read_timeout", s.body_read_timeout),
            ("server.http2_idle_timeout", s.http2_idle_timeout),
            ("server.http2_keep_alive", s.http2_keep_alive),
            ("client.connect_timeout", self.client.connect_timeout),
            ("client.attempt_timeout", self.client.attempt_timeout),
            (
                "client.http2_keep_alive_interval",
                self.client.http2_keep_alive_interval,
            ),
            (
                "client.http2_keep_alive_timeout",
                self.client.http2_keep_alive_timeout,
            ),
        ] {
            if d.is_zero() {
                bad(key.into(), "must be greater than zero".into());
            }
        }
        for (key, n) in [
            ("server.max_body_bytes", s.max_body_bytes),
            ("server.max_batch_len", s.max_batch_len),
            ("server.max_connections", s.max_connections),
            ("server.max_requests_in_flight", s.max_requests_in_flight),
            ("server.http2_max_streams", s.http2_max_streams as usize),
            ("client.max_response_bytes", self.client.max_response_bytes),
        ] {
            if n == 0 {
                bad(key.into(), "must be greater than zero".into());
            }
        }
        if self.chains.is_empty() {
            bad("chains".into(), "no chain is configured".into());
        }
        for (i, c) in self.api_keys.iter().enumerate() {
            let at = format!("api_keys[{i}]");
            if c.name.is_empty() || c.name.chars().any(char::is_control) {
                bad(
                    format!("{at}.name"),
                    "must be non-empty, without control characters".into(),
                );
            }
            if c.key.len() < 16 || c.key.chars().any(|ch| ch.is_whitespace() || ch == '/') {
                bad(
                    format!("{at}.key"),
                    "must be at least 16 characters, without spaces or '/'".into(),
                );
            }
            if self.api_keys[..i].iter().any(|o| o.name == c.name) {
                bad(format!("{at}.name"), format!("{:?} is used twice", c.name));
            }
            if self.api_keys[..i].iter().any(|o| o.key == c.key) {
                bad(
                    format!("{at}.key"),
                    "is the same as another client's key".into(),
                );
            }
        }
        if let Some(r) = &s.rate_limit {
            if r.per_second == 0 || r.burst == Some(0) {
                bad(
                    "server.rate_limit".into(),
                    "per_second and burst must be at least 1".into(),
                );
            }
        }
        if let Some(tls) = &s.tls {
            if let Err((at, why)) = crate::config::tls::load(tls) {
                bad(at.into(), why);
            }
        }
        if let Some(file) = &self.client.ca_file {
            if let Err(why) = crate::config::tls::extra_roots(file) {
                bad("client.ca_file".into(), why);
            }
        }
        if let Some(origins) = &s.cors_origins {
            for o in origins {
                if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                    bad(
                        "server.cors_origins".into(),
                        format!("{o:?} is not an origin (\"*\" or scheme://host[:port])"),
                    );
                }
            }
        }
        if self
            .admin
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            bad(
                "admin.token".into(),
                "must not be empty (leave it out for no token)".into(),
            );
        }
        if self.admin.listen == Some(s.listen) {
            bad(
                "admin.listen".into(),
                "must differ from server.listen".into(),
            );
        }
        let mut ids: BTreeMap<u64, &str> = BTreeMap::new();
        for (name, chain) in &self.chains {
            let at = format!("chains.{name}");
            if let Err(why) = check_chain_name(name) {
                bad(at.clone(), why);
            }
            if chain.chain_id == 0 {
                bad(format!("{at}.chain_id"), "must be greater than zero".into());
            } else if let Some(other) = ids.insert(chain.chain_id, name) {
                bad(
                    format!("{at}.chain_id"),
                    format!(
                        "{} is already the chain id of chains.{other}",
                        chain.chain_id
                    ),
                );
            }
            if chain.max_attempts == 0 {
                bad(format!("{at}.max_attempts"), "must be at least 1".into());
            }
            let h = &chain.health;
            for (key, d) in [
                ("health.probe_interval", h.probe_interval),
                ("health.idle_probe_interval", h.idle_probe_interval),
                ("health.chain_check_interval", h.chain_check_interval),
                ("health.stale_after", h.stale_after),
                ("health.region_window", h.region_window),
            ] {
                if d < Duration::from_millis(10) {
                    bad(format!("{at}.{key}"), "must be at least 10ms".into());
                }
            }
            if h.idle_probe_interval < h.probe_interval {
                bad(
                    format!("{at}.health.idle_probe_interval"),
                    "must not be shorter than health.probe_interval".into(),
                );
            }
            for (key, n) in [
                ("health.unhealthy_after", h.unhealthy_after),
                ("health.healthy_after", h.healthy_after),
            ] {
                if n == 0 {
                    bad(format!("{at}.{key}"), "must be at least 1".into());
                }
            }
            if !(h.region_failure_share > 0.0 && h.region_failure_share <= 1.0) {
                bad(
                    format!("{at}.health.region_failure_share"),
                    "must be greater than 0 and at most 1".into(),
                );
            }
            let patterns = chain
                .methods
                .allow
                .iter()
                .map(|p| ("methods.allow", p))
                .chain(chain.methods.deny.iter().map(|p| ("methods.deny", p)))
                .chain(chain.methods.reads.iter().map(|p| ("methods.reads", p)));
            for (key, p) in patterns {
                if let Err(why) = check_method_pattern(p) {
                    bad(format!("{at}.{key}"), why);
                }
            }
            if chain.hedge.min_delay > chain.hedge.max_delay {
                bad(
                    format!("{at}.hedge.min_delay"),
                    "must not be greater than hedge.max_delay".into(),
                );
            }
            if chain.upstreams.is_empty() {
                bad(
                    format!("{at}.upstreams"),
                    "a chain needs at least one upstream".into(),
                );
            }
            for (i, up) in chain.upstreams.iter().enumerate() {
                let at = format!("{at}.upstreams[{i}]");
                if up.name.is_empty() || up.name.chars().any(|c| c.is_control() || c == '/') {
                    bad(
                        format!("{at}.name"),
                        "must be non-empty, without '/' or control characters".into(),
                    );
                }
                if chain.upstreams[..i].iter().any(|u| u.name == up.name) {
                    bad(
                        format!("{at}.name"),
                        format!("\"{}\" is used twice in chains.{name}", up.name),
                    );
                }
                if let Err(why) = target::Target::parse(&up.url) {
                    bad(format!("{at}.url"), why);
                }
                if up.weight == 0 {
                    bad(format!("{at}.weight"), "must be at least 1".into());
                }
                if up.max_batch_len == Some(0) {
                    bad(format!("{at}.max_batch_len"), "must be at least 1".into());
                }
                for p in &up.unsupported_methods {
                    if let Err(why) = check_method_pattern(p) {
                        bad(format!("{at}.unsupported_methods"), why);
                    }
                }
                if up.timeout.is_some_and(|t| t.is_zero()) {
                    bad(format!("{at}.timeout"), "must be greater than zero".into());
                }
                for (k, v) in &up.headers {
                    if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                        bad(
                            format!("{at}.headers"),
                            format!("\"{k}\" is not a valid header name"),
                        );
                    } else if let Some(why) = framing_header(k) {
                        bad(format!("{at}.headers.{k}"), why.into());
                    } else if http::HeaderValue::from_str(v).is_err() {
                        bad(
                            format!("{at}.headers.{k}"),
                            "is not a valid header value".into(),
                        );
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// A copy with every secret-bearing value (upstream URLs' paths, queries and credentials,
    /// header values) replaced by `***`, for `detour check` and any other display.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if let Some(t) = &mut c.admin.token {
            *t = "***".into();
        }
        for k in &mut c.api_keys {
            k.key = "***".into();
        }
        for chain in c.chains.values_mut() {
            for up in &mut chain.upstreams {
                up.url = target::redact_url(&up.url);
                for v in up.headers.values_mut() {
                    *v = "***".into();
                }
            }
        }
        c
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// `DETOUR_SERVER_LISTEN` (one underscore) would be silently ignored: say how to write it.
fn env_typos() -> Result<(), ConfigError> {
    let problems: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, _)| {
            let k = k.into_string().ok()?;
            let rest = k.strip_prefix("DETOUR_")?.to_ascii_lowercase();
            let section = ENV_SECTIONS.iter().find(|s| {
                rest.strip_prefix(*s)
                    .is_some_and(|r| r.starts_with('_') && !r.starts_with("__"))
            })?;
            Some((
                format!("environment: {k}"),
                format!(
                    "nested keys are separated by \"__\", e.g. DETOUR_{}__{}",
                    section.to_ascii_uppercase(),
                    &k["DETOUR_".len() + section.len() + 1..]
                ),
            ))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// Why a configured upstream header cannot be sent as configured: detour writes the message
/// framing and the connection's own headers itself, and a second or conflicting copy would
/// let a request be read differently by the upstream (or a proxy before it) than detour meant.
fn framing_header(name: &str) -> Option<&'static str> {
    const HOP_BY_HOP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ];
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "content-length" | "transfer-encoding" => {
            Some("detour frames each request itself; this header cannot be configured")
        }
        "host" => Some("detour sends the URL's host; put the host in the url instead"),
        "expect" => Some("detour sends each body at once; Expect cannot be configured"),
        h if HOP_BY_HOP.contains(&h) => {
            Some("a hop-by-hop header belongs to one connection and cannot be configured")
        }
        _ => None,
    }
}

/// A method pattern: letters, digits, `_` and the `*` wildcard.
fn check_method_pattern(p: &str) -> Result<(), String> {
    if p.is_empty()
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'*')
    {
        return Err(format!(
            "{p:?} is not a method pattern (letters, digits, '_' and '*' only)"
        ));
    }
    Ok(())
}

/// Chain names become URL paths; they must not shadow each other or detour's own endpoints.
fn check_chain_name(name: &str) -> Result<(), String> {
    const RESERVED: &[&str] = &["healthz", "readyz", "status", "metrics", "admin"];
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err("a chain name must use only a-z, 0-9, '-' and '_'".into());
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err("a chain name must not be all digits (/<chain_id> paths are numeric)".into());
    }
    if RESERVED.contains(&name) {
        return Err(format!("\"{name}\" is reserved for detour's own endpoints"));
    }
    Ok(())
}

fn from_figment(err: figment::Error, source: &Source) -> ConfigError {
    let problems = err
        .into_iter()
        .map(|e| {
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|md| md.name.contains("environment"));
            let at = if from_env {
                // Name the variable exactly as the operator set it.
                format!(
                    "environment: DETOUR_{}",
                    e.path.join("__").to_ascii_uppercase()
                )
            } else {
                let origin = match e.metadata.as_ref().and_then(|md| md.source.as_ref()) {
                    Some(figment::Source::File(p)) => p.display().to_string(),
                    _ => source.to_string(),
                };
                match e.path.is_empty() {
                    true => origin,
                    false => format!("{origin}: {}", e.path.join(".")),
                }
            };
            (at, e.kind.to_string())
        })
        .collect();
    ConfigError { problems }
}

// === ${VAR} expansion ===

/// Replaces each `${NAME}` in `s` with the environment variable `NAME`.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated \"${\" (expected \"${NAME}\")".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "\"${{{name}}}\" is not a valid environment variable reference"
            ));
        }
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(std::env::VarError::NotPresent) => {
                return Err(format!("environment variable {name} is not set"))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!("environment variable {name} is not valid UTF-8"))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn expand<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    expand_env(&s).map_err(serde::de::Error::custom)
}

fn expand_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| expand_env(&s).map_err(serde::de::Error::custom))
        .transpose()
}

fn expand_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| match expand_env(&v) {
            Ok(v) => Ok((k, v)),
            Err(e) => Err(serde::de::Error::custom(format!("header {k}: {e}"))),
        })
        .collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [chains.mainnet]
        chain_id = 1
        [[chains.mainnet.upstreams]]
        name = "a"
        url = "http://127.0.0.1:1"
    "#;

    #[test]
    fn defaults_apply() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.client, ClientConfig::default());
        let up = &c.chains["mainnet"].upstreams[0];
        assert_eq!(
            (up.tier, up.weight, c.chains["mainnet"].max_attempts),
            (0, 1, 3)
        );
    }

    #[test]
    fn built_in_default_is_valid_and_has_five_chains_with_three_operators_each() {
        let c = Config::from_toml(DEFAULT_CONFIG_TOML).unwrap();
        let names: Vec<_> = c.chains.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["arbitrum", "base", "mainnet", "optimism", "polygon"]
        );
        for (name, chain) in &c.chains {
            let hosts: std::collections::BTreeSet<_> = chain
                .upstreams
                .iter()
                .map(|u| {
                    assert!(u.url.starts_with("https://"), "{name}: {}", u.url);
                    let host = u.url.split('/').nth(2).unwrap();
                    // The operator: the registrable domain (last two labels).
                    host.rsplit('.').take(2).collect::<Vec<_>>().join(".")
                })
                .collect();
            assert!(
                hosts.len() >= 3,
                "{name} has fewer than three operators: {hosts:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\ntimeout = \"1s\"\n")
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("server") && text.contains("timeout"),
            "{text}"
        );
    }

    #[test]
    fn durations_parse_and_bad_ones_say_how() {
        let c = Config::from_toml(&format!("[server]\nrequest_timeout = \"500ms\"\n{MINIMAL}"))
            .unwrap();
        assert_eq!(c.server.request_timeout, Duration::from_millis(500));
        let e = Config::from_toml(&format!("[server]\nrequest_timeout = \"soon\"\n{MINIMAL}"))
            .unwrap_err();
        assert!(e.to_string().contains("server.request_timeout"), "{e}");
        assert!(e.to_string().contains("\"10s\""), "{e}");
    }

    #[test]
    fn env_references_expand_and_missing_ones_name_the_variable() {
        std::env::set_var("DETOUR_TEST_KEY_EXPAND", "s3cr3t");
        let toml = MINIMAL.replace(
            "http://127.0.0.1:1",
            "https://x.example/v3/${DETOUR_TEST_KEY_EXPAND}",
        );
        let c = Config::from_toml(&toml).unwrap();
        assert_eq!(
            c.chains["mainnet"].upstreams[0].url,
            "https://x.example/v3/s3cr3t"
        );
        let toml = MINIMAL.replace(
            "http://127.0.0.1:1",
            "https://x.example/${DETOUR_TEST_UNSET_VAR}",
        );
        let e = Config::from_toml(&toml).unwrap_err().to_string();
        assert!(e.contains("DETOUR_TEST_UNSET_VAR is not set"), "{e}");
        assert!(e.contains("chains.mainnet.upstreams.0.url"), "{e}");
        assert!(expand_env("${oops").is_err());
        assert_eq!(expand_env("plain $ text").unwrap(), "plain $ text");
    }

    #[test]
    fn framing_and_hop_by_hop_headers_are_refused() {
        for name in [
            "Content-Length",
            "transfer-encoding",
            "Connection",
            "Host",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Connection",
            "Proxy-Authorization",
            "Expect",
        ] {
            let toml = format!("{MINIMAL}headers = {{ \"{name}\" = \"x\" }}\n");
            let e = Config::from_toml(&toml).unwrap_err();
            assert!(
                e.problems
                    .iter()
                    .any(|(at, _)| at.ends_with(&format!(".headers.{name}"))),
                "{name}: {e}"
            );
        }
        let ok = format!(
            "{MINIMAL}headers = {{ \"x-api-key\" = \"k\", \"Authorization\" = \"Bearer k\" }}\n"
        );
        assert!(Config::from_toml(&ok).is_ok());
    }

    #[test]
    fn validation_names_each_problem() {
        let toml = r#"
            [chains.main-net]
            chain_id = 1
            [[chains.main-net.upstreams]]
            name = "a"
            url = "ftp://x"
            weight = 0
            [[chains.main-net.upstreams]]
            name = "a"
            url = "http://ok"
            [chains.other]
            chain_id = 1
            [chains.healthz]
            chain_id = 2
        "#;
        let e = Config::from_toml(toml).unwrap_err();
        let at: Vec<_> = e.problems.iter().map(|(a, _)| a.as_str()).collect();
        for want in [
            "chains.main-net.upstreams[0].url",
            "chains.main-net.upstreams[0].weight",
            "chains.main-net.upstreams[1].name",
            "chains.other.chain_id",
            "chains.other.upstreams",
            "chains.healthz",
        ] {
            assert!(
                at.iter().any(|a| a.ends_with(want)),
                "missing {want} in {e}"
            );
        }
    }

    #[test]
    fn redacted_hides_keys_and_renders_toml() {
        let toml = MINIMAL.replace(
            "http://127.0.0.1:1",
            "https://user:pw@x.example/v3/KEY123?k=KEY456",
        ) + "headers = { \"x-api-key\" = \"KEY789\" }\n";
        let c = Config::from_toml(&toml).unwrap().redacted();
        let text = c.to_toml();
        for secret in ["KEY123", "KEY456", "KEY789", "pw", "user"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("x.example"));
        assert!(text.contains("request_timeout = \"10s\""), "{text}");
    }
}
