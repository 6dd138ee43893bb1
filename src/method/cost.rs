//! What a call costs at a provider, in compute units: the built-in weights, overridable per
//! method in `[compute_units]` (every upstream) and an upstream's own `compute_units` table.
//!
//! The built-in weights follow the shape of the compute-unit tables providers publish (cheap
//! lookups ~10–20, `eth_call` ~26, `eth_getLogs` ~75, receipts of a whole block and traces in
//! the hundreds, sending a transaction ~250). They are an estimate to budget with, not any
//! provider's price list: set your provider's numbers where they matter.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Weight of a method the table does not name.
pub const DEFAULT_COST: u32 = 20;

/// The built-in weight of `method`.
pub fn builtin(method: &str) -> u32 {
    match method {
        "eth_chainId"
        | "net_version"
        | "net_listening"
        | "web3_clientVersion"
        | "eth_syncing"
        | "eth_protocolVersion" => 0,
        "eth_blockNumber"
        | "eth_feeHistory"
        | "eth_maxPriorityFeePerGas"
        | "eth_uninstallFilter"
        | "eth_subscribe"
        | "eth_unsubscribe"
        | "eth_accounts" => 10,
        "eth_getTransactionReceipt"
        | "eth_getTransactionByBlockHashAndIndex"
        | "eth_getTransactionByBlockNumberAndIndex" => 15,
        "eth_getBlockByNumber" | "eth_getStorageAt" | "eth_getTransactionByHash" => 16,
        "eth_getBalance" | "eth_getCode" | "eth_gasPrice" => 19,
        "eth_getBlockByHash"
        | "eth_getProof"
        | "eth_newFilter"
        | "eth_newBlockFilter"
        | "eth_getFilterChanges"
        | "eth_newPendingTransactionFilter" => 20,
        "eth_call" | "eth_getTransactionCount" => 26,
        "eth_getLogs" | "eth_getFilterLogs" | "eth_createAccessList" => 75,
        "eth_estimateGas" => 87,
        "eth_sendRawTransaction" | "eth_sendTransaction" => 250,
        "eth_getBlockReceipts" => 500,
        m if m.starts_with("debug_trace") => 309,
        m if m.starts_with("trace_") => 75,
        _ => DEFAULT_COST,
    }
}

/// An upstream's cost table: the built-in weights under its overrides (`[compute_units]`, then
/// its own), shared by reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Costs(Option<Arc<BTreeMap<String, u32>>>);

impl Costs {
    /// The table for an upstream: `global` overrides, then `own` ones.
    pub fn new(global: &BTreeMap<String, u32>, own: &BTreeMap<String, u32>) -> Costs {
        if global.is_empty() && own.is_empty() {
            return Costs(None);
        }
        let mut merged = global.clone();
        merged.extend(own.iter().map(|(k, v)| (k.clone(), *v)));
        Costs(Some(Arc::new(merged)))
    }

    /// What one call of `method` costs.
    #[inline]
    pub fn of(&self, method: &str) -> u32 {
        match &self.0 {
            Some(table) => match table.get(method) {
                Some(&c) => c,
                None => builtin(method),
            },
            None => builtin(method),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_in_order() {
        let global = BTreeMap::from([("eth_call".to_string(), 10), ("eth_getLogs".into(), 60)]);
        let own = BTreeMap::from([("eth_getLogs".to_string(), 255)]);
        let c = Costs::new(&global, &own);
        assert_eq!(c.of("eth_call"), 10);
        assert_eq!(c.of("eth_getLogs"), 255);
        assert_eq!(c.of("eth_blockNumber"), 10);
        assert_eq!(c.of("eth_chainId"), 0);
        assert_eq!(c.of("debug_traceTransaction"), 309);
        assert_eq!(c.of("some_custom"), DEFAULT_COST);
        assert_eq!(Costs::default().of("eth_call"), 26);
    }
}
