//! `jobs.jsonl`: one JSON line per finished job, appended and flushed per record.
//!
//! Each record is written with one `write` on an `O_APPEND` descriptor, so a supervisor
//! killed at any point leaves at most its last line partial, and concurrent jobs never
//! interleave inside a line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::job::{AttemptRecord, JobRecord, JobStatus};

/// One line of `jobs.jsonl`: a finished job's record, written from a [`JobRecord`] (borrowing
/// it) and read back (owning its text) by `--resume` and `status`. Field names are the
/// README's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JournalLine<'a> {
    /// Job number.
    pub num: u64,
    /// Job id.
    pub id: Cow<'a, str>,
    /// How it ended.
    pub status: JobStatus,
    /// Its overrides as Hydra shows them.
    pub overrides: Cow<'a, [String]>,
    /// Exit code, if its process exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, by name (`SIGKILL`).
    pub signal: Option<String>,
    /// Whether it ran past its timeout.
    pub timed_out: bool,
    /// Why it could not start, or was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'a, str>>,
    /// Its leader's process id, where it ran as a local process.
    pub pid: Option<u32>,
    /// The slot it ran in.
    pub slot: usize,
    /// When it started (RFC 3339, UTC).
    pub start: String,
    /// When it ended.
    pub end: String,
    /// Wall time, seconds.
    pub duration_s: f64,
    /// User CPU seconds.
    pub cpu_user_s: f64,
    /// System CPU seconds.
    pub cpu_sys_s: f64,
    /// Peak RSS, KiB.
    pub max_rss_kib: u64,
    /// The whole tree's peak memory, KiB (absent where no memory cgroup measured it: without `mem_gb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_peak_kib: Option<u64>,
    /// Bytes it wrote to stdout.
    pub stdout_bytes: u64,
    /// Bytes it wrote to stderr.
    pub stderr_bytes: u64,
    /// Processes it left behind that the supervisor ended.
    pub leftover_processes: u32,
    /// Its log.
    pub log: Cow<'a, str>,
    /// Its directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Cow<'a, str>>,
    /// How many attempts it had (0: none ran; written by versions before retries as absent,
    /// read as 1).
    #[serde(default = "one")]
    pub attempts: u32,
    /// How each attempt before the last ended.
    #[serde(default, skip_serializing_if = "no_attempts")]
    pub earlier_attempts: Cow<'a, [AttemptRecord]>,
    /// How its processes were kept together: `cgroup` or `process-group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Cow<'a, str>>,
    /// The cluster node it ran on (absent for local jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Cow<'a, str>>,
    /// Its last attempt was forked from a warm Python interpreter (absent: started fresh).
    #[serde(default, skip_serializing_if = "is_false")]
    pub warm: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

// serde hands skip_serializing_if the field itself.
#[allow(clippy::ptr_arg)]
fn no_attempts(a: &Cow<'_, [AttemptRecord]>) -> bool {
    a.is_empty()
}

fn one() -> u32 {
    1
}

/// A journal line read back from a file.
pub type JournalRecord = JournalLine<'static>;

/// An append-only job journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// Open (creating if needed) the journal at `path` for appending. A last line left
    /// partial by a supervisor that was killed mid-write is ended first, so that the next
    /// record starts a line of its own instead of being glued to it.
    pub fn open(path: &Path) -> io::Result<Journal> {
        use std::os::unix::fs::FileExt;
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        let mut last = [0u8; 1];
        if len > 0 && file.read_at(&mut last, len - 1)? == 1 && last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
        Ok(Journal { path: path.to_path_buf(), file: Mutex::new(file) })
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record as one line.
    pub fn append(&self, record: &JobRecord) -> io::Result<()> {
        let mut line = record.to_json().into_bytes();
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)
    }

    /// Push the journal to the disk (called once at the end; per-record writes already
    /// survive a supervisor crash, as they are in the kernel's page cache).
    pub fn sync(&self) -> io::Result<()> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).sync_data()
    }
}

/// Read a journal, skipping lines that are not records (a line torn by a supervisor killed
/// mid-write).
pub fn read_journal(path: &Path) -> io::Result<Vec<JournalRecord>> {
    let text = std::fs::read(path)?;
    Ok(text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<JournalLine<'_>>(l).ok().map(JournalLine::into_owned))
        .collect())
}

impl JournalLine<'_> {
    /// The line owning its text.
    pub fn into_owned(self) -> JournalRecord {
        JournalLine {
            id: Cow::Owned(self.id.into_owned()),
            overrides: Cow::Owned(self.overrides.into_owned()),
            error: self.error.map(|e| Cow::Owned(e.into_owned())),
            log: Cow::Owned(self.log.into_owned()),
            dir: self.dir.map(|d| Cow::Owned(d.into_owned())),
            earlier_attempts: Cow::Owned(self.earlier_attempts.into_owned()),
            isolation: self.isolation.map(|i| Cow::Owned(i.into_owned())),
            node: self.node.map(|n| Cow::Owned(n.into_owned())),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_after_a_torn_line_starts_a_line_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.jsonl");
        let record = |n: u64| {
            JobRecord::unstarted(n, format!("app_{n}"), 0, chrono::Utc::now(), crate::Outcome::Failed { code: 1 })
        };
        let first = record(0).to_json();
        // A whole record, then one cut short by a kill.
        std::fs::write(&path, format!("{first}\n{}", &first[..40])).unwrap();
        let journal = Journal::open(&path).unwrap();
        journal.append(&record(1)).unwrap();
        let nums: Vec<u64> = read_journal(&path).unwrap().iter().map(|r| r.num).collect();
        assert_eq!(nums, [0, 1]);
        // A journal that ends with a whole line gets nothing added.
        drop(journal);
        let before = std::fs::read(&path).unwrap();
        Journal::open(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_line_reads_back_as_it_was_written() {
        let mut r = JobRecord::unstarted(3, "app_3".into(), 1, chrono::Utc::now(), crate::Outcome::Failed { code: 2 });
        r.overrides = vec!["task=3".into()];
        r.attempts = 2;
        r.earlier_attempts = vec![AttemptRecord::new(
            1,
            &crate::Outcome::TimedOut { limit: std::time::Duration::from_secs(1), code: None, signal: Some(15) },
            chrono::Utc::now(),
            std::time::Duration::from_millis(1500),
        )];
        let text = r.to_json();
        let back: JournalLine<'_> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r.journal_line());
        assert_eq!(back.status, JobStatus::Failed);
        assert_eq!(back.earlier_attempts[0].status, JobStatus::TimedOut);
        assert_eq!(back.earlier_attempts[0].signal.as_deref(), Some("SIGTERM"));
        // A line of a version before retries: one attempt.
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().retain(|k, _| k != "attempts" && k != "earlier_attempts");
        let back: JournalLine<'_> = serde_json::from_value(old).unwrap();
        assert_eq!((back.attempts, back.earlier_attempts.len()), (1, 0));
    }
}
