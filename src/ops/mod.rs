//! Operating the proxy: background health probes and the `/status` document.

pub mod health;
pub mod status;
