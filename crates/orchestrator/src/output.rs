//! Capture of a job's stdout and stderr into its log, as they come.
//!
//! One task owns the log file and reads both pipes, so records never interleave inside a
//! line. Each record is `[<local time>][<tag>] <bytes>\n`; the tag is `stdout`/`stderr` for a
//! line the child ended with a newline, `stdout~`/`stderr~` for a piece of a line that goes on
//! in the stream's next record (lines longer than [`MAX_RECORD`], or a last line without a
//! newline). The child's bytes are copied exactly, so non-UTF-8 output survives.

use std::fs::File;
use std::io::{self, Write};

use chrono::{DateTime, FixedOffset, Local, Utc};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::job::Stream;

/// Longest piece of a line kept in memory before it is written out as a fragment.
pub const MAX_RECORD: usize = 64 * 1024;

/// Local time, with the offset read once: asking the zone database per line is costly.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    offset: FixedOffset,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock { offset: *Local::now().offset() }
    }

    pub(crate) fn local(&self, t: DateTime<Utc>) -> DateTime<FixedOffset> {
        t.with_timezone(&self.offset)
    }

    /// Hydra's `asctime`: `2026-11-24 14:03:16,726`.
    pub(crate) fn stamp(&self, t: DateTime<Utc>) -> String {
        use chrono::{Datelike, Timelike};
        // By hand: chrono's `format` parses its pattern on every call.
        let l = self.local(t);
        // As chrono writes a leap second: `:60`.
        let (second, millis) =
            (l.second() + l.nanosecond() / 1_000_000_000, l.nanosecond() % 1_000_000_000 / 1_000_000);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{second:02},{millis:03}",
            l.year(),
            l.month(),
            l.day(),
            l.hour(),
            l.minute()
        )
    }
}

/// The stamp of the last millisecond written: a job that floods its output writes many
/// records per millisecond, and formatting the time was most of the cost of each.
struct StampCache {
    millis: i64,
    text: String,
}

/// The job's log file.
///
/// A job's own process creates its log as it starts (see `runner::setup_steps`), so that
/// the supervisor's thread makes no inode for it; the writer opens the file once it is told
/// the process is past that point (`allow_open`), keeping records in memory until then.
pub(crate) struct LogWriter {
    file: Option<File>,
    path: std::path::PathBuf,
    /// Whether the file may be opened: the job's process is past its set-up (or gone).
    may_open: bool,
    /// The first error opening or writing the file (reported once; later records are lost).
    failed: Option<String>,
    /// Records not yet written. It grows with what the job writes between flushes: a few
    /// hundred bytes for most jobs, up to about [`FLUSH_AT`] for one that floods its output
    /// (a fixed small buffer meant a write(2) per 8 KiB there).
    buf: Vec<u8>,
    clock: Clock,
    stamp: StampCache,
}

/// Buffered records are written out once they reach this size (and at every flush).
const FLUSH_AT: usize = 64 * 1024;

impl LogWriter {
    #[cfg(test)]
    pub(crate) fn new(file: File, clock: Clock) -> Self {
        let mut log = Self::deferred(std::path::PathBuf::new(), clock);
        log.file = Some(file);
        log.may_open = true;
        log
    }

    /// A writer for the log at `path`, which it opens (creating it, and its directory, if
    /// the job's process did not) at the first flush after `allow_open`.
    pub(crate) fn deferred(path: std::path::PathBuf, clock: Clock) -> Self {
        // Room for the start and end records without growing.
        LogWriter {
            file: None,
            path,
            may_open: false,
            failed: None,
            buf: Vec::with_capacity(512),
            clock,
            stamp: StampCache { millis: i64::MIN, text: String::new() },
        }
    }

    /// The job's process is past its set-up (it runs its program, or it is gone): the file
    /// exists if it could be made, and what is buffered can go to it.
    pub(crate) fn allow_open(&mut self) {
        if !self.may_open {
            self.may_open = true;
            self.flush();
        }
    }

    pub(crate) fn is_open_allowed(&self) -> bool {
        self.may_open
    }

