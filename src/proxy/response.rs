//! What goes back to the client: the [`ClientReply`] (a JSON-RPC body written as the upstream's
//! bytes behind detour's envelope, or a complete HTTP response), the `x-detour-upstream`
//! header, and detour's own responses: errors, limits, the index, readiness and the status page.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use super::service::{Body, BoxError};
use crate::client::stream::ResultStream;
use crate::failover::retry::PerCall;
use crate::rpc::jsonrpc::{self, INVALID_REQUEST, RESOURCE_NOT_FOUND};
use crate::state::pool::Pool;
use crate::state::upstream::now_us;
use smallvec::SmallVec;

/// The self-contained status page (no external assets); it polls `/status` as JSON.
pub(crate) const STATUS_PAGE: &str = include_str!("status.html");

/// Whether a browser asked for a page (`Accept: text/html`) rather than the JSON document.
pub(crate) fn wants_html<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The response header naming the upstream(s) that answered a proxied request (configured
/// names, comma-separated, in the order they answered; never URLs).
pub const UPSTREAM_HEADER: &str = "x-detour-upstream";

/// The upstreams that answered a request, in the order they answered: the `x-detour-upstream`
/// header's value is their names, each once, comma-separated (no header when none answered, or
/// when a name is not a valid header value).
#[derive(Debug, Default)]
pub(crate) struct AnsweredBy(pub(crate) PerCall<Arc<str>>);

impl AnsweredBy {
    /// The header's value.
    pub(crate) fn value(&self) -> Option<HeaderValue> {
        match &self.0[..] {
            [] => None,
            [one] => HeaderValue::from_str(one).ok(),
            many => {
                let mut unique: Vec<&str> = Vec::with_capacity(many.len());
                for n in many {
                    if !unique.contains(&&**n) {
                        unique.push(n);
                    }
                }
                HeaderValue::from_str(&unique.join(", ")).ok()
            }
        }
    }

    /// Calls `f` with the header value's bytes, if there is a header: for the usual one name
    /// without building a `HeaderValue` (an allocation and a copy per request).
    pub(crate) fn with_bytes(&self, f: impl FnOnce(&[u8])) {
        match &self.0[..] {
            // What `HeaderValue::from_str` accepts: visible ASCII, spaces and tabs.
            [one]
                if one
                    .bytes()
                    .all(|b| (b' '..=b'~').contains(&b) || b == b'\t') =>
            {
                f(one.as_bytes())
            }
            _ => {
                if let Some(v) = self.value() {
                    f(v.as_bytes())
                }
            }
        }
    }
}

pub(crate) fn error_bytes(code: i64, message: &str, data: Option<&str>) -> Bytes {
    Bytes::from(jsonrpc::error_response(None, code, message, data))
}

/// The whole of a body. One that comes in one piece (the fast path's always does, and small
/// ones over hyper mostly do) is passed on as it is: no list of pieces, no copy.
pub(crate) async fn read_body<B>(body: B) -> Result<Bytes, BoxError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        // Trailers say nothing a JSON-RPC body needs.
        let Ok(data) = frame.map_err(Into::into)?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(f) => {
                joined.reserve(f.len() + data.len());
                joined.extend_from_slice(&f);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}

/// An answer, as [`Detour::answer`] gives it.
pub(crate) enum ClientReply {
    /// The answer to JSON-RPC calls: `200` with the JSON body, or `204` when there were only
    /// notifications; `upstream` is the `x-detour-upstream` header's value.
    Rpc {
        body: Option<RpcBody>,
        upstream: AnsweredBy,
        /// The `x-detour-cache` header's value, when the cache had a say.
        cache: Option<&'static str>,
        /// When the answer was ready (a recent clock read).
        ready: Instant,
    },
    /// Anything else, complete.
    Http(Response<Body>),
}

impl From<Response<Body>> for ClientReply {
    fn from(resp: Response<Body>) -> ClientReply {
        ClientReply::Http(resp)
    }
}

impl ClientReply {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ClientReply::Rpc { body: Some(_), .. } => StatusCode::OK,
            ClientReply::Rpc { body: None, .. } => StatusCode::NO_CONTENT,
            ClientReply::Http(resp) => resp.status(),
        }
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let (body, upstream, cache) = match self {
            ClientReply::Http(resp) => return resp,
            ClientReply::Rpc {
                body,
                upstream,
                cache,
                ..
            } => (body, upstream, cache),
        };
        let mut resp = match body {
            Some(body) => json(StatusCode::OK, body.into_bytes()),
            None => {
                let mut resp = Response::new(Body::default());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            }
        };
        if let Some(v) = upstream.value() {
            resp.headers_mut()
                .insert(HeaderName::from_static(UPSTREAM_HEADER), v);
        }
        if let Some(v) = cache {
            resp.headers_mut().insert(
                HeaderName::from_static(crate::cache::CACHE_HEADER),
                HeaderValue::from_static(v),
            );
        }
        resp
    }
}

