//! Reporters: they consume the runner's events and print them; they never drive the run.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use chrono::Local;
use orchestrator::job::signal_name;
use orchestrator::{Event, JobRecord, RunInfo, Stop, StopReason, Stream};
use orchestrator_config::escape_controls;
use orchestrator_hydra::sweep::LISTED_MAX;
use tokio::sync::mpsc;

/// How the console shows a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Hydra's lines, the jobs' lines, failures as they happen, a summary.
    Plain,
    /// Only failures and the summary.
    Quiet,
    /// One JSON object per event on stdout.
    Json,
}

/// Hydra's `[HYDRA]` line prefix, with its `asctime`.
pub fn hydra_prefix() -> String {
    format!("[{}][HYDRA]", Local::now().format("%Y-%m-%d %H:%M:%S,%3f"))
}

/// How the console follows the run, besides the mode.
#[derive(Debug, Clone, Copy)]
pub struct Display {
    /// joblib's verbosity level: progress lines (`[Parallel(n_jobs=2)]: Done 3 out of 5 …`).
    pub verbose: u32,
    /// Resolved `n_jobs`, for the progress lines.
    pub n_jobs: usize,
    /// Draw a progress bar (stderr is a terminal).
    pub bar: bool,
}

/// How long the reporter lets events gather after showing a few.
const REPORT_TICK: std::time::Duration = std::time::Duration::from_millis(10);
/// The same while jobs' output lines flow: short enough that the event channel does not
/// fill meanwhile, long enough that many lines go out in one write.
const OUTPUT_TICK: std::time::Duration = std::time::Duration::from_millis(1);
/// A batch this big means output is flowing: show the next at once, or the event channel
/// (4,096 events) would cap the jobs' output at a few hundred thousand lines a second.
const BUSY_BATCH: usize = 512;

/// Print events until the channel closes.
pub async fn consume(mode: Mode, display: Display, mut events: mpsc::Receiver<Event>) {
    let mut r = Reporter::new(mode, display);
    while let Some(first) = events.recv().await {
        let mut next = Some(first);
        let mut shown = 0usize;
        let mut output = false;
        // Drain what is already queued before flushing: one write for many lines.
        while let Some(ev) = next {
            output |= matches!(ev, Event::Output { .. });
            r.show(&ev);
            shown += 1;
            next = events.try_recv().ok();
        }
        r.flush();
        // With few events, at most one wake-up of this thread per tick, however fast jobs
        // end: with tiny jobs on a busy machine, waking for each job's events took CPU time
        // from the jobs (2,000 `true` on 2 cores: 2-3% of the run). A human does not see
        // 10 ms.
        if shown < BUSY_BATCH {
            tokio::time::sleep(if output { OUTPUT_TICK } else { REPORT_TICK }).await;
        }
    }
    r.finish();
}

struct Reporter {
    mode: Mode,
    display: Display,
    out: io::BufWriter<io::Stdout>,
    bar: Option<indicatif::ProgressBar>,
    started: std::time::Instant,
    /// Jobs running. By number, not a count: a slot can take its next job before the
    /// previous one's `Finished` arrives (and a Slurm record's slot is its task's, not the
    /// scheduler's).
    running: std::collections::HashSet<u64>,
    /// Jobs waiting in a cluster's queue (started, not yet seen running).
    queued: std::collections::HashSet<u64>,
    /// Jobs the run will start.
    total: u64,
    done: u64,
    /// Records of the jobs that did not succeed, for the summary.
    failures: Vec<JobRecord>,
}

impl Reporter {
    fn new(mode: Mode, display: Display) -> Self {
        Reporter {
            mode,
            display,
            out: io::BufWriter::with_capacity(64 * 1024, io::stdout()),
            bar: None,
            started: std::time::Instant::now(),
            total: 0,
            running: std::collections::HashSet::new(),
            queued: std::collections::HashSet::new(),
            done: 0,
            failures: Vec::new(),
        }
    }

