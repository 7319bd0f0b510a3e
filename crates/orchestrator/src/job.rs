//! What a job is, how it ended, and the record kept of it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Everything needed to start one job.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct JobSpec {
    /// Job number (0..N-1 within a sweep).
    pub num: u64,
    /// Job id (`<name>_<num>` in a sweep).
    pub id: String,
    /// The program to run (a path or a name looked up in `PATH`).
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Environment added to the supervisor's own.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory; `None` = the supervisor's.
    pub cwd: Option<PathBuf>,
    /// Where every line the job writes is logged. The job's process creates the file (and
    /// its directory, one level) as it starts; a file that exists is appended to.
    pub log_path: PathBuf,
    /// The job's own directory, if it has one.
    pub dir: Option<PathBuf>,
    /// Wall-clock limit from the job's start.
    pub timeout: Option<Duration>,
    /// The job's overrides as Hydra shows them (`task=1`).
    pub overrides: Vec<String>,
    /// Named byte values for the job (library use). Each reaches the child as a file listed
    /// in `ORCHESTRATOR_ARGS`: the shared spill (one file per distinct content) when bigger
    /// than the runner's `max_nbytes`, else a file of the job's own, removed when it ends.
    /// Names must differ within a job; a job with two of one name does not start.
    pub payloads: Vec<Payload>,
    /// Files the job's own process writes, in order, between its start and the program's
    /// (a sweep's `.hydra/*.yaml`). Each file's directory is made first if it is missing
    /// (one level). They exist by the time the program runs, not necessarily when
    /// `Event::Started` is seen; a file that cannot be written ends the job as `SpawnFailed`.
    pub files: Vec<JobFile>,
    /// Set when preparing the job failed (its directory could not be made, its files not
    /// rendered):
    /// the job is recorded as not started, with this reason.
    pub setup_error: Option<String>,
    /// This job's retries, instead of the run's [`RunOptions::retry`](crate::RunOptions::retry).
    pub retry: Option<crate::retry::RetryPolicy>,
}

impl JobSpec {
    /// A job running `program` with `args`, logging to `log_path`.
    pub fn new(num: u64, program: impl Into<OsString>, args: Vec<OsString>, log_path: impl Into<PathBuf>) -> Self {
        JobSpec {
            num,
            id: num.to_string(),
            program: program.into(),
            args,
            log_path: log_path.into(),
            ..JobSpec::default()
        }
    }
}

/// A file written for a job just before its program starts (see [`JobSpec::files`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct JobFile {
    /// Where: absolute, or relative to the supervisor's working directory.
    pub path: PathBuf,
    /// What, in full: an existing file is replaced.
    pub contents: Vec<u8>,
}

impl std::fmt::Debug for JobFile {
    // The path and the size: a job's `{:?}` should not print whole files.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobFile").field("path", &self.path).field("bytes", &self.contents.len()).finish()
    }
}

impl JobFile {
    /// A file at `path` holding `contents`.
    pub fn new(path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        JobFile { path: path.into(), contents: contents.into() }
    }
}

/// A named value handed to a job (see [`JobSpec::payloads`]).
#[derive(Debug, Clone)]
pub struct Payload {
    /// The argument's name (the key in `ORCHESTRATOR_ARGS`).
    pub name: String,
    /// The bytes; cheap to share between many jobs.
    pub bytes: std::sync::Arc<[u8]>,
}

