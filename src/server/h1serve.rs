//! The HTTP/1.1 fast path for client connections (plain, or TLS that agreed on `http/1.1` by
//! ALPN), with hyper behind it for the rest.
//!
//! A JSON-RPC call is nearly always the same shape: `POST`, HTTP/1.1, a `content-length` body
//! that arrives with its head. For those, this module does the whole exchange in the
//! connection's task: reads into one buffer, parses the head with `httparse` (the parser hyper
//! uses), hands the request to [`Detour::serve_http`] and writes the answer with one `write`.
//! hyper's server connection costs about a quarter of the instructions of a proxied request
//! (see docs/performance-history.md).
//!
//! Anything else — another method, HTTP/1.0, `transfer-encoding`, `expect`, `upgrade`, not
//! exactly one `host`, a body that has not fully arrived with its head, a head that does not
//! parse — is handed over, with
//! every byte read so far, to hyper's HTTP/1 server for the rest of the connection
//! ([`End::Handover`]). So the fast path never has to answer an odd request itself, and an odd
//! request gets exactly hyper's answer.
//!
//! Kept as hyper keeps it: keep-alive by default, `connection: close` from either side ends the
//! connection after the answer, pipelined requests are answered in order, a head (or the wait
//! for the next one) that takes longer than `server.header_read_timeout` ends the connection,
//! answers carry `date` and `content-length` (none on 1xx, 204 and 304), and on shutdown an idle
//! connection closes at once while a request in flight finishes with `connection: close`.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use smallvec::SmallVec;

use crate::rpc::jsonrpc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use crate::client::stream::ResultStream;
use crate::proxy::response::{AnsweredBy, ClientReply, RpcBody, UPSTREAM_HEADER};
use crate::proxy::service::{Body, Detour};

/// Headers beyond this many: handed over (hyper answers 431).
const MAX_HEADERS: usize = 100;
/// A head still incomplete at this size is handed over (hyper applies its own limit).
const MAX_HEAD: usize = 64 * 1024;
/// The read buffer's size, as hyper's.
const READ_CHUNK: usize = 8 * 1024;
/// Bodies up to this size are copied behind the head and go in one plain `write` (a little
/// less kernel time than a vectored write); larger ones go as a second slice of a vectored
/// write.
const COPY_BODY: usize = 2 * 1024;
/// A request of up to this many bytes (head and body) whose body was not all in the buffer is
/// read on if the rest has already arrived (a request larger than one read, sent whole: a
/// batch of 100 calls is some 12 KB); larger ones, and bodies still on their way, go to hyper.
const READ_AHEAD_BODY: usize = 64 * 1024;
// A request read ahead never reaches the head limit (which answers 431).
const _: () = assert!(READ_AHEAD_BODY <= MAX_HEAD);
/// The buffer for answer heads (and small bodies) is kept between requests up to this size,
/// so an idle connection holds little.
const KEEP_OUT: usize = 4 * 1024;

/// How a connection's fast path ended.
pub(crate) enum End<IO> {
    /// The connection is finished (the client closed it, asked to, timed out, or shutdown).
    Closed(std::io::Result<()>),
    /// A request the fast path does not serve: hyper's server takes the connection, starting
    /// with the bytes already read.
    Handover(Rewind<IO>),
}

