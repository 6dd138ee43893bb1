//! The upstream HTTP client, and the classification of what went wrong.
//!
//! HTTPS upstreams share one pooled hyper-util client (HTTP/1.1 and HTTP/2 via ALPN, rustls
//! with the webpki roots and those of `client.ca_file`). Plain-HTTP upstreams use detour's own
//! HTTP/1.1 connections (`client/h1.rs`), from a small pool of idle ones each upstream owns
//! (`client/idle.rs`), which costs less per request.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;

use crate::client::dns::Resolver;
use crate::client::endpoint::{Endpoint, PlainHttp};
use crate::client::h1;
use crate::client::stream::{ResultStream, StreamOffer};
use crate::client::UpstreamReply;
use crate::config::ClientConfig;
use crate::rpc::stream::{result_start, Start};

type HttpClient = Client<HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>;

/// Sends requests to upstreams.
#[derive(Clone, Debug)]
pub struct Forwarder {
    client: HttpClient,
    max_response_bytes: usize,
    resolver: Resolver,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    pool_max_idle: usize,
    /// TLS for `wss://` upstreams (see [`crate::client::ws`]).
    ws_tls: std::sync::Arc<rustls::ClientConfig>,
}

/// Why an attempt produced no usable HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Connection refused, DNS failure, TLS failure or connect timeout: the request never left.
    Connect(String),
    /// The attempt timed out after the request may have been sent.
    Timeout,
    /// The connection broke after the request may have been sent.
    Transport(String),
    /// A non-success HTTP status with no JSON-RPC answer in the body.
    Status(StatusCode, Option<Duration>),
    /// The response body was larger than `client.max_response_bytes` (the limit).
    TooLarge(usize),
    /// The body is not a JSON-RPC answer to what was sent.
    Malformed(&'static str),
}

/// What an exchange gave: a whole answer, or the start of a streamed result.
#[derive(Debug)]
pub(crate) enum Sent {
    Reply(UpstreamReply),
    Streaming(Box<ResultStream>),
}

impl Sent {
    /// The whole answer; an exchange offered no stream never streams.
    fn into_reply(self) -> UpstreamReply {
        match self {
            Sent::Reply(reply) => reply,
            Sent::Streaming(_) => UpstreamReply {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                headers: HeaderMap::new(),
                body: Bytes::new(),
            },
        }
    }
}

/// A body that must not be sent twice reuses only a pooled connection used this recently:
/// far below any keep-alive timeout an upstream server uses (5 s and more), so the upstream
/// does not close it under the request.
pub const WRITE_REUSE: Duration = Duration::from_secs(1);

/// The request header that marks a health probe.
pub const PROBE_HEADER: &str = "x-detour-probe";

/// How a DNS failure's description starts (see [`Failure::is_dns`]).
pub const DNS_FAILED: &str = "DNS resolution failed";

impl Failure {
    /// Whether the upstream's hostname could not be resolved.
    pub fn is_dns(&self) -> bool {
        matches!(self, Failure::Connect(why) if why.starts_with(DNS_FAILED))
    }

    /// Whether the failure proves the upstream did not act on the request, so that even a
    /// write may go to another upstream.
    pub fn never_processed(&self) -> bool {
        match self {
            Failure::Connect(_) => true,
            Failure::Status(s, _) => *s == StatusCode::TOO_MANY_REQUESTS,
            _ => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(why) | Failure::Transport(why) => f.write_str(why),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Status(s, _) => write!(f, "HTTP {}", s.as_u16()),
            Failure::TooLarge(limit) => {
                write!(
                    f,
                    "response larger than {limit} bytes (client.max_response_bytes)"
                )
            }
            Failure::Malformed(why) => f.write_str(why),
        }
    }
}

impl Forwarder {
    /// Builds the shared client, resolving hostnames through `resolver` (cached, see
    /// [`crate::client::dns`]).
    pub fn new(config: &ClientConfig, resolver: Resolver, tls: rustls::ClientConfig) -> Forwarder {
        let resolver = resolver
            .with_settings(config.dns_refresh, config.dns_max_stale)
            .with_lookup_timeout(config.connect_timeout);
        let mut http = HttpConnector::new_with_resolver(resolver.clone());
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let ws_tls = crate::client::ws::tls_connector(&tls);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            // An HTTP/2 connection carries every request to its upstream: one that silently
            // stops answering (a blackholed path) is found by an unanswered ping and replaced,
            // instead of timing out each request for minutes until TCP gives up.
            .http2_keep_alive_interval(config.http2_keep_alive_interval)
            .http2_keep_alive_timeout(config.http2_keep_alive_timeout)
            .http2_keep_alive_while_idle(true)
            .build(https);
        Forwarder {
            client,
            max_response_bytes: config.max_response_bytes,
            resolver,
            connect_timeout: config.connect_timeout,
            pool_idle_timeout: config.pool_idle_timeout,
            pool_max_idle: config.pool_max_idle_per_host,
            ws_tls,
        }
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn ws_tls(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.ws_tls.clone())
    }

