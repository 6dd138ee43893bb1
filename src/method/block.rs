//! Which block a call needs (the latest state, or a named block number), so lagging upstreams
//! are avoided, and which answers prove that an upstream has a block.

use serde_json::value::RawValue;

use crate::rpc::jsonrpc::{Call, Raw};
use crate::rpc::jsonscan;

/// What a call needs of an upstream's chain view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Need {
    /// Depends on the latest state (`latest`/`pending`, no block given, or no block parameter):
    /// a lagging or stale upstream would answer with old data.
    pub latest: bool,
    /// Names this block number: an upstream whose head is below it cannot answer (0: none).
    pub min_block: u64,
}

impl Need {
    /// What a set of calls needs together.
    pub fn merge(self, other: Need) -> Need {
        Need {
            latest: self.latest || other.latest,
            min_block: self.min_block.max(other.min_block),
        }
    }
}

/// Which upstreams a call about state should go to, on a chain with archive upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Archive {
    /// No preference (the chain has no upstream known to keep old state).
    #[default]
    Any,
    /// Recent state, blocks, receipts, logs: upstreams that are not archive nodes first, so
    /// archive quota is not spent on them.
    Recent,
    /// State older than the chain's `archive_depth`, or at a block hash: archive nodes first.
    Old,
}

/// Methods that read the state at a block (what a full node keeps only for recent blocks;
/// blocks, receipts and logs it keeps for good). Traces re-execute, so they need it too.
pub fn reads_state(method: &str) -> bool {
    matches!(
        method,
        "eth_getBalance"
            | "eth_getCode"
            | "eth_getStorageAt"
            | "eth_getTransactionCount"
            | "eth_call"
            | "eth_getProof"
            | "eth_estimateGas"
            | "eth_createAccessList"
    ) || method.starts_with("debug_trace")
        || method.starts_with("trace_")
}

/// Where a call's state is read (see [`Archive`]): `head` is the chain head and `depth` its
/// `archive_depth`. A trace of a transaction (no block parameter) or a block named by hash is
/// of unknown age: an archive node answers it whatever its age, so it counts as old.
pub fn archive_need(call: &Call<'_>, head: Option<u64>, depth: u64) -> Archive {
    if !reads_state(&call.method) {
        return Archive::Recent;
    }
    let Some(pos) = block_param(&call.method) else {
        // A trace of a transaction or call by hash: its age is not known.
        return match call.method.starts_with("eth_") {
            true => Archive::Recent,
            false => Archive::Old,
        };
    };
    let Some(text) = call.params.and_then(|p| param_at(p.get(), pos).flatten()) else {
        return Archive::Recent;
    };
    match tag(text) {
        Tag::Number(n) => match head {
            Some(h) if h.saturating_sub(n) > depth => Archive::Old,
            _ => Archive::Recent,
        },
        Tag::Hash => Archive::Old,
        _ => Archive::Recent,
    }
}

/// Where a method takes its block parameter (index into `params`), for methods that take one.
pub fn block_param(method: &str) -> Option<usize> {
    Some(match method {
        "eth_getBlockByNumber"
        | "eth_getBlockTransactionCountByNumber"
        | "eth_getTransactionByBlockNumberAndIndex"
        | "eth_getUncleByBlockNumberAndIndex"
        | "eth_getUncleCountByBlockNumber"
        | "eth_getBlockReceipts"
        | "trace_block"
        | "trace_replayBlockTransactions"
        | "debug_traceBlockByNumber" => 0,
        "eth_getBalance"
        | "eth_getCode"
        | "eth_getTransactionCount"
        | "eth_call"
        | "eth_estimateGas"
        | "eth_createAccessList"
        | "eth_feeHistory"
        | "debug_traceCall" => 1,
        "eth_getStorageAt" | "eth_getProof" | "trace_call" => 2,
        _ => return None,
    })
}

