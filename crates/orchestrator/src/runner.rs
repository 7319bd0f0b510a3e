//! The supervisor loop: `n_jobs` slots, one process group per job, timeouts, stop requests.
//!
//! Each slot is a task that takes jobs from the [`JobSource`] one after another, on one of a
//! few threads of the runner's own; each job runs in its own task that owns its process and
//! reports a [`JobRecord`]. The caller's task only forwards stop requests and waits for the
//! slots. Shared between threads: the reaper's lock, the summary, the journal.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;
use orchestrator_config::{HaltPolicy, SlotValue};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::job::{JobRecord, JobSpec, Outcome, StopReason};
use crate::journal::Journal;
use crate::output::{self, Clock, LogWriter};
use crate::sys;

/// Env var carrying the supervisor's private marker; it tells which job an adopted orphan
/// came from, so a daemonised grandchild is still ended with its job.
pub const JOB_KEY_VAR: &str = "ORCHESTRATOR_JOB_KEY";

/// The start of the [`JOB_KEY_VAR`] entry (`NAME=value`) in the environment of every process
/// of every job started by the supervisor with process id `pid`: a watchdog that outlives the
/// supervisor finds what is left of its jobs by it.
pub fn job_marker_prefix(pid: u32) -> String {
    format!("{JOB_KEY_VAR}={pid}-")
}

/// Thread-count variables that numeric libraries read; set per job as joblib's loky does.
pub const THREAD_VARS: &[&str] = &[
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
];

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

/// How the runner behaves.
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

/// Tracks which of our children belong to jobs, so that reaping adopted orphans never
/// steals the exit status of a job leader or of a child the embedding program owns.
struct Reaper {
    state: Mutex<ReaperState>,
    /// See [`RunOptions::foreign_children`].
    foreign: HashSet<u32>,
}

#[derive(Default)]
struct ReaperState {
    /// Job leaders: reaped only by their job's task.
    leaders: HashSet<u32>,
    /// Process groups of jobs not yet cleaned up: dead members are ours to reap.
    groups: HashSet<u32>,
    /// Orphans seen alive carrying one of our markers.
    adopted: HashSet<u32>,
    /// Threads that spawned jobs: our children (and adopted orphans) are listed under them.
    spawners: sys::ChildLists,
}

/// The runner's state goes when its last task does. If that happens with jobs still running
/// (the runtime was dropped under them), their process groups are killed here: nothing else
/// would ever stop them. Only groups whose leader is not reaped yet: its pid, and so the
/// group's id, cannot have been reused.
impl Drop for Reaper {
    fn drop(&mut self) {
        let state = self.lock();
        for &leader in state.leaders.iter() {
            sys::signal_group(leader, Signal::SIGKILL);
        }
    }
}

impl Reaper {
    /// A reaper that also watches the main thread's children, where orphans go.
    fn new(foreign: HashSet<u32>) -> Reaper {
        let mut state = ReaperState::default();
        state.spawners.add_main_thread();
        Reaper { state: Mutex::new(state), foreign }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReaperState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self, req: sys::SpawnRequest<'_>) -> io::Result<sys::Spawned> {
        // Holding the lock across spawn: a concurrent sweep must not see the new leader
        // before it is registered, or it could reap it.
        let mut state = self.lock();
        let child = sys::spawn(req)?;
        state.spawners.add_current_thread();
        state.leaders.insert(child.pid);
        state.groups.insert(child.pid);
        Ok(child)
    }

    fn release_leader(&self, pid: u32) {
        self.lock().leaders.remove(&pid);
    }

    fn release_group(&self, pgid: u32) {
        self.lock().groups.remove(&pgid);
    }

    /// Reap dead orphans of our jobs; return the live ones whose environment matches `marker`.
    fn sweep(&self, marker: &dyn Fn(&OsStr) -> bool) -> Vec<u32> {
        let mut state = self.lock();
        let mut live = Vec::new();
        for pid in state.spawners.read() {
            if state.leaders.contains(&pid) || self.foreign.contains(&pid) {
                continue;
            }
            match sys::proc_state(pid) {
                Some(('Z' | 'X', pgid)) if state.groups.contains(&pgid) || state.adopted.remove(&pid) => {
                    let _ = sys::try_wait4(pid);
                }
                Some(_) if sys::environ_matches(pid, marker) => {
                    state.adopted.insert(pid);
                    live.push(pid);
                }
                _ => {}
            }
        }
        live
    }
}

struct Ctx {
    opts: RunOptions,
    reaper: Reaper,
    events: Option<mpsc::Sender<Event>>,
    clock: Clock,
    run_key: String,
    own_pgid: u32,
    /// Our environment when the run started, as the `NAME=value` C strings every job
    /// starts from (made once, shared by every job).
    base_env: Arc<[CString]>,
    /// Indices in `base_env` of each name in it (an environment can hold a name twice, and
    /// `getenv` would see the first).
    base_index: HashMap<OsString, Vec<usize>>,
    /// `PATH` in that environment, for looking up programs.
    path_var: Option<OsString>,
    /// The thread-count variables to add to every job (those not in `base_env`).
    thread_env: Vec<(OsString, OsString)>,
    /// `PATH` lookups already done.
    programs: Mutex<HashMap<OsString, PathBuf>>,
    /// Where payloads are spilled, made on first need.
    spill: std::sync::OnceLock<Result<Arc<crate::spill::SpillStore>, String>>,
    /// Journal appends that failed, and the first error.
    journal_errors: Mutex<(u64, Option<String>)>,
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

/// The slots of one run. Each slot is a task that takes a job, runs it, and takes the next,
/// on one of a few threads of our own (one per CPU at most), each with its own event loop:
/// a job's end wakes the thread of its slot, which starts the slot's next job at once,
/// without a round trip through a central dispatcher. On 2 cores with tiny jobs that
/// round trip (a second wake-up per job, on whichever CPU) was a tenth of the run time.
struct Slots {
    source: Source,
    workers: Vec<tokio::runtime::Handle>,
    tracker: tokio_util::task::TaskTracker,
    n_jobs: usize,
    /// Slots made so far; a new one is made when all are busy (n_jobs can be huge, and
    /// only as many slots as jobs ever run at once are made).
    made: AtomicUsize,
    busy: AtomicUsize,
    /// The source said it has no more jobs.
    exhausted: std::sync::atomic::AtomicBool,
    summary: Mutex<RunSummary>,
    stop: watch::Sender<Stop>,
}

impl Slots {
    fn add_slot(self: &Arc<Self>, slot: usize, ctx: &Arc<Ctx>) {
        let worker = &self.workers[slot % self.workers.len()];
        self.tracker.spawn_on(slot_loop(slot, self.clone(), ctx.clone()), worker);
    }

