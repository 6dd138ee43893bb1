//! The long-lived state requests read and update: each upstream's live state (latency, errors,
//! head, cool-down), the chain's head, the pool snapshot behind `ArcSwap`, and the counters
//! metrics are read from.

pub mod metrics;
pub mod pool;
pub mod quota;
pub mod ratelimit;
pub mod status;
pub mod upstream;
