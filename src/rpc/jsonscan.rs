//! A fast scanner for the plain JSON that JSON-RPC envelopes nearly always are.
//!
//! It walks a body once, validating as it goes, and returns where the values it was asked for
//! are, as slices of the body: no visitor, no allocation. serde_json, through its derive and
//! `RawValue` machinery, costs several times as much on these bodies, a large share of a
//! proxied call (see docs/performance-history.md).
//!
//! It accepts a subset of JSON and never decides that a body is invalid: on anything it does
//! not accept, it gives up (`None`) and the caller parses the body with serde_json, which gives
//! the exact answer, errors included. What it gives up on:
//!
//! - an object key with an escape in it (a member's name must be compared unescaped);
//! - a member of interest named twice in one object (serde reports the duplicate);
//! - nesting deeper than [`MAX_DEPTH`];
//! - anything that is not well-formed JSON (control characters in strings, bad escapes, bad
//!   numbers, trailing garbage, ...).
//!
//! Where it answers, the answer is what serde_json would have given: the differential tests
//! at the bottom check that on random and hand-made bodies.
//!
//! One exception to that: [`Scanner::object_loose`] and [`Scanner::value_loose`] check an
//! array or object (an upstream's `result`) for structure only, 64 bytes at a time (see
//! `skip_container_loose`): they accept a superset of what the exact walk accepts, with the
//! same end, and reject every text cut short.
//!
//! The input is a `&str`, so UTF-8 is already checked; strings may hold any character but `"`,
//! `\` (except in valid escapes) and control characters, as RFC 8259 says.

/// Deeper nesting than this is left to serde_json (whose limit is 128).
pub(crate) const MAX_DEPTH: u32 = 64;

/// One bit for each of the 16 bytes at the start of `chunk` that is `"`, `\\` or a control
/// character (below 0x20).
#[cfg(target_arch = "x86_64")]
#[inline]
fn special_mask(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has these instructions;
    // the load reads exactly the 16 bytes of `chunk` and needs no alignment.
    unsafe {
        let (quote, odd) = string_bytes(_mm_loadu_si128(chunk.as_ptr().cast()));
        _mm_movemask_epi8(_mm_or_si128(quote, odd)) as u32
    }
}

/// The bytes of `v` that matter inside a string: `"`, and `\\` or a control character (below
/// 0x20), each as 0xff in its lane.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn string_bytes(
    v: std::arch::x86_64::__m128i,
) -> (std::arch::x86_64::__m128i, std::arch::x86_64::__m128i) {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has these instructions;
    // they work on registers only.
    unsafe {
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Below 0x20 exactly when its unsigned minimum with 0x1f is the byte itself.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        (quote, _mm_or_si128(backslash, control))
    }
}

/// One bit for each of the 16 bytes at the start of `chunk` that is `"`, `\\` or a control
/// character (below 0x20).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn special_mask(chunk: &[u8; 16]) -> u32 {
    let mut m = 0u32;
    for (k, &c) in chunk.iter().enumerate() {
        m |= u32::from((c == b'"') | (c == b'\\') | (c < 0x20)) << k;
    }
    m
}

/// Where the first `"`, `\\` or control character at or after `from` is.
pub(crate) fn find_special(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 16) {
        let m = special_mask(chunk.try_into().ok()?);
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        i += 16;
    }
    // The last few bytes of the text.
    (i..b.len()).find(|&k| matches!(b[k], b'"' | b'\\') || b[k] < 0x20)
}

