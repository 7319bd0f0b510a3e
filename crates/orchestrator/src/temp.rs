//! Where large arguments go: joblib's `temp_folder` resolution order.

use std::path::{Path, PathBuf};

/// joblib's `SYSTEM_SHARED_MEM_FS_MIN_SIZE`: `/dev/shm` is used only with more free space.
pub const SHM_MIN_FREE: u64 = 2_000_000_000;

/// The folder chosen and why, for `--verbose` and debug logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempFolder {
    /// The folder.
    pub path: PathBuf,
    /// Why this one.
    pub reason: String,
}

/// joblib's order: the configured folder, else `JOBLIB_TEMP_FOLDER`, else `/dev/shm` when it
/// is a writable directory with more than 2e9 bytes free, else the system temp dir (found as
/// Python's `tempfile.gettempdir()` finds it). A relative folder is taken from `base_dir`, so
/// that jobs running in their own dirs (`hydra.job.chdir`) get paths that still work.
pub fn resolve_temp_folder(configured: Option<&Path>, base_dir: &Path) -> TempFolder {
    let mut folder =
        resolve_with(configured, std::env::var_os("JOBLIB_TEMP_FOLDER").map(PathBuf::from), Path::new("/dev/shm"));
    if folder.path.is_relative() {
        folder.path = base_dir.join(&folder.path);
    }
    folder
}

/// A `temp_folder` that cannot hold spill files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "temp_folder {} ({reason}) cannot hold spill files: {why}\n  = help: set temp_folder (or JOBLIB_TEMP_FOLDER) to a writable directory, or None for /dev/shm or the system temp dir",
    path.display()
)]
#[non_exhaustive]
pub struct TempFolderError {
    /// The folder.
    pub path: PathBuf,
    /// Where it came from.
    pub reason: String,
    /// What is wrong with it.
    pub why: String,
}

impl TempFolder {
    /// Whether spill files can go here: a writable directory, or one that does not exist yet
    /// (it is made on the first spill, as joblib's `makedirs` does). Says why not, and where
    /// the folder came from.
    pub fn check(&self) -> Result<(), TempFolderError> {
        let why = match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => e.to_string(),
            Ok(m) if !m.is_dir() => "it is not a directory".to_string(),
            Ok(_) => match nix::unistd::access(&self.path, nix::unistd::AccessFlags::W_OK) {
                Ok(()) => return Ok(()),
                Err(e) => format!("it is not writable ({e})"),
            },
        };
        Err(TempFolderError { path: self.path.clone(), reason: self.reason.clone(), why })
    }
}

/// Python's `tempfile.gettempdir()`: the first of `TMPDIR`, `TEMP`, `TMP`, `/tmp`, `/var/tmp`,
/// `/usr/tmp` and the current dir that is a writable directory.
fn system_temp_dir() -> PathBuf {
    let env =
        ["TMPDIR", "TEMP", "TMP"].into_iter().filter_map(std::env::var_os).filter(|v| !v.is_empty()).map(PathBuf::from);
    let fixed = ["/tmp", "/var/tmp", "/usr/tmp"].into_iter().map(PathBuf::from);
    env.chain(fixed)
        .chain(std::env::current_dir().ok())
        .find(|d| writable_dir(d))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

fn resolve_with(configured: Option<&Path>, env: Option<PathBuf>, shm: &Path) -> TempFolder {
    if let Some(p) = configured {
        return TempFolder { path: p.to_path_buf(), reason: "temp_folder in the config".into() };
    }
    if let Some(p) = env.filter(|p| !p.as_os_str().is_empty()) {
        return TempFolder { path: p, reason: "JOBLIB_TEMP_FOLDER".into() };
    }
    match free_if_writable(shm) {
        Some(free) if free > SHM_MIN_FREE => TempFolder {
            path: shm.to_path_buf(),
            reason: format!("{} is writable with {free} bytes free", shm.display()),
        },
        Some(free) => TempFolder {
            path: system_temp_dir(),
            reason: format!("{} has only {free} bytes free (joblib wants more than {SHM_MIN_FREE})", shm.display()),
        },
        None => {
            TempFolder { path: system_temp_dir(), reason: format!("{} is not a writable directory", shm.display()) }
        }
    }
}

fn writable_dir(dir: &Path) -> bool {
    dir.is_dir() && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

fn free_if_writable(dir: &Path) -> Option<u64> {
    if !writable_dir(dir) {
        return None;
    }
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_config_then_env_then_shm_then_tmp() {
        let cfg = Path::new("/cfg");
        assert_eq!(resolve_with(Some(cfg), Some("/env".into()), Path::new("/dev/shm")).path, cfg);
        assert_eq!(resolve_with(None, Some("/env".into()), Path::new("/dev/shm")).path, Path::new("/env"));
        let missing = resolve_with(None, None, Path::new("/no/such/shm"));
        assert_eq!(missing.path, system_temp_dir());
        assert!(missing.reason.contains("not a writable directory"));
        let shm = resolve_with(None, None, Path::new("/dev/shm"));
        match free_if_writable(Path::new("/dev/shm")) {
            Some(free) if free > SHM_MIN_FREE => assert_eq!(shm.path, Path::new("/dev/shm")),
            _ => assert_eq!(shm.path, system_temp_dir()),
        }
    }
}
