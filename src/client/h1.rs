//! A small HTTP/1.1 client connection for plain-`http://` upstreams.
//!
//! hyper's client connection runs its I/O on a task of its own and hands each request and
//! response across channels, which costs about a quarter of the instructions of a proxied
//! request. Here the request task does the exchange itself: one vectored write (the upstream's
//! request head, prebuilt once, then `content-length` and the body) and reads into the
//! connection's buffer until the answer is complete. Heads are parsed by `httparse` (the parser
//! hyper uses); bodies may be `content-length`, chunked, or delimited by the connection's close.
//!
//! HTTPS upstreams keep using hyper-util's client (TLS, ALPN, HTTP/2).

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::client::UpstreamReply;
use crate::rpc::stream::{result_start, Start};

/// Response heads larger than this are refused.
const MAX_HEAD: usize = 64 * 1024;
/// Headers beyond this many make the response malformed.
const MAX_HEADERS: usize = 100;
/// Read at least this much at a time.
const READ_CHUNK: usize = 8 * 1024;
/// A connection keeps its read buffer between exchanges up to this size.
const KEEP_BUF: usize = 64 * 1024;
/// How far past what has arrived a declared `Content-Length` is allocated: a peer that
/// declares 100 MiB and goes silent costs this much, not 100 MiB.
pub(crate) const TRUST_AHEAD: usize = 2 << 20;
/// Requests up to this size are copied into one buffer and sent with one `write`; larger ones
/// go as they are with `writev`. On loopback a `writev` of two pieces cost the kernel about
/// 190 ns more than one `write` of the same 250 bytes, and copying 4 KiB costs less than that.
const COPY_MAX: usize = 4 * 1024;
/// Reads of a streamed answer get this much room: pieces this large go to the client.
const STREAM_READ: usize = 256 * 1024;
/// An envelope whose result has not started within this many bytes is not streamed.
pub(crate) const PREFIX_MAX: usize = 4 * 1024;

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Conn {
    io: TcpStream,
    /// What was read and not yet consumed; between exchanges, empty (its spare room is reused).
    buf: BytesMut,
    /// How much room the next answer's first read gets: one byte more than the last answer
    /// with a `content-length` (head and body), so that a read of an answer as large ends
    /// short and Tokio knows the socket drained without another read (which would cost a
    /// system call in [`Conn::idle_usable`]); within [`READ_CHUNK`]..=[`TRUST_AHEAD`]. An
    /// upstream that answers 14 KB blocks then gets one read per answer instead of two, and no
    /// copy of the first 8 KiB into a larger buffer; one that answers 165 KB batches gets one
    /// allocation per answer, not a first read into 64 KiB copied into a larger one. The room
    /// is taken when a request is sent and goes with the answer (a buffer above [`KEEP_BUF`]
    /// is never kept by an idle connection).
    expect: usize,
    /// A request of up to [`COPY_MAX`] bytes in one piece; kept between exchanges (its room).
    out: Vec<u8>,
    /// Times the exchanges; made at the first one and kept (see [`Conn::exchange`]).
    timer: Option<Pin<Box<Sleep>>>,
}

/// A complete exchange: the upstream's reply, and whether the connection may carry another
/// request.
#[derive(Debug)]
pub(crate) struct Exchanged {
    pub reply: UpstreamReply,
    pub reusable: bool,
    /// The answer's result is streamed (see [`Offer`]): the body is empty, the rest of the
    /// answer is still to be read off the connection, which cannot be reused.
    pub stream: Option<Begun>,
}

/// A request's offer to stream its answer's `result` (one call, sent with id `id`): taken by
/// a 2xx answer that declares at least `min_bytes` (or, without a declared length, has sent
/// that many) and whose envelope says that a result follows (`rpc::stream::result_start`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer {
    pub min_bytes: usize,
    pub id: usize,
}

/// The start of an answer whose result is streamed.
#[derive(Debug)]
pub(crate) struct Begun {
    /// The body from the result's first byte, as far as it has arrived.
    pub first: Bytes,
    /// What is left of the body.
    pub left: Left,
    /// Body bytes read so far (for `client.max_response_bytes`).
    pub read: usize,
}

/// What is left of a body read a piece at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Left {
    /// This many bytes (`content-length`).
    Length(usize),
    /// A chunked body, at this point of its framing.
    Chunk(ChunkAt),
    /// Up to the connection's close.
    UntilClose,
    /// Nothing.
    Done,
}

/// Where a chunked body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkAt {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes before its end.
    Data(usize),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// Among the trailer fields (this many bytes of them so far).
    Trailers(usize),
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// Reading the answer failed.
    Io(std::io::Error),
    /// The connection closed before the answer was complete (`false`: not a byte of it came).
    Closed { partial: bool },
    /// Not an HTTP/1.x answer.
    Malformed(String),
    /// The body is larger than the limit.
    TooLarge,
    /// Writing the request failed before all of it was written: it cannot have been
    /// processed.
    NotSent(std::io::Error),
    /// The exchange did not end by its deadline.
    TimedOut,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Closed { partial: false } => f.write_str("connection closed before an answer"),
            Error::Closed { partial: true } => f.write_str("connection closed mid-answer"),
            Error::Malformed(why) => write!(f, "invalid HTTP answer: {why}"),
            Error::TooLarge => f.write_str("response too large"),
            Error::NotSent(e) => write!(f, "sending the request failed: {e}"),
            Error::TimedOut => f.write_str("timed out"),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

