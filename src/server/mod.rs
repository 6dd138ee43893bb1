//! The accept loop: HTTP/1.1 and HTTP/2 (h2c, or h2 by ALPN over TLS) on an already-bound
//! listener, TCP_NODELAY, header and TLS-handshake timeouts, a connection limit, draining and
//! graceful shutdown. A plain connection that sends nothing within `server.header_read_timeout`
//! is closed, so silent clients cannot hold the connection slots.
//!
//! [`serve`] takes the listener and a shutdown future from the caller, so tests and embedders
//! bind port 0 and stop the server when they like.

pub(crate) mod h1serve;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::proxy::service::Detour;

/// Serves `service` on `listener` until `shutdown` completes; then `/readyz` turns 503, new
/// connections are still accepted for `server.shutdown_delay` (default 0) so load balancers
/// notice, the listener closes, in-flight requests finish for up to `server.shutdown_grace`,
/// and it returns.
pub async fn serve(
    listener: TcpListener,
    service: Detour,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let server = service.pool().config.server.clone();
    // Plain connections go straight to the HTTP/1 or the HTTP/2 server by their first bytes
    // (see `sniff_h2c`), TLS connections by ALPN.
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .keep_alive(true);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.http2_max_streams)
        .keep_alive_interval(server.http2_keep_alive)
        .keep_alive_timeout(server.http2_keep_alive);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .keep_alive(true);
    auto.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.http2_max_streams)
        .keep_alive_interval(server.http2_keep_alive)
        .keep_alive_timeout(server.http2_keep_alive);
    let graceful = GracefulShutdown::new();
    // Shutdown for the HTTP/1 fast path (hyper's connections have `graceful`).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serve_connection = |stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit| {
        let _ = stream.set_nodelay(true);
        let detour = service.clone();
        // The peer goes straight in, not through the request's extensions (a map allocated
        // per request). The future is boxed: hyper keeps room for one in every connection,
        // and a box keeps that room small between requests.
        let svc_detour = detour.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let detour = svc_detour.clone();
            Box::pin(async move {
                if req.version() == http::Version::HTTP_11
                    && req.headers().get_all(http::header::HOST).iter().count() != 1
                {
                    // RFC 9112 §3.2 (as nginx does); the fast path hands such requests here.
                    return Ok(crate::proxy::response::bad_host());
                }
                Ok::<_, std::convert::Infallible>(detour.serve_http(req, Some(peer)).await)
            })
        });
        let watcher = graceful.watcher();
        let stop = stop_rx.clone();
        let first_bytes_timeout = server.header_read_timeout;
        let http2_idle = server.http2_idle_timeout;
        // TLS as configured now: a reload with a renewed certificate applies to new connections.
        match service.pool().tls.clone() {
            None => {
                let (http1, http2) = (http1.clone(), http2.clone());
                // Every open connection keeps this task, so the common case (plain HTTP/1) is
                // kept small: the HTTP/2 connection is boxed.
                tokio::spawn(async move {
                    let mut stream = stream;
                    let h2c =
                        tokio::time::timeout(first_bytes_timeout, sniff_h2c(&mut stream)).await;
                    let result = match h2c {
                        Ok(Ok((false, read))) if read.is_empty() => {
                            serve_http1(stream, peer, detour, stop, &http1, svc, watcher).await
                        }
                        Ok(Ok((false, read))) => {
                            // Rare (a first segment that began like the preface): boxed.
                            let io = h1serve::Rewind::new(read, stream);
                            Box::pin(serve_http1(io, peer, detour, stop, &http1, svc, watcher))
                                .await
                        }
                        Ok(Ok((true, read))) => {
                            drop(watcher);
                            let io = h1serve::Rewind::new(read, stream);
                            Box::pin(serve_h2(io, svc, &http2, stop, http2_idle)).await
                        }
                        Ok(Err(e)) => {
                            tracing::trace!(%peer, error = %e, "client connection failed before its first request");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "client sent nothing within server.header_read_timeout; closed");
                            Ok(())
                        }
                    };
                    log_end(result);
                    drop(permit);
                });
            }
            Some(config) => {
                let (http1, http2, auto) = (http1.clone(), http2.clone(), auto.clone());
                tokio::spawn(Box::pin(async move {
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                    let result = match tokio::time::timeout(first_bytes_timeout, accept).await {
                        // The protocol agreed by ALPN; a client that named none gets the
                        // auto builder, which tells them apart by the first bytes.
                        Ok(Ok(tls)) => match tls.get_ref().1.alpn_protocol() {
                            Some(b"h2") => serve_h2(tls, svc, &http2, stop, http2_idle).await,
                            Some(b"http/1.1") => {
                                serve_http1(tls, peer, detour, stop, &http1, svc, watcher).await
                            }
                            _ => {
                                let conn =
                                    auto.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                                watcher.watch(conn.into_owned()).await
                            }
                        },
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    };
                    log_end(result);
                    drop(permit);
                }));
            }
        }
    };
    // One permit per open client connection: at the limit, accepting waits for one to close.
    let slots = Arc::new(Semaphore::new(server.max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = async {
                let permit = slots.clone().acquire_owned().await;
                (listener.accept().await, permit)
            } => match accepted {
                (Ok((stream, peer)), Ok(permit)) => serve_connection(stream, peer, permit),
                (Err(e), _) => {
                    // Typically EMFILE: back off instead of spinning, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // The semaphore is never closed.
                (Ok(_), Err(_)) => break,
            },
            () = &mut shutdown => break,
        }
    }
    // Draining: /readyz answers 503 from now on, so load balancers stop sending new traffic.
    service.set_draining();
    // The delay and the grace period as configured now (they may have been reloaded).
    let server = service.pool().config.server.clone();
    if !server.shutdown_delay.is_zero() {
        tracing::info!(delay = ?server.shutdown_delay, "draining: still accepting while /readyz says 503");
        let until = tokio::time::sleep(server.shutdown_delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                accepted = async {
                    let permit = slots.clone().acquire_owned().await;
                    (listener.accept().await, permit)
                } => if let (Ok((stream, peer)), Ok(permit)) = accepted {
                    serve_connection(stream, peer, permit);
                },
                () = &mut until => break,
            }
        }
    }
    drop(listener);
    drop(stop_rx);
    let connections = graceful.count().max(stop_tx.receiver_count());
    tracing::info!(connections, grace = ?server.shutdown_grace, "shutting down");
    let _ = stop_tx.send(true);
    let all_closed = async {
        tokio::join!(
            graceful.shutdown(),
            stop_tx.closed(),
            service.close_websockets(server.shutdown_grace)
        );
    };
    tokio::select! {
        () = all_closed => tracing::info!("all connections closed"),
        () = tokio::time::sleep(server.shutdown_grace) => {
            tracing::warn!("shutdown grace expired with requests still in flight");
        }
    }
    Ok(())
}

