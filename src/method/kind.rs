//! What a method is, for routing: answered by detour itself, a write or an unknown method
//! (retried only when the first upstream provably never saw it), or a known read.

/// How detour treats a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// `eth_chainId`: answered from the configured chain id, even during a full outage.
    ChainId,
    /// `net_version`: answered from the configured chain id.
    NetVersion,
    /// Changes state or submits something: never sent twice to upstreams that may have seen it.
    Write,
    /// A known read: may be hedged, and retried on another upstream.
    Read,
    /// A filter method detour answers from its own filters (`eth_newFilter`,
    /// `eth_newBlockFilter`, `eth_getFilterChanges`, `eth_getFilterLogs`,
    /// `eth_uninstallFilter`); a filter id detour does not hold goes upstream as
    /// [`MethodKind::Unknown`] would.
    Filter,
    /// `eth_subscribe` / `eth_unsubscribe`: answered by detour on a WebSocket connection, and
    /// with geth's "notifications not supported" over HTTP.
    Subscription,
    /// A method detour does not know (a chain's own, a new one): it may change state, so it is
    /// sent to one upstream at a time and retried only when the upstream provably never saw it,
    /// like a write, unless the chain's `methods.reads` declares it a read.
    Unknown,
}

impl MethodKind {
    /// Whether a call of this kind may be sent to a second upstream after the first may have
    /// received it (a retry after a timeout, a hedge).
    #[inline]
    pub fn may_repeat(self) -> bool {
        self == MethodKind::Read
    }
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

/// Reads named exactly (besides the [`READ_PREFIXES`] families).
pub const READ_METHODS: &[&str] = &[
    "eth_blockNumber",
    "eth_call",
    "eth_callBundle",
    "eth_estimateGas",
    "eth_gasPrice",
    "eth_maxPriorityFeePerGas",
    "eth_feeHistory",
    "eth_blobBaseFee",
    "eth_syncing",
    "eth_protocolVersion",
    "eth_createAccessList",
    "eth_simulateV1",
    "eth_accounts",
    "eth_coinbase",
    "eth_mining",
    "eth_hashrate",
    "eth_config",
];

/// Families of reads: state, blocks, logs and traces, node information.
pub const READ_PREFIXES: &[&str] = &[
    "eth_get",
    "debug_trace",
    "debug_get",
    "trace_",
    "arbtrace_",
    "txpool_",
    "ots_",
    "net_",
    "web3_",
];

/// Classifies a method name.
#[inline]
pub fn method_kind(method: &str) -> MethodKind {
    match method {
        "eth_chainId" => MethodKind::ChainId,
        "net_version" => MethodKind::NetVersion,
        // The most common reads first, by name.
        "eth_call"
        | "eth_getBalance"
        | "eth_blockNumber"
        | "eth_getTransactionReceipt"
        | "eth_getBlockByNumber"
        | "eth_getLogs"
        | "eth_estimateGas" => MethodKind::Read,
        m if m.starts_with("eth_send")
            || m.starts_with("eth_submit")
            || WRITE_METHODS.contains(&m) =>
        {
            MethodKind::Write
        }
        "eth_newFilter"
        | "eth_newBlockFilter"
        | "eth_newPendingTransactionFilter"
        | "eth_getFilterChanges"
        | "eth_getFilterLogs"
        | "eth_uninstallFilter" => MethodKind::Filter,
        "eth_subscribe" | "eth_unsubscribe" => MethodKind::Subscription,
        m if READ_METHODS.contains(&m) || READ_PREFIXES.iter().any(|p| m.starts_with(p)) => {
            MethodKind::Read
        }
        _ => MethodKind::Unknown,
    }
}

/// Calls that may legitimately take long or answer big (traces, log queries over ranges, whole
/// blocks of receipts): when one times out, the request asked much, and the upstream is not
/// held responsible for it.
pub fn heavy(method: &str) -> bool {
    method == "eth_getLogs"
        || method == "eth_getBlockReceipts"
        || method.starts_with("debug_")
        || method.starts_with("trace_")
        || method.starts_with("arbtrace_")
        || method.starts_with("ots_")
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
        for m in READ_METHODS {
            assert_eq!(method_kind(m), MethodKind::Read, "{m}");
        }
        for m in [
            "eth_getBalance",
            "eth_getProof",
            "debug_traceTransaction",
            "trace_block",
            "txpool_status",
            "net_peerCount",
            "web3_clientVersion",
        ] {
            assert_eq!(method_kind(m), MethodKind::Read, "{m}");
        }
        for m in [
            "eth_newFilter",
            "eth_newBlockFilter",
            "eth_newPendingTransactionFilter",
            "eth_getFilterChanges",
            "eth_getFilterLogs",
            "eth_uninstallFilter",
        ] {
            assert_eq!(method_kind(m), MethodKind::Filter, "{m}");
            assert!(!method_kind(m).may_repeat());
        }
        for m in [
            "zks_someWrite",
            "anvil_mine",
            "hardhat_reset",
            "evm_increaseTime",
            "personal_unlockAccount",
        ] {
            assert_eq!(method_kind(m), MethodKind::Unknown, "{m}");
            assert!(!method_kind(m).may_repeat());
        }
        assert_eq!(method_kind("eth_subscribe"), MethodKind::Subscription);
        assert_eq!(method_kind("eth_unsubscribe"), MethodKind::Subscription);
        assert!(!MethodKind::Write.may_repeat() && MethodKind::Read.may_repeat());
    }
}
