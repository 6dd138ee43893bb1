//! The `detour` binary's JSON log lines, with access lines written directly.
//!
//! `tracing-subscriber`'s JSON format costs some 3 µs per access line on the benchmark machine
//! (about a tenth of a proxied `eth_call`'s CPU): each field goes through `serde`, every small
//! write is checked as UTF-8 again, and the timestamp is computed from the calendar each time.
//! [`Json`] writes access lines (target `detour::access`, outside any span) itself, the same
//! bytes in the same order, and hands every other line to the format it wraps:
//!
//! ```text
//! {"timestamp":"2026-12-04T15:47:36.475173Z","level":"INFO","fields":{"message":"request",
//!  "chain":"bench",…,"ms":0.338,"peer":"127.0.0.1:54804","client":"-"},"target":"detour::access"}
//! ```

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::ACCESS_TARGET as ACCESS;

/// A JSON event format that writes access lines itself and every other line with `inner`
/// (`tracing_subscriber::fmt::format().json()`, whose output the access lines match).
pub struct Json<F> {
    inner: F,
}

impl<F> Json<F> {
    /// Wraps `inner`, the JSON format used for every line but access lines.
    pub fn new(inner: F) -> Json<F> {
        Json { inner }
    }
}

impl<S, N, F> FormatEvent<S, N> for Json<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // Inside a span, the wrapped format adds the span's fields: leave those lines to it.
        if meta.target() != ACCESS || event.parent().is_some() || ctx.lookup_current().is_some() {
            return self.inner.format_event(ctx, writer, event);
        }
        writer.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut writer, SystemTime::now())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_str("\",\"fields\":{")?;
        let mut fields = Fields {
            out: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("},\"target\":")?;
        write_str(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// Writes an event's fields as JSON members, as `tracing-serde` does.
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// Writes `"name":` and then the value with `value`.
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let out = &mut *self.out;
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                out.write_char(',')?;
            }
            write_str(out, field.name())?;
            out.write_char(':')?;
            value(out)
        })();
    }

    fn number(&mut self, field: &Field, n: impl itoa::Integer) {
        self.member(field, |out| out.write_str(itoa::Buffer::new().format(n)));
    }
}

impl Visit for Fields<'_, '_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, |out| {
            if value.is_finite() {
                // serde_json writes a finite number the shortest way that reads back the same,
                // with `.0` for a whole one; so does `Debug` in the range a duration takes.
                write!(out, "{value:?}")
            } else {
                out.write_str("null")
            }
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    // 128-bit numbers: as tracing-serde, by `record_debug` (a string).

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| write_str(out, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // As tracing-serde: an error by its `Display`.
        self.member(field, |out| write_display(out, format_args!("{value}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| write_display(out, format_args!("{value:?}")));
    }
}

/// `value` as a JSON string.
fn write_str(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    escape(out, value)?;
    out.write_char('"')
}

/// What `args` writes, as a JSON string.
fn write_display(out: &mut Writer<'_>, args: fmt::Arguments<'_>) -> fmt::Result {
    out.write_char('"')?;
    match args.as_str() {
        Some(s) => escape(out, s)?,
        None => Escaping(&mut *out).write_fmt(args)?,
    }
    out.write_char('"')
}

/// A writer that escapes what goes through it for a JSON string.
struct Escaping<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s)
    }
}

/// Writes `s` escaped as serde_json escapes a string's contents: `"`, `\` and control
/// characters; `\n`, `\t` and the like by name, the others as `\u00XX`.
fn escape(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let named = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Only ASCII bytes stop the run, so both ends are on character boundaries.
        out.write_str(&s[start..i])?;
        start = i + 1;
        if named.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.write_str("\\u00")?;
            out.write_char(HEX[usize::from(b >> 4)] as char)?;
            out.write_char(HEX[usize::from(b & 0xf)] as char)?;
        } else {
            out.write_str(named)?;
        }
    }
    out.write_str(&s[start..])
}

