//! The Slurm backend: the jobs of a run as the tasks of one job array.
//!
//! The scheduler calls [`Backend::start`] once per job from its slots (for Slurm, the run
//! has as many slots as jobs: a slot is a cheap task that waits). The backend collects
//! those calls (until it has the run's expected count, or none came for 100 ms), writes
//! one manifest per task into a batch dir on the shared filesystem (`<sweep>/.slurm/b<k>/`),
//! and submits them as one `sbatch --parsable --array=0-(N-1)%P` (chunked at the cluster's
//! `MaxArraySize`); a retry of a single job is a new small array. The batch script runs this
//! binary again on the node (`__slurm-task`, see [`task`]), which runs the job with the local
//! child contract and writes a completion marker.
//!
//! One thread per backend (the driver) submits, signals (`scancel`, batched) and polls:
//! one `squeue -h -r -t all -j <arrays>` call per poll for every array of the run, with
//! back-off; `sacct` (when accounting is on) or `scontrol` only for tasks slurmctld has
//! forgotten or that ended without a marker. `REQUEUED`, `PREEMPTED` (for a while) and
//! `COMPLETING` are not final. Each [`Attempt::wait`] watches its task's entry and, when the
//! console shows output, reads the job's new lines back from its log as the node writes them.

mod cmd;
pub mod task;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orchestrator_config::SlotValue;
use tokio::sync::{mpsc, oneshot, watch};

pub use self::cmd::{ClusterInfo, SlurmError, probe};
use self::task::{Done, FileEntry, Manifest};
use super::{
    Attempt, Backend, BoxFuture, Capabilities, Collected, EndReason, Exit, ExitStatus, JobLog, LostError, StartError,
    StartRequest, Usage,
};
use crate::event::Event;
use crate::job::{JobSpec, Stream};
use crate::output::{Clock, LogWriter};

/// How the backend submits: built by the layer above from the launcher config.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SlurmSettings {
    /// Where batch dirs go (manifests, markers, the batch scripts' own output): on a
    /// filesystem the nodes share, e.g. `<sweep dir>/.slurm`.
    pub work_dir: PathBuf,
    /// The array's name (`--job-name`).
    pub job_name: String,
    /// Tasks at once (`%P`).
    pub throttle: usize,
    /// `--time`, in whole minutes.
    pub time_limit_min: Option<u64>,
    /// Other sbatch flags (`--partition=debug`, ...).
    pub sbatch_args: Vec<String>,
    /// Shell lines before the job, in the batch script.
    pub setup: Vec<String>,
    /// Run the task runner through `srun` with these arguments.
    pub srun_args: Option<Vec<String>>,
    /// How many first attempts the run will start: the array is submitted once it has them
    /// all (or when none came for 100 ms).
    pub expected: u64,
    /// Per-slot variables; a task's slot is its index in its array modulo `throttle`.
    pub slot_env: Vec<(String, SlotValue)>,
    /// Set loky's thread limits on the node from the task's CPUs.
    pub thread_limit: bool,
    /// Time between SIGTERM and SIGKILL for what a job leaves in its group on the node.
    pub grace: Duration,
    /// The binary the nodes run (`__slurm-task`); this one by default.
    pub exe: PathBuf,
    /// `MaxArraySize` of the cluster.
    pub max_array_size: u64,
    /// `sacct` works.
    pub accounting: bool,
    /// Base directory of relative paths (the batch script's `--chdir`).
    pub chdir: PathBuf,
    /// Start a watchdog process that cancels the run's arrays if this process dies without
    /// ending them (SIGKILL, a crash): the program must call
    /// [`watchdog::serve_if_requested`](crate::watchdog::serve_if_requested) first thing.
    pub watchdog: bool,
    /// The run resumes the sweep in the work dir's parent: a job whose task an earlier run
    /// submitted and Slurm still has is attached to, not submitted again.
    pub resuming: bool,
}

impl SlurmSettings {
    /// Settings for a run whose batch dirs go under `work_dir`, with the cluster's facts.
    pub fn new(work_dir: PathBuf, info: &ClusterInfo) -> Self {
        SlurmSettings {
            work_dir,
            job_name: "orchestrator".into(),
            throttle: 1,
            time_limit_min: None,
            sbatch_args: Vec::new(),
            setup: Vec::new(),
            srun_args: None,
            expected: 0,
            slot_env: Vec::new(),
            thread_limit: true,
            grace: Duration::from_secs(5),
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            max_array_size: info.max_array_size,
            accounting: info.accounting,
            chdir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            watchdog: false,
            resuming: false,
        }
    }

    /// The sbatch arguments of an array of `n` tasks (without the script).
    fn array_args(&self, n: usize) -> Vec<String> {
        let mut a = vec![
            "--parsable".to_string(),
            format!("--array=0-{}%{}", n.saturating_sub(1), self.throttle.max(1)),
            format!("--job-name={}", self.job_name),
        ];
        if let Some(m) = self.time_limit_min {
            a.push(format!("--time={m}"));
        }
        a.extend(self.sbatch_args.iter().cloned());
        a
    }

    /// Ask Slurm whether it would take an array of `n` tasks with these settings
    /// (`sbatch --test-only`): a bad partition or too much memory is refused here, before
    /// anything is created or queued.
    pub fn test_submission(&self, n: u64) -> Result<(), SlurmError> {
        let n = n.clamp(1, self.max_array_size.max(1)) as usize;
        let mut a = self.array_args(n);
        a.retain(|x| x != "--parsable");
        a.extend(["--output=/dev/null".to_string(), "--wrap".to_string(), "true".to_string()]);
        cmd::sbatch_test(&a)
    }
}

/// An array task: `<array>_<index>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TaskId {
    array: u64,
    index: usize,
}

impl TaskId {
    fn name(&self) -> String {
        format!("{}_{}", self.array, self.index)
    }
}

/// What the driver knows of one task, as its attempt watches it.
#[derive(Debug, Clone, Default)]
struct View {
    /// Still in Slurm's queue (pending, running, completing, requeued).
    in_queue: bool,
    /// Its program runs (`squeue` says so: running, completing, suspended), as last seen.
    running: bool,
    /// How it ended, once that is final.
    end: Option<Result<Ended, String>>,
}

#[derive(Debug, Clone)]
struct Ended {
    exit: Exit,
    done: Option<Done>,
}

struct Pending {
    manifest: Manifest,
    reply: oneshot::Sender<Result<Submitted, String>>,
}

struct Submitted {
    task: TaskId,
    view: watch::Receiver<View>,
    marker: PathBuf,
    log: PathBuf,
}

