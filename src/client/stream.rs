//! A large answer's `result`, streamed from an upstream to the client as it arrives
//! (issue 19).
//!
//! A request offers to stream ([`StreamOffer`]) when it is one read call from an HTTP/1.1
//! client. An attempt takes the offer when its upstream's answer is a 2xx of at least
//! `client.stream_min_bytes` (declared, or sent so far of a chunked answer) whose envelope
//! says a result follows (`rpc::stream::result_start`). Up to that point the attempt is like
//! any other: errors, other statuses and small answers go through failover as before. From
//! then on the answer is the client's: the attempt counts as answered, the rest of the body
//! (a plain-HTTP upstream's connection, or the hyper client's body of an HTTPS answer over
//! HTTP/1.1 or HTTP/2) moves into a [`ResultStream`], and the result's bytes go out as they
//! come, checked by `rpc::stream::ResultCheck`. If the upstream breaks off, times out or sends something
//! malformed, the stream ends in an error and the client's connection is cut: the client sees
//! an incomplete answer, never a valid-looking short one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Body;
use tokio::time::{Instant, Sleep};

use super::h1::{Begun, Conn, Error, Left};
use crate::rpc::stream::ResultCheck;

/// The answer that stands for a call's result while it is streamed (the stream is in the
/// request's [`StreamOffer`]): empty, which no JSON value is. Never cached, never sent.
pub(crate) const STREAMED: Bytes = Bytes::new();

/// A request's offer to stream its answer's result; the attempt that takes it leaves the
/// stream here.
#[derive(Debug)]
pub(crate) struct StreamOffer {
    /// Answers from this size on are streamed.
    pub(crate) min_bytes: usize,
    /// The stream must have ended by then (the request's deadline).
    pub(crate) deadline: Instant,
    taken: Mutex<Option<Box<ResultStream>>>,
}

impl StreamOffer {
    pub(crate) fn new(min_bytes: usize, deadline: Instant) -> StreamOffer {
        StreamOffer {
            min_bytes,
            deadline,
            taken: Mutex::new(None),
        }
    }

    /// Leaves `stream` here; gives it back when another attempt's stream came first.
    pub(crate) fn give(&self, stream: Box<ResultStream>) -> Result<(), Box<ResultStream>> {
        let Ok(mut taken) = self.taken.lock() else {
            return Err(stream);
        };
        if taken.is_some() {
            return Err(stream);
        }
        *taken = Some(stream);
        Ok(())
    }

    /// The stream an attempt left, if one did.
    pub(crate) fn take(&self) -> Option<Box<ResultStream>> {
        self.taken.lock().ok()?.take()
    }
}

/// Where the rest of a streamed answer comes from.
enum Source {
    /// A plain-HTTP upstream's connection (`client/h1.rs`), and what is left of the body.
    H1 { conn: Conn, left: Left },
    /// The body of an answer from the hyper client (HTTPS upstreams, HTTP/1.1 or HTTP/2).
    Hyper(hyper::body::Incoming),
}

/// The rest of an upstream's answer, from its result's first byte: yields the result's bytes
/// as they arrive, checked, and ends once the whole answer has arrived well-formed.
pub(crate) struct ResultStream {
    source: Source,
    /// What arrived with the envelope, not yet yielded.
    first: Option<Bytes>,
    check: ResultCheck,
    /// Body bytes read so far, against `limit`.
    read: usize,
    limit: usize,
    timer: Pin<Box<Sleep>>,
    /// The upstream's name, for logs.
    pub(crate) upstream: Arc<str>,
    /// Result bytes yielded so far.
    pub(crate) sent: usize,
    /// Told once how the stream ended.
    on_end: Option<OnEnd>,
}

/// What is told how a stream ended.
pub(crate) type OnEnd = Box<dyn FnOnce(StreamEnd) + Send + Sync>;

/// How a streamed answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// The whole answer arrived well-formed.
    Complete,
    /// The upstream broke it off: closed mid-answer, sent something malformed, or went over
    /// `client.max_response_bytes`.
    Broken,
    /// The request's deadline passed (the upstream was slow, or the client read slowly).
    Timeout,
    /// The stream was dropped before its end: the client went away.
    Abandoned,
}

impl StreamEnd {
    /// Every end, in declaration order (`as usize` indexes it).
    pub(crate) const ALL: [StreamEnd; 4] = [
        StreamEnd::Complete,
        StreamEnd::Broken,
        StreamEnd::Timeout,
        StreamEnd::Abandoned,
    ];

    /// The label of the `detour_streamed_answers_total` metric.
    pub(crate) fn label(self) -> &'static str {
        match self {
            StreamEnd::Complete => "complete",
            StreamEnd::Broken => "broken",
            StreamEnd::Timeout => "timeout",
            StreamEnd::Abandoned => "abandoned",
        }
    }
}

impl std::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::H1 { left, .. } => format!("h1 {left:?}"),
            Source::Hyper(_) => "hyper".to_string(),
        };
        f.debug_struct("ResultStream")
            .field("upstream", &self.upstream)
            .field("source", &source)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

/// Why a piece could not be read.
enum Broken {
    /// The upstream closed the connection before the body ended.
    Closed,
    Other(String),
}