/// The body of a JSON-RPC answer.
#[derive(Debug)]
pub(crate) enum RpcBody {
    /// All of it.
    Whole(Bytes),
    /// `{"jsonrpc":"2.0","id":<id>,"result":<result>}` of one call, not yet joined: `result`
    /// is the upstream's bytes (a slice of its answer), so the HTTP/1.1 fast path writes them
    /// as they are instead of copying them into a new body first (for a 14 KB block, an
    /// allocation and a 14 KB copy less).
    Result {
        /// The client's id, as it sent it.
        id: SmallVec<[u8; 24]>,
        result: Bytes,
    },
    /// `{"jsonrpc":"2.0","id":<id>,"result":<result>}` of one call whose result is still
    /// arriving from its upstream (see [`crate::client::stream`]): only the HTTP/1.1 fast
    /// path, which asks for it, writes one (chunked, as the pieces come).
    Stream {
        /// The client's id, as it sent it.
        id: SmallVec<[u8; 24]>,
        stream: Box<ResultStream>,
    },
}

/// The body of an answer whose streamed result cannot go where it was to go (a path that
/// does not stream; detour never makes one there).
const STREAM_LOST: &[u8] = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Internal error","data":"a streamed answer reached a path that cannot stream it"}}"#;

impl RpcBody {
    /// The body's length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            RpcBody::Whole(b) => b.len(),
            RpcBody::Result { id, result } => jsonrpc::result_len_for(id, result.len()),
            RpcBody::Stream { .. } => STREAM_LOST.len(),
        }
    }

    /// Appends the part of the body before the upstream's bytes to `out` and returns the
    /// rest, in order: the whole body goes out as `out` followed by the two slices.
    pub(crate) fn write_start<'a>(&'a self, out: &mut Vec<u8>) -> [&'a [u8]; 2] {
        match self {
            RpcBody::Whole(b) => [b, &[]],
            RpcBody::Result { id, result } => {
                jsonrpc::write_result_start(out, id);
                [result, b"}"]
            }
            RpcBody::Stream { .. } => [STREAM_LOST, &[]],
        }
    }

    /// The body as the parts it goes out in, in order.
    pub(crate) fn parts(&self) -> [&[u8]; 5] {
        match self {
            RpcBody::Whole(b) => [b, &[], &[], &[], &[]],
            RpcBody::Result { id, result } => {
                [jsonrpc::RESULT_HEAD, id, jsonrpc::RESULT_MID, result, b"}"]
            }
            RpcBody::Stream { .. } => [STREAM_LOST, &[], &[], &[], &[]],
        }
    }

    /// The part an upstream wrote (the rest is detour's and the client's).
    pub(crate) fn upstream_part(&self) -> &[u8] {
        match self {
            RpcBody::Whole(b) => b,
            RpcBody::Result { result, .. } => result,
            RpcBody::Stream { .. } => STREAM_LOST,
        }
    }

    /// The body in one piece.
    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            RpcBody::Whole(b) => return b,
            RpcBody::Stream { .. } => return Bytes::from_static(STREAM_LOST),
            RpcBody::Result { .. } => {}
        }
        let mut out = Vec::with_capacity(self.len());
        let rest = self.write_start(&mut out);
        for part in rest {
            out.extend_from_slice(part);
        }
        Bytes::from(out)
    }
}

