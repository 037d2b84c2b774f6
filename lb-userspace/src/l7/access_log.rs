//! The L7 tier's access log: one line per request, in the agent's log format (a JSON object
//! per line with `--log-format json`), target `xlb::access`.
//!
//! A request formats its line into a shared buffer and goes on; a thread of the log's own
//! writes the buffer out every [`FLUSH_EVERY`] or when it holds [`BATCH`] bytes, so a request
//! never waits on a write to stderr (one `write` per line through the tracing subscriber cost a
//! tenth of the proxy's CPU). At most [`MAX_PENDING`] bytes wait: lines past that (stderr
//! blocked) are dropped and counted, never queued without bound.

use std::{
    fmt::Write as _,
    io::Write,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use prometheus::IntCounter;

/// How long a line may wait for its write.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Pending bytes that wake the writer at once.
const BATCH: usize = 64 * 1024;
/// Pending bytes past which lines are dropped.
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// The tracing target the lines carry (and that `XLB_LOG` filters on).
pub const TARGET: &str = "xlb::access";

/// What one access log line says.
#[derive(Debug)]
pub struct Entry<'a> {
    pub vip: &'a str,
    pub route: &'a str,
    /// `address:port`.
    pub client: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// `address:port`.
    pub backend: Option<&'a str>,
    pub attempts: u32,
    pub duration: Duration,
    pub error: &'a str,
}

/// The log's lines, written by a thread of its own.
#[derive(Debug)]
pub struct AccessLog {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    json: bool,
    dropped: IntCounter,
}

#[derive(Debug, Default)]
struct Pending {
    lines: Vec<u8>,
    /// Bumped by the writer after each write (flush waits on it).
    written: u64,
    closing: bool,
}

impl AccessLog {
    /// Lines to stderr, in the agent's log format; lines dropped counted in `dropped`.
    pub fn stderr(dropped: IntCounter) -> std::io::Result<Self> {
        Self::new(Box::new(std::io::stderr()), crate::logging::json_lines(), dropped)
    }

