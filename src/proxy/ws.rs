//! WebSocket clients: `ws://…/<chain>` (and `wss://` on the TLS listener) on the same paths,
//! keys and origin policy as HTTP. Each text message is a JSON-RPC call or batch, served
//! exactly as over HTTP (routing, method policy, failover, rate limits, metrics, access log);
//! `eth_subscribe` / `eth_unsubscribe` are answered by the connection's [`Subscriptions`],
//! built on detour's chain tracker ([`crate::follow::subscribe`]).
//!
//! One task per connection does everything: it reads the client's messages, polls the calls
//! in flight (at most [`CALLS_PER_CONNECTION`] at once, concurrently, in place: no task per
//! call), frames answers and notifications straight into the connection's output buffer, and
//! writes that buffer once per wake. A client that leaves more than `websocket.max_queued_bytes`
//! unread (it reads slower than its messages arrive) is disconnected with close code 1008;
//! memory stays bounded. Pings go out after `websocket.ping_interval` of silence; a client
//! silent for two intervals is closed. Shutdown closes with 1001, and a
//! reload that removes the chain with 1001 and a reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::response::{error_bytes, json};
use super::service::{Body, Detour};
use crate::failover::retry::CallResult;
use crate::follow::relay::{RelayError, Relayed};
use crate::follow::subscribe::{kind_of, Subscription, Topic};
use crate::rpc::jsonrpc::{self, Raw, INVALID_PARAMS};
use crate::state::pool::Chain;

/// Calls of one connection answered at once; a client that sends more waits.
pub const CALLS_PER_CONNECTION: usize = 64;

/// Whether `req` asks to become a WebSocket (`Upgrade: websocket`).
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Who is on the other end, for rate limits, filters and the access log.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    /// The API key's name.
    pub(crate) key: Option<String>,
    pub(crate) peer: Option<SocketAddr>,
}

/// Answers an upgrade request for `chain`: 101 and the connection's task, or why not.
pub(crate) fn upgrade<B>(
    detour: &Detour,
    mut req: Request<B>,
    chain: &Chain,
    client: Client,
) -> Response<Body> {
    let pool = detour.pool();
    let config = pool.config.websocket;
    let refuse = |status: StatusCode, why: &str| {
        json(
            status,
            error_bytes(
                jsonrpc::INVALID_REQUEST,
                "Invalid Request",
                Some(&jsonrpc::json_string(why)),
            ),
        )
    };
    if !config.enabled {
        return refuse(
            StatusCode::NOT_FOUND,
            "WebSocket is not enabled here (websocket.enabled)",
        );
    }
    if req.method() != http::Method::GET {
        return refuse(StatusCode::BAD_REQUEST, "a WebSocket upgrade must be a GET");
    }
    let headers = req.headers();
    let connection_upgrade = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return refuse(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs `Connection: upgrade`",
        );
    }
    if headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut resp = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is served",
        );
        resp.headers_mut().insert(
            http::header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    }
    let Some(key) = headers.get(http::header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
    };
    // Browsers send their page's origin; the HTTP side's CORS policy decides here too.
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        if super::access::allowed_origin(&pool.config.server, origin).is_none() {
            return refuse(
                StatusCode::FORBIDDEN,
                "this origin may not connect (server.cors_origins)",
            );
        }
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded (HTTP/2, or a service not run by detour's server)",
        );
    };
    let open = detour.websockets();
    if open.fetch_add(1, Relaxed) >= config.max_connections {
        open.fetch_sub(1, Relaxed);
        tracing::debug!(
            max = config.max_connections,
            "WebSocket refused: websocket.max_connections reached"
        );
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{} WebSocket connections are open (websocket.max_connections)",
                config.max_connections
            ),
        );
    }
    let slot = Open(open);
    let detour = detour.clone();
    let chain_name: Arc<str> = chain.name.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let ws = WebSocketStream::from_raw_socket(
            Io {
                io: TokioIo::new(upgraded),
                out: BytesMut::new(),
            },
            Role::Server,
            Some(ws_config),
        )
        .await;
        run(detour, chain_name, client, ws).await;
        drop(slot);
    });
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// Counts an open WebSocket connection until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The client's socket as tungstenite sees it: reads pass through; what tungstenite writes
/// (pongs, close frames) lands in `out`, beside the frames detour writes there itself
/// (answers and notifications, framed by [`text_frame`]), and the connection's task writes
/// `out` to the socket. Everything goes out from that one task, one write per wake, and the
/// bytes not yet taken by the socket are counted exactly (a slow client's bound).
struct Io<S> {
    io: S,
    out: BytesMut,
}

