//! What a job started by orchestrator can read about itself.
//!
//! orchestrator passes a job's context through `ORCHESTRATOR_*` environment variables and
//! its overrides as `key=value` arguments (Hydra style). [`JobContext::from_env`] reads the
//! former; [`overrides_from_args`] parses the latter, so an app works both under
//! orchestrator and when run by hand. [`open_arg`] and [`open_arg_mut`] give an argument's
//! bytes whether it came inline (`key=value`) or as a file (`key=@path`, a value spilled
//! to `temp_folder`), memory-mapped with the sweep's `mmap_mode`.
#![deny(missing_docs)]

/// The names of the environment variables orchestrator sets for every job: the child
/// contract, shared by the supervisor (which sets them) and this crate (which reads them).
pub mod env {
    /// Job number, 0..N-1.
    pub const JOB_NUM: &str = "ORCHESTRATOR_JOB_NUM";
    /// `<name>_<num>`.
    pub const JOB_ID: &str = "ORCHESTRATOR_JOB_ID";
    /// The job name.
    pub const JOB_NAME: &str = "ORCHESTRATOR_JOB_NAME";
    /// Absolute path of the job dir.
    pub const JOB_DIR: &str = "ORCHESTRATOR_JOB_DIR";
    /// Absolute path of the sweep dir.
    pub const SWEEP_DIR: &str = "ORCHESTRATOR_SWEEP_DIR";
    /// Absolute path of the job's `.hydra/config.yaml`.
    pub const CONFIG: &str = "ORCHESTRATOR_CONFIG";
    /// The job's overrides as a JSON object.
    pub const OVERRIDES: &str = "ORCHESTRATOR_OVERRIDES";
    /// Slot number, 0..n_jobs-1.
    pub const SLOT: &str = "ORCHESTRATOR_SLOT";
    /// The resolved `n_jobs`.
    pub const N_JOBS: &str = "ORCHESTRATOR_N_JOBS";
    /// The arguments passed as files, a JSON object by key.
    pub const ARGS: &str = "ORCHESTRATOR_ARGS";
    /// The supervisor's private marker, to find a job's escaped descendants.
    pub const JOB_KEY: &str = "ORCHESTRATOR_JOB_KEY";
    /// Which attempt of the job this is (1 for the first; set when retries are on).
    pub const ATTEMPT: &str = "ORCHESTRATOR_ATTEMPT";
}

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

/// The job's identity and where its files are. Fields are `None` outside orchestrator.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct JobContext {
    /// Job number in the sweep (0..N-1).
    pub num: Option<u64>,
    /// Job id (`<name>_<num>`).
    pub id: Option<String>,
    /// The job's directory.
    pub dir: Option<PathBuf>,
    /// The sweep's directory.
    pub sweep_dir: Option<PathBuf>,
    /// The slot the job runs in (0..n_jobs-1): use it to pick a GPU or a port.
    pub slot: Option<usize>,
    /// Path of the job's composed config (`.hydra/config.yaml`).
    pub config: Option<PathBuf>,
    /// The job's overrides as a JSON object text (`{"task": 1}`).
    pub overrides_json: Option<String>,
}

impl JobContext {
    /// Read the context from this process's environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok();
        JobContext {
            num: var(env::JOB_NUM).and_then(|v| v.parse().ok()),
            id: var(env::JOB_ID),
            dir: var(env::JOB_DIR).map(PathBuf::from),
            sweep_dir: var(env::SWEEP_DIR).map(PathBuf::from),
            slot: var(env::SLOT).and_then(|v| v.parse().ok()),
            config: var(env::CONFIG).map(PathBuf::from),
            overrides_json: var(env::OVERRIDES),
        }
    }

    /// Whether this process was started by orchestrator.
    pub fn is_orchestrated(&self) -> bool {
        self.num.is_some()
    }
}

/// `key=value` arguments as pairs, in order; other arguments are skipped. A leading `+`,
/// `++` is dropped from the key, as the override only says how the key was added; a delete
/// (`~key=null`) is skipped. Values are the text Hydra's sweeper writes: `True`/`False` for
/// booleans, `1e-05` for small floats.
pub fn overrides_from_args<I: IntoIterator<Item = String>>(args: I) -> Vec<(String, String)> {
    args.into_iter()
        .filter_map(|a| {
            let (k, v) = a.split_once('=')?;
            let k = k.trim_start_matches('+');
            (!k.is_empty() && !k.starts_with('-') && !k.starts_with('~')).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// How an argument file is mapped (`mmap_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapMode {
    /// `r`: read-only, shared.
    ReadOnly,
    /// `r+` (and `w+`): read-write, shared: writes reach the file, other jobs and the supervisor.
    ReadWrite,
    /// `c`: copy-on-write: writes stay in this process.
    CopyOnWrite,
    /// null: a plain file, read into memory.
    Plain,
}

impl MapMode {
    fn parse(s: Option<&str>) -> MapMode {
        match s {
            Some("r") => MapMode::ReadOnly,
            Some("r+") | Some("w+") => MapMode::ReadWrite,
            Some("c") => MapMode::CopyOnWrite,
            _ => MapMode::Plain,
        }
    }
}

/// One entry of `ORCHESTRATOR_ARGS`: an argument passed as a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgFile {
    /// The file.
    pub path: PathBuf,
    /// How to map it.
    pub mode: MapMode,
    /// Its size.
    pub size: u64,
    /// Whether it is the one file shared by every job using the value.
    pub shared: bool,
}

/// The arguments this job received as files, by key (from `ORCHESTRATOR_ARGS`).
pub fn arg_files() -> HashMap<String, ArgFile> {
    let Some(text) = std::env::var_os(env::ARGS) else { return HashMap::new() };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&text.to_string_lossy()) else {
        return HashMap::new();
    };
    map.into_iter()
        .filter_map(|(k, v)| {
            let path = PathBuf::from(v.get("path")?.as_str()?);
            let mode = MapMode::parse(v.get("mode").and_then(|m| m.as_str()));
            let size = v.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
            let shared = v.get("shared").and_then(|s| s.as_bool()).unwrap_or(false);
            Some((k, ArgFile { path, mode, size, shared }))
        })
        .collect()
}

