//! A single call's `result` checked while it streams through (issue 19).
//!
//! A large answer to one call is passed to the client as it arrives, once its envelope has
//! said that a result follows ([`result_start`]); detour cannot then fail over, so what it
//! still checks is that the client gets either a complete, well-formed answer or a cut
//! connection, never a valid-looking answer that is not the upstream's whole result.
//! [`ResultCheck`] checks, a piece at a time, the same things the whole-answer path's
//! structure check does (`jsonscan`'s `skip_container_loose`): UTF-8, strings closed and free
//! of control characters, escapes well-formed, brackets balanced and matched, nesting at most
//! [`MAX_DEPTH`]; and what follows the result: only whitespace and the envelope's `}`. As in
//! that check, what sits between strings and brackets is checked loosely (only the bytes
//! numbers, literals, commas and colons are made of). Whole 64-byte blocks are checked at
//! once where the CPU has AVX2 ([`ResultCheck::blocks`]); the byte walk takes the blocks that
//! need it (escapes, control characters, stray bytes, the result's end) and the rest.

use super::jsonscan;

/// Deeper nesting than this fails the check (serde_json's limit, which the whole-answer path
/// falls back to).
pub(crate) const MAX_DEPTH: u32 = 128;

/// What the start of an answer says about streaming its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// The result's first byte is at this offset: `[`, `{` or `"`.
    At(usize),
    /// Not enough has arrived to tell.
    Undecided,
    /// Not an envelope whose result can be streamed: an error, another id, another member
    /// order, a scalar result, or anything unusual. The answer is read whole.
    No,
}

/// Where the `result` begins in the answer to the call sent with id `id`, when the answer
/// starts as nodes write it: `{`, then `"jsonrpc":"2.0"` and `"id":<id>` (in either order;
/// `jsonrpc` may be missing), then `"result":` and an array, object or string.
pub(crate) fn result_start(body: &[u8], id: usize) -> Start {
    let mut id_buf = itoa::Buffer::new();
    let id = id_buf.format(id).as_bytes();
    let mut at = ws(body, 0);
    match body.get(at) {
        None => return Start::Undecided,
        Some(b'{') => at += 1,
        Some(_) => return Start::No,
    }
    let (mut seen_version, mut seen_id) = (false, false);
    loop {
        at = ws(body, at);
        match body.get(at) {
            None => return Start::Undecided,
            Some(b'"') => at += 1,
            Some(_) => return Start::No,
        }
        let Some(len) = body[at..].iter().position(|&c| c == b'"' || c == b'\\') else {
            return if body.len() - at > 16 {
                Start::No
            } else {
                Start::Undecided
            };
        };
        let key = &body[at..at + len];
        at = ws(body, at + len + 1);
        match body.get(at) {
            None => return Start::Undecided,
            Some(b':') => at = ws(body, at + 1),
            Some(_) => return Start::No,
        }
        let value: &[u8] = match key {
            b"jsonrpc" if !seen_version => {
                seen_version = true;
                b"\"2.0\""
            }
            b"id" if !seen_id => {
                seen_id = true;
                id
            }
            b"result" if seen_id => {
                return match body.get(at) {
                    None => Start::Undecided,
                    Some(b'[' | b'{' | b'"') => Start::At(at),
                    Some(_) => Start::No,
                };
            }
            _ => return Start::No,
        };
        let have = &body[at.min(body.len())..];
        if have.len() < value.len() {
            return match value.starts_with(have) {
                true => Start::Undecided,
                false => Start::No,
            };
        }
        if &have[..value.len()] != value {
            return Start::No;
        }
        at = ws(body, at + value.len());
        match body.get(at) {
            None => return Start::Undecided,
            Some(b',') => at += 1,
            Some(_) => return Start::No,
        }
    }
}