/// How the body of an answer is delimited.
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

impl Conn {
    pub(crate) fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            expect: READ_CHUNK,
            out: Vec::new(),
            timer: None,
        }
    }

    /// Lets the read and write buffers go (an idle connection deep in the pool need not hold
    /// 8 KiB or more); the next exchange allocates new ones.
    pub(crate) fn release_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.out = Vec::new();
    }

    /// The read buffer's capacity (tests).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives the connection a read buffer, as an exchange does (tests).
    #[cfg(test)]
    pub(crate) fn with_buffer(mut self) -> Conn {
        self.buf.reserve(READ_CHUNK);
        self
    }

    /// Whether an idle connection can take a request: nothing arrived on it and it was not
    /// closed. Costs no system call unless the socket was seen readable since the last read.
    pub(crate) fn idle_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: a close (or stray bytes), or only a stale readiness flag.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(
                    self.io.try_read(&mut probe),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                )
            }
        }
    }

    /// Sends `head` (request line and headers, each ending in CRLF, without the blank line),
    /// an optional probe header, `content-length` and `body`; reads the answer to its end.
    /// Bodies over `limit` bytes fail with [`Error::TooLarge`], an exchange not done by
    /// `deadline` with [`Error::TimedOut`].
    ///
    /// The deadline is kept by one timer the connection keeps, armed lazily: it is moved
    /// earlier when a deadline is earlier than it, and when it fires before the deadline of
    /// the exchange in progress (it was set for an earlier one) it is armed again for that.
    /// Registering a timer for each exchange and removing it after cost about 5% of a proxied
    /// request's instructions. An idle connection's timer may still fire once, at its old
    /// deadline, and wake the task that last used it for nothing.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn exchange(
        &mut self,
        head: &[u8],
        extra_header: Option<(&str, &str)>,
        body: &[u8],
        limit: usize,
        deadline: Instant,
        offer: Option<Offer>,
    ) -> Result<Exchanged, Error> {
        let mut timer = match self.timer.take() {
            Some(mut timer) => {
                if timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let result = {
            let work = self.exchange_untimed(head, extra_header, body, limit, offer);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    biased;
                    result = &mut work => break result,
                    () = timer.as_mut() => {
                        if Instant::now() >= deadline {
                            break Err(Error::TimedOut);
                        }
                        // Set for an earlier exchange: this one has time left.
                        timer.as_mut().reset(deadline);
                    }
                }
            }
        };
        self.timer = Some(timer);
        result
    }

    async fn exchange_untimed(
        &mut self,
        head: &[u8],
        extra_header: Option<(&str, &str)>,
        body: &[u8],
        limit: usize,
        offer: Option<Offer>,
    ) -> Result<Exchanged, Error> {
        // The variable part of the head, on the stack (probe names and values are short
        // constants).
        let mut tail = [0u8; 256];
        let mut t = 0;
        let mut put = |bytes: &[u8]| {
            debug_assert!(t + bytes.len() <= tail.len(), "request head tail overflow");
            let end = (t + bytes.len()).min(tail.len());
            tail[t..end].copy_from_slice(&bytes[..end - t]);
            t = end;
        };
        if let Some((name, value)) = extra_header {
            put(name.as_bytes());
            put(b": ");
            put(value.as_bytes());
            put(b"\r\n");
        }
        put(b"content-length: ");
        put(itoa::Buffer::new().format(body.len()).as_bytes());
        put(b"\r\n\r\n");
        let len = head.len() + t + body.len();
        if len <= COPY_MAX {
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            out.reserve(len);
            out.extend_from_slice(head);
            out.extend_from_slice(&tail[..t]);
            out.extend_from_slice(body);
            let written = self.io.write_all(&out).await;
            self.out = out;
            written.map_err(Error::NotSent)?;
        } else {
            self.write_all(&mut [
                IoSlice::new(head),
                IoSlice::new(&tail[..t]),
                IoSlice::new(body),
            ])
            .await?;
        }
        self.read_answer(limit, offer).await
    }

    async fn write_all(&mut self, mut bufs: &mut [IoSlice<'_>]) -> Result<(), Error> {
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            let n = self.io.write_vectored(bufs).await.map_err(Error::NotSent)?;
            if n == 0 {
                return Err(Error::NotSent(std::io::ErrorKind::WriteZero.into()));
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
        Ok(())
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream. `want` is how much more
    /// is expected; the buffer grows with what has arrived (at most doubling), never by what
    /// the peer merely declared (a body of declared length reserves at most [`TRUST_AHEAD`]
    /// ahead, in `read_answer`): a `Content-Length` of 100 MiB followed by silence costs
    /// 2 MiB, not 100 MiB.
    async fn fill(&mut self, want: usize) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < want.min(READ_CHUNK) {
            self.buf
                .reserve(want.min(self.buf.len().max(READ_CHUNK)).max(READ_CHUNK));
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Room for an answer as large as the last one, so that one read can take all of it.
    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < self.expect {
            self.buf.reserve(self.expect);
        }
    }

    async fn read_answer(
        &mut self,
        limit: usize,
        offer: Option<Offer>,
    ) -> Result<Exchanged, Error> {
        self.make_room();
        let mut got_any = false;
        loop {
            let (head_len, status, framing, reusable, headers) = loop {
                if let Some(head) = parse_head(&self.buf)? {
                    break head;
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(Error::Malformed("response head too large".into()));
                }
                if self.fill(READ_CHUNK).await? == 0 {
                    return Err(Error::Closed {
                        partial: got_any || !self.buf.is_empty(),
                    });
                }
                got_any = true;
            };
            if status.is_informational() {
                // 100 Continue, 103 Early Hints: the real answer follows.
                self.buf.advance(head_len);
                continue;
            }
            if let (Some(offer), true) = (offer, status.is_success()) {
                let left = match framing {
                    Framing::Length(n) if n > limit => return Err(Error::TooLarge),
                    Framing::Length(n) if n >= offer.min_bytes => Some(Left::Length(n)),
                    Framing::Chunked => Some(Left::Chunk(ChunkAt::Size)),
                    Framing::UntilClose => Some(Left::UntilClose),
                    _ => None,
                };
                if let Some(left) = left {
                    self.buf.advance(head_len);
                    let reusable = reusable && left != Left::UntilClose;
                    let reply = UpstreamReply {
                        status,
                        headers,
                        body: Bytes::new(),
                    };
                    // Boxed: rare (large or chunked answers), and its state would make every
                    // exchange's future larger.
                    return Box::pin(self.read_offered(reply, left, reusable, offer, limit)).await;
                }
            }
            let (body, reusable) = match framing {
                Framing::Empty => {
                    self.buf.advance(head_len);
                    (Bytes::new(), reusable)
                }
                Framing::Length(n) => {
                    if n > limit {
                        return Err(Error::TooLarge);
                    }
                    while self.buf.len() < head_len + n {
                        let missing = head_len + n - self.buf.len();
                        if self.buf.capacity() - self.buf.len() < missing {
                            // The declared length is believed up to TRUST_AHEAD past what has
                            // arrived: a large answer takes one allocation, not a doubling
                            // (and a copy of all that came so far) every few reads.
                            self.buf.reserve(missing.min(TRUST_AHEAD));
                        }
                        if self.fill(missing).await? == 0 {
                            return Err(Error::Closed { partial: true });
                        }
                    }
                    self.expect = (head_len + n + 1).clamp(READ_CHUNK, TRUST_AHEAD);
                    let mut all = self.buf.split_to(head_len + n);
                    all.advance(head_len);
                    (all.freeze(), reusable)
                }
                Framing::Chunked => {
                    self.buf.advance(head_len);
                    (self.read_chunked(limit).await?, reusable)
                }
                Framing::UntilClose => {
                    while self.fill(READ_CHUNK).await? > 0 {
                        if self.buf.len() - head_len > limit {
                            return Err(Error::TooLarge);
                        }
                    }
                    let mut all = self.buf.split();
                    all.advance(head_len);
                    (all.freeze(), false)
                }
            };
            // Bytes beyond the answer: the connection is out of step; do not reuse it.
            let reusable = reusable && self.buf.is_empty();
            // The buffer shares its allocation with the body; after a large answer, let that
            // go with the body rather than keep it while the connection idles in the pool.
            if body.len() > KEEP_BUF || self.buf.capacity() > KEEP_BUF {
                self.buf = BytesMut::new();
            }
            return Ok(Exchanged {
                reply: UpstreamReply {
                    status,
                    headers,
                    body,
                },
                reusable,
                stream: None,
            });
        }
    }

    /// Reads the body of an answer offered to stream (its head consumed): pieces are
    /// gathered until the envelope shows a result and the answer is known to be large (then
    /// the stream begins), or the envelope shows it will not stream, or the body ends.
    async fn read_offered(
        &mut self,
        mut reply: UpstreamReply,
        mut left: Left,
        reusable: bool,
        offer: Offer,
        limit: usize,
    ) -> Result<Exchanged, Error> {
        let large = matches!(left, Left::Length(_));
        let mut got = BytesMut::new();
        let mut streamable = true;
        loop {
            if streamable {
                match result_start(&got, offer.id) {
                    Start::At(at) if large || got.len() >= offer.min_bytes => {
                        let read = got.len();
                        let first = got.split_off(at).freeze();
                        return Ok(Exchanged {
                            reply,
                            reusable: false,
                            stream: Some(Begun { first, left, read }),
                        });
                    }
                    Start::At(_) => {}
                    Start::Undecided if got.len() <= PREFIX_MAX => {}
                    Start::Undecided | Start::No => streamable = false,
                }
            }
            let Some(piece) = std::future::poll_fn(|cx| self.poll_piece(&mut left, cx)).await?
            else {
                break;
            };
            if got.len() + piece.len() > limit {
                return Err(Error::TooLarge);
            }
            if got.is_empty() {
                if let Left::Length(n) = left {
                    got.reserve(piece.len() + n.min(TRUST_AHEAD));
                }
            }
            got.extend_from_slice(&piece);
        }
        let reusable = reusable && self.buf.is_empty();
        if self.buf.capacity() > KEEP_BUF {
            self.buf = BytesMut::new();
        }
        reply.body = got.freeze();
        Ok(Exchanged {
            reply,
            reusable,
            stream: None,
        })
    }

    /// The next piece of a body read a piece at a time (`None` at its end); `left` says what
    /// is left of it and moves on. A piece is a slice of what was read, not a copy.
    pub(crate) fn poll_piece(
        &mut self,
        left: &mut Left,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, Error>> {
        loop {
            let have = self.buf.len();
            // What the buffer holds for this step, or `None` to read more.
            let step: Option<Option<Bytes>> = match left {
                Left::Done | Left::Length(0) => {
                    *left = Left::Done;
                    return Poll::Ready(Ok(None));
                }
                Left::Length(n) | Left::Chunk(ChunkAt::Data(n)) if have > 0 => {
                    let take = have.min(*n);
                    *n -= take;
                    if *left == Left::Chunk(ChunkAt::Data(0)) {
                        *left = Left::Chunk(ChunkAt::DataEnd);
                    }
                    Some(Some(self.buf.split_to(take).freeze()))
                }
                Left::UntilClose if have > 0 => Some(Some(self.buf.split().freeze())),
                Left::Chunk(ChunkAt::Size) => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((size_len, size))) => {
                        self.buf.advance(size_len);
                        *left = match usize::try_from(size) {
                            Ok(0) => Left::Chunk(ChunkAt::Trailers(0)),
                            Ok(size) => Left::Chunk(ChunkAt::Data(size)),
                            Err(_) => return Poll::Ready(Err(Error::TooLarge)),
                        };
                        continue;
                    }
                    Ok(httparse::Status::Partial) if have <= MAX_HEAD => None,
                    _ => return Poll::Ready(Err(Error::Malformed("invalid chunk size".into()))),
                },
                Left::Chunk(ChunkAt::DataEnd) if have >= 2 => {
                    if &self.buf[..2] != b"\r\n" {
                        return Poll::Ready(Err(Error::Malformed(
                            "chunk not followed by CRLF".into(),
                        )));
                    }
                    self.buf.advance(2);
                    *left = Left::Chunk(ChunkAt::Size);
                    continue;
                }
                Left::Chunk(ChunkAt::Trailers(seen)) => {
                    match self.buf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            self.buf.advance(2);
                            *left = Left::Done;
                            return Poll::Ready(Ok(None));
                        }
                        Some(line) if *seen + line + 2 <= MAX_HEAD => {
                            *seen += line + 2;
                            self.buf.advance(line + 2);
                            continue;
                        }
                        None if *seen + have <= MAX_HEAD => None,
                        _ => {
                            return Poll::Ready(Err(Error::Malformed("trailers too large".into())))
                        }
                    }
                }
                _ => None,
            };
            if let Some(piece) = step {
                return Poll::Ready(Ok(piece));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK {
                self.buf.reserve(STREAM_READ);
            }
            let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
            match std::task::ready!(std::future::Future::poll(read, cx)) {
                Ok(0) if *left == Left::UntilClose => {
                    *left = Left::Done;
                    return Poll::Ready(Ok(None));
                }
                Ok(0) => return Poll::Ready(Err(Error::Closed { partial: true })),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(Error::Io(e))),
            }
        }
    }

    /// The connection's timer, for a stream that outlives the exchange (made if it has none).
    pub(crate) fn take_timer(&mut self, deadline: Instant) -> Pin<Box<Sleep>> {
        match self.timer.take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Decodes a chunked body (the head already consumed); trailers are read and dropped.
    async fn read_chunked(&mut self, limit: usize) -> Result<Bytes, Error> {
        let mut out = BytesMut::new();
        loop {
            let (size_len, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(v)) => break v,
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(Error::Malformed("invalid chunk size".into())),
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(Error::Malformed("chunk size line too long".into()));
                }
                if self.fill(READ_CHUNK).await? == 0 {
                    return Err(Error::Closed { partial: true });
                }
            };
            if size == 0 {
                self.buf.advance(size_len);
                // Trailer fields, then an empty line: at most MAX_HEAD bytes of them in all.
                let mut trailers = 0usize;
                loop {
                    match self.buf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            self.buf.advance(2);
                            return Ok(out.freeze());
                        }
                        Some(line) => {
                            trailers += line + 2;
                            if trailers > MAX_HEAD {
                                return Err(Error::Malformed("trailers too large".into()));
                            }
                            self.buf.advance(line + 2);
                        }
                        None => {
                            if trailers + self.buf.len() > MAX_HEAD {
                                return Err(Error::Malformed("trailers too large".into()));
                            }
                            if self.fill(READ_CHUNK).await? == 0 {
                                return Err(Error::Closed { partial: true });
                            }
                        }
                    }
                }
            }
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > limit || out.len() + size > limit {
                return Err(Error::TooLarge);
            }
            let need = size_len + size + 2;
            while self.buf.len() < need {
                let missing = need - self.buf.len();
                if self.fill(missing).await? == 0 {
                    return Err(Error::Closed { partial: true });
                }
            }
            if &self.buf[size_len + size..need] != b"\r\n" {
                return Err(Error::Malformed("chunk not followed by CRLF".into()));
            }
            if out.is_empty() && size > 0 {
                out.reserve(size);
            }
            out.extend_from_slice(&self.buf[size_len..size_len + size]);
            self.buf.advance(need);
        }
    }
}