/// Serves `io` until it ends or a request needs hyper. `stop` turns `true` at shutdown.
pub(crate) async fn serve<IO>(
    io: IO,
    peer: SocketAddr,
    detour: Detour,
    stop: watch::Receiver<bool>,
) -> End<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::new(),
    };
    // One timer and one shutdown wait for the whole connection, armed once: registering a
    // timer and a waiter for each request, and removing them after it, cost more than the
    // rest of reading a request. The timer is lazy: when it fires, it checks the deadline of
    // the wait in progress, and is armed again for that if the connection was busy meanwhile.
    let sleep = tokio::time::sleep(detour.pool().config.server.header_read_timeout);
    tokio::pin!(sleep);
    let mut stopping = stop.clone();
    let stopped = stopping.changed();
    tokio::pin!(stopped);
    // When the wait for the next head began; each may last up to header_read_timeout. After
    // an answer, its `ready` time stands for it (the write in between takes microseconds).
    let mut waiting_since = tokio::time::Instant::now();
    loop {
        // Read until the buffer holds a complete request the fast path serves. While a body
        // has not all been read, a read must not wait.
        let mut body_pending = false;
        let (req, client_close) = loop {
            match take_request(&mut conn.buf) {
                Taken::Request(req, close) => break (req, close),
                Taken::Other => return End::Handover(conn.into_rewind()),
                Taken::Body(total) => {
                    // Room for all of it; what is already in the socket is read below without
                    // waiting: a body still on its way is hyper's to wait for.
                    conn.buf.reserve(total - conn.buf.len());
                    body_pending = true;
                }
                Taken::Partial => {}
            }
            if conn.buf.len() >= MAX_HEAD {
                // Answered here, as hyper answers a head over its limit: handed over, the head
                // would get a second header_read_timeout (and hyper's larger limit).
                tracing::debug!(%peer, "request head over 64 KiB; answered 431");
                let resp = Response::builder()
                    .status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
                    .body(Body::default())
                    .unwrap_or_default();
                return End::Closed(conn.respond(resp, true).await.map(|_| ()));
            }
            let idle = conn.buf.is_empty();
            if idle && *stop.borrow() {
                return End::Closed(Ok(()));
            }
            // A full READ_CHUNK of room for each read: after a request was split off the
            // front, what is left of the buffer may be small, and a request that arrived
            // whole would be read in part and handed over (its body "still on its way") with
            // the rest of the connection: a 5.6 KB batch, every time but the first.
            if conn.buf.capacity() - conn.buf.len() < READ_CHUNK {
                conn.buf.reserve(READ_CHUNK);
            }
            let read = tokio::select! {
                biased;
                read = conn.io.read_buf(&mut conn.buf) => read,
                // Nothing more has arrived of a body: hyper's, as before.
                () = std::future::ready(()), if body_pending => return End::Handover(conn.into_rewind()),
                // Shutdown: an idle connection closes now (one mid-head finishes its head).
                _ = &mut stopped, if idle => return End::Closed(Ok(())),
                () = &mut sleep => {
                    let deadline =
                        waiting_since + detour.pool().config.server.header_read_timeout;
                    if tokio::time::Instant::now() < deadline {
                        // Armed for an earlier wait: this one has time left.
                        sleep.as_mut().reset(deadline);
                        continue;
                    }
                    tracing::debug!(%peer, "no complete request head within server.header_read_timeout; closed");
                    return End::Closed(Ok(()));
                }
            };
            match read {
                Ok(0) if idle => return End::Closed(Ok(())),
                Ok(0) => {
                    // Closed mid-head: hyper answers that the way it does (or not at all).
                    return End::Handover(conn.into_rewind());
                }
                Ok(_) => {}
                Err(e) => return End::Closed(Err(e)),
            }
        };
        // Not boxed: the answer's state (4.4 KB) lives in the connection's task, which costs
        // memory on idle connections (3 MiB per 1 000) but saves an allocation and the moves
        // of a box on every request; this path serves nearly all requests.
        let answer = detour.answer(req, Some(peer), true);
        tokio::pin!(answer);
        // While the answer is prepared, the socket is watched as hyper watches it: a client
        // that hangs up cancels its request (and the upstream attempt); bytes of a pipelined
        // next request are kept for it.
        let reply = loop {
            let watching = conn.buf.len() < MAX_HEAD;
            if watching && conn.buf.capacity() - conn.buf.len() < READ_CHUNK / 8 {
                conn.buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                reply = &mut answer => break reply,
                read = conn.io.read_buf(&mut conn.buf), if watching => match read {
                    Ok(0) => {
                        tracing::debug!(%peer, "client hung up before its answer; request cancelled");
                        return End::Closed(Ok(()));
                    }
                    Ok(_) => {}
                    Err(e) => return End::Closed(Err(e)),
                },
            }
        };
        let close = client_close || *stop.borrow();
        let written = match reply {
            ClientReply::Rpc {
                body,
                upstream,
                cache,
                ready,
            } => {
                waiting_since = ready;
                conn.respond_rpc(body, upstream, cache, close).await
            }
            ClientReply::Http(resp) => {
                let written = conn.respond(resp, close).await;
                waiting_since = tokio::time::Instant::now();
                written
            }
        };
        match written {
            Ok(true) => {}
            Ok(false) => return End::Closed(Ok(())),
            Err(e) => return End::Closed(Err(e)),
        }
    }
}

struct Conn<IO> {
    io: IO,
    /// Read and not yet consumed: the start of the next request, if any.
    buf: BytesMut,
    /// Answer heads are written here (with small bodies behind them).
    out: Vec<u8>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    fn into_rewind(self) -> Rewind<IO> {
        Rewind {
            prefix: self.buf.freeze(),
            io: self.io,
        }
    }

