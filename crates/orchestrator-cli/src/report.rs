//! Reporters: they consume the runner's events and print them; they never drive the run.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use chrono::Local;
use orchestrator::{Event, JobRecord, RunSummary, Stream};
use serde_json::json;
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

/// What the header says about the sweep.
pub struct Header<'a> {
    pub banner: &'a str,
    pub n_jobs_total: u64,
    pub sweep_dir: &'a Path,
    pub jobs: &'a mut dyn Iterator<Item = (u64, String)>,
    pub listed_max: u64,
}

pub fn header(mode: Mode, h: Header<'_>) {
    let mut out = io::stdout().lock();
    match mode {
        Mode::Plain => {
            let p = hydra_prefix();
            let _ = writeln!(out, "{p} {} is launching {} jobs", h.banner, h.n_jobs_total);
            let _ = writeln!(out, "{p} Launching jobs, sweep output dir : {}", h.sweep_dir.display());
            for (num, overrides) in h.jobs.take(h.listed_max as usize) {
                let _ = writeln!(out, "{p} \t#{num} : {overrides}");
            }
            if h.n_jobs_total > h.listed_max {
                let _ = writeln!(out, "{p} \t... {} more jobs", h.n_jobs_total - h.listed_max);
            }
        }
        Mode::Json => {
            let v = json!({"event": "sweep_started", "jobs": h.n_jobs_total, "sweep_dir": h.sweep_dir.display().to_string(), "launcher": h.banner});
            let _ = writeln!(out, "{v}");
        }
        Mode::Quiet => {}
    }
    let _ = out.flush();
}

/// The line that says a sweep is being resumed.
pub fn resuming(mode: Mode, dir: &Path, done: u64, total: u64) {
    match mode {
        Mode::Plain => {
            println!("{} Resuming sweep {}: {done} of {total} jobs already succeeded", hydra_prefix(), dir.display())
        }
        Mode::Json => println!(
            "{}",
            json!({"event": "sweep_resumed", "sweep_dir": dir.display().to_string(), "already_succeeded": done, "jobs": total})
        ),
        Mode::Quiet => {}
    }
}

/// How the console follows the run, besides the mode.
#[derive(Debug, Clone, Copy)]
pub struct Display {
    /// Jobs that will run.
    pub total: u64,
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
    /// Job in each busy slot. By slot, not by count: a slot can take its next job before
    /// the previous one's `Finished` arrives.
    running: std::collections::HashMap<usize, u64>,
    done: u64,
    failed: u64,
}

impl Reporter {
    fn new(mode: Mode, display: Display) -> Self {
        let bar = (display.bar && mode == Mode::Plain).then(|| {
            let bar =
                indicatif::ProgressBar::with_draw_target(Some(display.total), indicatif::ProgressDrawTarget::stderr());
            let style = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} jobs {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Reporter {
            mode,
            display,
            out: io::BufWriter::with_capacity(64 * 1024, io::stdout()),
            bar,
            started: std::time::Instant::now(),
            running: std::collections::HashMap::new(),
            done: 0,
            failed: 0,
        }
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
            if let Some(v) = ev.to_json() {
                let _ = writeln!(self.out, "{v}");
            }
            return;
        }
        match ev {
            Event::Started { num, slot, .. } => {
                self.running.insert(*slot, *num);
            }
            Event::Output { stream, line, .. } if self.mode == Mode::Plain => self.print(*stream, line),
            Event::Finished(rec) => {
                if self.running.get(&rec.slot) == Some(&rec.num) {
                    self.running.remove(&rec.slot);
                }
                self.done += 1;
                if !rec.outcome.is_success() {
                    self.failed += 1;
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
            bar.set_message(format!("({} running, {} failed)", self.running.len(), self.failed));
        }
    }

    /// joblib's `verbose` progress lines, at joblib's frequency; to stderr below level 50,
    /// to stdout from 50 on, as joblib does.
    fn progress_line(&mut self) {
        let verbose = self.display.verbose;
        if verbose == 0 {
            return;
        }
        let (done, total) = (self.done, self.display.total);
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

/// The last lines: counts, time, and every failed job with its log.
pub fn summary(mode: Mode, s: &RunSummary, total: u64, elapsed: Duration, sweep_dir: &Path, stopped_by: Option<i32>) {
    let not_started = total.saturating_sub(s.finished);
    let failed = s.failures.len();
    if mode == Mode::Json {
        let v = json!({
            "event": "sweep_finished", "jobs": total, "succeeded": s.succeeded, "failed": failed,
            "not_started": not_started, "duration_s": elapsed.as_secs_f64(),
            "sweep_dir": sweep_dir.display().to_string(),
            "interrupted_by": stopped_by.map(orchestrator::job::signal_name),
        });
        println!("{v}");
        return;
    }
    let p = hydra_prefix();
    let mut line = format!("{p} {} of {total} jobs succeeded", s.succeeded);
    if failed > 0 {
        line.push_str(&format!(", {failed} failed"));
    }
    if not_started > 0 {
        line.push_str(&format!(", {not_started} not started"));
    }
    line.push_str(&format!(" in {:.2}s; output in {}", elapsed.as_secs_f64(), sweep_dir.display()));
    if let Some(sig) = stopped_by {
        line.push_str(&format!(" (stopped by {})", orchestrator::job::signal_name(sig)));
    }
    let mut err = io::stderr().lock();
    if failed > 0 || stopped_by.is_some() {
        let _ = writeln!(err, "{line}");
        let mut sorted: Vec<&JobRecord> = s.failures.iter().collect();
        sorted.sort_by_key(|r| r.num);
        for r in sorted.iter().take(50) {
            let _ = writeln!(
                err,
                "{p} \t#{} : {} -> {}; log: {}",
                r.num,
                r.overrides.join(" "),
                r.outcome.describe(),
                shown_log(&r.log)
            );
        }
        if sorted.len() > 50 {
            let _ = writeln!(
                err,
                "{p} \t... and {} more; see {}",
                sorted.len() - 50,
                sweep_dir.join("jobs.jsonl").display()
            );
        }
    } else if mode == Mode::Plain {
        println!("{line}");
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
