//! A cgroup (v2) per slot, where the kernel lets us make one: every process a job starts,
//! daemons that left its process group and cleared their environment included, is in its
//! slot's cgroup until it exits. A job's end then means its cgroup is empty; what is left is
//! listed by `cgroup.procs` and ended with `cgroup.kill` (atomic: no fork race); `cpu.stat`
//! gives the CPU time of the whole tree.
//!
//! One cgroup per slot, not per job: a slot runs one job at a time and is emptied before its
//! next one, and making and removing a cgroup per job cost more than the rest of a tiny job's
//! bookkeeping. The job's process joins its slot's cgroup itself, before it runs the program
//! (it writes `0` to `cgroup.procs` as the first step of its set-up), so that everything it
//! forks is in it from the start.
//!
//! Where no cgroup can be made (not root and no delegated subtree, no cgroup2 mount), the
//! process-group and marker mechanism alone runs, and says so.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The run's cgroups: `<our cgroup>/orchestrator-<run key>/slot-<n>`.
pub(super) struct Cgroups {
    run_dir: PathBuf,
    slots: Mutex<HashMap<usize, Slot>>,
}

/// One slot's cgroup, and its CPU counters when its last job ended.
struct Slot {
    dir: PathBuf,
    procs: CString,
    cpu_usec: (u64, u64),
}

/// What a slot's cgroup gives a job at its start.
pub(super) struct Joined {
    /// The cgroup's directory.
    pub(super) dir: PathBuf,
    /// Its `cgroup.procs`, for the job's process to write `0` to.
    pub(super) procs: CString,
}

impl Cgroups {
    /// A cgroup for this run under ours, or why there can be none.
    pub(super) fn create(run_key: &str) -> Result<Cgroups, String> {
        if std::env::var_os("ORCHESTRATOR_CGROUPS").is_some_and(|v| v == "0") {
            return Err("turned off by ORCHESTRATOR_CGROUPS=0".into());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup2 filesystem is mounted")?;
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let own = own_cgroup(&own).ok_or("this process is in no cgroup2 cgroup")?;
        let parent = mount.join(own.trim_start_matches('/'));
        remove_stale(&parent);
        let run_dir = parent.join(format!("orchestrator-{run_key}"));
        std::fs::create_dir(&run_dir).map_err(|e| format!("cannot make {}: {e}", run_dir.display()))?;
        // A dir we may make but whose members we may not move is no use: check now, not
        // once per job.
        let procs = run_dir.join("cgroup.procs");
        if let Err(e) = nix::unistd::access(&procs, nix::unistd::AccessFlags::W_OK) {
            let _ = std::fs::remove_dir(&run_dir);
            return Err(format!("cannot move processes into {}: {e}", run_dir.display()));
        }
        Ok(Cgroups { run_dir, slots: Mutex::new(HashMap::new()) })
    }

    /// Where the run's cgroups are.
    pub(super) fn dir(&self) -> &Path {
        &self.run_dir
    }

    /// `slot`'s cgroup, made on its first job.
    pub(super) fn join(&self, slot: usize) -> io::Result<Joined> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get(&slot) {
            return Ok(Joined { dir: s.dir.clone(), procs: s.procs.clone() });
        }
        let dir = self.run_dir.join(format!("slot-{slot}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).map_err(io::Error::other)?;
        let cpu_usec = cpu_usec(&dir).unwrap_or((0, 0));
        slots.insert(slot, Slot { dir: dir.clone(), procs: procs.clone(), cpu_usec });
        Ok(Joined { dir, procs })
    }

    /// The CPU time (user, system) the slot's cgroup used since its previous job ended:
    /// this job's, its whole tree's. Call once the cgroup is empty.
    pub(super) fn job_cpu(&self, slot: usize) -> Option<(f64, f64)> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let s = slots.get_mut(&slot)?;
        let now = cpu_usec(&s.dir)?;
        let used = (now.0.saturating_sub(s.cpu_usec.0), now.1.saturating_sub(s.cpu_usec.1));
        s.cpu_usec = now;
        Some((used.0 as f64 / 1e6, used.1 as f64 / 1e6))
    }

    /// A cgroup that could not be emptied is not used again: its slot gets a new one.
    pub(super) fn retire(&self, slot: usize) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.remove(&slot) {
            let mut name = s.dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            name.push(format!("-stuck-{}", std::process::id()));
            let _ = std::fs::rename(&s.dir, s.dir.with_file_name(name));
        }
    }
}

impl Drop for Cgroups {
    /// Every job has ended: what is left in the run's cgroups is killed, and they go.
    fn drop(&mut self) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for s in slots.values() {
            if !members(&s.dir).is_empty() {
                kill(&s.dir);
            }
        }
        // A dir goes once its last member has exited; try a moment for stragglers.
        for _ in 0..50 {
            let mut left = false;
            if let Ok(entries) = std::fs::read_dir(&self.run_dir) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    left |= std::fs::remove_dir(e.path()).is_err();
                }
            }
            if !left && std::fs::remove_dir(&self.run_dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        tracing::warn!("cannot remove the cgroup {}", self.run_dir.display());
    }
}

/// Kill everything in the run's cgroups under `run_dir` (the watchdog's last resort).
pub(super) fn kill_tree(run_dir: &Path) {
    for slot in std::fs::read_dir(run_dir).into_iter().flatten().flatten().filter(|e| e.path().is_dir()) {
        kill(&slot.path());
    }
}

/// Remove the run's cgroups under `run_dir` once they are empty (tries for about a second).
pub(super) fn remove_tree(run_dir: &Path) {
    for _ in 0..100 {
        let mut left = false;
        for slot in std::fs::read_dir(run_dir).into_iter().flatten().flatten().filter(|e| e.path().is_dir()) {
            left |= std::fs::remove_dir(slot.path()).is_err();
        }
        if !left && std::fs::remove_dir(run_dir).is_ok() || !run_dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Runs' cgroups left by supervisors that are gone (killed with SIGKILL before their watchdog
/// could remove them): what is in them is killed, and they are removed. A run's dir is named
/// `orchestrator-<pid>-<time>`; one whose pid is alive is left alone.
fn remove_stale(parent: &Path) {
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) =
            name.to_str().and_then(|n| n.strip_prefix("orchestrator-")?.split('-').next()?.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH);
        if gone {
            kill_tree(&entry.path());
            remove_tree(&entry.path());
        }
    }
}

/// The processes in the cgroup at `dir`.
pub(super) fn members(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILL every process in the cgroup at `dir` at once (`cgroup.kill`, Linux 5.14); on an
/// older kernel, each member in turn.
pub(super) fn kill(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), b"1").is_err() {
        for pid in members(dir) {
            super::sys::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// `usage` of `cpu.stat`: (user, system) microseconds.
fn cpu_usec(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let field =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok());
    Some((field("user_usec")?, field("system_usec")?))
}

/// The mount point of the cgroup2 filesystem, from `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// Our cgroup2 path, from `/proc/self/cgroup` (its `0::/path` line).
fn own_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_and_our_path_are_read_from_proc() {
        // A hybrid layout, as on the CI machines: v1 controllers beside a v2 `unified`.
        let mountinfo = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(mountinfo), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
        assert_eq!(own_cgroup("4:memory:/x\n0::/user.slice/a.scope\n"), Some("/user.slice/a.scope"));
    }
}