    /// A slot took a job: if no slot is left waiting for the next one, make one.
    fn took_job(self: &Arc<Self>, ctx: &Arc<Ctx>) {
        let busy = self.busy.fetch_add(1, Ordering::AcqRel) + 1;
        let made = self.made.load(Ordering::Acquire);
        if busy >= made
            && made < self.n_jobs
            && self.made.compare_exchange(made, made + 1, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.add_slot(made, ctx);
        }
    }

    /// A slot saw a stop before the source ran dry: jobs were left unstarted.
    fn stopped_early(&self) {
        if !self.exhausted.load(Ordering::Acquire) {
            self.summary.lock().unwrap_or_else(|e| e.into_inner()).stopped_early = true;
        }
    }

    fn account(&self, record: JobRecord, halt: HaltPolicy) {
        let mut summary = self.summary.lock().unwrap_or_else(|e| e.into_inner());
        summary.finished += 1;
        if record.outcome.is_success() {
            summary.succeeded += 1;
            return;
        }
        if !matches!(record.outcome, Outcome::Stopped { .. }) {
            match halt {
                HaltPolicy::Soon => self.stop.send_modify(|s| *s = (*s).max(Stop::Drain)),
                HaltPolicy::Now => self
                    .stop
                    .send_modify(|s| *s = (*s).max(Stop::Graceful { reason: StopReason::Halt, signal: libc::SIGTERM })),
                _ => {}
            }
        }
        summary.failures.push(record);
    }
}

/// One slot: take a job, start it, and once its processes are gone (it hands the slot back
/// before writing its log, journal line and events) take the next.
async fn slot_loop(slot: usize, slots: Arc<Slots>, ctx: Arc<Ctx>) {
    let mut stop = slots.stop.subscribe();
    let mut jobs: JoinSet<JobRecord> = JoinSet::new();
    let mut nums: HashMap<tokio::task::Id, u64> = HashMap::new();
    let collect = |done: Result<(tokio::task::Id, JobRecord), tokio::task::JoinError>,
                   nums: &mut HashMap<tokio::task::Id, u64>| {
        let record = match done {
            Ok((id, record)) => {
                nums.remove(&id);
                record
            }
            Err(e) => lost_record(nums.remove(&e.id()).unwrap_or(u64::MAX), slot, &e.to_string()),
        };
        slots.account(record, ctx.opts.halt);
    };
    loop {
        while let Some(done) = jobs.try_join_next_with_id() {
            collect(done, &mut nums);
        }
        if *stop.borrow_and_update() != Stop::None {
            slots.stopped_early();
            break;
        }
        let Some(sub) = slots.source.next(&mut stop).await else {
            if *stop.borrow() == Stop::None {
                slots.exhausted.store(true, Ordering::Release);
            } else {
                slots.stopped_early();
            }
            break;
        };
        // A stop (or another slot's failure under a halt policy) may have come while this
        // slot waited for the job or prepared it: then the job never starts (a caller
        // waiting on it gets `NotStarted`).
        if *stop.borrow_and_update() != Stop::None {
            drop(sub);
            slots.stopped_early();
            break;
        }
        slots.took_job(&ctx);
        let (freed_tx, freed_rx) = oneshot::channel();
        let num = sub.spec.num;
        let handle = jobs.spawn(run_one(sub, slot, ctx.clone(), stop.clone(), freed_tx));
        nums.insert(handle.id(), num);
        let freed_early = freed_rx.await.is_ok();
        slots.busy.fetch_sub(1, Ordering::AcqRel);
        if !freed_early {
            // It ended without handing the slot back (a failure under a halt policy, a
            // timeout, a stop): its record must count before this slot goes on.
            while let Some(done) = jobs.join_next_with_id().await {
                collect(done, &mut nums);
            }
        }
    }
    while let Some(done) = jobs.join_next_with_id().await {
        collect(done, &mut nums);
    }
}

/// The slots' threads. Dropping this (at the run's end, or with its future) ends them and
/// waits for them: by then every task they ran is dropped, so the reaper's last owner is the
/// run's, whose drop kills whatever jobs are left before the process can go on (and exit).
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    threads: Vec<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Workers {
    /// `count` threads, each with a current-thread runtime; if none can be made, the
    /// caller's runtime does the work.
    fn start(count: usize) -> Workers {
        let mut workers = Workers { handles: Vec::new(), threads: Vec::new() };
        for i in 0..count {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
            let started = std::thread::Builder::new().name(format!("orchestrator-slots-{i}")).spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::warn!("cannot start a runtime for the slots: {e}");
                        return;
                    }
                };
                if handle_tx.send(rt.handle().clone()).is_ok() {
                    rt.block_on(async {
                        let _ = shutdown_rx.await;
                    });
                }
            });
            match started.ok().and_then(|thread| Some((handle_rx.recv().ok()?, thread))) {
                Some((handle, thread)) => {
                    workers.handles.push(handle);
                    workers.threads.push((shutdown_tx, thread));
                }
                None => {
                    tracing::warn!("cannot start a thread for the slots; running them on the caller's runtime");
                    break;
                }
            }
        }
        if workers.handles.is_empty() {
            workers.handles.push(tokio::runtime::Handle::current());
        }
        workers
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Every thread is told first, so that they wind down together.
        let threads: Vec<_> = self
            .threads
            .drain(..)
            .map(|(shutdown, thread)| {
                drop(shutdown);
                thread
            })
            .collect();
        for thread in threads {
            // A panic there was already reported on stderr; nothing more to do with it.
            let _ = thread.join();
        }
    }
}

