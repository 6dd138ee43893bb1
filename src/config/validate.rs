//! Validation: what types cannot check (names, URLs, uniqueness, non-zero limits, headers,
//! certificate files), every problem reported at once with where it is.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

impl Config {
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
            ("tracker.poll_interval", self.tracker.poll_interval),
            ("filters.timeout", self.filters.timeout),
            ("websocket.ping_interval", self.websocket.ping_interval),
            ("cache.finalized_interval", self.cache.finalized_interval),
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
            ("tracker.reorg_depth", self.tracker.reorg_depth),
            (
                "cache.max_bytes",
                usize::try_from(self.cache.max_bytes).unwrap_or(usize::MAX),
            ),
            ("tracker.max_events", self.tracker.max_events),
            ("filters.max_per_client", self.filters.max_per_client),
            ("filters.max_total", self.filters.max_total),
            ("websocket.max_connections", self.websocket.max_connections),
            (
                "websocket.max_subscriptions",
                self.websocket.max_subscriptions,
            ),
            (
                "websocket.max_message_bytes",
                self.websocket.max_message_bytes,
            ),
            (
                "websocket.max_queued_bytes",
                self.websocket.max_queued_bytes,
            ),
        ] {
            if n == 0 {
                bad(key.into(), "must be greater than zero".into());
            }
        }
        if self.chains.is_empty() {
            bad("chains".into(), "no chain is configured".into());
        }
        if let Some(url) = &self.shared.redis_url {
            if let Err(why) = check_redis_url(url) {
                bad("shared.redis_url".into(), why);
            }
        }
        if self.shared.prefix.is_empty()
            || self
                .shared
                .prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            bad(
                "shared.prefix".into(),
                "must be non-empty, without spaces or control characters".into(),
            );
        }
        if self.shared.op_timeout.is_zero() {
            bad(
                "shared.op_timeout".into(),
                "must be greater than zero".into(),
            );
        }
        if self.shared.ca_file.is_some()
            && !self
                .shared
                .redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://"))
        {
            bad(
                "shared.ca_file".into(),
                "is only used with a rediss:// redis_url (TLS)".into(),
            );
        }
        if self.shared.cache_ttl < Duration::from_secs(1) {
            bad("shared.cache_ttl".into(), "must be at least 1s".into());
        }
        for m in self.compute_units.keys() {
            if m.is_empty() || m.contains('*') {
                bad(
                    "compute_units".into(),
                    format!("\"{m}\" is not a method name"),
                );
            }
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
                if let Some(Err(why)) = up.ws_url.as_deref().map(target::Target::parse_ws) {
                    bad(format!("{at}.ws_url"), why);
                }
                if up.weight == 0 {
                    bad(format!("{at}.weight"), "must be at least 1".into());
                }
                if up.max_logs_range == Some(0) {
                    bad(format!("{at}.max_logs_range"), "must be at least 1".into());
                }
                if up.max_rps == Some(0) {
                    bad(format!("{at}.max_rps"), "must be at least 1".into());
                }
                if up.compute_units_per_second == Some(0) {
                    bad(
                        format!("{at}.compute_units_per_second"),
                        "must be at least 1".into(),
                    );
                }
                for m in up.compute_units.keys() {
                    if m.is_empty() || m.contains('*') {
                        bad(
                            format!("{at}.compute_units"),
                            format!("\"{m}\" is not a method name"),
                        );
                    }
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

/// A `[shared] redis_url`: its scheme and host (the URL itself, with its password, is never
/// part of the error).
fn check_redis_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("must start with redis:// or rediss://".into());
    };
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!("scheme {scheme:?} is not redis or rediss"));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err("names no host".into());
    }
    Ok(())
}
