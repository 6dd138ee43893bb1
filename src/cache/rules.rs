//! What is cacheable, and for how long: one rule per method, each with its reason.
//!
//! Three lifetimes, from the safest:
//! - **final**: an answer about a block at or below the chain's finalized block (or, where the
//!   chain has no `finalized` tag, `finality_depth` below the head) never changes: kept until
//!   evicted for room.
//! - **canonical**: an answer that names its block (number and hash), at a block above the
//!   finalized one, is kept while that block is canonical: cached only when its hash is the
//!   tracked chain's at that height, and evicted when a reorg replaces that height (before any
//!   further answer is served from the cache).
//! - **head**: an answer about the latest state is kept until the tracked head moves (or a
//!   reorg replaces it), and only while the chain is followed.
//!
//! Never cached: errors, `null` (a block or transaction not seen yet), `pending`, `safe` and
//! `finalized` tags (they move on their own), state at a block named by hash (its height is
//! not known here), answers that depend on an upstream itself (`web3_clientVersion`,
//! `eth_syncing`, `net_peerCount`), gas estimates, writes, filters and subscriptions.

use crate::config::MethodCache;
use crate::method::block::{self, Tag};
use crate::rpc::jsonrpc::Raw;
use crate::rpc::jsonscan;

/// How a call's answer may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Not cached.
    Never,
    /// Depends on the latest state: kept until the head moves.
    Head,
    /// State at this block number, which the answer does not name: cached only once final.
    At(u64),
    /// A block at this number (or its receipts, a transaction in it): the answer names the
    /// block, so it is cached once final, or while canonical.
    BlockAt(u64),
    /// Addressed by hash (a block, a transaction, a receipt, a block's logs): the answer names
    /// its block; cached once final, or while canonical, never when `null`.
    ByHash,
}

/// Why each method's answers may be kept (the table's reasons, for the README and `/status`).
pub const REASONS: &[(&str, &str)] = &[
    ("eth_blockNumber, eth_gasPrice, eth_maxPriorityFeePerGas, eth_blobBaseFee", "head: they change only with a new block"),
    ("eth_getBalance, eth_getCode, eth_getTransactionCount, eth_getStorageAt, eth_call, eth_getProof, eth_feeHistory", "head at `latest` (or no block); final at a block number; never at a hash, `pending`, `safe`, `finalized`"),
    ("eth_getBlockByNumber, eth_getBlockReceipts, eth_getTransactionByBlockNumberAndIndex", "head at `latest`; at a number: final, or canonical (the answer names the block)"),
    ("eth_getBlockTransactionCountByNumber, eth_getUncleCountByBlockNumber, eth_getUncleByBlockNumberAndIndex, trace_block, debug_traceBlockByNumber", "head at `latest`; final at a number (the answer does not name the block)"),
    ("eth_getBlockByHash, eth_getBlockReceipts by hash, eth_getTransactionByBlockHashAndIndex, eth_getTransactionByHash, eth_getTransactionReceipt", "by hash: final, or canonical; never `null` (not mined or not seen yet)"),
    ("eth_getLogs", "a range ending at a number: final; ending at `latest`: head; by `blockHash`: final or canonical (named by its logs; no logs: not cached)"),
];

/// The rule for a call, with `policy` from `[cache.methods]` (`None`: the built-in one).
pub fn rule(method: &str, params: Option<Raw<'_>>, policy: Option<MethodCache>) -> Rule {
    let built_in = match policy {
        Some(MethodCache::Never) => return Rule::Never,
        Some(MethodCache::Head) => return Rule::Head,
        _ => built_in(method, params),
    };
    match (policy, built_in) {
        // Only what is final: the same numbers, no head and no canonical-only entries.
        (Some(MethodCache::Final), Rule::Head) => Rule::Never,
        (Some(MethodCache::Final), Rule::BlockAt(n)) => Rule::At(n),
        (_, rule) => rule,
    }
}

fn built_in(method: &str, params: Option<Raw<'_>>) -> Rule {
    match method {
        "eth_blockNumber" | "eth_gasPrice" | "eth_maxPriorityFeePerGas" | "eth_blobBaseFee" => {
            Rule::Head
        }
        "eth_getBalance"
        | "eth_getCode"
        | "eth_getTransactionCount"
        | "eth_getStorageAt"
        | "eth_call"
        | "eth_getProof"
        | "eth_feeHistory" => match param_tag(method, params) {
            Some(Tag::Latest) | None if method != "eth_feeHistory" || params.is_some() => {
                Rule::Head
            }
            Some(Tag::Number(n)) => Rule::At(n),
            _ => Rule::Never,
        },
        "eth_getBlockByNumber"
        | "eth_getBlockReceipts"
        | "eth_getTransactionByBlockNumberAndIndex" => match param_tag(method, params) {
            Some(Tag::Latest) => Rule::Head,
            Some(Tag::Number(n)) => Rule::BlockAt(n),
            Some(Tag::Hash) if method == "eth_getBlockReceipts" => Rule::ByHash,
            _ => Rule::Never,
        },
        "eth_getBlockTransactionCountByNumber"
        | "eth_getUncleCountByBlockNumber"
        | "eth_getUncleByBlockNumberAndIndex"
        | "trace_block"
        | "debug_traceBlockByNumber" => match param_tag(method, params) {
            Some(Tag::Latest) => Rule::Head,
            Some(Tag::Number(n)) => Rule::At(n),
            _ => Rule::Never,
        },
        "eth_getBlockByHash"
        | "eth_getTransactionByBlockHashAndIndex"
        | "eth_getTransactionByHash"
        | "eth_getTransactionReceipt" => match params {
            Some(_) => Rule::ByHash,
            None => Rule::Never,
        },
        "eth_getLogs" => logs_rule(params),
        _ => Rule::Never,
    }
}