/// An argument's bytes, read-only.
#[derive(Debug)]
#[non_exhaustive]
pub enum ArgBytes {
    /// Passed inline in argv.
    Inline(Vec<u8>),
    /// A file read into memory (`mmap_mode: null`).
    Read(Vec<u8>),
    /// A file mapped read-only.
    Mapped(memmap2::Mmap),
}

impl Deref for ArgBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ArgBytes::Inline(v) | ArgBytes::Read(v) => v,
            ArgBytes::Mapped(m) => m,
        }
    }
}

/// An argument's bytes, writable: shared with the file (`r+`) or private (`c`, inline).
#[derive(Debug)]
#[non_exhaustive]
pub enum ArgBytesMut {
    /// An owned copy (inline values, plain files): writes stay here.
    Owned(Vec<u8>),
    /// A mapping; for `r+` call [`ArgBytesMut::flush`] to push writes to the file.
    Mapped(memmap2::MmapMut),
}

impl ArgBytesMut {
    /// Push writes to the file (`r+`); a no-op for private copies.
    pub fn flush(&self) -> io::Result<()> {
        match self {
            ArgBytesMut::Mapped(m) => m.flush(),
            ArgBytesMut::Owned(_) => Ok(()),
        }
    }
}

impl Deref for ArgBytesMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ArgBytesMut::Owned(v) => v,
            ArgBytesMut::Mapped(m) => m,
        }
    }
}

impl DerefMut for ArgBytesMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            ArgBytesMut::Owned(v) => v,
            ArgBytesMut::Mapped(m) => m,
        }
    }
}

fn inline_arg(key: &str) -> Option<String> {
    overrides_from_args(std::env::args().skip(1)).into_iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn not_found(key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no argument `{key}` (neither in ORCHESTRATOR_ARGS nor as `{key}=...` in argv)"),
    )
}

/// Open argument `key` read-only: mapped if it came as a file, else its inline text.
pub fn open_arg(key: &str) -> io::Result<ArgBytes> {
    if let Some(f) = arg_files().remove(key) {
        return open_file(&f.path, f.mode);
    }
    match inline_arg(key) {
        // `key=@path` given by hand: a file, mapped read-only.
        Some(v) if v.len() > 1 && v.starts_with('@') => open_file(std::path::Path::new(&v[1..]), MapMode::ReadOnly),
        Some(v) => Ok(ArgBytes::Inline(v.into_bytes())),
        None => Err(not_found(key)),
    }
}

fn open_file(path: &std::path::Path, mode: MapMode) -> io::Result<ArgBytes> {
    if mode == MapMode::Plain {
        return std::fs::read(path).map(ArgBytes::Read);
    }
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(ArgBytes::Read(Vec::new()));
    }
    // SAFETY: the supervisor never truncates a spill file while jobs run; a file changed
    // under the map by another job (`r+`) changes the bytes seen, which is that mode's point.
    unsafe { memmap2::Mmap::map(&file) }.map(ArgBytes::Mapped)
}

/// Open argument `key` writable: `r+` maps the file shared (writes reach it), `c` maps it
/// copy-on-write; `r` refuses with `PermissionDenied`. Inline values and plain files give an
/// owned copy.
pub fn open_arg_mut(key: &str) -> io::Result<ArgBytesMut> {
    let Some(f) = arg_files().remove(key) else {
        return match inline_arg(key) {
            Some(v) => Ok(ArgBytesMut::Owned(v.into_bytes())),
            None => Err(not_found(key)),
        };
    };
    match f.mode {
        MapMode::ReadOnly => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("argument `{key}` is mapped read-only (mmap_mode: r); use r+ or c to write"),
        )),
        MapMode::Plain => std::fs::read(&f.path).map(ArgBytesMut::Owned),
        MapMode::ReadWrite => {
            let file = OpenOptions::new().read(true).write(true).open(&f.path)?;
            // SAFETY: shared mapping of a spill file that the supervisor keeps for the run.
            unsafe { memmap2::MmapMut::map_mut(&file) }.map(ArgBytesMut::Mapped)
        }
        MapMode::CopyOnWrite => {
            let file = File::open(&f.path)?;
            // SAFETY: a private mapping: our writes never reach the file.
            unsafe { memmap2::MmapOptions::new().map_copy(&file) }.map(ArgBytesMut::Mapped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hydra_style_args() {
        let got = overrides_from_args(["task=3", "--flag", "+extra=a=b", "plain", "~gone=null"].map(String::from));
        assert_eq!(got, vec![("task".into(), "3".into()), ("extra".into(), "a=b".into())]);
    }
}
