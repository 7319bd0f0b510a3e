//! orchestrator's core: run sweep jobs as supervised process groups, capture every line
//! they write into per-job logs, enforce timeouts, and keep a journal to resume from.
//!
//! The binary `orchestrator` is a thin layer over this crate; services can embed it the
//! same way. Only the binary installs signal handlers: the library takes stop requests
//! through a [`tokio::sync::watch`] channel.
#![deny(missing_docs)]

pub mod event;
pub mod job;
pub mod journal;
mod output;
pub mod runner;
pub mod spill;
pub mod supervisor;
pub mod sys;
pub mod temp;

pub use event::Event;
pub use job::{JobFile, JobRecord, JobSpec, Outcome, Payload, StopReason, Stream};
pub use journal::Journal;
pub use runner::{JobSource, RunOptions, RunSummary, Stop, Submission, run};
pub use supervisor::{JobError, JobHandle, Supervisor, SupervisorError};
pub use sys::available_cpus;
