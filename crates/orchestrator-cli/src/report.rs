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

/// Print events until the channel closes.
pub async fn consume(mode: Mode, mut events: mpsc::Receiver<Event>) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    let mut err = io::stderr();
    while let Some(first) = events.recv().await {
        let mut next = Some(first);
        // Drain what is already queued before flushing: one write for many lines.
        while let Some(ev) = next {
            show(mode, &ev, &mut out, &mut err);
            next = events.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

fn show(mode: Mode, ev: &Event, out: &mut impl Write, err: &mut impl Write) {
    match (mode, ev) {
        (Mode::Json, ev) => {
            let _ = writeln!(out, "{}", event_json(ev));
        }
        (Mode::Plain, Event::Output { stream, line, .. }) => match stream {
            Stream::Stderr => {
                // Keep our stdout order with the child's stderr as close as the terminal allows.
                let _ = out.flush();
                let _ = err.write_all(line);
                let _ = err.write_all(b"\n");
            }
            _ => {
                let _ = out.write_all(line);
                let _ = out.write_all(b"\n");
            }
        },
        (Mode::Plain | Mode::Quiet, Event::Finished(rec)) if !rec.outcome.is_success() => {
            let _ = out.flush();
            let _ = writeln!(
                err,
                "{} \t#{} : {} {}, log: {}",
                hydra_prefix(),
                rec.num,
                rec.overrides.join(" "),
                rec.outcome.describe(),
                rec.log.display()
            );
        }
        _ => {}
    }
}

fn event_json(ev: &Event) -> serde_json::Value {
    match ev {
        Event::Started { num, pid, slot, at } => {
            json!({"event": "job_started", "num": num, "pid": pid, "slot": slot, "time": at.to_rfc3339()})
        }
        Event::Output { num, stream, line, complete } => json!({
            "event": "output", "num": num, "stream": stream.name(),
            "line": String::from_utf8_lossy(line), "complete": complete,
        }),
        Event::Finished(rec) => {
            let mut v: serde_json::Value = serde_json::from_str(&rec.to_json()).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.insert("event".into(), json!("job_finished"));
            }
            v
        }
        _ => json!({"event": "unknown"}),
    }
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
                r.log.display()
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
