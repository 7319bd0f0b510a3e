//! Large arguments, spilled once into `temp_folder` and shared by every job that uses them.
//!
//! A value larger than `max_nbytes` is written once into a sweep-private directory
//! (`orchestrator-spill-<pid>-<start>`, mode 0700) under `temp_folder`, named by its blake3
//! hash, so N jobs that share a value share one file and one set of page-cache pages.
//! Files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` (a planted symlink is never
//! followed: `/dev/shm` is world-writable), read-only (0400) for `mmap_mode: r`, 0600 otherwise.
//! The directory is removed when the store is dropped (normal end, Ctrl-C, SIGTERM, a panic
//! that unwinds); a directory left by a supervisor killed with SIGKILL is removed by the next
//! store created in the same folder, once its owner process is gone.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use orchestrator_config::MmapMode;

const PREFIX: &str = "orchestrator-spill-";

/// Why a value could not be spilled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpillError {
    /// Not enough room in the folder for the value.
    #[error("not enough space in temp_folder {folder}: {needed} bytes needed, {free} free")]
    NoSpace {
        /// The folder.
        folder: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// Two payloads of one job have the same name: `ORCHESTRATOR_ARGS` maps names to files,
    /// so one of them would never reach the job.
    #[error("two payloads are named {0:?}: each payload of a job needs a name of its own")]
    DuplicateName(String),
    /// Reading the source or writing the spill file failed.
    #[error("cannot spill to {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpillError + '_ {
    move |source| SpillError::Io { path: path.to_path_buf(), source }
}

/// The name a value gets in the store: its blake3 hash, in hex.
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A value in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spilled {
    /// Where it is.
    pub path: PathBuf,
    /// Its blake3 hash (hex), also its file name.
    pub hash: String,
    /// Its size in bytes.
    pub size: u64,
}

#[derive(Debug)]
struct Entry {
    spilled: Spilled,
    /// Jobs holding it; at zero the file is removed unless pinned.
    refs: usize,
    /// Kept until the store ends (sweep-wide values, and `r+` values that are read back).
    pinned: bool,
}

/// The sweep-private spill directory and what is in it.
#[derive(Debug)]
pub struct SpillStore {
    dir: PathBuf,
    mode: Option<MmapMode>,
    entries: Mutex<HashMap<String, Entry>>,
}