type Head = (usize, StatusCode, Framing, bool, HeaderMap);

/// Parses a complete response head at the start of `buf`; `None` when more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Header slots left uninitialized: the parser writes those it fills (no 3 KB memset per
    // answer).
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let head_len = match parsed {
        // The cap holds however the head arrived: in pieces or in one read.
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Err(Error::Malformed("response head too large".into()))
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Malformed(e.to_string())),
    };
    let code = resp.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| Error::Malformed(format!("status {code}")))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    // HTTP/1.0 closes after the answer unless it says otherwise.
    let mut reusable = resp.version == Some(1);
    let mut headers = HeaderMap::new();
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(h.value)
                .ok_or_else(|| Error::Malformed("invalid content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Malformed("conflicting content-length".into()));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked when it is the last coding applied.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Err(Error::Malformed("unsupported transfer-encoding".into()));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && resp.version == Some(0) {
                    reusable = true;
                }
            }
        }
        if !status.is_success() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) {
                headers.append(n, v);
            }
        }
    }
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if chunked {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        reusable &= length.is_none();
        Framing::Chunked
    } else if let Some(n) = length {
        if n == 0 {
            Framing::Empty
        } else {
            Framing::Length(n)
        }
    } else {
        Framing::UntilClose
    };
    Ok(Some((head_len, status, framing, reusable, headers)))
}