/// Which block a call needs. Only methods with a block parameter are looked into (and only
/// their params are parsed); every other method counts as needing the latest state.
pub fn need(call: &Call<'_>) -> Need {
    const LATEST: Need = Need {
        latest: true,
        min_block: 0,
    };
    if call.method == "eth_getLogs" || call.method == "eth_newFilter" {
        return logs_need(call.params);
    }
    let Some(pos) = block_param(&call.method) else {
        return LATEST;
    };
    let Some(params) = call.params else {
        return LATEST;
    };
    match param_at(params.get(), pos) {
        Some(Some(tag)) => tag_need(tag),
        _ => LATEST,
    }
}

/// The JSON text of element `pos` of a params array: `Some(None)` when the array is shorter,
/// `None` when the params cannot be read.
fn param_at(params: &str, pos: usize) -> Option<Option<&str>> {
    match jsonscan::element(params, pos) {
        Some(tag) => Some(tag),
        // Params the scanner gives up on (an escaped key, say): serde_json reads them.
        None => serde_json::from_str::<Vec<&RawValue>>(params)
            .ok()
            .map(|list| list.get(pos).map(|t| t.get())),
    }
}

/// A block tag, number, hash or EIP-1898 object (its JSON text).
fn tag_need(tag: &str) -> Need {
    let text = tag.trim();
    if let Some(s) = text.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return match s {
            "latest" | "pending" => Need {
                latest: true,
                min_block: 0,
            },
            // Old enough that a slightly lagging upstream has it; a hash is checked by the
            // upstream itself (an unknown hash is retried elsewhere).
            _ if s.len() > 18 => Need::default(),
            _ => match parse_quantity(s) {
                Some(n) => Need {
                    latest: false,
                    min_block: n,
                },
                None => Need::default(), // "earliest", "safe", "finalized"
            },
        };
    }
    if text.starts_with('{') {
        #[derive(serde::Deserialize)]
        struct ByNumber<'a> {
            #[serde(rename = "blockNumber", borrow)]
            block_number: Option<&'a RawValue>,
        }
        if let Ok(ByNumber {
            block_number: Some(n),
        }) = serde_json::from_str(text)
        {
            return tag_need(n.get());
        }
        return Need::default();
    }
    Need {
        latest: true,
        min_block: 0,
    }
}

fn logs_need(params: Option<Raw<'_>>) -> Need {
    #[derive(serde::Deserialize)]
    struct Filter<'a> {
        #[serde(rename = "toBlock", borrow)]
        to_block: Option<&'a RawValue>,
        #[serde(rename = "blockHash", borrow)]
        block_hash: Option<&'a RawValue>,
    }
    let filter = params
        .and_then(|p| serde_json::from_str::<Vec<&RawValue>>(p.get()).ok())
        .and_then(|l| {
            l.first()
                .and_then(|f| serde_json::from_str::<Filter<'_>>(f.get()).ok())
        });
    match filter {
        Some(Filter {
            block_hash: Some(_),
            ..
        }) => Need::default(),
        Some(Filter {
            to_block: Some(t), ..
        }) => tag_need(t.get()),
        _ => Need {
            latest: true,
            min_block: 0,
        },
    }
}

/// A block parameter, as a call names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// `"latest"`.
    Latest,
    /// `"pending"`, `"safe"` or `"finalized"`: moves on its own schedule.
    Moving,
    /// A block number (`"earliest"` is 0), also as EIP-1898's `{"blockNumber": …}`.
    Number(u64),
    /// A block hash, also as EIP-1898's `{"blockHash": …}`.
    Hash,
    /// Anything else (not a block parameter a node accepts).
    Other,
}

/// Reads a block parameter (its JSON text).
pub fn tag(text: &str) -> Tag {
    let text = text.trim();
    if let Some(s) = text.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return match s {
            "latest" => Tag::Latest,
            "pending" | "safe" | "finalized" => Tag::Moving,
            "earliest" => Tag::Number(0),
            _ if s.len() == 66 && s.starts_with("0x") => Tag::Hash,
            _ => parse_quantity(s).map_or(Tag::Other, Tag::Number),
        };
    }
    if text.starts_with('{') {
        #[derive(serde::Deserialize)]
        struct Eip1898<'a> {
            #[serde(rename = "blockNumber", borrow)]
            block_number: Option<&'a RawValue>,
            #[serde(rename = "blockHash", borrow)]
            block_hash: Option<&'a RawValue>,
        }
        return match serde_json::from_str::<Eip1898<'_>>(text) {
            Ok(Eip1898 {
                block_number: Some(n),
                block_hash: None,
            }) => match tag(n.get()) {
                t @ Tag::Number(_) => t,
                _ => Tag::Other,
            },
            Ok(Eip1898 {
                block_number: None,
                block_hash: Some(_),
            }) => Tag::Hash,
            _ => Tag::Other,
        };
    }
    Tag::Other
}

