//! Operators' endpoints: configuration
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
use crate::proxy::response::wants_html;
use crate::proxy::service::{Detour, Reloaded};

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