struct Tracked {
    view: watch::Sender<View>,
    marker: PathBuf,
    out: PathBuf,
    /// Its last state in `squeue`, and when it was first seen in it.
    state: Option<String>,
    /// When it was submitted.
    since: Instant,
    /// Signals this supervisor sent it.
    signaled: Vec<i32>,
    preempted_at: Option<Instant>,
    node: Option<String>,
    /// Its slot (index in its array modulo the throttle).
    slot: usize,
    /// When it was first missing from squeue without a final state.
    vanished_at: Option<Instant>,
    /// Cancelled while queued (the run was draining), and how.
    withdrawn: Option<Withdrawal>,
}

/// How a task was withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Withdrawal {
    /// With its claim won: its program never ran (this start of it).
    Claimed,
    /// Cancelled without the claim (it could not be made): it may have started.
    Unclaimed,
}

#[derive(Default)]
struct State {
    pending: Vec<Pending>,
    last_add: Option<Instant>,
    tasks: HashMap<TaskId, Tracked>,
    signals: Vec<(TaskId, i32)>,
    /// Queued tasks to cancel: the run is draining.
    /// Tasks to cancel as withdrawn, and how.
    withdrawals: Vec<(TaskId, Withdrawal)>,
    /// First attempts submitted so far.
    first_submitted: u64,
    batches: u32,
    shutdown: bool,
    /// Poll soon (a change is expected).
    poll_now: bool,
}

struct Shared {
    settings: SlurmSettings,
    /// Tasks an earlier run of this sweep submitted that are still in the queue, by job
    /// number: a resumed job that has one is attached to it instead of being submitted
    /// again.
    adoptable: Mutex<HashMap<u64, Adoptable>>,
    /// The run's watchdog, told the run is over in `run_ended`.
    watchdog: Mutex<Option<crate::watchdog::Watchdog>>,
    state: Mutex<State>,
    wake: Condvar,
    clock: Clock,
}

/// Jobs as the tasks of Slurm job arrays.
pub struct SlurmBackend {
    shared: Arc<Shared>,
    driver: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for SlurmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlurmBackend").field("work_dir", &self.shared.settings.work_dir).finish_non_exhaustive()
    }
}

/// The file in the work dir listing the run's arrays, for the watchdog.
const ARRAYS: &str = "arrays";

/// The file in a batch dir that names its array.
const ARRAY_OF_BATCH: &str = "array";

/// The debounce: an array is submitted once no job came for this long.
const GATHER: Duration = Duration::from_millis(100);
const POLL_MIN: Duration = Duration::from_millis(250);
const POLL_MAX: Duration = Duration::from_secs(2);

impl SlurmBackend {
    /// A backend for one run; its driver thread starts now.
    pub fn new(settings: SlurmSettings) -> SlurmBackend {
        let _ = std::fs::create_dir_all(&settings.work_dir);
        let watchdog = if settings.watchdog {
            match crate::watchdog::Watchdog::start_with(&[], Some(&settings.work_dir.join(ARRAYS))) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        "cannot start the watchdog ({e}): if this process is killed, its Slurm tasks stay queued"
                    );
                    None
                }
            }
        } else {
            None
        };
        // A resumed sweep's earlier batches stay: this run's go after them.
        let batches = std::fs::read_dir(&settings.work_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix('b')?.parse::<u32>().ok())
            .map(|k| k + 1)
            .max()
            .unwrap_or(0);
        let adoptable = if settings.resuming && batches > 0 { adoptable(&settings.work_dir) } else { HashMap::new() };
        if !adoptable.is_empty() {
            let mut nums: Vec<&u64> = adoptable.keys().collect();
            nums.sort();
            tracing::info!(
                "{} task(s) of an earlier run of this sweep are still in Slurm's queue (jobs {nums:?}): they are attached to, not submitted again",
                nums.len()
            );
        }
        let shared = Arc::new(Shared {
            adoptable: Mutex::new(adoptable),
            settings,
            watchdog: Mutex::new(watchdog),
            state: Mutex::new(State { batches, ..State::default() }),
            wake: Condvar::new(),
            clock: Clock::new(),
        });
        let s = shared.clone();
        let driver = std::thread::Builder::new().name("orchestrator-slurm".into()).spawn(move || drive(&s)).ok();
        SlurmBackend { shared, driver: Mutex::new(driver) }
    }

    fn manifest(&self, req: &StartRequest<'_>) -> Manifest {
        let spec = req.job;
        let files = req
            .files
            .iter()
            .map(|f| match std::str::from_utf8(&f.contents) {
                Ok(t) => FileEntry { path: f.path.clone(), text: Some(t.to_string()), bytes: None },
                Err(_) => FileEntry { path: f.path.clone(), text: None, bytes: Some(f.contents.clone()) },
            })
            .collect();
        Manifest {
            num: spec.num,
            attempt: req.attempt,
            program: spec.program.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            slot_env: Vec::new(),
            slot: 0,
            cwd: spec.cwd.clone(),
            log: spec.log_path.clone(),
            files,
            thread_limit: self.shared.settings.thread_limit,
            grace_ms: self.shared.settings.grace.as_millis() as u64,
            marker: PathBuf::new(),
        }
    }
}

