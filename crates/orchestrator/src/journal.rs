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
    /// Open (creating if needed) the journal at `path` for appending.
    pub fn open(path: &Path) -> io::Result<Journal> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
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

/// Read a journal, skipping a torn last line; returns the parsed records as JSON values.
pub fn read_journal(path: &Path) -> io::Result<Vec<serde_json::Value>> {
    let text = std::fs::read(path)?;
    Ok(text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).filter_map(|l| serde_json::from_slice(l).ok()).collect())
}