    fn open(path: &std::path::Path) -> io::Result<File> {
        let open = || std::fs::OpenOptions::new().append(true).create(true).open(path);
        match open() {
            // The process died before making its directory: make it here (one level, as
            // the process would have).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir(dir)?;
                }
                open()
            }
            r => r,
        }
    }

    /// Add a record; it is written at the next flush, or now if enough have waited.
    ///
    /// The log's own I/O errors never reach the caller: the job's output must go on being
    /// read (a pump that stopped would end the job with SIGPIPE), so the first error is
    /// reported through `tracing`, and records that cannot be written are dropped.
    pub(crate) fn record(&mut self, at: DateTime<Utc>, tag: &str, bytes: &[u8]) {
        let millis = at.timestamp_millis();
        if millis != self.stamp.millis {
            self.stamp = StampCache { millis, text: self.clock.stamp(at) };
        }
        for piece in [b"[", self.stamp.text.as_bytes(), b"][", tag.as_bytes(), b"] ", bytes, b"\n"] {
            self.buf.extend_from_slice(piece);
        }
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// A line from the supervisor itself (start, end, what it did to the job).
    pub(crate) fn note(&mut self, text: &str) {
        self.record(Utc::now(), "orchestrator", text.as_bytes());
        self.flush();
    }

    pub(crate) fn flush(&mut self) {
        if self.buf.is_empty() || !self.may_open {
            return;
        }
        if self.file.is_none() {
            match Self::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) => return self.fail(&e),
            }
        }
        if let Some(file) = &mut self.file
            && let Err(e) = file.write_all(&self.buf)
        {
            return self.fail(&e);
        }
        self.buf.clear();
    }

    /// The first error writing the log, if any: records were lost.
    pub(crate) fn error(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn fail(&mut self, e: &io::Error) {
        if self.failed.is_none() {
            self.failed = Some(format!("cannot write {}: {e}", self.path.display()));
            tracing::error!("cannot write the job log {}: {e}; its records are lost", self.path.display());
        }
        self.buf.clear();
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Every path flushes explicitly; this only keeps what a panic left unwritten. Not
        // before the job's process is past its set-up: it may yet create (truncate) the file.
        self.flush();
    }
}

/// Splits one stream into records.
struct Framer {
    stream: Stream,
    partial: Vec<u8>,
    bytes: u64,
}

impl Framer {
    fn new(stream: Stream) -> Self {
        Framer { stream, partial: Vec::new(), bytes: 0 }
    }

    fn tags(&self) -> (&'static str, &'static str) {
        match self.stream {
            Stream::Stdout => ("stdout", "stdout~"),
            Stream::Stderr => ("stderr", "stderr~"),
        }
    }

    async fn feed(&mut self, mut data: &[u8], sink: &mut Sink<'_>) {
        self.bytes += data.len() as u64;
        let at = Utc::now();
        let (full, piece) = self.tags();
        while !data.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    let (line, rest) = (&data[..i], &data[i + 1..]);
                    if self.partial.is_empty() {
                        sink.emit(at, self.stream, full, line, true).await;
                    } else {
                        self.partial.extend_from_slice(line);
                        let whole = std::mem::take(&mut self.partial);
                        sink.emit(at, self.stream, full, &whole, true).await;
                    }
                    data = rest;
                }
                None => {
                    let room = MAX_RECORD - self.partial.len();
                    let take = room.min(data.len());
                    self.partial.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.partial.len() >= MAX_RECORD {
                        let whole = std::mem::take(&mut self.partial);
                        sink.emit(at, self.stream, piece, &whole, false).await;
                    }
                }
            }
        }
    }

    async fn finish(&mut self, sink: &mut Sink<'_>) {
        if !self.partial.is_empty() {
            let whole = std::mem::take(&mut self.partial);
            let (_, piece) = self.tags();
            sink.emit(Utc::now(), self.stream, piece, &whole, false).await;
        }
    }
}