impl Backend for SlurmBackend {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            writes_files_before_exec: true,
            local_processes: false,
            forwards_signals: true,
            enforces_timeout: true,
            queues: true,
        }
    }

    fn start<'a>(&'a self, req: StartRequest<'a>) -> BoxFuture<'a, Result<Box<dyn Attempt>, StartError>> {
        let manifest = self.manifest(&req);
        let output = req.output.clone();
        let (num, log_path) = (req.job.num, req.job.log_path.clone());
        // Where this attempt's lines will start: the task appends to the log (a resumed or
        // retried job's has the earlier attempts' lines), and nothing else writes it meanwhile.
        let tailed = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let (tx, rx) = oneshot::channel();
        // Only the very job it ran: the same command line and log (a sweep run again with
        // other overrides numbers its jobs alike).
        let adopted = if req.attempt == 1 {
            let mut adoptable = self.shared.adoptable.lock().unwrap_or_else(|e| e.into_inner());
            match adoptable.remove(&num) {
                Some(a)
                    if a.manifest.program == manifest.program
                        && a.manifest.args == manifest.args
                        && a.manifest.log == manifest.log =>
                {
                    Some(a)
                }
                Some(a) => {
                    tracing::warn!(
                        "Slurm task {} of an earlier run ran job #{num} with another command line: cancelled, the job is submitted again",
                        a.task.name()
                    );
                    let _ = cmd::scancel(&[a.task.name()]);
                    None
                }
                None => None,
            }
        } else {
            None
        };
        let attached = adopted.as_ref().map(|a| a.task.name());
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            match adopted {
                Some(a) => {
                    let (submitted, mut tracked) = register(a.task.clone(), &a.manifest, a.out);
                    // As squeue had it a moment ago: a running task is not withdrawn as if queued.
                    let running = cmd::is_running(&a.state);
                    tracked.state = Some(a.state);
                    tracked.view.send_modify(|v| v.running = running);
                    st.tasks.insert(a.task, tracked);
                    st.first_submitted += 1;
                    st.poll_now = true;
                    let _ = tx.send(Ok(submitted));
                }
                None => {
                    st.pending.push(Pending { manifest, reply: tx });
                    st.last_add = Some(Instant::now());
                }
            }
        }
        self.shared.wake.notify_all();
        let shared = self.shared.clone();
        Box::pin(async move {
            let submitted = match rx.await {
                Ok(Ok(s)) => s,
                Ok(Err(message)) => return Err(not_started(&shared, &log_path, message)),
                Err(_) => return Err(not_started(&shared, &log_path, "the Slurm backend has shut down".into())),
            };
            Ok(Box::new(SlurmAttempt { shared, num, submitted, output, tailed, announced: false, attached })
                as Box<dyn Attempt>)
        })
    }

    fn run_ended(&self) {
        // An earlier run's tasks that no job of this one took (it stopped first): nothing
        // of the sweep may stay queued after the run.
        let left: Vec<String> = {
            let mut adoptable = self.shared.adoptable.lock().unwrap_or_else(|e| e.into_inner());
            adoptable.drain().map(|(_, a)| a.task.name()).collect()
        };
        if !left.is_empty() {
            let _ = cmd::scancel(&left);
        }
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.shutdown = true;
        }
        self.shared.wake.notify_all();
        if let Some(driver) = self.driver.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = driver.join();
        }
        // Every task has left the queue (the driver waited for it).
        if let Some(w) = self.shared.watchdog.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.finish();
        }
    }
}

impl Drop for SlurmBackend {
    fn drop(&mut self) {
        self.run_ended();
    }
}

/// The job's log gets why it never ran; the error goes to the record.
fn not_started(shared: &Shared, log_path: &Path, message: String) -> StartError {
    let mut log = LogWriter::deferred(log_path.to_path_buf(), shared.clock);
    log.allow_open();
    log.note(&format!("could not submit to Slurm: {message}"));
    StartError::new(message)
}

struct SlurmAttempt {
    shared: Arc<Shared>,
    num: u64,
    submitted: Submitted,
    output: Option<mpsc::Sender<Event>>,
    /// How far the job's log has been read for the console (a byte offset).
    tailed: u64,
    /// [`Event::Running`] was sent.
    announced: bool,
    /// The task an earlier run submitted, which this attempt followed instead of submitting.
    attached: Option<String>,
}

impl SlurmAttempt {
    fn done(&self) -> Option<Done> {
        self.submitted.view.borrow().end.as_ref().and_then(|e| e.as_ref().ok()).and_then(|e| e.done.clone())
    }
}

impl Attempt for SlurmAttempt {
    fn wait(&mut self) -> BoxFuture<'_, Result<Exit, LostError>> {
        Box::pin(async move {
            let end = loop {
                let (end, running) = {
                    let v = self.submitted.view.borrow_and_update();
                    (v.end.clone(), v.running)
                };
                if end.is_some() {
                    break end;
                }
                if running && !self.announced {
                    // Marked once sent: a `wait` dropped during the send (the scheduler's
                    // select) sends it again.
                    match &self.output {
                        Some(tx) => {
                            let _ = tx.send(Event::Running { num: self.num, at: Utc::now() }).await;
                            self.announced = true;
                        }
                        None => self.announced = true,
                    }
                }
                // While the task runs, the console gets its lines as the node writes them
                // to the log on the shared filesystem (it flushes after every read of the
                // job's pipes): read on each tick, up to the last complete line.
                let tick = tokio::time::sleep(TAIL_EVERY);
                tokio::select! {
                    changed = self.submitted.view.changed() => if changed.is_err() {
                        break None;
                    },
                    () = tick, if self.output.is_some() && running => {
                        if let Some(tx) = &self.output {
                            forward_output(self.num, &self.submitted.log, &mut self.tailed, None, tx).await;
                        }
                    }
                }
            };
            match end {
                Some(Ok(e)) => Ok(e.exit),
                Some(Err(lost)) => Err(LostError::new(lost)),
                None => Err(LostError::new("the Slurm backend shut down while the task ran")),
            }
        })
    }

    fn withdraw(&mut self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let task = self.submitted.task.clone();
            let queued = {
                let st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
                st.tasks.get(&task).is_some_and(|t| matches!(t.state.as_deref(), None | Some("PENDING" | "REQUEUED")))
            };
            if !queued {
                return false;
            }
            // Slurm may start it at any moment, and a cancel cannot be limited to a task that
            // is still pending (`scancel --state=PENDING` with one task's id cancels all the
            // array's pending tasks): the claim decides, and a task that won it runs on. On a
            // thread of the blocking pool: the claim is I/O on a shared filesystem.
            let (marker, name) = (self.submitted.marker.clone(), task.name());
            let claimed = tokio::task::spawn_blocking(move || claim_withdrawal(&marker, &name))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let how = match claimed {
                Ok(true) => Withdrawal::Claimed,
                Ok(false) => {
                    tracing::debug!("Slurm task {} started before it was withdrawn: it runs on", task.name());
                    return false;
                }
                // Cancelled all the same: if it has just started, it is stopped (and recorded
                // as halted, with the signal that ended it).
                Err(e) => {
                    tracing::warn!("cannot claim Slurm task {} to withdraw it ({e}): cancelling it", task.name());
                    Withdrawal::Unclaimed
                }
            };
            {
                let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
                st.withdrawals.push((task, how));
            }
            self.shared.wake.notify_all();
            true
        })
    }

    fn signal(&mut self, signal: i32) {
        tracing::debug!("signal {signal} to Slurm task {}", self.submitted.task.name());
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.signals.push((self.submitted.task.clone(), signal));
        }
        self.shared.wake.notify_all();
    }

    fn clean_up(&mut self, grace: Duration) -> BoxFuture<'_, u32> {
        Box::pin(async move {
            // The task's slot is free when Slurm says so: nothing of it left in the queue.
            let bound = grace + Duration::from_secs(30);
            let gone = tokio::time::timeout(bound, self.submitted.view.wait_for(|v| !v.in_queue)).await.map(|_| ());
            if gone.is_err() {
                tracing::warn!("Slurm task {} is still in the queue; cancelling it", self.submitted.task.name());
                let _ = cmd::scancel(&[self.submitted.task.name()]);
            }
            self.done().map_or(0, |d| d.leftovers)
        })
    }

    fn collect<'a>(self: Box<Self>, _job: &'a JobSpec) -> BoxFuture<'a, Collected> {
        Box::pin(async move {
            let done = self.done();
            let mut log = LogWriter::deferred(self.submitted.log.clone(), self.shared.clock);
            log.allow_open();
            if let (Some(tx), Some(d)) = (&self.output, &done) {
                // The rest of this attempt's lines (all of them if it ran between two ticks).
                let mut from = self.tailed.max(d.log_from);
                forward_output(self.num, &self.submitted.log, &mut from, Some(d.log_to), tx).await;
            }
            // Written now that the task has ended: the node appends to the log while it runs.
            if let Some(task) = &self.attached {
                log.note(&format!(
                    "followed Slurm task {task}, which an earlier run of this sweep submitted and was still in the queue"
                ));
            }
            if done.is_none() {
                log.note(&format!(
                    "no completion marker from Slurm task {} ({}): how its program ended is Slurm's word",
                    self.submitted.task.name(),
                    self.submitted.marker.display()
                ));
            }
            let (stdout_bytes, stderr_bytes, start_error) =
                done.map(|d| (d.stdout_bytes, d.stderr_bytes, d.start_error)).unwrap_or_default();
            Collected {
                log: Box::new(Log(log)),
                stdout_bytes,
                stderr_bytes,
                start_error,
                usage: None,
                isolation: Some("slurm-task"),
                warm: false,
            }
        })
    }
}