    /// POSTs `body` to the upstream and reads the whole answer, within `timeout`. The body
    /// is treated as one that must not be sent twice (see `Forwarder::send_from`).
    pub async fn send(
        &self,
        up: &Endpoint,
        body: Bytes,
        timeout: Duration,
    ) -> Result<UpstreamReply, Failure> {
        self.send_from(up, body, tokio::time::Instant::now(), timeout, false)
            .await
    }

    /// [`Forwarder::send`] for an attempt that started at `started` (read once by the
    /// caller, which times the attempt too): the answer must come within `timeout` of it.
    ///
    /// An upstream may close a pooled connection just as it is reused (its keep-alive
    /// timeout), which is nobody's failure. A `repeatable` body (reads) that meets a reused
    /// connection closing before any answer byte is sent once more on a new connection. One
    /// that is not (writes) is retried only when it was not fully written, since a request
    /// cut short cannot have been processed; and to keep it out of that race, it reuses only
    /// a connection used within the last [`WRITE_REUSE`].
    pub(crate) async fn send_from(
        &self,
        up: &Endpoint,
        body: Bytes,
        started: tokio::time::Instant,
        timeout: Duration,
        repeatable: bool,
    ) -> Result<UpstreamReply, Failure> {
        let sent = self
            .exchange(up, body, None, started, started + timeout, repeatable, None)
            .await?;
        Ok(sent.into_reply())
    }

    /// [`Forwarder::send_from`] for a single call (sent with id `id`) that offers to stream
    /// a large answer's result (see [`crate::client::stream`]).
    pub(crate) async fn send_offered(
        &self,
        up: &Endpoint,
        body: Bytes,
        started: tokio::time::Instant,
        timeout: Duration,
        repeatable: bool,
        offer: (&StreamOffer, usize),
    ) -> Result<Sent, Failure> {
        let deadline = started + timeout;
        self.exchange(up, body, None, started, deadline, repeatable, Some(offer))
            .await
    }

    /// Like [`Forwarder::send`], for a health probe: marked with an `x-detour-probe` header
    /// (its value says what is probed) so upstream operators can tell probes from traffic.
    pub async fn send_probe(
        &self,
        up: &Endpoint,
        body: Bytes,
        timeout: Duration,
        what: &'static str,
    ) -> Result<UpstreamReply, Failure> {
        let now = tokio::time::Instant::now();
        let sent = self
            .exchange(up, body, Some(what), now, now + timeout, true, None)
            .await?;
        Ok(sent.into_reply())
    }

