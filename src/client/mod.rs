//! The upstream clients: detour's own HTTP/1.1 connections and their idle pool for plain-HTTP
//! upstreams, hyper + rustls for HTTPS and HTTP/2, WebSocket connections (`ws_url`), and the caching
//! resolver.

pub mod dns;
pub mod endpoint;
pub mod forward;
pub(crate) mod h1;
pub(crate) mod idle;
pub(crate) mod stream;
pub mod ws;

/// What an upstream answered: the status, the headers and the whole body.
#[derive(Debug)]
pub struct UpstreamReply {
    /// The status code.
    pub status: http::StatusCode,
    /// The response headers (a plain-HTTP upstream's only for non-2xx answers, where
    /// `Retry-After` matters).
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: bytes::Bytes,
}
