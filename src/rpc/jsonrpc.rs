//! JSON-RPC 2.0 envelopes, kept as raw JSON.
//!
//! A client body is parsed once into [`Entry`]s that borrow from it: the `id` and `params` stay
//! raw JSON text ([`Raw`]), so ids are echoed exactly as sent (including integers above 2^53)
//! and params are never re-serialised. Upstream answers are parsed the same way, and their
//! `result`/`error` are copied into the client's response byte for byte.
//!
//! Plain bodies (nearly all) are read in one validating pass by `jsonscan`; anything it does
//! not take (escaped keys, repeated members, deep nesting, invalid JSON) is read by serde_json,
//! which decides, errors included. Both give the same answer wherever the scanner answers.
//!
//! The standard error objects of the specification (section 5.1) are built here too.

use std::borrow::Cow;
use std::io::Write as _;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::rpc::jsonscan::Scanner;

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal JSON-RPC error; detour uses it when no upstream could answer.
pub const INTERNAL_ERROR: i64 = -32603;
/// EIP-1474 "resource not found"; detour uses it for an unknown chain path.
pub const RESOURCE_NOT_FOUND: i64 = -32001;
/// EIP-1474 "limit exceeded"; detour uses it when every upstream is at its quota, or an
/// answer would exceed a configured size.
pub const LIMIT_EXCEEDED: i64 = -32005;

/// One JSON value exactly as it was received, borrowed from the body it was parsed from.
///
/// Only the parsers of this module make one from text (from text they validated), so its
/// text is always one well-formed JSON value without surrounding whitespace.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Raw<'a>(&'a str);

impl<'a> Raw<'a> {
    /// The value's JSON text.
    pub fn get(self) -> &'a str {
        self.0
    }
}

impl<'a> From<&'a RawValue> for Raw<'a> {
    fn from(v: &'a RawValue) -> Raw<'a> {
        Raw(v.get())
    }
}

impl std::fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw<'a>, D::Error> {
        <&'de RawValue>::deserialize(d).map(Raw::from)
    }
}

/// One member of a client request (a single request is a batch of one).
#[derive(Debug, Clone)]
pub enum Entry<'a> {
    /// A well-formed request or notification.
    Call(Call<'a>),
    /// Not a valid request object: answered with `-32600` and the id when it was readable.
    Invalid {
        /// The id to echo (`None` → `null`).
        id: Option<Raw<'a>>,
        /// Why the entry is invalid; sent as the error's `data`.
        reason: &'static str,
    },
}

/// A valid JSON-RPC request or notification.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// `None` for a notification; otherwise the raw id (string, number or `null`).
    pub id: Option<Raw<'a>>,
    /// The method name, unescaped.
    pub method: Cow<'a, str>,
    /// The raw params (an array or an object), if any.
    pub params: Option<Raw<'a>>,
}

/// The shape of a parsed client body.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A single request object (or a non-array value that is not one).
    Single(Entry<'a>),
    /// A non-empty batch, in request order.
    Batch(Vec<Entry<'a>>),
    /// The body is not JSON at all: answer one `-32700` with `id: null`.
    ParseError,
    /// `[]`: answer one `-32600` object, not an empty array.
    EmptyBatch,
    /// A batch longer than the configured limit (its length).
    BatchTooLong(usize),
}

/// Deserializes a present field, `null` included, as `Some` (serde would map `null` to `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Raw<'de>>, D::Error> {
    Raw::deserialize(d).map(Some)
}

/// A request object with every member kept raw, so that validation can say exactly what is wrong.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    jsonrpc: Option<Raw<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<Raw<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<Raw<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<Raw<'a>>,
}

fn first_byte(raw: Raw<'_>) -> u8 {
    // A RawValue holds one JSON value without surrounding whitespace, so it is never empty.
    raw.get().as_bytes().first().copied().unwrap_or(b' ')
}

/// Whether a raw id is of a type the specification allows: string, number or null.
fn valid_id(raw: Raw<'_>) -> bool {
    matches!(first_byte(raw), b'"' | b'-' | b'0'..=b'9' | b'n')
}