impl Payload {
    /// A payload named `name`.
    pub fn new(name: impl Into<String>, bytes: impl Into<std::sync::Arc<[u8]>>) -> Self {
        Payload { name: name.into(), bytes: bytes.into() }
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Why a job was stopped by the supervisor rather than ending on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StopReason {
    /// Another job failed and the halt policy is `now`.
    Halt,
    /// The supervisor was asked to stop (Ctrl-C, SIGTERM, a cancelled token).
    Interrupted,
    /// This job alone was cancelled through its handle.
    Cancelled,
}

/// Why a cluster ended a job rather than its program (Slurm's final states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndReason {
    /// It ran past its time limit (Slurm `TIMEOUT`, `DEADLINE`).
    TimeLimit,
    /// Someone else cancelled it (Slurm `CANCELLED`, not by this supervisor).
    Cancelled,
    /// Its node failed (Slurm `NODE_FAIL`, `BOOT_FAIL`).
    NodeFail,
    /// It used more memory than it was given (Slurm `OUT_OF_MEMORY`, or killed for it).
    OutOfMemory,
    /// A job of higher priority took its resources (Slurm `PREEMPTED`).
    Preempted,
}

impl EndReason {
    /// A human phrase.
    pub fn describe(self) -> &'static str {
        match self {
            EndReason::TimeLimit => "ran past its time limit",
            EndReason::Cancelled => "cancelled by the cluster",
            EndReason::NodeFail => "its node failed",
            EndReason::OutOfMemory => "out of memory",
            EndReason::Preempted => "preempted",
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The cluster ended it (not a time limit: that is [`Outcome::TimedOut`]).
    ClusterEnded {
        /// Why.
        reason: EndReason,
        /// Exit code, if its program exited.
        code: Option<i32>,
        /// The signal that ended it, if known.
        signal: Option<i32>,
    },
    /// Exit code 0.
    Succeeded,
    /// A non-zero exit code.
    Failed {
        /// The exit code.
        code: i32,
    },
    /// Killed by a signal it did not get from us.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// Ran past its timeout and was ended.
    TimedOut {
        /// The limit it ran past.
        limit: Duration,
        /// How it finally ended (exit code or signal).
        code: Option<i32>,
        /// The signal that ended it, if any.
        signal: Option<i32>,
    },
    /// Ended by the supervisor before it finished.
    Stopped {
        /// Why.
        reason: StopReason,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// The signal that ended it, if any.
        signal: Option<i32>,
    },
    /// Could not be started at all.
    SpawnFailed {
        /// The operating system's reason.
        error: String,
    },
    /// The supervisor lost track of it (its task panicked, its process could not be waited
    /// for): how it ended is unknown.
    Lost {
        /// What happened.
        error: String,
    },
}

/// A job's status word, as `jobs.jsonl` writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobStatus {
    /// Exit code 0.
    Succeeded,
    /// A non-zero exit code.
    Failed,
    /// Killed by a signal it did not get from us.
    Signaled,
    /// Ran past its timeout.
    TimedOut,
    /// Stopped after another job failed (halt policy `now`).
    Halted,
    /// Cancelled through its handle.
    Cancelled,
    /// It ended with exit code 0, but its log could not be written: its output is lost.
    LogFailed,
    /// Stopped by Ctrl-C, SIGTERM or a cancelled run.
    Interrupted,
    /// Could not be started.
    SpawnFailed,
    /// The supervisor lost track of it.
    Lost,
    /// Its node failed (the cluster ended it).
    NodeFailed,
    /// Ran out of memory (the cluster ended it).
    OutOfMemory,
    /// Preempted on the cluster.
    Preempted,
}

impl JobStatus {
    /// The word (`succeeded`, `timed_out`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Signaled => "signaled",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Halted => "halted",
            JobStatus::Cancelled => "cancelled",
            JobStatus::LogFailed => "log_failed",
            JobStatus::Interrupted => "interrupted",
            JobStatus::SpawnFailed => "spawn_failed",
            JobStatus::Lost => "lost",
            JobStatus::NodeFailed => "node_failed",
            JobStatus::OutOfMemory => "out_of_memory",
            JobStatus::Preempted => "preempted",
        }
    }
}

