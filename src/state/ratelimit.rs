//! Per-client rate limiters, kept in the pool snapshot so a reload with the same quota keeps
//! each client's budget.

/// Per-client request limits (GCRA, from the `governor` crate), keyed by API key name or IP.
#[derive(Debug)]
pub struct RateLimits {
    quota: crate::config::RateLimitConfig,
    limiter: governor::DefaultKeyedRateLimiter<String>,
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
        }
    }

    /// The quota this limiter enforces (a reload keeps the limiter when it is unchanged).
    pub fn quota(&self) -> crate::config::RateLimitConfig {
        self.quota
    }

    /// `Ok` when `client` may send a request now, else how long it should wait.
    pub fn check(&self, client: &str) -> Result<(), std::time::Duration> {
        use governor::clock::{Clock, DefaultClock};
        self.limiter
            .check_key(&client.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets clients that have been quiet long enough to be back at a full burst.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }
}