/// `body` as text, if it is UTF-8: checked 16 or 32 bytes at a time (std's check is about 5
/// times slower on the ASCII that JSON-RPC bodies are).
fn utf8(body: &[u8]) -> Option<&str> {
    simdutf8::basic::from_utf8(body).ok()
}

/// Parses a client body. `max_batch_len` bounds the number of batch members.
pub fn parse(body: &[u8], max_batch_len: usize) -> Parsed<'_> {
    // Plain bodies (nearly all) are read by the scanner; it gives up on anything unusual,
    // which serde_json then reads, errors included.
    if let Some(parsed) = utf8(body).and_then(|text| parse_plain(text, max_batch_len)) {
        return parsed;
    }
    parse_with_serde(body, max_batch_len)
}

/// [`parse`] by serde_json alone.
fn parse_with_serde(body: &[u8], max_batch_len: usize) -> Parsed<'_> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    match start.map(|i| body[i]) {
        Some(b'[') => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let items =
                serde::de::DeserializeSeed::deserialize(BatchSeed { max_batch_len }, &mut de);
            match items.and_then(|items| de.end().map(|()| items)) {
                Ok(Members::Kept(items)) if items.is_empty() => Parsed::EmptyBatch,
                Ok(Members::Kept(items)) => {
                    Parsed::Batch(items.into_iter().map(|i| parse_entry(i.into())).collect())
                }
                Ok(Members::TooMany(n)) => Parsed::BatchTooLong(n),
                Err(_) => Parsed::ParseError,
            }
        }
        // The common case, a single request object: one pass over the body.
        // UTF-8 is checked once over the whole body, so the parser need not check each raw
        // member again.
        Some(b'{') => match std::str::from_utf8(body).map(serde_json::from_str::<RawRequest<'_>>) {
            Ok(Ok(req)) => Parsed::Single(validate(req)),
            _ => parse_single_slow(body),
        },
        _ => parse_single_slow(body),
    }
}

/// A batch's members as serde_json reads them: kept up to the limit, beyond it only counted,
/// so a body of millions of tiny members costs no more memory than one at the limit.
enum Members<'a> {
    Kept(Vec<&'a RawValue>),
    TooMany(usize),
}

struct BatchSeed {
    max_batch_len: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for BatchSeed {
    type Value = Members<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Members<'de>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BatchSeed {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Members<'de>, A::Error> {
        // The size hint comes from the body's author: never trust it for capacity.
        let mut kept = Vec::new();
        while kept.len() < self.max_batch_len {
            match seq.next_element::<&'de RawValue>()? {
                Some(v) => kept.push(v),
                None => return Ok(Members::Kept(kept)),
            }
        }
        if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
            return Ok(Members::Kept(kept));
        }
        let mut n = kept.len() + 1;
        drop(kept);
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Members::TooMany(n))
    }
}

/// The members of a request object, at `{` in `s`.
fn request_members<'a>(s: &mut Scanner<'a>, depth: u32) -> Option<RawRequest<'a>> {
    let mut found = [None; 4];
    s.object(depth, &["jsonrpc", "method", "params", "id"], &mut found)?;
    let [jsonrpc, method, params, id] = found.map(|v| v.map(Raw));
    Some(RawRequest {
        jsonrpc,
        method,
        params,
        id,
    })
}

/// [`parse`] by the scanner: `None` where it gives up.
fn parse_plain(text: &str, max_batch_len: usize) -> Option<Parsed<'_>> {
    let mut s = Scanner::new(text);
    let parsed = match s.next_byte()? {
        b'{' => Parsed::Single(validate(request_members(&mut s, 0)?)),
        b'[' => {
            let mut entries = Vec::new();
            let mut n = 0usize;
            s.array(0, |s, depth| {
                n += 1;
                if n > max_batch_len {
                    // Past the limit members are only counted: memory stays bounded by the
                    // limit, not by the body.
                    s.value(depth)?;
                    return Some(());
                }
                entries.push(if s.next_byte()? == b'{' {
                    validate(request_members(s, depth)?)
                } else {
                    parse_entry(Raw(s.value(depth)?))
                });
                Some(())
            })?;
            match n {
                0 => Parsed::EmptyBatch,
                n if n > max_batch_len => Parsed::BatchTooLong(n),
                _ => Parsed::Batch(entries),
            }
        }
        _ => return None,
    };
    s.end()?;
    Some(parsed)
}