impl SpillStore {
    /// Create a fresh private directory under `folder`, after removing stale ones whose
    /// owner process is gone.
    pub fn create(folder: &Path, mode: Option<MmapMode>) -> Result<SpillStore, SpillError> {
        clean_stale(folder);
        let start =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        // A folder that does not exist yet is made, as joblib's `makedirs` does.
        std::fs::create_dir_all(folder).map_err(io_err(folder))?;
        let dir = folder.join(format!("{PREFIX}{}-{start}", std::process::id()));
        // mkdir never follows a symlink at the final component, and fails if anything exists.
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io_err(&dir))?;
        Ok(SpillStore { dir, mode, entries: Mutex::new(HashMap::new()) })
    }

    /// The private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mmap mode children should use.
    pub fn mode(&self) -> Option<MmapMode> {
        self.mode
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store `data` (once per distinct content) and take a reference to it.
    pub fn put_bytes(&self, data: &[u8], pinned: bool) -> Result<Spilled, SpillError> {
        let hash = content_hash(data);
        if let Some(s) = self.acquire(&hash, pinned) {
            return Ok(s);
        }
        self.check_space(data.len() as u64)?;
        // Numbered: another thread may be storing the same content right now.
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(".tmp-{n}"));
        let mut f = create_private(&tmp)?;
        f.write_all(data).map_err(self.write_err(&tmp, data.len() as u64)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        self.commit(f, &tmp, hash, data.len() as u64, pinned)
    }

    /// Store a snapshot of the file at `src`, streamed (never held in memory), and take a
    /// reference to it. Later edits of `src` do not change the snapshot.
    pub fn put_file(&self, src: &Path, pinned: bool) -> Result<Spilled, SpillError> {
        let mut input = File::open(src).map_err(|source| SpillError::Io { path: src.to_path_buf(), source })?;
        let size = input.metadata().map(|m| m.len()).unwrap_or(0);
        self.check_space(size)?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(".tmp-copy-{n}"));
        let mut out = create_private(&tmp)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        let copied: Result<(), SpillError> = (|| loop {
            let got = input.read(&mut buf).map_err(|source| SpillError::Io { path: src.to_path_buf(), source })?;
            if got == 0 {
                return Ok(());
            }
            hasher.update(&buf[..got]);
            out.write_all(&buf[..got]).map_err(self.write_err(&tmp, size))?;
            total += got as u64;
        })();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let hash = hasher.finalize().to_hex().to_string();
        if let Some(s) = self.acquire(&hash, pinned) {
            let _ = std::fs::remove_file(&tmp);
            return Ok(s);
        }
        self.commit(out, &tmp, hash, total, pinned)
    }

    fn acquire(&self, hash: &str, pinned: bool) -> Option<Spilled> {
        let mut entries = self.lock();
        let e = entries.get_mut(hash)?;
        e.refs += 1;
        e.pinned |= pinned;
        Some(e.spilled.clone())
    }

    fn commit(&self, file: File, tmp: &Path, hash: String, size: u64, pinned: bool) -> Result<Spilled, SpillError> {
        let perm = if self.mode == Some(MmapMode::R) { 0o400 } else { 0o600 };
        file.set_permissions(std::fs::Permissions::from_mode(perm)).map_err(io_err(tmp))?;
        drop(file);
        let path = self.dir.join(&hash);
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(&hash) {
            // Another thread stored the same content meanwhile.
            let _ = std::fs::remove_file(tmp);
            e.refs += 1;
            e.pinned |= pinned;
            return Ok(e.spilled.clone());
        }
        std::fs::rename(tmp, &path).map_err(io_err(&path))?;
        let spilled = Spilled { path, hash: hash.clone(), size };
        entries.insert(
            hash,
            Entry { spilled: spilled.clone(), refs: 1, pinned: pinned || self.mode == Some(MmapMode::RPlus) },
        );
        Ok(spilled)
    }

    /// Drop one reference; the file goes when none is left (unless it is pinned).
    pub fn release(&self, hash: &str) {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(hash) else { return };
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 && !e.pinned {
            let _ = std::fs::remove_file(&e.spilled.path);
            entries.remove(hash);
        }
    }

    /// Read a stored value back (e.g. what `r+` jobs wrote into it).
    pub fn read(&self, hash: &str) -> io::Result<Vec<u8>> {
        let path = self.lock().get(hash).map(|e| e.spilled.path.clone());
        match path {
            Some(p) => std::fs::read(p),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("no spilled value {hash}"))),
        }
    }

    fn check_space(&self, needed: u64) -> Result<(), SpillError> {
        let free = free_space(&self.dir).unwrap_or(u64::MAX);
        if needed > free {
            return Err(self.no_space(needed, free));
        }
        Ok(())
    }

    /// The error for running out of room: names temp_folder (not our private dir inside it).
    fn no_space(&self, needed: u64, free: u64) -> SpillError {
        SpillError::NoSpace { folder: self.dir.parent().unwrap_or(&self.dir).to_path_buf(), needed, free }
    }

    /// Maps a write error on `path`; ENOSPC (room taken meanwhile by someone else) is
    /// reported like the up-front check, with the size of the value being written.
    fn write_err<'a>(&'a self, path: &'a Path, needed: u64) -> impl FnOnce(io::Error) -> SpillError + 'a {
        move |source| {
            if source.raw_os_error() == Some(libc::ENOSPC) {
                return self.no_space(needed, free_space(&self.dir).unwrap_or(0));
            }
            SpillError::Io { path: path.to_path_buf(), source }
        }
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for SpillStore {
    fn drop(&mut self) {
        remove_tree(&self.dir);
    }
}

/// `O_CREAT | O_EXCL | O_NOFOLLOW`, 0600: never reuses or follows anything already there.
fn create_private(path: &Path) -> Result<File, SpillError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path))
}

fn free_space(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Remove a spill dir; its read-only files need their dir writable, which it is (0700).
fn remove_tree(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Remove `orchestrator-spill-<pid>-<start>` dirs of ours whose process is gone.
fn clean_stale(folder: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(folder) else { return };
    let me = crate::backend::local::sys::getuid();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        // symlink_metadata: a planted symlink is neither followed nor removed through.
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else { continue };
        if !meta.is_dir() || meta.uid() != me || pid as u32 == std::process::id() {
            continue;
        }
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            remove_tree(&e.path());
        }
    }
}

/// How a job receives one large argument (an entry of `ORCHESTRATOR_ARGS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgInfo {
    /// The file holding the value.
    pub path: PathBuf,
    /// How to map it: `r`, `r+`, `c`, or null (read it as a plain file).
    pub mode: Option<&'static str>,
    /// Its size in bytes.
    pub size: u64,
    /// `true` when the file is the shared spill (one file for every job using the value).
    pub shared: bool,
}