pub(crate) fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Whole seconds to wait (rounded up, at least 1), for `Retry-After` and error data.
pub(crate) fn retry_after_secs(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

pub(crate) fn rate_limited(wait: std::time::Duration) -> Response<Body> {
    let secs = retry_after_secs(wait);
    let mut resp = json(
        StatusCode::TOO_MANY_REQUESTS,
        error_bytes(
            -32005,
            "rate limit exceeded",
            Some(&format!("{{\"retry_after_seconds\":{secs}}}")),
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    resp
}

/// 503 for a request over `server.max_requests_in_flight`: come back in a second.
pub(crate) fn overloaded(max: usize) -> Response<Body> {
    let why = format!("{max} requests are in flight (server.max_requests_in_flight)");
    let mut resp = json(
        StatusCode::SERVICE_UNAVAILABLE,
        error_bytes(
            -32005,
            "detour is at its limit of requests in flight; retry shortly",
            Some(&jsonrpc::json_string(&why)),
        ),
    );
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

pub(crate) fn unauthorized() -> Response<Body> {
    let mut resp = json(
        StatusCode::UNAUTHORIZED,
        error_bytes(
            -32000,
            "missing or invalid API key",
            Some("\"send Authorization: Bearer <key>, or use the URL /<chain>/<key>\""),
        ),
    );
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer"),
    );
    resp
}

/// The answer to an HTTP/1.1 request without exactly one `Host` header (RFC 9112 §3.2: 400).
pub(crate) fn bad_host() -> Response<Body> {
    let mut resp = json(
        StatusCode::BAD_REQUEST,
        error_bytes(
            INVALID_REQUEST,
            "Invalid Request",
            Some("\"an HTTP/1.1 request needs exactly one Host header\""),
        ),
    );
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

pub(crate) fn too_large(limit: usize) -> Response<Body> {
    let why = format!("request body exceeds {limit} bytes (server.max_body_bytes)");
    json(
        StatusCode::PAYLOAD_TOO_LARGE,
        error_bytes(
            INVALID_REQUEST,
            "Invalid Request",
            Some(&jsonrpc::json_string(&why)),
        ),
    )
}

pub(crate) fn unknown_chain_message(pool: &Pool, path: &str) -> String {
    format!(
        "no chain is served at {path:?}; served paths: {}",
        pool.paths().join(", ")
    )
}

pub(crate) fn unknown_chain_body(pool: &Pool, path: &str) -> Bytes {
    let paths: Vec<String> = pool
        .paths()
        .iter()
        .map(|p| jsonrpc::json_string(p))
        .collect();
    let data = format!("{{\"paths\":[{}]}}", paths.join(","));
    error_bytes(
        RESOURCE_NOT_FOUND,
        &unknown_chain_message(pool, path),
        Some(&data),
    )
}

pub(crate) fn index(pool: &Pool) -> Response<Body> {
    let chains: Vec<serde_json::Value> = pool
        .chains
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": &*c.name,
                "chain_id": c.chain_id,
                "paths": c.paths,
                "upstreams": c.upstreams.iter().map(|u| &*u.name).collect::<Vec<_>>(),
            })
        })
        .collect();
    let body = serde_json::json!({
        "name": "detour",
        "version": env!("CARGO_PKG_VERSION"),
        "usage": "POST JSON-RPC 2.0 to one of the chain paths",
        "chains": chains,
        "health": "/healthz",
        "readiness": "/readyz",
        "status": "/status (JSON; a page for browsers, also at /status.html)",
        "metrics": "/metrics",
    });
    json(StatusCode::OK, Bytes::from(body.to_string()))
}

pub(crate) fn readiness(pool: &Pool) -> Response<Body> {
    let now = now_us();
    let missing: Vec<&str> = pool
        .chains
        .iter()
        .filter(|c| !c.ready(now))
        .map(|c| &*c.name)
        .collect();
    if missing.is_empty() {
        json(StatusCode::OK, Bytes::from_static(b"{\"ready\":true}"))
    } else {
        let body = serde_json::json!({ "ready": false, "chains_without_usable_upstream": missing });
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from(body.to_string()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_header_is_written_as_its_value_would_be() {
        let names = |list: &[&str]| AnsweredBy(list.iter().map(|n| Arc::from(*n)).collect());
        for list in [
            &[][..],
            &["alchemy"][..],
            &["my node\t2"][..],
            // Not a header value: no header, either way.
            &["bad\u{1}name"][..],
            &["caf\u{e9}"][..],
            &["a", "b", "a"][..],
            &["a", "bad\nname"][..],
        ] {
            let answered = names(list);
            let mut written = None;
            answered.with_bytes(|v| written = Some(v.to_vec()));
            let value = answered.value().map(|v| v.as_bytes().to_vec());
            assert_eq!(written, value, "{list:?}");
        }
        let mut written = None;
        names(&["a", "b", "a"]).with_bytes(|v| written = Some(v.to_vec()));
        assert_eq!(written.as_deref(), Some(&b"a, b"[..]));
    }
}
