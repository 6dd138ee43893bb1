//! Where an upstream's requests go and what they carry: its URI, the headers sent with every
//! request (credentials marked sensitive), for a plain-HTTP upstream the request head built
//! once and its idle connections, and the secrets to mask in anything shown about it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::Uri;

use crate::client::h1;
use crate::client::idle::IdleConns;
use crate::client::ws::WsTarget;

/// One upstream as the client sees it.
#[derive(Debug)]
pub struct Endpoint {
    /// The configured name, for logs.
    pub name: Arc<str>,
    /// Where requests go.
    pub uri: Uri,
    /// Headers sent with every request: content type, user agent, credentials, configured ones.
    pub headers: HeaderMap,
    /// For a plain-`http://` URL: where detour's own connection pool connects and what it sends.
    pub(crate) plain: Option<PlainHttp>,
    /// Everything that must be masked in messages about this upstream, longest first.
    secrets: Vec<String>,
    /// Idle keep-alive connections (plain-HTTP upstreams), shared across reloads with the
    /// upstream's live state.
    pub(crate) idle: Arc<IdleConns>,
    /// The node's WebSocket endpoint (`ws_url`), if configured.
    pub ws: Option<WsTarget>,
    /// The headers the configuration added (sent on WebSocket handshakes too).
    configured: Vec<HeaderName>,
}

impl Endpoint {
    /// The endpoint for `uri` (already stripped of userinfo), with the `authorization` built
    /// from it, the URL's `secrets` and the configured headers.
    pub(crate) fn new(
        name: Arc<str>,
        uri: Uri,
        authorization: Option<HeaderValue>,
        secrets: Vec<String>,
        config_headers: &BTreeMap<String, String>,
        idle: Arc<IdleConns>,
        ws: Option<WsTarget>,
    ) -> Result<Endpoint, String> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("detour/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(auth) = authorization {
            headers.insert(AUTHORIZATION, auth);
        }
        let mut secrets = secrets;
        let mut configured = Vec::new();
        for (k, v) in config_headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("header name {k:?} is invalid"))?;
            let mut value =
                HeaderValue::from_str(v).map_err(|_| format!("header {k} has an invalid value"))?;
            value.set_sensitive(true);
            configured.push(name.clone());
            headers.insert(name, value);
            if v.len() >= 4 {
                secrets.push(v.clone());
            }
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let plain = PlainHttp::of(&uri).map(|(mut plain, host)| {
            // Sent on every request to a plain-HTTP upstream (configuration cannot set it);
            // built once here rather than added to each request.
            headers.entry(http::header::HOST).or_insert(host);
            let target = plain.origin.path_and_query().map_or("/", |p| p.as_str());
            plain.head = h1::request_head(target, &headers);
            plain
        });
        Ok(Endpoint {
            name,
            uri,
            headers,
            plain,
            secrets,
            idle,
            ws,
            configured,
        })
    }

    /// Whether the configuration set header `name` (rather than detour).
    pub(crate) fn configured_header(&self, name: &HeaderName) -> bool {
        self.configured.contains(name)
    }

    /// `text` with every secret of this upstream replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

/// How requests to a plain-HTTP upstream are addressed (see [`crate::client::idle`]).
#[derive(Clone)]
pub(crate) struct PlainHttp {
    /// The host to resolve (or an IP literal, without brackets).
    pub host: Box<str>,
    /// The TCP port (80 when the URL names none).
    pub port: u16,
    /// The request target in origin form: path and query.
    pub origin: Uri,
    /// The request line and the upstream's headers, as sent (see [`crate::client::h1`]). It may hold
    /// credentials: never printed.
    pub head: Bytes,
}

impl std::fmt::Debug for PlainHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainHttp")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("head_bytes", &self.head.len())
            .finish_non_exhaustive()
    }
}

impl PlainHttp {
    /// Where a plain-HTTP URL's requests go, and the `Host` header they carry (the host, and
    /// the port when not 80); `None` for HTTPS.
    fn of(uri: &Uri) -> Option<(PlainHttp, HeaderValue)> {
        if uri.scheme_str() != Some("http") {
            return None;
        }
        let authority = uri.authority()?;
        let host = authority.host();
        let origin = Uri::from(uri.path_and_query()?.clone());
        // The authority has no userinfo here (Target::parse strips it).
        let host_header = HeaderValue::from_str(match authority.port_u16() {
            Some(80) => host,
            _ => authority.as_str(),
        })
        .ok()?;
        let plain = PlainHttp {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port: authority.port_u16().unwrap_or(80),
            origin,
            head: Bytes::new(),
        };
        Some((plain, host_header))
    }
}
