//! `orchestrator status <sweep dir>`: a sweep's progress from its journal, whether a
//! supervisor still holds it, and (on Slurm) its tasks in the queue.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::exit;

pub fn main(dir: &Path) -> u8 {
    let journal = dir.join("jobs.jsonl");
    if !dir.join("multirun.yaml").exists() && !journal.exists() {
        eprintln!(
            "error: {} is not a sweep dir (no multirun.yaml, no jobs.jsonl)\n  = help: give a dir made by `orchestrator run --multirun`",
            dir.display()
        );
        return exit::USAGE;
    }
    let records = match orchestrator::journal::read_journal(&journal) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", journal.display());
            return exit::USAGE;
        }
    };
    // The last record of each job counts (a resumed job has one per run).
    let mut last: BTreeMap<u64, &str> = BTreeMap::new();
    for r in &records {
        last.insert(r.num, r.status.as_str());
    }
    let mut by_status: BTreeMap<&str, u64> = BTreeMap::new();
    for s in last.values() {
        *by_status.entry(s).or_default() += 1;
    }
    // On Slurm, every job submitted has a manifest: that is the sweep's size so far.
    let slurm = dir.join(".slurm");
    let mut submitted: HashSet<u64> = HashSet::new();
    for batch in std::fs::read_dir(&slurm).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(batch.path()).into_iter().flatten().flatten() {
            let name = f.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".json")
                && let Ok(text) = std::fs::read(f.path())
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text)
                && let Some(n) = v.get("num").and_then(|n| n.as_u64())
            {
                submitted.insert(n);
            }
        }
    }
    let finished = last.len() as u64;
    let summary = by_status.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ");
    let total = (submitted.len() as u64).max(finished);
    println!(
        "{}: {finished} of {total} job(s) recorded{}",
        dir.display(),
        if summary.is_empty() { String::new() } else { format!(" ({summary})") }
    );
    println!("supervisor: {}", if locked(dir) { "running (it holds the sweep's lock)" } else { "none running" });
    let arrays: Vec<String> = std::fs::read_to_string(slurm.join("arrays"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if !arrays.is_empty() {
        let out = std::process::Command::new("squeue")
            .args(["-h", "-r", "-j", &arrays.join(","), "-o", "%T"])
            .stderr(std::process::Stdio::null())
            .output();
        let states = match out {
            Ok(o) if o.status.success() => {
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for l in String::from_utf8_lossy(&o.stdout).lines() {
                    *counts.entry(l.trim().to_string()).or_default() += 1;
                }
                if counts.is_empty() {
                    "nothing in the queue".to_string()
                } else {
                    counts.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ")
                }
            }
            // slurmctld forgot the arrays (all ended long ago), or it cannot be asked.
            Ok(_) => "nothing in the queue (Slurm no longer knows these arrays)".to_string(),
            Err(e) => format!("cannot run squeue: {e}"),
        };
        println!("Slurm: {states} (array{} {})", if arrays.len() > 1 { "s" } else { "" }, arrays.join(", "));
    }
    exit::OK
}

/// Whether a run holds the sweep dir's lock.
fn locked(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir) else { return false };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_) => false,
        Err((_, e)) => e == nix::errno::Errno::EWOULDBLOCK,
    }
}