struct Log(LogWriter);

impl JobLog for Log {
    fn note(&mut self, text: &str) {
        self.0.note(text);
    }

    fn close(mut self: Box<Self>) -> Option<String> {
        self.0.flush();
        self.0.error().map(str::to_owned)
    }
}

/// How often a running task's log is read for the console.
const TAIL_EVERY: Duration = Duration::from_millis(500);

/// The job's lines in its log from byte `*pos` (to byte `to`, or to its last complete line),
/// as [`Event::Output`]; `*pos` moves past each line once it is sent (a caller dropped
/// during a send resends only that line). The task on the node writes the log; this only
/// reads it back, so the console shows a Slurm job's lines as a local job's.
async fn forward_output(num: u64, log: &Path, pos: &mut u64, to: Option<u64>, tx: &mpsc::Sender<Event>) {
    let from = *pos;
    // On a thread of the blocking pool: a network filesystem can stall a stat or a read, and
    // the runtime also serves the other tasks and the scheduler.
    let path = log.to_path_buf();
    let Ok(Some(buf)) = tokio::task::spawn_blocking(move || complete_lines(&path, from, to)).await else { return };
    let mut at = from;
    for line in buf.split_inclusive(|b| *b == b'\n') {
        at += line.len() as u64;
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        // `[<stamp>][<tag>] <bytes>`
        let Some(rest) = line.strip_prefix(b"[") else { continue };
        let Some(i) = memchr::memchr(b']', rest) else { continue };
        let rest = &rest[i + 1..];
        let Some(rest) = rest.strip_prefix(b"[") else { continue };
        let Some(j) = memchr::memchr(b']', rest) else { continue };
        let (tag, bytes) = (&rest[..j], rest.get(j + 2..).unwrap_or(&[]));
        let (stream, complete) = match tag {
            b"stdout" => (Stream::Stdout, true),
            b"stdout~" => (Stream::Stdout, false),
            b"stderr" => (Stream::Stderr, true),
            b"stderr~" => (Stream::Stderr, false),
            _ => continue,
        };
        let _ = tx.send(Event::Output { num, stream, line: bytes.to_vec(), complete }).await;
        *pos = at;
    }
    *pos = at;
}

/// The complete lines of `log` from byte `from` (up to `to`, else its end); `None` when there
/// is none yet. Most ticks find nothing new: one stat, no open.
fn complete_lines(log: &Path, from: u64, to: Option<u64>) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let len = std::fs::metadata(log).map_or(0, |m| m.len());
    let to = to.unwrap_or(len).min(len);
    if to <= from {
        return None;
    }
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.take(to - from).read_to_end(&mut buf).ok()?;
    // A record being written (or not yet visible whole on a network filesystem: a hole of
    // NULs) waits for the next read.
    let visible = memchr::memchr(0, &buf).unwrap_or(buf.len());
    let last = memchr::memrchr(b'\n', &buf[..visible])?;
    buf.truncate(last + 1);
    Some(buf)
}

// ---------------------------------------------------------------------------------------
// The driver thread.