    /// The progress bar, drawn on stderr when it is a terminal.
    fn start_bar(&mut self) {
        if !(self.display.bar && self.mode == Mode::Plain) {
            return;
        }
        let bar = indicatif::ProgressBar::with_draw_target(Some(self.total), indicatif::ProgressDrawTarget::stderr());
        let style =
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} jobs {msg} ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        self.bar = Some(bar);
    }

    /// Hydra's header: the launcher, the sweep dir, one line per job (up to
    /// [`LISTED_MAX`]); a resumed sweep says so first.
    fn header(&mut self, info: &RunInfo) {
        self.total = info.total.unwrap_or(0);
        self.started = std::time::Instant::now();
        if self.mode == Mode::Plain {
            let p = hydra_prefix();
            let dir = info.dir.as_deref().unwrap_or(Path::new("")).display().to_string();
            let out = &mut self.out;
            if let Some((done, all)) = info.resumed {
                let _ = writeln!(out, "{p} Resuming sweep {dir}: {done} of {all} jobs already succeeded");
            }
            let _ = writeln!(out, "{p} {} is launching {} jobs", info.label, self.total);
            let _ = writeln!(out, "{p} Launching jobs, sweep output dir : {dir}");
            for (num, overrides) in &info.listed {
                let _ = writeln!(out, "{p} \t#{num} : {}", escape_controls(overrides));
            }
            let listed = info.listed.len() as u64;
            if self.total > listed && listed == LISTED_MAX as u64 {
                let _ = writeln!(out, "{p} \t... {} more jobs", self.total - listed);
            }
            let _ = out.flush();
        }
        self.start_bar();
    }

    /// Write a line above the progress bar, if there is one, without tearing it.
    fn print(&mut self, stream: Stream, bytes: &[u8]) {
        let out = &mut self.out;
        let write = |out: &mut io::BufWriter<io::Stdout>| match stream {
            Stream::Stderr => {
                // Keep our stdout's order with the child's stderr as close as the terminal allows.
                let _ = out.flush();
                let mut err = io::stderr().lock();
                let _ = err.write_all(bytes);
                let _ = err.write_all(b"\n");
            }
            _ => {
                let _ = out.write_all(bytes);
                let _ = out.write_all(b"\n");
            }
        };
        match &self.bar {
            Some(bar) => bar.suspend(|| {
                write(out);
                let _ = out.flush();
            }),
            None => write(out),
        }
    }

    fn show(&mut self, ev: &Event) {
        if self.mode == Mode::Json {
            if let Ok(v) = serde_json::to_string(ev) {
                let _ = writeln!(self.out, "{v}");
            }
            if let Event::RunStarted(info) = ev {
                self.total = info.total.unwrap_or(0);
            }
            return;
        }
        match ev {
            Event::RunStarted(info) => self.header(info),
            Event::Retrying { num, attempt, outcome, delay } => {
                // Waiting for its next attempt, whose `Started` counts it again.
                self.running.remove(num);
                self.queued.remove(num);
                let line = format!(
                    "{} \t#{num} : attempt {attempt} {}; retrying in {}",
                    hydra_prefix(),
                    outcome.describe(),
                    orchestrator::job::humanize(*delay)
                );
                self.print(Stream::Stderr, line.as_bytes());
            }
            Event::Stopping { request } if self.mode == Mode::Plain => {
                let what = match request {
                    Stop::Drain => "starting no new job after a failure (halt: soon)".to_string(),
                    Stop::Graceful { reason: StopReason::Halt, .. } => {
                        "ending the running jobs after a failure (halt: now)".to_string()
                    }
                    Stop::Graceful { signal, .. } => format!(
                        "{} sent to the running jobs, SIGKILL after the grace period; a second signal kills them at once",
                        signal_name(*signal)
                    ),
                    _ => "killing the running jobs".to_string(),
                };
                let line = format!("{} stopping: {what}", hydra_prefix());
                self.print(Stream::Stderr, line.as_bytes());
            }
            Event::RunFinished { finished, succeeded, total, dir, interrupted_by, duration, .. } => {
                self.flush();
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                let end = End {
                    finished: *finished,
                    succeeded: *succeeded,
                    total: total.unwrap_or(*finished),
                    elapsed: *duration,
                    sweep_dir: dir.as_deref().unwrap_or(Path::new("")),
                    stopped_by: *interrupted_by,
                };
                summary(self.mode, &end, &mut self.failures);
            }
            Event::Started { num, queued: false, .. } => {
                self.running.insert(*num);
            }
            Event::Started { num, queued: true, .. } => {
                self.queued.insert(*num);
            }
            Event::Running { num, .. } => {
                self.queued.remove(num);
                self.running.insert(*num);
            }
            Event::Output { stream, line, .. } if self.mode == Mode::Plain => self.print(*stream, line),
            Event::Finished(rec) => {
                self.running.remove(&rec.num);
                self.queued.remove(&rec.num);
                self.done += 1;
                if !rec.is_success() {
                    self.failures.push((**rec).clone());
                    let line = format!(
                        "{} \t#{} : {} {}, log: {}",
                        hydra_prefix(),
                        rec.num,
                        rec.overrides.join(" "),
                        rec.outcome.describe(),
                        shown_log(&rec.log)
                    );
                    self.print(Stream::Stderr, line.as_bytes());
                }
                self.progress_line();
            }
            _ => {}
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            let queued = if self.queued.is_empty() { String::new() } else { format!(", {} queued", self.queued.len()) };
            bar.set_message(format!("({} running{queued}, {} failed)", self.running.len(), self.failures.len()));
        }
    }

    /// joblib's `verbose` progress lines, at joblib's frequency; to stderr below level 50,
    /// to stdout from 50 on, as joblib does.
    fn progress_line(&mut self) {
        let verbose = self.display.verbose;
        if verbose == 0 {
            return;
        }
        let (done, total) = (self.done, self.total);
        let elapsed = self.started.elapsed().as_secs_f64();
        let msg = if done >= total {
            format!("Done {done:3} out of {total:3} | elapsed: {} finished", short_time(elapsed))
        } else if joblib_quiet_at(done, verbose) {
            return;
        } else {
            let remaining = elapsed / done as f64 * (total - done) as f64;
            format!(
                "Done {done:3} out of {total:3} | elapsed: {} remaining: {}",
                short_time(elapsed),
                short_time(remaining)
            )
        };
        let line = format!("[Parallel(n_jobs={})]: {msg}", self.display.n_jobs);
        let stream = if verbose < 50 { Stream::Stderr } else { Stream::Stdout };
        self.print(stream, line.as_bytes());
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let _ = self.out.flush();
    }
}

