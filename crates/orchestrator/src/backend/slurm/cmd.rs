//! Slurm's command-line tools, and what their stable text output says (`squeue -h -r -o`,
//! `sacct -P -n -X`, `scontrol -o`, `sbatch --parsable`; never the 22.05 JSON). The facts
//! relied on are measured in `.ci/slurm/NOTES.md`.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};

/// Why Slurm cannot be used, or refused something: Slurm's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SlurmError {
    /// `sbatch` (or another tool) is not on `PATH`.
    #[error(
        "Slurm's `{0}` was not found in PATH\n  = help: run on a Slurm login node, or install the Slurm client (Debian: slurm-client)"
    )]
    Missing(&'static str),
    /// The controller does not answer.
    #[error("the Slurm controller does not answer: {0}\n  = help: check `scontrol ping` and `sinfo`")]
    Unreachable(String),
    /// A submission (or its test) was refused.
    #[error("Slurm refused the submission: {0}")]
    Rejected(String),
    /// A command failed otherwise.
    #[error("`{command}` failed: {message}")]
    Failed {
        /// The command.
        command: String,
        /// What it said.
        message: String,
    },
}

/// What a command printed, and whether it succeeded.
pub(crate) struct Output {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Output {
    /// Its stderr as one line (Slurm writes `sbatch: error: ...` lines).
    pub(crate) fn message(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        if lines.is_empty() { self.stdout.trim().to_string() } else { lines.join("; ") }
    }
}

pub(crate) fn run(program: &str, args: &[String]) -> std::io::Result<Output> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output()?;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn show(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_string()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ")
}

/// What the cluster says about itself.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterInfo {
    /// Array task ids must be below this.
    pub max_array_size: u64,
    /// `sacct` works (slurmdbd is configured).
    pub accounting: bool,
    /// Slurm's version.
    pub version: String,
}

/// Check that Slurm can be used from here: `sbatch` on `PATH`, `scontrol ping` says the
/// controller is up (it answers at once, where `sbatch` would hang ~10 s), and read
/// `MaxArraySize` and whether accounting is on from `scontrol show config`.
pub fn probe() -> Result<ClusterInfo, SlurmError> {
    for tool in ["sbatch", "squeue", "scancel", "scontrol"] {
        if which::which(tool).is_err() {
            return Err(SlurmError::Missing(tool));
        }
    }
    let ping = run("scontrol", &["ping".into()])
        .map_err(|e| SlurmError::Failed { command: "scontrol ping".into(), message: e.to_string() })?;
    if !ping.ok || !ping.stdout.contains(" is UP") {
        let first = ping.stdout.lines().next().unwrap_or("").trim().to_string();
        let said = if first.is_empty() { ping.message() } else { first };
        return Err(SlurmError::Unreachable(said));
    }
    let config = run("scontrol", &["show".into(), "config".into()])
        .map_err(|e| SlurmError::Failed { command: "scontrol show config".into(), message: e.to_string() })?;
    if !config.ok {
        return Err(SlurmError::Unreachable(config.message()));
    }
    let values = parse_config(&config.stdout);
    let max_array_size = values.get("MaxArraySize").and_then(|v| v.parse().ok()).unwrap_or(1001);
    let accounting = values.get("AccountingStorageType").is_some_and(|v| v != "accounting_storage/none");
    let version = values.get("SLURM_VERSION").cloned().unwrap_or_default();
    Ok(ClusterInfo { max_array_size, accounting, version })
}

/// `Key = value` lines of `scontrol show config` (split at the first `=`, trimmed).
pub(crate) fn parse_config(text: &str) -> HashMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

/// `sbatch --parsable ...`: the array's job id, or Slurm's refusal.
pub(crate) fn sbatch(args: &[String]) -> Result<u64, SlurmError> {
    let out = run("sbatch", args)
        .map_err(|e| SlurmError::Failed { command: show("sbatch", args), message: e.to_string() })?;
    if !out.ok {
        let message = out.message();
        if message.contains("Unable to contact slurm controller") {
            return Err(SlurmError::Unreachable(message));
        }
        return Err(SlurmError::Rejected(message));
    }
    // `<id>` or `<id>;<cluster>`.
    let first = out.stdout.trim().split(';').next().unwrap_or("").trim().to_string();
    first.parse().map_err(|_| SlurmError::Failed {
        command: show("sbatch", args),
        message: format!("unexpected answer `{}`", out.stdout.trim()),
    })
}

/// `sbatch --test-only`: whether Slurm would take the submission (a bad partition, too much
/// memory), without queueing anything.
pub(crate) fn sbatch_test(args: &[String]) -> Result<(), SlurmError> {
    let mut a = vec!["--test-only".to_string()];
    a.extend(args.iter().cloned());
    let out =
        run("sbatch", &a).map_err(|e| SlurmError::Failed { command: show("sbatch", &a), message: e.to_string() })?;
    if out.ok {
        return Ok(());
    }
    let message = out.message();
    if message.contains("Unable to contact slurm controller") {
        return Err(SlurmError::Unreachable(message));
    }
    Err(SlurmError::Rejected(message))
}

