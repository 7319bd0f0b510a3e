//! Events the runner produces; reporters (console, JSON, services) consume them.

use chrono::{DateTime, Utc};

use crate::job::{JobRecord, Stream};

/// Something that happened to a job.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The job was accepted and waits for a slot.
    Queued {
        /// Job number.
        num: u64,
    },
    /// The job's process exists, in its slot. Whether it could run its program (its exec
    /// can still fail: missing, not executable, no such working directory) is told by the
    /// outcome in [`Event::Finished`] (`SpawnFailed`).
    Started {
        /// Job number.
        num: u64,
        /// Process id of its leader.
        pid: u32,
        /// Slot (0..n_jobs-1).
        slot: usize,
        /// When.
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
    /// The job ended; its record is final. Its slot is handed back as soon as its last
    /// process is gone (the record's `end`), before its log and journal line are written, so
    /// the next job's [`Event::Started`] in the same slot can come before this event.
    Finished(Box<JobRecord>),
    /// The run ended: every started job has finished.
    RunFinished {
        /// Jobs that ended.
        finished: u64,
        /// Of which succeeded.
        succeeded: u64,
        /// Of which did not.
        failed: u64,
    },
}

impl Event {
    /// The event as one JSON object, as `orchestrator run --json` prints it (field names are
    /// documented in the README): `job_queued`, `job_started`, `output`, and `job_finished`
    /// with the journal record's fields. `None` for [`Event::RunFinished`], which callers
    /// report with their own totals.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        use serde_json::json;
        Some(match self {
            Event::Queued { num } => json!({"event": "job_queued", "num": num}),
            Event::Started { num, pid, slot, at } => {
                json!({"event": "job_started", "num": num, "pid": pid, "slot": slot, "time": at.to_rfc3339()})
            }
            Event::Output { num, stream, line, complete } => json!({
                "event": "output", "num": num, "stream": stream.name(),
                "line": String::from_utf8_lossy(line), "complete": complete,
            }),
            Event::Finished(rec) => {
                let mut v = rec.to_value();
                if let Some(m) = v.as_object_mut() {
                    m.insert("event".into(), json!("job_finished"));
                }
                v
            }
            Event::RunFinished { .. } => return None,
        })
    }
}