/// The block an answer names, as (number, hash): a block's own, or the block of a receipt,
/// a mined transaction or a log. `None` when the answer names none, or does not write the
/// keys compactly (nothing is learned then: callers treat it as unknown).
pub fn named_block<'r>(method: &str, result: &'r [u8]) -> Option<(u64, &'r str)> {
    let number = proven_block(method, result).or_else(|| {
        (method == "eth_getLogs")
            .then(|| quoted_after(result, b"\"blockNumber\":\""))
            .flatten()
            .and_then(parse_quantity)
    })?;
    let key: &[u8] = match method {
        "eth_getBlockByNumber" | "eth_getBlockByHash" => b"\"hash\":\"",
        _ => b"\"blockHash\":\"",
    };
    Some((number, quoted_after(result, key)?))
}

/// The string value after the first `key` (which ends with the value's opening quote).
fn quoted_after<'r>(text: &'r [u8], key: &[u8]) -> Option<&'r str> {
    let at = memchr::memmem::find(text, key)? + key.len();
    let rest = &text[at..];
    let end = memchr::memchr(b'"', rest)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Parses a JSON-RPC quantity (`0x1b4`).
pub fn parse_quantity(s: &str) -> Option<u64> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The block an answer proves its upstream has: the block of a receipt or a mined transaction,
/// the number of a block. `None` for other methods, for `null`, for a pending transaction, and
/// for a result whose key is not written compactly (nothing is learned then, nothing breaks).
pub fn proven_block(method: &str, result: &[u8]) -> Option<u64> {
    let key: &[u8] = match method {
        "eth_getTransactionReceipt"
        | "eth_getTransactionByHash"
        | "eth_getBlockReceipts"
        | "eth_getTransactionByBlockHashAndIndex"
        | "eth_getTransactionByBlockNumberAndIndex" => b"\"blockNumber\":\"",
        "eth_getBlockByNumber" | "eth_getBlockByHash" => b"\"number\":\"",
        _ => return None,
    };
    if result.first() != Some(&b'{') && result.first() != Some(&b'[') {
        return None;
    }
    // Clients write these keys near the start (geth sorts keys; a block's "number" comes
    // before its transactions), so a block's bulk is searched only when the key is absent.
    let at = memchr::memmem::find(result, key)? + key.len();
    let rest = &result[at..];
    let end = memchr::memchr(b'"', rest)?;
    parse_quantity(std::str::from_utf8(&rest[..end]).ok()?)
}

