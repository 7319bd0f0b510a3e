//! Events the runner produces; reporters (console, JSON, services) consume them. A run's
//! events begin with [`Event::RunStarted`] and end with [`Event::RunFinished`]: a reporter
//! needs nothing else to show the whole run.
//!
//! Their JSON form (`orchestrator run --json`, the library's `serde` output, the embedding
//! service's event stream) is one schema, derived here: one object per event with its
//! name in `"event"`.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::job::{JobRecord, JobStatus, Outcome, StopReason, Stream, signal_name};
use crate::runner::Stop;

/// What a run is, as its first event says: what a reporter needs for its header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunInfo {
    /// How the run describes its launcher (Hydra's banner:
    /// `Joblib.Parallel(n_jobs=2,backend=loky,...)`).
    pub label: String,
    /// How many jobs it will run, when known up front.
    pub total: Option<u64>,
    /// Where its output goes (a sweep dir).
    pub dir: Option<PathBuf>,
    /// Jobs at once (set by the runner).
    pub n_jobs: usize,
    /// The backend's name (set by the runner).
    pub backend: String,
    /// The first jobs, as `(number, overrides)`, for a header that lists them.
    pub listed: Vec<(u64, String)>,
    /// When the run resumes an earlier one: how many jobs had succeeded already, of how many.
    pub resumed: Option<(u64, u64)>,
}

impl RunInfo {
    /// A run described as `label`.
    pub fn new(label: impl Into<String>) -> Self {
        RunInfo { label: label.into(), ..RunInfo::default() }
    }
}

/// Something that happened in a run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The run starts: first of its events.
    RunStarted(Box<RunInfo>),
    /// The job was accepted and waits for a slot.
    Queued {
        /// Job number.
        num: u64,
    },
    /// An attempt of the job runs, in its slot. Whether it could run its program (its exec
    /// can still fail: missing, not executable, no such working directory) is told by the
    /// outcome in [`Event::Finished`] (`SpawnFailed`).
    Started {
        /// Job number.
        num: u64,
        /// Process id of its leader, where the backend has one (a local process).
        pid: Option<u32>,
        /// Slot (0..n_jobs-1).
        slot: usize,
        /// When.
        at: DateTime<Utc>,
        /// 1 for the first attempt.
        attempt: u32,
        /// It waits in the backend's queue first (a cluster task): [`Event::Running`] says
        /// when its program starts, if the backend sees that.
        queued: bool,
    },
    /// A queued attempt's program runs now (a cluster task left the queue). Only from
    /// backends whose starts are queued, only when the run forwards output
    /// (`RunOptions::forward_output`: it comes the same way), and only when they see it
    /// running: a task that ended between two looks goes straight to [`Event::Finished`].
    Running {
        /// Job number.
        num: u64,
        /// When it was seen running.
        at: DateTime<Utc>,
    },
    /// One line (or a 64 KiB piece of a longer one) the job wrote.
    Output {
        /// Job number.
        num: u64,
        /// Which stream.
        stream: Stream,
        /// The bytes, without the newline.
        line: Vec<u8>,
        /// `false` when this is a piece of a longer line or the stream ended without a newline.
        complete: bool,
    },
    /// An attempt of the job ended as `outcome` and the job will be tried again after `delay`.
    Retrying {
        /// Job number.
        num: u64,
        /// The attempt that ended (1 for the first).
        attempt: u32,
        /// How it ended.
        outcome: Outcome,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// The run stops: no new job starts (`Drain`), running jobs are sent a signal
    /// (`Graceful`) or killed (`Immediate`). Said again each time the request escalates.
    Stopping {
        /// The request now in force.
        request: Stop,
    },
    /// The job ended; its record is final. Its slot is handed back as soon as its last
    /// process is gone (the record's `end`), before its log and journal line are written, so
    /// the next job's [`Event::Started`] in the same slot can come before this event.
    Finished(Box<JobRecord>),
    /// The run ended: every started job has finished. Last of its events.
    RunFinished {
        /// Jobs that ended.
        finished: u64,
        /// Of which succeeded.
        succeeded: u64,
        /// Of which did not.
        failed: u64,
        /// How many jobs the run had (from [`RunInfo::total`]).
        total: Option<u64>,
        /// Where its output went (from [`RunInfo::dir`]).
        dir: Option<PathBuf>,
        /// The strongest stop request seen.
        stop: Stop,
        /// The signal of the first request to stop that came from outside (Ctrl-C: SIGINT).
        interrupted_by: Option<i32>,
        /// Wall time of the run.
        duration: Duration,
    },
}

