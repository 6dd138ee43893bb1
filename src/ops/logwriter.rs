//! Where the `detour` binary's log lines go (a `tracing-subscriber` writer; embedders may use
//! it too): stderr, with access-log lines gathered and written a batch at a time.
//!
//! An access-log line per request, each its own `write(2)`, is a system call per request (and,
//! to a pipe or journald, a wake-up of the reader). Access lines are appended to a buffer
//! instead, written when it holds 32 KiB, every 100 ms by a small thread, before any other log
//! line (so lines stay in order), and when the process ends. Every other line (start-up,
//! warnings, errors) is written at once, as before. What a crash can lose: the access lines of
//! the last 100 ms at most.

use std::io::Write;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The most access-log bytes held before they are written.
const FLUSH_AT: usize = 32 * 1024;
/// How long an access-log line waits at most.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
use super::ACCESS_TARGET as ACCESS;

/// A log destination that holds access lines back: the held bytes and the destination, under
/// one lock so that lines reach it in the order they were logged.
pub struct Sink<W: Write> {
    inner: Mutex<(Vec<u8>, W)>,
}

impl<W: Write> Sink<W> {
    /// A sink that writes to `out`; give it to `tracing_subscriber::fmt().with_writer` as a
    /// `&'static` (see [`stderr`]).
    pub fn new(out: W) -> Sink<W> {
        Sink {
            inner: Mutex::new((Vec::new(), out)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Vec<u8>, W)> {
        // A panic while a line was written leaves nothing half-done that matters here.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what is held.
    pub fn flush(&self) {
        let mut g = self.lock();
        let (held, out) = &mut *g;
        write_held(held, out);
    }

    /// The destination (tests).
    #[cfg(test)]
    fn with_out<R>(&self, f: impl FnOnce(&W) -> R) -> R {
        f(&self.lock().1)
    }
}

fn write_held<W: Write>(held: &mut Vec<u8>, out: &mut W) {
    if !held.is_empty() {
        // As for any log line, a destination that fails (closed pipe) loses the lines, never
        // the request.
        let _ = out.write_all(held);
        let _ = out.flush();
        held.clear();
    }
}

/// One log line on its way: held back (access) or written at once (anything else).
pub struct Line<'a, W: Write> {
    sink: &'a Sink<W>,
    held: bool,
}

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.write_all(b)?;
        Ok(b.len())
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        let mut g = self.sink.lock();
        let (held, out) = &mut *g;
        if self.held {
            held.extend_from_slice(b);
            if held.len() >= FLUSH_AT {
                write_held(held, out);
            }
            Ok(())
        } else {
            write_held(held, out);
            out.write_all(b)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'static> MakeWriter<'a> for &'static Sink<W> {
    type Writer = Line<'static, W>;

    fn make_writer(&'a self) -> Line<'static, W> {
        Line {
            sink: self,
            held: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'static, W> {
        Line {
            sink: self,
            held: meta.target() == ACCESS,
        }
    }
}

static STDERR: OnceLock<Sink<std::io::Stderr>> = OnceLock::new();

/// The process's stderr sink; the first call starts the thread that writes held lines.
pub fn stderr() -> &'static Sink<std::io::Stderr> {
    STDERR.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("detour-log".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_EVERY);
                stderr().flush();
            });
        if let Err(e) = spawned {
            eprintln!("detour: cannot start the log thread ({e}); access lines are written when 32 KiB gather");
        }
        Sink::new(std::io::stderr())
    })
}

/// Writes the held access lines now (at exit).
pub fn flush() {
    if let Some(s) = STDERR.get() {
        s.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sink: &Sink<Vec<u8>>, held: bool, text: &str) {
        Line { sink, held }.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn access_lines_wait_and_other_lines_keep_the_order() {
        let sink = Sink::new(Vec::new());
        line(&sink, true, "a1\n");
        line(&sink, true, "a2\n");
        assert_eq!(sink.with_out(|o| o.len()), 0, "access lines are held");
        line(&sink, false, "warn\n");
        assert_eq!(sink.with_out(|o| o.clone()), b"a1\na2\nwarn\n");
        line(&sink, true, "a3\n");
        sink.flush();
        assert_eq!(sink.with_out(|o| o.clone()), b"a1\na2\nwarn\na3\n");
    }

    #[test]
    fn held_lines_are_written_once_enough_gather() {
        let sink = Sink::new(Vec::new());
        let text = "x".repeat(1000) + "\n";
        let mut n = 0;
        while sink.with_out(|o| o.is_empty()) {
            line(&sink, true, &text);
            n += 1;
            assert!(n <= FLUSH_AT / 1000 + 1, "never written");
        }
        assert_eq!(sink.with_out(|o| o.len()), n * text.len());
    }

    #[test]
    fn lines_are_routed_by_target() {
        let sink: &'static Sink<Vec<u8>> = Box::leak(Box::new(Sink::new(Vec::new())));
        // Through a real subscriber: the access line waits, the other is written.
        let subscriber = tracing_subscriber::fmt()
            .with_writer(sink)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "detour::access", "request");
            assert!(sink.with_out(|o| o.is_empty()));
            tracing::info!(target: "detour::other", "started");
        });
        let out = sink.with_out(|o| String::from_utf8(o.clone()).unwrap());
        let (first, second) = out.split_once('\n').unwrap();
        assert!(
            first.contains("request") && second.contains("started"),
            "{out}"
        );
    }
}