pub(crate) struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(text: &'a str) -> Scanner<'a> {
        Scanner { text, at: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    /// Skips JSON whitespace.
    pub(crate) fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Whitespace, then `c`.
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.at += 1)
    }

    /// Whitespace, then the end of the text.
    pub(crate) fn end(&mut self) -> Option<()> {
        self.ws();
        (self.at == self.text.len()).then_some(())
    }

    /// The next non-whitespace byte, not consumed.
    pub(crate) fn next_byte(&mut self) -> Option<u8> {
        self.ws();
        self.peek()
    }

    /// One value, after any whitespace: its text. Arrays and objects are walked without
    /// recursion, one bit per open container on a small stack, which is what makes a
    /// multi-megabyte `result` cheap to check (issue 19).
    pub(crate) fn value(&mut self, depth: u32) -> Option<&'a str> {
        self.ws();
        let start = self.at;
        self.at = skip_value(self.bytes(), start, depth)?;
        self.text.get(start..self.at)
    }

    /// A string, at its opening quote; escapes are allowed only when `escapes` is set (then
    /// they are checked, not decoded). Returns the content between the quotes.
    fn string(&mut self, escapes: bool) -> Option<&'a str> {
        let open = self.at;
        self.at = string_end(self.bytes(), open, escapes)?;
        self.text.get(open + 1..self.at - 1)
    }

    /// An array, at `[`: `element` reads each element (after any whitespace is fine).
    pub(crate) fn array(
        &mut self,
        depth: u32,
        element: impl FnMut(&mut Scanner<'a>, u32) -> Option<()>,
    ) -> Option<()> {
        self.sequence(b'[', b']', depth, element)
    }

    /// An object, at `{`: the values of the members named in `keys` go to the same places in
    /// `found`. `None` also when one of them is named twice.
    pub(crate) fn object(
        &mut self,
        depth: u32,
        keys: &[&str],
        found: &mut [Option<&'a str>],
    ) -> Option<()> {
        self.fields(depth, keys, found, None)
    }

    /// [`Scanner::object`], where the member `keys[loose]`, when it is an array or an object,
    /// is checked for structure only (see [`skip_container_loose`]): an upstream's `result`.
    pub(crate) fn object_loose(
        &mut self,
        depth: u32,
        keys: &[&str],
        found: &mut [Option<&'a str>],
        loose: usize,
    ) -> Option<()> {
        self.fields(depth, keys, found, Some(loose))
    }

    fn fields(
        &mut self,
        depth: u32,
        keys: &[&str],
        found: &mut [Option<&'a str>],
        loose: Option<usize>,
    ) -> Option<()> {
        self.sequence(b'{', b'}', depth, |s, depth| {
            if s.next_byte()? != b'"' {
                return None;
            }
            let key = s.string(false)?;
            s.eat(b':')?;
            let k = keys.iter().position(|k| *k == key);
            let value = if k.is_some() && k == loose {
                s.value_loose(depth)?
            } else {
                s.value(depth)?
            };
            if let Some(k) = k {
                if found[k].replace(value).is_some() {
                    return None;
                }
            }
            Some(())
        })
    }

    /// [`Scanner::value`], but an array or an object is checked for structure only (see
    /// [`skip_container_loose`]).
    pub(crate) fn value_loose(&mut self, depth: u32) -> Option<&'a str> {
        self.ws();
        let start = self.at;
        self.at = match self.peek()? {
            b'{' | b'[' => skip_container_loose(self.bytes(), start, depth)?,
            _ => skip_value(self.bytes(), start, depth)?,
        };
        self.text.get(start..self.at)
    }

    /// `open`, then items separated by commas (each read by `item` one level deeper), then
    /// `close`: the shape arrays and objects share.
    fn sequence(
        &mut self,
        open: u8,
        close: u8,
        depth: u32,
        mut item: impl FnMut(&mut Scanner<'a>, u32) -> Option<()>,
    ) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(open)?;
        if self.next_byte()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self, depth + 1)?;
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                c if c == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// Whitespace from `at` on: where the next byte that is not whitespace is.
#[inline(always)]
fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(at) {
        at += 1;
    }
    at
}

/// The end of the string whose opening quote is at `open` (just past its closing quote);
/// escapes are allowed only when `escapes` is set (then they are checked, not decoded).
#[inline(always)]
fn string_end(b: &[u8], open: usize, escapes: bool) -> Option<usize> {
    let mut at = open + 1;
    loop {
        let stop = find_special(b, at)?;
        match b[stop] {
            b'"' => return Some(stop + 1),
            b'\\' if escapes => {
                // `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, or `\u` and 4 hex digits.
                at = match *b.get(stop + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => stop + 2,
                    b'u' => {
                        let hex = b.get(stop + 2..stop + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        stop + 6
                    }
                    _ => return None,
                };
            }
            // A control character, or an escape where none may be.
            _ => return None,
        }
    }
}

/// The end of the number at `at`:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn number_end(b: &[u8], mut at: usize) -> Option<usize> {
    let digits = |at: &mut usize| {
        let from = *at;
        while b.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        *at > from
    };
    if b.get(at) == Some(&b'-') {
        at += 1;
    }
    match b.get(at)? {
        b'0' => {
            at += 1;
            // A leading zero is a number on its own ("01" is not JSON).
            if b.get(at).is_some_and(u8::is_ascii_digit) {
                return None;
            }
        }
        b'1'..=b'9' => {
            digits(&mut at);
        }
        _ => return None,
    }
    if b.get(at) == Some(&b'.') {
        at += 1;
        if !digits(&mut at) {
            return None;
        }
    }
    if let Some(b'e' | b'E') = b.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = b.get(at) {
            at += 1;
        }
        if !digits(&mut at) {
            return None;
        }
    }
    Some(at)
}

/// The end of the literal `word` at `at`.
#[inline(always)]
fn literal_end(b: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    let end = at + word.len();
    (b.get(at..end)? == word).then_some(end)
}

/// After `{` or `,` in an object: the member's name and its colon; where its value starts
/// (whitespace not skipped). Names may hold escapes: nothing compares them here.
#[inline(always)]
fn member_name(b: &[u8], at: usize) -> Option<usize> {
    let at = skip_ws(b, at);
    if *b.get(at)? != b'"' {
        return None;
    }
    let at = skip_ws(b, string_end(b, at, true)?);
    (*b.get(at)? == b':').then_some(at + 1)
}

/// Checks the one JSON value at `at` (no whitespace before it) and returns where it ends:
/// what `Scanner::value` does, with no recursion. `depth` is how deep the value is; containers
/// nest at most [`MAX_DEPTH`] deep, counting from 0.
fn skip_value(b: &[u8], mut at: usize, depth: u32) -> Option<usize> {
    // Open containers, innermost in bit 0: 1 for an object, 0 for an array. MAX_DEPTH is 64,
    // so they fit in one word.
    let mut stack: u64 = 0;
    let mut open: u32 = 0;
    'value: loop {
        // A value starts at `at`.
        match *b.get(at)? {
            b'"' => at = string_end(b, at, true)?,
            c @ (b'{' | b'[') => {
                if depth + open >= MAX_DEPTH {
                    return None;
                }
                let object = c == b'{';
                let inside = skip_ws(b, at + 1);
                if *b.get(inside)? == c + 2 {
                    // `{}` or `[]` (`}` and `]` are two past `{` and `[` in ASCII).
                    at = inside + 1;
                } else {
                    stack = (stack << 1) | u64::from(object);
                    open += 1;
                    at = if object {
                        skip_ws(b, member_name(b, inside)?)
                    } else {
                        inside
                    };
                    continue 'value;
                }
            }
            b't' => at = literal_end(b, at, b"true")?,
            b'f' => at = literal_end(b, at, b"false")?,
            b'n' => at = literal_end(b, at, b"null")?,
            b'-' | b'0'..=b'9' => at = number_end(b, at)?,
            _ => return None,
        }
        // A value ended at `at`: a comma and the next one, or the end of containers.
        while open > 0 {
            at = skip_ws(b, at);
            let object = stack & 1 == 1;
            match *b.get(at)? {
                b',' => {
                    at = skip_ws(
                        b,
                        if object {
                            member_name(b, at + 1)?
                        } else {
                            at + 1
                        },
                    );
                    continue 'value;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            at += 1;
            stack >>= 1;
            open -= 1;
        }
        return Some(at);
    }
}

/// Where the array or object at `at` ends, checked for structure only: UTF-8 (already, as
/// `b` is a `&str`'s bytes), strings closed and free of control characters, brackets balanced
/// and matched, nesting at most [`MAX_DEPTH`] deep counting from `depth`. What sits between
/// the strings and brackets (commas, colons, numbers, literals) is not checked. Meant for an
/// upstream's `result` (issue 19): the bytes are forwarded as they came, and a truncated or
/// cut answer is still caught (a proper prefix of a container never closes it). 64 bytes are
/// classified at a time (with AVX2 and carry-less multiplication where the CPU has them, with
/// SSE2 otherwise); a value with a backslash inside a string (an escape) is handed to
/// [`skip_value`], which checks escapes exactly.
#[cfg(target_arch = "x86_64")]
fn skip_container_loose(b: &[u8], start: usize, depth: u32) -> Option<usize> {
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("pclmulqdq") {
        // SAFETY: the CPU has both features.
        return unsafe { skip_container_loose_avx2(b, start, depth) };
    }
    skip_container_loose_with(b, start, depth, classify_sse2, prefix_xor_shifts)
}

/// [`skip_container_loose`] with 32-byte registers and one carry-less multiplication for the
/// string mask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,pclmulqdq")]
fn skip_container_loose_avx2(b: &[u8], start: usize, depth: u32) -> Option<usize> {
    skip_container_loose_with(
        b,
        start,
        depth,
        // Closures share this function's target features.
        |block| classify_avx2(block),
        |quote| prefix_xor_clmul(quote),
    )
}

/// A 64-byte block's bitmasks, one bit per byte: quotes; backslashes and control characters;
/// brackets (`[`, `]`, `{`, `}`).
#[cfg(target_arch = "x86_64")]
type Classes = (u64, u64, u64);

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn classify_sse2(block: &[u8; 64]) -> Classes {
    use std::arch::x86_64::*;
    let (mut quote, mut odd, mut bracket) = (0u64, 0u64, 0u64);
    for k in 0..4 {
        // SAFETY: SSE2 is part of the x86_64 baseline; the load reads 16 bytes inside
        // `block` and needs no alignment.
        let (q, o, br) = unsafe {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * k).cast());
            let (q, o) = string_bytes(v);
            // `[` and `{`, `]` and `}` differ only in bit 0x20.
            let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
            let br = _mm_or_si128(
                _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'{' as i8)),
                _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'}' as i8)),
            );
            (
                _mm_movemask_epi8(q) as u32 as u64,
                _mm_movemask_epi8(o) as u32 as u64,
                _mm_movemask_epi8(br) as u32 as u64,
            )
        };
        quote |= q << (16 * k);
        odd |= o << (16 * k);
        bracket |= br << (16 * k);
    }
    (quote, odd, bracket)
}

