//! The failover loop: attempts, hedges, reading what upstreams answered, health updates,
//! broadcast of raw transactions and their hashes.

pub mod rawtx;
pub mod retry;
