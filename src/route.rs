//! What a method is, for routing: answered by detour itself, a write (retried only when the
//! first upstream provably never saw it), or an ordinary read.

/// How detour treats a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// `eth_chainId`: answered from the configured chain id, even during a full outage.
    ChainId,
    /// `net_version`: answered from the configured chain id.
    NetVersion,
    /// Changes state or submits something: never sent twice to upstreams that may have seen it.
    Write,
    /// Everything else: may be retried on another upstream.
    Read,
}

/// Methods that submit transactions, bundles or work. Retrying one of these after an upstream
/// may have received it could send it twice.
pub const WRITE_METHODS: &[&str] = &[
    "eth_sendRawTransaction",
    "eth_sendTransaction",
    "eth_sendRawTransactionConditional",
    "eth_sendRawTransactionSync",
    "eth_sendPrivateTransaction",
    "eth_sendPrivateRawTransaction",
    "eth_cancelPrivateTransaction",
    "eth_sendBundle",
    "eth_sendUserOperation",
    "eth_submitWork",
    "eth_submitHashrate",
    "mev_sendBundle",
    "personal_sendTransaction",
];

/// Classifies a method name.
#[inline]
pub fn method_kind(method: &str) -> MethodKind {
    match method {
        "eth_chainId" => MethodKind::ChainId,
        "net_version" => MethodKind::NetVersion,
        m if m.starts_with("eth_send")
            || m.starts_with("eth_submit")
            || WRITE_METHODS.contains(&m) =>
        {
            MethodKind::Write
        }
        _ => MethodKind::Read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(method_kind("eth_chainId"), MethodKind::ChainId);
        assert_eq!(method_kind("net_version"), MethodKind::NetVersion);
        for m in WRITE_METHODS {
            assert_eq!(method_kind(m), MethodKind::Write, "{m}");
        }
        assert_eq!(method_kind("eth_call"), MethodKind::Read);
        assert_eq!(method_kind("eth_getBalance"), MethodKind::Read);
    }
}