    /// One exchange that started at `started` and must end by `deadline` (else
    /// [`Failure::Timeout`]); with an `offer`, a large answer's result may stream.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        up: &Endpoint,
        body: Bytes,
        probe: Option<&'static str>,
        started: tokio::time::Instant,
        deadline: tokio::time::Instant,
        repeatable: bool,
        offer: Option<(&StreamOffer, usize)>,
    ) -> Result<Sent, Failure> {
        match &up.plain {
            // Timed by the connection's own lazy timer (see `h1::Conn::exchange`).
            Some(plain) => {
                let started = started.into_std();
                let exchange = self.exchange_plain(
                    up, plain, &body, probe, started, deadline, repeatable, offer,
                );
                exchange.await
            }
            // Boxed: its state would make every request's future (which is moved a few times
            // on its way) 400 bytes larger, and a TLS exchange costs far more than a box.
            None => {
                let exchange = Box::pin(self.exchange_hyper(up, body, probe, offer));
                match tokio::time::timeout_at(deadline, exchange).await {
                    Ok(result) => result,
                    Err(_) => Err(Failure::Timeout),
                }
            }
        }
    }

    /// An exchange through the shared hyper client (HTTPS, HTTP/2). With an `offer`, a 2xx
    /// answer may begin a stream (see [`Forwarder::read_hyper_offered`]).
    async fn exchange_hyper(
        &self,
        up: &Endpoint,
        body: Bytes,
        probe: Option<&'static str>,
        offer: Option<(&StreamOffer, usize)>,
    ) -> Result<Sent, Failure> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.headers_mut() = up.headers.clone();
        if let Some(what) = probe {
            req.headers_mut().insert(
                http::HeaderName::from_static(PROBE_HEADER),
                http::HeaderValue::from_static(what),
            );
        }
        *req.uri_mut() = up.uri.clone();
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| describe_client_error(up, &e))?;
        let (parts, body) = resp.into_parts();
        if let Some(len) = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            if len > self.max_response_bytes as u64 {
                return Err(Failure::TooLarge(self.max_response_bytes));
            }
        }
        if let Some((offer, id)) = offer.filter(|_| parts.status.is_success()) {
            return self.read_hyper_offered(up, parts, body, offer, id).await;
        }
        let body = Limited::new(body, self.max_response_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Failure::TooLarge(self.max_response_bytes)
                } else {
                    Failure::Transport(
                        up.redact(&format!("reading the response failed: {}", root_cause(&*e))),
                    )
                }
            })?
            .to_bytes();
        Ok(Sent::Reply(UpstreamReply {
            status: parts.status,
            headers: parts.headers,
            body,
        }))
    }

    /// Reads the body of a 2xx answer from the hyper client that was offered to stream, as
    /// `h1::Conn` does for plain-HTTP upstreams: frames are gathered until the envelope shows
    /// a result and the answer is known to be large (declared, or that much has arrived;
    /// then the body moves into a [`ResultStream`]), or the envelope shows it will not
    /// stream, or the body ends (a whole answer).
    async fn read_hyper_offered(
        &self,
        up: &Endpoint,
        parts: http::response::Parts,
        mut body: hyper::body::Incoming,
        offer: &StreamOffer,
        id: usize,
    ) -> Result<Sent, Failure> {
        let limit = self.max_response_bytes;
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let large = declared.is_some_and(|n| n >= offer.min_bytes);
        let mut got = BytesMut::new();
        let mut streamable = true;
        loop {
            if streamable {
                match result_start(&got, id) {
                    Start::At(at) if large || got.len() >= offer.min_bytes => {
                        let read = got.len();
                        let first = got.split_off(at).freeze();
                        let stream = ResultStream::from_hyper(
                            body,
                            first,
                            read,
                            limit,
                            offer.deadline,
                            up.name.clone(),
                        );
                        return Ok(Sent::Streaming(Box::new(stream)));
                    }
                    Start::At(_) => {}
                    Start::Undecided if got.len() <= h1::PREFIX_MAX => {}
                    Start::Undecided | Start::No => streamable = false,
                }
            }
            let Some(frame) = body.frame().await else {
                break;
            };
            let frame = frame.map_err(|e| {
                Failure::Transport(
                    up.redact(&format!("reading the response failed: {}", root_cause(&e))),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if got.len() + data.len() > limit {
                return Err(Failure::TooLarge(limit));
            }
            if got.is_empty() {
                got.reserve(data.len() + declared.unwrap_or(0).min(h1::TRUST_AHEAD));
            }
            got.extend_from_slice(&data);
        }
        Ok(Sent::Reply(UpstreamReply {
            status: parts.status,
            headers: parts.headers,
            body: got.freeze(),
        }))
    }

    /// Sends `body` to a plain-HTTP upstream on one of its pooled connections (or a new one)
    /// and reads the answer; the connection goes back to the pool when it can carry another
    /// request. `repeatable`: see [`Forwarder::send_from`]. `started` (when the attempt began) stands for "now" in the pool's idle
    /// bookkeeping, which needs no finer clock than that.
    #[allow(clippy::too_many_arguments)]
    async fn exchange_plain(
        &self,
        up: &Endpoint,
        plain: &PlainHttp,
        body: &[u8],
        probe: Option<&'static str>,
        started: std::time::Instant,
        deadline: tokio::time::Instant,
        repeatable: bool,
        offer: Option<(&StreamOffer, usize)>,
    ) -> Result<Sent, Failure> {
        let h1_offer = offer.map(|(o, id)| h1::Offer {
            min_bytes: o.min_bytes,
            id,
        });
        let reused = if repeatable {
            up.idle.checkout(started, self.pool_idle_timeout)
        } else {
            up.idle.checkout_recent(started, WRITE_REUSE)
        };
        let fresh = reused.is_none();
        let mut conn = match reused {
            Some(conn) => conn,
            None => tokio::time::timeout_at(deadline, self.connect_plain(up, plain))
                .await
                .map_err(|_| Failure::Timeout)??,
        };
        let extra = probe.map(|what| (PROBE_HEADER, what));
        let mut result = conn
            .exchange(
                &plain.head,
                extra,
                body,
                self.max_response_bytes,
                deadline,
                h1_offer,
            )
            .await;
        let stale = match &result {
            Err(h1::Error::NotSent(_)) => true,
            Err(h1::Error::Closed { partial: false }) => repeatable,
            Err(h1::Error::Io(e)) => repeatable && e.kind() == std::io::ErrorKind::ConnectionReset,
            _ => false,
        };
        if stale && !fresh {
            // The upstream closed the reused connection as it was reused: once more, on a
            // new one (nothing of the request was processed on the old one).
            tracing::debug!(
                upstream = &*up.name,
                "reused connection closed under the request; sending on a new one"
            );
            conn = tokio::time::timeout_at(deadline, self.connect_plain(up, plain))
                .await
                .map_err(|_| Failure::Timeout)??;
            result = conn
                .exchange(
                    &plain.head,
                    extra,
                    body,
                    self.max_response_bytes,
                    deadline,
                    h1_offer,
                )
                .await;
        }
        match result {
            Ok(h1::Exchanged {
                stream: Some(begun),
                ..
            }) => {
                let Some((offer, _)) = offer else {
                    return Err(Failure::Malformed("an answer streamed without an offer"));
                };
                let limit = self.max_response_bytes;
                let stream = ResultStream::new(conn, begun, limit, offer.deadline, up.name.clone());
                Ok(Sent::Streaming(Box::new(stream)))
            }
            Ok(h1::Exchanged {
                reply, reusable, ..
            }) => {
                if reusable {
                    let (max_idle, idle_timeout) = (self.pool_max_idle, self.pool_idle_timeout);
                    up.idle.put(conn, started, max_idle, idle_timeout);
                }
                Ok(Sent::Reply(reply))
            }
            Err(h1::Error::TooLarge) => Err(Failure::TooLarge(self.max_response_bytes)),
            Err(h1::Error::TimedOut) => Err(Failure::Timeout),
            Err(h1::Error::NotSent(e)) => Err(Failure::Transport(
                up.redact(&format!("sending the request failed: {e}")),
            )),
            Err(h1::Error::Closed { partial: true }) => Err(Failure::Transport(up.redact(
                "reading the response failed: connection closed before the message completed",
            ))),
            Err(e) => Err(Failure::Transport(
                up.redact(&format!("connection failed: {e}")),
            )),
        }
    }

    /// A new HTTP/1.1 connection to a plain-HTTP upstream.
    async fn connect_plain(&self, up: &Endpoint, plain: &PlainHttp) -> Result<h1::Conn, Failure> {
        let stream = self
            .connect_tcp(&plain.host, plain.port)
            .await
            .map_err(|why| Failure::Connect(up.redact(&why)))?;
        Ok(h1::Conn::new(stream))
    }

    /// A TCP connection to `host:port`: resolved through the caching resolver (an IP literal
    /// as it is), each address tried in turn, within `client.connect_timeout`; no delay, and
    /// keep-alive probes after a minute idle. The error says why, unredacted.
    pub(crate) async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        let connect = async {
            let ips = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => self
                    .resolver
                    .resolve(host)
                    .await
                    .map_err(|e| format!("{DNS_FAILED}: {}", root_cause(&e)))?,
            };
            let mut last = None;
            for ip in ips {
                match TcpStream::connect(SocketAddr::new(ip, port)).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            let e = last.unwrap_or_else(|| std::io::Error::other("no addresses"));
            Err(match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                _ => format!("connect failed: {e}"),
            })
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| "connect timed out".to_string())??;
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(stream)
    }
}