/// The block parameter of a method that takes one: `None` when absent (the latest state).
fn param_tag(method: &str, params: Option<Raw<'_>>) -> Option<Tag> {
    let pos = block::block_param(method)?;
    let params = params?.get();
    if pos > 0 {
        // The block is the last parameter nearly always (`[{…}, "latest"]`): read from the
        // end, without scanning the call object before it. A string last is the block
        // parameter in every well-formed call of these methods (what follows it, when
        // anything does, is an object or an array); a malformed call gets the node's error,
        // and errors are not cached.
        if let Some(last) = trailing_string(params) {
            return Some(block::tag(last));
        }
    }
    let text = match jsonscan::element(params, pos) {
        Some(found) => found?,
        // Params the scanner gives up on: not cached.
        None => return Some(Tag::Other),
    };
    Some(block::tag(text))
}

/// The last element of a JSON array, when it is a string without escapes that follows a
/// comma (so it is not the first): `"latest"` of `[{…},"latest"]`, quotes included.
fn trailing_string(params: &str) -> Option<&str> {
    let body = params.trim_end().strip_suffix(']')?.trim_end();
    let inner = body.strip_suffix('"')?;
    let open = inner.rfind('"')?;
    let text = &body[open..];
    if text[1..text.len() - 1].contains('\\') || inner[..open].ends_with('\\') {
        return None;
    }
    inner[..open].trim_end().ends_with(',').then_some(text)
}