thread_local! {
    /// The last second written and its `YYYY-MM-DDTHH:MM:SS`: the calendar is worked out once a
    /// second per thread, not once a line.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// `at` in RFC 3339 with microseconds, UTC, as `tracing-subscriber`'s `SystemTime` writes it:
/// `2026-12-04T15:47:36.475173Z`.
fn write_timestamp(out: &mut impl fmt::Write, at: SystemTime) -> fmt::Result {
    // Before 1970 or after 9999 (a clock gone wrong): written as the Unix epoch rather than in
    // a format log readers would not parse.
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs().min(253_402_300_799);
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        text = civil(secs);
        SECOND.set((secs, text));
    }
    // The cached text is ASCII digits and separators.
    out.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)?;
    let micros = since.subsec_micros();
    let mut frac = *b".000000Z";
    let mut m = micros;
    for d in frac[1..7].iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.write_str(std::str::from_utf8(&frac).map_err(|_| fmt::Error)?)
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the Unix epoch (years 1970 to 9999).
fn civil(secs: u64) -> [u8; 19] {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days to a proleptic Gregorian date, from March-based 400-year eras (H. Hinnant's
    // `civil_from_days`).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut t = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            t[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, rem / 3600);
    put(14, 2, rem / 60 % 60);
    put(17, 2, rem % 60);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn the_calendar_is_right_at_its_edges() {
        let cases = [
            (0, "1970-01-01T00:00:00"),
            (951_782_399, "2000-02-28T23:59:59"),
            (951_782_400, "2000-02-29T00:00:00"),
            (951_868_800, "2000-03-01T00:00:00"),
            (4_107_542_400, "2100-03-01T00:00:00"),
            (4_107_456_000, "2100-02-28T00:00:00"),
            (1_796_398_056, "2026-12-04T15:27:36"),
            (253_402_300_799, "9999-12-31T23:59:59"),
        ];
        for (secs, want) in cases {
            assert_eq!(std::str::from_utf8(&civil(secs)).unwrap(), want, "{secs}");
        }
    }

    #[test]
    fn timestamps_match_tracing_subscriber() {
        use tracing_subscriber::fmt::time::FormatTime;
        // tracing-subscriber reads the clock itself: retry until both land in the same second.
        for _ in 0..100 {
            let mut theirs = String::new();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            let mut ours = String::new();
            write_timestamp(&mut ours, SystemTime::now()).unwrap();
            if ours[..19] == theirs[..19] {
                assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
                assert_eq!(&ours[19..20], ".");
                assert!(ours.ends_with('Z'));
                return;
            }
        }
        panic!("never the same second");
    }

    #[test]
    fn fractions_are_written_in_full() {
        let mut s = String::new();
        write_timestamp(&mut s, UNIX_EPOCH + Duration::from_micros(7)).unwrap();
        assert_eq!(s, "1970-01-01T00:00:00.000007Z");
    }

    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Out {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `log` writes, with the stock JSON format or with [`Json`].
    fn lines(fast: bool, log: impl Fn()) -> String {
        let out = Out::default();
        let w = out.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_max_level(tracing::Level::TRACE)
            .json();
        if fast {
            let s = builder.map_event_format(Json::new).finish();
            tracing::subscriber::with_default(s, log);
        } else {
            tracing::subscriber::with_default(builder.finish(), log);
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    /// A line without its timestamp's digits.
    fn untimed(line: &str) -> String {
        let at = line.find("\"timestamp\":\"").unwrap() + 13;
        format!("{}{}", &line[..at], &line[at + 27..])
    }

    #[test]
    fn access_lines_are_the_same_bytes_as_tracing_subscriber_writes() {
        let awkward = "a\"b\\c\nd\re\tf\u{8}\u{c}\u{1}\u{1f}\u{7f}é×—😀";
        let log = || {
            tracing::info!(
                target: "detour::access",
                chain = "bench",
                methods = %"eth_call×2,eth_getBalance",
                calls = 3u64,
                status = 200u16,
                signed = -4i64,
                big = u128::MAX,
                ms = 0.338f64,
                whole = 12.0f64,
                tiny = 0.001f64,
                nan = f64::NAN,
                yes = true,
                peer = %"127.0.0.1:54804",
                text = awkward,
                shown = %awkward,
                debugged = ?awkward,
                err = &std::io::Error::other("gone \"away\"") as &(dyn std::error::Error + 'static),
                "request"
            );
            tracing::warn!(target: "detour::access", "{} of {}", awkward, 2);
            tracing::info!(target: "detour::access", "");
        };
        let theirs = lines(false, log);
        let ours = lines(true, log);
        assert_eq!(ours.lines().count(), 3);
        for (a, b) in ours.lines().zip(theirs.lines()) {
            assert_eq!(untimed(a), untimed(b));
        }
        assert!(ours.ends_with('\n'));
    }

    #[test]
    fn other_lines_and_lines_in_spans_are_left_to_the_wrapped_format() {
        let log = || {
            tracing::info!(target: "detour::server", port = 1, "listening");
            let span = tracing::info_span!("embedder", job = "sync");
            let _in = span.enter();
            tracing::info!(target: "detour::access", chain = "x", "request");
        };
        let theirs = lines(false, log);
        let ours = lines(true, log);
        assert!(
            ours.contains("\"span\":{") && ours.contains("\"job\":\"sync\""),
            "{ours}"
        );
        for (a, b) in ours.lines().zip(theirs.lines()) {
            assert_eq!(untimed(a), untimed(b));
        }
    }
}