/// The innermost error's message, which is the one that says what happened.
fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn describe_client_error(up: &Endpoint, e: &hyper_util::client::legacy::Error) -> Failure {
    let (mut io_kind, mut tls) = (None, false);
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        tls |= err.is::<rustls::Error>();
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => {
                io_kind = Some(io.kind());
                // io::Error::source() skips the error it wraps: step into it instead.
                match io.get_ref() {
                    Some(inner) => Some(inner as &(dyn StdError + 'static)),
                    None => err.source(),
                }
            }
            None => err.source(),
        };
    }
    let detail = root_cause(e);
    if e.is_connect() {
        use std::io::ErrorKind::*;
        let what = match io_kind {
            _ if tls => format!("TLS handshake failed: {detail}"),
            Some(ConnectionRefused) => "connection refused".to_string(),
            Some(TimedOut) => "connect timed out".to_string(),
            _ if format!("{e:?}").contains("dns error") => {
                format!("{DNS_FAILED}: {detail}")
            }
            _ => format!("connect failed: {detail}"),
        };
        return Failure::Connect(up.redact(&what));
    }
    Failure::Transport(up.redact(&format!("connection failed: {detail}")))
}

/// Parses a `Retry-After` header: delay-seconds, or an HTTP date (the time left until it).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, value.parse().unwrap());
        h
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(retry_after(&with("7")), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(20);
        let got = retry_after(&with(&httpdate::fmt_http_date(later))).unwrap();
        assert!(
            got > Duration::from_secs(17) && got <= Duration::from_secs(20),
            "{got:?}"
        );
        assert_eq!(
            retry_after(&with("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&with("soon")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
