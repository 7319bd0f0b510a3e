//! The execution-backend seam: where one attempt of a job runs.
//!
//! The scheduler (`runner`: slots, stop escalation, halt policy, retries, journal, events)
//! drives every backend through [`Backend`] and [`Attempt`] and never sees a pid: it asks a
//! backend to start an attempt, waits for its end, asks it to end early with a signal (and
//! later to kill it), lets it clean up what the job left behind, and takes its output
//! totals and its log for the end record. Everything about *how* a job runs lives behind
//! this seam:
//!
//! - [`local`]: one process group per job on this machine (the vfork spawn, subreaper and
//!   marker hunting, pidfd/wait4, output pumps, the environment, payload files, the watchdog);
//! - [`slurm`]: one Slurm job array per run, each job a task run by this binary on its node
//!   (`__slurm-task`), tracked with one `squeue`/`sacct` call per poll for the whole array;
//! - [`fake`] (tests, feature `test-util`): scripted attempts on tokio's clock, for
//!   deterministic lifecycle tests without processes or sleeps.
//!
//! A backend declares what it can do in [`Capabilities`], so that the layers above can ask
//! (e.g. whether a job's files can be written on its node before its program starts) instead
//! of assuming the local machine.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::event::Event;
use crate::job::{JobFile, JobSpec};

#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod local;
pub mod slurm;

/// A boxed future, as the seam's methods return (one allocation per call: a few per job).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend can do, for the layers that prepare jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`JobSpec::files`] are written by the job's own process (on its node) before its
    /// program starts; otherwise they must already be on a filesystem the job can read.
    pub writes_files_before_exec: bool,
    /// Attempts run on this machine: a pid means something here, and `/dev/shm` is shared
    /// with the jobs.
    pub local_processes: bool,
    /// [`Attempt::signal`] delivers any signal (otherwise only a request to end).
    pub forwards_signals: bool,
    /// The backend applies [`JobSpec::timeout`] itself, from when the job really starts (a
    /// cluster's time limit: a task may wait in the queue first); the scheduler sets no
    /// deadline of its own and reports the backend's [`EndReason::TimeLimit`] as a timeout.
    pub enforces_timeout: bool,
    /// A started attempt may wait in a queue before its program runs (a cluster's): its
    /// [`Event::Started`] says `queued`, and the backend sends [`Event::Running`] through
    /// [`StartRequest::output`] when it sees the program run.
    pub queues: bool,
}

impl Capabilities {
    /// What a backend that can do none of the above declares.
    pub const NONE: Capabilities = Capabilities {
        writes_files_before_exec: false,
        local_processes: false,
        forwards_signals: false,
        enforces_timeout: false,
        queues: false,
    };
}

/// Everything a backend needs to start one attempt.
#[derive(Debug)]
#[non_exhaustive]
pub struct StartRequest<'a> {
    /// The job.
    pub job: &'a JobSpec,
    /// Its files for this attempt (the job's own `files`, taken out of it: a retry gets a
    /// copy).
    pub files: Vec<JobFile>,
    /// The slot it runs in (0..n_jobs-1).
    pub slot: usize,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    /// Where the job's output lines go as [`Event::Output`], if they are forwarded (and
    /// [`Event::Running`], from a backend that [`queues`](Capabilities::queues)).
    pub output: Option<mpsc::Sender<Event>>,
}

/// An attempt that never ran its program. Its note is already in the job's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct StartError {
    /// What went wrong, for the record and the console.
    pub message: String,
}

impl StartError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        StartError { message: message.into() }
    }
}

/// The backend lost track of a running attempt (its process could not be waited for, the
/// cluster forgot the task): the job's fate is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct LostError {
    /// What happened.
    pub message: String,
}

impl LostError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        LostError { message: message.into() }
    }
}

/// Why a cluster ended an attempt, rather than its program.
pub use crate::job::EndReason;

/// How an attempt's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitStatus {
    /// The backend (a cluster) ended it for `reason`; how its program ended, if known.
    Ended {
        /// Why.
        reason: EndReason,
        /// The program's exit code, if it exited.
        code: Option<i32>,
        /// The signal that ended it, if known.
        signal: Option<i32>,
    },
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

/// Resources an attempt used, as far as the backend can tell.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct Usage {
    /// User CPU seconds.
    pub user_cpu: f64,
    /// System CPU seconds.
    pub sys_cpu: f64,
    /// Peak resident memory in KiB.
    pub max_rss_kib: u64,
    /// The peak memory of the whole tree in KiB (what the kernel charged to its cgroup:
    /// resident memory and page cache), where the backend measures it.
    pub mem_peak_kib: Option<u64>,
}

