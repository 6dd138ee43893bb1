//! Operators' endpoints: the `/status` document and the states it reports, configuration
//! reloads (from SIGHUP, a file change or `POST /admin/reload`), and the optional admin
//! listener: `POST /admin/reload`, `POST /admin/upstreams/<chain>/<name>/cordon` and
//! `/uncordon`, `GET /admin/config` (secrets redacted), `/status`, `/metrics`, `/healthz`,
//! `/readyz`, all behind an optional bearer token.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError};
use crate::proxy::access::constant_time_eq;
use crate::proxy::service::{wants_html, Detour, Reloaded};

use crate::state::pool::{Chain, Pool};
use crate::state::upstream::{now_us, Upstream, CHAIN_OK, CHAIN_UNKNOWN, CHAIN_WRONG};

/// Every state an upstream is in now, most important first; empty means healthy.
///
/// `cordoned` (by an operator) and `wrong_chain` serve nothing; `unresolvable` serves only as
/// a last resort; `cooling_down` serves only when nothing else
/// can; `half_open` admits one trial request; `lagging`, `stale` and `degraded_region` serve
/// only after the healthy upstreams of the chain.
pub fn states(chain: &Chain, i: usize, now: u64) -> Vec<&'static str> {
    let up = &chain.upstreams[i];
    let s = &up.state;
    let mut out = Vec::new();
    if up.state.cordoned() {
        out.push("cordoned");
    }
    if up.wrong_chain() {
        out.push("wrong_chain");
    }
    if s.unresolvable() {
        out.push("unresolvable");
    }
    if s.cooldown_until(now).is_some() {
        out.push("cooling_down");
    } else if s.half_open(now) {
        out.push("half_open");
    }
    if let Some((head, chain_head)) = s.head().zip(chain.state.head()).filter(|(h, c)| h < c) {
        if chain_head - head > chain.max_lag() {
            out.push("lagging");
        } else if !chain.fresh(i, now) {
            out.push("stale");
        }
    }
    if chain.regions[up.region_id].degraded() {
        out.push("degraded_region");
    }
    out
}

fn upstream_json(chain: &Chain, i: usize, now: u64) -> Value {
    let up: &Upstream = &chain.upstreams[i];
    let s = &up.state;
    let states = states(chain, i, now);
    let head = s.head();
    let chain_head = chain.state.head();
    let chain_check = match s.chain_check() {
        CHAIN_OK => "verified",
        CHAIN_WRONG => "wrong",
        CHAIN_UNKNOWN => "pending",
        _ => "unknown",
    };
    json!({
        "name": &*up.name,
        "state": states.first().copied().unwrap_or("healthy"),
        "states": states,
        "tier": up.tier,
        "weight": up.weight,
        "region": up.region.as_deref(),
        "endpoint": up.display_url,
        "chain_check": chain_check,
        "reported_chain_id": (s.reported_chain_id() != 0).then(|| s.reported_chain_id()),
        "head": head,
        "lag": head.zip(chain_head).map(|(h, c)| c.saturating_sub(h)),
        "head_age_ms": (s.head_changed() != 0).then(|| now.saturating_sub(s.head_changed()) / 1000),
        "cooldown_remaining_ms": s.cooldown_until(now).map(|t| (t - now) / 1000),
        "latency_ms": s.latency().as_secs_f64() * 1000.0,
        "in_flight": s.in_flight(),
        "error_rate": (s.error_rate() * 1000.0).round() / 1000.0,
        "errors_last_minute": s.recent_failures(now),
        "successes": s.successes.load(std::sync::atomic::Ordering::Relaxed),
        "failures": s.failures.load(std::sync::atomic::Ordering::Relaxed),
        "last_error": s.last_error(),
    })
}

