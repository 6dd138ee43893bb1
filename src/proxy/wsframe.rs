//! WebSocket frames as a server reads and writes them (RFC 6455 §5).
//!
//! Reading: a read goes into a buffer on the stack first, so the common case (a whole small
//! message in one read) costs no read buffer on the heap: the payload is unmasked in place and
//! copied out once, as the message. Only the bytes of a frame that has not fully arrived (or of
//! frames after the one taken) are kept, in a buffer that grows as they arrive and is let go
//! once empty: an idle connection holds none. Large payloads are cut out of that buffer
//! without a copy. Every rule a server must enforce fails the connection with the close code
//! the RFC names: unmasked or reserved-bit frames, unknown opcodes, fragmented or oversized
//! control frames, continuations without a message (1002); text that is not UTF-8 (1007); a
//! message over the size limit, refused from its frame's header, before its payload is read
//! (1009).
//!
//! Writing: frames go straight into the connection's output buffer (a server's frames are
//! never masked), the header first, then the payload's parts as they are.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// What a client sent, one frame or one reassembled message at a time.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A complete text message (checked to be UTF-8).
    Text(Bytes),
    /// A complete binary message (unchecked).
    Binary(Bytes),
    /// A ping, with its payload (to be echoed in a pong).
    Ping(Bytes),
    Pong,
    /// A close frame, with the code it carried (`None`: none).
    Close(Option<u16>),
}

/// Why a client's frames are refused; each fails the connection with [`Fail::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    /// A rule of the protocol was broken (1002); the text says which.
    Protocol(&'static str),
    /// A text message or a close reason is not UTF-8 (1007).
    NotUtf8,
    /// A message is larger than the limit (1009).
    TooLarge,
}

impl Fail {
    /// The close code RFC 6455 §7.4.1 gives it.
    pub(crate) fn code(self) -> u16 {
        match self {
            Fail::Protocol(_) => 1002,
            Fail::NotUtf8 => 1007,
            Fail::TooLarge => 1009,
        }
    }

    /// A close frame's reason.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Fail::Protocol(why) => why,
            Fail::NotUtf8 => "a text message that is not UTF-8",
            Fail::TooLarge => "message larger than websocket.max_message_bytes",
        }
    }
}

/// Why reading ended.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(std::io::Error),
    Fail(Fail),
}

impl From<Fail> for ReadError {
    fn from(f: Fail) -> Self {
        ReadError::Fail(f)
    }
}

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Bytes read at once when nothing is waiting.
const READ_SIZE: usize = 4096;
/// Payloads at least this large are cut out of the buffer instead of copied.
const NO_COPY_FROM: usize = 64 * 1024;

/// A frame's header, parsed.
#[derive(Debug)]
struct Head {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// The header's length (where the payload starts).
    start: usize,
    len: usize,
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: BytesMut,
}

/// Reads a client's frames; see the module's summary.
#[derive(Debug)]
pub(crate) struct Reader {
    /// Bytes read and not yet taken (empty, with no memory, between messages).
    buf: BytesMut,
    partial: Option<Partial>,
    max: usize,
}

impl Reader {
    /// A reader that refuses messages over `max` bytes.
    pub(crate) fn new(max: usize) -> Reader {
        Reader {
            buf: BytesMut::new(),
            partial: None,
            max,
        }
    }

