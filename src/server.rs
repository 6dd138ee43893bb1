//! The accept loop: HTTP/1.1 and HTTP/2 (h2c) on an already-bound listener, TCP_NODELAY, a
//! header read timeout, and graceful shutdown.
//!
//! [`serve`] takes the listener and a shutdown future from the caller, so tests and embedders
//! bind port 0 and stop the server when they like.

use std::future::Future;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::service::{Detour, Peer};

/// Serves `service` on `listener` until `shutdown` completes; then stops accepting, lets
/// in-flight requests finish for up to `server.shutdown_grace`, and returns.
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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let detour = service.clone();
                    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(Peer(peer));
                        // Always ready (poll_ready is a no-op): call it directly.
                        tower_service::Service::call(&mut detour.clone(), req)
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::trace!(error = %e, "client connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
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