/// The `/status` document: per chain and per upstream, state, head, lag, latency, load, errors.
/// Names and redacted endpoints only: no URL path, query, key or header value.
pub fn status(pool: &Pool) -> Value {
    let now = now_us();
    let chains: Vec<Value> = pool
        .chains
        .iter()
        .map(|c| {
            let head = c.state.head();
            json!({
                "name": &*c.name,
                "chain_id": c.chain_id,
                "paths": c.paths,
                "ready": c.ready(now),
                "head": head,
                "probe_interval_ms": crate::ops::health::probe_interval(c, now).as_millis() as u64,
                "max_lag_blocks": c.max_lag(),
                "block_time_ms": c.state.block_time().map(|t| t.as_millis() as u64),
                "regions": c.regions.iter().filter(|r| r.labelled).map(|r| json!({
                    "name": &*r.name,
                    "degraded": r.degraded(),
                    "upstreams": r.members.iter().map(|&m| &*c.upstreams[m].name).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "upstreams": (0..c.upstreams.len()).map(|i| upstream_json(c, i, now)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "name": "detour",
        "version": env!("CARGO_PKG_VERSION"),
        "chains": chains,
    })
}

// === Reloads ===

/// Loads the configuration again (from the same file, with the same overrides).
pub type Loader = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Loads the configuration and swaps it in; an invalid one changes nothing. Logs the outcome
/// with its trigger (`SIGHUP`, `file change`, `admin`).
pub fn reload(detour: &Detour, loader: &Loader, trigger: &str) -> Result<Reloaded, ConfigError> {
    let result = match loader() {
        // Detour::reload records its own failures (metrics, /status).
        Ok(config) => detour.reload(config),
        Err(e) => {
            detour.reload_failed(&e);
            Err(e)
        }
    };
    match &result {
        Ok(r) => {
            tracing::info!(trigger, restart_needed = ?r.restart_needed, "configuration reloaded")
        }
        Err(e) => {
            tracing::error!(trigger, error = %e, "configuration not reloaded: still serving the previous one")
        }
    }
    result
}

// === The admin listener ===

/// The admin listener's service.
#[derive(Clone)]
pub struct Admin {
    detour: Detour,
    loader: Loader,
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let text = serde_json::to_string_pretty(&body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

impl Admin {
    /// An admin service for `detour`; `loader` reads the configuration for reloads; `token`,
    /// when set, is required as `Authorization: Bearer <token>`.
    pub fn new(detour: Detour, loader: Loader, token: Option<String>) -> Admin {
        Admin {
            detour,
            loader,
            token: token.map(Into::into),
        }
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
    }

    /// Answers one admin request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        if matches!(path.as_str(), "/healthz" | "/readyz") {
            // Liveness and readiness stay open: probes carry no token.
            return self.passthrough(req).await;
        }
        if !self.authorized(&req) {
            let mut resp = reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "a valid admin token is required: Authorization: Bearer <token>"}),
            );
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            return resp;
        }
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["admin", "reload"]) => {
                match reload(&self.detour, &self.loader, "admin") {
                    Ok(r) => reply(
                        StatusCode::OK,
                        json!({"reloaded": true, "restart_needed": r.restart_needed}),
                    ),
                    Err(e) => reply(
                        StatusCode::BAD_REQUEST,
                        json!({"reloaded": false, "error": e.to_string(),
                               "note": "the previous configuration is still in use"}),
                    ),
                }
            }
            (
                &Method::POST,
                ["admin", "upstreams", chain, name, action @ ("cordon" | "uncordon")],
            ) => {
                let on = *action == "cordon";
                if self.detour.cordon(chain, name, on) {
                    reply(
                        StatusCode::OK,
                        json!({"chain": chain, "upstream": name, "cordoned": on}),
                    )
                } else {
                    reply(
                        StatusCode::NOT_FOUND,
                        json!({"error": format!("no upstream {name:?} in chain {chain:?}")}),
                    )
                }
            }
            (&Method::GET, ["admin", "config"]) => {
                let config = self.detour.pool().config.redacted();
                let mut resp = Response::new(Full::new(Bytes::from(config.to_toml())));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/toml; charset=utf-8"),
                );
                resp
            }
            // Answered here, not by the main listener's handler: that one would ask for a
            // client API key, and this request carries the admin token.
            (&Method::GET, ["status"]) if !wants_html(&req) => {
                reply(StatusCode::OK, self.detour.status())
            }
            (&Method::GET, ["metrics"]) => {
                let mut resp = Response::new(Full::new(Bytes::from(self.detour.metrics())));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            (&Method::GET, ["status"] | ["status.html"]) => self.passthrough(req).await,
            (_, ["admin", ..]) => reply(
                StatusCode::NOT_FOUND,
                json!({"error": "unknown admin endpoint", "endpoints": [
                    "POST /admin/reload",
                    "POST /admin/upstreams/<chain>/<name>/cordon",
                    "POST /admin/upstreams/<chain>/<name>/uncordon",
                    "GET /admin/config", "GET /status", "GET /metrics",
                    "GET /healthz", "GET /readyz"]}),
            ),
            _ => reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
        }
    }

    /// `/status`, `/metrics`, `/healthz`, `/readyz`: the same answers as the main listener.
    async fn passthrough<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let (parts, _) = req.into_parts();
        let req = Request::from_parts(parts, http_body_util::Empty::<Bytes>::new());
        let mut svc = self.detour.clone();
        match tower_service::Service::call(&mut svc, req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve_admin(
    listener: TcpListener,
    admin: Admin,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let admin = admin.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let admin = admin.clone();
                    async move { Ok::<_, std::convert::Infallible>(admin.handle(req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}