    /// The next frame (control frames as they come, data frames as whole messages), `None` at
    /// the end of the stream.
    pub(crate) fn poll_frame<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame>, ReadError>> {
        loop {
            if !self.buf.is_empty() {
                if let Some(frame) = self.take_buffered()? {
                    return Poll::Ready(Ok(Some(frame)));
                }
                // A frame has not fully arrived: read more of it.
                let missing = self.missing();
                self.buf
                    .reserve(missing.clamp(READ_SIZE, NO_COPY_FROM * 16));
                let n = ready!(pin!(io.read_buf(&mut self.buf)).poll(cx)).map_err(ReadError::Io)?;
                if n == 0 {
                    return Poll::Ready(Ok(None));
                }
                continue;
            }
            // Nothing is waiting: read into the stack.
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut read = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut read)).map_err(ReadError::Io)?;
            let bytes = read.filled_mut();
            if bytes.is_empty() {
                return Poll::Ready(Ok(None));
            }
            let partial = self.partial.as_ref().map(|p| p.data.len());
            if let Some(head) = head(bytes, self.max, partial)? {
                let end = head.start + head.len;
                if end <= bytes.len() {
                    let payload = &mut bytes[head.start..end];
                    unmask(payload, head.mask);
                    let payload = Bytes::copy_from_slice(payload);
                    self.buf.extend_from_slice(&bytes[end..]);
                    if let Some(frame) = self.complete(&head, payload)? {
                        return Poll::Ready(Ok(Some(frame)));
                    }
                    continue;
                }
            }
            self.buf.extend_from_slice(bytes);
        }
    }

    /// How many more bytes the frame at the start of the buffer needs (at least 1).
    fn missing(&self) -> usize {
        let partial = self.partial.as_ref().map(|p| p.data.len());
        match head(&self.buf, self.max, partial) {
            Ok(Some(h)) => (h.start + h.len).saturating_sub(self.buf.len()).max(1),
            _ => 1,
        }
    }

    /// Takes the frame at the start of the buffer if it has fully arrived.
    fn take_buffered(&mut self) -> Result<Option<Frame>, Fail> {
        loop {
            let partial = self.partial.as_ref().map(|p| p.data.len());
            let Some(head) = head(&self.buf, self.max, partial)? else {
                return Ok(None);
            };
            if self.buf.len() < head.start + head.len {
                return Ok(None);
            }
            self.buf.advance(head.start);
            let payload = if head.len >= NO_COPY_FROM {
                let mut p = self.buf.split_to(head.len);
                unmask(&mut p, head.mask);
                p.freeze()
            } else {
                let p = &mut self.buf[..head.len];
                unmask(p, head.mask);
                let p = Bytes::copy_from_slice(p);
                self.buf.advance(head.len);
                p
            };
            if self.buf.is_empty() {
                // Nothing waits: the memory goes (an idle connection keeps no buffer).
                self.buf = BytesMut::new();
            }
            if let Some(frame) = self.complete(&head, payload)? {
                return Ok(Some(frame));
            }
            if self.buf.is_empty() {
                return Ok(None);
            }
        }
    }

    /// What a frame with this header and (unmasked) payload makes: a control frame, a whole
    /// message, or nothing yet (part of a fragmented message).
    fn complete(&mut self, head: &Head, payload: Bytes) -> Result<Option<Frame>, Fail> {
        let message = |text: bool, data: Bytes| {
            if text && simdutf8::basic::from_utf8(&data).is_err() {
                return Err(Fail::NotUtf8);
            }
            Ok(Some(if text {
                Frame::Text(data)
            } else {
                Frame::Binary(data)
            }))
        };
        match head.opcode {
            TEXT | BINARY if head.fin => message(head.opcode == TEXT, payload),
            TEXT | BINARY => {
                self.partial = Some(Partial {
                    text: head.opcode == TEXT,
                    data: BytesMut::from(&payload[..]),
                });
                Ok(None)
            }
            0 => {
                let Some(partial) = self.partial.as_mut() else {
                    unreachable!("head() refuses a continuation without a message")
                };
                partial.data.extend_from_slice(&payload);
                if !head.fin {
                    return Ok(None);
                }
                let Some(Partial { text, data }) = self.partial.take() else {
                    unreachable!("taken above")
                };
                message(text, data.freeze())
            }
            PING => Ok(Some(Frame::Ping(payload))),
            PONG => Ok(Some(Frame::Pong)),
            CLOSE => close(&payload).map(|code| Some(Frame::Close(code))),
            _ => unreachable!("head() refuses other opcodes"),
        }
    }
}

