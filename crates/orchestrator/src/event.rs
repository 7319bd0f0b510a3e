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
    /// The job was handed a slot and is about to start.
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
    /// The job ended; its record is final.
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