/// The wire form of an [`Event`], borrowed from it.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Wire<'a> {
    #[serde(rename = "sweep_started")]
    RunStarted {
        jobs: Option<u64>,
        sweep_dir: Option<Cow<'a, str>>,
        launcher: &'a str,
        n_jobs: usize,
        backend: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        resumed: Option<Resumed>,
    },
    JobQueued {
        num: u64,
    },
    JobStarted {
        num: u64,
        pid: Option<u32>,
        slot: usize,
        time: String,
        attempt: u32,
        #[serde(skip_serializing_if = "is_false")]
        queued: bool,
    },
    JobRunning {
        num: u64,
        time: String,
    },
    Output {
        num: u64,
        stream: Stream,
        line: Cow<'a, str>,
        complete: bool,
    },
    JobRetrying {
        num: u64,
        attempt: u32,
        status: JobStatus,
        exit_code: Option<i32>,
        signal: Option<String>,
        delay_s: f64,
    },
    Stopping {
        request: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<StopReason>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    JobFinished(&'a JobRecord),
    #[serde(rename = "sweep_finished")]
    RunFinished {
        jobs: Option<u64>,
        finished: u64,
        succeeded: u64,
        failed: u64,
        not_started: Option<u64>,
        duration_s: f64,
        sweep_dir: Option<Cow<'a, str>>,
        interrupted_by: Option<String>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize)]
struct Resumed {
    already_succeeded: u64,
    jobs: u64,
}

impl Event {
    fn wire(&self) -> Wire<'_> {
        match self {
            Event::RunStarted(info) => Wire::RunStarted {
                jobs: info.total,
                sweep_dir: info.dir.as_ref().map(|d| d.to_string_lossy()),
                launcher: &info.label,
                n_jobs: info.n_jobs,
                backend: &info.backend,
                resumed: info.resumed.map(|(already_succeeded, jobs)| Resumed { already_succeeded, jobs }),
            },
            Event::Queued { num } => Wire::JobQueued { num: *num },
            Event::Started { num, pid, slot, at, attempt, queued } => Wire::JobStarted {
                num: *num,
                pid: *pid,
                slot: *slot,
                time: at.to_rfc3339(),
                attempt: *attempt,
                queued: *queued,
            },
            Event::Running { num, at } => Wire::JobRunning { num: *num, time: at.to_rfc3339() },
            Event::Output { num, stream, line, complete } => {
                Wire::Output { num: *num, stream: *stream, line: String::from_utf8_lossy(line), complete: *complete }
            }
            Event::Retrying { num, attempt, outcome, delay } => Wire::JobRetrying {
                num: *num,
                attempt: *attempt,
                status: outcome.job_status(),
                exit_code: outcome.exit_code(),
                signal: outcome.signal().map(signal_name),
                delay_s: delay.as_secs_f64(),
            },
            Event::Stopping { request } => {
                let (request, reason, signal) = match request {
                    Stop::None => ("none", None, None),
                    Stop::Drain => ("drain", None, None),
                    Stop::Graceful { reason, signal } => ("graceful", Some(*reason), Some(signal_name(*signal))),
                    Stop::Immediate => ("immediate", None, None),
                };
                Wire::Stopping { request, reason, signal }
            }
            Event::Finished(record) => Wire::JobFinished(record),
            Event::RunFinished { finished, succeeded, failed, total, dir, interrupted_by, duration, .. } => {
                Wire::RunFinished {
                    jobs: *total,
                    finished: *finished,
                    succeeded: *succeeded,
                    failed: *failed,
                    not_started: total.map(|t| t.saturating_sub(*finished)),
                    duration_s: (duration.as_secs_f64() * 1e3).round() / 1e3,
                    sweep_dir: dir.as_ref().map(|d| d.to_string_lossy()),
                    interrupted_by: interrupted_by.map(signal_name),
                }
            }
        }
    }

    /// The event as one JSON object (the schema the README documents).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.wire().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_its_name_and_a_finished_job_is_its_journal_line() {
        let now = Utc::now();
        let record = JobRecord::unstarted(2, "app_2".into(), 0, now, Outcome::Failed { code: 3 });
        let mut finished = serde_json::to_value(record.journal_line()).unwrap();
        finished.as_object_mut().unwrap().insert("event".into(), "job_finished".into());
        assert_eq!(Event::Finished(Box::new(record)).to_json(), finished);
        let started = Event::Started { num: 1, pid: Some(42), slot: 1, at: now, attempt: 2, queued: false }.to_json();
        assert_eq!(
            started,
            serde_json::json!({"event": "job_started", "num": 1, "pid": 42, "slot": 1, "time": now.to_rfc3339(), "attempt": 2})
        );
        let queued = Event::Started { num: 1, pid: None, slot: 1, at: now, attempt: 1, queued: true }.to_json();
        assert_eq!(queued["queued"], true);
        let running = Event::Running { num: 1, at: now }.to_json();
        assert_eq!(running, serde_json::json!({"event": "job_running", "num": 1, "time": now.to_rfc3339()}));
        let retry = Event::Retrying {
            num: 1,
            attempt: 1,
            outcome: Outcome::Signaled { signal: 9, core_dumped: false },
            delay: Duration::from_millis(1500),
        };
        assert_eq!(
            retry.to_json(),
            serde_json::json!({"event": "job_retrying", "num": 1, "attempt": 1, "status": "signaled", "exit_code": null, "signal": "SIGKILL", "delay_s": 1.5})
        );
        let stop = Event::Stopping { request: Stop::Graceful { reason: StopReason::Interrupted, signal: 2 } };
        assert_eq!(
            stop.to_json(),
            serde_json::json!({"event": "stopping", "request": "graceful", "reason": "interrupted", "signal": "SIGINT"})
        );
        let mut info = RunInfo::new("Joblib.Parallel(n_jobs=2)");
        info.total = Some(5);
        info.resumed = Some((3, 5));
        let v = Event::RunStarted(Box::new(info)).to_json();
        assert_eq!(v["event"], "sweep_started");
        assert_eq!(v["resumed"], serde_json::json!({"already_succeeded": 3, "jobs": 5}));
        let end = Event::RunFinished {
            finished: 4,
            succeeded: 3,
            failed: 1,
            total: Some(5),
            dir: Some("multirun/x".into()),
            stop: Stop::Graceful { reason: StopReason::Interrupted, signal: 2 },
            interrupted_by: Some(2),
            duration: Duration::from_millis(1234),
        };
        assert_eq!(
            end.to_json(),
            serde_json::json!({"event": "sweep_finished", "jobs": 5, "finished": 4, "succeeded": 3, "failed": 1, "not_started": 1, "duration_s": 1.234, "sweep_dir": "multirun/x", "interrupted_by": "SIGINT"})
        );
        let out = Event::Output { num: 0, stream: Stream::Stderr, line: b"hi".to_vec(), complete: true };
        assert_eq!(
            out.to_json(),
            serde_json::json!({"event": "output", "num": 0, "stream": "stderr", "line": "hi", "complete": true})
        );
    }
}
