//! The accept loop: HTTP/1.1 and HTTP/2 (h2c, or h2 by ALPN over TLS) on an already-bound
//! listener, TCP_NODELAY, header and TLS-handshake timeouts, a connection limit, draining and
//! graceful shutdown.
//!
//! [`serve`] takes the listener and a shutdown future from the caller, so tests and embedders
//! bind port 0 and stop the server when they like.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::service::Detour;

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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let serve_connection = |stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit| {
        let _ = stream.set_nodelay(true);
        let detour = service.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        // TLS as configured now: a reload with a renewed certificate applies to new connections.
        let tls = service.pool().tls.clone();
        let handshake_timeout = server.header_read_timeout;
        tokio::spawn(async move {
            // The peer goes straight in, not through the request's extensions (a map
            // allocated per request). The future is boxed: hyper keeps room for one in every
            // connection, and a box keeps that room small between requests.
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let detour = detour.clone();
                Box::pin(async move {
                    Ok::<_, std::convert::Infallible>(detour.serve_http(req, Some(peer)).await)
                })
            });
            let result = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    watcher.watch(conn.into_owned()).await
                }
                Some(config) => {
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                    match tokio::time::timeout(handshake_timeout, accept).await {
                        Ok(Ok(tls_stream)) => {
                            let conn = builder.serve_connection(TokioIo::new(tls_stream), svc);
                            watcher.watch(conn.into_owned()).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "client connection ended with an error");
            }
            drop(permit);
        });
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
    tracing::info!(connections = graceful.count(), grace = ?server.shutdown_grace, "shutting down");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(server.shutdown_grace) => {
            tracing::warn!("shutdown grace expired with requests still in flight");
        }
    }
    Ok(())
}