/// HTTP/1.1 on `io`: the fast path serves what it can, and hyper's server takes the rest of the
/// connection from the first request it does not (see [`h1serve`]).
async fn serve_http1<IO, S>(
    io: IO,
    peer: SocketAddr,
    detour: Detour,
    stop: tokio::sync::watch::Receiver<bool>,
    http1: &hyper::server::conn::http1::Builder,
    svc: S,
    watcher: Watcher,
) -> Result<(), BoxError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = crate::proxy::service::Body>,
    S::Error: Into<BoxError>,
{
    // hyper's side keeps the connection for an upgrade (WebSocket). hyper-util's graceful
    // shutdown does not take such a connection; `stop` closes it gracefully instead (and the
    // shutdown waits for it, as for the fast path's).
    drop(watcher);
    if !detour.pool().config.server.http1_fast_path {
        let conn = http1
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        return Box::pin(until_stopped(conn, stop)).await;
    }
    let mut stop_hyper = stop.clone();
    stop_hyper.mark_unchanged();
    match h1serve::serve(io, peer, detour, stop).await {
        h1serve::End::Closed(result) => result.map_err(Into::into),
        h1serve::End::Handover(rewind) => {
            // Boxed: rare, and it keeps the connection's task small.
            let conn = http1
                .serve_connection(TokioIo::new(rewind), svc)
                .with_upgrades();
            Box::pin(until_stopped(conn, stop_hyper)).await
        }
    }
}