/// Parses and checks the header at the start of `b` (`None`: not all of it has arrived).
/// `partial` is the length of a fragmented message being put together, if any.
fn head(b: &[u8], max: usize, partial: Option<usize>) -> Result<Option<Head>, Fail> {
    let [first, second, ..] = *b else {
        return Ok(None);
    };
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0f;
    if first & 0x70 != 0 {
        return Err(Fail::Protocol(
            "reserved bits set (no extension was negotiated)",
        ));
    }
    if second & 0x80 == 0 {
        return Err(Fail::Protocol("a client's frames must be masked"));
    }
    let short = usize::from(second & 0x7f);
    match opcode {
        CLOSE | PING | PONG => {
            if !fin {
                return Err(Fail::Protocol("a control frame must not be fragmented"));
            }
            if short > 125 {
                return Err(Fail::Protocol(
                    "a control frame's payload must be 125 bytes at most",
                ));
            }
        }
        0 if partial.is_none() => {
            return Err(Fail::Protocol("a continuation frame without a message"));
        }
        TEXT | BINARY if partial.is_some() => {
            return Err(Fail::Protocol(
                "a new message began before the fragmented one ended",
            ));
        }
        0 | TEXT | BINARY => {}
        _ => return Err(Fail::Protocol("unknown opcode")),
    }
    let (len, at) = match short {
        126 => match b.get(2..4) {
            Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
            None => return Ok(None),
        },
        127 => match b.get(2..10) {
            Some(l) => {
                let len = u64::from_be_bytes(l.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(Fail::Protocol("a payload length's top bit must be 0"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (n as u64, 2),
    };
    // Refused from the header: the payload is never read.
    let len = usize::try_from(len).map_err(|_| Fail::TooLarge)?;
    if len.saturating_add(partial.unwrap_or(0)) > max {
        return Err(Fail::TooLarge);
    }
    let Some(mask) = b.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Head {
        fin,
        opcode,
        mask: mask.try_into().expect("4 bytes"),
        start: at + 4,
        len,
    }))
}

/// A close frame's code, checked (RFC 6455 §5.5.1, §7.4).
fn close(payload: &[u8]) -> Result<Option<u16>, Fail> {
    match payload {
        [] => Ok(None),
        [_] => Err(Fail::Protocol("a close frame's payload of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(Fail::Protocol("a close code that may not be sent"));
            }
            if simdutf8::basic::from_utf8(reason).is_err() {
                return Err(Fail::NotUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// XORs `payload` with the frame's mask, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends a frame's header for a `len`-byte payload (`opcode` with FIN set; unmasked).
pub(crate) fn put_head(out: &mut BytesMut, opcode: u8, len: usize) {
    out.reserve(len + 10);
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= 0xffff {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Appends a text frame's header for a `len`-byte payload.
pub(crate) fn text_frame(out: &mut BytesMut, len: usize) {
    put_head(out, TEXT, len);
}

/// Appends a pong echoing a ping's payload.
pub(crate) fn put_pong(out: &mut BytesMut, payload: &[u8]) {
    put_head(out, PONG, payload.len());
    out.extend_from_slice(payload);
}

/// Appends an empty ping.
pub(crate) fn put_ping(out: &mut BytesMut) {
    put_head(out, PING, 0);
}

/// Appends a close frame with `code` (none: an empty close) and `reason` (cut to fit the
/// 125 bytes a control frame may carry, at a character boundary).
pub(crate) fn put_close(out: &mut BytesMut, code: Option<u16>, reason: &str) {
    let Some(code) = code else {
        put_head(out, CLOSE, 0);
        return;
    };
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    put_head(out, CLOSE, 2 + end);
    out.put_u16(code);
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's frame: `first` byte as given, payload masked with a fixed key.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    /// Everything `reader` makes of `input` delivered in pieces of `piece` bytes; the first
    /// failure ends it.
    async fn read_all(input: &[u8], piece: usize, max: usize) -> Vec<Result<Frame, Fail>> {
        let (mut tx, mut rx) = tokio::io::duplex(1 << 20);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in input.chunks(piece.max(1)) {
                tx.write_all(c).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut reader = Reader::new(max);
        let mut got = Vec::new();
        loop {
            match std::future::poll_fn(|cx| reader.poll_frame(&mut rx, cx)).await {
                Ok(Some(f)) => got.push(Ok(f)),
                Ok(None) => break,
                Err(ReadError::Fail(f)) => {
                    got.push(Err(f));
                    break;
                }
                Err(ReadError::Io(e)) => panic!("{e}"),
            }
        }
        writer.await.unwrap();
        assert!(reader.buf.capacity() == 0 || got.last().is_some_and(|g| g.is_err()));
        got
    }

    #[tokio::test]
    async fn messages_come_whole_however_the_bytes_are_split() {
        let big = vec![b'x'; 70_000];
        let mut input = masked(0x81, br#"{"id":1}"#);
        input.extend(masked(0x89, b"hi"));
        input.extend(masked(0x82, &[0xff, 0x00]));
        // A text message in three fragments with a ping between them.
        input.extend(masked(0x01, b"{\"a\":"));
        input.extend(masked(0x8a, b""));
        input.extend(masked(0x00, "\"é".as_bytes()));
        input.extend(masked(0x80, b"\"}"));
        input.extend(masked(0x81, &big));
        input.extend(masked(0x81, &[b'y'; 300]));
        input.extend(masked(0x88, &[0x03, 0xe8, b'o', b'k']));
        let want = vec![
            Ok(Frame::Text(Bytes::from_static(br#"{"id":1}"#))),
            Ok(Frame::Ping(Bytes::from_static(b"hi"))),
            Ok(Frame::Binary(Bytes::from_static(&[0xff, 0x00]))),
            Ok(Frame::Pong),
            Ok(Frame::Text(Bytes::from("{\"a\":\"é\"}"))),
            Ok(Frame::Text(Bytes::from(big.clone()))),
            Ok(Frame::Text(Bytes::from(vec![b'y'; 300]))),
            Ok(Frame::Close(Some(1000))),
        ];
        for piece in [1, 2, 3, 7, 100, 4096, 1 << 20] {
            assert_eq!(
                read_all(&input, piece, 1 << 20).await,
                want,
                "pieces of {piece}"
            );
        }
    }

    #[tokio::test]
    async fn broken_rules_fail_with_the_codes_the_rfc_names() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], 1002), // unmasked
            (masked(0xc1, b"x"), 1002),           // RSV1 without an extension
            (masked(0x83, b"x"), 1002),           // reserved opcode
            (masked(0x0b, b""), 1002),            // reserved control opcode
            (masked(0x09, b""), 1002),            // fragmented ping
            (masked(0x89, &[0; 126]), 1002),      // ping over 125 bytes
            (masked(0x80, b"x"), 1002),           // continuation without a message
            ([masked(0x01, b"a"), masked(0x81, b"b")].concat(), 1002), // new message mid-way
            (masked(0x88, &[0x03]), 1002),        // close payload of one byte
            (masked(0x88, &[0x03, 0xed]), 1002),  // close code 1005 may not be sent
            (masked(0x88, &[0x03, 0xe8, 0xff]), 1007), // close reason not UTF-8
            (masked(0x81, &[0xc3, 0x28]), 1007),  // text not UTF-8
            (
                [masked(0x01, &[0xe2, 0x82]), masked(0x80, &[0x28])].concat(),
                1007,
            ),
            (masked(0x81, &[b'a'; 101]), 1009), // over the limit of 100
            (
                [masked(0x01, &[b'a'; 60]), masked(0x80, &[b'a'; 60])].concat(),
                1009,
            ),
        ];
        for (input, code) in cases {
            for piece in [1, 5, 4096] {
                let got = read_all(&input, piece, 100).await;
                match got.last() {
                    Some(Err(f)) => assert_eq!(f.code(), code, "{input:x?}"),
                    other => panic!("{input:x?} in pieces of {piece}: {other:?}"),
                }
            }
        }
        // Refused from the header alone: a frame declaring 2^62 bytes.
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(read_all(&huge, 4096, 100).await, vec![Err(Fail::TooLarge)]);
        huge[2] = 0x80;
        assert!(matches!(
            read_all(&huge, 4096, 100).await[..],
            [Err(Fail::Protocol(_))]
        ));
    }

    #[test]
    fn unmasking_matches_the_definition_at_every_length() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let plain: Vec<u8> = (0..len as u8).collect();
            let mut b = plain.clone();
            unmask(&mut b, mask);
            let want: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, x)| x ^ mask[i % 4])
                .collect();
            assert_eq!(b, want);
        }
    }

    #[test]
    fn frame_headers_take_the_short_forms() {
        for (len, head) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = BytesMut::new();
            text_frame(&mut out, len);
            assert_eq!(&out[..], &head[..], "{len}");
        }
    }

    #[test]
    fn close_frames_carry_their_code_and_a_reason_that_fits() {
        let mut out = BytesMut::new();
        put_close(&mut out, Some(1008), "too slow");
        assert_eq!(&out[..], b"\x88\x0a\x03\xf0too slow");
        let mut out = BytesMut::new();
        put_close(&mut out, Some(1001), &"é".repeat(100));
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= 125);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
        let mut out = BytesMut::new();
        put_close(&mut out, None, "ignored");
        assert_eq!(&out[..], b"\x88\x00");
    }
}
