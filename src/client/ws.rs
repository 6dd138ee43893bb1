//! WebSocket connections to upstreams (an upstream's `ws_url`): TCP through the same caching
//! resolver and connect timeout as HTTP upstreams, TLS for `wss://` with the same roots
//! (`client.ca_file` included), then the RFC 6455 handshake (tokio-tungstenite) carrying the
//! upstream's credentials. The chain tracker follows heads over it (see
//! [`crate::follow::heads`]).

use std::pin::Pin;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use http::Uri;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;

use crate::client::endpoint::Endpoint;
use crate::client::forward::Forwarder;

/// A byte stream to an upstream: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An open WebSocket to an upstream.
pub type UpstreamSocket = WebSocketStream<Pin<Box<dyn Io>>>;

/// Largest message accepted from an upstream's WebSocket (a block header is a few KiB).
const MAX_MESSAGE: usize = 16 << 20;

/// Where an upstream's WebSocket is and what its handshake carries.
#[derive(Debug)]
pub struct WsTarget {
    /// `ws://` or `wss://` URI, without userinfo. It may hold a key: never printed.
    pub uri: Uri,
    /// `Authorization` from the URL's userinfo, if any.
    pub authorization: Option<HeaderValue>,
    /// How it is shown: path, query and credentials masked.
    pub display: String,
}

impl Forwarder {
    /// Opens `up`'s WebSocket (its `ws_url`): TCP as for HTTP upstreams (within
    /// `client.connect_timeout`), then the TLS and WebSocket handshakes within as long again.
    /// Errors are redacted.
    pub async fn connect_ws(&self, up: &Endpoint) -> Result<UpstreamSocket, String> {
        let target = up.ws.as_ref().ok_or("the upstream has no ws_url")?;
        let uri = &target.uri;
        let host = uri.host().ok_or("the ws_url has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tls = uri.scheme_str() == Some("wss");
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let stream = self
            .connect_tcp(host, port)
            .await
            .map_err(|e| up.redact(&e))?;
        let handshake = async {
            let io: Pin<Box<dyn Io>> = if tls {
                let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|_| "the ws_url's host is not a valid TLS name".to_string())?;
                let tls = self
                    .ws_tls()
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                Box::pin(tls)
            } else {
                Box::pin(stream)
            };
            let mut request = uri
                .clone()
                .into_client_request()
                .map_err(|e| format!("bad WebSocket request: {e}"))?;
            add_headers(request.headers_mut(), up, target);
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .max_message_size(Some(MAX_MESSAGE))
                .max_frame_size(Some(MAX_MESSAGE));
            let (socket, _) =
                tokio_tungstenite::client_async_with_config(request, io, Some(config))
                    .await
                    .map_err(|e| format!("WebSocket handshake failed: {e}"))?;
            Ok::<_, String>(socket)
        };
        tokio::time::timeout(self.connect_timeout(), handshake)
            .await
            .map_err(|_| "WebSocket handshake timed out".to_string())?
            .map_err(|e| up.redact(&e))
    }
}

/// The handshake's extra headers: the URL's credentials and the upstream's configured headers
/// (API keys), not the JSON content headers HTTP requests carry.
fn add_headers(headers: &mut HeaderMap, up: &Endpoint, target: &WsTarget) {
    if let Some(auth) = &target.authorization {
        headers.insert(AUTHORIZATION, auth.clone());
    }
    for (name, value) in &up.headers {
        if up.configured_header(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The rustls client for `wss://` upstreams: the HTTPS roots, HTTP/1.1 by ALPN (the upgrade
/// needs it).
pub(crate) fn tls_connector(config: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}
