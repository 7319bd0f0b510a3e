//! The embeddable face of the runner: submit jobs at any time from any task, follow each
//! one through its [`JobHandle`], read the [`Event`] stream, cancel, drain.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use orchestrator::{JobSpec, RunOptions, Supervisor};
//!
//! let logs = tempfile::tempdir().unwrap();
//! let (supervisor, mut events) = Supervisor::start(RunOptions::new(2));
//! let job = JobSpec::new(0, "echo", vec!["hello".into()], logs.path().join("hello.log"));
//! let handle = supervisor.submit(job).await.unwrap();
//! let record = handle.wait().await.unwrap();
//! assert!(record.outcome.is_success());
//! let summary = supervisor.drain(std::time::Duration::from_secs(5)).await.unwrap();
//! assert_eq!(summary.succeeded, 1);
//! # while events.try_recv().is_ok() {}
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::job::{JobRecord, JobSpec, StopReason};
use crate::runner::{RunOptions, RunSummary, Stop, Submission, run_announced};

/// Capacity of the event stream; past it, the runner waits for the consumer (output lines
/// are still written to the job's log first, so nothing is lost, only delayed).
pub const EVENT_CAPACITY: usize = 4096;

/// What can go wrong when talking to a supervisor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// The supervisor is draining or has stopped: it takes no new job.
    #[error("the supervisor takes no new jobs: it is draining or has stopped")]
    Closed,
    /// `drain` was already called (by another clone).
    #[error("the supervisor is already being drained")]
    AlreadyDraining,
}

/// Why a job's handle has no record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The run stopped before the job got a slot.
    #[error("job {num} never started: the supervisor stopped first")]
    NotStarted {
        /// The job's number.
        num: u64,
    },
}

/// Runs jobs submitted at any time, `n_jobs` at a time. Cheap to clone; all clones drive
/// the same runner.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: mpsc::Sender<Submission>,
    events: mpsc::Sender<Event>,
    stop: watch::Sender<Stop>,
    cancel: CancellationToken,
    next_num: AtomicU64,
    closed: AtomicBool,
    runner: Mutex<Option<JoinHandle<RunSummary>>>,
}

/// The last handle to a supervisor is gone: nobody can stop its jobs any more, so they are
/// stopped now (SIGTERM, then SIGKILL after the grace period), as `cancel_all` would.
impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Follows one submitted job.
#[derive(Debug)]
pub struct JobHandle {
    num: u64,
    cancel: CancellationToken,
    record: oneshot::Receiver<JobRecord>,
}

impl JobHandle {
    /// The job's number (assigned by the supervisor, in submission order).
    pub fn num(&self) -> u64 {
        self.num
    }

    /// Cancel this job only: if it has not started it never will; if it runs, it gets
    /// SIGTERM, then SIGKILL after the grace period. Its outcome is `Stopped { Cancelled }`.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels this job when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Wait for the job's record.
    pub async fn wait(self) -> Result<JobRecord, JobError> {
        self.record.await.map_err(|_| JobError::NotStarted { num: self.num })
    }
}

impl Supervisor {
    /// Start a supervisor on the current tokio runtime. Returns it and its event stream
    /// (queued, started, output lines if `opts.forward_output`, finished, run finished).
    ///
    /// Cancelling `opts.cancel` stops everything as SIGTERM would. The supervisor never
    /// installs signal handlers; forward your own with [`Supervisor::stop`].
    pub fn start(mut opts: RunOptions) -> (Supervisor, mpsc::Receiver<Event>) {
        // Bounded for memory's sake whatever n_jobs says.
        let (jobs_tx, jobs_rx) = mpsc::channel(opts.n_jobs.clamp(1, 1 << 16) * 2);
        let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
        let (stop_tx, stop_rx) = watch::channel(Stop::None);
        // Our own token under the caller's: `cancel_all` (or dropping the supervisor) must not
        // cancel the caller's token, which other code may share.
        let cancel = opts.cancel.child_token();
        opts.cancel = cancel.clone();
        // First of the events, before any job's `Queued`: the channel is empty, so it fits.
        let _ = events_tx.try_send(crate::runner::run_started(&opts));
        let runner = tokio::spawn(run_announced(opts, jobs_rx, Some(events_tx.clone()), stop_rx));
        let inner = Inner {
            jobs: jobs_tx,
            events: events_tx,
            stop: stop_tx,
            cancel,
            next_num: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            runner: Mutex::new(Some(runner)),
        };
        (Supervisor { inner: Arc::new(inner) }, events_rx)
    }

    /// Submit a job; its number is assigned here (in submission order), replacing
    /// `spec.num`. Waits while the queue is full (`2 * n_jobs` jobs ahead of the slots).
    pub async fn submit(&self, mut spec: JobSpec) -> Result<JobHandle, SupervisorError> {
        if self.inner.closed.load(Ordering::Acquire) || self.inner.cancel.is_cancelled() {
            return Err(SupervisorError::Closed);
        }
        let num = self.inner.next_num.fetch_add(1, Ordering::Relaxed);
        spec.num = num;
        if spec.id.is_empty() {
            spec.id = num.to_string();
        }
        let cancel = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        // Queued goes out before the job can start, so it always precedes Started.
        let _ = self.inner.events.send(Event::Queued { num }).await;
        let sub = Submission { spec, cancel: cancel.clone(), reply: Some(tx) };
        self.inner.jobs.send(sub).await.map_err(|_| SupervisorError::Closed)?;
        Ok(JobHandle { num, cancel, record: rx })
    }

    /// Ask the runner to stop: [`Stop::Drain`], a graceful stop with a signal forwarded to
    /// every job, or an immediate kill. Requests only escalate.
    pub fn stop(&self, request: Stop) {
        if request != Stop::None {
            self.inner.closed.store(true, Ordering::Release);
        }
        self.inner.stop.send_modify(|s| *s = (*s).max(request));
    }

    /// Cancel everything: no new job, running ones get SIGTERM then SIGKILL.
    pub fn cancel_all(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.cancel.cancel();
    }

    /// Start no new job and let the running ones finish; after `deadline`, end them as
    /// SIGTERM would (then SIGKILL after the grace period). Returns the run's summary.
    pub async fn drain(&self, deadline: Duration) -> Result<RunSummary, SupervisorError> {
        let Some(mut runner) = self.inner.runner.lock().await.take() else {
            return Err(SupervisorError::AlreadyDraining);
        };
        self.stop(Stop::Drain);
        let summary = match tokio::time::timeout(deadline, &mut runner).await {
            Ok(done) => done,
            Err(_) => {
                self.stop(Stop::Graceful { reason: StopReason::Interrupted, signal: libc::SIGTERM });
                runner.await
            }
        };
        // A panic in the runner is a bug; report what is known rather than nothing.
        Ok(summary.unwrap_or_default())
    }
}
