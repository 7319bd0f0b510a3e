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
//!
//! Memory: with a per-job memory limit, and where the memory controller is a cgroup v1
//! hierarchy beside the v2 one (a hybrid layout, as on these machines), each slot also gets a
//! v1 `memory` cgroup, which the job joins the same way. Only with a limit: moving each job
//! into a second hierarchy and reading its counters cost 1.06-1.11x the CPU and 1.02-1.16x
//! the wall time of a sweep of `true` jobs here (`bench/ab.sh`, three runs), too much to pay
//! by default for the peak alone. It gives the whole tree's peak memory (`memory.max_usage_in_bytes`,
//! reset before each job), the per-job limit (`memory.limit_in_bytes`, and the same for
//! memory plus swap, so that a job over it is killed rather than swapped out) and the kernel's
//! OOM kills in it (`oom_kill` of `memory.oom_control`). Where the memory controller is in
//! the v2 hierarchy instead (a pure v2 system), it is not used yet: the limit is refused.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The run's cgroups: `<our cgroup>/orchestrator-<run key>/slot-<n>`.
pub(super) struct Cgroups {
    run_dir: PathBuf,
    /// The same layout in the v1 memory hierarchy, or why there is none.
    memory: Result<PathBuf, String>,
    /// Each job's memory limit (memory plus swap), bytes.
    memory_limit: Option<u64>,
    slots: Mutex<HashMap<usize, Slot>>,
}

/// One slot's cgroup, and its CPU counters when its last job ended.
struct Slot {
    dir: PathBuf,
    procs: CString,
    cpu_usec: (u64, u64),
    /// Its memory cgroup, and that one's `cgroup.procs`.
    memory: Option<(PathBuf, CString)>,
}

/// What a slot's cgroup gives a job at its start.
pub(super) struct Joined {
    /// The cgroup's directory.
    pub(super) dir: PathBuf,
    /// The `cgroup.procs` files for the job's process to write `0` to: the slot's, and its
    /// memory cgroup's if it has one.
    pub(super) procs: Vec<CString>,
    /// The slot's memory cgroup, with its peak reset for this job.
    pub(super) memory: Option<MemoryWatch>,
}

/// A job's memory cgroup, and the OOM kills in it before the job.
#[derive(Debug, Clone)]
pub(super) struct MemoryWatch {
    dir: PathBuf,
    oom_kills: u64,
}

impl MemoryWatch {
    /// Processes the kernel killed in the job's cgroup for memory since it started.
    pub(super) fn oom_kills(&self) -> u64 {
        oom_kills(&self.dir).unwrap_or(0).saturating_sub(self.oom_kills)
    }

    /// The whole tree's peak memory (RSS and page cache charged to it) in KiB, since the job
    /// started.
    pub(super) fn peak_kib(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.dir.join("memory.max_usage_in_bytes")).ok()?;
        text.trim().parse::<u64>().ok().map(|b| b / 1024)
    }
}

impl Cgroups {
    /// A cgroup for this run under ours, or why there can be none; with `memory_limit`
    /// (bytes), the memory side too, or why there can be none.
    pub(super) fn create(run_key: &str, memory_limit: Option<u64>) -> Result<Cgroups, String> {
        if std::env::var_os("ORCHESTRATOR_CGROUPS").is_some_and(|v| v == "0") {
            return Err("turned off by ORCHESTRATOR_CGROUPS=0".into());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup2 filesystem is mounted")?;
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let own = own_cgroup(&cgroups).ok_or("this process is in no cgroup2 cgroup")?;
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
        let memory = match memory_limit {
            Some(_) => memory_run_dir(&mountinfo, &cgroups, run_key),
            None => {
                // What a supervisor killed with SIGKILL (and its watchdog with it) left there
                // goes all the same.
                if let Some(parent) = memory_parent(&mountinfo, &cgroups) {
                    remove_stale(&parent);
                }
                Err("no per-job memory limit (mem_gb) was asked for".into())
            }
        };
        Ok(Cgroups { run_dir, memory, memory_limit, slots: Mutex::new(HashMap::new()) })
    }

    /// Where the run's cgroups are.
    pub(super) fn dir(&self) -> &Path {
        &self.run_dir
    }

    /// Where the run's memory cgroups are, or why there are none.
    pub(super) fn memory_dir(&self) -> Result<&Path, &str> {
        self.memory.as_deref().map_err(String::as_str)
    }

    /// `slot`'s cgroup for its next job, made on its first one.
    pub(super) fn join(&self, slot: usize) -> io::Result<Joined> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let s = match slots.entry(slot) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let dir = make_dir(&self.run_dir.join(format!("slot-{slot}")))?;
                let procs = procs_of(&dir)?;
                let cpu_usec = cpu_usec(&dir).unwrap_or((0, 0));
                let memory = match &self.memory {
                    Ok(run) => {
                        let dir = make_dir(&run.join(format!("slot-{slot}")))?;
                        if let Some(limit) = self.memory_limit {
                            set_limit(&dir, limit)?;
                        }
                        Some((dir.clone(), procs_of(&dir)?))
                    }
                    Err(_) => None,
                };
                e.insert(Slot { dir, procs, cpu_usec, memory })
            }
        };
        let memory = s.memory.as_ref().map(|(dir, _)| {
            // The slot's cgroup is empty: what earlier jobs left charged to it (page cache)
            // goes to the parent, and the peak is the slot's since this write: the job's own.
            let _ = std::fs::write(dir.join("memory.force_empty"), b"0");
            let _ = std::fs::write(dir.join("memory.max_usage_in_bytes"), b"0");
            MemoryWatch { dir: dir.clone(), oom_kills: oom_kills(dir).unwrap_or(0) }
        });
        let procs = std::iter::once(s.procs.clone()).chain(s.memory.as_ref().map(|(_, p)| p.clone())).collect();
        Ok(Joined { dir: s.dir.clone(), procs, memory })
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
            for dir in std::iter::once(&s.dir).chain(s.memory.as_ref().map(|(d, _)| d)) {
                let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
                name.push(format!("-stuck-{}", std::process::id()));
                let _ = std::fs::rename(dir, dir.with_file_name(name));
            }
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
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if self.run_dir.exists() {
            tracing::warn!("cannot remove the cgroup {}", self.run_dir.display());
        }
        // Its processes are the same ones, all gone now.
        if let Ok(run) = &self.memory {
            remove_tree(run);
        }
    }
}