fn ws(b: &[u8], mut at: usize) -> usize {
    while matches!(b.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// Where the check is in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between tokens of the result.
    Value,
    /// Inside a string.
    Text,
    /// Just after a backslash in a string.
    Escape,
    /// This many hex digits of a `\u` escape still to come.
    Hex(u8),
    /// The result has ended: whitespace, then the envelope's `}`.
    After,
    /// The envelope's `}` came: only whitespace may follow.
    Closed,
}

/// The check of a streamed result, fed the answer from the result's first byte on.
#[derive(Debug, Clone)]
pub(crate) struct ResultCheck {
    state: State,
    /// Open containers, innermost in bit 0: 1 for an object, 0 for an array.
    stack: u128,
    open: u32,
    /// The start of a UTF-8 sequence cut at the end of the last piece.
    utf8: [u8; 4],
    utf8_len: u8,
    /// Whether whole blocks may be checked 64 bytes at a time ([`ResultCheck::blocks`]); off
    /// only in tests, which compare the two.
    fast: bool,
}

impl Default for ResultCheck {
    fn default() -> Self {
        ResultCheck::new()
    }
}

impl ResultCheck {
    pub(crate) fn new() -> ResultCheck {
        ResultCheck {
            state: State::Value,
            stack: 0,
            open: 0,
            utf8: [0; 4],
            utf8_len: 0,
            fast: true,
        }
    }

    /// A check that walks every byte (to compare with the block scan).
    #[cfg(test)]
    fn walk_only() -> ResultCheck {
        ResultCheck {
            fast: false,
            ..ResultCheck::new()
        }
    }

    /// Checks the next piece of the answer. Returns how many of its bytes belong to the
    /// result (all of them until the result ends; the rest is the envelope's end), or why the
    /// answer is not a well-formed one.
    pub(crate) fn feed(&mut self, piece: &[u8]) -> Result<usize, &'static str> {
        self.utf8(piece)?;
        let mut result_len = if self.ended() { 0 } else { piece.len() };
        let mut i = 0;
        // Up to here the bytes are walked one token at a time (a block the fast scan left).
        let mut walk_until = 0;
        while i < piece.len() {
            if self.fast
                && i >= walk_until
                && self.open > 0
                && matches!(self.state, State::Value | State::Text)
            {
                let done = self.blocks(piece, i)?;
                if done < piece.len() {
                    // A block the scan left (an escape, a control character, a byte that
                    // does not belong between strings, the result's end), or the piece's
                    // last bytes: walked below.
                    walk_until = done + 64;
                }
                i = done;
                continue;
            }
            match self.state {
                State::Text => match jsonscan::find_special(piece, i) {
                    None => i = piece.len(),
                    Some(k) => {
                        i = k + 1;
                        match piece[k] {
                            b'"' => {
                                self.state = State::Value;
                                if self.open == 0 {
                                    // A string result ended.
                                    self.state = State::After;
                                    result_len = i;
                                }
                            }
                            b'\\' => self.state = State::Escape,
                            _ => return Err("a control character in a string"),
                        }
                    }
                },
                State::Escape => {
                    self.state = match piece[i] {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => State::Text,
                        b'u' => State::Hex(4),
                        _ => return Err("an invalid escape in a string"),
                    };
                    i += 1;
                }
                State::Hex(left) => {
                    if !piece[i].is_ascii_hexdigit() {
                        return Err("an invalid \\u escape in a string");
                    }
                    self.state = if left == 1 {
                        State::Text
                    } else {
                        State::Hex(left - 1)
                    };
                    i += 1;
                }
                State::Value => {
                    let c = piece[i];
                    i += 1;
                    match c {
                        b'"' => self.state = State::Text,
                        b'{' | b'[' => {
                            if self.open >= MAX_DEPTH {
                                return Err("nested too deep");
                            }
                            self.stack = (self.stack << 1) | u128::from(c == b'{');
                            self.open += 1;
                        }
                        b'}' | b']' => {
                            if self.open == 0 || (self.stack & 1 == 1) != (c == b'}') {
                                return Err("unbalanced brackets");
                            }
                            self.stack >>= 1;
                            self.open -= 1;
                            if self.open == 0 {
                                self.state = State::After;
                                result_len = i;
                            }
                        }
                        b' '
                        | b'\t'
                        | b'\n'
                        | b'\r'
                        | b','
                        | b':'
                        | b'0'..=b'9'
                        | b'-'
                        | b'+'
                        | b'.'
                        | b'e'
                        | b'E'
                        | b'a'
                        | b'f'
                        | b'l'
                        | b'n'
                        | b'r'
                        | b's'
                        | b't'
                        | b'u' => {}
                        _ => return Err("unexpected bytes between values"),
                    }
                }
                State::After | State::Closed => {
                    match (piece[i], self.state) {
                        (b' ' | b'\t' | b'\n' | b'\r', _) => {}
                        (b'}', State::After) => self.state = State::Closed,
                        _ => return Err("unexpected bytes after the result"),
                    }
                    i += 1;
                }
            }
        }
        Ok(result_len)
    }

    /// Checks the whole 64-byte blocks of `piece` from `from` on, 64 bytes at a time, while
    /// the check is between tokens or in a string inside the result: up to the first block
    /// that has something the walk in [`ResultCheck::feed`] must look at (an escape or a
    /// control character in a string, a byte that does not belong between strings, the
    /// result's end), which is left as it was. Returns where it stopped.
    fn blocks(&mut self, piece: &[u8], from: usize) -> Result<usize, &'static str> {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("pclmulqdq") {
            // SAFETY: the CPU has both features.
            return unsafe { self.blocks_avx2(piece, from) };
        }
        Ok(from)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,pclmulqdq")]
    fn blocks_avx2(&mut self, piece: &[u8], from: usize) -> Result<usize, &'static str> {
        let mut i = from;
        // All ones while inside a string.
        let mut carry = if self.state == State::Text { !0u64 } else { 0 };
        'blocks: while let Some(block) = piece.get(i..i + 64) {
            let Ok(block) = <&[u8; 64]>::try_from(block) else {
                break;
            };
            let (quote, odd, bracket, foreign) = jsonscan::classify_stream_avx2(block);
            // From an opening quote up to (not including) its closing one.
            let inside = jsonscan::prefix_xor_clmul(quote) ^ carry;
            if odd & inside != 0 || foreign & !inside != 0 {
                break;
            }
            let (mut stack, mut open) = (self.stack, self.open);
            let mut brackets = bracket & !inside;
            while brackets != 0 {
                let c = block[brackets.trailing_zeros() as usize];
                brackets &= brackets - 1;
                if c == b'{' || c == b'[' {
                    if open >= MAX_DEPTH {
                        return Err("nested too deep");
                    }
                    stack = (stack << 1) | u128::from(c == b'{');
                    open += 1;
                } else {
                    if open == 0 || (stack & 1 == 1) != (c == b'}') {
                        return Err("unbalanced brackets");
                    }
                    stack >>= 1;
                    open -= 1;
                    if open == 0 {
                        // The result ends in this block: the walk finds where.
                        break 'blocks;
                    }
                }
            }
            (self.stack, self.open) = (stack, open);
            carry = 0u64.wrapping_sub(inside >> 63);
            i += 64;
        }
        if i > from {
            self.state = if carry != 0 {
                State::Text
            } else {
                State::Value
            };
        }
        Ok(i)
    }

    /// Whether the result has ended (what follows is the envelope's end).
    pub(crate) fn ended(&self) -> bool {
        matches!(self.state, State::After | State::Closed)
    }

    /// At the end of the answer: whether it was whole.
    pub(crate) fn finish(&self) -> Result<(), &'static str> {
        match (self.state, self.utf8_len) {
            (State::Closed, 0) => Ok(()),
            (State::After, 0) => Err("the answer ends without its closing brace"),
            _ => Err("the answer ends inside its result"),
        }
    }

    /// Checks that the pieces, one after the other, are UTF-8 (a character may be cut
    /// between two).
    fn utf8(&mut self, mut piece: &[u8]) -> Result<(), &'static str> {
        const INVALID: &str = "the answer is not UTF-8";
        if self.utf8_len > 0 {
            let have = usize::from(self.utf8_len);
            let need = match self.utf8[0] {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            let take = (need - have).min(piece.len());
            self.utf8[have..have + take].copy_from_slice(&piece[..take]);
            piece = &piece[take..];
            if have + take < need {
                self.utf8_len = (have + take) as u8;
                return Ok(());
            }
            self.utf8_len = 0;
            std::str::from_utf8(&self.utf8[..need]).map_err(|_| INVALID)?;
        }
        match std::str::from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let rest = &piece[e.valid_up_to()..];
                self.utf8[..rest.len()].copy_from_slice(rest);
                self.utf8_len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(INVALID),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_result_starts_after_the_envelope_nodes_write() {
        let body = br#"{"jsonrpc":"2.0","id":7,"result":[1,2]}"#;
        assert_eq!(result_start(body, 7), Start::At(33));
        assert_eq!(
            result_start(
                br#" { "id" : 7 , "jsonrpc" : "2.0" , "result" : {"a":1}}"#,
                7
            ),
            Start::At(45)
        );
        assert_eq!(
            result_start(br#"{"id":7,"result":"0xab"}"#, 7),
            Start::At(17)
        );
        // Every cut of the prefix is undecided, never a wrong answer.
        for cut in 0..33 {
            assert_eq!(result_start(&body[..cut], 7), Start::Undecided, "{cut}");
        }
        for no in [
            &br#"{"jsonrpc":"2.0","id":8,"result":[1]}"#[..],
            br#"{"jsonrpc":"2.0","id":70,"result":[1]}"#,
            br#"{"jsonrpc":"2.0","id":7,"error":{"code":1}}"#,
            br#"{"jsonrpc":"2.0","result":[1],"id":7}"#,
            br#"{"jsonrpc":"2.0","id":7,"result":null}"#,
            br#"{"jsonrpc":"2.0","id":7,"result":12}"#,
            br#"{"jsonrpc":"1.0","id":7,"result":[1]}"#,
            br#"{"id":7,"id":7,"result":[1]}"#,
            br#"{"i\u0064":7,"result":[1]}"#,
            br#"[{"id":7,"result":[1]}]"#,
            b"<html>",
        ] {
            assert_eq!(
                result_start(no, 7),
                Start::No,
                "{}",
                String::from_utf8_lossy(no)
            );
        }
    }

    /// Feeds `text` (a result, then the envelope's end) cut at `cuts`; the result's length
    /// and the verdict.
    fn check(text: &[u8], cuts: &[usize]) -> Result<usize, &'static str> {
        check_with(ResultCheck::new(), text, cuts)
    }

    fn check_with(mut c: ResultCheck, text: &[u8], cuts: &[usize]) -> Result<usize, &'static str> {
        let mut result = 0;
        let mut from = 0;
        for &cut in cuts.iter().chain([&text.len()]) {
            let cut = cut.clamp(from, text.len());
            result += c.feed(&text[from..cut])?;
            from = cut;
        }
        c.finish().map(|()| result)
    }

    #[test]
    fn results_end_where_their_value_ends() {
        let text = br#"{"a":["x\"]}",{"b":"\u00e9"}]} }"#;
        assert_eq!(check(text, &[]), Ok(text.len() - 2));
        assert_eq!(check(b"\"0xabc\"}", &[3]), Ok(7));
        assert_eq!(check("[\"caf\u{e9}\"]\n}\n".as_bytes(), &[5, 6]), Ok(9));
    }

    #[test]
    fn answers_cut_short_or_malformed_fail() {
        for (text, why) in [
            (&b"[1,2"[..], "the answer ends inside its result"),
            (b"[1,2]", "the answer ends without its closing brace"),
            (b"[1,2]}}", "unexpected bytes after the result"),
            (b"[1,2]},", "unexpected bytes after the result"),
            (b"[1}", "unbalanced brackets"),
            (b"{]}", "unbalanced brackets"),
            (b"[\"a\nb\"]}", "a control character in a string"),
            (b"[\"\\x\"]}", "an invalid escape in a string"),
            (b"[\"\\u12g4\"]}", "an invalid \\u escape in a string"),
            (b"[\"\xff\"]}", "the answer is not UTF-8"),
            (b"[\"\xc3\"]}", "the answer is not UTF-8"),
            (b"[\"\xc3", "the answer ends inside its result"),
            (b"[<>]}", "unexpected bytes between values"),
        ] {
            assert_eq!(
                check(text, &[]),
                Err(why),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        let deep = format!("{}{}}}", "[".repeat(129), "]".repeat(129));
        assert_eq!(check(deep.as_bytes(), &[]), Err("nested too deep"));
        let deep = format!("{}{}}}", "[".repeat(128), "]".repeat(128));
        assert_eq!(check(deep.as_bytes(), &[]), Ok(256));
    }

    /// The walk and the block scan agree on which bytes may stand between strings.
    #[test]
    fn the_walk_and_the_blocks_allow_the_same_bytes_between_strings() {
        for c in 0..=255u8 {
            let between = jsonscan::BETWEEN_STRINGS.contains(&c);
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                let (_, _, _, foreign) = unsafe { jsonscan::classify_stream_avx2(&[c; 64]) };
                assert_eq!(foreign == !0, !between, "byte {c:#x}");
                assert!(foreign == 0 || foreign == !0, "byte {c:#x}");
            }
            if c < 0x80 && !b"\"[]{}".contains(&c) {
                let text = [b'[', b'1', c, b'1', b']', b'}'];
                let walked = check_with(ResultCheck::walk_only(), &text, &[]);
                assert_eq!(
                    walked != Err("unexpected bytes between values"),
                    between,
                    "byte {c:#x}: {walked:?}"
                );
            }
        }
    }

    /// A result long enough for whole blocks, with the result's end, escapes and errors at
    /// every offset of a block: the block scan agrees with the walk.
    #[test]
    fn the_blocks_agree_with_the_walk_at_every_offset() {
        let body = r#"{"a":"0x00ff","b":[1,2.5e3,true,null],"c":"caf\u00e9 é"}"#;
        for spot in ["\"\n\"", r#""\q""#, "]", "}", "[}", "{]", "[[]", "<", "\\"] {
            for at in 0..130 {
                let mut text = String::from("[");
                while text.len() < at {
                    text.push(' ');
                }
                text += spot;
                for _ in 0..6 {
                    text.push(',');
                    text += body;
                }
                text += "] }";
                for cuts in [&[][..], &[64], &[1, 65, 129], &[100]] {
                    assert_eq!(
                        check(text.as_bytes(), cuts),
                        check_with(ResultCheck::walk_only(), text.as_bytes(), cuts),
                        "{text} cut at {cuts:?}"
                    );
                }
            }
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(5, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".*", inner, 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any array or object serde_json writes passes, wherever it is cut, with the
        /// result's length exact; cut anywhere short of its end, it fails.
        #[test]
        fn well_formed_results_pass_wherever_cut(
            v in json_value(),
            pretty in any::<bool>(),
            cuts in prop::collection::vec(0usize..4096, 0..6),
            short in 0usize..4096,
        ) {
            let v = serde_json::Value::Array(vec![v]);
            let result = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            let text = format!("{result} }}");
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(check(text.as_bytes(), &cuts), Ok(result.len()));
            prop_assert_eq!(
                check_with(ResultCheck::walk_only(), text.as_bytes(), &cuts),
                Ok(result.len())
            );
            let short = short % result.len();
            prop_assert!(check(&text.as_bytes()[..short], &cuts).is_err());
        }

        /// On any mix of JSON's pieces, well-formed or not, cut anywhere, the block scan
        /// gives what the walk gives: the same result length, or the same error.
        #[test]
        fn the_blocks_give_what_the_walk_gives(
            pieces in prop::collection::vec(prop::sample::select(vec![
                "[", "]", "{", "}", "\"", ",", ":", " ", "\n", "\\", "\\u00e9", "\\x", "\\\"",
                "1", "-2.5e3", "true", "null", "é", "\u{1}", "<", "\"0x00ff00ff00ff00ff00ff\"",
                "\"address\":", "[\"0xabc\",\"0xdef\"]", "{\"a\":[1,2,{\"b\":\"c\"}]}",
            ]), 0..300),
            cuts in prop::collection::vec(0usize..4096, 0..6),
        ) {
            let text = format!("[{}] }}", pieces.concat());
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(
                check(text.as_bytes(), &cuts),
                check_with(ResultCheck::walk_only(), text.as_bytes(), &cuts),
                "{}", text
            );
        }

    }
}