/// joblib's `_verbosity_filter`: `true` when the message for `index` is skipped.
fn joblib_quiet_at(index: u64, verbose: u32) -> bool {
    if verbose > 10 || index == 0 {
        return false;
    }
    let v = 0.5 * f64::from(11 - verbose).powi(2);
    let scale = (index as f64 / v).sqrt();
    let next_scale = ((index + 1) as f64 / v).sqrt();
    scale as u64 == next_scale as u64
}

/// joblib's `short_format_time`.
fn short_time(t: f64) -> String {
    if t > 60.0 { format!("{:4.1}min", t / 60.0) } else { format!(" {t:5.1}s") }
}

/// What the summary says about the run's end.
struct End<'a> {
    finished: u64,
    succeeded: u64,
    total: u64,
    elapsed: Duration,
    sweep_dir: &'a Path,
    stopped_by: Option<i32>,
}

/// The last lines: counts, time, and every failed job with its log.
fn summary(mode: Mode, s: &End<'_>, failures: &mut [JobRecord]) {
    let not_started = s.total.saturating_sub(s.finished);
    let failed = failures.len();
    let total = s.total;
    let p = hydra_prefix();
    let mut line = format!("{p} {} of {total} jobs succeeded", s.succeeded);
    if failed > 0 {
        line.push_str(&format!(", {failed} failed"));
    }
    if not_started > 0 {
        line.push_str(&format!(", {not_started} not started"));
    }
    line.push_str(&format!(" in {:.2}s; output in {}", s.elapsed.as_secs_f64(), s.sweep_dir.display()));
    if let Some(sig) = s.stopped_by {
        line.push_str(&format!(" (stopped by {})", signal_name(sig)));
    }
    let mut err = io::stderr().lock();
    if failed > 0 || s.stopped_by.is_some() {
        let _ = writeln!(err, "{line}");
        failures.sort_by_key(|r| r.num);
        for r in failures.iter().take(50) {
            let _ = writeln!(
                err,
                "{p} \t#{} : {} -> {}; log: {}",
                r.num,
                escape_controls(&r.overrides.join(" ")),
                r.describe(),
                shown_log(&r.log)
            );
        }
        if failures.len() > 50 {
            let _ = writeln!(
                err,
                "{p} \t... and {} more; see {}",
                failures.len() - 50,
                s.sweep_dir.join("jobs.jsonl").display()
            );
        }
    } else if mode == Mode::Plain {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    } else {
        let _ = writeln!(err, "{line}");
    }
}

/// A job's log path as the summary shows it; a job that could not be prepared has none.
fn shown_log(log: &std::path::Path) -> String {
    if log.as_os_str().is_empty() { "none (the job could not be prepared)".into() } else { log.display().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joblib_frequency_and_time_format() {
        // Above 10 every completion is shown; up to 10 on a square-root scale, as joblib.
        assert!((1..50).all(|i| !joblib_quiet_at(i, 11)));
        assert_eq!((1..20).filter(|i| !joblib_quiet_at(*i, 10)).collect::<Vec<_>>(), [1, 4, 7, 12, 17]);
        let shown: Vec<u64> = (1..60).filter(|i| !joblib_quiet_at(*i, 1)).collect();
        assert_eq!(shown, vec![49]);
        assert_eq!(short_time(1.25), "   1.2s");
        assert_eq!(short_time(90.0), " 1.5min");
    }
}