/// A task's state as `squeue -t all` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) state: String,
    pub(crate) node: Option<String>,
    pub(crate) start: Option<DateTime<Utc>>,
    pub(crate) end: Option<DateTime<Utc>>,
}

/// Whether a task in `state` (squeue's word) has its program running: allocated and started,
/// not pending, requeued or held.
pub(crate) fn is_running(state: &str) -> bool {
    matches!(state, "RUNNING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "SIGNALING" | "STAGE_OUT")
}

/// Whether a state word means the task is still in the queue (or on its way out).
pub(crate) fn is_live(state: &str) -> bool {
    !matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "TIMEOUT"
            | "CANCELLED"
            | "OUT_OF_MEMORY"
            | "NODE_FAIL"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "PREEMPTED"
    )
}

/// Slurm's `YYYY-MM-DDTHH:MM:SS`, local time without a zone; `Unknown`, `N/A`, `NONE`: none.
pub(crate) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S").ok()?;
    Local.from_local_datetime(&naive).earliest().map(|t| t.with_timezone(&Utc))
}

/// The format of every `squeue` call: task id, state, node, start, end.
pub(crate) const SQUEUE_FORMAT: &str = "%i|%T|%N|%S|%e";

/// `squeue -h -r -t all -j <arrays> -o ...`: every task of these arrays that slurmctld
/// still holds (finished ones for `MinJobAge` after their end), by `<array>_<task>`. `None`
/// when slurmctld knows none of them (`Invalid job id specified`); an error when it cannot
/// be asked.
pub(crate) fn squeue(arrays: &[u64]) -> Result<Option<HashMap<String, Seen>>, String> {
    let ids = arrays.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let args: Vec<String> =
        ["-h", "-r", "-t", "all", "-j", &ids, "-o", SQUEUE_FORMAT].iter().map(|s| s.to_string()).collect();
    let out = run("squeue", &args).map_err(|e| e.to_string())?;
    if !out.ok {
        if out.stderr.contains("Invalid job id specified") {
            return Ok(None);
        }
        return Err(out.message());
    }
    Ok(Some(parse_squeue(&out.stdout)))
}

pub(crate) fn parse_squeue(text: &str) -> HashMap<String, Seen> {
    let mut seen = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.trim().split('|').collect();
        if f.len() < 5 || !f[0].contains('_') || f[0].contains('[') {
            continue;
        }
        let node = Some(f[2].trim()).filter(|n| !n.is_empty() && *n != "(null)").map(str::to_string);
        seen.insert(
            f[0].trim().to_string(),
            Seen { state: f[1].trim().to_string(), node, start: parse_time(f[3]), end: parse_time(f[4]) },
        );
    }
    seen
}

/// What `sacct` says about a finished task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accounted {
    pub(crate) state: String,
    pub(crate) code: i32,
    pub(crate) signal: i32,
    pub(crate) node: Option<String>,
    pub(crate) start: Option<DateTime<Utc>>,
    pub(crate) end: Option<DateTime<Utc>>,
}

/// `sacct -P -n -X -j <arrays> -o JobID,State,ExitCode,Start,End,NodeList`, by
/// `<array>_<task>`; `None` when accounting is off (`Slurm accounting storage is
/// disabled`).
pub(crate) fn sacct(arrays: &[u64]) -> Result<Option<HashMap<String, Accounted>>, String> {
    let ids = arrays.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let args: Vec<String> = ["-P", "-n", "-X", "-j", &ids, "-o", "JobID,State,ExitCode,Start,End,NodeList"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = run("sacct", &args).map_err(|e| e.to_string())?;
    if out.stderr.contains("accounting storage is disabled") || out.stdout.contains("accounting storage is disabled") {
        return Ok(None);
    }
    if !out.ok {
        return Err(out.message());
    }
    Ok(Some(parse_sacct(&out.stdout)))
}

pub(crate) fn parse_sacct(text: &str) -> HashMap<String, Accounted> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.trim().split('|').collect();
        if f.len() < 6 {
            continue;
        }
        // `CANCELLED by 0`: the first word.
        let state = f[1].split_whitespace().next().unwrap_or("").to_string();
        let (code, signal) = f[2].split_once(':').unwrap_or((f[2], "0"));
        let node = Some(f[5].trim()).filter(|n| !n.is_empty() && *n != "None assigned").map(str::to_string);
        let entry = Accounted {
            state,
            code: code.trim().parse().unwrap_or(0),
            signal: signal.trim().parse().unwrap_or(0),
            node,
            start: parse_time(f[3]),
            end: parse_time(f[4]),
        };
        let id = f[0].trim();
        // `N_[a-b%t]`: tasks that never started, one line for all of them.
        if let Some((array, range)) = id.split_once("_[") {
            let range = range.trim_end_matches(']');
            for part in range.split(',') {
                let part = part.split('%').next().unwrap_or("");
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                    for t in a..=b.min(a + 100_000) {
                        out.insert(format!("{array}_{t}"), entry.clone());
                    }
                }
            }
        } else if id.contains('_') {
            out.insert(id.to_string(), entry);
        }
    }
    out
}

