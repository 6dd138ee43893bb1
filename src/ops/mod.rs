//! Operating the proxy: background health probes.

pub mod health;
