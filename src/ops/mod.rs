//! Operating the proxy: background health probes, the `/status` document, and how log lines
//! are written and where they go.

pub mod health;
pub mod logline;
pub mod logwriter;
pub mod status;