/// [`classify_sse2`] 32 bytes at a time: [`classify_stream_avx2`] without its last mask
/// (which, unused, is not computed once inlined).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn classify_avx2(block: &[u8; 64]) -> Classes {
    let (quote, odd, bracket, _) = classify_stream_avx2(block);
    (quote, odd, bracket)
}

/// The bytes that may stand between JSON's strings: whitespace, the quote, brackets, commas,
/// colons, and what numbers and the literals `true`, `false` and `null` are spelled with.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const BETWEEN_STRINGS: &[u8] = b" \t\n\r\"[]{},:0123456789-+.eEaflnrstu";

/// Nibble tables for a byte's membership in [`BETWEEN_STRINGS`]: a byte is in the set exactly
/// when `LOW[byte & 15] & HIGH[byte >> 4]` is not zero (each high nibble that occurs has a bit
/// of its own).
#[cfg(target_arch = "x86_64")]
const fn between_strings_tables() -> ([u8; 16], [u8; 16]) {
    let (mut low, mut high) = ([0u8; 16], [0u8; 16]);
    let mut next_bit = 0;
    let mut k = 0;
    while k < BETWEEN_STRINGS.len() {
        let c = BETWEEN_STRINGS[k];
        let h = (c >> 4) as usize;
        if high[h] == 0 {
            high[h] = 1 << next_bit;
            next_bit += 1;
        }
        low[(c & 15) as usize] |= high[h];
        k += 1;
    }
    (low, high)
}

