//! Admission control, as GNU parallel's `--memfree`, `--load` and `--delay`: a job starts
//! only while the machine has memory to spare and is not overloaded, and not sooner than a
//! delay after the previous start.

use std::sync::{Arc, Mutex};
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

    /// Wait until a job may start; `false` if a stop came first. `next_start` is shared by
    /// the run's slots: the earliest time the next start may happen.
    pub(super) async fn admit(&self, next_start: &Mutex<Option<Instant>>, stop: &mut watch::Receiver<Stop>) -> bool {
        let mut said = false;
        while let Some(why) = self.held_by() {
            if !said {
                tracing::info!("holding the next job back: {why}");
                said = true;
            }
            tokio::select! {
                () = tokio::time::sleep(RECHECK) => {}
                () = super::stopped(stop) => return false,
            }
        }
        if let Some(delay) = self.start_delay {
            let at = {
                let mut next = next_start.lock().unwrap_or_else(|e| e.into_inner());
                let at = next.map_or_else(Instant::now, |n| n.max(Instant::now()));
                *next = Some(at + delay);
                at
            };
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = super::stopped(stop) => return false,
            }
        }
        true
    }
}