fn make_dir(dir: &Path) -> io::Result<PathBuf> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(dir.to_path_buf()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(dir.to_path_buf()),
        Err(e) => Err(io::Error::new(e.kind(), format!("cannot make {}: {e}", dir.display()))),
    }
}

fn procs_of(dir: &Path) -> io::Result<CString> {
    CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).map_err(io::Error::other)
}

/// The run's dir in the v1 memory hierarchy (`<mount>/<our memory cgroup>/orchestrator-<key>`),
/// made now, or why there is none.
fn memory_run_dir(mountinfo: &str, cgroups: &str, run_key: &str) -> Result<PathBuf, String> {
    let parent = memory_parent(mountinfo, cgroups).ok_or(
        "no cgroup v1 memory hierarchy with this process in it (where the memory controller is in the \
         cgroup2 hierarchy, orchestrator does not use it yet)",
    )?;
    remove_stale(&parent);
    let run_dir = parent.join(format!("orchestrator-{run_key}"));
    std::fs::create_dir(&run_dir).map_err(|e| format!("cannot make {}: {e}", run_dir.display()))?;
    if let Err(e) = nix::unistd::access(&run_dir.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK) {
        let _ = std::fs::remove_dir(&run_dir);
        return Err(format!("cannot move processes into {}: {e}", run_dir.display()));
    }
    Ok(run_dir)
}

/// Our cgroup in the v1 memory hierarchy, if there is one (from `/proc/self/mountinfo` and
/// `/proc/self/cgroup`, read once by the caller).
fn memory_parent(mountinfo: &str, cgroups: &str) -> Option<PathBuf> {
    let mount = v1_mount(mountinfo, "memory")?;
    Some(mount.join(own_v1(cgroups, "memory")?.trim_start_matches('/')))
}

/// Limit the memory cgroup at `dir` to `bytes`, memory plus swap where swap is accounted.
fn set_limit(dir: &Path, bytes: u64) -> io::Result<()> {
    let text = bytes.to_string();
    std::fs::write(dir.join("memory.limit_in_bytes"), &text)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot set {}/memory.limit_in_bytes: {e}", dir.display())))?;
    // Absent without swap accounting; the memory limit alone holds then.
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        std::fs::write(&memsw, &text)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot set {}: {e}", memsw.display())))?;
    }
    Ok(())
}

/// The `oom_kill` count of the memory cgroup at `dir` (Linux 4.13).
fn oom_kills(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("memory.oom_control")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
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

/// The mount point of the cgroup v1 hierarchy that has `controller`, from
/// `/proc/self/mountinfo` (its super options name the controllers).
fn v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split_whitespace().nth(4)?;
        let mut right = right.split_whitespace();
        let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
        (fstype == "cgroup" && options.split(',').any(|o| o == controller)).then(|| PathBuf::from(point))
    })
}

/// Our path in the v1 hierarchy that has `controller`, from `/proc/self/cgroup`
/// (`<id>:<controllers>:/path`).
fn own_v1<'a>(text: &'a str, controller: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == controller).then_some(path)
    })
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

    #[test]
    fn the_v1_memory_hierarchy_and_our_place_in_it_are_read_from_proc() {
        let mountinfo = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
                         35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(v1_mount(mountinfo, "memory"), Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(v1_mount(mountinfo, "cpu"), Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        // A pure v2 system: no v1 memory hierarchy.
        assert_eq!(v1_mount("41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n", "memory"), None);
        // `memory_recursiveprot` is an option, not the controller.
        assert_eq!(v1_mount("1 2 0:3 / /x rw - cgroup cgroup rw,memory_recursiveprot\n", "memory"), None);
        let own = "12:pids:/a\n5:cpu,cpuacct:/b\n4:memory:/user.slice\n0::/c\n";
        assert_eq!(own_v1(own, "memory"), Some("/user.slice"));
        assert_eq!(own_v1(own, "cpuacct"), Some("/b"));
        assert_eq!(own_v1("0::/c\n", "memory"), None);
    }
}
