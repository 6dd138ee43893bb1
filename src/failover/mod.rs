//! The failover loop ([`retry`]): the calls of a request go to one upstream, and whatever it
//! could not answer to the next; one [`attempt`] sends a chunk and reads the reply; [`health`]
//! turns each outcome into the upstream's live state; [`broadcast`] and [`rawtx`] handle raw
//! transactions (their hashes, "already known").

pub mod attempt;
pub mod broadcast;
pub mod getlogs;
pub mod health;
pub mod rawtx;
pub mod retry;