    /// Lines to `out`, as JSON objects when `json`.
    pub fn new(mut out: Box<dyn Write + Send>, json: bool, dropped: IntCounter) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { pending: Mutex::new(Pending::default()), wake: Condvar::new(), json, dropped });
        let theirs = Arc::clone(&shared);
        let writer = std::thread::Builder::new().name("xlb-access-log".into()).spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let closing = {
                    let mut pending = theirs.lock();
                    if pending.lines.len() < BATCH && !pending.closing {
                        pending = theirs.wait(pending);
                    }
                    std::mem::swap(&mut batch, &mut pending.lines);
                    pending.closing
                };
                if !batch.is_empty() {
                    // A failed write (stderr closed) loses the batch: there is nowhere to say so.
                    let _ = out.write_all(&batch).and_then(|()| out.flush());
                    batch.clear();
                }
                let mut pending = theirs.lock();
                pending.written += 1;
                theirs.wake.notify_all();
                if closing && pending.lines.is_empty() {
                    return;
                }
            }
        })?;
        Ok(AccessLog { shared, writer: Some(writer) })
    }

    /// Whether lines are logged at all (`XLB_LOG` lets `xlb::access` through at info).
    pub fn enabled() -> bool {
        tracing::enabled!(target: TARGET, tracing::Level::INFO)
    }

    /// Appends `entry`'s line (dropped and counted when too much waits already).
    pub fn record(&self, entry: &Entry<'_>) {
        thread_local! {
            static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            format_line(line, entry, self.shared.json, SystemTime::now());
            let mut pending = self.shared.lock();
            if pending.lines.len() + line.len() > MAX_PENDING {
                drop(pending);
                self.shared.dropped.inc();
                return;
            }
            pending.lines.extend_from_slice(line.as_bytes());
            if pending.lines.len() >= BATCH {
                self.shared.wake.notify_all();
            }
        });
    }

    /// Lines dropped because too much waited.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.get()
    }

    /// Returns once every line recorded before the call is written.
    pub fn flush(&self) {
        let mut pending = self.shared.lock();
        // Two writer rounds: the one under way may have swapped before our lines came.
        let target = pending.written + 2;
        self.shared.wake.notify_all();
        while pending.written < target && !pending.closing {
            pending = self.shared.wait(pending);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves plain bytes behind: keep them.
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a wake-up, or [`FLUSH_EVERY`] at most.
    fn wait<'a>(&self, pending: MutexGuard<'a, Pending>) -> MutexGuard<'a, Pending> {
        match self.wake.wait_timeout(pending, FLUSH_EVERY) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

impl Drop for AccessLog {
    /// Writes what waits, then stops the writer.
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// `entry` as one line (with its newline), as the agent's tracing subscriber would write it.
fn format_line(line: &mut String, e: &Entry<'_>, json: bool, now: SystemTime) {
    let backend = e.backend.unwrap_or("");
    if !json {
        // Writing to a String cannot fail.
        let _ = writeln!(
            line,
            "{}  INFO {TARGET}: request vip={} route={} client={} method={} host={:?} path={:?} status={} backend={backend} attempts={} duration_ms={} error={:?}",
            Timestamp(now),
            e.vip,
            e.route,
            e.client,
            e.method,
            e.host,
            e.path,
            e.status,
            e.attempts,
            Millis(e.duration),
            e.error
        );
        return;
    }
    // Pieces pushed one by one: through the formatter, the line was a visible part of a
    // request's cost.
    line.push_str("{\"timestamp\":\"");
    push_timestamp(line, now);
    line.push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"vip\":");
    push_json(line, e.vip);
    line.push_str(",\"route\":");
    push_json(line, e.route);
    line.push_str(",\"client\":\"");
    line.push_str(e.client);
    line.push_str("\",\"method\":");
    push_json(line, e.method);
    line.push_str(",\"host\":");
    push_json(line, e.host);
    line.push_str(",\"path\":");
    push_json(line, e.path);
    line.push_str(",\"status\":");
    push_decimal(line, u64::from(e.status), 1);
    line.push_str(",\"backend\":\"");
    line.push_str(backend);
    line.push_str("\",\"attempts\":");
    push_decimal(line, u64::from(e.attempts), 1);
    line.push_str(",\"duration_ms\":");
    push_millis(line, e.duration);
    line.push_str(",\"error\":");
    push_json(line, e.error);
    line.push_str("},\"target\":\"");
    line.push_str(TARGET);
    line.push_str("\"}\n");
}

/// `n` in decimal, zero-padded to `width` digits.
fn push_decimal(line: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while n > 0 || digits.len() - at < width {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // Only ASCII digits were written.
    line.push_str(std::str::from_utf8(&digits[at..]).unwrap_or("0"));
}

/// A duration in milliseconds to the microsecond, as a float prints (`1.5`, `12`, `0.003`).
fn push_millis(line: &mut String, duration: Duration) {
    let micros = duration.as_micros() as u64;
    let (whole, mut frac, mut width) = (micros / 1000, micros % 1000, 3);
    push_decimal(line, whole, 1);
    if frac != 0 {
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        line.push('.');
        push_decimal(line, frac, width);
    }
}

/// A JSON string literal of `text`.
fn push_json(line: &mut String, text: &str) {
    if text.bytes().all(|b| b != b'"' && b != b'\\' && !b.is_ascii_control()) {
        line.push('"');
        line.push_str(text);
        line.push('"');
    } else {
        let _ = write!(line, "{}", Json(text));
    }
}

/// [`Timestamp`]'s text.
fn push_timestamp(line: &mut String, now: SystemTime) {
    let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    with_civil_second(since.as_secs(), |text| line.push_str(text));
    line.push('.');
    push_decimal(line, u64::from(since.subsec_micros()), 6);
    line.push('Z');
}

/// A duration in milliseconds to the microsecond, as a float prints (`1.5`, `12`, `0.003`), but
/// written as integers: float formatting was a visible part of a request's cost.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.as_micros();
        let (whole, mut frac, mut digits) = (micros / 1000, micros % 1000, 3);
        if frac == 0 {
            return write!(f, "{whole}");
        }
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        write!(f, "{whole}.{frac:0digits$}")
    }
}

/// A JSON string literal of the text (quotes, backslashes and control characters escaped).
struct Json<'a>(&'a str);

impl std::fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_char('"')?;
        let mut rest = self.0;
        while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c.is_control()) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or('\0');
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c => write!(f, "\\u{:04x}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)?;
        f.write_char('"')
    }
}

/// RFC 3339 in UTC with microseconds (`2026-12-05T08:10:29.123456Z`), as tracing writes it.
struct Timestamp(SystemTime);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.0.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        with_civil_second(since.as_secs(), |text| write!(f, "{text}.{:06}Z", since.subsec_micros()))
    }
}

/// Calls `f` with `secs` as civil text: the last second written is kept (a busy proxy writes
/// thousands of lines per second, each needing only its fraction).
fn with_civil_second<R>(secs: u64, f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            text.clear();
            civil_seconds(text, secs);
            *at = secs;
        }
        f(text)
    })
}

/// `secs` since the epoch as `2026-12-05T08:10:29` (UTC).
fn civil_seconds(text: &mut String, secs: u64) {
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Writing to a String cannot fail.
    let _ =
        write!(text, "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", of_day / 3600, of_day / 60 % 60, of_day % 60);
}

