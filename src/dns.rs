//! Upstream hostname resolution through a cache that outlives resolver failures.
//!
//! Every upstream connection asks [`Resolver`] for its host's addresses (IP literals skip it).
//! An answer is reused for `client.dns_refresh`; after that the name is resolved again. When
//! that fails, the last good addresses keep being used, with a warning, until they are
//! `client.dns_max_stale` old: a resolver outage does not become an upstream outage. A name
//! that never resolved fails to connect, which marks its upstream unresolvable (see
//! [`crate::upstream::LiveState::unresolvable`]); detour still starts and serves the others.
//!
//! The lookup itself is pluggable ([`Resolver::from_fn`]) so tests can stub DNS without
//! leaving loopback.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::dns::Name;
use tokio::time::Instant;

type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
type LookupFn = dyn Fn(&str) -> LookupFuture + Send + Sync;

/// A caching resolver (cheap to clone; clones share the cache).
#[derive(Clone)]
pub struct Resolver {
    lookup: Arc<LookupFn>,
    cache: Arc<Mutex<HashMap<Box<str>, Entry>>>,
    refresh: Duration,
    max_stale: Duration,
}

#[derive(Debug, Clone)]
struct Entry {
    addrs: Vec<IpAddr>,
    resolved_at: Instant,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("refresh", &self.refresh)
            .field("max_stale", &self.max_stale)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// The operating system's resolver (`getaddrinfo` on Tokio's blocking pool).
    pub fn system() -> Resolver {
        Self::with_lookup(Arc::new(|host: &str| {
            let host = host.to_owned();
            Box::pin(async move {
                let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
                Ok(addrs.map(|a| a.ip()).collect())
            }) as LookupFuture
        }))
    }

    /// A resolver answering from `f` (for tests and embedders with their own name service).
    pub fn from_fn(
        f: impl Fn(&str) -> io::Result<Vec<IpAddr>> + Send + Sync + 'static,
    ) -> Resolver {
        Self::with_lookup(Arc::new(move |host: &str| {
            let r = f(host);
            Box::pin(async move { r }) as LookupFuture
        }))
    }

    fn with_lookup(lookup: Arc<LookupFn>) -> Resolver {
        Resolver {
            lookup,
            cache: Arc::default(),
            refresh: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
        }
    }

    /// The same lookup and cache with these freshness settings.
    pub fn with_settings(mut self, refresh: Duration, max_stale: Duration) -> Resolver {
        self.refresh = refresh;
        self.max_stale = max_stale;
        self
    }

    /// Resolves `host`: from the cache while fresh, else by a lookup; on a failed lookup, from
    /// the cache while it is younger than `max_stale`.
    pub async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let cached = self.cache.lock().ok().and_then(|c| c.get(host).cloned());
        let now = Instant::now();
        if let Some(e) = &cached {
            if now.duration_since(e.resolved_at) < self.refresh {
                return Ok(e.addrs.clone());
            }
        }
        let looked_up = match (self.lookup)(host).await {
            Ok(addrs) if addrs.is_empty() => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no addresses",
            )),
            other => other,
        };
        match looked_up {
            Ok(addrs) => {
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(
                        host.into(),
                        Entry {
                            addrs: addrs.clone(),
                            resolved_at: Instant::now(),
                        },
                    );
                }
                Ok(addrs)
            }
            Err(e) => match cached {
                Some(entry) if now.duration_since(entry.resolved_at) < self.max_stale => {
                    tracing::warn!(
                        host,
                        error = %e,
                        age = ?now.duration_since(entry.resolved_at),
                        "DNS resolution failed: using the last known addresses"
                    );
                    Ok(entry.addrs)
                }
                Some(_) => Err(io::Error::new(
                    e.kind(),
                    format!("{e} (last known addresses are older than client.dns_max_stale)"),
                )),
                None => Err(e),
            },
        }
    }
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.resolve(name.as_str()).await?;
            Ok(addrs
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    #[tokio::test(start_paused = true)]
    async fn caches_and_outlives_failures_up_to_max_stale() {
        let up = Arc::new(AtomicBool::new(true));
        let lookups = Arc::new(AtomicUsize::new(0));
        let (u, l) = (up.clone(), lookups.clone());
        let r = Resolver::from_fn(move |host| {
            l.fetch_add(1, SeqCst);
            match (host, u.load(SeqCst)) {
                ("node.test", true) => Ok(vec![IpAddr::from([127, 0, 0, 1])]),
                _ => Err(io::Error::other("no such host")),
            }
        })
        .with_settings(Duration::from_secs(30), Duration::from_secs(600));
        let lo = vec![IpAddr::from([127, 0, 0, 1])];
        assert_eq!(r.resolve("node.test").await.unwrap(), lo);
        assert_eq!(r.resolve("node.test").await.unwrap(), lo);
        assert_eq!(lookups.load(SeqCst), 1, "fresh answers come from the cache");
        // The resolver goes down: the last good answer is used until it is max_stale old.
        up.store(false, SeqCst);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(r.resolve("node.test").await.unwrap(), lo);
        assert_eq!(lookups.load(SeqCst), 2, "a stale entry is looked up again");
        tokio::time::advance(Duration::from_secs(600)).await;
        let e = r.resolve("node.test").await.unwrap_err();
        assert!(e.to_string().contains("dns_max_stale"), "{e}");
        // It comes back: fresh answers again.
        up.store(true, SeqCst);
        assert_eq!(r.resolve("node.test").await.unwrap(), lo);
        // A name that never resolved is an error.
        assert!(r.resolve("other.test").await.is_err());
    }
}
