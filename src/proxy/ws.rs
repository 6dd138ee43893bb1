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

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::{Fuse, FusedFuture, FutureExt};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::response::{error_bytes, json, RpcBody};
use super::service::{Body, Detour};
use super::wsframe::{put_close, put_ping, put_pong, text_frame, Fail, Frame, ReadError, Reader};
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
        let conn = Conn {
            io: TokioIo::new(upgraded),
            reader: Reader::new(config.max_message_bytes),
            out: BytesMut::new(),
        };
        run(detour, chain_name, client, conn).await;
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

/// The client's side of a connection: its socket, the frames read from it, and `out`, the
/// frames waiting to go to it (answers, notifications, pongs, pings and the close frame, all
/// framed by [`wsframe`]). Everything goes out from the connection's one task, one write per
/// wake, and the bytes not yet taken by the socket are counted exactly (a slow client's bound).
struct Conn<S> {
    io: S,
    reader: Reader,
    out: BytesMut,
}

impl<S: AsyncWrite + Unpin> Conn<S> {
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

/// Appends an answer as a text frame. JSON-RPC is UTF-8, but an upstream's bytes may not be:
/// those are replaced, as a text message must be UTF-8 (the client's own bytes, its ids, were
/// checked when its message was read).
fn put_answer(out: &mut BytesMut, answer: &RpcBody) {
    let parts = answer.parts();
    if simdutf8::basic::from_utf8(answer.upstream_part()).is_err() {
        let whole: Vec<u8> = parts.concat();
        let text = String::from_utf8_lossy(&whole);
        text_frame(out, text.len());
        out.extend_from_slice(text.as_bytes());
        return;
    }
    text_frame(out, answer.len());
    for part in parts {
        out.extend_from_slice(part);
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
    /// The client sent a close frame (with this code).
    ClientClosed(Option<u16>),
    Gone,
    SlowConsumer,
    /// The client broke the protocol.
    Broken(Fail),
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
    Read(Result<Option<Frame>, ReadError>),
    WriteFailed,
}

/// Writes what is waiting for the client, then reads its next frame (unless `read` is false:
/// the connection has [`CALLS_PER_CONNECTION`] calls in flight).
fn poll_socket<S>(conn: &mut Conn<S>, read: bool, cx: &mut Context<'_>) -> Poll<Socket>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Poll::Ready(Err(_)) = conn.poll_send(cx) {
        return Poll::Ready(Socket::WriteFailed);
    }
    if !read {
        return Poll::Pending;
    }
    conn.reader.poll_frame(&mut conn.io, cx).map(Socket::Read)
}

type Call<'a> = Pin<Box<dyn Future<Output = Option<RpcBody>> + Send + 'a>>;

async fn run<S>(detour: Detour, chain: Arc<str>, client: Client, mut conn: Conn<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = detour.pool().config.websocket;
    let max_queued = config.max_queued_bytes;
    let mut subs = Subscriptions::default();
    // Calls are answered concurrently, in this task: no hand-off to another task and back.
    // The first in flight is polled in place; more wait in `calls`.
    let call = |text: Bytes| {
        let (detour, chain, client) = (&detour, &chain, &client);
        async move { detour.ws_message(chain, client, &text, &mut None).await }
    };
    let mut first = std::pin::pin!(Fuse::terminated());
    let mut calls: FuturesUnordered<Call<'_>> = FuturesUnordered::new();
    let mut closing = detour.closing();
    // One wait for the whole connection, not one made again at every wake.
    let mut closing = std::pin::pin!(closing.changed());
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.tick().await;
    let end = loop {
        // `first` holds a call until it is answered (then it is terminated).
        let first_busy = !first.is_terminated();
        let read = calls.len() + usize::from(first_busy) < CALLS_PER_CONNECTION;
        // In this order (the common wakes first, no random start): tokio's cooperative budget
        // makes a socket that is always ready yield, so the later branches still get their turn.
        tokio::select! {
            biased;
            socket = std::future::poll_fn(|cx| poll_socket(&mut conn, read, cx)) => {
                let frame = match socket {
                    Socket::Read(Ok(Some(frame))) => frame,
                    Socket::Read(Ok(None)) | Socket::WriteFailed => break End::Gone,
                    Socket::Read(Err(ReadError::Fail(why))) => {
                        tracing::debug!(chain = &*chain, why = why.reason(), "WebSocket protocol error");
                        break End::Broken(why);
                    }
                    Socket::Read(Err(ReadError::Io(e))) => {
                        tracing::debug!(chain = &*chain, error = %e, "WebSocket read failed");
                        break End::Gone;
                    }
                };
                last_heard = Instant::now();
                let text = match frame {
                    Frame::Text(t) => t,
                    Frame::Binary(b) if simdutf8::basic::from_utf8(&b).is_ok() => b,
                    Frame::Binary(_) => {
                        put_answer(&mut conn.out, &RpcBody::Whole(error_bytes(
                            jsonrpc::PARSE_ERROR,
                            "Parse error",
                            Some("\"the message is not UTF-8\""),
                        )));
                        continue;
                    }
                    Frame::Ping(payload) => {
                        put_pong(&mut conn.out, &payload);
                        continue;
                    }
                    Frame::Pong => continue,
                    Frame::Close(code) => break End::ClientClosed(code),
                };
                if detour.pool().route(&chain).is_none() {
                    break End::ChainRemoved;
                }
                if memchr::memmem::find(&text, b"subscribe").is_some() {
                    // Subscription calls are answered here, in order with the notifications:
                    // a subscription's id goes out before its first notification.
                    let mut session = Some(Box::new(std::mem::take(&mut subs)));
                    let answer = detour.ws_message(&chain, &client, &text, &mut session).await;
                    subs = session.take().map(|s| *s).unwrap_or_default();
                    if let Some(answer) = answer {
                        put_answer(&mut conn.out, &answer);
                    }
                    if let Err(end) = subs.flush(&mut conn.out, &detour) {
                        break end;
                    }
                } else if !first_busy {
                    first.set(call(text).fuse());
                } else {
                    calls.push(Box::pin(call(text)));
                }
            }
            answer = &mut first, if first_busy => {
                if let Some(answer) = answer {
                    put_answer(&mut conn.out, &answer);
                }
            }
            Some(answer) = calls.next(), if !calls.is_empty() => {
                if let Some(answer) = answer {
                    put_answer(&mut conn.out, &answer);
                }
            }
            alive = changed(&mut subs.changed) => {
                if !alive {
                    break End::Shutdown;
                }
                if let Err(end) = subs.flush(&mut conn.out, &detour) {
                    break end;
                }
            }
            (id, next) = next_relayed(&mut subs.relayed) => match next {
                Ok(result) => {
                    detour.notified(1);
                    put_notification(&mut conn.out, &id, &result);
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
                if last_heard.elapsed() >= config.ping_interval {
                    put_ping(&mut conn.out);
                }
            }
            _ = &mut closing => break End::Shutdown,
        }
        if conn.out.len() > max_queued {
            break End::SlowConsumer;
        }
    };
    let (code, reason) = match end {
        End::Gone => (None, ""),
        // The client's close is answered with its code.
        End::ClientClosed(code) => (code, ""),
        End::SlowConsumer => (
            Some(1008),
            "too slow: more than websocket.max_queued_bytes waiting",
        ),
        End::Broken(why) => (Some(why.code()), why.reason()),
        End::Lagged(_) => (
            Some(1013),
            "too slow: fell behind the chain (tracker.max_events)",
        ),
        End::Silent => (Some(1001), "no answer to pings (websocket.ping_interval)"),
        End::Shutdown => (Some(1001), "detour is shutting down"),
        End::ChainRemoved => (
            Some(1001),
            "the chain is no longer served (configuration reloaded)",
        ),
    };
    match &end {
        End::Lagged(lost) => {
            tracing::warn!(chain = &*chain, peer = ?client.peer, reason, lost, "WebSocket client disconnected")
        }
        End::SlowConsumer => {
            tracing::warn!(chain = &*chain, peer = ?client.peer, reason, "WebSocket client disconnected")
        }
        End::Gone | End::ClientClosed(_) => {}
        _ => tracing::debug!(chain = &*chain, peer = ?client.peer, reason, "WebSocket closed"),
    }
    drop(subs);
    drop(calls);
    first.set(Fuse::terminated());
    if matches!(end, End::Gone) {
        return;
    }
    put_close(&mut conn.out, code, reason);
    // What is queued goes out (the close frame last); a client that does not read does not
    // hold the task.
    let sent = std::future::poll_fn(|cx| conn.poll_send(cx));
    if let Ok(Ok(())) = tokio::time::timeout(std::time::Duration::from_secs(5), sent).await {
        let _ = conn.io.shutdown().await;
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
    fn answers_that_are_not_utf8_are_replaced() {
        let mut out = BytesMut::new();
        put_answer(&mut out, &RpcBody::Whole(Bytes::from_static(b"\"\xff\"")));
        assert_eq!(&out[2..], "\"\u{fffd}\"".as_bytes());
        let mut out = BytesMut::new();
        let result = RpcBody::Result {
            id: smallvec::SmallVec::from_slice(b"7"),
            result: Bytes::from_static(b"\"\xc3\""),
        };
        put_answer(&mut out, &result);
        assert_eq!(
            &out[2..],
            "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":\"\u{fffd}\"}".as_bytes()
        );
        let mut out = BytesMut::new();
        let result = RpcBody::Result {
            id: smallvec::SmallVec::from_slice("\"é\"".as_bytes()),
            result: Bytes::from_static(b"\"0x1\""),
        };
        put_answer(&mut out, &result);
        assert_eq!(out[1] as usize, out.len() - 2);
        assert_eq!(
            &out[2..],
            "{\"jsonrpc\":\"2.0\",\"id\":\"é\",\"result\":\"0x1\"}".as_bytes()
        );
    }
}