/// Run the jobs from `source` until it runs dry or a stop request ends the run.
///
/// Jobs that were not started because of a stop are not recorded; everything that started
/// gets exactly one [`Event::Finished`] and one journal line.
pub async fn run(
    opts: RunOptions,
    source: impl Into<JobSource>,
    events: Option<mpsc::Sender<Event>>,
    mut external: watch::Receiver<Stop>,
) -> RunSummary {
    let cancel = opts.cancel.clone();
    let n_jobs = opts.n_jobs.max(1);
    if opts.subreaper
        && let Err(e) = sys::set_child_subreaper()
    {
        tracing::warn!("cannot become a child subreaper ({e}); daemonised grandchildren may outlive their job");
    }
    let base_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let (shared, base_index) = shared_env(&base_env);
    let foreign = opts.foreign_children.iter().copied().collect();
    let ctx = Arc::new(Ctx {
        thread_env: thread_env(opts.thread_limit, &base_env),
        opts,
        reaper: Reaper::new(foreign),
        events,
        clock: Clock::new(),
        // Starts with our pid (see `job_marker_prefix`); the time tells runs of one process apart.
        run_key: format!("{}-{}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or(0)),
        own_pgid: sys::own_pgid(),
        path_var: path_var(&base_env),
        base_env: shared,
        base_index,
        programs: Mutex::new(HashMap::new()),
        spill: std::sync::OnceLock::new(),
        journal_errors: Mutex::new((0, None)),
    });
    let (stop_tx, _) = watch::channel(*external.borrow());
    let workers = Workers::start(n_jobs.min(sys::available_cpus()).max(1));
    let slots = Arc::new(Slots {
        source: match source.into() {
            JobSource::Channel(rx) => Source::Channel(tokio::sync::Mutex::new(rx)),
            JobSource::Lazy(make) => Source::Lazy(tokio::sync::Mutex::new(make)),
        },
        workers: workers.handles.clone(),
        tracker: tokio_util::task::TaskTracker::new(),
        n_jobs,
        made: AtomicUsize::new(1),
        busy: AtomicUsize::new(0),
        exhausted: std::sync::atomic::AtomicBool::new(false),
        summary: Mutex::new(RunSummary::default()),
        stop: stop_tx,
    });
    slots.add_slot(0, &ctx);
    slots.tracker.close();
    let mut external_open = true;
    let mut cancel_seen = false;
    loop {
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
            () = slots.tracker.wait() => break,
        }
    }
    // Whatever is still marked as ours (a job's escapee that outlived every check) ends now.
    let prefix = format!("{JOB_KEY_VAR}={}.", ctx.run_key);
    for pid in ctx.reaper.sweep(&|entry| entry.as_encoded_bytes().starts_with(prefix.as_bytes())) {
        sys::signal_pid(pid, Signal::SIGKILL);
    }
    drop(workers);
    let mut summary = std::mem::take(&mut *slots.summary.lock().unwrap_or_else(|e| e.into_inner()));
    summary.stop = *slots.stop.borrow();
    if let Some(j) = &ctx.opts.journal
        && let Err(e) = j.sync()
    {
        ctx.journal_failed(format!("cannot sync {}: {e}", j.path().display()));
    }
    (summary.journal_errors, summary.journal_error) =
        std::mem::take(&mut *ctx.journal_errors.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(tx) = &ctx.events {
        let failed = summary.failures.len() as u64;
        let _ = tx.send(Event::RunFinished { finished: summary.finished, succeeded: summary.succeeded, failed }).await;
    }
    summary
}

fn lost_record(num: u64, slot: usize, why: &str) -> JobRecord {
    let mut record = JobRecord::new(num, num.to_string(), slot, Utc::now());
    record.outcome = Outcome::SpawnFailed { error: format!("supervisor task failed: {why}") };
    record
}

#[derive(Clone, Copy)]
enum EndCause {
    TimedOut,
    Stopped(StopReason),
}

async fn run_one(
    sub: Submission,
    slot: usize,
    ctx: Arc<Ctx>,
    stop: watch::Receiver<Stop>,
    freed: oneshot::Sender<()>,
) -> JobRecord {
    let Submission { spec, cancel, reply } = sub;
    let record = run_job(spec, slot, &ctx, stop, cancel, freed).await;
    if let Some(reply) = reply {
        // The caller may have dropped its handle: nobody to tell.
        let _ = reply.send(record.clone());
    }
    record
}

async fn run_job(
    mut spec: JobSpec,
    slot: usize,
    ctx: &Arc<Ctx>,
    mut stop: watch::Receiver<Stop>,
    cancel: CancellationToken,
    freed: oneshot::Sender<()>,
) -> JobRecord {
    let start = Utc::now();
    let t0 = Instant::now();
    let marker = OsString::from(format!("{JOB_KEY_VAR}={}.{}", ctx.run_key, spec.num));
    let mut record = JobRecord::new(spec.num, spec.id.clone(), slot, start);
    record.overrides = spec.overrides.clone();
    record.log = spec.log_path.clone();
    record.dir = spec.dir.clone();
    if let Some(error) = &spec.setup_error {
        record.outcome = Outcome::SpawnFailed { error: error.clone() };
        return finish(ctx, record, t0).await;
    }
    if cancel.is_cancelled() {
        record.outcome = Outcome::Stopped { reason: StopReason::Cancelled, code: None, signal: None };
        return finish(ctx, record, t0).await;
    }
    // The job's process creates the log (see `setup_steps`); until it is past that, the
    // records wait in memory. On the paths where no process starts, the log is ours to make.
    let mut log = LogWriter::deferred(spec.log_path.clone(), ctx.clock);
    let placed = match place_payloads(&spec, ctx) {
        Ok(p) => p,
        Err(e) => {
            log.allow_open();
            log.note(&format!("could not hand over payloads: {e}"));
            record.outcome = Outcome::SpawnFailed { error: e.to_string() };
            return finish(ctx, record, t0).await;
        }
    };
    let files = std::mem::take(&mut spec.files);
    let spawned = ctx.resolve(&spec.program).and_then(|program| {
        let argv: Vec<OsString> = std::iter::once(spec.program.clone()).chain(spec.args.iter().cloned()).collect();
        let args = placed.json.as_ref().map(|json| (OsString::from("ORCHESTRATOR_ARGS"), OsString::from(json)));
        let env = job_env(&spec, slot, ctx, &marker, args)?;
        let setup = setup_steps(&spec.log_path, files)?;
        ctx.reaper.spawn(sys::SpawnRequest { program: &program, argv: &argv, env, cwd: spec.cwd.as_deref(), setup })
    });
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let error = spawn_error(&spec, &e);
            log.allow_open();
            log.note(&not_started_note(&spec, &error));
            record.outcome = Outcome::SpawnFailed { error };
            placed.release(ctx);
            return finish(ctx, record, t0).await;
        }
    };
    let sys::Spawned { pid, stdout, stderr, mut exec } = child;
    record.pid = Some(pid);
    // Read ends of fresh pipes, already non-blocking: no need for tokio's checks.
    let stdout = pipe::Receiver::from_owned_fd_unchecked(stdout).ok();
    let stderr = pipe::Receiver::from_owned_fd_unchecked(stderr).ok();
    log.note(&format!("started pid {pid} in slot {slot}: {}", argv_text(&spec)));
    if let Some(tx) = &ctx.events {
        let _ = tx.send(Event::Started { num: spec.num, pid, slot, at: start }).await;
    }
    let abandon = CancellationToken::new();
    let events = if ctx.opts.forward_output { ctx.events.clone() } else { None };
    let gate = Arc::new(output::LogGate::default());
    let mut pump = tokio::spawn(output::pump(spec.num, stdout, stderr, log, events, abandon.clone(), gate.clone()));
    let pidfd = sys::async_pidfd(pid);

    let grace = ctx.opts.grace;
    // A limit too far out for the clock is no limit (library callers can pass Duration::MAX).
    let deadline = spec.timeout.and_then(later);
    let mut kill_at: Option<tokio::time::Instant> = None;
    // When to look whether the child has exec'd, to free its start-up memory (a job that
    // ends sooner frees it at its end).
    let mut release_at = Some(tokio::time::Instant::now() + Duration::from_millis(50));
    let mut cause: Option<EndCause> = None;
    let mut stop_open = true;
    let signal_job = |sig: Signal| {
        sys::signal_group(pid, sig);
        for orphan in ctx.reaper.sweep(&|e| e == marker.as_os_str()) {
            signal_tree(orphan, sig, ctx.own_pgid);
        }
    };
    // A stop requested before we started still applies to us.
    let mut pending_stop = Some(*stop.borrow_and_update());
    let reaped = loop {
        if let Some(req) = pending_stop.take() {
            match req {
                Stop::Graceful { reason, signal } if cause.is_none() => {
                    cause = Some(EndCause::Stopped(reason));
                    signal_job(Signal::try_from(signal).unwrap_or(Signal::SIGTERM));
                    kill_at = later(grace);
                }
                Stop::Immediate => {
                    cause.get_or_insert(EndCause::Stopped(StopReason::Interrupted));
                    signal_job(Signal::SIGKILL);
                    kill_at = None;
                }
                _ => {}
            }
        }
        tokio::select! {
            r = wait_exit(pidfd.as_ref(), pid) => break r,
            _ = sleep_until(deadline), if cause.is_none() && deadline.is_some() => {
                cause = Some(EndCause::TimedOut);
                signal_job(Signal::SIGTERM);
                kill_at = later(grace);
            }
            _ = sleep_until(release_at), if release_at.is_some() => {
                if exec.release_if_running() {
                    gate.execd(); // the log can be opened now
                    release_at = None;
                } else {
                    release_at = Some(tokio::time::Instant::now() + Duration::from_millis(50));
                }
            }
            _ = sleep_until(kill_at), if kill_at.is_some() => {
                signal_job(Signal::SIGKILL);
                kill_at = None;
            }
            () = cancel.cancelled(), if cause.is_none() => {
                cause = Some(EndCause::Stopped(StopReason::Cancelled));
                signal_job(Signal::SIGTERM);
                kill_at = later(grace);
            }
            changed = stop.changed(), if stop_open => match changed {
                Ok(()) => pending_stop = Some(*stop.borrow_and_update()),
                Err(_) => stop_open = false,
            },
        }
    };
    ctx.reaper.release_leader(pid);
    let immediate = *stop.borrow() == Stop::Immediate;
    record.leftover_processes = end_leftovers(ctx, pid, &marker, if immediate { Duration::ZERO } else { grace }).await;
    ctx.reaper.release_group(pid);
    // The job ends when its last process is gone; the bookkeeping below is ours.
    record.end = Utc::now();
    record.duration = t0.elapsed();
    // Every process of the job is gone: its slot can take the next job now, while this one
    // writes its log, journal line and events (the next job's process then starts on the
    // CPU this one left, instead of after our bookkeeping). Not under a halt policy: a failure
    // of any running job must reach the runner before anything else starts.
    if cause.is_none() && record.leftover_processes == 0 && ctx.opts.halt == HaltPolicy::Never && freed.send(()).is_ok()
    {
        tokio::task::yield_now().await;
    }
    // Only now: the pump, woken by this, would wake us before the next job could start.
    gate.ended();

    // Every process that held the pipes is gone now, so EOF is due; a process that escaped
    // both the group and the marker could still hold them, so do not wait forever.
    let (mut log, captured, panicked) = match tokio::time::timeout(Duration::from_secs(2), &mut pump).await {
        Ok(joined) => pump_output(&spec, joined),
        Err(_) => {
            abandon.cancel();
            let (mut log, captured, panicked) = pump_output(&spec, pump.await);
            log.note("stopped reading output: a process outside the job's group still holds its stdout/stderr");
            (log, captured, panicked)
        }
    };
    if let Some(e) = panicked {
        log.note(&format!("output capture failed: {e}"));
    }
    record.stdout_bytes = captured.stdout;
    record.stderr_bytes = captured.stderr;
    // A child that could not write its files or exec its program exited with 127 and left
    // us its errno.
    let exec_error = exec.failure().map(|f| match &f.setup_path {
        Some(path) => format!("cannot write {}: {}", path.display(), f.error),
        None => spawn_error(&spec, &f.error),
    });
    if let Some(error) = &exec_error {
        log.note(&not_started_note(&spec, error));
    }
    record.outcome = match (reaped, exec_error) {
        (Ok(_), Some(error)) => Outcome::SpawnFailed { error },
        (Ok(r), None) => {
            record.user_cpu = r.user_cpu;
            record.sys_cpu = r.sys_cpu;
            record.max_rss_kib = r.max_rss_kib;
            outcome(r, cause, spec.timeout)
        }
        (Err(e), _) => Outcome::SpawnFailed { error: format!("lost track of pid {pid}: {e}") },
    };
    let mut end_note = format!("{} after {}", record.outcome.describe(), humanize_precise(record.duration));
    if record.leftover_processes > 0 {
        end_note.push_str(&format!("; ended {} leftover process(es) of the job", record.leftover_processes));
    }
    log.note(&end_note);
    // The process is gone, so whatever it made of the log is there. A job that ended
    // without opening it (no output, within the first tick) gets its records in one write.
    log.allow_open();
    placed.release(ctx);
    publish(ctx, record).await
}

