//! The error taxonomy: which JSON-RPC errors an upstream returns are the client's answer
//! (deterministic: the same request fails the same way everywhere) and which are the provider's
//! trouble (fail over to another upstream).
//!
//! Rules are tried in order; the first match decides. Deterministic rules come first so that,
//! say, a provider that wraps "execution reverted" in a `-32603` still returns it unchanged.
//! An error no rule matches is deterministic: retrying an unknown error on every upstream
//! multiplies load and rarely helps.

/// What an upstream's JSON-RPC error means for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The answer for the client: return it unchanged, count nothing against the upstream.
    Deterministic,
    /// The provider's trouble: try another upstream.
    Trouble(Penalty),
}

/// What a provider-trouble error says about the upstream's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Penalty {
    /// Rate limited or out of quota: cool it down at once.
    RateLimited,
    /// The upstream cannot serve this method (or range); nothing wrong with its health.
    Unsupported,
    /// Behind, pruned, overloaded or misconfigured: counts as a (soft) failure.
    Unhealthy,
    /// It does not have the block the call names yet (it is behind, or the block is new):
    /// ask an upstream with a higher head; nothing wrong with its health.
    NotYet,
}

/// How a rule recognises an error.
#[derive(Debug, Clone, Copy)]
pub enum Match {
    /// An exact error code.
    Code(i64),
    /// A case-insensitive substring of the message.
    Message(&'static str),
}

/// One row of the taxonomy.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// How the error is recognised.
    pub matches: Match,
    /// What it means.
    pub class: Class,
    /// Who says it this way, and a real example `(code, message)` that the tests check.
    pub seen_in: &'static str,
    /// An example error this rule must classify.
    pub example: (i64, &'static str),
}

use Class::{Deterministic as D, Trouble as T};
use Match::{Code, Message as Msg};
use Penalty::{NotYet, RateLimited, Unhealthy, Unsupported};

macro_rules! rule {
    ($m:expr, $c:expr, $seen:expr, $code:expr, $msg:expr) => {
        Rule {
            matches: $m,
            class: $c,
            seen_in: $seen,
            example: ($code, $msg),
        }
    };
}

/// The taxonomy, in evaluation order.
pub static RULES: &[Rule] = &[
    // --- Deterministic: the request itself fails; every node would say the same. ---
    rule!(
        Msg("execution reverted"),
        D,
        "geth, erigon, reth, hosted",
        3,
        "execution reverted: ERC20: transfer amount exceeds balance"
    ),
    rule!(
        Msg("revert"),
        D,
        "nethermind, besu",
        -32015,
        "VM execution error: Reverted 0x08c379a0"
    ),
    // --- Not there yet: the upstream does not have the block the call names, probably because
    // it is behind; another upstream (a higher head first) may. Nothing against its health.
    // Before the `-32602` rules: anvil reports a future block as invalid params. ---
    rule!(
        Msg("header not found"),
        T(NotYet),
        "geth, erigon (block not yet known)",
        -32000,
        "header not found"
    ),
    rule!(
        Msg("unknown block"),
        T(NotYet),
        "geth, reth",
        -32000,
        "unknown block"
    ),
    rule!(
        Msg("block not found"),
        T(NotYet),
        "nethermind, besu",
        -32001,
        "Block not found"
    ),
    rule!(
        Msg("blockoutofrange"),
        T(NotYet),
        "anvil",
        -32602,
        "BlockOutOfRangeError: block height is 0 but requested was 256"
    ),
    rule!(
        Msg("block number out of range"),
        T(NotYet),
        "hosted providers",
        -32000,
        "block number out of range"
    ),
    rule!(
        Msg("invalid opcode"),
        D,
        "geth",
        -32000,
        "invalid opcode: INVALID"
    ),
    rule!(
        Msg("out of gas"),
        D,
        "geth, nethermind",
        -32000,
        "out of gas"
    ),
    rule!(
        Msg("gas required exceeds allowance"),
        D,
        "geth",
        -32000,
        "gas required exceeds allowance (30000000)"
    ),
    rule!(
        Msg("intrinsic gas too low"),
        D,
        "geth, reth",
        -32000,
        "intrinsic gas too low"
    ),
    rule!(
        Msg("exceeds block gas limit"),
        D,
        "geth",
        -32000,
        "exceeds block gas limit"
    ),
    rule!(
        Msg("nonce too low"),
        D,
        "geth, reth, hosted",
        -32000,
        "nonce too low: next nonce 7, tx nonce 5"
    ),
    rule!(Msg("nonce too high"), D, "geth", -32000, "nonce too high"),
    rule!(
        Msg("insufficient funds"),
        D,
        "geth, nethermind, besu, reth",
        -32000,
        "insufficient funds for gas * price + value"
    ),
    rule!(
        Msg("already known"),
        D,
        "geth, reth",
        -32000,
        "already known"
    ),
    rule!(
        Msg("known transaction"),
        D,
        "besu, older geth",
        -32000,
        "known transaction: 0xabc"
    ),
    rule!(Msg("alreadyknown"), D, "nethermind", -32010, "AlreadyKnown"),
    rule!(
        Msg("underpriced"),
        D,
        "geth, erigon",
        -32000,
        "replacement transaction underpriced"
    ),
    rule!(
        Msg("fee per gas less than block base fee"),
        D,
        "geth",
        -32000,
        "max fee per gas less than block base fee"
    ),
    rule!(
        Msg("less than the block's base fee"),
        D,
        "reth",
        -32003,
        "transaction's max fee per gas is less than the block's base fee"
    ),
    rule!(Msg("invalid sender"), D, "geth", -32000, "invalid sender"),
    rule!(
        Msg("invalid signature"),
        D,
        "besu, hosted",
        -32000,
        "Invalid signature"
    ),
    rule!(
        Msg("transaction type not supported"),
        D,
        "geth",
        -32000,
        "transaction type not supported"
    ),
    rule!(
        Msg("invalid argument"),
        D,
        "geth",
        -32602,
        "invalid argument 0: hex string without 0x prefix"
    ),
    rule!(
        Code(-32602),
        D,
        "EIP-1474 invalid params; all clients",
        -32602,
        "Invalid params"
    ),
    rule!(Code(3), D, "geth revert with data", 3, "execution reverted"),
    rule!(
        Code(-32003),
        D,
        "EIP-1474 transaction rejected",
        -32003,
        "Transaction rejected"
    ),
    // --- Provider trouble: limits of this provider that are not rate limits. Before the rate-limit
    // rules, because Infura sends "more than 10000 results" with the rate-limit code -32005. ---
    rule!(
        Msg("block range"),
        T(Unsupported),
        "infura, alchemy, publicnode",
        -32000,
        "eth_getLogs block range too large, max 10000"
    ),
    rule!(
        Msg("range is too large"),
        T(Unsupported),
        "ankr",
        -32000,
        "block range is too large"
    ),
    rule!(
        Msg("range too large"),
        T(Unsupported),
        "nodes and gateways capping eth_getLogs",
        -32005,
        "eth_getLogs range too large (max 2000 blocks)"
    ),
    rule!(
        Msg("range too wide"),
        T(Unsupported),
        "nodes and gateways capping eth_getLogs",
        -32000,
        "range too wide, max 5000 blocks"
    ),
    rule!(
        Msg("more than 10000 results"),
        T(Unsupported),
        "infura",
        -32005,
        "query returned more than 10000 results"
    ),
    rule!(
        Msg("response size"),
        T(Unsupported),
        "alchemy, erigon",
        -32000,
        "response size exceeded"
    ),
    rule!(
        Msg("query returned more than"),
        T(Unsupported),
        "geth-based providers with other caps",
        -32005,
        "query returned more than 20000 results. Try with this block range [0x10, 0x20]."
    ),
    rule!(
        Msg("too many logs"),
        T(Unsupported),
        "nodes capping log answers",
        -32000,
        "too many logs, narrow the range"
    ),
    // --- Provider trouble: rate limits and quotas. ---
    rule!(
        Code(-32005),
        T(RateLimited),
        "EIP-1474 limit exceeded; infura, alchemy",
        -32005,
        "daily request count exceeded, request rate limited"
    ),
    rule!(
        Code(429),
        T(RateLimited),
        "alchemy, quicknode (HTTP-style code)",
        429,
        "Your app has exceeded its compute units per second capacity"
    ),
    rule!(
        Msg("rate limit"),
        T(RateLimited),
        "infura, ankr, publicnode",
        -32000,
        "rate limit exceeded"
    ),
    rule!(
        Msg("ratelimit"),
        T(RateLimited),
        "drpc",
        -32000,
        "RateLimit exceeded"
    ),
    rule!(
        Msg("too many requests"),
        T(RateLimited),
        "cloudflare, llamarpc",
        -32000,
        "Too Many Requests"
    ),
    rule!(
        Msg("limit exceeded"),
        T(RateLimited),
        "infura, chainstack",
        -32000,
        "project ID request rate limit exceeded"
    ),
    rule!(
        Msg("capacity exceeded"),
        T(RateLimited),
        "alchemy",
        -32000,
        "compute units capacity exceeded"
    ),
    rule!(
        Msg("compute units"),
        T(RateLimited),
        "alchemy",
        -32000,
        "exceeded its compute units per second"
    ),
    rule!(
        Msg("quota"),
        T(RateLimited),
        "hosted providers",
        -32000,
        "monthly quota exhausted"
    ),
    rule!(
        Msg("credits"),
        T(RateLimited),
        "quicknode",
        -32000,
        "API credits exhausted"
    ),
    rule!(
        Msg("throttl"),
        T(RateLimited),
        "blast, hosted",
        -32000,
        "request throttled"
    ),
    // --- Provider trouble: this provider does not serve this method or range. ---
    rule!(
        Code(-32601),
        T(Unsupported),
        "all clients: method not found",
        -32601,
        "the method eth_foo does not exist/is not available"
    ),
    rule!(
        Code(-32004),
        T(Unsupported),
        "EIP-1474 method not supported",
        -32004,
        "Method not supported"
    ),
    rule!(
        Msg("not supported"),
        T(Unsupported),
        "hosted providers",
        -32000,
        "method trace_block is not supported"
    ),
    rule!(
        Msg("unsupported method"),
        T(Unsupported),
        "hosted providers",
        -32000,
        "Unsupported method: debug_traceTransaction"
    ),
    rule!(
        Msg("not available on"),
        T(Unsupported),
        "alchemy, infura",
        -32000,
        "trace_filter is not available on the free tier"
    ),
    rule!(
        Msg("not whitelisted"),
        T(Unsupported),
        "infura",
        -32000,
        "method not whitelisted"
    ),
    rule!(
        Msg("is not allowed"),
        T(Unsupported),
        "publicnode, llamarpc",
        -32000,
        "method debug_traceCall is not allowed"
    ),
    rule!(
        Msg("batch"),
        T(Unsupported),
        "geth, hosted: batch too large or unsupported",
        -32600,
        "batch too large"
    ),
    // --- Provider trouble: the node is behind, pruned or unwell. ---
    rule!(
        Msg("missing trie node"),
        T(Unhealthy),
        "geth (pruned state)",
        -32000,
        "missing trie node 1b2c (path )"
    ),
    rule!(
        Msg("historical state"),
        T(Unhealthy),
        "geth (path-based state)",
        -32000,
        "historical state not available in path scheme yet"
    ),
    rule!(
        Msg("state histories"),
        T(Unhealthy),
        "geth",
        -32000,
        "state histories haven't been fully indexed yet"
    ),
    rule!(
        Msg("pruned"),
        T(Unhealthy),
        "erigon, nethermind, reth",
        -32000,
        "state at block #123 is pruned"
    ),
    rule!(
        Msg("unknown ancestor"),
        T(Unhealthy),
        "geth",
        -32000,
        "unknown ancestor"
    ),
    rule!(
        Msg("syncing"),
        T(Unhealthy),
        "erigon, nethermind",
        -32000,
        "node is syncing"
    ),
    rule!(
        Msg("not synced"),
        T(Unhealthy),
        "hosted",
        -32000,
        "node not synced"
    ),
    rule!(
        Msg("timeout"),
        T(Unhealthy),
        "geth (execution aborted (timeout = 5s)), hosted",
        -32000,
        "execution aborted (timeout = 5s)"
    ),
    rule!(
        Msg("timed out"),
        T(Unhealthy),
        "hosted, besu",
        -32000,
        "request timed out"
    ),
    rule!(
        Msg("unauthorized"),
        T(Unhealthy),
        "infura, hosted (bad key)",
        -32000,
        "Unauthorized"
    ),
    rule!(
        Msg("invalid api key"),
        T(Unhealthy),
        "alchemy, quicknode",
        -32000,
        "Must be authenticated! invalid API key"
    ),
    rule!(
        Msg("project id"),
        T(Unhealthy),
        "infura",
        -32000,
        "invalid project id"
    ),
    rule!(
        Msg("forbidden"),
        T(Unhealthy),
        "hosted",
        -32000,
        "Forbidden"
    ),
    rule!(
        Msg("internal error"),
        T(Unhealthy),
        "hosted, besu",
        -32603,
        "Internal error"
    ),
    rule!(
        Msg("internal server error"),
        T(Unhealthy),
        "hosted gateways",
        -32000,
        "Internal server error"
    ),
    rule!(
        Msg("bad gateway"),
        T(Unhealthy),
        "hosted gateways",
        -32000,
        "Bad Gateway"
    ),
    rule!(
        Msg("service unavailable"),
        T(Unhealthy),
        "hosted gateways",
        -32000,
        "Service Unavailable"
    ),
    rule!(
        Msg("upstream"),
        T(Unhealthy),
        "gateways and other proxies",
        -32000,
        "upstream connect error"
    ),
    rule!(
        Msg("no backend"),
        T(Unhealthy),
        "proxyd",
        -32011,
        "no backend is currently healthy to serve traffic"
    ),
    rule!(
        Msg("temporarily unavailable"),
        T(Unhealthy),
        "hosted",
        -32000,
        "resource temporarily unavailable"
    ),
    rule!(
        Msg("try again"),
        T(Unhealthy),
        "hosted",
        -32000,
        "server busy, try again later"
    ),
    rule!(
        Code(-32700),
        T(Unhealthy),
        "an upstream that cannot parse detour's well-formed request",
        -32700,
        "Parse error"
    ),
    rule!(
        Code(-32603),
        T(Unhealthy),
        "JSON-RPC internal error from any client",
        -32603,
        "something broke"
    ),
    rule!(
        Code(-32002),
        T(Unhealthy),
        "EIP-1474 resource unavailable",
        -32002,
        "Resource unavailable"
    ),
];

/// How upstreams say an `eth_getLogs` range was too wide, or its answer too large (lowercase
/// substrings of the message): each is also provider trouble above, so another upstream is
/// asked first; when every one says so, the range is halved.
pub const RANGE_REJECTED: &[&str] = &[
    "block range",
    "range is too large",
    "range too large",
    "range too wide",
    "more than 10000 results",
    "query returned more than",
    "response size",
    "too many logs",
];

/// Whether an error message says an `eth_getLogs` range was too wide or its answer too large.
pub fn range_rejected(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    RANGE_REJECTED.iter().any(|w| lower.contains(w))
}

/// Wordings (lower case) of a node saying it no longer has the state a call asked about: it
/// is not an archive node (these rules are also in [`RULES`], as provider trouble).
pub const STATE_MISSING: &[&str] = &[
    "missing trie node",
    "historical state",
    "state histories",
    "pruned",
];

/// Whether an error message says the node no longer has old state.
pub fn state_missing(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    STATE_MISSING.iter().any(|w| lower.contains(w))
}

/// Classifies an upstream's JSON-RPC error by its code and message.
pub fn classify(code: i64, message: &str) -> Class {
    let lower = message.to_ascii_lowercase();
    RULES
        .iter()
        .find(|r| match r.matches {
            Match::Code(c) => c == code,
            Match::Message(m) => lower.contains(m),
        })
        .map_or(Class::Deterministic, |r| r.class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_classifies_its_own_example() {
        for (i, r) in RULES.iter().enumerate() {
            let (code, msg) = r.example;
            assert_eq!(
                classify(code, msg),
                r.class,
                "row {i} ({:?}, seen in {})",
                r.matches,
                r.seen_in
            );
            let hits = match r.matches {
                Match::Code(c) => c == code,
                Match::Message(m) => msg.to_ascii_lowercase().contains(m),
            };
            assert!(hits, "row {i}'s example does not exercise its own matcher");
        }
    }

    #[test]
    fn unknown_errors_are_deterministic() {
        assert_eq!(
            classify(-32000, "something entirely new"),
            Class::Deterministic
        );
        assert_eq!(classify(12345, ""), Class::Deterministic);
    }

    #[test]
    fn deterministic_wording_wins_over_a_trouble_code() {
        assert_eq!(classify(-32603, "execution reverted"), Class::Deterministic);
        assert_eq!(classify(-32005, "nonce too low"), Class::Deterministic);
    }

    #[test]
    fn case_is_ignored() {
        assert_eq!(
            classify(-32000, "HEADER NOT FOUND"),
            Class::Trouble(Penalty::NotYet)
        );
    }

    #[test]
    fn a_block_beyond_the_head_is_not_there_yet_in_every_wording() {
        for (code, msg) in [
            (-32000, "header not found"),
            (
                -32602,
                "BlockOutOfRangeError: block height is 0 but requested was 256",
            ),
            (-32001, "Block not found"),
            (-32000, "unknown block"),
        ] {
            assert_eq!(
                classify(code, msg),
                Class::Trouble(Penalty::NotYet),
                "{msg}"
            );
        }
        // Other invalid params stay the client's answer.
        assert_eq!(
            classify(-32602, "invalid argument 0: hex string without 0x prefix"),
            Class::Deterministic
        );
        assert_eq!(classify(-32602, "Invalid params"), Class::Deterministic);
    }
}
