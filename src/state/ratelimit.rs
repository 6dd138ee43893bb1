//! Per-client rate limits, kept in the pool snapshot so a reload with the same quota keeps
//! each client's budget.
//!
//! Each replica enforces the limit on its own (GCRA, from the `governor` crate). With
//! `[shared]` naming a Redis the limit holds across every replica as well: requests are taken
//! from a cluster-wide budget in Redis (one atomic GCRA step, see
//! [`crate::shared::Shared::take_requests`]), a few at a time: a replica leases up to
//! [`RateLimits::lease_size`] requests per round trip and spends them locally, so a busy client
//! costs Redis one round trip per lease, not per request. Leased requests are already counted
//! in the shared budget, so the cluster never admits more than the limit; a lease left unspent
//! for [`LEASE_LIFE`] is dropped (the cluster admits slightly fewer, never more). While Redis
//! is unavailable each replica's own limit stands, as without `[shared]`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long requests leased from the shared budget may be spent.
pub const LEASE_LIFE: Duration = Duration::from_secs(1);

/// Per-client request limits, keyed by API key name or IP.
#[derive(Debug)]
pub struct RateLimits {
    quota: crate::config::RateLimitConfig,
    limiter: governor::DefaultKeyedRateLimiter<String>,
    /// Requests leased from the shared budget, per client.
    leases: Mutex<HashMap<String, Lease>>,
}

/// A client's lease from the shared budget.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Requests left to spend.
    left: u32,
    /// Until when they may be spent, or the shared budget's refusal holds.
    until: Instant,
    /// The shared budget had no room: the client is refused until `until`.
    refused: bool,
}

impl RateLimits {
    /// A limiter for `quota`.
    pub fn new(quota: crate::config::RateLimitConfig) -> RateLimits {
        let per_second =
            std::num::NonZeroU32::new(quota.per_second.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = quota
            .burst
            .and_then(std::num::NonZeroU32::new)
            .unwrap_or(per_second);
        RateLimits {
            quota,
            limiter: governor::RateLimiter::keyed(
                governor::Quota::per_second(per_second).allow_burst(burst),
            ),
            leases: Mutex::default(),
        }
    }

    /// The quota this limiter enforces (a reload keeps the limiter when it is unchanged).
    pub fn quota(&self) -> crate::config::RateLimitConfig {
        self.quota
    }

    fn burst(&self) -> u32 {
        self.quota.burst.unwrap_or(self.quota.per_second).max(1)
    }

    /// Requests taken from the shared budget per round trip: a twentieth of a second's worth,
    /// at most a quarter of the burst (so the replicas' leases cannot hold the whole burst),
    /// at least one.
    pub fn lease_size(&self) -> u32 {
        (self.quota.per_second / 20).min(self.burst() / 4).max(1)
    }

    /// `Ok` when `client` may send a request now, by this replica's own limit, else how long
    /// it should wait.
    pub fn check(&self, client: &str) -> Result<(), Duration> {
        use governor::clock::{Clock, DefaultClock};
        self.limiter
            .check_key(&client.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// `Ok` when `client` may send a request now, by this replica's own limit and, while
    /// `shared` is available, the cluster-wide one; else how long it should wait.
    pub async fn admit(
        &self,
        client: &str,
        shared: Option<&Arc<crate::shared::Shared>>,
    ) -> Result<(), Duration> {
        self.check(client)?;
        let Some(shared) = shared.filter(|s| s.available()) else {
            return Ok(());
        };
        let now = Instant::now();
        if let Some(lease) = self.lock().get_mut(client) {
            if lease.until > now {
                if lease.left > 0 {
                    lease.left -= 1;
                    return Ok(());
                }
                if lease.refused {
                    return Err(lease.until - now);
                }
            }
        }
        let taken = shared
            .take_requests(
                client,
                self.quota.per_second,
                self.burst(),
                self.lease_size(),
            )
            .await;
        let (lease, answer) = match taken {
            // Redis is unavailable or slow: this replica's own limit stands.
            None => return Ok(()),
            Some(Ok(n)) => {
                let lease = Lease {
                    left: n - 1,
                    until: now + LEASE_LIFE,
                    refused: false,
                };
                (lease, Ok(()))
            }
            Some(Err(wait)) => {
                let lease = Lease {
                    left: 0,
                    until: now + wait,
                    refused: true,
                };
                (lease, Err(wait))
            }
        };
        let mut leases = self.lock();
        match leases.get_mut(client) {
            Some(l) => *l = lease,
            None if lease.left > 0 || lease.refused => {
                leases.insert(client.to_owned(), lease);
            }
            None => {}
        }
        answer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets clients that have been quiet long enough to be back at a full burst, and
    /// leases past their time.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        let now = Instant::now();
        self.lock().retain(|_, lease| lease.until > now);
    }
}