impl<S: AsyncRead + Unpin> AsyncRead for Io<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: Unpin> AsyncWrite for Io<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> Io<S> {
    /// Writes `out` to the socket until it is empty (then flushed, and its memory given back)
    /// or the socket is full (then the task is woken when it can take more).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => self.out.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // An idle connection keeps no buffer (10 000 of them would hold megabytes).
        self.out = BytesMut::new();
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// Appends a text frame's header for a `len`-byte payload (a server's frames are unmasked).
fn text_frame(out: &mut BytesMut, len: usize) {
    out.reserve(len + 10);
    out.put_u8(0x81);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= 0xffff {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Appends `text` as one text frame.
fn put_text(out: &mut BytesMut, text: &[u8]) {
    text_frame(out, text.len());
    out.extend_from_slice(text);
}

/// Appends an answer as a text frame (JSON-RPC: UTF-8 unless an upstream's bytes were not;
/// those are replaced, as a text message must be UTF-8).
fn put_answer(out: &mut BytesMut, answer: &[u8]) {
    match std::str::from_utf8(answer) {
        Ok(_) => put_text(out, answer),
        Err(_) => put_text(out, String::from_utf8_lossy(answer).as_bytes()),
    }
}

/// Appends a notification as geth writes it as a text frame, without building it apart
/// first: `id` is the subscription's id (a JSON string), `result` the JSON notified.
fn put_notification(out: &mut BytesMut, id: &str, result: &str) {
    const HEAD: &str = r#"{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"#;
    const MID: &str = r#","result":"#;
    text_frame(out, HEAD.len() + id.len() + MID.len() + result.len() + 2);
    for part in [HEAD, id, MID, result, "}}"] {
        out.extend_from_slice(part.as_bytes());
    }
}

/// Why the connection ends, for the close frame and the log.
enum End {
    ClientClosed,
    Gone,
    SlowConsumer,
    TooLarge,
    Lagged(u64),
    Silent,
    Shutdown,
    ChainRemoved,
}

/// A connection's subscriptions, answering `eth_subscribe` / `eth_unsubscribe` for it.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    /// By id (its JSON string, quotes included).
    subs: HashMap<Box<str>, Subscription>,
    /// Kinds relayed from an upstream's WebSocket, by id.
    relayed: HashMap<Box<str>, Relayed>,
    /// The tracker's changes, once the connection subscribed to anything.
    changed: Option<tokio::sync::watch::Receiver<u64>>,
}

fn error(code: i64, message: &str) -> CallResult {
    CallResult::Error(Bytes::from(jsonrpc::error_object(code, message, None)))
}

impl Subscriptions {
    /// Answers one `eth_subscribe` or `eth_unsubscribe` call.
    pub(crate) async fn answer(
        &mut self,
        detour: &Detour,
        chain: &Chain,
        method: &str,
        params: Option<Raw<'_>>,
    ) -> CallResult {
        {
            if method == "eth_unsubscribe" {
                let id: Option<Vec<String>> =
                    params.and_then(|p| serde_json::from_str(p.get()).ok());
                return match id.as_deref() {
                    Some([id]) => {
                        let key = jsonrpc::json_string(&id.to_ascii_lowercase());
                        let found = self.subs.remove(key.as_str()).is_some()
                            || self.relayed.remove(key.as_str()).is_some();
                        CallResult::Result(Bytes::from_static(if found {
                            b"true"
                        } else {
                            b"false"
                        }))
                    }
                    _ => error(
                        INVALID_PARAMS,
                        "invalid argument 0: want one subscription id",
                    ),
                };
            }
            let pool = detour.pool();
            let config = &pool.config;
            let topic = Topic::parse(params.map(|p| p.get()));
            if let Err(why) = &topic {
                return error(INVALID_PARAMS, why);
            }
            let open = self.subs.len() + self.relayed.len();
            if open >= config.websocket.max_subscriptions {
                return error(
                    -32000,
                    &format!(
                        "this connection has {open} subscriptions (websocket.max_subscriptions)"
                    ),
                );
            }
            let Ok(Some(topic)) = topic else {
                // Another kind: relayed from an upstream's WebSocket.
                let params = params.map_or("[]", |p| p.get());
                let kind = kind_of(params).unwrap_or_default();
                return match detour.filters().relay(&chain.name, &kind, params).await {
                    Ok(relayed) => {
                        let id = new_id();
                        tracing::debug!(chain = &*chain.name, kind, "subscribed (relayed)");
                        self.relayed.insert(id.clone(), relayed);
                        CallResult::Result(Bytes::from(id.into_string()))
                    }
                    Err(RelayError::Upstream(e)) => CallResult::Error(Bytes::from(e)),
                    Err(RelayError::Unavailable(why)) => {
                        error(-32000, &format!("cannot subscribe to {kind}: {why}"))
                    }
                };
            };
            let kind = topic.kind();
            match detour
                .filters()
                .subscribe(&chain.name, topic, &config.tracker)
                .await
            {
                Ok(sub) => {
                    let id = new_id();
                    if self.changed.is_none() {
                        self.changed = Some(sub.watch());
                    }
                    tracing::debug!(chain = &*chain.name, kind, "subscribed");
                    self.subs.insert(id.clone(), sub);
                    CallResult::Result(Bytes::from(id.into_string()))
                }
                Err(why) => error(
                    -32000,
                    &format!("could not read the chain head to start the subscription: {why}"),
                ),
            }
        }
    }

    /// Frames every subscription's new notifications into `out`.
    fn flush(&mut self, out: &mut BytesMut, detour: &Detour) -> Result<(), End> {
        let mut sent = 0;
        for (id, sub) in &mut self.subs {
            let read = sub.results(|result| {
                put_notification(out, id, result);
                sent += 1;
            });
            if let Err(lost) = read {
                return Err(End::Lagged(lost.0));
            }
        }
        detour.notified(sent);
        Ok(())
    }
}

/// A new subscription id: 16 random bytes as hex, as a JSON string.
fn new_id() -> Box<str> {
    format!("\"0x{:032x}\"", fastrand::u128(..)).into()
}

/// The next notification of any relayed subscription: its id and `result` (or how many it
/// missed); forever when there is none.
async fn next_relayed(
    relayed: &mut HashMap<Box<str>, Relayed>,
) -> (Box<str>, Result<Arc<str>, u64>) {
    if relayed.is_empty() {
        return std::future::pending().await;
    }
    let next = relayed
        .iter_mut()
        .map(|(id, r)| Box::pin(async move { (id.clone(), r.next().await) }));
    futures_util::future::select_all(next).await.0
}

/// Waits for the tracker's next change (forever, before the first subscription).
async fn changed(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// What woke the connection on its socket.
enum Socket {
    Read(Option<Result<Message, WsError>>),
    WriteFailed,
}

/// Writes what is waiting for the client, then reads its next message (unless `read` is
/// false: the connection has [`CALLS_PER_CONNECTION`] calls in flight).
fn poll_socket<S>(ws: &mut WebSocketStream<Io<S>>, read: bool, cx: &mut Context<'_>) -> Poll<Socket>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Poll::Ready(Err(_)) = ws.get_mut().poll_send(cx) {
        return Poll::Ready(Socket::WriteFailed);
    }
    if !read {
        return Poll::Pending;
    }
    let next = ws.poll_next_unpin(cx).map(Socket::Read);
    // Reading may have queued a pong or a close reply.
    if !ws.get_ref().out.is_empty() {
        if let Poll::Ready(Err(_)) = ws.get_mut().poll_send(cx) {
            return Poll::Ready(Socket::WriteFailed);
        }
    }
    next
}

type Call = Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>;

async fn run<S>(detour: Detour, chain: Arc<str>, client: Client, mut ws: WebSocketStream<Io<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = detour.pool().config.websocket;
    let max_queued = config.max_queued_bytes;
    let mut subs = Subscriptions::default();
    // Calls are answered concurrently, in this task: no hand-off to another task and back.
    let mut calls: FuturesUnordered<Call> = FuturesUnordered::new();
    let mut closing = detour.closing();
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.tick().await;
    let end = loop {
        let read = calls.len() < CALLS_PER_CONNECTION;
        tokio::select! {
            socket = std::future::poll_fn(|cx| poll_socket(&mut ws, read, cx)) => {
                let message = match socket {
                    Socket::Read(m) => m,
                    Socket::WriteFailed => break End::Gone,
                };
                let text = match message {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(b))) => match Utf8Bytes::try_from(b) {
                        Ok(t) => t,
                        Err(_) => {
                            put_answer(&mut ws.get_mut().out, &error_bytes(
                                jsonrpc::PARSE_ERROR,
                                "Parse error",
                                Some("\"the message is not UTF-8\""),
                            ));
                            continue;
                        }
                    },
                    Some(Ok(Message::Close(_))) | None => break End::ClientClosed,
                    Some(Ok(_)) => {
                        // Pings are answered by tungstenite; pongs only say the client is there.
                        last_heard = Instant::now();
                        continue;
                    }
                    Some(Err(WsError::Capacity(e))) => {
                        tracing::debug!(chain = &*chain, error = %e, "WebSocket message too large");
                        break End::TooLarge;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(chain = &*chain, error = %e, "WebSocket read failed");
                        break End::Gone;
                    }
                };
                last_heard = Instant::now();
                if detour.pool().route(&chain).is_none() {
                    break End::ChainRemoved;
                }
                if memchr::memmem::find(text.as_bytes(), b"subscribe").is_some() {
                    // Subscription calls are answered here, in order with the notifications:
                    // a subscription's id goes out before its first notification.
                    let mut session = Some(Box::new(std::mem::take(&mut subs)));
                    let answer = detour.ws_message(&chain, &client, text.as_bytes(), &mut session).await;
                    subs = session.take().map(|s| *s).unwrap_or_default();
                    let out = &mut ws.get_mut().out;
                    if let Some(answer) = answer {
                        put_answer(out, &answer);
                    }
                    if let Err(end) = subs.flush(out, &detour) {
                        break end;
                    }
                } else {
                    let (detour, chain, client) = (detour.clone(), chain.clone(), client.clone());
                    calls.push(Box::pin(async move {
                        let mut none = None;
                        detour.ws_message(&chain, &client, text.as_bytes(), &mut none).await
                    }));
                }
            }
            Some(answer) = calls.next(), if !calls.is_empty() => {
                if let Some(answer) = answer {
                    put_answer(&mut ws.get_mut().out, &answer);
                }
            }
            alive = changed(&mut subs.changed) => {
                if !alive {
                    break End::Shutdown;
                }
                if let Err(end) = subs.flush(&mut ws.get_mut().out, &detour) {
                    break end;
                }
            }
            (id, next) = next_relayed(&mut subs.relayed) => match next {
                Ok(result) => {
                    detour.notified(1);
                    put_notification(&mut ws.get_mut().out, &id, &result);
                }
                Err(missed) => tracing::debug!(
                    chain = &*chain,
                    missed,
                    "a relayed subscription's client fell behind: notifications skipped"
                ),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() >= config.ping_interval * 2 {
                    break End::Silent;
                }
                if detour.pool().route(&chain).is_none() {
                    break End::ChainRemoved;
                }
                if last_heard.elapsed() >= config.ping_interval
                    && ws.send(Message::Ping(Bytes::new())).await.is_err()
                {
                    break End::Gone;
                }
            }
            _ = closing.changed() => break End::Shutdown,
        }
        if ws.get_ref().out.len() > max_queued {
            break End::SlowConsumer;
        }
    };
    let (code, reason) = match end {
        End::ClientClosed | End::Gone => (None, ""),
        End::SlowConsumer => (
            Some(CloseCode::Policy),
            "too slow: more than websocket.max_queued_bytes waiting",
        ),
        End::TooLarge => (
            Some(CloseCode::Size),
            "message larger than websocket.max_message_bytes",
        ),
        End::Lagged(_) => (
            Some(CloseCode::Again),
            "too slow: fell behind the chain (tracker.max_events)",
        ),
        End::Silent => (
            Some(CloseCode::Away),
            "no answer to pings (websocket.ping_interval)",
        ),
        End::Shutdown => (Some(CloseCode::Away), "detour is shutting down"),
        End::ChainRemoved => (
            Some(CloseCode::Away),
            "the chain is no longer served (configuration reloaded)",
        ),
    };
    match (code, &end) {
        (Some(_), End::Lagged(lost)) => {
            tracing::warn!(chain = &*chain, peer = ?client.peer, reason, lost, "WebSocket client disconnected")
        }
        (Some(_), End::SlowConsumer) => {
            tracing::warn!(chain = &*chain, peer = ?client.peer, reason, "WebSocket client disconnected")
        }
        (Some(_), _) => {
            tracing::debug!(chain = &*chain, peer = ?client.peer, reason, "WebSocket closed")
        }
        _ => {}
    }
    drop(subs);
    drop(calls);
    if matches!(end, End::Gone) {
        return;
    }
    if let Some(code) = code {
        let _ = ws
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    } else {
        // The client's close is answered (tungstenite queued the reply; this frames it).
        let _ = ws.flush().await;
    }
    // What is queued goes out (the close frame last); a client that does not read does not
    // hold the task.
    let io = ws.get_mut();
    let sent = std::future::poll_fn(|cx| io.poll_send(cx));
    if let Ok(Ok(())) = tokio::time::timeout(std::time::Duration::from_secs(5), sent).await {
        let _ = io.io.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_framed_as_geth_writes_them() {
        let mut out = BytesMut::new();
        put_notification(&mut out, "\"0x1\"", "{\"number\":\"0x2\"}");
        let want = r#"{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0x1","result":{"number":"0x2"}}}"#;
        assert_eq!(out[0], 0x81, "FIN, text");
        assert_eq!(out[1] as usize, want.len());
        assert_eq!(&out[2..], want.as_bytes());
    }

    #[test]
    fn frame_lengths_take_the_short_forms() {
        for (len, header) in [
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = BytesMut::new();
            put_text(&mut out, &vec![b'a'; len]);
            assert_eq!(&out[..header.len()], &header[..], "{len}");
            assert_eq!(out.len(), header.len() + len);
        }
    }

    #[test]
    fn answers_that_are_not_utf8_are_replaced() {
        let mut out = BytesMut::new();
        put_answer(&mut out, b"\"\xff\"");
        assert_eq!(&out[2..], "\"\u{fffd}\"".as_bytes());
    }
}
