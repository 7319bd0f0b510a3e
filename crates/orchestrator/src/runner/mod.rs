//! The scheduler: `n_jobs` slots, stop requests and the halt policy, retries, the journal and
//! the events. It drives jobs through an execution backend (see [`crate::backend`]) and
//! never sees a process.
//!
//! Each slot is a task that takes jobs from the [`JobSource`] one after another, on one of a
//! few threads of the runner's own (`slots`); each job is a unit (`unit`) that runs its
//! attempts one after another, each attempt driven through its phases (`attempt`), and
//! reports one [`JobRecord`]. The caller's task only forwards stop requests, says when the
//! run starts stopping, and waits for the slots.

mod admission;
mod attempt;
mod slots;
mod unit;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use orchestrator_config::{HaltPolicy, SlotValue};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use self::admission::{Admission, SystemState};
use crate::backend::Backend;
use crate::backend::local::LocalBackend;
use crate::event::{Event, RunInfo};
use crate::job::{JobRecord, JobSpec, StopReason};
use crate::journal::Journal;
use crate::retry::RetryPolicy;

/// A job handed to the runner, with what the caller needs to follow it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Submission {
    /// What to run.
    pub spec: JobSpec,
    /// Cancels this job alone (before or while it runs).
    pub cancel: CancellationToken,
    /// Receives the job's record when it ends.
    pub reply: Option<oneshot::Sender<JobRecord>>,
}

impl From<JobSpec> for Submission {
    fn from(spec: JobSpec) -> Self {
        Submission { spec, cancel: CancellationToken::new(), reply: None }
    }
}

/// A request to stop, in increasing order of urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum Stop {
    /// Keep going.
    #[default]
    None,
    /// Start no new job; let running ones finish.
    Drain,
    /// Start no new job; send `signal` to running jobs, then SIGKILL after the grace period.
    Graceful {
        /// Why.
        reason: StopReason,
        /// Signal forwarded to every running job's process group.
        signal: i32,
    },
    /// SIGKILL every running job now.
    Immediate,
}

/// How the runner behaves. The fields from `thread_limit` to `foreign_children`, and
/// `watchdog`, are the local backend's.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunOptions {
    /// Jobs at once.
    pub n_jobs: usize,
    /// Time between SIGTERM (or the forwarded signal) and SIGKILL.
    pub grace: Duration,
    /// What to do after a failure.
    pub halt: HaltPolicy,
    /// Per-slot environment values.
    pub slot_env: Vec<(String, SlotValue)>,
    /// Value for the thread-count variables (unless already set); `None` leaves them alone.
    pub thread_limit: Option<usize>,
    /// Send each output line as an [`Event::Output`].
    pub forward_output: bool,
    /// Where finished jobs are recorded.
    pub journal: Option<Arc<Journal>>,
    /// Cancelling it stops the run as SIGTERM would: no new job, running ones get SIGTERM,
    /// then SIGKILL after the grace period.
    pub cancel: CancellationToken,
    /// Payloads bigger than this are spilled once and shared; `None` = never share.
    pub max_nbytes: Option<u64>,
    /// How children should map payload files.
    pub mmap_mode: Option<orchestrator_config::MmapMode>,
    /// Where payloads go; `None` = joblib's order (`JOBLIB_TEMP_FOLDER`, `/dev/shm`, tmp).
    pub temp_folder: Option<PathBuf>,
    /// A spill store to use (e.g. to read back what `r+` jobs wrote after the run); one is
    /// created on first need otherwise, and removed when the run ends.
    pub spill: Option<Arc<crate::spill::SpillStore>>,
    /// Make this process a child subreaper (process-wide, and not undone), so that jobs'
    /// daemonised grandchildren are re-parented here and ended with their job.
    pub subreaper: bool,
    /// Children of this process that are not jobs' (the CLI's watchdog, say): the reaper,
    /// which otherwise reads the state and environment of every child that is not a job's
    /// leader each time a job ends, never looks at them. Each must stay unreaped for as
    /// long as the run lasts, so that its pid cannot be reused meanwhile.
    pub foreign_children: Vec<u32>,
    /// Run each slot's jobs in a cgroup of their own where the kernel allows it (cgroup v2,
    /// as root or in a delegated subtree): then a job's leftovers are found and ended
    /// whatever they did to leave, and its CPU time is its whole tree's. On by default;
    /// `ORCHESTRATOR_CGROUPS=0` in the environment turns it off too.
    pub cgroups: bool,
    /// Each job's memory limit in bytes (memory plus swap): a job over it is killed by the
    /// kernel and recorded `out_of_memory`. Needs a memory cgroup per slot, which
    /// [`LocalBackend::memory`] says whether it has; without one the limit is not enforced.
    pub memory_limit: Option<u64>,
    /// Start a watchdog process that ends what the jobs forked if this process dies
    /// without ending them (SIGKILL, a crash). The program must call
    /// [`watchdog::serve_if_requested`](crate::watchdog::serve_if_requested) first thing in
    /// its `main`: the watchdog is the program itself, started again.
    pub watchdog: bool,
    /// When a job that did not succeed is tried again (default: never).
    pub retry: RetryPolicy,
    /// Where the jobs run; `None` = [`LocalBackend`], made for this run from these options.
    pub backend: Option<Arc<dyn Backend>>,
    /// What the run is, for [`Event::RunStarted`] (a reporter prints its header from it).
    pub info: RunInfo,
    /// When a job may start: free memory, load, a delay between starts (none by default).
    pub admission: Admission,
    /// Threads of its own the run starts for its slots; `None` = one per slot up to the
    /// CPUs this process may use; `Some(0)` = none, the slots run on the caller's runtime
    /// (a test on a paused clock needs that).
    pub slot_threads: Option<usize>,
    /// Fork Python jobs (`python script.py ...`, `python -m module ...`) from a warm
    /// interpreter that has imported what they need ([`LocalBackend`] only; Linux). Each job
    /// is still its own process, supervised as a fresh one; a job that cannot be forked
    /// safely runs fresh. `None` (the default): every job is a fresh process.
    pub warm: Option<crate::backend::local::WarmOptions>,
}