/// An attempt's end, as [`Attempt::wait`] reports it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Exit {
    /// How it ended.
    pub status: ExitStatus,
    /// What it used.
    pub usage: Usage,
    /// When its program really started, where that differs from when the backend was asked
    /// to start it (a cluster task waits in the queue first); `None`: at `start`.
    pub started: Option<chrono::DateTime<chrono::Utc>>,
    /// When it ended, as the backend knows it; `None`: when `wait` saw it.
    pub ended: Option<chrono::DateTime<chrono::Utc>>,
    /// The machine it ran on, where that is not this one.
    pub node: Option<String>,
    /// The slot it really ran in, where the backend decides that (a Slurm task's slot is
    /// its index in its array modulo the throttle, whatever slot of the scheduler waited
    /// for it).
    pub slot: Option<usize>,
}

impl Exit {
    /// An exit with `status` and no usage figures.
    pub fn new(status: ExitStatus) -> Self {
        Exit { status, usage: Usage::default(), started: None, ended: None, node: None, slot: None }
    }
}

/// A job's log, for the supervisor's own notes (start, retries, the end record) beside the
/// lines the job wrote.
pub trait JobLog: Send {
    /// Append one note, stamped as the backend stamps the job's lines.
    fn note(&mut self, text: &str);

    /// Write out everything (notes may be held until then, so that a quiet job's log is
    /// written in one go). Returns the first error writing the log, if any: then some of
    /// the job's output was lost.
    fn close(self: Box<Self>) -> Option<String>;
}

/// What is left of an attempt once it has ended: its log and its output totals.
#[non_exhaustive]
pub struct Collected {
    /// The job's log, to add the end record to (written out when dropped).
    pub log: Box<dyn JobLog>,
    /// Bytes the attempt wrote to stdout.
    pub stdout_bytes: u64,
    /// Bytes it wrote to stderr.
    pub stderr_bytes: u64,
    /// Set when the attempt's process existed but never ran the program (its set-up or
    /// exec failed): the attempt counts as not started.
    pub start_error: Option<String>,
    /// What the whole attempt used (every process it started), where the backend can tell
    /// better than [`Attempt::wait`] could (a cgroup's counters).
    pub usage: Option<Usage>,
    /// How the attempt's processes were kept together (`cgroup`, `process-group`), for the
    /// record.
    pub isolation: Option<&'static str>,
    /// The attempt was forked from a warm Python interpreter.
    pub warm: bool,
}

impl std::fmt::Debug for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collected")
            .field("stdout_bytes", &self.stdout_bytes)
            .field("stderr_bytes", &self.stderr_bytes)
            .field("start_error", &self.start_error)
            .field("usage", &self.usage)
            .field("isolation", &self.isolation)
            .field("warm", &self.warm)
            .finish_non_exhaustive()
    }
}

/// One running attempt of a job.
pub trait Attempt: Send {
    /// The process id of its leader, where that means something to the caller (a local
    /// process); a detail for records and events, never used by the scheduler.
    fn pid(&self) -> Option<u32> {
        None
    }

    /// Resolves when the attempt's main process has ended. Cancel-safe: the scheduler drops
    /// the future to handle a timer or a stop, and calls again.
    fn wait(&mut self) -> BoxFuture<'_, Result<Exit, LostError>>;

    /// The run starts no new job (a drain, or the halt policy `soon`): an attempt whose
    /// program has not started yet (a cluster task still queued) should not start it.
    /// Resolves to whether it will be dropped (it then ends soon, as stopped by the run);
    /// the default, for backends whose attempts run as soon as they start, is `false`.
    /// Asynchronous: deciding may take I/O (a cluster's shared filesystem, its controller).
    fn withdraw(&mut self) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(false))
    }

    /// Deliver `signal` to the whole attempt (its process group, its escaped descendants;
    /// on a cluster, the task). SIGKILL ends it for sure.
    fn signal(&mut self, signal: i32);

    /// After [`Attempt::wait`]: end whatever the attempt left running, SIGTERM first and
    /// SIGKILL after `grace` (at once when `grace` is zero). Returns how many processes it
    /// found. The attempt's resources are free when this returns.
    fn clean_up(&mut self, grace: Duration) -> BoxFuture<'_, u32>;

    /// Its output totals and its log, once every process is gone (`job` is the attempt's
    /// job, for messages).
    fn collect<'a>(self: Box<Self>, job: &'a JobSpec) -> BoxFuture<'a, Collected>;
}

/// Where jobs run. One backend serves a whole run, from every slot's thread at once.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// A short name (`local`, `slurm`, `fake`), for messages.
    fn name(&self) -> &'static str;

    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// Start one attempt. An error means the program never ran; the backend has written
    /// why into the job's log.
    fn start<'a>(&'a self, req: StartRequest<'a>) -> BoxFuture<'a, Result<Box<dyn Attempt>, StartError>>;

    /// The run is stopping (a stop request, a halt): anything slow that `start` may be
    /// waiting for should give up now (the jobs it starts are then stopped as usual).
    fn stop_requested(&self) {}

    /// The run is over: end anything of its jobs still running anywhere (escapees that
    /// outlived every per-job check).
    fn run_ended(&self) {}
}
