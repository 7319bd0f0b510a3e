//! `orchestrator status DIR`: a sweep's progress from its journal, its record and its lock:
//! jobs by status, whether a run is on it now, what is running, what failed and why.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use orchestrator::JobStatus;
use orchestrator::journal::{JournalRecord, read_journal};
use orchestrator_hydra::SweepRecord;
use serde_json::json;

use crate::cli::StatusArgs;
use crate::exit;

pub fn main(args: StatusArgs) -> u8 {
    let dir = &args.dir;
    if !dir.join("multirun.yaml").is_file() && !dir.join("jobs.jsonl").is_file() {
        eprintln!(
            "error: {} is not a sweep dir (it has no multirun.yaml or jobs.jsonl)\n  = help: give a dir made by orchestrator run --multirun, e.g. multirun/2026-11-24/15-41-20",
            dir.display()
        );
        return exit::USAGE;
    }
    let record = SweepRecord::read(dir).ok().flatten();
    let records = match read_journal(&dir.join("jobs.jsonl")) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", dir.join("jobs.jsonl").display());
            return exit::INTERNAL;
        }
    };
    // The last record of each job is its state (a resumed job has one per run).
    let mut last: BTreeMap<u64, JournalRecord> = BTreeMap::new();
    for r in records {
        last.insert(r.num, r);
    }
    let live = run_is_live(dir);
    let total = record.as_ref().map(|r| r.jobs);
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for r in last.values() {
        *counts.entry(r.status.as_str()).or_default() += 1;
    }
    let succeeded = counts.get("succeeded").copied().unwrap_or(0);
    let not_finished = total.map(|t| t.saturating_sub(last.len() as u64));
    // Jobs with a dir but no record: running if a run is on the sweep, cut short otherwise.
    let started_unrecorded: Vec<u64> = match total {
        Some(t) => {
            (0..t.min(1_000_000)).filter(|n| !last.contains_key(n) && dir.join(n.to_string()).is_dir()).collect()
        }
        None => Vec::new(),
    };
    let times = |f: fn(&JournalRecord) -> &str| -> Vec<DateTime<Utc>> {
        last.values().filter_map(|r| DateTime::parse_from_rfc3339(f(r)).ok()).map(|t| t.with_timezone(&Utc)).collect()
    };
    let first_start = times(|r| &r.start).into_iter().min();
    let last_end = times(|r| &r.end).into_iter().max();
    let elapsed = match (first_start, live, last_end) {
        (Some(s), true, _) => Some((Utc::now() - s).to_std().unwrap_or_default()),
        (Some(s), false, Some(e)) => Some((e - s).to_std().unwrap_or_default()),
        _ => None,
    };
    // Mean wall time of the finished jobs, times what is left, over the slots.
    let eta = match (live, not_finished, record.as_ref().map(|r| r.n_jobs.max(1))) {
        (true, Some(left), Some(n_jobs)) if !last.is_empty() => {
            let mean = last.values().map(|r| r.duration_s).sum::<f64>() / last.len() as f64;
            Some(mean * left as f64 / n_jobs as f64)
        }
        _ => None,
    };
    let failed: Vec<&JournalRecord> = last.values().filter(|r| r.status != JobStatus::Succeeded).collect();
    let state = if live {
        "running"
    } else if not_finished == Some(0) && failed.is_empty() {
        "finished"
    } else if not_finished == Some(0) {
        "finished with failures"
    } else {
        "stopped"
    };
    let reason = |r: &JournalRecord| -> String {
        let mut why = r.status.as_str().replace('_', " ");
        if let Some(code) = r.exit_code.filter(|c| *c != 0 || r.status != JobStatus::Succeeded) {
            why.push_str(&format!(", exit code {code}"));
        }
        if let Some(sig) = &r.signal {
            why.push_str(&format!(", {sig}"));
        }
        if let Some(e) = &r.error {
            why.push_str(&format!(": {e}"));
        }
        why
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = json!({
            "sweep_dir": dir.display().to_string(),
            "state": state,
            "jobs": total,
            "recorded": last.len(),
            "by_status": counts,
            "not_finished": not_finished,
            "started_not_finished": started_unrecorded,
            "failed": failed.iter().map(|r| json!({
                "num": r.num, "overrides": r.overrides, "status": r.status, "reason": reason(r), "log": r.log,
            })).collect::<Vec<_>>(),
            "elapsed_s": elapsed.map(|d| d.as_secs_f64()),
            "eta_s": eta,
        });
        let _ = writeln!(out, "{v}");
        return exit::OK;
    }
    let shown = |n: Option<u64>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
    let _ = writeln!(out, "sweep {}: {state}", dir.display());
    let mut line = format!("jobs: {} of {} succeeded", succeeded, shown(total));
    for (status, n) in counts.iter().filter(|(s, _)| **s != "succeeded") {
        line.push_str(&format!(", {n} {}", status.replace('_', " ")));
    }
    if let Some(left) = not_finished.filter(|n| *n > 0) {
        line.push_str(&format!(", {left} not finished"));
    }
    let _ = writeln!(out, "{line}");
    let _ = writeln!(out, "supervisor: {}", if live { "running (it holds the sweep's lock)" } else { "none running" });
    if let Some(queue) = slurm_queue(dir) {
        let _ = writeln!(out, "Slurm: {queue}");
    }
    if !started_unrecorded.is_empty() {
        let what = if live { "running" } else { "started, cut short (no record)" };
        let _ = writeln!(out, "{what}: {}", list(&started_unrecorded));
    }
    if let Some(e) = elapsed {
        let mut t = format!("elapsed: {}", humantime::format_duration(round(e)));
        if let Some(eta) = eta {
            t.push_str(&format!(
                ", ETA about {}",
                humantime::format_duration(round(std::time::Duration::from_secs_f64(eta)))
            ));
        }
        let _ = writeln!(out, "{t}");
    }
    for r in failed.iter().take(50) {
        let _ = writeln!(out, "  #{} {}: {}; log: {}", r.num, r.overrides.join(" "), reason(r), r.log);
    }
    if failed.len() > 50 {
        let _ = writeln!(out, "  ... and {} more (see {})", failed.len() - 50, dir.join("jobs.jsonl").display());
    }
    if !live && (not_finished.is_some_and(|n| n > 0) || !failed.is_empty()) {
        let _ = writeln!(out, "resume with: orchestrator resume {}", dir.display());
    }
    exit::OK
}