impl RunOptions {
    /// Options for `n_jobs` slots with the defaults: 5 s grace, keep going, no journal.
    pub fn new(n_jobs: usize) -> Self {
        RunOptions {
            n_jobs: n_jobs.max(1),
            grace: orchestrator_config::launcher::DEFAULT_GRACE,
            halt: HaltPolicy::Never,
            slot_env: Vec::new(),
            thread_limit: None,
            forward_output: false,
            journal: None,
            cancel: CancellationToken::new(),
            max_nbytes: Some(1 << 20),
            mmap_mode: Some(orchestrator_config::MmapMode::R),
            temp_folder: None,
            spill: None,
            subreaper: true,
            foreign_children: Vec::new(),
            watchdog: false,
            cgroups: true,
            memory_limit: None,
            retry: RetryPolicy::default(),
            backend: None,
            info: RunInfo::default(),
            slot_threads: None,
            warm: None,
            admission: Admission::default(),
        }
    }
}

/// What happened overall.
#[derive(Debug, Default, Clone)]
#[non_exhaustive]
pub struct RunSummary {
    /// Jobs that ended (any outcome).
    pub finished: u64,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Records of the jobs that did not succeed, in the order they ended.
    pub failures: Vec<JobRecord>,
    /// The strongest stop request seen.
    pub stop: Stop,
    /// Whether jobs were left unstarted because of a stop or the halt policy.
    pub stopped_early: bool,
    /// Journal writes that failed (a record's append, the final sync): a resume would run
    /// the jobs whose records are missing again.
    pub journal_errors: u64,
    /// The first journal error, if any.
    pub journal_error: Option<String>,
}

/// Where the runner's slots take their jobs from.
#[non_exhaustive]
pub enum JobSource {
    /// Jobs sent by a caller (the [`Supervisor`](crate::Supervisor)); the run ends when the
    /// channel closes.
    Channel(mpsc::Receiver<Submission>),
    /// Jobs made on demand, by the slot that will run each one, on its own thread, just
    /// before it starts; the run ends at the first `None`. The closure must not block (on a
    /// channel, say): it holds up its thread's other slots meanwhile, and dropping the run
    /// waits for it.
    Lazy(Box<dyn FnMut() -> Option<Submission> + Send>),
}

impl From<mpsc::Receiver<Submission>> for JobSource {
    fn from(rx: mpsc::Receiver<Submission>) -> Self {
        JobSource::Channel(rx)
    }
}

impl std::fmt::Debug for JobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobSource::Channel(_) => "JobSource::Channel",
            JobSource::Lazy(_) => "JobSource::Lazy",
        })
    }
}

/// The source, shared by the slots.
enum Source {
    Channel(tokio::sync::Mutex<mpsc::Receiver<Submission>>),
    // A tokio mutex: a slot waiting while another prepares its job must not block its
    // thread, whose other slots may have output to read or timers due.
    Lazy(tokio::sync::Mutex<Box<dyn FnMut() -> Option<Submission> + Send>>),
}

impl Source {
    /// The next job, or `None` when there is none or a stop came first.
    async fn next(&self, stop: &mut watch::Receiver<Stop>) -> Option<Submission> {
        match self {
            Source::Channel(rx) => tokio::select! {
                biased;
                () = stopped(stop) => None,
                sub = async { rx.lock().await.recv().await } => sub,
            },
            Source::Lazy(make) => tokio::select! {
                biased;
                () = stopped(stop) => None,
                mut make = make.lock() => (*make)(),
            },
        }
    }
}