struct Sink<'a> {
    log: &'a mut LogWriter,
    events: Option<&'a mpsc::Sender<Event>>,
    num: u64,
}

impl Sink<'_> {
    /// Log a record and forward it. Neither can fail the job: the log reports its own
    /// errors (see [`LogWriter::record`]), and a closed receiver only means nobody watches.
    async fn emit(&mut self, at: DateTime<Utc>, stream: Stream, tag: &str, line: &[u8], complete: bool) {
        self.log.record(at, tag, line);
        if let Some(tx) = self.events {
            let _ = tx.send(Event::Output { num: self.num, stream, line: line.to_vec(), complete }).await;
        }
    }
}

/// Byte counts of a job's two streams.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Captured {
    pub(crate) stdout: u64,
    pub(crate) stderr: u64,
}

/// When the job's log may be opened, for a job that has written nothing yet: once its
/// process has exec'd (its set-up, which creates the log, is done), or never, if the job
/// ends first (then `run_job` writes the records in one go with the end record).
#[derive(Default)]
pub(crate) struct LogGate {
    notify: tokio::sync::Notify,
    ended: std::sync::atomic::AtomicBool,
}

impl LogGate {
    /// The job's process runs its program.
    pub(crate) fn execd(&self) {
        self.notify.notify_one();
    }

    /// The job's processes are gone.
    pub(crate) fn ended(&self) {
        self.ended.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_one();
    }

    fn is_ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Wait for either (at once if the job has ended); `true` if the log should be opened
    /// now. A notice comes once: it must not be waited for again after it was taken.
    async fn open_now(&self) -> bool {
        if self.is_ended() {
            return false;
        }
        self.notify.notified().await;
        !self.is_ended()
    }
}

/// Read both pipes to their end, logging every line; hands the log back for the end record.
/// A failed read is noted in the log and ends that stream.
pub(crate) async fn pump(
    num: u64,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    mut log: LogWriter,
    events: Option<mpsc::Sender<Event>>,
    abandon: CancellationToken,
    gate: std::sync::Arc<LogGate>,
) -> (LogWriter, Captured) {
    let mut framers = (Framer::new(Stream::Stdout), Framer::new(Stream::Stderr));
    let mut sink = Sink { log: &mut log, events: events.as_ref(), num };
    pump_inner(stdout, stderr, &mut sink, &mut framers, &abandon, &gate).await;
    let captured = Captured { stdout: framers.0.bytes, stderr: framers.1.bytes };
    (log, captured)
}

async fn pump_inner(
    mut stdout: Option<pipe::Receiver>,
    mut stderr: Option<pipe::Receiver>,
    sink: &mut Sink<'_>,
    (out, err): &mut (Framer, Framer),
    abandon: &CancellationToken,
    gate: &LogGate,
) {
    // Filled through `read_buf`, so never zeroed; they start small (most jobs write little)
    // and grow up to MAX_RECORD for a job that fills them.
    let mut obuf: Vec<u8> = Vec::with_capacity(START_BUF);
    let mut ebuf: Vec<u8> = Vec::with_capacity(START_BUF);
    while stdout.is_some() || stderr.is_some() {
        tokio::select! {
            // A process that escaped every kill still holds the pipe: stop waiting for EOF.
            _ = abandon.cancelled() => {
                out.finish(sink).await;
                err.finish(sink).await;
                return;
            }
            // The job's process runs its program: its set-up, the log's creation included,
            // is done. (So is it when anything comes down a pipe, below.)
            open = gate.open_now(), if !sink.log.is_open_allowed() && !gate.is_ended() => if open { sink.log.allow_open() },
            r = read_opt(&mut stdout, &mut obuf), if stdout.is_some() => match r {
                // EOF alone does not open the log: a job that ends soon has its records
                // written in one go with its end record.
                Ok(0) => { out.finish(sink).await; stdout = None; }
                Ok(_) => { sink.log.allow_open(); out.feed(&obuf, sink).await; grow_if_full(&mut obuf); }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => { out.finish(sink).await; stdout = None; sink.log.note(&format!("reading stdout failed: {e}")); }
            },
            r = read_opt(&mut stderr, &mut ebuf), if stderr.is_some() => match r {
                Ok(0) => { err.finish(sink).await; stderr = None; }
                Ok(_) => { sink.log.allow_open(); err.feed(&ebuf, sink).await; grow_if_full(&mut ebuf); }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => { err.finish(sink).await; stderr = None; sink.log.note(&format!("reading stderr failed: {e}")); }
            },
        }
        // Output (or EOF) comes only from the program, or once the process is gone: both
        // allow the log open above.
        sink.log.flush();
    }
    // Both pipes are closed, which a process can do and go on running: its start record
    // must not wait for its end.
    if !sink.log.is_open_allowed() {
        tokio::select! {
            open = gate.open_now() => if open { sink.log.allow_open() },
            _ = abandon.cancelled() => {}
        }
    }
}