/// Methods whose `null` result, from an upstream behind the chain head, may only mean that the
/// upstream has not seen the block or transaction yet: retried on an up-to-date upstream.
pub fn null_may_mean_behind(method: &str) -> bool {
    matches!(
        method,
        "eth_getBlockByNumber"
            | "eth_getBlockByHash"
            | "eth_getTransactionByHash"
            | "eth_getTransactionReceipt"
            | "eth_getBlockReceipts"
            | "eth_getTransactionByBlockHashAndIndex"
            | "eth_getTransactionByBlockNumberAndIndex"
            | "eth_getBlockTransactionCountByHash"
            | "eth_getBlockTransactionCountByNumber"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::jsonrpc::{parse, Entry, Parsed};

    fn need_of(body: &str) -> Need {
        match parse(body.as_bytes(), 10) {
            Parsed::Single(Entry::Call(c)) => need(&c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn block_needs() {
        let latest = Need {
            latest: true,
            min_block: 0,
        };
        let at = |n| Need {
            latest: false,
            min_block: n,
        };
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#,
                latest,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{}]}"#,
                latest,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{},"latest"]}"#,
                latest,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{},"0x10"]}"#,
                at(16),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["0xab","finalized"]}"#,
                Need::default(),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x64",false]}"#,
                at(100),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_getStorageAt","params":["0xab","0x0",{"blockNumber":"0x5"}]}"#,
                at(5),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_getCode","params":["0xab","0x0000000000000000000000000000000000000000000000000000000000000001"]}"#,
                Need::default(),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_getLogs","params":[{"fromBlock":"0x1","toBlock":"0x20"}]}"#,
                at(32),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_getLogs","params":[{"fromBlock":"0x1"}]}"#,
                latest,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"eth_getLogs","params":[{"blockHash":"0xab"}]}"#,
                Need::default(),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(need_of(body), want, "{body}");
        }
        assert_eq!(parse_quantity("0x1b4"), Some(436));
        assert_eq!(parse_quantity("0x"), None);
        assert_eq!(parse_quantity("12"), None);
    }

    #[test]
    fn tags() {
        let hash = format!("\"0x{}\"", "ab".repeat(32));
        for (text, want) in [
            ("\"latest\"", Tag::Latest),
            (" \"pending\" ", Tag::Moving),
            ("\"safe\"", Tag::Moving),
            ("\"finalized\"", Tag::Moving),
            ("\"earliest\"", Tag::Number(0)),
            ("\"0x10\"", Tag::Number(16)),
            (hash.as_str(), Tag::Hash),
            ("{\"blockNumber\":\"0x5\"}", Tag::Number(5)),
            (
                &format!("{{\"blockHash\":{hash},\"requireCanonical\":true}}"),
                Tag::Hash,
            ),
            ("{\"blockNumber\":\"latest\"}", Tag::Other),
            (
                "{\"blockNumber\":\"0x5\",\"blockHash\":\"0x1\"}",
                Tag::Other,
            ),
            ("\"0xzz\"", Tag::Other),
            ("16", Tag::Other),
        ] {
            assert_eq!(tag(text), want, "{text}");
        }
    }

    #[test]
    fn answers_name_blocks() {
        let block = br#"{"hash":"0xcd","number":"0x20","parentHash":"0xef","transactions":[]}"#;
        assert_eq!(
            named_block("eth_getBlockByNumber", block),
            Some((0x20, "0xcd"))
        );
        let receipt = br#"{"blockHash":"0xab","blockNumber":"0x1b4","logs":[]}"#;
        assert_eq!(
            named_block("eth_getTransactionReceipt", receipt),
            Some((0x1b4, "0xab"))
        );
        let logs = br#"[{"address":"0x1","blockHash":"0xab","blockNumber":"0x7"}]"#;
        assert_eq!(named_block("eth_getLogs", logs), Some((7, "0xab")));
        assert_eq!(named_block("eth_getLogs", b"[]"), None);
        assert_eq!(named_block("eth_getTransactionByHash", b"null"), None);
        assert_eq!(named_block("eth_call", b"\"0x01\""), None);
    }

    #[test]
    fn answers_prove_blocks() {
        let receipt =
            br#"{"blockHash":"0xab","blockNumber":"0x1b4","logs":[{"blockNumber":"0x1b4"}]}"#;
        assert_eq!(
            proven_block("eth_getTransactionReceipt", receipt),
            Some(0x1b4)
        );
        let block = br#"{"hash":"0xcd","miner":"0x00","number":"0x20","transactions":[]}"#;
        assert_eq!(proven_block("eth_getBlockByNumber", block), Some(0x20));
        assert_eq!(proven_block("eth_getBlockByHash", block), Some(0x20));
        let pending = br#"{"blockHash":null,"blockNumber":null,"hash":"0x1"}"#;
        assert_eq!(proven_block("eth_getTransactionByHash", pending), None);
        assert_eq!(proven_block("eth_getTransactionReceipt", b"null"), None);
        assert_eq!(proven_block("eth_call", receipt), None);
        assert_eq!(
            proven_block("eth_getBlockByNumber", br#"{"number":"0xzz"}"#),
            None
        );
        assert_eq!(
            proven_block("eth_getBlockByNumber", br#"{"number":"0x1"#),
            None
        );
        let receipts = br#"[{"blockNumber":"0x7","status":"0x1"}]"#;
        assert_eq!(proven_block("eth_getBlockReceipts", receipts), Some(7));
    }
}