/// Serves a hyper HTTP/1 connection; when `stop` turns `true`, shuts it down gracefully (the
/// request in flight is answered, then it closes).
async fn until_stopped<IO, S>(
    conn: hyper::server::conn::http1::UpgradeableConnection<TokioIo<IO>, S>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), BoxError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = crate::proxy::service::Body>,
    S::Error: Into<BoxError>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result.map_err(Into::into),
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await.map_err(Into::into)
}

/// HTTP/2 on `io`, until the client closes it, the server shuts down (`stop`), or no request
/// was open for `idle` (an HTTP/1 connection closes after `header_read_timeout` without a
/// request; an HTTP/2 one would otherwise stay forever). Both close it gracefully (GOAWAY):
/// requests in flight finish, and the client knows not to send more on it.
async fn serve_h2<IO, S>(
    io: IO,
    svc: S,
    http2: &hyper::server::conn::http2::Builder<TokioExecutor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    idle: Duration,
) -> Result<(), BoxError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = http::Response<crate::proxy::service::Body>,
        > + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + Sync + std::error::Error + 'static,
{
    let activity = Arc::new(Activity::default());
    let tracked = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let open = activity.begin();
            let answer = svc.call(req);
            async move {
                let answer = answer.await;
                drop(open);
                answer
            }
        })
    };
    let conn = http2.serve_connection(TokioIo::new(io), tracked);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let check = tokio::time::sleep_until(activity.idle_deadline(idle));
        tokio::select! {
            done = conn.as_mut() => return done.map_err(Into::into),
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = check, if !closing => {
                if activity.idle_for(idle) {
                    tracing::debug!("HTTP/2 connection idle for server.http2_idle_timeout; closing");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Requests open on one HTTP/2 connection, and when the last one ended.
#[derive(Default)]
struct Activity {
    open: std::sync::atomic::AtomicUsize,
    /// When a request last ended (or the connection began): Tokio's clock.
    since: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Marks a request open on its connection until dropped.
struct Open(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Open(self.clone())
    }

    fn last(&self) -> tokio::time::Instant {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        *since.get_or_insert_with(tokio::time::Instant::now)
    }

    /// When the connection will have been idle for `idle`, if nothing opens before.
    fn idle_deadline(&self, idle: Duration) -> tokio::time::Instant {
        self.last() + idle
    }

    /// No request open, and none ended within `idle`.
    fn idle_for(&self, idle: Duration) -> bool {
        self.open.load(std::sync::atomic::Ordering::Relaxed) == 0 && self.last().elapsed() >= idle
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Notes how a client connection ended (at TRACE: clients come and go).
fn log_end<E: std::fmt::Display>(result: Result<(), E>) {
    if let Err(e) = result {
        tracing::trace!(error = %e, "client connection ended with an error");
    }
}

/// The first bytes an HTTP/2 client with prior knowledge (h2c) sends.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plaintext client speaks HTTP/2 with prior knowledge, and the bytes read to tell
/// (to be read again by whichever server takes the connection). Anything but the HTTP/2
/// preface is HTTP/1; a client that closes before sending anything is HTTP/1 too (its server
/// sees the end at once).
///
/// The first look is a peek, which consumes nothing: nearly every client's first segment
/// settles it, and the connection then goes on as it is. hyper-util's auto builder reads and
/// hands the bytes back through a wrapper instead, which made hyper's read buffer grow from
/// 8 KiB to 16 KiB on every connection (8 MiB more with 1 000 open). Only when the first
/// segment is a strict prefix of the preface (`P`, `PRI * HT`) are bytes read, as they come,
/// until they match or differ: a second peek would return at once and spin.
async fn sniff_h2c(stream: &mut TcpStream) -> std::io::Result<(bool, Bytes)> {
    let mut first = [0u8; 24];
    let n = stream.peek(&mut first).await?;
    if n == 0 || first[..n] != H2_PREFACE[..n] {
        return Ok((false, Bytes::new()));
    }
    if n == H2_PREFACE.len() {
        return Ok((true, Bytes::new()));
    }
    let mut read = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        if stream.read_buf(&mut read).await? == 0 {
            return Ok((false, read.freeze()));
        }
        let n = read.len().min(H2_PREFACE.len());
        if read[..n] != H2_PREFACE[..n] {
            return Ok((false, read.freeze()));
        }
        if n == H2_PREFACE.len() {
            return Ok((true, read.freeze()));
        }
    }
}