/// A single value that is not a well-formed request object: tell invalid JSON (`-32700`) from
/// valid JSON that is not a request (`-32600`).
fn parse_single_slow(body: &[u8]) -> Parsed<'_> {
    match serde_json::from_slice::<&RawValue>(body) {
        Ok(raw) => Parsed::Single(parse_entry(Raw::from(raw))),
        Err(_) => Parsed::ParseError,
    }
}

/// Validates one request object.
pub fn parse_entry(raw: Raw<'_>) -> Entry<'_> {
    if first_byte(raw) != b'{' {
        return Entry::Invalid {
            id: None,
            reason: "a request must be a JSON object",
        };
    }
    match serde_json::from_str::<RawRequest<'_>>(raw.get()) {
        Ok(req) => validate(req),
        Err(_) => Entry::Invalid {
            id: None,
            reason: "a request object must not repeat a member",
        },
    }
}

fn validate(req: RawRequest<'_>) -> Entry<'_> {
    let invalid = |id, reason| Entry::Invalid { id, reason };
    let id = match req.id {
        Some(id) if !valid_id(id) => {
            return invalid(None, "\"id\" must be a string, a number or null")
        }
        id => id,
    };
    if req.jsonrpc.map(Raw::get) != Some("\"2.0\"") {
        return invalid(id, "\"jsonrpc\" must be exactly \"2.0\"");
    }
    let method = match req.method {
        Some(m) if first_byte(m) == b'"' => match json_str(m) {
            Some(method) => method,
            None => return invalid(id, "\"method\" must be a string"),
        },
        Some(_) => return invalid(id, "\"method\" must be a string"),
        None => return invalid(id, "\"method\" is missing"),
    };
    if let Some(p) = req.params {
        if !matches!(first_byte(p), b'[' | b'{') {
            return invalid(id, "\"params\" must be an array or an object");
        }
    }
    Entry::Call(Call {
        id,
        method,
        params: req.params,
    })
}

/// A raw JSON string's content: borrowed when it has no escapes (method names never do).
fn json_str(raw: Raw<'_>) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<Cow<'_, str>>(text).ok()
}

// === Writing responses ===

const NULL_ID: &str = "null";

fn id_str(id: Option<Raw<'_>>) -> &str {
    id.map_or(NULL_ID, Raw::get)
}

/// The length of what [`write_result`] writes (for an `error`, one less).
pub fn result_len(id: Option<Raw<'_>>, result_len: usize) -> usize {
    result_len_for(id_str(id).as_bytes(), result_len)
}

/// [`result_len`] for an id given as its JSON text.
pub(crate) fn result_len_for(id: &[u8], result_len: usize) -> usize {
    br#"{"jsonrpc":"2.0","id":,"result":}"#.len() + id.len() + result_len
}

/// Appends `{"jsonrpc":"2.0","id":<id>,"result":<result>}`; `result` is copied verbatim.
pub fn write_result(out: &mut Vec<u8>, id: Option<Raw<'_>>, result: &[u8]) {
    write_result_start(out, id_str(id).as_bytes());
    out.extend_from_slice(result);
    out.push(b'}');
}

/// Appends what [`write_result`] writes before the result, for an id given as its JSON text:
/// `{"jsonrpc":"2.0","id":<id>,"result":` (the result and a `}` follow).
pub(crate) fn write_result_start(out: &mut Vec<u8>, id: &[u8]) {
    out.extend_from_slice(RESULT_HEAD);
    out.extend_from_slice(id);
    out.extend_from_slice(RESULT_MID);
}

/// What a result's envelope has before its id.
pub(crate) const RESULT_HEAD: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":";
/// What it has between its id and the result.
pub(crate) const RESULT_MID: &[u8] = b",\"result\":";

/// Appends `{"jsonrpc":"2.0","id":<id>,"error":<error>}`; `error` (an object) is copied verbatim.
pub fn write_error(out: &mut Vec<u8>, id: Option<Raw<'_>>, error: &[u8]) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id_str(id).as_bytes());
    out.extend_from_slice(b",\"error\":");
    out.extend_from_slice(error);
    out.push(b'}');
}

/// Serializes an error object `{"code":..,"message":..[,"data":..]}`; `data` is raw JSON.
pub fn error_object(code: i64, message: &str, data: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + message.len() + data.map_or(0, str::len));
    out.extend_from_slice(b"{\"code\":");
    let _ = write!(out, "{code}");
    out.extend_from_slice(b",\"message\":");
    write_json_string(&mut out, message);
    if let Some(data) = data {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data.as_bytes());
    }
    out.push(b'}');
    out
}