/// `mmap_mode` as children read it in `ORCHESTRATOR_ARGS`.
pub fn mode_name(m: Option<MmapMode>) -> Option<&'static str> {
    match m {
        Some(MmapMode::R) => Some("r"),
        Some(MmapMode::RPlus) => Some("r+"),
        Some(MmapMode::C) => Some("c"),
        _ => None,
    }
}

/// A key as a file name: `[A-Za-z0-9._-]` as is, any other byte as `%XX`, so that two keys
/// never share a name (`db@pkg` and `db_pkg` did when both became `db_pkg`).
pub fn sanitize(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // File names stop at 255 bytes: a long one keeps its start and a hash of the whole key.
    if out.len() > 200 {
        out.truncate(160);
        out.push('-');
        out.push_str(&blake3::hash(key.as_bytes()).to_hex()[..32]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_is_stored_once_and_removed_with_the_last_reference() {
        let folder = tempfile::tempdir().unwrap();
        let store = SpillStore::create(folder.path(), Some(MmapMode::R)).unwrap();
        let a = store.put_bytes(b"hello", false).unwrap();
        let b = store.put_bytes(b"hello", false).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::metadata(&a.path).unwrap().permissions().mode() & 0o777, 0o400);
        assert_eq!(std::fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777, 0o700);
        store.release(&a.hash);
        assert!(a.path.exists(), "one reference left");
        store.release(&a.hash);
        assert!(!a.path.exists());
        let dir = store.dir().to_path_buf();
        drop(store);
        assert!(!dir.exists());
    }

    #[test]
    fn threads_storing_the_same_content_at_once_share_one_file() {
        let folder = tempfile::tempdir().unwrap();
        let store = SpillStore::create(folder.path(), Some(MmapMode::R)).unwrap();
        let data = vec![7u8; 1 << 20];
        let stored: Vec<Spilled> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8).map(|_| s.spawn(|| store.put_bytes(&data, false).unwrap())).collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert!(stored.iter().all(|s| *s == stored[0]));
        let files: Vec<_> = std::fs::read_dir(store.dir()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        for s in &stored {
            store.release(&s.hash);
        }
        assert!(!stored[0].path.exists());
    }

    #[test]
    fn a_file_snapshot_is_streamed_and_deduplicated_with_bytes() {
        let folder = tempfile::tempdir().unwrap();
        let store = SpillStore::create(folder.path(), Some(MmapMode::RPlus)).unwrap();
        let src = folder.path().join("src.bin");
        std::fs::write(&src, vec![7u8; 3 << 20]).unwrap();
        let f = store.put_file(&src, true).unwrap();
        std::fs::write(&src, b"changed later").unwrap();
        assert_eq!(std::fs::read(&f.path).unwrap().len(), 3 << 20, "a snapshot");
        let b = store.put_bytes(&vec![7u8; 3 << 20], false).unwrap();
        assert_eq!(f.path, b.path);
        assert_eq!(std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn stale_dirs_of_dead_owners_are_removed_and_symlinks_left_alone() {
        let folder = tempfile::tempdir().unwrap();
        // pid 0x7fffffff does not exist.
        let stale = folder.path().join(format!("{PREFIX}2147483647-1"));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("x"), b"x").unwrap();
        let target = tempfile::tempdir().unwrap();
        let link = folder.path().join(format!("{PREFIX}2147483646-1"));
        std::os::unix::fs::symlink(target.path(), &link).unwrap();
        let _store = SpillStore::create(folder.path(), None).unwrap();
        assert!(!stale.exists());
        assert!(target.path().exists() && link.symlink_metadata().is_ok(), "a symlink is not followed");
    }

    #[test]
    fn a_planted_symlink_is_never_written_through() {
        let folder = tempfile::tempdir().unwrap();
        let store = SpillStore::create(folder.path(), None).unwrap();
        let victim = folder.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        // Links at every temporary name the next writes can take (other tests take some).
        let next = NEXT.load(std::sync::atomic::Ordering::Relaxed);
        for n in next..next + 1000 {
            std::os::unix::fs::symlink(&victim, store.dir().join(format!(".tmp-{n}"))).unwrap();
        }
        assert!(store.put_bytes(b"payload", false).is_err(), "O_EXCL|O_NOFOLLOW refuses the link");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn no_space_is_reported_before_writing() {
        let folder = tempfile::tempdir().unwrap();
        let store = SpillStore::create(folder.path(), None).unwrap();
        let err = store.check_space(u64::MAX).unwrap_err();
        assert!(err.to_string().contains("not enough space in temp_folder"), "{err}");
    }
}