impl Outcome {
    /// Whether the job succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded)
    }

    /// The status word used in the journal and summaries.
    pub fn job_status(&self) -> JobStatus {
        match self {
            Outcome::Succeeded => JobStatus::Succeeded,
            Outcome::Failed { .. } => JobStatus::Failed,
            Outcome::Signaled { .. } => JobStatus::Signaled,
            Outcome::TimedOut { .. } => JobStatus::TimedOut,
            Outcome::Stopped { reason: StopReason::Halt, .. } => JobStatus::Halted,
            Outcome::Stopped { reason: StopReason::Cancelled, .. } => JobStatus::Cancelled,
            Outcome::Stopped { .. } => JobStatus::Interrupted,
            Outcome::SpawnFailed { .. } => JobStatus::SpawnFailed,
            Outcome::Lost { .. } => JobStatus::Lost,
            Outcome::ClusterEnded { reason, .. } => match reason {
                EndReason::NodeFail => JobStatus::NodeFailed,
                EndReason::OutOfMemory => JobStatus::OutOfMemory,
                EndReason::Preempted => JobStatus::Preempted,
                EndReason::Cancelled => JobStatus::Cancelled,
                EndReason::TimeLimit => JobStatus::TimedOut,
            },
        }
    }

    /// [`Outcome::job_status`] as its word.
    pub fn status(&self) -> &'static str {
        self.job_status().as_str()
    }

    /// The error text of an outcome that has one (could not start, lost).
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::SpawnFailed { error } | Outcome::Lost { error } => Some(error),
            _ => None,
        }
    }

    /// Exit code, if the process exited.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Succeeded => Some(0),
            Outcome::Failed { code } => Some(*code),
            Outcome::TimedOut { code, .. } | Outcome::Stopped { code, .. } | Outcome::ClusterEnded { code, .. } => {
                *code
            }
            _ => None,
        }
    }

    /// Terminating signal, if any.
    pub fn signal(&self) -> Option<i32> {
        match self {
            Outcome::Signaled { signal, .. } => Some(*signal),
            Outcome::TimedOut { signal, .. }
            | Outcome::Stopped { signal, .. }
            | Outcome::ClusterEnded { signal, .. } => *signal,
            _ => None,
        }
    }

    /// One human phrase: `exit code 3`, `killed by SIGSEGV (core dumped)`, `timed out after 2s`.
    pub fn describe(&self) -> String {
        let how = |code: Option<i32>, signal: Option<i32>| match (code, signal) {
            (_, Some(s)) => format!("ended by {}", signal_name(s)),
            (Some(c), None) => format!("exited with code {c}"),
            _ => "ended".to_string(),
        };
        match self {
            Outcome::Succeeded => "exit code 0".into(),
            Outcome::Failed { code } => format!("exit code {code}"),
            Outcome::Signaled { signal, core_dumped } => {
                format!("killed by {}{}", signal_name(*signal), if *core_dumped { " (core dumped)" } else { "" })
            }
            Outcome::TimedOut { limit, code, signal } => {
                format!("timed out after {}, {}", humanize(*limit), how(*code, *signal))
            }
            Outcome::Stopped { reason: StopReason::Halt, code, signal } => {
                format!("stopped after another job failed, {}", how(*code, *signal))
            }
            Outcome::Stopped { reason: StopReason::Cancelled, code: None, signal: None } => {
                "cancelled before it started".into()
            }
            Outcome::Stopped { reason: StopReason::Cancelled, code, signal } => {
                format!("cancelled, {}", how(*code, *signal))
            }
            Outcome::Stopped { code, signal, .. } => format!("interrupted, {}", how(*code, *signal)),
            Outcome::SpawnFailed { error } => format!("could not start: {error}"),
            Outcome::Lost { error } => format!("lost: {error}"),
            Outcome::ClusterEnded { reason, code, signal } => format!("{}, {}", reason.describe(), how(*code, *signal)),
        }
    }
}

/// `SIGTERM` for 15, `signal 99` for unknown numbers.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {sig}"))
}

/// `2s`, `1.500s`.
pub fn humanize(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs.fract() == 0.0 { format!("{secs:.0}s") } else { format!("{secs:.3}s") }
}

/// What is known about a finished job: the line written to `jobs.jsonl`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobRecord {
    /// Job number.
    pub num: u64,
    /// Job id.
    pub id: String,
    /// Overrides as Hydra shows them.
    pub overrides: Vec<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Process id of the job's leader, if it started.
    pub pid: Option<u32>,
    /// Slot it ran in.
    pub slot: usize,
    /// When it started (or failed to).
    pub start: DateTime<Utc>,
    /// When it ended.
    pub end: DateTime<Utc>,
    /// Wall time.
    pub duration: Duration,
    /// User CPU seconds of the job's reaped processes.
    pub user_cpu: f64,
    /// System CPU seconds of the job's reaped processes.
    pub sys_cpu: f64,
    /// Peak RSS in KiB of the largest of the job's reaped processes.
    pub max_rss_kib: u64,
    /// The whole tree's peak memory in KiB (its memory cgroup's), where it was measured.
    pub mem_peak_kib: Option<u64>,
    /// Bytes written to stdout.
    pub stdout_bytes: u64,
    /// Bytes written to stderr.
    pub stderr_bytes: u64,
    /// Processes left behind by the job that the supervisor had to end.
    pub leftover_processes: u32,
    /// The job's log file.
    pub log: PathBuf,
    /// The job's directory.
    pub dir: Option<PathBuf>,
    /// How many attempts it had (1 without retries).
    pub attempts: u32,
    /// How each attempt before the last ended, in order.
    pub earlier_attempts: Vec<AttemptRecord>,
    /// Set when the job's log could not be written (a full disk): some of its output is
    /// lost, so the job does not count as a success (`log_failed`), and `--resume` runs it
    /// again.
    pub log_error: Option<String>,
    /// How the job's processes were kept together and found at its end: `cgroup` (every
    /// process it started), `process-group` (its group, and escapees by their marker).
    pub isolation: Option<&'static str>,
    /// The machine it ran on, where that is not this one (a cluster node).
    pub node: Option<String>,
    /// Its last attempt was forked from a warm Python interpreter.
    pub warm: bool,
}

/// How one attempt of a job that was tried again ended (an entry of a record's
/// `earlier_attempts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// How it ended.
    pub status: JobStatus,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, by name.
    pub signal: Option<String>,
    /// Why it could not start, or was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it started.
    pub start: String,
    /// Its wall time, seconds.
    pub duration_s: f64,
}