/// A complete error response with a standard or detour error code.
pub fn error_response(
    id: Option<Raw<'_>>,
    code: i64,
    message: &str,
    data: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::new();
    write_error(&mut out, id, &error_object(code, message, data));
    out
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    write_json_string(&mut out, s);
    // serde_json writes valid UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// The message a standard code carries, as the specification names it.
pub fn standard_message(code: i64) -> &'static str {
    match code {
        PARSE_ERROR => "Parse error",
        INVALID_REQUEST => "Invalid Request",
        METHOD_NOT_FOUND => "Method not found",
        -32602 => "Invalid params",
        INTERNAL_ERROR => "Internal error",
        _ => "Server error",
    }
}

// === Upstream side ===

/// The length of `s` as a JSON string literal.
fn json_string_len(s: &str) -> usize {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        return s.len() + 2;
    }
    let mut out = Vec::new();
    write_json_string(&mut out, s);
    out.len()
}

/// The length of what [`write_upstream_call`] writes, so the buffer can be sized exactly.
pub fn upstream_call_len(id: usize, call: &Call<'_>) -> usize {
    br#"{"jsonrpc":"2.0","id":,"method":}"#.len()
        + itoa::Buffer::new().format(id).len()
        + json_string_len(&call.method)
        + call
            .params
            .map_or(0, |p| br#","params":"#.len() + p.get().len())
}

/// Appends one upstream request `{"jsonrpc":"2.0","id":<n>,"method":..,"params":..}`.
///
/// Upstreams see detour's own small integer ids (the entry's position in the client's batch),
/// never the client's: the client's id is restored from the entry when the answer is written, so
/// an upstream that mangles large or odd ids cannot change what the client sees, and answers can
/// be matched even when an upstream reorders a batch.
pub fn write_upstream_call(out: &mut Vec<u8>, id: usize, call: &Call<'_>) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    out.extend_from_slice(b",\"method\":");
    write_json_string(out, &call.method);
    if let Some(params) = call.params {
        out.extend_from_slice(b",\"params\":");
        out.extend_from_slice(params.get().as_bytes());
    }
    out.push(b'}');
}

/// One member of an upstream's answer.
#[derive(Deserialize, Debug)]
pub struct RawResponse<'a> {
    /// The id the upstream echoed (detour's integer).
    #[serde(borrow, default, deserialize_with = "present")]
    pub id: Option<Raw<'a>>,
    /// The result, verbatim (may be `null`).
    #[serde(borrow, default, deserialize_with = "present")]
    pub result: Option<Raw<'a>>,
    /// The error object, verbatim.
    #[serde(borrow, default, deserialize_with = "present")]
    pub error: Option<Raw<'a>>,
}