impl ResultStream {
    /// The stream of a plain-HTTP upstream's answer, read off `conn` (which is not reused).
    pub(crate) fn new(
        mut conn: Conn,
        begun: Begun,
        limit: usize,
        deadline: Instant,
        upstream: Arc<str>,
    ) -> ResultStream {
        let timer = conn.take_timer(deadline);
        let source = Source::H1 {
            conn,
            left: begun.left,
        };
        ResultStream::with(source, begun.first, begun.read, limit, timer, upstream)
    }

    /// The stream of an answer from the hyper client: `first` is the body from the result's
    /// first byte as far as it has arrived, `read` the body bytes read so far.
    pub(crate) fn from_hyper(
        body: hyper::body::Incoming,
        first: Bytes,
        read: usize,
        limit: usize,
        deadline: Instant,
        upstream: Arc<str>,
    ) -> ResultStream {
        let timer = Box::pin(tokio::time::sleep_until(deadline));
        ResultStream::with(Source::Hyper(body), first, read, limit, timer, upstream)
    }

    fn with(
        source: Source,
        first: Bytes,
        read: usize,
        limit: usize,
        timer: Pin<Box<Sleep>>,
        upstream: Arc<str>,
    ) -> ResultStream {
        ResultStream {
            source,
            first: Some(first),
            check: ResultCheck::new(),
            read,
            limit,
            timer,
            upstream,
            sent: 0,
            on_end: None,
        }
    }

    /// Has `f` told how the stream ends (once; [`StreamEnd::Abandoned`] if it is dropped
    /// first).
    pub(crate) fn on_end(&mut self, f: OnEnd) {
        self.on_end = Some(f);
    }

    /// Forgets what [`ResultStream::on_end`] set: a stream dropped unused is not counted.
    pub(crate) fn disarm(&mut self) {
        self.on_end = None;
    }

    /// Tells `on_end` how the stream ended, the first time.
    fn end(&mut self, how: StreamEnd) {
        if let Some(f) = self.on_end.take() {
            f(how);
        }
    }

    /// The upstream broke the answer off: why.
    fn broken(&mut self, why: String) -> Poll<Option<Result<Bytes, String>>> {
        self.end(StreamEnd::Broken);
        Poll::Ready(Some(Err(why)))
    }

    /// The next piece of the result; `None` once the answer has ended well-formed; an error
    /// (why, naming no URL) when it will not.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, String>>> {
        loop {
            let piece = match self.first.take() {
                Some(first) => first,
                None => {
                    if self.timer.as_mut().poll(cx).is_ready() {
                        self.end(StreamEnd::Timeout);
                        return Poll::Ready(Some(Err(
                            "the answer did not arrive within the request's deadline".into(),
                        )));
                    }
                    match std::task::ready!(self.source.poll_piece(cx)) {
                        Ok(Some(piece)) => {
                            self.read += piece.len();
                            if self.read > self.limit {
                                return self.broken(format!(
                                    "the answer is larger than {} bytes (client.max_response_bytes)",
                                    self.limit
                                ));
                            }
                            piece
                        }
                        Ok(None) => {
                            return match self.check.finish() {
                                Ok(()) => {
                                    self.end(StreamEnd::Complete);
                                    Poll::Ready(None)
                                }
                                Err(why) => self.broken(format!("malformed answer: {why}")),
                            }
                        }
                        Err(Broken::Closed) => {
                            return self
                                .broken("the upstream closed the connection mid-answer".into())
                        }
                        Err(Broken::Other(why)) => return self.broken(why),
                    }
                }
            };
            match self.check.feed(&piece) {
                Ok(0) => continue,
                Ok(n) => {
                    self.sent += n;
                    return Poll::Ready(Some(Ok(piece.slice(..n))));
                }
                Err(why) => return self.broken(format!("malformed answer: {why}")),
            }
        }
    }

    /// [`ResultStream::poll_next`] as a future.
    pub(crate) async fn next(&mut self) -> Option<Result<Bytes, String>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

impl Drop for ResultStream {
    fn drop(&mut self) {
        self.end(StreamEnd::Abandoned);
    }
}

impl Source {
    /// The body's next non-empty piece; `None` at its end.
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, Broken>> {
        match self {
            Source::H1 { conn, left } => match std::task::ready!(conn.poll_piece(left, cx)) {
                Ok(piece) => Poll::Ready(Ok(piece)),
                Err(Error::Closed { .. }) => Poll::Ready(Err(Broken::Closed)),
                Err(e) => Poll::Ready(Err(Broken::Other(format!("reading failed: {e}")))),
            },
            Source::Hyper(body) => loop {
                let frame = match std::task::ready!(Pin::new(&mut *body).poll_frame(cx)) {
                    None => return Poll::Ready(Ok(None)),
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) if e.is_incomplete_message() => {
                        return Poll::Ready(Err(Broken::Closed))
                    }
                    Some(Err(e)) => {
                        return Poll::Ready(Err(Broken::Other(format!("reading failed: {e}"))))
                    }
                };
                match frame.into_data() {
                    Ok(data) if !data.is_empty() => return Poll::Ready(Ok(Some(data))),
                    _ => {} // an empty piece, or trailers
                }
            },
        }
    }
}
