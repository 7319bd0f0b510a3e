//! orchestrator's core: run jobs as supervised process groups, capture every line they
//! write into per-job logs, enforce timeouts, retry, and keep a journal to resume from.
//!
//! It knows jobs, slots, backends, logs, the journal, spills and events, and nothing of
//! Hydra (that layer is the `orchestrator-hydra` crate, above this one). The scheduler
//! ([`runner`]) drives an execution [`backend`] through one seam: [`LocalBackend`] by default.
//!
//! The binary `orchestrator` is a thin layer over this crate; services can embed it the
//! same way. Only the binary installs signal handlers: the library takes stop requests
//! through a [`tokio::sync::watch`] channel.
#![deny(missing_docs)]

pub mod backend;
pub mod event;
pub mod job;
pub mod journal;
mod output;
pub mod retry;
pub mod runner;
pub mod spill;
pub mod supervisor;
pub mod temp;

pub use backend::local::{LocalBackend, watchdog};
pub use backend::{Attempt, Backend, Capabilities};
pub use event::{Event, RunInfo};
pub use job::{AttemptRecord, JobFile, JobRecord, JobSpec, JobStatus, Outcome, Payload, StopReason, Stream};
pub use journal::Journal;
pub use retry::{RetryOn, RetryPolicy};
pub use runner::{Admission, JobSource, RunOptions, RunSummary, Stop, Submission, SystemState, run};
pub use supervisor::{JobError, JobHandle, Supervisor, SupervisorError};

/// How many CPUs this process may use (its affinity mask; at least 1).
pub fn available_cpus() -> usize {
    backend::local::sys::available_cpus()
}