/// A `Content-Length` value: decimal digits only (RFC 9110 §8.6), around optional whitespace;
/// no sign, no list, nothing `str::parse` would also take.
fn content_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The request head for an upstream: `POST <target> HTTP/1.1` and `headers`, each line ending
/// in CRLF (the blank line, probe header and `content-length` are added per request).
pub(crate) fn request_head(target: &str, headers: &HeaderMap) -> Bytes {
    let mut out = Vec::with_capacity(64 + target.len() + headers.len() * 48);
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadline no test reaches.
    fn far() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    fn framing(head: &str) -> (StatusCode, &'static str, bool) {
        let (_, status, f, reusable, _) = parse_head(head.as_bytes()).unwrap().unwrap();
        let f = match f {
            Framing::Empty => "empty",
            Framing::Length(_) => "length",
            Framing::Chunked => "chunked",
            Framing::UntilClose => "close",
        };
        (status, f, reusable)
    }

    #[test]
    fn heads_say_how_the_body_ends_and_whether_to_keep_the_connection() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            (StatusCode::OK, "length", true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            (StatusCode::OK, "chunked", true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nconnection: Keep-Alive, close\r\n\r\n"),
            (StatusCode::OK, "close", false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"),
            (StatusCode::OK, "length", false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n"),
            (StatusCode::OK, "length", true)
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n"),
            (StatusCode::NO_CONTENT, "empty", true)
        );
        assert_eq!(
            framing("HTTP/1.1 100 Continue\r\n\r\n"),
            (StatusCode::CONTINUE, "empty", true)
        );
        // Chunked wins over a content-length, and such a connection is not reused.
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"),
            (StatusCode::OK, "chunked", false)
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_heads_are_errors() {
        for head in [
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 999999 X\r\n\r\n",
        ] {
            assert!(parse_head(head.as_bytes()).is_err(), "{head:?}");
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "x-a: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(parse_head(many.as_bytes()).is_err(), "too many headers");
        let enough = format!(
            "HTTP/1.1 200 OK\r\n{}content-length: 0\r\n\r\n",
            "x-a: 1\r\n".repeat(MAX_HEADERS - 1)
        );
        assert!(parse_head(enough.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn only_non_success_heads_keep_their_headers() {
        let (.., h) =
            parse_head(b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\ncontent-length: 0\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(h.get("retry-after").unwrap(), "7");
        let (.., h) = parse_head(b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.is_empty());
    }

    #[test]
    fn request_heads() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("node:8545"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        assert_eq!(
            &request_head("/rpc?x=1", &h)[..],
            b"POST /rpc?x=1 HTTP/1.1\r\nhost: node:8545\r\ncontent-type: application/json\r\n"
        );
    }

    /// A server that answers each request with the next of `answers`, byte for byte, split
    /// into small writes; returns the client connection.
    /// A server that answers each request with `{}` after the given delay.
    async fn serve_after(delays: Vec<std::time::Duration>) -> Conn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 4096];
            for delay in delays {
                // Each request is small: one read carries all of it.
                if s.read(&mut b).await.unwrap_or(0) == 0 {
                    return;
                }
                tokio::time::sleep(delay).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
            }
            // Hold the connection open until the client is done.
            let _ = s.read(&mut b).await;
        });
        Conn::new(TcpStream::connect(addr).await.unwrap())
    }

    #[tokio::test]
    async fn each_exchange_gets_its_own_deadline_from_the_one_timer() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let head = b"POST / HTTP/1.1\r\nhost: x\r\n";
        let mut c = serve_after(vec![ms(0), ms(600), ms(5000)]).await;
        // Arms the timer for 300 ms from now.
        let a = c
            .exchange(head, None, b"{}", 100, Instant::now() + ms(300), None)
            .await;
        assert_eq!(a.unwrap().reply.body.as_ref(), b"{}");
        // Answered after 600 ms: the timer fires at 300 ms for the first exchange's deadline
        // and must be armed again for this one's.
        let a = c
            .exchange(head, None, b"{}", 100, Instant::now() + ms(3000), None)
            .await;
        assert_eq!(a.unwrap().reply.body.as_ref(), b"{}");
        // An earlier deadline than the timer's (3 s): it must end at its own, 200 ms.
        let started = Instant::now();
        let a = c
            .exchange(head, None, b"{}", 100, started + ms(200), None)
            .await;
        assert!(matches!(a, Err(Error::TimedOut)), "{a:?}");
        assert!(started.elapsed() < ms(2000), "{:?}", started.elapsed());
    }

    /// Reads one request (its head and its content-length body) off `s`; `None` when the
    /// client closed first. The client sends the next request only after the answer, so no
    /// byte beyond it may have come.
    async fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut req = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            let n = s.read(&mut b).await.unwrap();
            if n == 0 {
                return None;
            }
            req.extend_from_slice(&b[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            if req.len() >= end + 4 + len {
                assert_eq!(req.len(), end + 4 + len, "bytes beyond the request");
                return Some(req);
            }
        }
    }

    async fn serve(answers: Vec<&'static [u8]>) -> Conn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for answer in answers {
                if read_request(&mut s).await.is_none() {
                    return;
                }
                for piece in answer.chunks(7) {
                    s.write_all(piece).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        Conn::new(TcpStream::connect(addr).await.unwrap())
    }

    /// A small request whose answer may be up to 1 MiB.
    async fn post_up_to_1mib(c: &mut Conn) -> Exchanged {
        let head = b"POST / HTTP/1.1\r\nhost: x\r\n";
        c.exchange(head, None, b"{}", 1 << 20, far(), None)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn requests_small_and_large_arrive_byte_for_byte() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            while let Some(req) = read_request(&mut s).await {
                tx.send(req).unwrap();
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await
                    .unwrap();
            }
        });
        let mut c = Conn::new(TcpStream::connect(addr).await.unwrap());
        let head = b"POST /k HTTP/1.1\r\nhost: x\r\n";
        // Below, at and above the size copied into one buffer, with and without a probe header.
        let at = COPY_MAX - head.len() - "content-length: 4035\r\n\r\n".len();
        for (n, probe) in [
            (40, None),
            (at, None),
            (at + 1, Some(("x-detour-probe", "head"))),
            (3 * COPY_MAX, None),
            (10, Some(("x-detour-probe", "head"))),
        ] {
            let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            let a = c
                .exchange(head, probe, &body, 100, far(), None)
                .await
                .unwrap();
            assert_eq!(&a.reply.body[..], b"{}");
            let mut want = head.to_vec();
            if let Some((k, v)) = probe {
                want.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            }
            want.extend_from_slice(format!("content-length: {n}\r\n\r\n").as_bytes());
            want.extend_from_slice(&body);
            let got = rx.recv().await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{n}"
            );
            // The copy path's buffer is kept, within its bound.
            assert!(c.out.capacity() <= 2 * COPY_MAX, "{}", c.out.capacity());
        }
        c.release_buffer();
        assert_eq!((c.out.capacity(), c.buffer_capacity()), (0, 0));
    }

    #[tokio::test]
    async fn content_length_chunked_and_informational_answers_are_read_whole() {
        let mut c = serve(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"a\":\"b c\"}",
            b"HTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n7\r\n:\"b c\"}\r\n0\r\ntrailer: t\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]",
        ])
        .await;
        let head = b"POST / HTTP/1.1\r\nhost: x\r\n";
        let a = c
            .exchange(head, None, b"{}", 1000, far(), None)
            .await
            .unwrap();
        assert_eq!(
            (a.reply.status, &a.reply.body[..], a.reusable),
            (StatusCode::OK, &b"{\"a\":\"b c\"}"[..], true)
        );
        assert!(c.idle_usable());
        let a = c
            .exchange(
                head,
                Some(("x-detour-probe", "head")),
                b"{}",
                1000,
                far(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            (a.reply.status, &a.reply.body[..], a.reusable),
            (StatusCode::OK, &b"{\"a\":\"b c\"}"[..], true)
        );
        let a = c
            .exchange(head, None, b"{}", 1000, far(), None)
            .await
            .unwrap();
        assert_eq!((&a.reply.body[..], a.reusable), (&b"[]"[..], false));
    }

    #[tokio::test]
    async fn offered_answers_are_read_whole_or_begin_a_stream() {
        fn leak(s: String) -> &'static [u8] {
            Box::leak(s.into_bytes().into_boxed_slice())
        }
        fn chunked(body: &str, size: usize) -> String {
            let mut out = String::from("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            for piece in body.as_bytes().chunks(size) {
                let piece = std::str::from_utf8(piece).unwrap();
                out += &format!("{:x}\r\n{piece}\r\n", piece.len());
            }
            out + "0\r\nx-trailer: t\r\n\r\n"
        }
        let error = r#"{"jsonrpc":"2.0","id":0,"error":{"code":1,"message":"not streamed"}}"#;
        let result = format!("[{}]", r#""0xabcdef","#.repeat(20) + "1");
        let answer = format!(r#"{{"jsonrpc":"2.0","id":0,"result":{result}}}"#);
        let mut c = serve(vec![
            // Small: read whole, the connection reusable.
            leak(chunked(r#"{"id":0,"result":[1]}"#, 5)),
            // Large, but an error: whole.
            leak(format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{error}",
                error.len()
            )),
            // Large results, declared and chunked: the stream begins.
            leak(format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            )),
        ])
        .await;
        let head = b"POST / HTTP/1.1\r\nhost: x\r\n";
        let offer = Some(Offer {
            min_bytes: 60,
            id: 0,
        });
        let a = c
            .exchange(head, None, b"{}", 1000, far(), offer)
            .await
            .unwrap();
        assert!(a.stream.is_none());
        assert_eq!(
            (&a.reply.body[..], a.reusable),
            (&br#"{"id":0,"result":[1]}"#[..], true)
        );
        let a = c
            .exchange(head, None, b"{}", 1000, far(), offer)
            .await
            .unwrap();
        assert!(a.stream.is_none());
        assert_eq!((&a.reply.body[..], a.reusable), (error.as_bytes(), true));
        for framing in ["length", "chunked"] {
            if framing == "chunked" {
                c = serve(vec![leak(chunked(&answer, 9))]).await;
            }
            let a = c
                .exchange(head, None, b"{}", 1000, far(), offer)
                .await
                .unwrap();
            assert!(!a.reusable);
            let Some(Begun {
                first, mut left, ..
            }) = a.stream
            else {
                panic!("{framing}: not streamed")
            };
            let mut rest = first.to_vec();
            while let Some(piece) = std::future::poll_fn(|cx| c.poll_piece(&mut left, cx))
                .await
                .unwrap()
            {
                rest.extend_from_slice(&piece);
            }
            assert_eq!(
                String::from_utf8(rest).unwrap(),
                format!("{result}}}"),
                "{framing}"
            );
            assert_eq!(left, Left::Done);
        }
        // Too large for the limit, declared: refused before any of it is read.
        let big = "HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n";
        let mut c = serve(vec![leak(big.to_string())]).await;
        let r = c.exchange(head, None, b"{}", 1000, far(), offer).await;
        assert!(matches!(r, Err(Error::TooLarge)), "{r:?}");
        // A chunked body cut short.
        let cut = chunked(&answer, 9);
        let mut c = serve(vec![leak(cut[..cut.len() / 2].to_string())]).await;
        let a = c
            .exchange(head, None, b"{}", 1000, far(), offer)
            .await
            .unwrap();
        let mut left = a.stream.unwrap().left;
        let end = loop {
            match std::future::poll_fn(|cx| c.poll_piece(&mut left, cx)).await {
                Ok(Some(_)) => {}
                other => break other,
            }
        };
        assert!(
            matches!(end, Err(Error::Closed { partial: true })),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn a_large_answer_leaves_no_large_buffer_behind() {
        let big: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 200002\r\n\r\n\"{}\"",
                "a".repeat(200_000)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let mut c = serve(vec![big]).await;
        let a = post_up_to_1mib(&mut c).await;
        assert_eq!((a.reply.body.len(), a.reusable), (200_002, true));
        assert!(
            a.reply.body.is_unique(),
            "the connection still holds the body's buffer"
        );
    }

    #[tokio::test]
    async fn the_first_read_has_room_for_an_answer_as_large_as_the_last() {
        fn answer(body_len: usize) -> &'static [u8] {
            let text = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n\r\n{}",
                "a".repeat(body_len)
            );
            Box::leak(text.into_bytes().into_boxed_slice())
        }
        let head_len = |n: usize| format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n").len();
        let sizes = [14_000, 2, 14_000, 100_000, 1_000_000, 2];
        let mut c = serve(sizes.iter().map(|&n| answer(n)).collect()).await;
        assert_eq!(c.expect, READ_CHUNK);
        // Each answer sets the room the next one's first read gets: its own size, within
        // READ_CHUNK..=TRUST_AHEAD.
        let expected = sizes.map(|n| (head_len(n) + n + 1).clamp(READ_CHUNK, TRUST_AHEAD));
        assert_eq!(expected[1], READ_CHUNK);
        for (n, expect) in sizes.into_iter().zip(expected) {
            let a = post_up_to_1mib(&mut c).await;
            assert_eq!(a.reply.body.len(), n);
            assert_eq!(c.expect, expect, "after {n} bytes");
            drop(a);
            // Even after the pool let its buffer go.
            c.release_buffer();
            c.make_room();
            assert!(
                c.buffer_capacity() >= expect,
                "{} < {expect}",
                c.buffer_capacity()
            );
            c.release_buffer();
        }
    }

    #[tokio::test]
    async fn a_declared_length_is_allocated_at_most_trust_ahead_of_what_arrived() {
        // 100 MiB declared, 10 bytes sent, then the upstream stalls.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 104857600\r\n\r\n0123456789")
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        });
        let mut c = Conn::new(TcpStream::connect(addr).await.unwrap());
        let head = b"POST / HTTP/1.1\r\nhost: x\r\n";
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(200);
        let r = c.exchange(head, None, b"{}", 200 << 20, soon, None).await;
        assert!(r.is_err());
        assert!(
            c.buffer_capacity() <= TRUST_AHEAD + KEEP_BUF,
            "{} bytes reserved for 10 that arrived",
            c.buffer_capacity()
        );
        // Bodies that do arrive grow the buffer as they come, and are read whole.
        let mut c = serve(vec![answer_of(300_000)]).await;
        let a = c
            .exchange(head, None, b"{}", 1 << 20, far(), None)
            .await
            .unwrap();
        assert_eq!(a.reply.body.len(), 300_000);
    }

    fn answer_of(len: usize) -> &'static [u8] {
        let mut v = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").into_bytes();
        v.resize(v.len() + len, b'7');
        Box::leak(v.into_boxed_slice())
    }

    #[tokio::test]
    async fn limits_and_broken_answers_are_errors() {
        let head = b"POST / HTTP/1.1\r\nhost: x\r\n";
        let mut c = serve(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"a\":\"b c\"}",
        ])
        .await;
        assert!(matches!(
            c.exchange(head, None, b"{}", 10, far(), None).await,
            Err(Error::TooLarge)
        ));
        let mut c = serve(vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"]).await;
        assert!(matches!(
            c.exchange(head, None, b"{}", 10, far(), None).await,
            Err(Error::TooLarge)
        ));
        let mut c = serve(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"a\""]).await;
        assert!(matches!(
            c.exchange(head, None, b"{}", 100, far(), None).await,
            Err(Error::Closed { partial: true })
        ));
        let mut c = serve(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ])
        .await;
        assert!(matches!(
            c.exchange(head, None, b"{}", 100, far(), None).await,
            Err(Error::Malformed(_))
        ));
        let mut c = serve(vec![]).await;
        assert!(matches!(
            c.exchange(head, None, b"{}", 100, far(), None).await,
            Err(Error::Closed { partial: false }) | Err(Error::Io(_))
        ));
        // Content-Length is digits only.
        for bad in [
            "+5",
            "-5",
            "5, 5",
            "0x5",
            "5 5",
            "",
            "99999999999999999999999",
        ] {
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n12345");
            let mut c = serve(vec![Box::leak(answer.into_bytes().into_boxed_slice())]).await;
            assert!(
                matches!(
                    c.exchange(head, None, b"{}", 100, far(), None).await,
                    Err(Error::Malformed(_))
                ),
                "content-length {bad:?}"
            );
        }
        assert_eq!(content_length(b" 12 "), Some(12));
        // A head over the cap is refused however it arrives (here in one piece).
        let long = format!(
            "HTTP/1.1 200 OK\r\nx-pad: {}\r\ncontent-length: 2\r\n\r\n{{}}",
            "a".repeat(MAX_HEAD)
        );
        assert!(matches!(
            parse_head(long.as_bytes()),
            Err(Error::Malformed(m)) if m.contains("too large")
        ));
        // Trailers are capped in total, not per buffer.
        let mut endless =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n".to_vec();
        for _ in 0..(2 * MAX_HEAD / 16) {
            endless.extend_from_slice(b"x-t: 0123456789\r\n");
        }
        let mut c = serve(vec![Box::leak(endless.into_boxed_slice())]).await;
        assert!(matches!(
            c.exchange(head, None, b"{}", 1 << 20, far(), None).await,
            Err(Error::Malformed(m)) if m.contains("trailers")
        ));
        // A body delimited by the close.
        let mut c = serve(vec![b"HTTP/1.1 200 OK\r\n\r\n{\"until\":\"close\"}"]).await;
        let a = c
            .exchange(head, None, b"{}", 100, far(), None)
            .await
            .unwrap();
        assert_eq!(
            (&a.reply.body[..], a.reusable),
            (&b"{\"until\":\"close\"}"[..], false)
        );
    }
}
