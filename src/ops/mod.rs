//! Operating the proxy: background health probes, the `/status` document, and how log lines
//! are written and where they go.

pub mod health;
pub mod logline;
pub mod logwriter;
pub mod status;

/// The target of the access-log lines (`proxy::accesslog` logs them; the binary's log writer
/// holds them back and its JSON format writes them itself).
pub(crate) const ACCESS_TARGET: &str = "detour::access";