#[cfg(target_arch = "x86_64")]
const BETWEEN_STRINGS_TABLES: ([u8; 16], [u8; 16]) = between_strings_tables();

/// A 64-byte block's bitmasks for the streamed-result check (`rpc::stream`), one bit per
/// byte: quotes; backslashes and control characters; brackets; bytes not in
/// [`BETWEEN_STRINGS`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn classify_stream_avx2(block: &[u8; 64]) -> (u64, u64, u64, u64) {
    use std::arch::x86_64::*;
    let (low, high) = BETWEEN_STRINGS_TABLES;
    // SAFETY: each load reads 16 bytes inside a 16-byte array and needs no alignment.
    let (low, high) = unsafe {
        (
            _mm256_broadcastsi128_si256(_mm_loadu_si128(low.as_ptr().cast())),
            _mm256_broadcastsi128_si256(_mm_loadu_si128(high.as_ptr().cast())),
        )
    };
    let nibble = _mm256_set1_epi8(0x0f);
    let (mut quote, mut odd, mut bracket, mut foreign) = (0u64, 0u64, 0u64, 0u64);
    for k in 0..2 {
        // SAFETY: the load reads 32 bytes inside `block` and needs no alignment.
        let v = unsafe { _mm256_loadu_si256(block.as_ptr().add(32 * k).cast()) };
        let q = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
        let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
        let control = _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v);
        let folded = _mm256_or_si256(v, _mm256_set1_epi8(0x20));
        let br = _mm256_or_si256(
            _mm256_cmpeq_epi8(folded, _mm256_set1_epi8(b'{' as i8)),
            _mm256_cmpeq_epi8(folded, _mm256_set1_epi8(b'}' as i8)),
        );
        let lo = _mm256_shuffle_epi8(low, _mm256_and_si256(v, nibble));
        let hi = _mm256_shuffle_epi8(high, _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble));
        let outside = _mm256_cmpeq_epi8(_mm256_and_si256(lo, hi), _mm256_setzero_si256());
        quote |= (_mm256_movemask_epi8(q) as u32 as u64) << (32 * k);
        odd |=
            (_mm256_movemask_epi8(_mm256_or_si256(backslash, control)) as u32 as u64) << (32 * k);
        bracket |= (_mm256_movemask_epi8(br) as u32 as u64) << (32 * k);
        foreign |= (_mm256_movemask_epi8(outside) as u32 as u64) << (32 * k);
    }
    (quote, odd, bracket, foreign)
}