/// Resolves once a stop is requested.
async fn stopped(stop: &mut watch::Receiver<Stop>) {
    while *stop.borrow_and_update() == Stop::None {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Run the jobs from `source` until it runs dry or a stop request ends the run.
///
/// Jobs that were not started because of a stop are not recorded; everything that started
/// gets exactly one [`Event::Finished`] and one journal line. The events begin with
/// [`Event::RunStarted`] and end with [`Event::RunFinished`]; [`Event::Stopping`] comes when a
/// stop request (or the halt policy) first makes the run start stopping, and again each time
/// it escalates.
pub async fn run(
    opts: RunOptions,
    source: impl Into<JobSource>,
    events: Option<mpsc::Sender<Event>>,
    external: watch::Receiver<Stop>,
) -> RunSummary {
    if let Some(tx) = &events {
        let _ = tx.send(run_started(&opts)).await;
    }
    run_announced(opts, source, events, external).await
}

/// The [`Event::RunStarted`] of a run with `opts`.
pub(crate) fn run_started(opts: &RunOptions) -> Event {
    let backend = opts.backend.as_ref().map_or("local", |b| b.name());
    Event::RunStarted(Box::new(RunInfo { n_jobs: opts.n_jobs.max(1), backend: backend.into(), ..opts.info.clone() }))
}

/// [`run`], for a caller that sent [`Event::RunStarted`] itself.
pub(crate) async fn run_announced(
    opts: RunOptions,
    source: impl Into<JobSource>,
    events: Option<mpsc::Sender<Event>>,
    mut external: watch::Receiver<Stop>,
) -> RunSummary {
    let t0 = tokio::time::Instant::now();
    let cancel = opts.cancel.clone();
    let n_jobs = opts.n_jobs.max(1);
    let (total, dir) = (opts.info.total, opts.info.dir.clone());
    let backend: Arc<dyn Backend> = match &opts.backend {
        Some(b) => b.clone(),
        None => Arc::new(LocalBackend::new(&opts)),
    };
    let ctx = Arc::new(unit::Ctx::new(opts, backend.clone(), events.clone()));
    let (stop_tx, mut stop_seen) = watch::channel(*external.borrow());
    let threads = ctx.opts.slot_threads.unwrap_or_else(|| n_jobs.min(crate::available_cpus()).max(1));
    let workers = slots::Workers::start(threads);
    let slots = Arc::new(slots::Slots {
        source: match source.into() {
            JobSource::Channel(rx) => Source::Channel(tokio::sync::Mutex::new(rx)),
            JobSource::Lazy(make) => Source::Lazy(tokio::sync::Mutex::new(make)),
        },
        workers: workers.handles.clone(),
        tracker: tokio_util::task::TaskTracker::new(),
        n_jobs,
        made: AtomicUsize::new(1),
        busy: AtomicUsize::new(0),
        exhausted: AtomicBool::new(false),
        summary: std::sync::Mutex::new(RunSummary::default()),
        stop: stop_tx,
        start_gate: admission::StartGate::default(),
    });
    {
        let slots = Arc::downgrade(&slots);
        let policy = ctx.opts.halt;
        let _ = ctx.halt.set(Box::new(move |record| {
            if let Some(slots) = slots.upgrade() {
                slots.halt_after(record, policy);
            }
        }));
    }
    slots.add_slot(0, &ctx);
    slots.tracker.close();
    let mut external_open = true;
    let mut cancel_seen = false;
    let mut said = Stop::None;
    let mut interrupted_by = None;
    loop {
        // A stop that came before the run (or while it was set up) is said first.
        let now = *stop_seen.borrow_and_update();
        if now > said {
            said = now;
            if let Stop::Graceful { reason: StopReason::Interrupted, signal } = now {
                interrupted_by.get_or_insert(signal);
            }
            // A start that waits for something slow (a warm interpreter) gives up now.
            backend.stop_requested();
            if let Some(tx) = &events {
                let _ = tx.send(Event::Stopping { request: now }).await;
            }
        }
        tokio::select! {
            biased;
            changed = external.changed(), if external_open => match changed {
                Ok(()) => {
                    let req = *external.borrow_and_update();
                    slots.stop.send_modify(|s| *s = (*s).max(req));
                }
                Err(_) => external_open = false,
            },
            () = cancel.cancelled(), if !cancel_seen => {
                cancel_seen = true;
                slots.stop.send_modify(|s| {
                    *s = (*s).max(Stop::Graceful { reason: StopReason::Interrupted, signal: libc::SIGTERM })
                });
            }
            // The halt policy escalates from the slots.
            _ = stop_seen.changed() => {}
            () = slots.tracker.wait() => break,
        }
    }
    drop(workers);
    backend.run_ended();
    let mut summary = std::mem::take(&mut *slots.summary.lock().unwrap_or_else(|e| e.into_inner()));
    summary.stop = *slots.stop.borrow();
    ctx.finish(&mut summary);
    if let Some(tx) = &events {
        let failed = summary.failures.len() as u64;
        let _ = tx
            .send(Event::RunFinished {
                finished: summary.finished,
                succeeded: summary.succeeded,
                failed,
                total,
                dir,
                stop: summary.stop,
                interrupted_by,
                duration: t0.elapsed(),
            })
            .await;
    }
    summary
}

#[cfg(test)]
mod tests;