const START_BUF: usize = 4 * 1024;

/// Empty the buffer for the next read, doubling its room (up to MAX_RECORD) when the last
/// read filled it: a chatty job gets big reads, a quiet one keeps a small buffer.
fn grow_if_full(buf: &mut Vec<u8>) {
    let full = buf.len() == buf.capacity();
    buf.clear();
    if full && buf.capacity() < MAX_RECORD {
        buf.reserve_exact((buf.capacity() * 2).min(MAX_RECORD));
    }
}

async fn read_opt(r: &mut Option<pipe::Receiver>, buf: &mut Vec<u8>) -> io::Result<usize> {
    match r {
        Some(r) => r.read_buf(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frame(chunks: &[&[u8]]) -> (String, Vec<(Vec<u8>, bool)>) {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut log = LogWriter::new(file.reopen().unwrap(), Clock::new());
        let (tx, mut rx) = mpsc::channel(1024);
        {
            let mut sink = Sink { log: &mut log, events: Some(&tx), num: 0 };
            let mut f = Framer::new(Stream::Stdout);
            for c in chunks {
                f.feed(c, &mut sink).await;
            }
            f.finish(&mut sink).await;
        }
        log.flush();
        drop(tx);
        let mut events = Vec::new();
        while let Some(Event::Output { line, complete, .. }) = rx.recv().await {
            events.push((line, complete));
        }
        (std::fs::read_to_string(file.path()).unwrap(), events)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lines_split_across_reads_are_joined() {
        let (log, events) = frame(&[b"he", b"llo\nwor", b"ld\n"]).await;
        assert_eq!(events, vec![(b"hello".to_vec(), true), (b"world".to_vec(), true)]);
        assert_eq!(log.lines().count(), 2);
        assert!(log.lines().all(|l| l.contains("][stdout] ")));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_last_line_without_newline_is_a_fragment() {
        let (log, events) = frame(&[b"a\nb"]).await;
        assert_eq!(events, vec![(b"a".to_vec(), true), (b"b".to_vec(), false)]);
        assert!(log.lines().nth(1).unwrap().contains("][stdout~] b"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn long_lines_are_cut_into_bounded_records() {
        let big = vec![b'x'; MAX_RECORD * 2 + 10];
        let (_, events) = frame(&[&big, b"\n"]).await;
        let sizes: Vec<(usize, bool)> = events.iter().map(|(l, c)| (l.len(), *c)).collect();
        assert_eq!(sizes, vec![(MAX_RECORD, false), (MAX_RECORD, false), (10, true)]);
    }

    /// A pump on a fresh pipe pair, its log deferred; returns the write end.
    fn pump_on_pipe(
        gate: &std::sync::Arc<LogGate>,
        path: std::path::PathBuf,
    ) -> (std::fs::File, tokio::task::JoinHandle<(LogWriter, Captured)>) {
        let (r, w) = std::io::pipe().unwrap();
        let r: std::os::fd::OwnedFd = r.into();
        let rx = pipe::Receiver::from_owned_fd(r).unwrap();
        let log = LogWriter::deferred(path, Clock::new());
        let task = tokio::spawn(pump(0, Some(rx), None, log, None, CancellationToken::new(), gate.clone()));
        (std::fs::File::from(std::os::fd::OwnedFd::from(w)), task)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_pump_ends_at_eof_after_the_job_ended_and_opens_the_log_for_a_running_job() {
        let dir = tempfile::tempdir().unwrap();
        // The job's end is told before its pipe's EOF is read (the order of wake-ups can
        // be either): the pump must end at EOF, not wait for another notice.
        let gate = std::sync::Arc::new(LogGate::default());
        let (w, task) = pump_on_pipe(&gate, dir.path().join("a.log"));
        tokio::task::yield_now().await; // the pump waits on both
        gate.ended();
        tokio::task::yield_now().await;
        drop(w);
        let (log, _) =
            tokio::time::timeout(std::time::Duration::from_secs(1), task).await.expect("pump ended").unwrap();
        assert!(!log.is_open_allowed(), "the end record goes out with the rest");
        // A job that closed its stdio and runs on: at its exec notice the log opens.
        let gate = std::sync::Arc::new(LogGate::default());
        let path = dir.path().join("b.log");
        std::fs::write(&path, "").unwrap(); // as the job's process does
        let (w, task) = pump_on_pipe(&gate, path.clone());
        drop(w);
        tokio::task::yield_now().await;
        gate.execd();
        let (log, _) =
            tokio::time::timeout(std::time::Duration::from_secs(1), task).await.expect("pump ended").unwrap();
        assert!(log.is_open_allowed());
    }

    #[test]
    fn a_deferred_log_opens_only_when_allowed_and_survives_a_failed_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job").join("x.log");
        let mut log = LogWriter::deferred(path.clone(), Clock::new());
        log.note("started");
        assert!(!path.exists(), "not opened before the job's process is past its set-up");
        // The process made the dir and the (empty) file; the supervisor appends to it.
        std::fs::create_dir(dir.path().join("job")).unwrap();
        std::fs::write(&path, "").unwrap();
        log.allow_open();
        log.note("ended");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("] started\n") && text.contains("] ended\n"), "{text}");
        // Two missing levels: like the process, the supervisor makes only the last one,
        // which fails here; the records are dropped without an error to the caller.
        let deep = dir.path().join("a").join("b").join("x.log");
        let mut log = LogWriter::deferred(deep.clone(), Clock::new());
        log.allow_open();
        log.note("lost");
        assert!(!deep.exists() && !dir.path().join("a").exists());
    }

    #[test]
    fn each_record_carries_its_own_millisecond() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let clock = Clock::new();
        let mut log = LogWriter::new(file.reopen().unwrap(), clock);
        let t0 = Utc::now();
        let times = [t0, t0, t0 + chrono::Duration::milliseconds(1), t0 + chrono::Duration::seconds(61), t0];
        for (i, t) in times.iter().enumerate() {
            log.record(*t, "stdout", format!("line {i}").as_bytes());
        }
        log.flush();
        let text = std::fs::read_to_string(file.path()).unwrap();
        let expected: String =
            times.iter().enumerate().map(|(i, t)| format!("[{}][stdout] line {i}\n", clock.stamp(*t))).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn stamp_is_what_chrono_writes() {
        use chrono::{NaiveDate, TimeZone};
        let clock = Clock { offset: FixedOffset::east_opt(5 * 3600 + 1800).unwrap() };
        let day = NaiveDate::from_ymd_opt(2026, 1, 9).unwrap();
        for (h, m, s, nano) in
            [(0, 0, 0, 0), (23, 59, 59, 999_999_999), (7, 5, 3, 4_000_000), (18, 29, 59, 1_500_000_000)]
        {
            let t = Utc.from_utc_datetime(&day.and_hms_nano_opt(h, m, s, nano).unwrap());
            let expected = clock.local(t).format("%Y-%m-%d %H:%M:%S,%3f").to_string();
            assert_eq!(clock.stamp(t), expected, "{h}:{m}:{s}.{nano}");
        }
    }
}
