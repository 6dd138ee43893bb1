//! Keep-alive HTTP/1.1 connections to one plain-`http://` upstream.
//!
//! HTTPS upstreams go through hyper-util's pooled client (TLS, ALPN, HTTP/2). Plain-HTTP
//! upstreams — self-hosted nodes, sidecars, the other side of a private network — use this
//! smaller pool of [`crate::client::h1`] connections, which does the same job with less work per
//! request: it belongs to the upstream (no host key to hash, no shared map to lock), a checkout
//! is a pop from a stack, and the connection goes back when [`crate::client::forward`] has read the
//! answer to its end, so no task has to be spawned to return it later. Profiling showed
//! hyper-util's checkout, return and per-request return task at about 8% of the instructions of
//! a proxied request.
//!
//! The most recently used connection is reused first (warm in every cache, and idle ones age
//! out at the bottom). Only the top [`WARM`] keep their read buffers for good; the ones below
//! let theirs go once idle for [`COOL`], so a pool sized for bursts of hundreds of requests
//! costs little while idle. Not sooner: under steady load with more requests in flight than
//! `WARM`, connections cycle through the lower part of the stack within milliseconds, and
//! freeing and allocating their buffers each time made the allocator return memory to the
//! kernel and fault it back in (0.12 page faults a request with 14 KB answers).
//! A pooled connection the upstream closed while it sat idle is noticed before use (its socket
//! turned readable) and dropped.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::h1::Conn;

/// Idle connections at the top of the stack that keep their read buffers.
const WARM: usize = 16;
/// Connections below the top [`WARM`] that have been idle this long let their buffers go.
const COOL: Duration = Duration::from_secs(1);

/// Idle connections of one upstream.
#[derive(Default)]
pub(crate) struct IdleConns {
    idle: Mutex<Stack>,
}

#[derive(Default)]
struct Stack {
    /// The most recently returned last.
    conns: Vec<Idle>,
    /// When idle connections were last looked at for buffers to let go.
    swept: Option<Instant>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl std::fmt::Debug for IdleConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConns")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl IdleConns {
    /// The most recently returned connection that is still open and idle for less than
    /// `idle_timeout` at `now`, if any; expired and closed ones met on the way are dropped
    /// (closed).
    pub(crate) fn checkout(&self, now: Instant, idle_timeout: Duration) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.conns.pop() {
            if now.saturating_duration_since(c.since) < idle_timeout && c.conn.idle_usable() {
                return Some(c.conn);
            }
        }
        None
    }

    /// The most recently returned connection if it was idle for less than `within` and is
    /// still open; older ones are left for [`IdleConns::checkout`].
    pub(crate) fn checkout_recent(&self, now: Instant, within: Duration) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let top = idle.conns.last()?;
        if now.saturating_duration_since(top.since) < within && top.conn.idle_usable() {
            return idle.conns.pop().map(|c| c.conn);
        }
        None
    }

    /// Returns a connection that is ready for another request (its answer was read to the
    /// end), idle from `now` on. Kept when fewer than `max_idle` are idle; else dropped, which
    /// closes it.
    pub(crate) fn put(&self, conn: Conn, now: Instant, max_idle: usize, idle_timeout: Duration) {
        if max_idle == 0 {
            return;
        }
        let mut stack = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let Stack { conns: idle, swept } = &mut *stack;
        // The oldest sit at the bottom of the stack; close them once expired, so a pool that
        // served a burst shrinks back without a timer.
        if idle
            .first()
            .is_some_and(|c| now.saturating_duration_since(c.since) >= idle_timeout)
        {
            idle.retain(|c| now.saturating_duration_since(c.since) < idle_timeout);
        }
        if idle.len() < max_idle {
            idle.push(Idle { conn, since: now });
        }
        // At most once per COOL, the cold ones below the top WARM let their buffers go.
        if idle.len() > WARM && swept.is_none_or(|t| now.saturating_duration_since(t) >= COOL) {
            *swept = Some(now);
            let below = idle.len() - WARM;
            for c in &mut idle[..below] {
                if now.saturating_duration_since(c.since) >= COOL {
                    c.conn.release_buffer();
                }
            }
        }
    }

    /// How many connections are idle in the pool now.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.conns.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_most_recently_used_idle_connections_keep_their_buffers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Vec::new();
        let pool = IdleConns::default();
        let timeout = Duration::from_secs(60);
        let t0 = Instant::now();
        let capacities = |pool: &IdleConns, at: Instant| {
            let mut all = Vec::new();
            while let Some(c) = pool.checkout(at, timeout) {
                all.push(c);
            }
            let caps: Vec<usize> = all.iter().map(Conn::buffer_capacity).collect();
            // Back as they were, the same age.
            for c in all.into_iter().rev() {
                pool.put(c, t0, 1024, timeout);
            }
            caps
        };
        for _ in 0..WARM + 4 {
            let io = tokio::net::TcpStream::connect(addr).await.unwrap();
            accepted.push(listener.accept().await.unwrap());
            pool.put(Conn::new(io).with_buffer(), t0, 1024, timeout);
        }
        assert_eq!(pool.idle_count(), WARM + 4);
        // Idle for less than COOL (a pool cycling under load): every one keeps its buffer.
        let caps = capacities(&pool, t0);
        assert!(caps.iter().all(|&c| c > 0), "{caps:?}");
        // Once the ones below the top WARM have been idle for COOL, the next return lets their
        // buffers go; checked out from the top, the WARM most recent come first.
        let io = tokio::net::TcpStream::connect(addr).await.unwrap();
        accepted.push(listener.accept().await.unwrap());
        pool.put(Conn::new(io).with_buffer(), t0 + COOL, 1024, timeout);
        let caps = capacities(&pool, t0 + COOL);
        assert_eq!(caps.len(), WARM + 5);
        assert!(caps[..WARM].iter().all(|&c| c > 0), "{caps:?}");
        assert!(caps[WARM..].iter().all(|&c| c == 0), "{caps:?}");
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_max_idle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Vec::new();
        let pool = IdleConns::default();
        for _ in 0..5 {
            let io = tokio::net::TcpStream::connect(addr).await.unwrap();
            accepted.push(listener.accept().await.unwrap());
            pool.put(Conn::new(io), Instant::now(), 3, Duration::from_secs(60));
        }
        assert_eq!(pool.idle_count(), 3);
    }
}