fn logs_rule(params: Option<Raw<'_>>) -> Rule {
    #[derive(serde::Deserialize)]
    struct Filter<'a> {
        #[serde(rename = "fromBlock", borrow)]
        from_block: Option<&'a serde_json::value::RawValue>,
        #[serde(rename = "toBlock", borrow)]
        to_block: Option<&'a serde_json::value::RawValue>,
        #[serde(rename = "blockHash", borrow)]
        block_hash: Option<&'a serde_json::value::RawValue>,
    }
    let Some(filter) = params
        .and_then(|p| jsonscan::element(p.get(), 0).flatten())
        .and_then(|f| serde_json::from_str::<Filter<'_>>(f).ok())
    else {
        return Rule::Never;
    };
    let tag_of =
        |v: Option<&serde_json::value::RawValue>| v.map_or(Tag::Latest, |v| block::tag(v.get()));
    match (
        filter.block_hash,
        tag_of(filter.from_block),
        tag_of(filter.to_block),
    ) {
        (Some(_), _, _) if filter.from_block.is_none() && filter.to_block.is_none() => Rule::ByHash,
        (Some(_), _, _) => Rule::Never,
        (None, Tag::Number(from), Tag::Number(to)) if from <= to => Rule::At(to),
        (None, Tag::Number(_) | Tag::Latest, Tag::Latest) => Rule::Head,
        _ => Rule::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::jsonrpc::{parse, Entry, Parsed};

    fn rule_of(body: &str, policy: Option<MethodCache>) -> Rule {
        match parse(body.as_bytes(), 10) {
            Parsed::Single(Entry::Call(c)) => rule(&c.method, c.params, policy),
            other => panic!("{other:?}"),
        }
    }

    /// Each row of the table, with an example.
    #[test]
    fn the_table() {
        let hash = format!("\"0x{}\"", "ab".repeat(32));
        let call = |method: &str, params: &str| {
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#)
        };
        let rows: Vec<(String, Rule)> = vec![
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#.into(),
                Rule::Head,
            ),
            (call("eth_gasPrice", "[]"), Rule::Head),
            (call("eth_getBalance", r#"["0xab","latest"]"#), Rule::Head),
            (call("eth_getBalance", r#"["0xab"]"#), Rule::Head),
            (call("eth_getBalance", r#"["0xab","0x10"]"#), Rule::At(16)),
            (
                call("eth_getBalance", r#"["0xab","earliest"]"#),
                Rule::At(0),
            ),
            (call("eth_getBalance", r#"["0xab","pending"]"#), Rule::Never),
            (
                call("eth_getBalance", r#"["0xab","finalized"]"#),
                Rule::Never,
            ),
            (
                call("eth_getBalance", &format!(r#"["0xab",{hash}]"#)),
                Rule::Never,
            ),
            (
                call("eth_call", r#"[{"to":"0xab"},{"blockNumber":"0x7"}]"#),
                Rule::At(7),
            ),
            (call("eth_call", r#"[{"to":"0xab"}]"#), Rule::Head),
            (
                call("eth_getStorageAt", r#"["0xab","0x0","0x9"]"#),
                Rule::At(9),
            ),
            (call("eth_feeHistory", r#"["0x4","latest",[]]"#), Rule::Head),
            (call("eth_feeHistory", r#"["0x4","0x20",[]]"#), Rule::At(32)),
            (
                call("eth_getBlockByNumber", r#"["latest",false]"#),
                Rule::Head,
            ),
            (
                call("eth_getBlockByNumber", r#"["0x64",true]"#),
                Rule::BlockAt(100),
            ),
            (
                call("eth_getBlockByNumber", r#"["pending",false]"#),
                Rule::Never,
            ),
            (
                call("eth_getBlockReceipts", r#"["0x64"]"#),
                Rule::BlockAt(100),
            ),
            (
                call("eth_getBlockReceipts", &format!("[{hash}]")),
                Rule::ByHash,
            ),
            (
                call("eth_getBlockTransactionCountByNumber", r#"["0x64"]"#),
                Rule::At(100),
            ),
            (call("trace_block", r#"["0x64"]"#), Rule::At(100)),
            (
                call("eth_getBlockByHash", &format!("[{hash},false]")),
                Rule::ByHash,
            ),
            (
                call("eth_getTransactionByHash", &format!("[{hash}]")),
                Rule::ByHash,
            ),
            (
                call("eth_getTransactionReceipt", &format!("[{hash}]")),
                Rule::ByHash,
            ),
            (
                call("eth_getLogs", r#"[{"fromBlock":"0x1","toBlock":"0x20"}]"#),
                Rule::At(32),
            ),
            (call("eth_getLogs", r#"[{"fromBlock":"0x1"}]"#), Rule::Head),
            (
                call("eth_getLogs", r#"[{"fromBlock":"0x20","toBlock":"0x1"}]"#),
                Rule::Never,
            ),
            (
                call("eth_getLogs", r#"[{"fromBlock":"0x1","toBlock":"safe"}]"#),
                Rule::Never,
            ),
            (
                call("eth_getLogs", &format!(r#"[{{"blockHash":{hash}}}]"#)),
                Rule::ByHash,
            ),
            (call("eth_getLogs", r#"[]"#), Rule::Never),
            (call("eth_estimateGas", r#"[{"to":"0xab"}]"#), Rule::Never),
            (call("eth_sendRawTransaction", r#"["0x00"]"#), Rule::Never),
            (call("eth_syncing", "[]"), Rule::Never),
            (call("web3_clientVersion", "[]"), Rule::Never),
            (call("eth_getFilterChanges", r#"["0x1"]"#), Rule::Never),
        ];
        for (body, want) in rows {
            assert_eq!(rule_of(&body, None), want, "{body}");
        }
    }

    #[test]
    fn the_block_is_read_from_the_end() {
        assert_eq!(
            trailing_string(r#"[{"to":"0x1"},"latest"]"#),
            Some("\"latest\"")
        );
        assert_eq!(
            trailing_string(r#"[ {"a":"b"} , "0x10" ] "#),
            Some("\"0x10\"")
        );
        assert_eq!(trailing_string(r#"["latest"]"#), None);
        assert_eq!(trailing_string(r#"[{"to":"0x1"},"latest",{}]"#), None);
        assert_eq!(trailing_string(r#"[{"d":"x\"y"},"a\"b"]"#), None);
        assert_eq!(trailing_string(r#"[{}, 5]"#), None);
        // The same tag as the scan from the start, for well-formed calls.
        for (method, params) in [
            ("eth_call", r#"[{"to":"0x1","data":"0x2"},"0x10"]"#),
            ("eth_call", r#"[{"to":"0x1"}, "latest" ]"#),
            ("eth_getStorageAt", r#"["0xab","0x0","latest"]"#),
            ("eth_getBalance", r#"["0xab","earliest"]"#),
            ("eth_getProof", r#"["0xab",["0x0"],"0x5"]"#),
        ] {
            let raw = serde_json::value::RawValue::from_string(params.into()).unwrap();
            let fast = param_tag(method, Some(Raw::from(&*raw)));
            let pos = block::block_param(method).unwrap();
            let slow = jsonscan::element(params, pos).flatten().map(block::tag);
            assert_eq!(fast, slow, "{method} {params}");
        }
    }

    #[test]
    fn policies_override_the_table() {
        let latest = r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{},"latest"]}"#;
        let at =
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x5",false]}"#;
        assert_eq!(rule_of(latest, Some(MethodCache::Never)), Rule::Never);
        assert_eq!(rule_of(latest, Some(MethodCache::Final)), Rule::Never);
        assert_eq!(rule_of(at, Some(MethodCache::Final)), Rule::At(5));
        assert_eq!(rule_of(at, Some(MethodCache::Default)), Rule::BlockAt(5));
        let own = r#"{"jsonrpc":"2.0","id":1,"method":"zks_getL1BatchNumber","params":[]}"#;
        assert_eq!(rule_of(own, None), Rule::Never);
        assert_eq!(rule_of(own, Some(MethodCache::Head)), Rule::Head);
    }
}