    /// Writes the answer to JSON-RPC calls, as [`ClientReply::into_response`] would have it; `Ok(false)`
    /// when the connection is to close after it.
    async fn respond_rpc(
        &mut self,
        body: Option<RpcBody>,
        upstream: AnsweredBy,
        cache: Option<&'static str>,
        close: bool,
    ) -> std::io::Result<bool> {
        if let Some(RpcBody::Stream { id, stream }) = body {
            // Boxed: rare, and its state would make every connection's future larger.
            return Box::pin(self.stream_result(&id, stream, upstream, cache, close)).await;
        }
        let status = match body {
            Some(_) => StatusCode::OK,
            None => StatusCode::NO_CONTENT,
        };
        self.start(status);
        if body.is_some() {
            self.header(b"content-type", b"application/json");
        }
        upstream.with_bytes(|v| self.header(UPSTREAM_HEADER.as_bytes(), v));
        if let Some(v) = cache {
            self.header(crate::cache::CACHE_HEADER.as_bytes(), v.as_bytes());
        }
        let body = body.unwrap_or(RpcBody::Whole(Bytes::new()));
        self.finish(status, &body, close, false).await
    }

    /// Writes an answer whose result is streamed from its upstream: chunked, each piece as it
    /// arrives (behind the envelope's start), then the envelope's `}` once the whole answer
    /// has arrived well-formed. If it does not, the connection is cut without the last chunk,
    /// so the client sees an incomplete answer (an error), never a short valid one.
    async fn stream_result(
        &mut self,
        id: &[u8],
        mut stream: Box<ResultStream>,
        upstream: AnsweredBy,
        cache: Option<&'static str>,
        close: bool,
    ) -> std::io::Result<bool> {
        self.start(StatusCode::OK);
        self.header(b"content-type", b"application/json");
        upstream.with_bytes(|v| self.header(UPSTREAM_HEADER.as_bytes(), v));
        if let Some(v) = cache {
            self.header(crate::cache::CACHE_HEADER.as_bytes(), v.as_bytes());
        }
        self.header(b"transfer-encoding", b"chunked");
        if close {
            self.header(b"connection", b"close");
        }
        self.header(b"date", &http_date());
        self.out.extend_from_slice(b"\r\n");
        // Written with the first piece: the head, and the envelope's start.
        let mut start = std::mem::take(&mut self.out);
        let lead = start.len();
        jsonrpc::write_result_start(&mut start, id);
        let first = next_piece(&mut stream).await;
        let (piece, end): (Bytes, &[u8]) = match first? {
            Some(piece) => (piece, b"\r\n"),
            // Cannot happen (a result has at least its first byte): the envelope, whole.
            None => (Bytes::from_static(b"}"), b"\r\n0\r\n\r\n"),
        };
        let mut line = [0u8; 20];
        let line = chunk_line(&mut line, start.len() - lead + piece.len());
        let parts = &mut [
            IoSlice::new(&start[..lead]),
            IoSlice::new(line),
            IoSlice::new(&start[lead..]),
            IoSlice::new(&piece),
            IoSlice::new(end),
        ];
        let written = write_all_vectored(&mut self.io, parts).await;
        start.clear();
        self.out = start;
        written?;
        if end.len() == 2 {
            while let Some(piece) = next_piece(&mut stream).await? {
                let mut line = [0u8; 20];
                let line = chunk_line(&mut line, piece.len());
                let parts = &mut [
                    IoSlice::new(line),
                    IoSlice::new(&piece),
                    IoSlice::new(b"\r\n"),
                ];
                write_all_vectored(&mut self.io, parts).await?;
            }
            self.io.write_all(b"1\r\n}\r\n0\r\n\r\n").await?;
        }
        if self.out.capacity() > KEEP_OUT {
            self.out = Vec::new();
        }
        if close {
            let _ = self.io.shutdown().await;
        }
        Ok(!close)
    }