/// `scontrol -o show job <array>_<task>`: its state and exit code, for a task that ended
/// without writing its marker while accounting is off.
pub(crate) fn scontrol_job(task: &str) -> Option<Accounted> {
    let line = scontrol_show(task)?;
    let get = |key: &str| scontrol_field(&line, key).map(str::to_string);
    let (code, signal) = get("ExitCode").and_then(|e| {
        let (c, s) = e.split_once(':')?;
        Some((c.parse().ok()?, s.parse().ok()?))
    })?;
    Some(Accounted {
        state: get("JobState")?,
        code,
        signal,
        node: get("NodeList").filter(|n| n != "(null)"),
        start: get("StartTime").as_deref().and_then(parse_time),
        end: get("EndTime").as_deref().and_then(parse_time),
    })
}

/// How many times Slurm has requeued `task` (`Restarts=`), and its state now.
pub(crate) fn scontrol_restarts(task: &str) -> Option<(u32, String)> {
    parse_restarts(&scontrol_show(task)?)
}

fn parse_restarts(line: &str) -> Option<(u32, String)> {
    Some((scontrol_field(line, "Restarts")?.parse().ok()?, scontrol_field(line, "JobState")?.to_string()))
}

/// `scontrol -o show job <task>`: its one line of `Key=value` fields.
fn scontrol_show(task: &str) -> Option<String> {
    let out = run("scontrol", &["-o".into(), "show".into(), "job".into(), task.into()]).ok()?;
    if !out.ok {
        return None;
    }
    out.stdout.lines().next().map(str::to_string)
}

/// The value of `key` in a line of `scontrol -o` (`Key=value` fields).
fn scontrol_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// `scancel` with `args`; what it said when it failed (a task already gone is not worth a
/// word: the caller waits for the queue anyway).
pub(crate) fn scancel(args: &[String]) -> Result<(), String> {
    let out = run("scancel", args).map_err(|e| e.to_string())?;
    if out.ok { Ok(()) } else { Err(out.message()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_parse_from_scontrol() {
        let line = "JobId=91 ArrayJobId=90 ArrayTaskId=1 JobName=x JobState=PENDING Reason=BeginTime Dependency=(null) Requeue=1 Restarts=2 BatchFlag=1";
        assert_eq!(parse_restarts(line), Some((2, "PENDING".to_string())));
        assert_eq!(parse_restarts("JobId=91 JobState=RUNNING"), None);
    }

    #[test]
    fn squeue_lines_parse() {
        let seen = parse_squeue(
            "190_1|PENDING||N/A|N/A\n190_0|RUNNING|vm|2026-12-07T17:23:18|NONE\n190_3|CANCELLED||2026-12-07T17:23:38|2026-12-07T17:23:38\n",
        );
        assert_eq!(seen.len(), 3);
        assert_eq!(seen["190_0"].state, "RUNNING");
        assert_eq!(seen["190_0"].node.as_deref(), Some("vm"));
        assert!(seen["190_0"].start.is_some() && seen["190_0"].end.is_none());
        assert_eq!(seen["190_1"].node, None);
        assert!(!is_live("CANCELLED") && is_live("COMPLETING") && is_live("REQUEUED") && is_live("PENDING"));
    }

    #[test]
    fn sacct_lines_parse_ranges_and_cancelled_by() {
        let acc = parse_sacct(
            "30|PENDING|0:0|Unknown|Unknown|None assigned\n30_1|FAILED|3:0|2026-12-07T16:59:39|2026-12-07T16:59:39|vm\n30_3|CANCELLED by 0|0:0|2026-12-07T16:59:40|2026-12-07T16:59:40|vm\n52_[1-3%2]|CANCELLED by 0|0:0|2026-12-07T17:03:02|2026-12-07T17:03:02|None assigned\n",
        );
        assert_eq!(acc["30_1"].code, 3);
        assert_eq!(acc["30_3"].state, "CANCELLED");
        assert!(acc.contains_key("52_1") && acc.contains_key("52_3") && !acc.contains_key("52_4"));
        assert!(!acc.contains_key("30"));
    }

    #[test]
    fn config_lines_split_at_the_first_equals() {
        let c = parse_config(
            "Configuration data as of 2026-12-07T16:59:34\nMaxArraySize            = 1001\nAccountingStorageType   = accounting_storage/none\n",
        );
        assert_eq!(c["MaxArraySize"], "1001");
        assert_eq!(c["AccountingStorageType"], "accounting_storage/none");
    }
}