/// Parses an upstream body as one response object or a batch of them.
/// `None` when the body is not JSON-RPC at all.
/// A single response is kept inline (no allocation).
pub fn parse_upstream(body: &[u8]) -> Option<smallvec::SmallVec<[RawResponse<'_>; 1]>> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    // UTF-8 is checked once over the whole body, so the parser need not check each raw
    // member (a result may be megabytes) again.
    let text = utf8(body)?;
    if let Some(list) = parse_upstream_plain(text) {
        return Some(list);
    }
    parse_upstream_with_serde(text, body[start])
}

/// [`parse_upstream`] by serde_json alone; `first` is the first byte that is not whitespace.
fn parse_upstream_with_serde(
    text: &str,
    first: u8,
) -> Option<smallvec::SmallVec<[RawResponse<'_>; 1]>> {
    if first == b'[' {
        serde_json::from_str::<Vec<RawResponse<'_>>>(text)
            .ok()
            .map(smallvec::SmallVec::from_vec)
    } else {
        serde_json::from_str::<RawResponse<'_>>(text)
            .ok()
            .map(|r| smallvec::smallvec![r])
    }
}

/// The members of a response object, at `{` in `s`.
fn response_members<'a>(s: &mut Scanner<'a>, depth: u32) -> Option<RawResponse<'a>> {
    let mut found = [None; 3];
    // The result, often megabytes of objects, is checked for structure only: it is forwarded
    // byte for byte, and a cut answer is still caught (issue 19).
    s.object_loose(depth, &["id", "result", "error"], &mut found, 1)?;
    let [id, result, error] = found.map(|v| v.map(Raw));
    Some(RawResponse { id, result, error })
}

/// [`parse_upstream`] by the scanner: `None` where it gives up.
fn parse_upstream_plain(text: &str) -> Option<smallvec::SmallVec<[RawResponse<'_>; 1]>> {
    let mut s = Scanner::new(text);
    let list = match s.next_byte()? {
        b'{' => smallvec::smallvec![response_members(&mut s, 0)?],
        b'[' => {
            let mut list = smallvec::SmallVec::new();
            s.array(0, |s, depth| {
                if s.next_byte()? != b'{' {
                    return None;
                }
                list.push(response_members(s, depth)?);
                Some(())
            })?;
            list
        }
        _ => return None,
    };
    s.end()?;
    Some(list)
}

/// The code and message of an upstream error object, for classification and logs.
#[derive(Deserialize, Debug, Default)]
pub struct ErrorFields<'a> {
    /// The error code (0 when missing or not an integer).
    #[serde(default)]
    pub code: i64,
    /// The message, unescaped.
    #[serde(borrow, default)]
    pub message: Cow<'a, str>,
    /// The error's data member, raw.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// Reads an error object's code and message; `None` when it is not an object with them.