/// On Slurm, the sweep's tasks in the queue, by state (one `squeue` for its arrays).
fn slurm_queue(dir: &Path) -> Option<String> {
    let arrays = sweep_arrays(dir);
    if arrays.is_empty() {
        return None;
    }
    let states = match queued_tasks(&arrays) {
        Ok(Some(tasks)) => {
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for (_, state) in &tasks {
                *counts.entry(state.as_str()).or_default() += 1;
            }
            if counts.is_empty() {
                "nothing in the queue".to_string()
            } else {
                counts.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ")
            }
        }
        // slurmctld forgot the arrays (all ended long ago), or it cannot be asked.
        Ok(None) => "nothing in the queue (Slurm no longer knows these arrays)".to_string(),
        Err(e) => format!("cannot run squeue: {e}"),
    };
    Some(format!("{states} (array{} {})", if arrays.len() > 1 { "s" } else { "" }, arrays.join(", ")))
}

/// The Slurm arrays a sweep submitted, as its backend lists them in `.slurm/arrays` (one id
/// a line); none for a local sweep.
pub(crate) fn sweep_arrays(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join(".slurm").join("arrays"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// What `squeue` has of the tasks of `arrays` (those still in the queue), as
/// `(<array>_<task>, state)`; `None` when it refuses the ids (slurmctld forgot them).
pub(crate) fn queued_tasks(arrays: &[String]) -> std::io::Result<Option<Vec<(String, String)>>> {
    let out = std::process::Command::new("squeue")
        .args(["-h", "-r", "-j", &arrays.join(","), "-o", "%i %T"])
        .stderr(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    let tasks = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .map(|(id, state)| (id.to_string(), state.to_string()))
        .collect();
    Ok(Some(tasks))
}

/// Whether a run holds the sweep dir's lock now.
fn run_is_live(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir) else { return false };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_) => false,
        Err((_, e)) => e == nix::errno::Errno::EWOULDBLOCK,
    }
}

fn round(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs())
}

/// `0-3, 7, 9-10`.
fn list(nums: &[u64]) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &n in nums {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => runs.push((n, n)),
        }
    }
    let shown: Vec<String> =
        runs.iter().take(20).map(|(a, b)| if a == b { format!("#{a}") } else { format!("#{a}-{b}") }).collect();
    let more = if runs.len() > 20 { ", ..." } else { "" };
    format!("{}{more}", shown.join(", "))
}
