//! What a sweep dir records about how its sweep was started (`.orchestrator-sweep.json`, a hidden file beside `multirun.yaml`):
//! enough to resume it with nothing else (`orchestrator resume DIR`), and to tell its
//! progress (`orchestrator status DIR`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where in a sweep dir the record is.
pub const RECORD_FILE: &str = ".orchestrator-sweep.json";

/// How a sweep was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SweepRecord {
    /// The record's format.
    pub version: u32,
    /// The config as it was read (`None`: joblib's defaults, no config).
    pub config: Option<RecordedConfig>,
    /// The overrides as typed.
    pub overrides: Vec<String>,
    /// The app command: program, then arguments.
    pub app: Vec<String>,
    /// The directory relative paths were taken from.
    pub base_dir: PathBuf,
    /// How many jobs the sweep has.
    pub jobs: u64,
    /// Jobs at once.
    pub n_jobs: usize,
}

/// A config file's name and its text, as read when the sweep started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RecordedConfig {
    /// The path it was read from.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

impl SweepRecord {
    /// Write it into the sweep dir `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let path = dir.join(RECORD_FILE);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    /// The record of the sweep in `dir`; `None` if there is none (a sweep of an earlier
    /// version, or not a sweep dir).
    pub fn read(dir: &Path) -> std::io::Result<Option<SweepRecord>> {
        match std::fs::read_to_string(dir.join(RECORD_FILE)) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