/// Payload files handed to one job, released when it ends.
#[derive(Default)]
struct Placed {
    json: Option<String>,
    shared: Vec<String>,
    own: Vec<PathBuf>,
}

impl Placed {
    fn release(self, ctx: &Ctx) {
        if let Some(Ok(store)) = ctx.spill.get() {
            for h in &self.shared {
                store.release(h);
            }
        }
        for f in &self.own {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn place_payloads(spec: &JobSpec, ctx: &Ctx) -> Result<Placed, crate::spill::SpillError> {
    use crate::spill::{SpillError, SpillStore};
    if spec.payloads.is_empty() {
        return Ok(Placed::default());
    }
    let mut names = HashSet::new();
    if let Some(p) = spec.payloads.iter().find(|p| !names.insert(p.name.as_str())) {
        return Err(SpillError::DuplicateName(p.name.clone()));
    }
    let store = ctx.spill.get_or_init(|| match &ctx.opts.spill {
        Some(s) => Ok(s.clone()),
        None => {
            let here = std::env::current_dir().unwrap_or_default();
            let folder = crate::temp::resolve_temp_folder(ctx.opts.temp_folder.as_deref(), &here);
            SpillStore::create(&folder.path, ctx.opts.mmap_mode).map(Arc::new).map_err(|e| e.to_string())
        }
    });
    let store = store
        .as_ref()
        .map_err(|e| SpillError::Io { path: PathBuf::from("temp_folder"), source: io::Error::other(e.clone()) })?;
    // Own copies are numbered: two payloads of one name, or two jobs given the
    // same number, must not share a file.
    static OWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mode = crate::spill::mode_name(ctx.opts.mmap_mode);
    let mut placed = Placed::default();
    let mut json = serde_json::Map::new();
    let mut place = |p: &crate::job::Payload, placed: &mut Placed| -> Result<(), SpillError> {
        let size = p.bytes.len() as u64;
        let (path, shared) = if ctx.opts.max_nbytes.is_some_and(|m| size > m) {
            let s = store.put_bytes(&p.bytes, false)?;
            placed.shared.push(s.hash);
            (s.path, true)
        } else {
            // Not shared: the job's own copy, next to the shared ones, gone when it ends.
            let seq = OWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = crate::spill::sanitize(&p.name);
            let path = store.dir().join(format!("job-{}-{}-{seq}-{name}", ctx.run_key, spec.num));
            std::fs::write(&path, &p.bytes).map_err(|source| SpillError::Io { path: path.clone(), source })?;
            placed.own.push(path.clone());
            (path, false)
        };
        let info = crate::spill::ArgInfo { path, mode, size, shared };
        json.insert(p.name.clone(), serde_json::to_value(&info).unwrap_or_default());
        Ok(())
    };
    for p in &spec.payloads {
        if let Err(e) = place(p, &mut placed) {
            // What was placed before the failure is handed back now, not at the sweep's end.
            placed.release(ctx);
            return Err(e);
        }
    }
    placed.json = Some(serde_json::Value::Object(json).to_string());
    Ok(placed)
}

/// What the pump hands back, and its panic if it had one (then the log is opened again for
/// the end record).
fn pump_output(
    spec: &JobSpec,
    joined: Result<(LogWriter, output::Captured), tokio::task::JoinError>,
) -> (LogWriter, output::Captured, Option<tokio::task::JoinError>) {
    match joined {
        Ok((log, captured)) => (log, captured, None),
        Err(e) => {
            let mut log = LogWriter::deferred(spec.log_path.clone(), Clock::new());
            log.allow_open();
            (log, output::Captured::default(), Some(e))
        }
    }
}

fn humanize_precise(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn outcome(r: sys::Reaped, cause: Option<EndCause>, limit: Option<Duration>) -> Outcome {
    match cause {
        Some(EndCause::TimedOut) => {
            Outcome::TimedOut { limit: limit.unwrap_or_default(), code: r.code, signal: r.signal }
        }
        Some(EndCause::Stopped(reason)) => Outcome::Stopped { reason, code: r.code, signal: r.signal },
        None => match (r.code, r.signal) {
            (Some(0), _) => Outcome::Succeeded,
            (Some(code), _) => Outcome::Failed { code },
            (None, Some(signal)) => Outcome::Signaled { signal, core_dumped: r.core_dumped },
            (None, None) => Outcome::Failed { code: -1 },
        },
    }
}

/// End the record of a job that started no process now, and publish it.
async fn finish(ctx: &Ctx, mut record: JobRecord, t0: Instant) -> JobRecord {
    record.end = Utc::now();
    record.duration = t0.elapsed();
    publish(ctx, record).await
}

/// Append the final record to the journal and send it as [`Event::Finished`].
async fn publish(ctx: &Ctx, record: JobRecord) -> JobRecord {
    if let Some(j) = &ctx.opts.journal
        && let Err(e) = j.append(&record)
    {
        ctx.journal_failed(format!("cannot append job #{}'s record to {}: {e}", record.num, j.path().display()));
    }
    if let Some(tx) = &ctx.events {
        let _ = tx.send(Event::Finished(Box::new(record.clone()))).await;
    }
    record
}

/// End whatever the job left behind: its process group and adopted orphans carrying its
/// marker. TERM first, SIGKILL after `grace`. Returns how many processes it found.
async fn end_leftovers(ctx: &Ctx, pgid: u32, marker: &OsStr, grace: Duration) -> u32 {
    let mut seen: HashSet<u32> = HashSet::new();
    let mut termed = false;
    let started = Instant::now();
    let hard_stop = grace.saturating_add(Duration::from_secs(3));
    loop {
        let orphans = ctx.reaper.sweep(&|e| e == marker);
        let group = if sys::group_alive(pgid) { sys::live_group_members(pgid) } else { Vec::new() };
        if orphans.is_empty() && group.is_empty() {
            break;
        }
        seen.extend(orphans.iter().copied());
        seen.extend(group.iter().copied());
        for pid in &orphans {
            // A `setsid` escapee's own group goes down with it; count its members too.
            if let Some((_, own)) = sys::proc_state(*pid)
                && own == *pid
                && own != ctx.own_pgid
            {
                seen.extend(sys::live_group_members(own));
            }
        }
        let sig = if !termed && !grace.is_zero() {
            Some(Signal::SIGTERM)
        } else if started.elapsed() >= grace {
            Some(Signal::SIGKILL)
        } else {
            None
        };
        if let Some(sig) = sig {
            termed = true;
            sys::signal_group(pgid, sig);
            for pid in &orphans {
                signal_tree(*pid, sig, ctx.own_pgid);
            }
        }
        if started.elapsed() > hard_stop {
            tracing::warn!("processes of job group {pgid} survived SIGKILL: {group:?} {orphans:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen.len() as u32
}

/// Signal an adopted process and, if it leads its own group (a `setsid` escapee), the group.
fn signal_tree(pid: u32, sig: Signal, own_pgid: u32) {
    sys::signal_pid(pid, sig);
    if let Some((_, pgid)) = sys::proc_state(pid)
        && pgid == pid
        && pgid != own_pgid
    {
        sys::signal_group(pgid, sig);
    }
}

async fn wait_exit(pidfd: Option<&AsyncFd<OwnedFd>>, pid: u32) -> io::Result<sys::Reaped> {
    loop {
        match pidfd {
            Some(fd) => {
                let mut guard = fd.readable().await?;
                if let Some(r) = sys::try_wait4(pid)? {
                    return Ok(r);
                }
                guard.clear_ready();
            }
            None => {
                if let Some(r) = sys::try_wait4(pid)? {
                    return Ok(r);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// `d` from now, if the clock can say when that is.
fn later(d: Duration) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(d)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Ctx {
    /// A job's record did not reach the journal: said at once, and counted for the summary.
    fn journal_failed(&self, error: String) {
        tracing::error!("{error}");
        let mut errors = self.journal_errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.0 += 1;
        errors.1.get_or_insert(error);
    }

    fn resolve(&self, program: &OsStr) -> io::Result<PathBuf> {
        let mut cache = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(program) {
            return Ok(p.clone());
        }
        let resolved = sys::resolve_program(program, self.path_var.as_deref())?;
        cache.insert(program.to_os_string(), resolved.clone());
        Ok(resolved)
    }
}

/// loky's thread limits, for the variables the user did not set.
fn thread_env(limit: Option<usize>, base_env: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    let Some(n) = limit else { return Vec::new() };
    THREAD_VARS
        .iter()
        .filter(|var| !base_env.iter().any(|(k, _)| k == *var))
        .map(|var| (OsString::from(var), OsString::from(n.to_string())))
        .collect()
}

/// What the job's process does before it runs the program: create its log (one that exists,
/// from an earlier attempt of the job, is appended to), then write `files`; each file's
/// directory first when it differs from the previous file's.
fn setup_steps(log: &std::path::Path, files: Vec<crate::job::JobFile>) -> io::Result<Vec<sys::SetupStep>> {
    let mut steps = Vec::with_capacity(files.len() + 3);
    let mut last_dir: Option<PathBuf> = None;
    let log = (log.to_path_buf(), None);
    for (path, contents) in std::iter::once(log).chain(files.into_iter().map(|f| (f.path, Some(f.contents)))) {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = dir
            && last_dir.as_deref() != Some(d)
        {
            steps.push(sys::SetupStep::Dir(sys::cstring(d.as_os_str().as_bytes())?));
            last_dir = Some(d.to_path_buf());
        }
        let path = sys::cstring(path.into_os_string().into_vec())?;
        steps.push(match contents {
            Some(contents) => sys::SetupStep::File(path, contents),
            None => sys::SetupStep::Keep(path),
        });
    }
    Ok(steps)
}

/// The first `PATH` in `env`, as `getenv` would find it.
fn path_var(env: &[(OsString, OsString)]) -> Option<OsString> {
    env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone())
}

/// `base` as `NAME=value` C strings, and the index of each name among them.
fn shared_env(base: &[(OsString, OsString)]) -> (Arc<[CString]>, HashMap<OsString, Vec<usize>>) {
    let mut entries = Vec::with_capacity(base.len());
    let mut index: HashMap<OsString, Vec<usize>> = HashMap::with_capacity(base.len());
    for (k, v) in base {
        // Our own environment cannot hold a NUL byte; skip rather than trust that.
        if let Ok(c) = CString::new(env_entry(k, v)) {
            index.entry(k.clone()).or_default().push(entries.len());
            entries.push(c);
        }
    }
    (entries.into(), index)
}

/// The job's environment: ours, then (each replacing an inherited value of the same name)
/// loky's thread limits the user did not set, the slot's values, the job's own variables,
/// its marker and `extra`.
fn job_env(
    spec: &JobSpec,
    slot: usize,
    ctx: &Ctx,
    marker: &OsStr,
    extra: Option<(OsString, OsString)>,
) -> io::Result<sys::Env> {
    use std::borrow::Cow;
    // Borrowed where possible: this runs for every job, between a slot freeing and the next
    // job's clone.
    let mut overlay: Vec<(&OsStr, Cow<'_, OsStr>)> = Vec::with_capacity(ctx.thread_env.len() + spec.env.len() + 4);
    for (var, value) in &ctx.thread_env {
        if !spec.env.iter().any(|(k, _)| k == var) {
            overlay.push((var, Cow::Borrowed(value)));
        }
    }
    overlay.push((OsStr::new("ORCHESTRATOR_SLOT"), Cow::Owned(slot.to_string().into())));
    for (name, value) in &ctx.opts.slot_env {
        overlay.push((OsStr::new(name), Cow::Owned(value.for_slot(slot).into())));
    }
    // A name with `=` (or none) would set another variable than the one asked for.
    if let Some((bad, _)) = spec.env.iter().find(|(k, _)| k.is_empty() || k.as_bytes().contains(&b'=')) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("environment variable name `{}` is empty or contains `=`", bad.to_string_lossy()),
        ));
    }
    overlay.extend(spec.env.iter().map(|(k, v)| (k.as_os_str(), Cow::Borrowed(v.as_os_str()))));
    if let Some((k, v)) = marker.to_str().and_then(|m| m.split_once('=')) {
        overlay.push((OsStr::new(k), Cow::Borrowed(OsStr::new(v))));
    }
    if let Some((k, v)) = &extra {
        overlay.push((k, Cow::Borrowed(v)));
    }
    let replaced: Vec<usize> = overlay.iter().filter_map(|(k, _)| ctx.base_index.get(*k)).flatten().copied().collect();
    let mut own = Vec::with_capacity(overlay.len());
    // Later overlay entries win: emit only the last value of each name.
    for (i, (k, v)) in overlay.iter().enumerate() {
        if !overlay[i + 1..].iter().any(|(k2, _)| k2 == k) {
            own.push(sys::cstring(env_entry(k, v))?);
        }
    }
    Ok(sys::Env::new(ctx.base_env.clone(), replaced, own))
}

fn env_entry(name: &OsStr, value: &OsStr) -> Vec<u8> {
    // Room for the `=` and the C string's NUL.
    let mut e = Vec::with_capacity(name.len() + value.len() + 2);
    e.extend_from_slice(name.as_bytes());
    e.push(b'=');
    e.extend_from_slice(value.as_bytes());
    e
}

/// The log's note for a job whose program never ran: our spawn failed, or the child's set-up
/// or exec did.
fn not_started_note(spec: &JobSpec, error: &str) -> String {
    format!("could not start {}: {error}", spec.program.to_string_lossy())
}

fn spawn_error(spec: &JobSpec, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::E2BIG) => format!("{e}: {}", too_big(spec)),
        Some(libc::ENOENT) if spec.cwd.as_ref().is_some_and(|d| !d.is_dir()) => {
            format!(
                "working directory {} does not exist",
                spec.cwd.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
            )
        }
        _ => e.to_string(),
    }
}

/// Which of Linux's two limits an `execve` that failed with E2BIG went over: 128 KiB for
/// one argument or environment string, or `ARG_MAX` for all of them together.
fn too_big(spec: &JobSpec) -> String {
    const ONE: usize = 128 * 1024;
    let head = |s: &OsStr| s.to_string_lossy().chars().take(40).collect::<String>();
    if let Some(a) = spec.args.iter().find(|a| a.len() >= ONE) {
        return format!("argument `{}...` is {} bytes, over the 128 KiB one argument may hold", head(a), a.len());
    }
    if let Some((k, v)) = spec.env.iter().find(|(k, v)| k.len() + v.len() + 1 >= ONE) {
        return format!(
            "environment variable {} is {} bytes, over the 128 KiB one may hold",
            k.to_string_lossy(),
            k.len() + v.len() + 1
        );
    }
    let strings = |it: &mut dyn Iterator<Item = usize>| it.map(|n| n + 1 + std::mem::size_of::<usize>()).sum::<usize>();
    let argv = strings(&mut spec.args.iter().map(|a| a.len()));
    let env = strings(&mut std::env::vars_os().chain(spec.env.iter().cloned()).map(|(k, v)| k.len() + v.len() + 1));
    let limit = nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX).ok().flatten().unwrap_or(0);
    format!(
        "the arguments ({argv} bytes) and the environment (about {env} bytes) are over what a program may get in all (ARG_MAX, {limit} bytes here); pass big values as files (`key=@path`, or a lower max_nbytes)"
    )
}

fn argv_text(spec: &JobSpec) -> String {
    let mut s = spec.program.to_string_lossy().into_owned();
    for a in &spec.args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(base: &[(&str, &str)], opts: RunOptions) -> Ctx {
        let base_env: Vec<(OsString, OsString)> =
            base.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect();
        let (shared, base_index) = shared_env(&base_env);
        Ctx {
            thread_env: thread_env(opts.thread_limit, &base_env),
            path_var: path_var(&base_env),
            base_env: shared,
            base_index,
            opts,
            reaper: Reaper::new(HashSet::new()),
            events: None,
            clock: Clock::new(),
            run_key: "k".into(),
            own_pgid: 1,
            programs: Mutex::new(HashMap::new()),
            spill: std::sync::OnceLock::new(),
            journal_errors: Mutex::new((0, None)),
        }
    }

    #[test]
    fn job_env_layers_in_order_and_respects_user_thread_settings() {
        let mut opts = RunOptions::new(2);
        opts.thread_limit = Some(3);
        opts.slot_env = vec![("GPU".into(), SlotValue::PerSlot(vec!["4".into(), "5".into()]))];
        // An environment can hold a name twice: both copies give way to the slot's value.
        let ctx = ctx(&[("PATH", "/bin"), ("GPU", "older"), ("OMP_NUM_THREADS", "8"), ("GPU", "old")], opts);
        let mut spec = JobSpec::new(0, "x", vec![], "l");
        spec.env = vec![("MKL_NUM_THREADS".into(), "1".into()), ("A".into(), "1".into()), ("A".into(), "2".into())];
        let extra = Some(("ORCHESTRATOR_ARGS".into(), "{}".into()));
        let env = job_env(&spec, 1, &ctx, OsStr::new("ORCHESTRATOR_JOB_KEY=k.0"), extra).unwrap();
        let env: Vec<String> = env.entries().map(|e| e.to_str().unwrap().to_owned()).collect();
        let get = |k: &str| env.iter().filter(|e| e.starts_with(&format!("{k}="))).cloned().collect::<Vec<_>>();
        assert_eq!(get("PATH"), ["PATH=/bin"]);
        assert_eq!(get("OMP_NUM_THREADS"), ["OMP_NUM_THREADS=8"], "inherited setting wins");
        assert_eq!(get("MKL_NUM_THREADS"), ["MKL_NUM_THREADS=1"], "job setting wins");
        assert_eq!(get("OPENBLAS_NUM_THREADS"), ["OPENBLAS_NUM_THREADS=3"]);
        assert_eq!(get("GPU"), ["GPU=5"], "slot value replaces the inherited one");
        assert_eq!(get("A"), ["A=2"], "the last value of a name wins");
        assert_eq!(get("ORCHESTRATOR_SLOT"), ["ORCHESTRATOR_SLOT=1"]);
        assert_eq!(get("ORCHESTRATOR_JOB_KEY"), ["ORCHESTRATOR_JOB_KEY=k.0"]);
        assert_eq!(get("ORCHESTRATOR_ARGS"), ["ORCHESTRATOR_ARGS={}"]);
    }

    #[test]
    fn an_environment_name_with_an_equals_sign_is_refused() {
        let ctx = ctx(&[("PATH", "/bin")], RunOptions::new(1));
        for name in ["A=B", ""] {
            let mut spec = JobSpec::new(0, "x", vec![], "l");
            spec.env = vec![(name.into(), "x".into())];
            let e = job_env(&spec, 0, &ctx, OsStr::new("K=k.0"), None).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains("is empty or contains `=`"), "{e}");
        }
    }

    fn reaped(code: Option<i32>, signal: Option<i32>) -> sys::Reaped {
        sys::Reaped { code, signal, core_dumped: false, user_cpu: 0.0, sys_cpu: 0.0, max_rss_kib: 0 }
    }

    #[test]
    fn outcomes_map_every_ending() {
        assert_eq!(outcome(reaped(Some(0), None), None, None), Outcome::Succeeded);
        assert_eq!(outcome(reaped(Some(2), None), None, None), Outcome::Failed { code: 2 });
        assert_eq!(outcome(reaped(None, Some(11)), None, None), Outcome::Signaled { signal: 11, core_dumped: false });
        let limit = Duration::from_secs(1);
        assert_eq!(
            outcome(reaped(None, Some(9)), Some(EndCause::TimedOut), Some(limit)),
            Outcome::TimedOut { limit, code: None, signal: Some(9) }
        );
        // A job that exits 0 on SIGTERM after its timeout is still timed out, not a success.
        assert!(matches!(
            outcome(reaped(Some(0), None), Some(EndCause::TimedOut), Some(limit)),
            Outcome::TimedOut { .. }
        ));
        assert_eq!(
            outcome(reaped(None, Some(2)), Some(EndCause::Stopped(StopReason::Interrupted)), None),
            Outcome::Stopped { reason: StopReason::Interrupted, code: None, signal: Some(2) }
        );
    }

    #[test]
    fn stop_requests_escalate_by_order() {
        let graceful = Stop::Graceful { reason: StopReason::Interrupted, signal: 2 };
        assert!(Stop::None < Stop::Drain && Stop::Drain < graceful && graceful < Stop::Immediate);
        assert_eq!(Stop::Drain.max(graceful), graceful);
    }
}
