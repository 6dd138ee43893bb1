//! Errors, and the one place where a failure becomes a JSON-RPC error object for a client.
//!
//! Every message built here names upstreams by their configured name only; the reasons come
//! from [`crate::client::forward::Failure`] texts, which were already passed through the upstream's
//! redaction, so no URL, key or header value can reach a client.

use std::fmt;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::rpc::jsonrpc::{self, INTERNAL_ERROR, LIMIT_EXCEEDED};

/// One failed attempt, for the client's error and the logs.
#[derive(Debug, Clone)]
pub struct AttemptNote {
    /// The upstream's configured name.
    pub upstream: std::sync::Arc<str>,
    /// What went wrong (already redacted).
    pub reason: String,
}

/// The error object for calls no upstream answered: `-32603`, a message naming each upstream
/// tried and why, and the same as structured `data`.
pub fn all_failed(notes: &[AttemptNote], timed_out: bool) -> Bytes {
    let mut message = String::from(if timed_out {
        "request timed out before any upstream answered"
    } else {
        "no upstream could answer"
    });
    if notes.is_empty() {
        message.push_str(" (no upstream was tried)");
    } else {
        message.push_str(": ");
        for (i, n) in notes.iter().enumerate() {
            if i > 0 {
                message.push_str("; ");
            }
            message.push_str(&n.upstream);
            message.push_str(": ");
            message.push_str(&n.reason);
        }
    }
    Bytes::from(jsonrpc::error_object(
        INTERNAL_ERROR,
        &message,
        Some(&attempts_data(notes)),
    ))
}

/// The error object for calls that found every upstream at its quota (`max_rps`,
/// `compute_units_per_second`) until their deadline: `-32005` (EIP-1474's "limit exceeded").
pub fn over_quota(notes: &[AttemptNote]) -> Bytes {
    let mut message = String::from("limit exceeded: every upstream is at its quota");
    for (i, n) in notes.iter().enumerate() {
        message.push_str(if i == 0 { ": " } else { "; " });
        message.push_str(&n.upstream);
        message.push_str(": ");
        message.push_str(&n.reason);
    }
    Bytes::from(jsonrpc::error_object(
        LIMIT_EXCEEDED,
        &message,
        Some(&attempts_data(notes)),
    ))
}

/// The error object for a write whose upstream failed after it may have received the request.
pub fn write_not_retried(method: &str, note: &AttemptNote) -> Bytes {
    let message = format!(
        "{} failed on upstream {} ({}) after it may have been received; not retried elsewhere, \
         so that it is not sent twice",
        method, note.upstream, note.reason
    );
    Bytes::from(jsonrpc::error_object(
        INTERNAL_ERROR,
        &message,
        Some(&attempts_data(std::slice::from_ref(note))),
    ))
}

fn attempts_data(notes: &[AttemptNote]) -> String {
    let mut data = String::from("{\"attempts\":[");
    for (i, n) in notes.iter().enumerate() {
        if i > 0 {
            data.push(',');
        }
        data.push_str("{\"upstream\":");
        data.push_str(&jsonrpc::json_string(&n.upstream));
        data.push_str(",\"error\":");
        data.push_str(&jsonrpc::json_string(&n.reason));
        data.push('}');
    }
    data.push_str("]}");
    data
}

/// Checks the params of a method that takes none (`eth_chainId`, `net_version`), as geth does:
/// absent or `[]` pass; anything else is the `-32602` error object a node would send.
pub fn no_params(params: Option<jsonrpc::Raw<'_>>) -> Result<(), Bytes> {
    let Some(p) = params else { return Ok(()) };
    let text = p.get();
    // A Raw is one well-formed JSON value: `[` … `]` with only whitespace between is empty.
    let inner = text.get(1..text.len().saturating_sub(1)).unwrap_or("");
    let message = match text.as_bytes().first() {
        Some(b'[')
            if inner
                .trim_matches(|c: char| c.is_ascii_whitespace())
                .is_empty() =>
        {
            return Ok(())
        }
        Some(b'[') => "too many arguments, want at most 0",
        _ => "non-array args",
    };
    Err(Bytes::from(jsonrpc::error_object(
        jsonrpc::INVALID_PARAMS,
        message,
        None,
    )))
}

/// A JSON-RPC error returned to an in-process caller of [`crate::Detour::request`].
#[derive(Debug, Clone)]
pub struct RpcError {
    /// The JSON-RPC error code.
    pub code: i64,
    /// The error message.
    pub message: String,
    /// The error's `data` member, raw, if any.
    pub data: Option<Box<RawValue>>,
}

impl RpcError {
    /// Reads an error object as sent on the wire.
    pub fn from_object(raw: &[u8]) -> RpcError {
        let parsed = std::str::from_utf8(raw)
            .ok()
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
            .and_then(|e| jsonrpc::error_fields(e.into()));
        match parsed {
            Some(f) => RpcError {
                code: f.code,
                message: f.message.into_owned(),
                data: f.data.map(RawValue::to_owned),
            },
            None => RpcError {
                code: INTERNAL_ERROR,
                message: format!("malformed error object: {}", String::from_utf8_lossy(raw)),
                data: None,
            },
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JSON-RPC error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_without_params_accept_only_none_or_an_empty_array() {
        let raw = |t: &'static str| {
            Some(jsonrpc::Raw::from(&*Box::leak(
                RawValue::from_string(t.into()).unwrap(),
            )))
        };
        assert!(no_params(None).is_ok());
        assert!(no_params(raw("[]")).is_ok());
        assert!(no_params(raw("[ \n ]")).is_ok());
        for bad in ["[1]", "[[[1]]]", "[null]", "{}", "{\"a\":1}", "[[]]"] {
            let e = RpcError::from_object(&no_params(raw(bad)).unwrap_err());
            assert_eq!(e.code, -32602, "{bad}");
        }
    }

    #[test]
    fn all_failed_names_each_attempt() {
        let notes = [
            AttemptNote {
                upstream: "a".into(),
                reason: "connection refused".into(),
            },
            AttemptNote {
                upstream: "b\"q".into(),
                reason: "HTTP 503".into(),
            },
        ];
        let e = RpcError::from_object(&all_failed(&notes, false));
        assert_eq!(e.code, -32603);
        assert_eq!(
            e.message,
            "no upstream could answer: a: connection refused; b\"q: HTTP 503"
        );
        let data: serde_json::Value = serde_json::from_str(e.data.unwrap().get()).unwrap();
        assert_eq!(data["attempts"][1]["upstream"], "b\"q");
    }
}
