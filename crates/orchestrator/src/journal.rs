//! `jobs.jsonl`: one JSON line per finished job, appended and flushed per record.
//!
//! Each record is written with one `write` on an `O_APPEND` descriptor, so a supervisor
//! killed at any point leaves at most its last line partial, and concurrent jobs never
//! interleave inside a line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::job::JobRecord;

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
/// mid-write); returns the parsed records as JSON values.
pub fn read_journal(path: &Path) -> io::Result<Vec<serde_json::Value>> {
    let text = std::fs::read(path)?;
    Ok(text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).filter_map(|l| serde_json::from_slice(l).ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_after_a_torn_line_starts_a_line_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.jsonl");
        let first = JobRecord::new(0, "app_0".into(), 0, chrono::Utc::now()).to_json();
        // A whole record, then one cut short by a kill.
        std::fs::write(&path, format!("{first}\n{}", &first[..40])).unwrap();
        let journal = Journal::open(&path).unwrap();
        journal.append(&JobRecord::new(1, "app_1".into(), 1, chrono::Utc::now())).unwrap();
        let nums: Vec<u64> = read_journal(&path).unwrap().iter().filter_map(|r| r["num"].as_u64()).collect();
        assert_eq!(nums, [0, 1]);
        // A journal that ends with a whole line gets nothing added.
        drop(journal);
        let before = std::fs::read(&path).unwrap();
        Journal::open(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