pub fn error_fields(error: Raw<'_>) -> Option<ErrorFields<'_>> {
    if first_byte(error) != b'{' {
        return None;
    }
    serde_json::from_str(error.get()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body: &str) -> Call<'_> {
        match parse(body.as_bytes(), 10) {
            Parsed::Single(Entry::Call(c)) => c,
            other => panic!("expected a call, got {other:?}"),
        }
    }

    fn invalid(body: &str) -> (Option<String>, &'static str) {
        match parse(body.as_bytes(), 10) {
            Parsed::Single(Entry::Invalid { id, reason }) => {
                (id.map(|i| i.get().to_owned()), reason)
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn parses_request_keeping_raw_parts() {
        let c = call(
            r#" {"jsonrpc":"2.0","id":18446744073709551616123,"method":"eth_call","params":[{"to":"0x1"}, "latest"]} "#,
        );
        assert_eq!(c.id.unwrap().get(), "18446744073709551616123");
        assert_eq!(c.method, "eth_call");
        assert_eq!(c.params.unwrap().get(), r#"[{"to":"0x1"}, "latest"]"#);
    }

    #[test]
    fn null_id_is_a_request_and_missing_id_a_notification() {
        assert_eq!(
            call(r#"{"jsonrpc":"2.0","id":null,"method":"m"}"#)
                .id
                .unwrap()
                .get(),
            "null"
        );
        assert!(call(r#"{"jsonrpc":"2.0","method":"m"}"#).id.is_none());
    }

    #[test]
    fn escaped_method_is_unescaped() {
        assert_eq!(
            call(r#"{"jsonrpc":"2.0","id":1,"method":"eth_\u0063all"}"#).method,
            "eth_call"
        );
    }

    #[test]
    fn invalid_requests_say_why() {
        assert_eq!(
            invalid(r#"{"jsonrpc":"1.0","id":1,"method":"m"}"#)
                .0
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            invalid(r#"{"id":"a","method":"m"}"#).0.as_deref(),
            Some("\"a\"")
        );
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","id":1,"method":5}"#).1,
            "\"method\" must be a string"
        );
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","id":1}"#).1,
            "\"method\" is missing"
        );
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":"x"}"#).1,
            "\"params\" must be an array or an object"
        );
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","id":{},"method":"m"}"#),
            (None, "\"id\" must be a string, a number or null")
        );
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","id":[1],"method":"m"}"#).0,
            None
        );
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","id":true,"method":"m"}"#).0,
            None
        );
        assert_eq!(invalid("1").1, "a request must be a JSON object");
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"m"}"#).0,
            None
        );
    }

    #[test]
    fn body_shapes() {
        assert!(matches!(parse(b"", 10), Parsed::ParseError));
        assert!(matches!(parse(b"{\"jsonrpc\":", 10), Parsed::ParseError));
        assert!(matches!(parse(b"{} x", 10), Parsed::ParseError));
        assert!(matches!(parse(b"[1, {", 10), Parsed::ParseError));
        assert!(matches!(parse(b" [ ] ", 10), Parsed::EmptyBatch));
        assert!(matches!(parse(b"[1,2,3]", 2), Parsed::BatchTooLong(3)));
        match parse(b"[1,2,3]", 10) {
            Parsed::Batch(v) => assert!(v
                .iter()
                .all(|e| matches!(e, Entry::Invalid { id: None, .. }))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn writes_responses_verbatim() {
        let id = RawValue::from_string("\"abc\"".into()).unwrap();
        let mut out = Vec::new();
        write_result(&mut out, Some(Raw::from(&*id)), br#"{"a" : 1.50}"#);
        assert_eq!(
            out,
            br#"{"jsonrpc":"2.0","id":"abc","result":{"a" : 1.50}}"#
        );
        let e = error_response(None, INVALID_REQUEST, "Invalid \"x\"", Some("\"why\""));
        assert_eq!(
            String::from_utf8(e).unwrap(),
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid \"x\"","data":"why"}}"#
        );
    }

    #[test]
    fn written_lengths_are_known_before_writing() {
        for body in [
            r#"{"jsonrpc":"2.0","id":"client","method":"eth_x","params":{"a":1}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","method":"a\"b\u0001\u00e9","params":[]}"#,
        ] {
            let c = call(body);
            for id in [0, 7, 10, 12345] {
                let mut out = Vec::new();
                write_upstream_call(&mut out, id, &c);
                assert_eq!(out.len(), upstream_call_len(id, &c), "{body} {id}");
            }
            let mut out = Vec::new();
            write_result(&mut out, c.id, b"\"0x1\"");
            assert_eq!(out.len(), result_len(c.id, 5), "{body}");
            out.clear();
            write_error(&mut out, c.id, b"{}");
            assert_eq!(out.len() + 1, result_len(c.id, 2), "{body}");
        }
    }

    #[test]
    fn upstream_calls_use_our_ids() {
        let c = call(r#"{"jsonrpc":"2.0","id":"client","method":"eth_x","params":{"a":1}}"#);
        let mut out = Vec::new();
        write_upstream_call(&mut out, 7, &c);
        assert_eq!(
            out,
            br#"{"jsonrpc":"2.0","id":7,"method":"eth_x","params":{"a":1}}"#
        );
    }

    /// Bodies near the usual shapes, and odd ones: both parsers must read them the same.
    const BODIES: &[&str] = &[
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"to":"0x1","data":"0x2"},"latest"]}"#,
        r#" { "id" : "a\"b" , "method" : "eth_\u0063all" , "jsonrpc" : "2.0" } "#,
        r#"{"jsonrpc":"2.0","id":1,"method":"m","id":2}"#,
        r#"{"jsonrpc":"2.0","i\u0064":1,"method":"m"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"m","x":1,"x":[2]}"#,
        r#"{"jsonrpc":"2.0","id":1.5e3,"method":"m","params":{}}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":5}"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"m"}"#,
        r#"{"jsonrpc":"2.0","method":"m","params":"x"}"#,
        r#"{"jsonrpc":"2.0","id":[1],"method":"m"}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"a"}, 7, "x", {"id":2}, []]"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","id":1,"id":2,"method":"b"}]"#,
        r#"[1,2,3]"#,
        r#"[]"#,
        r#"[1,"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"m"} x"#,
        r#"{"jsonrpc":"2.0","id":01,"method":"m"}"#,
        r#""just a string""#,
        r#"null"#,
        "",
        "\u{c}{}",
        r#"{"jsonrpc":"2.0","id":1,"result":"0x1"}"#,
        r#"[{"jsonrpc":"2.0","id":1,"result":null},{"jsonrpc":"2.0","id":0,"error":{"code":-32000,"message":"m"}}]"#,
        r#"{"id":1,"result":1,"result":2}"#,
        r#"[[1,"x",null]]"#,
        r#"{"id":1,"error":{"code":1},"result":{"a":[1,2,{"b":"\n"}]}}"#,
    ];

    #[test]
    fn the_scanner_reads_bodies_as_serde_does() {
        for body in BODIES {
            for max in [1, 2, 100] {
                assert_eq!(
                    format!("{:?}", parse(body.as_bytes(), max)),
                    format!("{:?}", parse_with_serde(body.as_bytes(), max)),
                    "{body}"
                );
            }
            let first = body
                .bytes()
                .find(|b| !b.is_ascii_whitespace())
                .unwrap_or(b' ');
            let serde = if body.trim().is_empty() {
                None
            } else {
                parse_upstream_with_serde(body, first)
            };
            assert_eq!(
                format!("{:?}", parse_upstream(body.as_bytes())),
                format!("{serde:?}"),
                "{body}"
            );
        }
    }

    #[test]
    fn upstream_null_result_is_present() {
        let v = parse_upstream(br#"{"jsonrpc":"2.0","id":0,"result":null}"#).unwrap();
        assert_eq!(v[0].result.unwrap().get(), "null");
        assert!(v[0].error.is_none());
        assert!(parse_upstream(b"<html>").is_none());
        // Not UTF-8 inside the result: not an answer to pass on.
        assert!(parse_upstream(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":\"\xff\"}").is_none());
        let e = RawValue::from_string(r#"{"code":-32000,"message":"execution reverted"}"#.into())
            .unwrap();
        let f = error_fields(Raw::from(&*e)).unwrap();
        assert_eq!((f.code, f.message.as_ref()), (-32000, "execution reverted"));
    }

    #[test]
    fn an_upstream_result_cut_short_is_not_an_answer_wherever_it_is_cut() {
        let whole = r#"{"jsonrpc":"2.0","id":3,"result":{"hash":"0xab","transactions":[{"input":"0x","v":"0x1"},{"logs":[]}],"uncles":[]}}"#;
        assert!(parse_upstream(whole.as_bytes()).is_some());
        let result_at = whole.find(r#""result":"#).unwrap() + 9;
        for cut in result_at + 1..whole.len() - 1 {
            // Closed again by the envelope's own brace, or not at all: never an answer.
            for body in [whole[..cut].to_string(), format!("{}}}", &whole[..cut])] {
                assert!(parse_upstream(body.as_bytes()).is_none(), "{body}");
            }
        }
    }
}
