//! JSON-RPC as it crosses detour: envelopes kept as raw JSON, the one-pass scanner that reads
//! them, the error objects detour writes, and the taxonomy of the errors upstreams answer.

pub mod classify;
pub mod error;
pub mod jsonrpc;
pub(crate) mod jsonscan;
pub(crate) mod stream;