/// Lines written, kept for a test to read.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(path: &'a str, error: &'a str) -> Entry<'a> {
        Entry {
            vip: "web",
            route: "api",
            client: "198.51.100.7:4000",
            method: "GET",
            host: "example.com",
            path,
            status: 200,
            backend: Some("10.0.2.1:8080"),
            attempts: 1,
            duration: Duration::from_micros(1500),
            error,
        }
    }

    #[test]
    fn durations_print_as_milliseconds_to_the_microsecond() {
        let ms = |micros: u64| Millis(Duration::from_micros(micros)).to_string();
        assert_eq!(ms(1500), "1.5");
        assert_eq!(ms(12_000), "12");
        assert_eq!(ms(3), "0.003");
        assert_eq!(ms(1_050), "1.05");
        assert_eq!(ms(0), "0");
        assert_eq!(ms(123_456_789), "123456.789");
        assert_eq!(Millis(Duration::from_nanos(1_500_999)).to_string(), "1.5", "nanoseconds dropped");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, micros: u64| {
            Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)).to_string()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z", "a leap day of a century leap year");
        assert_eq!(at(1_796_458_229, 123_456), "2026-12-05T08:10:29.123456Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z", "2100 is no leap year");
        assert_eq!(at(4_107_542_399, 5), "2100-02-28T23:59:59.000005Z", "the same second again, from its cache");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z", "the next one");
    }

    #[test]
    fn json_lines_parse_and_escape_what_clients_send() {
        let mut line = String::new();
        let e = entry("/a\"b\\c\u{1}", "refused");
        format_line(&mut line, &e, true, SystemTime::UNIX_EPOCH);
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["level"], "INFO");
        let fields = &v["fields"];
        assert_eq!(fields["path"], "/a\"b\\c\u{1}");
        assert_eq!(fields["status"], 200);
        assert_eq!(fields["client"], "198.51.100.7:4000");
        assert_eq!(fields["backend"], "10.0.2.1:8080");
        assert_eq!(fields["duration_ms"], 1.5);
        assert_eq!(fields["error"], "refused");
        assert_eq!(fields["route"], "api");
        let mut line = String::new();
        format_line(&mut line, &Entry { backend: None, ..entry("/", "") }, false, SystemTime::UNIX_EPOCH);
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000000Z  INFO xlb::access: request vip=web route=api client=198.51.100.7:4000 method=GET host=\"example.com\" path=\"/\" status=200 backend= attempts=1 duration_ms=1.5 error=\"\"\n"
        );
        // The whole JSON line, byte for byte, at a time with a fraction.
        let mut line = String::new();
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_765_000_000, 7_000);
        let e = Entry { duration: Duration::from_micros(12_003), attempts: 12, ..entry("/x", "") };
        format_line(&mut line, &e, true, at);
        assert_eq!(
            line,
            "{\"timestamp\":\"2025-12-06T05:46:40.000007Z\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"vip\":\"web\",\"route\":\"api\",\"client\":\"198.51.100.7:4000\",\"method\":\"GET\",\"host\":\"example.com\",\"path\":\"/x\",\"status\":200,\"backend\":\"10.0.2.1:8080\",\"attempts\":12,\"duration_ms\":12.003,\"error\":\"\"},\"target\":\"xlb::access\"}\n"
        );
    }

    fn counter() -> IntCounter {
        IntCounter::new("dropped", "lines dropped").unwrap()
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_none_is_lost() {
        let capture = Capture::default();
        let log = Arc::new(AccessLog::new(Box::new(capture.clone()), true, counter()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        log.record(&entry(&format!("/t{t}/{i}"), ""));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.flush();
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 8_000);
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("a whole JSON line");
        }
        assert!(text.contains("\"path\":\"/t3/1999\""));
        // Dropping the log writes what waits.
        log.record(&entry("/last", ""));
        drop(Arc::into_inner(log).expect("the only handle"));
        assert!(String::from_utf8_lossy(&capture.0.lock().unwrap()).contains("\"path\":\"/last\""));
        assert_eq!(text.lines().count(), 8_000);
    }

    /// stderr stuck: the pending lines stop at the bound and the rest are counted.
    #[test]
    fn a_stuck_output_bounds_what_waits_and_counts_the_rest() {
        type Gate = Arc<(Mutex<bool>, Condvar)>;
        struct Stuck(Gate);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let (open, cv) = &*self.0;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        /// Opens the gate when dropped, before the log is (declared after it): a failed
        /// assertion unwinds through the log's drop, which waits for its writer.
        struct OpenOnDrop(Gate);
        impl Drop for OpenOnDrop {
            fn drop(&mut self) {
                *self.0.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
                self.0.1.notify_all();
            }
        }
        let gate: Gate = Arc::new((Mutex::new(false), Condvar::new()));
        let log = AccessLog::new(Box::new(Stuck(Arc::clone(&gate))), true, counter()).unwrap();
        let _open = OpenOnDrop(Arc::clone(&gate));
        let long = "x".repeat(1000);
        let mut line = String::new();
        format_line(&mut line, &entry(&long, ""), true, SystemTime::now());
        let offered = 40_000;
        for _ in 0..offered {
            log.record(&entry(&long, ""));
        }
        // What waits is bounded by MAX_PENDING; the writer holds one more batch, which may have
        // grown as large while it was slow to wake: at most twice MAX_PENDING is taken.
        let dropped = log.dropped();
        let kept_at_most = (2 * MAX_PENDING / line.len()) as u64;
        assert!(dropped >= offered - kept_at_most, "{dropped} of {offered} dropped, {} bytes a line", line.len());
        assert!(log.shared.lock().lines.len() <= MAX_PENDING);
    }
}
