//! Admission control, as GNU parallel's `--memfree`, `--load` and `--delay`: a job starts
//! only while the machine has memory to spare and is not overloaded, and not sooner than a
//! delay after the previous start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Stop;

/// What admission looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct SystemState {
    /// Memory available for new work (`MemAvailable`), bytes.
    pub available_memory: Option<u64>,
    /// The 1-minute load average.
    pub load: Option<f64>,
}

impl SystemState {
    /// This machine's, from `/proc/meminfo` and `/proc/loadavg`.
    pub fn read() -> SystemState {
        let available_memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
        let load =
            std::fs::read_to_string("/proc/loadavg").ok().and_then(|t| t.split_whitespace().next()?.parse().ok());
        SystemState { available_memory, load }
    }
}

type Probe = dyn Fn() -> SystemState + Send + Sync;

/// When a job may start.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Admission {
    /// Start no job while less memory than this is available (bytes).
    pub min_free_memory: Option<u64>,
    /// Start no job while the 1-minute load average is above this.
    pub max_load: Option<f64>,
    /// At least this long between two starts (across all slots).
    pub start_delay: Option<Duration>,
    /// How the machine's state is read ([`SystemState::read`] when `None`; tests give their own).
    pub probe: Option<Arc<Probe>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("min_free_memory", &self.min_free_memory)
            .field("max_load", &self.max_load)
            .field("start_delay", &self.start_delay)
            .finish_non_exhaustive()
    }
}

/// How often a held job looks again.
const RECHECK: Duration = Duration::from_millis(100);

impl Admission {
    /// Whether it holds anything back at all.
    pub fn is_active(&self) -> bool {
        self.min_free_memory.is_some() || self.max_load.is_some() || self.start_delay.is_some()
    }

    /// Why a job may not start now, if it may not.
    fn held_by(&self) -> Option<String> {
        if self.min_free_memory.is_none() && self.max_load.is_none() {
            return None;
        }
        let state = self.probe.as_ref().map_or_else(SystemState::read, |p| p());
        if let (Some(min), Some(free)) = (self.min_free_memory, state.available_memory)
            && free < min
        {
            return Some(format!("{free} bytes of memory available, under min_free_memory ({min})"));
        }
        if let (Some(max), Some(load)) = (self.max_load, state.load)
            && load > max
        {
            return Some(format!("load average {load:.2}, over max_load ({max})"));
        }
        None
    }

    /// Wait until a job may start; `None` if a stop came first. With a `start_delay`, the
    /// job waits for the one admitted before it to have started and then for the delay
    /// (`gate`, shared by the run's slots), and the machine's state is read after that wait;
    /// the job's [`Starting`] says when it has started.
    pub(super) async fn admit(&self, gate: &StartGate, stop: &mut watch::Receiver<Stop>) -> Option<Starting> {
        let starting = match self.start_delay {
            Some(delay) => {
                // A stop wins over a turn or a delay that is ready at the same moment.
                let turn = tokio::select! {
                    biased;
                    () = super::stopped(stop) => return None,
                    turn = gate.0.clone().lock_owned() => turn,
                };
                // A delay too long for the clock (a library caller's Duration::MAX): no wait.
                if let Some(at) = turn.and_then(|last| last.checked_add(delay)) {
                    tokio::select! {
                        biased;
                        () = super::stopped(stop) => return None,
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                Starting(Some(turn))
            }
            None => Starting(None),
        };
        let mut said = false;
        while let Some(why) = self.held_by() {
            if !said {
                tracing::info!("holding the next job back: {why}");
                said = true;
            }
            tokio::select! {
                biased;
                () = super::stopped(stop) => return None,
                () = tokio::time::sleep(RECHECK) => {}
            }
        }
        Some(starting)
    }
}

/// The run's turn to start a job, for `start_delay`: held by the job admitted last until it
/// has started, and holding when the last start was. Its queue is first come, first served.
#[derive(Debug, Default)]
pub(crate) struct StartGate(Arc<tokio::sync::Mutex<Option<Instant>>>);

/// An admitted job's hold on the [`StartGate`] (none without a `start_delay`). The delay
/// counts from a real start, not from the admission: a job's start may take a while (a warm
/// job waits for its interpreter, a cluster task for its submission), and two jobs admitted
/// a delay apart would otherwise start together.
#[derive(Debug)]
pub(crate) struct Starting(Option<tokio::sync::OwnedMutexGuard<Option<Instant>>>);

impl Starting {
    /// Not held back by a start delay.
    pub(crate) fn free() -> Starting {
        Starting(None)
    }

    /// The job has started now: the next may start a delay from now.
    pub(crate) fn started(&mut self) {
        if let Some(mut turn) = self.0.take() {
            *turn = Some(Instant::now());
        }
    }

    /// The job could not start: the next may go at once, as a delay from the last start
    /// allows (so does dropping this, for a job that never tried).
    pub(crate) fn release(&mut self) {
        self.0 = None;
    }
}