    /// Writes the answer; `Ok(false)` when the connection is to close after it.
    async fn respond(&mut self, resp: Response<Body>, close: bool) -> std::io::Result<bool> {
        let (parts, body) = resp.into_parts();
        let body = full_bytes(body).await;
        let close = close
            || parts
                .headers
                .get(CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        self.start(parts.status);
        for (name, value) in &parts.headers {
            if name == CONTENT_LENGTH || (name == CONNECTION && close) {
                continue;
            }
            self.header(name.as_str().as_bytes(), value.as_bytes());
        }
        let has_date = parts.headers.contains_key(DATE);
        self.finish(parts.status, &RpcBody::Whole(body), close, has_date)
            .await
    }

    /// Starts an answer head: the status line.
    fn start(&mut self, status: StatusCode) {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Adds one header line to the head.
    fn header(&mut self, name: &[u8], value: &[u8]) {
        let out = &mut self.out;
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }

    /// Ends the head (`content-length`, `connection: close` when `close`, `date` unless the
    /// answer has one) and writes it with the body.
    async fn finish(
        &mut self,
        status: StatusCode,
        body: &RpcBody,
        close: bool,
        has_date: bool,
    ) -> std::io::Result<bool> {
        // 1xx, 204 and 304 have no body and no content-length (RFC 9110 §8.6).
        let bodyless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let out = &mut self.out;
        let len = if bodyless { 0 } else { body.len() };
        if !bodyless {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        if !has_date {
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(&http_date());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let [a, b] = if bodyless {
            [&[][..], &[][..]]
        } else {
            body.write_start(out)
        };
        if len <= COPY_BODY {
            out.extend_from_slice(a);
            out.extend_from_slice(b);
            self.io.write_all(out).await?;
        } else {
            let parts = &mut [IoSlice::new(out), IoSlice::new(a), IoSlice::new(b)];
            write_all_vectored(&mut self.io, parts).await?;
        }
        if self.out.capacity() > KEEP_OUT {
            self.out = Vec::new();
        }
        if close {
            let _ = self.io.shutdown().await;
        }
        Ok(!close)
    }
}

/// The next piece of a streamed result; an error (logged) when the answer broke off.
async fn next_piece(stream: &mut ResultStream) -> std::io::Result<Option<Bytes>> {
    match stream.next().await {
        Some(Ok(piece)) => Ok(Some(piece)),
        None => Ok(None),
        Some(Err(why)) => {
            tracing::warn!(
                upstream = &*stream.upstream,
                sent_bytes = stream.sent,
                "a streamed answer broke off ({why}); the client's connection is cut"
            );
            Err(std::io::Error::other(why))
        }
    }
}

/// A chunk's size line (`<hex>\r\n`) in `buf`.
fn chunk_line(buf: &mut [u8; 20], size: usize) -> &[u8] {
    let digits = format!("{size:x}");
    let n = digits.len();
    buf[..n].copy_from_slice(digits.as_bytes());
    buf[n..n + 2].copy_from_slice(b"\r\n");
    &buf[..n + 2]
}

async fn write_all_vectored<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !bufs.is_empty() {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// The bytes of a `Full` body (it has one frame, or none).
async fn full_bytes(mut body: Full<Bytes>) -> Bytes {
    match body.frame().await {
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// The `date` header's value, formatted once a second (as hyper does).
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        let n = formatted.len().min(29);
        text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        c.set((secs, text));
        text
    })
}

/// The request headers the service reads on a POST, which are all the request it gets carries:
/// `origin` (CORS), `authorization` (API keys), `cache-control` and `pragma` (a client asking
/// for fresh answers). The body's length is the body's own, the connection's headers are this
/// module's business, and nothing else is read. A request with none of them (most) gets an
/// empty header map, which allocates nothing.
const PASSED_ON: [&[u8]; 4] = [b"origin", b"authorization", b"cache-control", b"pragma"];

/// Where each passed-on header's name and value are in the buffer: (name at, length, value
/// at, length).
type Spans = SmallVec<[(usize, usize, usize, usize); 4]>;

// Returned and matched at once; boxing the request would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Taken {
    /// More bytes are needed.
    Partial,
    /// A request, and whether the client asked to close after it.
    Request(Request<Body>, bool),
    /// A head whose body of this many bytes in all (head included, at most
    /// [`READ_AHEAD_BODY`]) has not fully been read: read what has arrived, or hand over.
    Body(usize),
    /// Not for the fast path.
    Other,
}

/// Takes one complete request off the front of `buf`, if there is one the fast path serves.
fn take_request(buf: &mut BytesMut) -> Taken {
    if buf.is_empty() {
        return Taken::Partial;
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Taken::Partial,
        Err(_) => return Taken::Other,
    };
    if parsed.method != Some("POST") || parsed.version != Some(1) {
        return Taken::Other;
    }
    // Offsets into `buf`, so the header values can share the buffer's allocation.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let path = at(parsed.path.unwrap_or("").as_bytes());
    let mut body_len: Option<usize> = None;
    let mut close = false;
    let mut spans: Spans = SmallVec::new();
    let mut hosts = 0u32;
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            match (body_len, parse_length(h.value)) {
                (None, Some(n)) => body_len = Some(n),
                // Repeated or not a number: hyper decides.
                _ => return Taken::Other,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !h.value.eq_ignore_ascii_case(b"keep-alive") {
                return Taken::Other;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Taken::Other;
        } else if PASSED_ON.iter().any(|p| name.eq_ignore_ascii_case(p)) {
            let (n, nl) = at(name);
            let (v, vl) = at(h.value);
            spans.push((n, nl, v, vl));
        }
    }
    if hosts != 1 {
        // Not exactly one Host: hyper's side answers 400, as for any HTTP/1.1 request.
        return Taken::Other;
    }
    let body_len = body_len.unwrap_or(0);
    let Some(total) = head_len.checked_add(body_len) else {
        return Taken::Other;
    };
    if buf.len() < total {
        // Not all read: what has arrived is read at once by the caller; a body still on its
        // way goes to hyper (with server.body_read_timeout).
        return if total <= READ_AHEAD_BODY {
            Taken::Body(total)
        } else {
            Taken::Other
        };
    }
    let bytes = buf.split_to(total).freeze();
    match request(&bytes, head_len, path, &spans) {
        Some(req) => Taken::Request(req, close),
        None => {
            // Not valid for `http` after all: put the bytes back for hyper (a rare path).
            let mut restored = BytesMut::with_capacity(bytes.len() + buf.len());
            restored.extend_from_slice(&bytes);
            restored.extend_from_slice(buf);
            *buf = restored;
            Taken::Other
        }
    }
}

/// The request in `bytes` (head, then body), its header values sharing their allocation.
fn request(
    bytes: &Bytes,
    head_len: usize,
    path: (usize, usize),
    spans: &[(usize, usize, usize, usize)],
) -> Option<Request<Body>> {
    let mut req = Request::new(Full::new(bytes.slice(head_len..)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = Uri::from_maybe_shared(bytes.slice(path.0..path.0 + path.1)).ok()?;
    let headers = req.headers_mut();
    for &(n, nl, v, vl) in spans {
        let name = HeaderName::from_bytes(&bytes[n..n + nl]).ok()?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(v..v + vl)).ok()?;
        headers.append(name, value);
    }
    Some(req)
}

/// A `content-length` value: digits only.
fn parse_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// The connection for hyper: first the bytes already read, then the socket.
pub(crate) struct Rewind<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Rewind<IO> {
    /// `io`, whose reads first return `prefix` (bytes already read from it).
    pub(crate) fn new(prefix: Bytes, io: IO) -> Rewind<IO> {
        Rewind { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one answer (head and `content-length` body) off `io`.
    async fn read_answer(io: &mut tokio::io::DuplexStream, buf: &mut Vec<u8>) -> Vec<u8> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = parsed.parse(buf) {
                let len = parsed
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= head + len {
                    return buf.drain(..head + len).collect();
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before an answer");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn requests_of_several_kilobytes_sent_whole_stay_on_the_fast_path() {
        let config = crate::Config::from_toml(
            "[chains.mainnet]\nchain_id = 1\n[[chains.mainnet.upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n",
        )
        .unwrap();
        let detour = Detour::new(config).unwrap();
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (_stop_tx, stop) = watch::channel(false);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let served = tokio::spawn(serve(server, peer, detour, stop));
        // 5.6 KB, as a batch of 50 calls: the first request leaves less than that of the
        // 8 KiB read buffer behind it. Then larger than one read: 20 KB (a batch of 150) and
        // nearly READ_AHEAD_BODY.
        let request = |n: usize| {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":["{}"]}}"#,
                "a".repeat(n)
            );
            format!(
                "POST /nochain HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let mut buf = Vec::new();
        for n in [5600, 5600, 5600, 20_000, 100, 60_000, 5600] {
            let request = request(n);
            client.write_all(request.as_bytes()).await.unwrap();
            // Handed over, nobody answers here: the served task has ended.
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                read_answer(&mut client, &mut buf),
            )
            .await
            .expect("no answer: the connection was handed over to hyper");
            assert!(
                answer.starts_with(b"HTTP/1.1 404"),
                "{:?}",
                String::from_utf8_lossy(&answer)
            );
        }
        drop(client);
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), served)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(end, End::Closed(_)),
            "the connection was handed over to hyper"
        );
    }
}