/// Each bit the XOR of itself and every bit below it (a quote mask to an inside-string mask).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefix_xor_shifts(mut m: u64) -> u64 {
    for s in [1, 2, 4, 8, 16, 32] {
        m ^= m << s;
    }
    m
}

/// [`prefix_xor_shifts`] in one instruction: a carry-less multiplication by all ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq")]
#[inline]
pub(crate) fn prefix_xor_clmul(m: u64) -> u64 {
    use std::arch::x86_64::*;
    let product = _mm_clmulepi64_si128(_mm_set_epi64x(0, m as i64), _mm_set1_epi8(-1), 0);
    _mm_cvtsi128_si64(product) as u64
}

/// The scan of [`skip_container_loose`], with the block classification and the prefix XOR
/// given (inlined into each caller, so each gets its own instructions).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn skip_container_loose_with(
    b: &[u8],
    start: usize,
    depth: u32,
    classify: impl Fn(&[u8; 64]) -> Classes,
    prefix_xor: impl Fn(u64) -> u64,
) -> Option<usize> {
    // Open containers, innermost in bit 0: 1 for an object, 0 for an array.
    let mut stack: u64 = 0;
    let mut open: u32 = 0;
    // All ones when the previous block ended inside a string.
    let mut carry: u64 = 0;
    let mut i = start;
    let mut tail = [b' '; 64];
    while i < b.len() {
        let block: &[u8; 64] = match b.get(i..i + 64) {
            Some(s) => s.try_into().ok()?,
            None => {
                // The last few bytes, padded with spaces (which are nothing to this scan).
                let rest = &b[i..];
                tail[..rest.len()].copy_from_slice(rest);
                &tail
            }
        };
        let (quote, odd, bracket) = classify(block);
        // Inside a string: from an opening quote up to (not including) its closing one.
        let inside = prefix_xor(quote) ^ carry;
        if odd & inside != 0 {
            // An escape (the quotes after it may not be what they seem) or a control
            // character in a string: the exact walk decides.
            return skip_value(b, start, depth);
        }
        let mut brackets = bracket & !inside;
        while brackets != 0 {
            let at = i + brackets.trailing_zeros() as usize;
            brackets &= brackets - 1;
            match b[at] {
                c @ (b'{' | b'[') => {
                    if depth + open >= MAX_DEPTH {
                        return None;
                    }
                    stack = (stack << 1) | u64::from(c == b'{');
                    open += 1;
                }
                c => {
                    if open == 0 || (stack & 1 == 1) != (c == b'}') {
                        return None;
                    }
                    stack >>= 1;
                    open -= 1;
                    if open == 0 {
                        return Some(at + 1);
                    }
                }
            }
        }
        carry = 0u64.wrapping_sub(inside >> 63);
        i += 64;
    }
    None
}

