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
/// is a writable directory with more than 2e9 bytes free, else the system temp dir.
pub fn resolve_temp_folder(configured: Option<&Path>) -> TempFolder {
    resolve_with(configured, std::env::var_os("JOBLIB_TEMP_FOLDER").map(PathBuf::from), Path::new("/dev/shm"))
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
            path: std::env::temp_dir(),
            reason: format!("{} has only {free} bytes free (joblib wants more than {SHM_MIN_FREE})", shm.display()),
        },
        None => {
            TempFolder { path: std::env::temp_dir(), reason: format!("{} is not a writable directory", shm.display()) }
        }
    }
}

fn free_if_writable(dir: &Path) -> Option<u64> {
    if !dir.is_dir() || nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() {
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
        assert_eq!(missing.path, std::env::temp_dir());
        assert!(missing.reason.contains("not a writable directory"));
        let shm = resolve_with(None, None, Path::new("/dev/shm"));
        match free_if_writable(Path::new("/dev/shm")) {
            Some(free) if free > SHM_MIN_FREE => assert_eq!(shm.path, Path::new("/dev/shm")),
            _ => assert_eq!(shm.path, std::env::temp_dir()),
        }
    }
}
