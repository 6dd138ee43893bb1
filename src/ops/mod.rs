//! Operating the proxy: background health probes, the `/status` document, and where log lines
//! go.

pub mod health;
pub mod logwriter;
pub mod status;