impl AttemptRecord {
    /// The record of attempt `attempt`, which ended as `outcome`.
    pub fn new(attempt: u32, outcome: &Outcome, start: DateTime<Utc>, duration: Duration) -> Self {
        AttemptRecord {
            attempt,
            status: outcome.job_status(),
            exit_code: outcome.exit_code(),
            signal: outcome.signal().map(signal_name),
            error: outcome.error().map(str::to_owned),
            start: start.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            duration_s: micros(duration.as_secs_f64()),
        }
    }
}

fn micros(secs: f64) -> f64 {
    (secs * 1e6).round() / 1e6
}

impl JobRecord {
    /// The record of a job that ended as `outcome` without running (it could not be
    /// prepared, or was cancelled first): no process, no output, ended now.
    pub fn unstarted(num: u64, id: String, slot: usize, start: DateTime<Utc>, outcome: Outcome) -> Self {
        let end = Utc::now();
        JobRecord {
            num,
            id,
            overrides: Vec::new(),
            outcome,
            pid: None,
            slot,
            start,
            end,
            duration: (end - start).to_std().unwrap_or_default(),
            user_cpu: 0.0,
            sys_cpu: 0.0,
            max_rss_kib: 0,
            mem_peak_kib: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            leftover_processes: 0,
            log: PathBuf::new(),
            dir: None,
            attempts: 0,
            earlier_attempts: Vec::new(),
            log_error: None,
            isolation: None,
            node: None,
            warm: false,
        }
    }

    /// [`JobRecord::unstarted`] for `spec`: its id, overrides, log and dir.
    pub fn unstarted_spec(spec: &JobSpec, slot: usize, start: DateTime<Utc>, outcome: Outcome) -> Self {
        let mut record = JobRecord::unstarted(spec.num, spec.id.clone(), slot, start, outcome);
        record.overrides = spec.overrides.clone();
        record.log = spec.log_path.clone();
        record.dir = spec.dir.clone();
        record
    }

    /// The record as one line of JSON (no trailing newline): its `jobs.jsonl` line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.journal_line()).unwrap_or_default()
    }

    /// The record as a JSON object (the fields of its `jobs.jsonl` line).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self.journal_line()).unwrap_or_default()
    }

    /// The record as its journal line.
    pub fn journal_line(&self) -> crate::journal::JournalLine<'_> {
        use std::borrow::Cow;
        crate::journal::JournalLine {
            num: self.num,
            id: Cow::Borrowed(&self.id),
            status: self.status(),
            overrides: Cow::Borrowed(&self.overrides),
            exit_code: self.outcome.exit_code(),
            signal: self.outcome.signal().map(signal_name),
            timed_out: matches!(self.outcome, Outcome::TimedOut { .. }),
            error: self.outcome.error().or(self.log_error.as_deref()).map(Cow::Borrowed),
            pid: self.pid,
            slot: self.slot,
            start: self.start.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            end: self.end.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            duration_s: micros(self.duration.as_secs_f64()),
            cpu_user_s: micros(self.user_cpu),
            cpu_sys_s: micros(self.sys_cpu),
            max_rss_kib: self.max_rss_kib,
            mem_peak_kib: self.mem_peak_kib,
            stdout_bytes: self.stdout_bytes,
            stderr_bytes: self.stderr_bytes,
            leftover_processes: self.leftover_processes,
            log: self.log.to_string_lossy(),
            dir: self.dir.as_ref().map(|d| d.to_string_lossy()),
            attempts: self.attempts,
            earlier_attempts: Cow::Borrowed(&self.earlier_attempts),
            isolation: self.isolation.map(Cow::Borrowed),
            node: self.node.as_deref().map(Cow::Borrowed),
            warm: self.warm,
        }
    }
}

impl JobRecord {
    /// Whether the job succeeded: exit code 0, and its whole output in its log.
    pub fn is_success(&self) -> bool {
        self.outcome.is_success() && self.log_error.is_none()
    }

    /// The record's status word: the outcome's, or `log_failed`.
    pub fn status(&self) -> JobStatus {
        match (&self.outcome, &self.log_error) {
            (Outcome::Succeeded, Some(_)) => JobStatus::LogFailed,
            (outcome, _) => outcome.job_status(),
        }
    }

    /// One human phrase for how it ended, its log's failure included.
    pub fn describe(&self) -> String {
        match &self.log_error {
            Some(e) => format!("{}, but its output is lost: {e}", self.outcome.describe()),
            None => self.outcome.describe(),
        }
    }
}

impl Serialize for JobRecord {
    /// As its journal line.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.journal_line().serialize(serializer)
    }
}
