//! Upstream hostname resolution through a cache that outlives resolver failures.
//!
//! Every upstream connection asks [`Resolver`] for its host's addresses (IP literals skip it).
//! An answer is reused for `client.dns_refresh`; after that the last good addresses are still
//! answered at once while the name is resolved again in the background (one lookup per name at
//! a time, given up after `client.connect_timeout`). When that fails or hangs, they keep being
//! used, with a warning, until they are `client.dns_max_stale` old: a resolver outage, even
//! one that never answers, does not become an upstream outage nor a delay. A name
//! that never resolved fails to connect, which marks its upstream unresolvable (see
//! [`crate::state::upstream::LiveState::unresolvable`]); detour still starts and serves the others.
//!
//! The lookup itself is pluggable ([`Resolver::from_fn`]) so tests can stub DNS without
//! leaving loopback.

use std::collections::{HashMap, HashSet};
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
    shared: Arc<Shared>,
    refresh: Duration,
    max_stale: Duration,
    lookup_timeout: Duration,
}

/// What clones of a resolver share.
#[derive(Default)]
struct Shared {
    cache: Mutex<HashMap<Box<str>, Entry>>,
    /// Names being refreshed in the background (one lookup per name at a time).
    refreshing: Mutex<HashSet<Box<str>>>,
    /// Names being looked up in the foreground: later callers wait for the first lookup
    /// instead of starting their own.
    flights: Mutex<HashMap<Box<str>, Arc<tokio::sync::Mutex<()>>>>,
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
            .field("lookup_timeout", &self.lookup_timeout)
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

    /// A resolver whose lookups are `f`'s futures (which may take their time, or never end:
    /// tests use that for a resolver that hangs).
    pub fn from_async_fn<F>(f: impl Fn(&str) -> F + Send + Sync + 'static) -> Resolver
    where
        F: Future<Output = io::Result<Vec<IpAddr>>> + Send + 'static,
    {
        Self::with_lookup(Arc::new(move |host: &str| {
            Box::pin(f(host)) as LookupFuture
        }))
    }

    fn with_lookup(lookup: Arc<LookupFn>) -> Resolver {
        Resolver {
            lookup,
            shared: Arc::default(),
            refresh: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
            lookup_timeout: Duration::from_secs(5),
        }
    }

    /// The same lookup and cache with these freshness settings.
    pub fn with_settings(mut self, refresh: Duration, max_stale: Duration) -> Resolver {
        self.refresh = refresh;
        self.max_stale = max_stale;
        self
    }

    /// The same lookup and cache, each lookup given up after `timeout` (default 5 s).
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Resolver {
        self.lookup_timeout = timeout;
        self
    }

    /// Resolves `host`. A fresh cache entry is the answer. A stale one younger than
    /// `max_stale` is the answer too, at once, while a lookup refreshes it in the background
    /// (one per name at a time, bounded by the lookup timeout): a resolver that fails or
    /// hangs never delays a request that has addresses to go to. Without a usable entry, the
    /// name is looked up now, by one caller at a time (the others wait for its answer).
    pub async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let now = Instant::now();
        let cached = self.cached(host);
        if let Some(e) = &cached {
            let age = now.duration_since(e.resolved_at);
            if age < self.refresh {
                return Ok(e.addrs.clone());
            }
            if age < self.max_stale {
                self.refresh_in_background(host);
                return Ok(e.addrs.clone());
            }
        }
        let flight = {
            let mut flights = self
                .shared
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            flights.entry(host.into()).or_default().clone()
        };
        let _turn = flight.lock().await;
        // The lookup before ours may have answered.
        if let Some(e) = self.cached(host) {
            if Instant::now().duration_since(e.resolved_at) < self.refresh {
                return Ok(e.addrs);
            }
        }
        let result = match self.lookup_now(host).await {
            Ok(addrs) => Ok(addrs),
            Err(e) => Err(match cached {
                Some(_) => io::Error::new(
                    e.kind(),
                    format!("{e} (last known addresses are older than client.dns_max_stale)"),
                ),
                None => e,
            }),
        };
        self.shared
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host);
        result
    }

    fn cached(&self, host: &str) -> Option<Entry> {
        let cache = self.shared.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(host).cloned()
    }

    /// One lookup within the lookup timeout; a good answer goes into the cache.
    async fn lookup_now(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let looked_up = match tokio::time::timeout(self.lookup_timeout, (self.lookup)(host)).await {
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?}", self.lookup_timeout),
            )),
            Ok(Ok(addrs)) if addrs.is_empty() => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no addresses",
            )),
            Ok(other) => other,
        };
        if let Ok(addrs) = &looked_up {
            let mut cache = self.shared.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(
                host.into(),
                Entry {
                    addrs: addrs.clone(),
                    resolved_at: Instant::now(),
                },
            );
        }
        looked_up
    }

    /// Starts a lookup of `host` in the background unless one is running.
    fn refresh_in_background(&self, host: &str) {
        {
            let mut refreshing = self
                .shared
                .refreshing
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !refreshing.insert(host.into()) {
                return;
            }
        }
        let (this, host) = (self.clone(), host.to_owned());
        tokio::spawn(async move {
            if let Err(e) = this.lookup_now(&host).await {
                let age = this.cached(&host).map(|c| c.resolved_at.elapsed());
                tracing::warn!(
                    host,
                    error = %e,
                    age = ?age,
                    "DNS resolution failed: using the last known addresses"
                );
            }
            this.shared
                .refreshing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(host.as_str());
        });
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
    async fn a_hanging_resolver_never_delays_a_name_with_known_addresses() {
        let hang = Arc::new(AtomicBool::new(false));
        let lookups = Arc::new(AtomicUsize::new(0));
        let (h, l) = (hang.clone(), lookups.clone());
        let r = Resolver::from_async_fn(move |_host| {
            l.fetch_add(1, SeqCst);
            let hang = h.load(SeqCst);
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(vec![IpAddr::from([127, 0, 0, 1])])
            }
        })
        .with_settings(Duration::from_secs(30), Duration::from_secs(600))
        .with_lookup_timeout(Duration::from_secs(2));
        let lo = vec![IpAddr::from([127, 0, 0, 1])];
        assert_eq!(r.resolve("node.test").await.unwrap(), lo);
        // The resolver starts to hang. Stale addresses are answered at once (no time passes),
        // by many callers, with one lookup in the background.
        hang.store(true, SeqCst);
        tokio::time::advance(Duration::from_secs(31)).await;
        let start = Instant::now();
        for _ in 0..100 {
            assert_eq!(r.resolve("node.test").await.unwrap(), lo);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        tokio::task::yield_now().await;
        assert_eq!(
            lookups.load(SeqCst),
            2,
            "one background lookup for a hundred callers"
        );
        // The background lookup gives up after its timeout; the next stale answer starts another.
        tokio::time::advance(Duration::from_secs(3)).await;
        tokio::task::yield_now().await;
        assert_eq!(r.resolve("node.test").await.unwrap(), lo);
        tokio::task::yield_now().await;
        assert_eq!(lookups.load(SeqCst), 3);
        // A name never resolved, with the resolver hanging: an error after the lookup timeout,
        // and concurrent callers share the one lookup.
        let (a, b) = tokio::join!(r.resolve("new.test"), r.resolve("new.test"));
        let e = a.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(b.is_err());
        assert_eq!(
            lookups.load(SeqCst),
            5,
            "the second caller waited, then tried once more"
        );
    }

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
        tokio::task::yield_now().await;
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