fn drive(shared: &Shared) {
    let mut interval = POLL_MIN;
    let mut next_poll = Instant::now() + POLL_MIN;
    let mut warned: Option<String> = None;
    loop {
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        // Submit what was gathered, once every expected job is in or none came for a while.
        if !st.pending.is_empty() {
            let waiting_for = shared.settings.expected.saturating_sub(st.first_submitted);
            let firsts = st.pending.iter().filter(|p| p.manifest.attempt == 1).count() as u64;
            let quiet = st.last_add.is_none_or(|t| t.elapsed() >= GATHER);
            if firsts >= waiting_for || quiet || st.shutdown {
                let batch = std::mem::take(&mut st.pending);
                st.first_submitted += firsts;
                let first = st.batches;
                drop(st);
                let chunk = (shared.settings.max_array_size.max(1) as usize).min(batch.len().max(1));
                let mut k = first;
                let mut rest = batch;
                let mut registered = Vec::new();
                while !rest.is_empty() {
                    let tail = rest.split_off(chunk.min(rest.len()));
                    registered.extend(submit(shared, k, std::mem::replace(&mut rest, tail)));
                    k += 1;
                }
                let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                st.batches = k;
                for (id, tracked) in registered {
                    st.tasks.insert(id, tracked);
                }
                st.poll_now = true;
                continue;
            }
        }
        if !st.withdrawals.is_empty() {
            let withdrawn = std::mem::take(&mut st.withdrawals);
            for (id, how) in &withdrawn {
                if let Some(t) = st.tasks.get_mut(id) {
                    t.withdrawn = Some(*how);
                }
            }
            let ids: Vec<String> = withdrawn.iter().map(|(id, _)| id.name()).collect();
            st.poll_now = true;
            drop(st);
            if let Err(e) = cmd::scancel(&ids) {
                tracing::debug!("scancel {}: {e}", ids.join(" "));
            }
            continue;
        }
        if !st.signals.is_empty() {
            // Whether a task runs decides how it is signalled: a task believed pending may
            // have started since the last poll (then a plain cancel would leave what ignores
            // SIGTERM to Slurm's KillWait), so look again first.
            let stale: Vec<u64> = st
                .signals
                .iter()
                .filter(|(id, _)| st.tasks.get(id).is_some_and(|t| t.state.as_deref() != Some("RUNNING")))
                .map(|(id, _)| id.array)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if !stale.is_empty() {
                drop(st);
                poll(shared, &stale, &mut warned);
                st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            }
            let signals = std::mem::take(&mut st.signals);
            let mut plain = Vec::new();
            let mut by_signal: HashMap<i32, Vec<String>> = HashMap::new();
            for (id, sig) in signals {
                let Some(t) = st.tasks.get_mut(&id) else { continue };
                t.signaled.push(sig);
                let running = t.state.as_deref().is_some_and(cmd::is_running);
                // A pending task is simply cancelled; a running one gets the signal (SIGKILL
                // to every process of its step, then the cancel: see below).
                if running {
                    by_signal.entry(sig).or_default().push(id.name());
                } else {
                    plain.push(id.name());
                }
            }
            st.poll_now = true;
            drop(st);
            tracing::debug!("signals: plain {plain:?}, by signal {by_signal:?}");
            // One scancel per running task: `scancel --signal` given several ids waits until
            // they end (35 s measured here), and even one id can take seconds when its task
            // ends meanwhile: every call runs on a thread of its own, so that polling (and
            // the plain scancel of pending tasks) never waits for one.
            let mut calls: Vec<Vec<Vec<String>>> = by_signal
                .into_iter()
                .flat_map(|(sig, ids)| {
                    // SIGKILL is asked of the task runner, which kills the job's group and
                    // still writes its marker (see `task::KILL_REQUEST`).
                    let name = if sig == libc::SIGKILL {
                        task::KILL_REQUEST.to_string()
                    } else {
                        crate::job::signal_name(sig).trim_start_matches("SIG").to_string()
                    };
                    ids.into_iter().map(move |id| vec![vec!["--batch".to_string(), format!("--signal={name}"), id]])
                })
                .collect();
            if !plain.is_empty() {
                dedup(&mut plain);
                calls.push(vec![plain]);
            }
            for seq in calls {
                let spawned = std::thread::Builder::new().name("orchestrator-scancel".into()).spawn(move || {
                    for args in seq {
                        if let Err(e) = cmd::scancel(&args) {
                            tracing::debug!("scancel {}: {e}", args.join(" "));
                        }
                    }
                });
                if let Err(e) = spawned {
                    tracing::warn!("cannot start a thread for scancel: {e}");
                }
            }
            interval = POLL_MIN;
            next_poll = Instant::now() + Duration::from_millis(50);
            continue;
        }
        let live: Vec<u64> = {
            let mut a: Vec<u64> = st
                .tasks
                .iter()
                .filter(|(_, t)| t.view.borrow().end.is_none() || t.view.borrow().in_queue)
                .map(|(id, _)| id.array)
                .collect();
            a.sort_unstable();
            a.dedup();
            a
        };
        if st.shutdown && st.pending.is_empty() {
            // Nothing may stay queued after the run: whatever is still there is cancelled.
            let left: Vec<String> = st
                .tasks
                .iter()
                .filter(|(_, t)| t.view.borrow().in_queue || t.view.borrow().end.is_none())
                .map(|(id, _)| id.name())
                .collect();
            drop(st);
            if !left.is_empty() {
                let _ = cmd::scancel(&left);
                wait_gone(&live, Duration::from_secs(20));
            }
            return;
        }
        if st.poll_now {
            st.poll_now = false;
            interval = POLL_MIN;
            next_poll = next_poll.min(Instant::now() + Duration::from_millis(20));
        }
        let now = Instant::now();
        if !live.is_empty() && now >= next_poll {
            drop(st);
            let changed = poll(shared, &live, &mut warned);
            interval = if changed { POLL_MIN } else { (interval.mul_f64(1.5)).min(POLL_MAX) };
            next_poll = Instant::now() + interval;
            continue;
        }
        let mut until =
            if live.is_empty() { Duration::from_secs(3600) } else { next_poll.saturating_duration_since(now) };
        if !st.pending.is_empty() {
            let gather = st.last_add.map_or(Duration::ZERO, |t| GATHER.saturating_sub(t.elapsed()));
            until = until.min(gather.max(Duration::from_millis(1)));
        }
        let _unused = shared.wake.wait_timeout(st, until);
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

/// Wait (bounded) until none of `arrays`' tasks is in the queue.
fn wait_gone(arrays: &[u64], bound: Duration) {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        match cmd::squeue(arrays) {
            Ok(Some(seen)) if seen.values().any(|s| cmd::is_live(&s.state)) => {}
            Ok(_) => return,
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Submit one array of `batch`, as batch `k`; each job's start gets its task or the error.
fn submit(shared: &Shared, k: u32, batch: Vec<Pending>) -> Vec<(TaskId, Tracked)> {
    let s = &shared.settings;
    let dir = s.work_dir.join(format!("b{k}"));
    let fail = |batch: Vec<Pending>, message: String| {
        for p in batch {
            let _ = p.reply.send(Err(message.clone()));
        }
        Vec::new()
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail(batch, format!("cannot create {}: {e}", dir.display()));
    }
    // Task i is the i-th job of the batch in job order (slots call start() in any order).
    let mut batch = batch;
    batch.sort_by_key(|p| (p.manifest.num, p.manifest.attempt));
    let throttle = s.throttle.max(1);
    let mut manifests = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        let mut m = p.manifest.clone();
        m.slot = i % throttle;
        m.slot_env = std::iter::once((orchestrator_worker::env::SLOT.to_string(), m.slot.to_string()))
            .chain(s.slot_env.iter().map(|(k, v)| (k.clone(), v.for_slot(m.slot))))
            .collect();
        m.marker = dir.join(format!("{i}.done"));
        let text = match serde_json::to_vec(&m) {
            Ok(t) => t,
            Err(e) => return fail(batch, e.to_string()),
        };
        if let Err(e) = std::fs::write(dir.join(format!("{i}.json")), text) {
            return fail(batch, format!("cannot write {}: {e}", dir.join(format!("{i}.json")).display()));
        }
        manifests.push(m);
    }
    let script = dir.join("run.sh");
    let mut text = String::from("#!/bin/bash\n# Written by orchestrator: runs one job of this array on its node.\n");
    for line in &s.setup {
        text.push_str(line);
        text.push('\n');
    }
    let exe = shell_quote(&s.exe.to_string_lossy());
    let runner = format!("{exe} {} {}", task::ARG, shell_quote(&dir.to_string_lossy()));
    match &s.srun_args {
        Some(args) => {
            let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
            text.push_str(&format!("exec srun {} {runner}\n", args.join(" ")));
        }
        None => text.push_str(&format!("exec {runner}\n")),
    }
    if let Err(e) = std::fs::write(&script, text) {
        return fail(batch, format!("cannot write {}: {e}", script.display()));
    }
    let mut args = s.array_args(batch.len());
    args.push(format!("--output={}", dir.join("%a.out").display()));
    args.push("--open-mode=append".into());
    args.push(format!("--chdir={}", s.chdir.display()));
    args.push(script.to_string_lossy().into_owned());
    tracing::debug!("sbatch {}", args.join(" "));
    let array = match cmd::sbatch(&args) {
        Ok(a) => a,
        Err(e) => {
            let message = match e {
                SlurmError::Rejected(m) | SlurmError::Unreachable(m) => m,
                other => other.to_string(),
            };
            return fail(batch, message);
        }
    };
    // For a resume whose predecessor left tasks queued: which array this batch is.
    if let Err(e) = std::fs::write(dir.join(ARRAY_OF_BATCH), format!("{array}\n")) {
        tracing::warn!("cannot write {}: {e}", dir.join(ARRAY_OF_BATCH).display());
    }
    // For the watchdog: what to cancel if this process dies.
    {
        use std::io::Write;
        let list = s.work_dir.join(ARRAYS);
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&list)
            .and_then(|mut f| f.write_all(format!("{array}\n").as_bytes()));
        if let Err(e) = appended {
            tracing::warn!("cannot write {}: {e}", list.display());
        }
    }
    let mut out = Vec::with_capacity(batch.len());
    for (i, (p, m)) in batch.into_iter().zip(manifests).enumerate() {
        let id = TaskId { array, index: i };
        let (submitted, tracked) = register(id.clone(), &m, dir.join(format!("{i}.out")));
        if p.reply.send(Ok(submitted)).is_err() {
            // Nobody waits for it any more: it must not run.
            let _ = cmd::scancel(&[id.name()]);
        }
        out.push((id, tracked));
    }
    out
}

/// A submitted task: what its attempt watches, and what the driver tracks.
fn register(id: TaskId, m: &Manifest, out: PathBuf) -> (Submitted, Tracked) {
    let (tx, rx) = watch::channel(View { in_queue: true, running: false, end: None });
    let submitted = Submitted { task: id, view: rx, marker: m.marker.clone(), log: m.log.clone() };
    let tracked = Tracked {
        view: tx,
        marker: m.marker.clone(),
        out,
        state: None,
        since: Instant::now(),
        signaled: Vec::new(),
        preempted_at: None,
        node: None,
        slot: m.slot,
        vanished_at: None,
        withdrawn: None,
    };
    (submitted, tracked)
}

/// A task of an earlier run of the sweep, still in the queue.
struct Adoptable {
    task: TaskId,
    manifest: Manifest,
    out: PathBuf,
    /// Its state in `squeue`.
    state: String,
}

/// The tasks that earlier runs of the sweep in `work_dir` submitted and Slurm still has
/// queued or running, by job number (one `squeue` call for every earlier array).
fn adoptable(work_dir: &Path) -> HashMap<u64, Adoptable> {
    let mut batches: HashMap<u64, PathBuf> = HashMap::new();
    for entry in std::fs::read_dir(work_dir).into_iter().flatten().flatten() {
        let dir = entry.path();
        let array = std::fs::read_to_string(dir.join(ARRAY_OF_BATCH)).ok().and_then(|t| t.trim().parse::<u64>().ok());
        if let Some(array) = array {
            batches.insert(array, dir);
        }
    }
    if batches.is_empty() {
        return HashMap::new();
    }
    let arrays: Vec<u64> = batches.keys().copied().collect();
    let seen = match cmd::squeue(&arrays) {
        Ok(Some(seen)) => seen,
        Ok(None) => return HashMap::new(),
        Err(e) => {
            tracing::warn!("cannot ask squeue for the earlier runs' tasks ({e}): none is attached to");
            return HashMap::new();
        }
    };
    let mut out: HashMap<u64, Adoptable> = HashMap::new();
    let mut extra = Vec::new();
    for (name, s) in seen {
        if !cmd::is_live(&s.state) {
            continue;
        }
        let Some((array, index)) = name.split_once('_') else { continue };
        let (Ok(array), Ok(index)) = (array.parse::<u64>(), index.parse::<usize>()) else { continue };
        let Some(dir) = batches.get(&array) else { continue };
        let manifest = std::fs::read(dir.join(format!("{index}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
        if let Some(manifest) = manifest {
            // A task the dead run withdrew (it died before the cancel): it will never run
            // its program, so it is cancelled and the job submitted again.
            if task::withdrawn(&manifest.marker) {
                extra.push(name);
                continue;
            }
            let out_file = dir.join(format!("{index}.out"));
            let a = Adoptable { task: TaskId { array, index }, manifest, out: out_file, state: s.state };
            // Two live tasks for one job (a retry submitted before the supervisor died): the
            // later one is followed, the other cancelled.
            match out.remove(&a.manifest.num) {
                Some(b) if (b.task.array, b.task.index) > (array, index) => {
                    extra.push(a.task.name());
                    out.insert(b.manifest.num, b);
                }
                Some(b) => {
                    extra.push(b.task.name());
                    out.insert(a.manifest.num, a);
                }
                None => {
                    out.insert(a.manifest.num, a);
                }
            }
        }
    }
    if !extra.is_empty() {
        let _ = cmd::scancel(&extra);
    }
    out
}

/// Claim Slurm task `name` (completion marker `marker`) as withdrawn: `Ok(true)` if this
/// start of it will never run its program. A task that has started once and now waits in
/// the queue again (requeued after a preemption or a node failure) is claimed for its next
/// start, the one scontrol's `Restarts=` counts.
fn claim_withdrawal(marker: &Path, name: &str) -> std::io::Result<bool> {
    use task::{Claim, claim, claim_path};
    if claim(&claim_path(marker, 0), Claim::Withdrawn)? == Claim::Withdrawn {
        return Ok(true);
    }
    match cmd::scontrol_restarts(name) {
        Some((restarts, state)) if restarts > 0 && matches!(state.as_str(), "PENDING" | "REQUEUED") => {
            Ok(claim(&claim_path(marker, restarts), Claim::Withdrawn)? == Claim::Withdrawn)
        }
        _ => Ok(false),
    }
}

fn code_or_signal(code: i32, signal: i32) -> (Option<i32>, Option<i32>) {
    if signal != 0 { (None, Some(signal)) } else { (Some(code), None) }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn read_marker(path: &Path) -> Option<Done> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// One poll of every live array; returns whether anything changed.
fn poll(shared: &Shared, arrays: &[u64], warned: &mut Option<String>) -> bool {
    let seen = match cmd::squeue(arrays) {
        Ok(s) => {
            *warned = None;
            s
        }
        Err(e) => {
            if warned.as_deref() != Some(e.as_str()) {
                tracing::warn!("squeue failed (trying again): {e}");
                *warned = Some(e);
            }
            return false;
        }
    };
    let mut changed = false;
    let mut forgotten: Vec<TaskId> = Vec::new();
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    for (id, t) in st.tasks.iter_mut() {
        if !arrays.contains(&id.array) {
            continue;
        }
        let view = t.view.borrow().clone();
        if view.end.is_some() && !view.in_queue {
            continue;
        }
        let entry = seen.as_ref().and_then(|s| s.get(&id.name()));
        match entry {
            Some(e) => {
                if t.state.as_deref() != Some(e.state.as_str()) {
                    changed = true;
                    t.state = Some(e.state.clone());
                    t.preempted_at = (e.state == "PREEMPTED").then(Instant::now);
                    let running = cmd::is_running(&e.state);
                    if view.running != running {
                        t.view.send_modify(|v| v.running = running);
                    }
                }
                if e.node.is_some() {
                    t.node = e.node.clone();
                }
                // PREEMPTED may turn into a requeue: final only once it stays so.
                let preempt_wait = t.preempted_at.is_some_and(|p| p.elapsed() < Duration::from_secs(10));
                let live = cmd::is_live(&e.state) || preempt_wait;
                if !live && view.end.is_none() {
                    let ended = finish(shared, id, t, &e.state, None, e.node.clone(), e.start, e.end);
                    t.view.send_replace(View { in_queue: false, running: false, end: Some(Ok(ended)) });
                    changed = true;
                } else if !live && view.in_queue {
                    t.view.send_modify(|v| v.in_queue = false);
                    changed = true;
                }
            }
            None => {
                // Not (or no longer) known to slurmctld: right after submission that is
                // normal for a moment; later it was purged.
                // Pending tasks cancelled are never listed again (they stay collapsed).
                if t.since.elapsed() > Duration::from_secs(10)
                    || seen.is_none()
                    || t.state.is_some()
                    || !t.signaled.is_empty()
                    || t.withdrawn.is_some()
                {
                    forgotten.push(id.clone());
                }
            }
        }
    }
    if !forgotten.is_empty() {
        drop(st);
        let acc = if shared.settings.accounting {
            let arrays: Vec<u64> = forgotten.iter().map(|t| t.array).collect::<HashSet<_>>().into_iter().collect();
            cmd::sacct(&arrays).ok().flatten()
        } else {
            None
        };
        st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        for id in forgotten {
            let Some(t) = st.tasks.get_mut(&id) else { continue };
            let a = acc.as_ref().and_then(|a| a.get(&id.name())).cloned();
            let marker = read_marker(&t.marker);
            let ended = match (a, marker) {
                (Some(a), _) if cmd::is_live(&a.state) => continue,
                (Some(a), _) => Ok(finish(shared, &id, t, &a.state, Some((a.code, a.signal)), a.node, a.start, a.end)),
                (None, Some(_)) => Ok(finish(shared, &id, t, "COMPLETED", None, None, None, None)),
                // We cancelled it, and it left no trace: it never ran (pending tasks
                // cancelled are not listed by squeue, and sacct lags behind).
                (None, None) if !t.signaled.is_empty() || t.withdrawn.is_some() => {
                    Ok(finish(shared, &id, t, "CANCELLED", None, None, None, None))
                }
                // sacct can be seconds behind: give it time before calling the task lost.
                (None, None) if t.vanished_at.get_or_insert_with(Instant::now).elapsed() < Duration::from_secs(30) => {
                    continue;
                }
                (None, None) => Err(format!(
                    "Slurm task {} left the queue without a trace (no completion marker, {})",
                    id.name(),
                    if shared.settings.accounting { "not in sacct" } else { "accounting is off" }
                )),
            };
            t.view.send_replace(View { in_queue: false, running: false, end: Some(ended) });
            changed = true;
        }
    }
    changed
}

/// How a task that reached the final Slurm `state` ended: its marker's word on the
/// program, Slurm's on why.
#[allow(clippy::too_many_arguments)]
fn finish(
    shared: &Shared,
    id: &TaskId,
    t: &Tracked,
    state: &str,
    accounted: Option<(i32, i32)>,
    node: Option<String>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> Ended {
    let done = read_marker(&t.marker);
    // Withdrawn by the claim: its program never ran, whatever Slurm made of the rest (the
    // task runner may have seen the claim and exited before the cancel came).
    let never_ran = t.withdrawn == Some(Withdrawal::Claimed) && done.is_none();
    // Without a marker: the exit code from sacct, else scontrol (while it holds the job).
    let (code, signal) = match (&done, accounted) {
        (Some(d), _) => (d.code, d.signal),
        // Slurm's `code:signal`: a signal means no exit code (`0:9`).
        (None, Some((c, s))) => code_or_signal(c, s),
        // No program, no exit code to ask for.
        (None, None) if never_ran => (None, None),
        (None, None) => match cmd::scontrol_job(&id.name()) {
            Some(a) => code_or_signal(a.code, a.signal),
            None => (None, None),
        },
    };
    let program = |code: Option<i32>, signal: Option<i32>| match (code, signal) {
        (_, Some(signal)) => ExitStatus::Signal { signal, core_dumped: done.as_ref().is_some_and(|d| d.core_dumped) },
        (Some(c), None) => ExitStatus::Code(c),
        (None, None) => ExitStatus::Code(-1),
    };
    let ended = |reason| ExitStatus::Ended { reason, code, signal };
    let oom_note = || {
        std::fs::read_to_string(&t.out)
            .map(|s| {
                // slurmstepd's words (`StepId=78.batch exceeded memory limit`, `Exceeded job
                // memory limit`), or the cgroup OOM killer's.
                let s = s.to_ascii_lowercase();
                s.contains("exceeded memory limit") || s.contains("exceeded job memory limit") || s.contains("oom-kill")
            })
            .unwrap_or(false)
    };
    let status = match state {
        _ if never_ran => ExitStatus::Ended { reason: EndReason::Cancelled, code: None, signal: None },
        "COMPLETED" => program(code.or(Some(0)), signal),
        "FAILED" if signal == Some(libc::SIGKILL) && oom_note() => ended(EndReason::OutOfMemory),
        "FAILED" => program(code.or(Some(1)), signal),
        "TIMEOUT" | "DEADLINE" => ended(EndReason::TimeLimit),
        // Cancelled before it ran: no program to speak of.
        "CANCELLED" if done.is_none() && node.is_none() && t.node.is_none() => {
            ExitStatus::Ended { reason: EndReason::Cancelled, code: None, signal: None }
        }
        // Cancelled by us: the marker says how the program ended; without one, the last
        // signal we sent ended it.
        "CANCELLED" if !t.signaled.is_empty() => match &done {
            Some(_) => program(code, signal),
            None => program(None, signal.or(Some(*t.signaled.last().unwrap_or(&libc::SIGTERM)))),
        },
        "CANCELLED" => ended(EndReason::Cancelled),
        "OUT_OF_MEMORY" => ended(EndReason::OutOfMemory),
        "NODE_FAIL" | "BOOT_FAIL" => ended(EndReason::NodeFail),
        "PREEMPTED" => ended(EndReason::Preempted),
        _ => program(code, signal),
    };
    let usage = done
        .as_ref()
        .map(|d| Usage { user_cpu: d.user_cpu, sys_cpu: d.sys_cpu, max_rss_kib: d.max_rss_kib, mem_peak_kib: None })
        .unwrap_or_default();
    let node = done.as_ref().and_then(|d| d.node.clone()).or(node).or_else(|| t.node.clone());
    let started = done.as_ref().and_then(|d| d.start()).or(start);
    let finished = done.as_ref().and_then(|d| d.end()).or(end);
    let _ = shared;
    Ended { exit: Exit { status, usage, started, ended: finished, node, slot: Some(t.slot) }, done }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(marker: PathBuf, out: PathBuf, signaled: Vec<i32>) -> Tracked {
        let (view, _) = watch::channel(View::default());
        Tracked {
            view,
            marker,
            out,
            state: Some("RUNNING".into()),
            since: Instant::now(),
            signaled,
            preempted_at: None,
            node: Some("n1".into()),
            slot: 1,
            vanished_at: None,
            withdrawn: None,
        }
    }

    #[test]
    fn final_states_map_to_exit_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("0.done");
        let out = dir.path().join("0.out");
        let done = Done { code: Some(3), start_us: Some(1_000_000), end_us: Some(3_500_000), ..Done::default() };
        std::fs::write(&marker, serde_json::to_vec(&done).unwrap()).unwrap();
        let info = ClusterInfo { max_array_size: 1001, accounting: true, version: String::new() };
        let shared = Shared {
            adoptable: Mutex::new(HashMap::new()),
            settings: SlurmSettings::new(dir.path().into(), &info),
            watchdog: Mutex::new(None),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            clock: Clock::new(),
        };
        let id = TaskId { array: 7, index: 0 };
        let status = |state: &str, signaled: Vec<i32>| {
            let t = tracked(marker.clone(), out.clone(), signaled);
            finish(&shared, &id, &t, state, None, None, None, None).exit
        };
        let e = status("FAILED", vec![]);
        assert_eq!(e.status, ExitStatus::Code(3));
        assert_eq!((e.node.as_deref(), e.slot), (Some("n1"), Some(1)));
        assert_eq!(e.ended.unwrap() - e.started.unwrap(), chrono::Duration::milliseconds(2500));
        let ended = |reason| ExitStatus::Ended { reason, code: Some(3), signal: None };
        assert_eq!(status("TIMEOUT", vec![]).status, ended(EndReason::TimeLimit));
        assert_eq!(status("NODE_FAIL", vec![]).status, ended(EndReason::NodeFail));
        assert_eq!(status("OUT_OF_MEMORY", vec![]).status, ended(EndReason::OutOfMemory));
        assert_eq!(status("PREEMPTED", vec![]).status, ended(EndReason::Preempted));
        assert_eq!(status("CANCELLED", vec![]).status, ended(EndReason::Cancelled));
        // Cancelled by us: how the program ended is what counts (the scheduler knows why).
        assert_eq!(status("CANCELLED", vec![libc::SIGTERM]).status, ExitStatus::Code(3));
        // Killed by Slurm's memory enforcement: FAILED 0:9 and its message in the output.
        let killed = Done { signal: Some(9), ..done.clone() };
        std::fs::write(&marker, serde_json::to_vec(&killed).unwrap()).unwrap();
        std::fs::write(&out, "slurmstepd-vm: error: Exceeded job memory limit\n").unwrap();
        assert!(matches!(status("FAILED", vec![]).status, ExitStatus::Ended { reason: EndReason::OutOfMemory, .. }));
        // Withdrawn before it ran (no marker): never a program's ending, whatever the state
        // (the task runner may have exited on the claim before the cancel came).
        std::fs::remove_file(&marker).unwrap();
        for state in ["CANCELLED", "COMPLETED"] {
            let t = Tracked { withdrawn: Some(Withdrawal::Claimed), ..tracked(marker.clone(), out.clone(), vec![]) };
            let e = finish(&shared, &id, &t, state, None, None, None, None).exit;
            assert_eq!(
                e.status,
                ExitStatus::Ended { reason: EndReason::Cancelled, code: None, signal: None },
                "{state}"
            );
        }
    }

    #[test]
    fn the_first_to_claim_a_task_decides_whether_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("3.done");
        let path = task::claim_path(&marker, 0);
        assert_eq!(path, dir.path().join("3.claim"));
        assert_eq!(task::claim_path(&marker, 2), dir.path().join("3.r2.claim"));
        // The supervisor first: the task runner, starting late, finds it withdrawn.
        assert_eq!(task::claim(&path, task::Claim::Withdrawn).unwrap(), task::Claim::Withdrawn);
        assert_eq!(task::claim(&path, task::Claim::Started).unwrap(), task::Claim::Withdrawn);
        std::fs::remove_file(&path).unwrap();
        // The task first: the withdrawal loses, and a requeued run of the task finds its own.
        assert_eq!(task::claim(&path, task::Claim::Started).unwrap(), task::Claim::Started);
        assert_eq!(task::claim(&path, task::Claim::Withdrawn).unwrap(), task::Claim::Started);
        assert_eq!(task::claim(&path, task::Claim::Started).unwrap(), task::Claim::Started);
        // No temporary file is left behind either way.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("3.claim")]);
        // Many claimants at once: exactly one wins, and all agree on who.
        std::fs::remove_file(&path).unwrap();
        let seen: Vec<task::Claim> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let path = &path;
                    let who = if i % 2 == 0 { task::Claim::Started } else { task::Claim::Withdrawn };
                    s.spawn(move || (who, task::claim(path, who).unwrap()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).map(|(_, held)| held).collect()
        });
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        // A claim that says nothing known is an error, after a moment's patience.
        std::fs::write(&path, "").unwrap();
        assert!(task::claim(&path, task::Claim::Withdrawn).is_err());
        // What a resume looks at: the latest start's claim. Started, then requeued and
        // withdrawn before its second start: withdrawn; started again: not.
        std::fs::write(&path, "started").unwrap();
        assert!(!task::withdrawn(&marker));
        assert_eq!(task::claim(&task::claim_path(&marker, 1), task::Claim::Withdrawn).unwrap(), task::Claim::Withdrawn);
        assert!(task::withdrawn(&marker));
        std::fs::write(task::claim_path(&marker, 1), "started").unwrap();
        assert!(!task::withdrawn(&marker));
    }
}
