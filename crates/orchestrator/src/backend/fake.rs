//! A backend of scripted attempts on tokio's clock: no process, no sleep. With a paused
//! clock (`#[tokio::test(start_paused = true)]`) and [`RunOptions::slot_threads`] at 0 (the
//! slots on the test's own runtime), a timeout, its grace period and SIGKILL, a halt or a
//! retry's back-off all happen in virtual time, deterministically.
//!
//! [`RunOptions::slot_threads`]: crate::RunOptions::slot_threads

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Attempt, Backend, BoxFuture, Capabilities, Collected, Exit, ExitStatus, JobLog, LostError, StartError, StartRequest,
};
use crate::job::JobSpec;

/// How a scripted attempt behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Script {
    /// How long it runs if nothing stops it.
    pub runs_for: Duration,
    /// How it then ends.
    pub exit: ExitStatus,
    /// What it does when it gets a signal other than SIGKILL (SIGKILL always ends it at once).
    pub on_signal: OnSignal,
    /// It never starts: the backend reports this error.
    pub start_error: Option<String>,
    /// Processes it leaves behind, found by [`Attempt::clean_up`].
    pub leftovers: u32,
    /// How long starting it takes (a warm job waiting for its interpreter).
    pub starts_after: Duration,
}

impl Script {
    /// Runs for `runs_for`, then exits with `code`; a signal ends it at once.
    pub fn exits(code: i32, runs_for: Duration) -> Self {
        Script {
            runs_for,
            exit: ExitStatus::Code(code),
            on_signal: OnSignal::Dies,
            start_error: None,
            leftovers: 0,
            starts_after: Duration::ZERO,
        }
    }

    /// Ignores every signal but SIGKILL.
    pub fn ignoring_signals(mut self) -> Self {
        self.on_signal = OnSignal::Ignores;
        self
    }

    /// Takes `delay` to start.
    pub fn starting_after(mut self, delay: Duration) -> Self {
        self.starts_after = delay;
        self
    }

    /// Cannot be started: the backend says `error`.
    pub fn unstartable(error: &str) -> Self {
        Script { start_error: Some(error.into()), ..Script::exits(0, Duration::ZERO) }
    }
}

/// What a scripted attempt does with a signal other than SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnSignal {
    /// It dies of it at once.
    Dies,
    /// It ignores it.
    Ignores,
}

/// What happened to a scripted attempt, in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Happened {
    /// It started.
    Started,
    /// It was sent this signal.
    Signal(i32),
    /// Its main process ended so.
    Exited(ExitStatus),
}

/// One entry of the backend's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// Job number.
    pub num: u64,
    /// Attempt (1 for the first).
    pub attempt: u32,
    /// When, on tokio's clock.
    pub at: Instant,
    /// What.
    pub what: Happened,
}

type ScriptFn = dyn Fn(&JobSpec, u32) -> Script + Send + Sync;

/// The scripted backend. Clones share their history.
#[derive(Clone)]
pub struct FakeBackend {
    script: Arc<ScriptFn>,
    history: Arc<Mutex<Vec<Entry>>>,
    notes: Arc<Mutex<Vec<(u64, String)>>>,
}

impl std::fmt::Debug for FakeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBackend").finish_non_exhaustive()
    }
}

impl FakeBackend {
    /// A backend whose attempt `attempt` (1 for the first) of `job` behaves as `script` says.
    pub fn new(script: impl Fn(&JobSpec, u32) -> Script + Send + Sync + 'static) -> Self {
        FakeBackend {
            script: Arc::new(script),
            history: Arc::new(Mutex::new(Vec::new())),
            notes: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// What happened so far.
    pub fn history(&self) -> Vec<Entry> {
        self.history.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The notes the scheduler wrote into job `num`'s log.
    pub fn notes(&self, num: u64) -> Vec<String> {
        let notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.iter().filter(|(n, _)| *n == num).map(|(_, t)| t.clone()).collect()
    }

    fn record(&self, num: u64, attempt: u32, what: Happened) {
        let entry = Entry { num, attempt, at: Instant::now(), what };
        self.history.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    }
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { forwards_signals: true, ..Capabilities::NONE }
    }

    fn start<'a>(&'a self, req: StartRequest<'a>) -> BoxFuture<'a, Result<Box<dyn Attempt>, StartError>> {
        let script = (self.script)(req.job, req.attempt);
        let (num, attempt) = (req.job.num, req.attempt);
        Box::pin(async move {
            tokio::time::sleep(script.starts_after).await;
            if let Some(error) = script.start_error {
                return Err(StartError::new(error));
            }
            self.record(num, attempt, Happened::Started);
            let ends_at = Instant::now().checked_add(script.runs_for).unwrap_or_else(far_future);
            Ok(Box::new(FakeAttempt { backend: self.clone(), num, attempt, ends_at, status: script.exit, script })
                as Box<dyn Attempt>)
        })
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

struct FakeAttempt {
    backend: FakeBackend,
    num: u64,
    attempt: u32,
    script: Script,
    ends_at: Instant,
    status: ExitStatus,
}

impl Attempt for FakeAttempt {
    fn wait(&mut self) -> BoxFuture<'_, Result<Exit, LostError>> {
        Box::pin(async move {
            tokio::time::sleep_until(self.ends_at).await;
            self.backend.record(self.num, self.attempt, Happened::Exited(self.status));
            Ok(Exit::new(self.status))
        })
    }

    fn signal(&mut self, signal: i32) {
        self.backend.record(self.num, self.attempt, Happened::Signal(signal));
        let dies = signal == libc::SIGKILL || self.script.on_signal == OnSignal::Dies;
        if dies && Instant::now() < self.ends_at {
            self.ends_at = Instant::now();
            self.status = ExitStatus::Signal { signal, core_dumped: false };
        }
    }

    fn clean_up(&mut self, _grace: Duration) -> BoxFuture<'_, u32> {
        Box::pin(std::future::ready(self.script.leftovers))
    }

    fn collect<'a>(self: Box<Self>, _job: &'a JobSpec) -> BoxFuture<'a, Collected> {
        let log = FakeLog { num: self.num, notes: self.backend.notes.clone() };
        Box::pin(std::future::ready(Collected {
            log: Box::new(log),
            stdout_bytes: 0,
            stderr_bytes: 0,
            start_error: None,
            usage: None,
            isolation: None,
            warm: false,
        }))
    }
}

struct FakeLog {
    num: u64,
    notes: Arc<Mutex<Vec<(u64, String)>>>,
}

impl JobLog for FakeLog {
    fn note(&mut self, text: &str) {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).push((self.num, text.to_string()));
    }

    fn close(self: Box<Self>) -> Option<String> {
        None
    }
}