/// Where the array or object at `at` ends; elsewhere than on x86_64, checked exactly.
#[cfg(not(target_arch = "x86_64"))]
fn skip_container_loose(b: &[u8], start: usize, depth: u32) -> Option<usize> {
    skip_value(b, start, depth)
}

/// The members named in `keys` of the object that is all of `text` (but whitespace).
#[cfg(test)]
fn members<'a, const N: usize>(text: &'a str, keys: &[&str; N]) -> Option<[Option<&'a str>; N]> {
    let mut s = Scanner::new(text);
    let mut found = [None; N];
    s.object(0, keys, &mut found)?;
    s.end()?;
    Some(found)
}

/// Element `n` of the array that is all of `text` (but whitespace); `Some(None)` when the
/// array is shorter.
pub(crate) fn element(text: &str, n: usize) -> Option<Option<&str>> {
    let mut s = Scanner::new(text);
    let (mut i, mut hit) = (0, None);
    s.array(0, |s, d| {
        let v = s.value(d)?;
        if i == n {
            hit = Some(v);
        }
        i += 1;
        Some(())
    })?;
    s.end()?;
    Some(hit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// serde_json's view of a whole text as one value.
    fn serde_value(text: &str) -> Option<&str> {
        serde_json::from_str::<&RawValue>(text)
            .ok()
            .map(RawValue::get)
    }

    /// One value read by `read`, then only whitespace.
    fn whole<'a>(
        text: &'a str,
        read: fn(&mut Scanner<'a>, u32) -> Option<&'a str>,
    ) -> Option<&'a str> {
        let mut s = Scanner::new(text);
        let v = read(&mut s, 0)?;
        s.end()?;
        Some(v)
    }

    /// The scanner's view: one value, then only whitespace.
    fn scan_value(text: &str) -> Option<&str> {
        whole(text, Scanner::value)
    }

    #[test]
    fn accepts_plain_json_as_serde_does() {
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"to":"0xa0b8","data":"0x06fdde03"},"latest"]}"#,
            r#" [1, -2.5e+3, 0, -0, 0.25, 1E9, true, false, null, "", "a\"b\\c\/\b\f\n\r\t\u00e9", {}, []] "#,
            r#"{"a":{"b":{"c":[[[]]]}},"":"","é":"ü ✓"}"#,
            "\"0x0000000000000000000000000000000000000000000000000000000000000020000000000000000000\"",
            "\"a long string with an escape \\u1234 past the first 16-byte chunk\"",
            "  7  ",
        ] {
            assert_eq!(scan_value(text), serde_value(text), "{text}");
            assert!(scan_value(text).is_some(), "{text}");
        }
    }

    #[test]
    fn gives_up_on_what_is_not_json() {
        for text in [
            "",
            " ",
            "{",
            "[1,]",
            "[,1]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "+1",
            "tru",
            "nul",
            "\"abc",
            "\"a\u{1}b\"",
            "\"a\\xb\"",
            "\"\\u12G4\"",
            "[1 2]",
            "{} {}",
            "\"long string with a control char \u{7} in it, past the threshold\"",
            "\"unterminated long string, past the threshold, no quote",
        ] {
            assert_eq!(scan_value(text), None, "{text:?}");
        }
    }

    #[test]
    fn quotes_escapes_and_control_characters_are_found_at_every_offset() {
        // Around and across the 16-byte chunks, and in the tail after the last full chunk.
        for n in 0..50 {
            let plain = "x".repeat(n);
            for after in ["", " ", " ".repeat(20).as_str()] {
                let ok = format!("[\"{plain}\"{after}]");
                assert_eq!(scan_value(&ok), serde_value(&ok), "{ok:?}");
                assert!(scan_value(&ok).is_some(), "{ok:?}");
                let escaped = format!("[\"{plain}\\\"{plain}\\u00e9\"{after}]");
                assert_eq!(scan_value(&escaped), serde_value(&escaped), "{escaped:?}");
                assert!(scan_value(&escaped).is_some(), "{escaped:?}");
                let control = format!("[\"{plain}\u{1f}\"{after}]");
                assert_eq!(scan_value(&control), None, "{control:?}");
                let unterminated = format!("[\"{plain}{after}");
                assert_eq!(scan_value(&unterminated), None, "{unterminated:?}");
            }
        }
    }

    #[test]
    fn gives_up_on_escaped_keys_duplicates_and_deep_nesting() {
        assert_eq!(members(r#"{"i\u0064":1}"#, &["id"]), None);
        assert_eq!(members(r#"{"id":1,"id":2}"#, &["id"]), None);
        // A repeated member nobody asked for is not the scanner's business (serde ignores it).
        assert_eq!(
            members(r#"{"x":1,"x":2,"id":3}"#, &["id"]),
            Some([Some("3")])
        );
        let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
        assert_eq!(scan_value(&deep), None);
        assert!(serde_value(&deep).is_some());
        let shallow = format!("{}{}", "[".repeat(60), "]".repeat(60));
        assert_eq!(scan_value(&shallow), serde_value(&shallow));
    }

    /// The structural check's view: one value, then only whitespace.
    fn loose_value(text: &str) -> Option<&str> {
        // Both ways of classifying blocks agree wherever a container starts (the check itself
        // takes AVX2 where the CPU has it, as this machine's likely does).
        #[cfg(target_arch = "x86_64")]
        {
            let b = text.as_bytes();
            let start = b
                .iter()
                .position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'));
            if let Some(at) = start.filter(|&at| matches!(b[at], b'[' | b'{')) {
                assert_eq!(
                    skip_container_loose_with(b, at, 0, classify_sse2, prefix_xor_shifts),
                    skip_container_loose(b, at, 0),
                    "{text:?}"
                );
            }
        }
        whole(text, Scanner::value_loose)
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_string_mask_is_the_same_by_shifts_and_by_carry_less_multiplication() {
        if !std::is_x86_feature_detected!("pclmulqdq") {
            eprintln!("skipped: this CPU has no PCLMULQDQ (the SSE2 path is the one used)");
            return;
        }
        let mut m: u64 = 0x9e37_79b9_7f4a_7c15;
        for fixed in [
            0,
            1,
            u64::MAX,
            1 << 63,
            (1 << 63) | 1,
            0x0f0f_0000_ffff_0001,
        ] {
            // SAFETY: the CPU has PCLMULQDQ (checked above).
            assert_eq!(unsafe { prefix_xor_clmul(fixed) }, prefix_xor_shifts(fixed));
        }
        for _ in 0..10_000 {
            m ^= m << 13;
            m ^= m >> 7;
            m ^= m << 17;
            // SAFETY: as above.
            assert_eq!(
                unsafe { prefix_xor_clmul(m) },
                prefix_xor_shifts(m),
                "{m:#x}"
            );
        }
    }

    #[test]
    fn the_structural_check_catches_cut_and_unbalanced_answers_at_every_offset() {
        // Strings, brackets in strings, escapes and control characters before, across and
        // after the 64-byte blocks, and in the padded tail.
        for n in 0..140 {
            let pad = "x".repeat(n);
            let ok = format!(r#"{{"a":"{pad}","b":["]","}}{{",{{"c":[1,2,{{}}]}}],"d":"{pad}"}}"#);
            assert_eq!(loose_value(&ok), serde_value(&ok), "{ok:?}");
            assert!(loose_value(&ok).is_some(), "{ok:?}");
            for cut in 1..ok.len() {
                assert_eq!(loose_value(&ok[..cut]), None, "{:?}", &ok[..cut]);
            }
            let escaped = format!(r#"[{{"a":"{pad}\"]\\","b":"\u00e9"}}]"#);
            assert_eq!(loose_value(&escaped), serde_value(&escaped), "{escaped:?}");
            assert!(loose_value(&escaped).is_some(), "{escaped:?}");
            for bad in [
                format!("[\"{pad}\u{1}\"]"),
                format!("[\"{pad}\\q\"]"),
                format!("[{{\"{pad}\":1]}}"),
                format!("{{\"{pad}\":[1}}]"),
                format!("[[\"{pad}\"]"),
                format!("[\"{pad}]"),
            ] {
                assert_eq!(loose_value(&bad), None, "{bad:?}");
            }
        }
        let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
        assert_eq!(loose_value(&deep), None);
        let shallow = format!("{}{}", "[".repeat(60), "]".repeat(60));
        assert_eq!(loose_value(&shallow), serde_value(&shallow));
        // What it does not check: the grammar between strings and brackets.
        assert_eq!(loose_value("[1 2]"), Some("[1 2]"));
        assert_eq!(scan_value("[1 2]"), None);
        // Scalars are checked exactly.
        assert_eq!(loose_value("tru"), None);
        assert_eq!(loose_value(" \"0x1\" "), Some("\"0x1\""));
    }

    #[test]
    fn an_upstream_result_is_checked_for_structure_and_the_rest_exactly() {
        let mut found = [None; 2];
        let text = r#"{"id":1,"result":{"a" "b"}}"#;
        Scanner::new(text)
            .object_loose(0, &["id", "result"], &mut found, 1)
            .unwrap();
        assert_eq!(found, [Some("1"), Some(r#"{"a" "b"}"#)]);
        let text = r#"{"id":1 2,"result":{}}"#;
        assert_eq!(
            Scanner::new(text).object_loose(0, &["id", "result"], &mut found, 1),
            None
        );
    }

    #[test]
    fn members_and_elements() {
        let m = members(
            r#" { "method" : "eth_call" , "params" : [ 1 , {"a":[]} ] , "id" : "x" } "#,
            &["id", "method", "params", "jsonrpc"],
        );
        assert_eq!(
            m,
            Some([
                Some("\"x\""),
                Some("\"eth_call\""),
                Some("[ 1 , {\"a\":[]} ]"),
                None
            ])
        );
        assert_eq!(
            element(r#"[{"to":"0x1"}, "latest"]"#, 1),
            Some(Some("\"latest\""))
        );
        assert_eq!(element("[1]", 1), Some(None));
        assert_eq!(element("[]", 0), Some(None));
        assert_eq!(element("{}", 0), None);
    }

    mod differential {
        use super::*;
        use proptest::prelude::*;

        /// Text that is often JSON and often nearly JSON: built from JSON's own pieces.
        fn jsonish() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("{".to_string()),
                Just("}".to_string()),
                Just("[".to_string()),
                Just("]".to_string()),
                Just(",".to_string()),
                Just(":".to_string()),
                Just(" ".to_string()),
                Just("\"id\"".to_string()),
                Just("\"a\\\"b\"".to_string()),
                Just("\"\\u00e9\"".to_string()),
                Just("\"\\q\"".to_string()),
                Just("\"é\"".to_string()),
                Just("\"0x0123456789abcdef0123456789abcdef\"".to_string()),
                Just("true".to_string()),
                Just("null".to_string()),
                Just("-0.5e3".to_string()),
                Just("01".to_string()),
                Just("\"".to_string()),
                "[0-9]{1,3}".prop_map(|s| s),
                "[ -~]{0,3}".prop_map(|s| s),
            ];
            proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
        }

        /// A well-formed value, to make sure agreement is not only on rejections.
        fn value() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                Just("null".to_string()),
                Just("true".to_string()),
                "-?(0|[1-9][0-9]{0,5})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?",
                "\"([ -!#-\\[\\]-~é]|\\\\[nrt\"\\\\/]|\\\\u[0-9a-f]{4}){0,40}\"",
            ];
            leaf.prop_recursive(5, 48, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6)
                        .prop_map(|v| format!("[{}]", v.join(" , "))),
                    proptest::collection::vec(("[a-z]{0,3}", inner), 0..6).prop_map(|v| {
                        let m: Vec<String> =
                            v.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                        format!("{{ {} }}", m.join(","))
                    }),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn where_the_scanner_answers_serde_agrees(text in jsonish()) {
                if let Some(v) = scan_value(&text) {
                    prop_assert_eq!(Some(v), serde_value(&text));
                }
            }

            #[test]
            fn where_the_exact_walk_answers_the_structural_check_agrees(text in jsonish()) {
                if let Some(v) = scan_value(&text) {
                    prop_assert_eq!(Some(v), loose_value(&text));
                }
            }

            #[test]
            fn well_formed_values_pass_the_structural_check_and_no_cut_one_does(text in value()) {
                prop_assert_eq!(loose_value(&text), serde_value(&text));
                if text.starts_with(['[', '{']) {
                    for cut in 1..text.len() {
                        if text.is_char_boundary(cut) {
                            prop_assert_eq!(loose_value(&text[..cut]), None);
                        }
                    }
                }
            }

            #[test]
            fn well_formed_values_are_scanned_as_serde_reads_them(text in value()) {
                prop_assert_eq!(scan_value(&text), serde_value(&text));
                prop_assert!(scan_value(&text).is_some());
            }
        }
    }
}
