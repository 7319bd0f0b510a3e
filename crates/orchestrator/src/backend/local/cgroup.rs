//! A cgroup (v2) per slot, where the kernel lets us make one: every process a job starts,
//! daemons that left its process group and cleared their environment included, is in its
//! slot's cgroup until it exits. A job's end then means its cgroup is empty; what is left is
//! listed by `cgroup.procs` and ended with `cgroup.kill` (atomic: no fork race); `cpu.stat`
//! gives the CPU time of the whole tree.
//!
//! One cgroup per slot, not per job: a slot runs one job at a time and is emptied before its
//! next one, and making and removing a cgroup per job cost more than the rest of a tiny job's
//! bookkeeping. The job's process is made in its slot's cgroup (`clone3` with
//! `CLONE_INTO_CGROUP`, from the slot's open directory), or, where the kernel will not, joins
//! it itself before it runs the program (it writes `0` to `cgroup.procs` as the first step of
//! its set-up; see `sys::IntoCgroup`), so that everything it forks is in it from the start.
//!
//! Where no cgroup can be made (not root and no delegated subtree, no cgroup2 mount), the
//! process-group and marker mechanism alone runs, and says so.
//!
//! Memory, only with a per-job memory limit (`mem_gb`): moving each job into a second
//! hierarchy and reading its counters cost 1.06-1.11x the CPU and 1.02-1.16x the wall time of
//! a sweep of `true` jobs here (`bench/ab.sh`, three runs), too much to pay by default for the
//! peak alone. It gives the whole tree's peak memory (reset before each job), the per-job limit
//! (with no swap beyond it, so that a job over it is killed rather than swapped out) and the
//! kernel's OOM kills in it. Two layouts:
//!
//! - **cgroup v1 `memory` beside v2** (hybrid, as on these machines): each slot also gets a v1
//!   memory cgroup, which the job joins the same way (`memory.limit_in_bytes`,
//!   `memory.max_usage_in_bytes`, `oom_kill` of `memory.oom_control`).
//! - **The memory controller in v2** (a pure v2 system): the slots' own cgroups get it
//!   (`memory.max`, `memory.peak`, `oom_kill` of `memory.events`). A cgroup enables a
//!   controller for its children only while no process is in it, so this process first moves
//!   into a leaf of its own (`orchestrator-<run key>-supervisor`) beside the run's cgroup, and
//!   back at the end. Other processes in its cgroup move with it only where the cgroup is
//!   marked as delegated (systemd's `Delegate=yes`); in a shell's cgroup the limit is refused,
//!   with `systemd-run --scope -p Delegate=yes` as the way out.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The run's cgroups: `<our cgroup>/orchestrator-<run key>/slot-<n>`.
pub(super) struct Cgroups {
    run_dir: PathBuf,
    /// Where each job's memory is measured and limited, or why nowhere.
    memory: Result<MemorySide, String>,
    /// Each job's memory limit (memory plus swap), bytes.
    memory_limit: Option<u64>,
    slots: Mutex<HashMap<usize, Slot>>,
    /// How many cgroups each slot retired: its next one is `slot-<n>.<count>` (cgroup v2
    /// cannot rename a cgroup out of the way).
    retired: Mutex<HashMap<usize, u32>>,
}

/// The run's memory cgroups.
enum MemorySide {
    /// In the v1 memory hierarchy: the run's dir there, a slot's memory cgroup in it.
    V1(PathBuf),
    /// The v2 memory controller, enabled down to the slots' own cgroups.
    V2(Delegation),
}

/// One slot's cgroup, and its CPU counters when its last job ended.
struct Slot {
    dir: PathBuf,
    /// The cgroup's directory, open for `clone3` to start jobs in.
    fd: Arc<OwnedFd>,
    procs: CString,
    cpu_usec: (u64, u64),
    /// Its memory cgroup, and that one's `cgroup.procs` when it is another cgroup (v1).
    memory: Option<(PathBuf, Option<CString>)>,
    /// Whether the slot has run a job yet: a v2 peak that cannot be reset is right for its
    /// first job only.
    used: bool,
}

/// What a slot's cgroup gives a job at its start.
pub(super) struct Joined {
    /// The cgroup's directory.
    pub(super) dir: PathBuf,
    /// The same, open (for `clone3` to start the job in it).
    pub(super) fd: Arc<OwnedFd>,
    /// The `cgroup.procs` files for the job's process to write `0` to: the slot's, and its
    /// memory cgroup's if it has one (v1).
    pub(super) procs: Vec<CString>,
    /// The slot's memory cgroup, with its peak reset for this job.
    pub(super) memory: Option<MemoryWatch>,
}

/// A job's memory cgroup, and the OOM kills in it before the job.
#[derive(Debug, Clone)]
pub(super) struct MemoryWatch {
    dir: PathBuf,
    oom_kills: u64,
    kind: WatchKind,
}

/// Which files a [`MemoryWatch`] reads.
#[derive(Debug, Clone)]
enum WatchKind {
    /// `memory.max_usage_in_bytes` and `memory.oom_control`.
    V1,
    /// `memory.events`, and `memory.peak` open, reset for this job through this very
    /// descriptor (Linux 6.12 resets it per open file); `None` when it could not be reset and
    /// the slot ran a job before (its peak would be an earlier job's).
    V2 { peak: Option<Arc<std::fs::File>> },
}

impl MemoryWatch {
    /// Processes the kernel killed in the job's cgroup for memory since it started.
    pub(super) fn oom_kills(&self) -> u64 {
        let now = match self.kind {
            WatchKind::V1 => oom_kills(&self.dir),
            WatchKind::V2 { .. } => oom_kills_v2(&self.dir),
        };
        now.unwrap_or(0).saturating_sub(self.oom_kills)
    }

    /// The whole tree's peak memory (RSS and page cache charged to it) in KiB, since the job
    /// started.
    pub(super) fn peak_kib(&self) -> Option<u64> {
        let text = match &self.kind {
            WatchKind::V1 => std::fs::read_to_string(self.dir.join("memory.max_usage_in_bytes")).ok()?,
            WatchKind::V2 { peak: file } => {
                use std::os::unix::fs::FileExt;
                let mut buf = [0u8; 32];
                let n = file.as_ref()?.read_at(&mut buf, 0).ok()?;
                String::from_utf8_lossy(&buf[..n]).into_owned()
            }
        };
        field_value(&text).map(|b| b / 1024)
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
        // The root cgroup is the mount itself (a join of "" would end it with a `/`).
        let own = match own.trim_start_matches('/') {
            "" => mount.clone(),
            own => mount.join(own),
        };
        // A supervisor's leaf (see `Delegation`) is no place for a run: its parent is, beside
        // the run that made it. We are there when the Hydra app that launched us was moved
        // there with that run's supervisor.
        let parent = match own.parent() {
            Some(up) if is_leaf(&own) => up.to_path_buf(),
            _ => own,
        };
        // Held to the end: another run's start or end there waits.
        let _lock = lock(&parent);
        remove_stale(&parent);
        // What dead runs' delegations left (a SIGKILL of both supervisor and watchdog) is put
        // back, unless a live run uses it.
        restore(&parent, "memory");
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
            Some(_) => match memory_parent(&mountinfo, &cgroups) {
                Some(v1) => memory_run_dir(&v1, run_key).map(MemorySide::V1),
                None => match Delegation::enable(&parent, "memory", run_key, &[std::process::id()]) {
                    Err(why) => Err(why),
                    Ok(d) => match std::fs::write(run_dir.join("cgroup.subtree_control"), b"+memory") {
                        Ok(()) => Ok(MemorySide::V2(d)),
                        Err(e) => {
                            // Put back at once (our run's cgroup must go first); no cgroups
                            // then, which says why.
                            let _ = std::fs::remove_dir(&run_dir);
                            restore(&parent, "memory");
                            return Err(format!("cannot enable the memory controller in {}: {e}", run_dir.display()));
                        }
                    },
                },
            },
            None => {
                // What a supervisor killed with SIGKILL (and its watchdog with it) left there
                // goes all the same.
                if let Some(parent) = memory_parent(&mountinfo, &cgroups) {
                    remove_stale(&parent);
                }
                Err("no per-job memory limit (mem_gb) was asked for".into())
            }
        };
        Ok(Cgroups { run_dir, memory, memory_limit, slots: Mutex::default(), retired: Mutex::default() })
    }

    /// Where the run's cgroups are.
    pub(super) fn dir(&self) -> &Path {
        &self.run_dir
    }

    /// Where the run's memory cgroups are and which kind, or why there are none.
    pub(super) fn memory_dir(&self) -> Result<String, &str> {
        match &self.memory {
            Ok(MemorySide::V1(dir)) => Ok(format!("the cgroup v1 memory hierarchy, {}", dir.display())),
            Ok(MemorySide::V2(_)) => Ok(format!("cgroup v2, {}", self.run_dir.display())),
            Err(why) => Err(why),
        }
    }

    /// The run's dir in the v1 memory hierarchy, if it has one (for the watchdog: the v2
    /// memory cgroups are the slots' own).
    pub(super) fn v1_memory_dir(&self) -> Option<&Path> {
        match &self.memory {
            Ok(MemorySide::V1(dir)) => Some(dir),
            _ => None,
        }
    }

    /// The cgroup whose v2 memory controller this run enabled for its children, if it did
    /// (for the watchdog to [`restore`] if we die).
    pub(super) fn delegated_from(&self) -> Option<&Path> {
        match &self.memory {
            Ok(MemorySide::V2(d)) => Some(&d.parent),
            _ => None,
        }
    }

    /// `slot`'s cgroup for its next job, made on its first one.
    pub(super) fn join(&self, slot: usize) -> io::Result<Joined> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let s = match slots.entry(slot) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let name = match self.retired.lock().unwrap_or_else(|e| e.into_inner()).get(&slot) {
                    Some(n) => format!("slot-{slot}.{n}"),
                    None => format!("slot-{slot}"),
                };
                let dir = make_dir(&self.run_dir.join(&name))?;
                let procs = procs_of(&dir)?;
                let fd = Arc::new(open_dir(&dir)?);
                let cpu_usec = cpu_usec(&dir).unwrap_or((0, 0));
                let memory = match &self.memory {
                    Ok(MemorySide::V1(run)) => {
                        let dir = make_dir(&run.join(&name))?;
                        if let Some(limit) = self.memory_limit {
                            set_limit(&dir, limit)?;
                        }
                        let procs = procs_of(&dir)?;
                        Some((dir, Some(procs)))
                    }
                    Ok(MemorySide::V2(_)) => {
                        if let Some(limit) = self.memory_limit {
                            set_limit_v2(&dir, limit)?;
                        }
                        Some((dir.clone(), None))
                    }
                    Err(_) => None,
                };
                e.insert(Slot { dir, fd, procs, cpu_usec, memory, used: false })
            }
        };
        let first = !std::mem::replace(&mut s.used, true);
        let memory = s.memory.as_ref().map(|(dir, v1_procs)| match v1_procs {
            Some(_) => {
                // The slot's cgroup is empty: what earlier jobs left charged to it (page
                // cache) goes to the parent, and the peak is the slot's since this write: the
                // job's own.
                let _ = std::fs::write(dir.join("memory.force_empty"), b"0");
                let _ = std::fs::write(dir.join("memory.max_usage_in_bytes"), b"0");
                MemoryWatch { dir: dir.clone(), oom_kills: oom_kills(dir).unwrap_or(0), kind: WatchKind::V1 }
            }
            None => MemoryWatch {
                dir: dir.clone(),
                oom_kills: oom_kills_v2(dir).unwrap_or(0),
                kind: WatchKind::V2 { peak: reset_peak_v2(dir, first).map(Arc::new) },
            },
        });
        let procs = std::iter::once(s.procs.clone()).chain(s.memory.as_ref().and_then(|(_, p)| p.clone())).collect();
        Ok(Joined { dir: s.dir.clone(), fd: s.fd.clone(), procs, memory })
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

    /// After a job, its slot's cgroup empty: cgroups the job made in it are removed, and
    /// controllers it enabled for them disabled, so that the next job can start in it (a
    /// cgroup that enables a controller for its children may hold no process). `false` when
    /// that could not be done: the caller retires the slot.
    pub(super) fn tidy(&self, slot: usize) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = slots.get(&slot) else { return true };
        if !has_descendants(&s.dir) {
            return true;
        }
        let removed = remove_below(&s.dir);
        let subtree = s.dir.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
        let disabled = enabled.split_whitespace().all(|c| std::fs::write(&subtree, format!("-{c}")).is_ok());
        removed && disabled
    }

    /// A cgroup that could not be emptied (or tidied) is not used again: its slot gets a new
    /// one. The old one stays in the run's dir, whose end kills what is in it.
    pub(super) fn retire(&self, slot: usize) {
        if self.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(&slot).is_some() {
            *self.retired.lock().unwrap_or_else(|e| e.into_inner()).entry(slot).or_default() += 1;
        }
    }
}

impl Drop for Cgroups {
    /// Every job has ended: what is left in the run's cgroups is killed, and they go.
    fn drop(&mut self) {
        // Every slot's cgroup, retired ones too.
        for dir in children(&self.run_dir) {
            if !tree_members(&dir).is_empty() {
                kill(&dir);
            }
        }
        // A dir goes once its last member has exited; try a moment for stragglers.
        for _ in 0..50 {
            if remove_below(&self.run_dir) && std::fs::remove_dir(&self.run_dir).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if self.run_dir.exists() {
            tracing::warn!("cannot remove the cgroup {}", self.run_dir.display());
        }
        match &self.memory {
            // Its processes are the same ones, all gone now.
            Ok(MemorySide::V1(run)) => remove_tree(run),
            Ok(MemorySide::V2(delegation)) => delegation.undo(),
            Err(_) => {}
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

/// `dir`, open as a path only: what `clone3`'s `CLONE_INTO_CGROUP` takes.
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
        .map(OwnedFd::from)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", dir.display())))
}

fn procs_of(dir: &Path) -> io::Result<CString> {
    CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).map_err(io::Error::other)
}

/// The run's dir in the v1 memory hierarchy (`<our memory cgroup>/orchestrator-<key>`), made
/// now, or why there is none.
fn memory_run_dir(parent: &Path, run_key: &str) -> Result<PathBuf, String> {
    remove_stale(parent);
    let run_dir = parent.join(format!("orchestrator-{run_key}"));
    std::fs::create_dir(&run_dir).map_err(|e| format!("cannot make {}: {e}", run_dir.display()))?;
    if let Err(e) = nix::unistd::access(&run_dir.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK) {
        let _ = std::fs::remove_dir(&run_dir);
        return Err(format!("cannot move processes into {}: {e}", run_dir.display()));
    }
    Ok(run_dir)
}

/// A controller enabled for the children of our cgroup `parent`, to be put back by the last
/// run there to end ([`restore`]).
///
/// A cgroup (other than the root) may enable a controller for its children only while no
/// process is in it: the processes in it (ours alone, or all where the cgroup was delegated to
/// whoever runs in it) move into a leaf beside the run's cgroups first,
/// `orchestrator-<run key>-supervisor`.
struct Delegation {
    parent: PathBuf,
    controller: &'static str,
}

impl Delegation {
    /// Enable `controller` for the children of `parent`, moving the processes in it into
    /// `parent/orchestrator-<run_key>-supervisor` if needed: `ours` (this one) always, others
    /// only where `parent` is marked as delegated. Refused, with nothing changed, when
    /// `parent` does not have the controller or holds others and is not so marked.
    fn enable(parent: &Path, controller: &'static str, run_key: &str, ours: &[u32]) -> Result<Delegation, String> {
        let read = |file: &str| std::fs::read_to_string(parent.join(file)).unwrap_or_default();
        let has = |text: &str| text.split_whitespace().any(|c| c == controller);
        if !has(&read("cgroup.controllers")) {
            return Err(format!(
                "the {controller} controller is not available to {} (not in its cgroup.controllers: it is in no \
                 cgroup v1 hierarchy and not delegated to this cgroup in v2)",
                parent.display()
            ));
        }
        let delegation = Delegation { parent: parent.to_path_buf(), controller };
        // Enabled already: by whoever manages the cgroup, by a live run beside us, or at the
        // root (which may hold processes and enable controllers both).
        if has(&read("cgroup.subtree_control")) {
            return Ok(delegation);
        }
        if !is_root(parent) {
            // The others may move with us only where the cgroup was delegated to be arranged
            // so (systemd's `Delegate=yes` marks it): a Hydra app and the orchestrator it
            // launched, in the scope it was started in.
            let others: Vec<u32> = members(parent).into_iter().filter(|p| !ours.contains(p)).collect();
            if !others.is_empty() && !marked_delegated(parent) {
                return Err(format!(
                    "{} holds other processes besides orchestrator (pids {}) and is not marked as delegated \
                     (no trusted.delegate or user.delegate), and a cgroup with processes in it cannot enable the \
                     {controller} controller for the jobs' cgroups; start orchestrator (or the Hydra app that \
                     launches it) in a cgroup of its own, e.g. `systemd-run --user --scope -p Delegate=yes \
                     <command>` (without --user as root)",
                    parent.display(),
                    others.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                ));
            }
            let leaf = parent.join(format!("orchestrator-{run_key}-supervisor"));
            std::fs::create_dir(&leaf).map_err(|e| format!("cannot make {}: {e}", leaf.display()))?;
            // Again while a process forks into it between our read and our move.
            for _ in 0..5 {
                let left = members(parent);
                if left.is_empty() {
                    break;
                }
                for pid in left {
                    if let Err(e) = std::fs::write(leaf.join("cgroup.procs"), pid.to_string())
                        && e.raw_os_error() != Some(libc::ESRCH)
                    {
                        restore(parent, controller);
                        return Err(format!("cannot move process {pid} into {}: {e}", leaf.display()));
                    }
                }
            }
        }
        if let Err(e) = std::fs::write(parent.join("cgroup.subtree_control"), format!("+{controller}")) {
            restore(parent, controller);
            return Err(format!("cannot enable the {controller} controller in {}: {e}", parent.display()));
        }
        Ok(delegation)
    }

    /// This run's part is over (its cgroups are gone): if no other run uses the controller,
    /// everything is put back.
    fn undo(&self) {
        put_back(&self.parent, self.controller);
    }
}

/// Whether `dir` is the name of a supervisor's leaf (`orchestrator-<run key>-supervisor`).
fn is_leaf(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("orchestrator-") && n.ends_with("-supervisor"))
}

/// The pid in the name of a run's cgroup or leaf (`orchestrator-<pid>-<time>[-supervisor]`).
fn run_pid(name: &str) -> Option<i32> {
    name.strip_prefix("orchestrator-")?.split('-').next()?.parse().ok()
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) != Err(nix::errno::Errno::ESRCH)
}

/// The real root cgroup, which alone may hold processes and enable controllers for its
/// children: it has no `cgroup.type` (the root of a cgroup namespace, which looks like `/`
/// from inside a container, has one).
fn is_root(dir: &Path) -> bool {
    // Not sure (an error): not the root, whose exemption would be wrong to assume.
    matches!(dir.join("cgroup.type").try_exists(), Ok(false))
}

/// An exclusive `flock` on the cgroup at `dir`, held while a run there changes how it is
/// arranged (its cgroups made, a controller enabled or put back), so that two runs' starts
/// and ends there do not interleave. `None` when it cannot be taken.
fn lock(dir: &Path) -> Option<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::File::open(dir).ok()?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).ok()
}

/// [`restore`], under the cgroup's lock: at a run's end, and by the watchdog of a run that
/// died.
pub(super) fn put_back(parent: &Path, controller: &str) {
    let _lock = lock(parent);
    restore(parent, controller);
}

/// Put back what runs' delegations changed in `parent` (the controller enabled for its
/// children, its processes moved into supervisors' leaves), unless a run's cgroup there is
/// still live (its supervisor alive: that run puts it back at its end; a run's own is removed
/// before). Called with the cgroup's lock held: by each run at its end, by the watchdog of a run
/// that died, and at each run's start for runs that died with their watchdog.
fn restore(parent: &Path, controller: &str) {
    let mut leaves = Vec::new();
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(pid) = entry.file_name().to_str().and_then(run_pid) else { continue };
        if is_leaf(&path) {
            leaves.push(path);
        } else if alive(pid) {
            return;
        }
    }
    // No leaf: nothing of ours to put back (a controller enabled at the root, or by whoever
    // manages the cgroup, stays).
    if leaves.is_empty() {
        return;
    }
    let subtree = parent.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == controller)
        && let Err(e) = std::fs::write(&subtree, format!("-{controller}"))
    {
        tracing::warn!("cannot disable the {controller} controller in {} again: {e}", parent.display());
        return;
    }
    for leaf in leaves {
        for pid in members(&leaf) {
            let _ = std::fs::write(parent.join("cgroup.procs"), pid.to_string());
        }
        // Gone already: another run's end put it back first.
        if let Err(e) = std::fs::remove_dir(&leaf)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove the cgroup {}: {e}", leaf.display());
        }
    }
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

/// Whether the cgroup at `dir` was delegated to whoever runs in it: systemd (251 and later)
/// marks a unit's cgroup made with `Delegate=yes` with the extended attribute
/// `trusted.delegate` (system manager) or `user.delegate` (user manager), `1`. Only the
/// cgroup's own mark counts, as in systemd: below `user@.service` (delegated to the user's
/// manager) a terminal's scope is the manager's, not the shell's.
fn marked_delegated(dir: &Path) -> bool {
    [c"trusted.delegate", c"user.delegate"]
        .iter()
        .any(|name| super::sys::xattr(dir, name).is_some_and(|v| v.starts_with(b"1")))
}

/// The `oom_kill` count of the v1 memory cgroup at `dir` (Linux 4.13).
fn oom_kills(dir: &Path) -> Option<u64> {
    field(&std::fs::read_to_string(dir.join("memory.oom_control")).ok()?, "oom_kill")
}

/// The `oom_kill` count of the v2 memory cgroup at `dir` (its `memory.events`).
fn oom_kills_v2(dir: &Path) -> Option<u64> {
    field(&std::fs::read_to_string(dir.join("memory.events")).ok()?, "oom_kill")
}

/// The value of `name` in a flat-keyed cgroup file (`name value` lines).
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Limit the v2 memory cgroup at `dir` to `bytes`, and to no swap where swap is accounted (so
/// that a job over it is killed, as with v1's memory plus swap limit).
fn set_limit_v2(dir: &Path, bytes: u64) -> io::Result<()> {
    let max = dir.join("memory.max");
    std::fs::write(&max, bytes.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot set {}: {e}", max.display())))?;
    let swap = dir.join("memory.swap.max");
    if swap.exists() {
        std::fs::write(&swap, b"0")
            .map_err(|e| io::Error::new(e.kind(), format!("cannot set {}: {e}", swap.display())))?;
    }
    Ok(())
}

/// Before a job in the v2 memory cgroup at `dir` (empty now): what earlier jobs left charged
/// to it (page cache) is reclaimed, and `memory.peak` is reset through a descriptor of its own
/// (Linux 6.12), returned to read the job's peak from. Where it cannot be reset, the slot's
/// first job (`first`) still gets its peak, from a plain open; later ones none.
fn reset_peak_v2(dir: &Path, first: bool) -> Option<std::fs::File> {
    if !first
        && let Some(current) = std::fs::read_to_string(dir.join("memory.current")).ok().and_then(|t| field_value(&t))
    {
        // Best effort: what cannot be reclaimed (EAGAIN) stays, and counts in the peak.
        if current > 0 {
            let _ = std::fs::write(dir.join("memory.reclaim"), current.to_string());
        }
    }
    let path = dir.join("memory.peak");
    if let Ok(mut file) = std::fs::OpenOptions::new().read(true).write(true).open(&path) {
        use std::io::Write;
        if file.write_all(b"reset\n").is_ok() {
            return Some(file);
        }
    }
    if first { std::fs::File::open(&path).ok() } else { None }
}

/// A cgroup file holding one number.
fn field_value(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Whether the cgroup at `dir` has cgroups below it: a directory's link count is 2 plus its
/// subdirectories (kernfs keeps it so), one `stat` where `cgroup.stat` would cost an open and a
/// read.
fn has_descendants(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.nlink() > 2)
}

/// Whether any process is in the cgroup at `dir` or below it (`populated` of
/// `cgroup.events`): `cgroup.procs` stops listing an exiting process before it has left.
pub(super) fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events")).ok().and_then(|t| field(&t, "populated")).unwrap_or(0) > 0
}

/// The cgroups right below `dir`.
fn children(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}

/// The processes in the cgroup at `dir` and in every cgroup below it: a job may make cgroups
/// of its own in its slot's (a nested orchestrator does) and move processes there, out of
/// `cgroup.procs` of the slot but not out of the slot.
pub(super) fn tree_members(dir: &Path) -> Vec<u32> {
    fn walk(dir: &Path, all: &mut Vec<u32>) {
        for child in children(dir) {
            all.extend(members(&child));
            walk(&child, all);
        }
    }
    let mut all = members(dir);
    if has_descendants(dir) {
        walk(dir, &mut all);
    }
    all
}

/// Remove the cgroups below `dir`, deepest first; whether all went (one with a process in it
/// stays).
fn remove_below(dir: &Path) -> bool {
    children(dir).fold(true, |ok, child| {
        let below = remove_below(&child);
        std::fs::remove_dir(&child).is_ok() && below && ok
    })
}

/// Kill everything in the run's cgroups under `run_dir` (the watchdog's last resort).
pub(super) fn kill_tree(run_dir: &Path) {
    for slot in children(run_dir) {
        kill(&slot);
    }
}

/// Remove the run's cgroups under `run_dir` once they are empty (tries for about a second).
pub(super) fn remove_tree(run_dir: &Path) {
    for _ in 0..100 {
        if remove_below(run_dir) && std::fs::remove_dir(run_dir).is_ok() || !run_dir.exists() {
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
        let Some(pid) = entry.file_name().to_str().and_then(run_pid) else { continue };
        // A leaf holds the processes that were in our cgroup: `restore` puts them back.
        if !alive(pid) && !is_leaf(&entry.path()) {
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

/// SIGKILL every process in the cgroup at `dir` and below it at once (`cgroup.kill`, Linux
/// 5.14); on an older kernel, each member in turn.
pub(super) fn kill(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), b"1").is_err() {
        for pid in tree_members(dir) {
            super::sys::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// `usage` of `cpu.stat`: (user, system) microseconds.
fn cpu_usec(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    Some((field(&text, "user_usec")?, field(&text, "system_usec")?))
}

/// The mount point of the cgroup2 filesystem, from `/proc/self/mountinfo`.
pub(super) fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
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

    #[test]
    fn flat_keyed_cgroup_files_are_read_by_name() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(field(events, "oom_kill"), Some(1));
        assert_eq!(field(events, "oom"), Some(2), "a name is not a prefix of a longer one");
        assert_eq!(field(events, "absent"), None);
        assert_eq!(field("usage_usec 10\nuser_usec 7\nsystem_usec 3\n", "user_usec"), Some(7));
        assert_eq!(field_value("1048576\n"), Some(1 << 20));
        assert_eq!(field_value("max\n"), None);
    }

    /// Say a test did not run here: straight to stderr (the harness captures `eprintln!` of a
    /// passing test, and `.ci/run` counts these lines as skips).
    fn skip(what: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "skipped: {what}");
    }

    /// A process to move around: `sleep`, killed and reaped on drop.
    struct Sleeper(std::process::Child);

    impl Sleeper {
        fn into(cgroup: &Path) -> Sleeper {
            let child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
            std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).unwrap();
            Sleeper(child)
        }

        fn cgroup(&self) -> String {
            let text = std::fs::read_to_string(format!("/proc/{}/cgroup", self.0.id())).unwrap();
            own_cgroup(&text).unwrap().to_string()
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The kernel's rules for enabling a controller below a cgroup, on the real cgroup2
    /// hierarchy. The memory controller is bound to v1 on these machines; `hugetlb`, the one
    /// controller of their v2 hierarchy, is a domain controller too, under the same rule (no
    /// process in a non-root cgroup that enables it for its children).
    #[test]
    fn a_controller_is_enabled_below_a_cgroup_by_moving_its_process_into_a_leaf_and_put_back_after() {
        const NAME: &str =
            "a_controller_is_enabled_below_a_cgroup_by_moving_its_process_into_a_leaf_and_put_back_after";
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let Some(mount) = cgroup2_mount(&mountinfo) else {
            return skip(&format!("{NAME}: no cgroup2 filesystem"));
        };
        let root_has = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        let writable = nix::unistd::access(&mount.join("cgroup.subtree_control"), nix::unistd::AccessFlags::W_OK);
        if writable.is_err() || !is_root(&mount) || !root_has.split_whitespace().any(|c| c == "hugetlb") {
            return skip(&format!("{NAME}: the cgroup2 root is not ours to change, or has no hugetlb controller"));
        }
        // Available in a top-level cgroup only once the root enables it (the root may, with
        // processes in it); left on, as a system would have it.
        std::fs::write(mount.join("cgroup.subtree_control"), b"+hugetlb").unwrap();
        let test = make_dir(&mount.join(format!("orchestrator-test-{}", std::process::id()))).unwrap();
        assert!(!is_root(&test));
        let sub = |f: &str| std::fs::read_to_string(test.join(f)).unwrap();
        let home = format!("/orchestrator-test-{}", std::process::id());
        let leaf = test.join("orchestrator-1-2-supervisor");
        let ours = Sleeper::into(&test);

        // Another process in the cgroup: refused, naming it, and nothing changed.
        let other = Sleeper::into(&test);
        let err = Delegation::enable(&test, "hugetlb", "1-2", &[ours.0.id()]).err().unwrap();
        assert!(err.contains(&format!("other processes besides orchestrator (pids {})", other.0.id())), "{err}");
        assert!(err.contains("is not marked as delegated"), "{err}");
        assert_eq!(sub("cgroup.subtree_control").trim(), "");
        assert!(!leaf.exists());

        // Marked as delegated (as systemd's `Delegate=yes` does): the other moves with us, and
        // the last run to end puts both back.
        let set = |value: &[u8]| super::super::sys::set_xattr(&test, c"user.delegate", value).unwrap();
        set(b"1");
        assert!(marked_delegated(&test));
        assert!(!marked_delegated(&leaf), "only a cgroup's own mark counts");
        let d = Delegation::enable(&test, "hugetlb", "1-2", &[ours.0.id()]).unwrap();
        assert_eq!(other.cgroup(), format!("{home}/orchestrator-1-2-supervisor"));
        assert_eq!(ours.cgroup(), format!("{home}/orchestrator-1-2-supervisor"));
        d.undo();
        assert_eq!(other.cgroup(), home);
        assert_eq!(sub("cgroup.subtree_control").trim(), "");
        assert!(!leaf.exists());
        set(b"0");
        assert!(!marked_delegated(&test));
        drop(other);

        // Alone: it moves into a leaf, and the controller reaches the run's slots.
        let d = Delegation::enable(&test, "hugetlb", "1-2", &[ours.0.id()]).unwrap();
        assert_eq!(ours.cgroup(), format!("{home}/orchestrator-1-2-supervisor"));
        assert_eq!(sub("cgroup.subtree_control").trim(), "hugetlb");
        // The run's cgroup, named for a live pid (1) as a running run's is: while it is there,
        // nothing is put back (before it enables the controller, which would stop a disable
        // anyway).
        let run = make_dir(&test.join("orchestrator-1-2")).unwrap();
        d.undo();
        assert_eq!(sub("cgroup.subtree_control").trim(), "hugetlb");
        assert!(leaf.exists());
        assert_eq!(ours.cgroup(), format!("{home}/orchestrator-1-2-supervisor"));
        std::fs::write(run.join("cgroup.subtree_control"), b"+hugetlb").unwrap();
        let slot = make_dir(&run.join("slot-0")).unwrap();
        assert!(std::fs::read_to_string(slot.join("cgroup.controllers")).unwrap().contains("hugetlb"));
        // A process may join the slot and come back, as a job does.
        std::fs::write(slot.join("cgroup.procs"), ours.0.id().to_string()).unwrap();
        std::fs::write(leaf.join("cgroup.procs"), ours.0.id().to_string()).unwrap();
        // Our cgroup may take no process now: why the leaf is needed.
        let busy = std::fs::write(test.join("cgroup.procs"), ours.0.id().to_string()).unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(libc::EBUSY), "{busy}");
        // A second run beside it finds the controller on and changes nothing.
        let second = Delegation::enable(&test, "hugetlb", "3-4", &[]).unwrap();
        assert!(!test.join("orchestrator-3-4-supervisor").exists());
        second.undo();
        assert_eq!(sub("cgroup.subtree_control").trim(), "hugetlb");
        assert!(leaf.exists());
        std::fs::remove_dir(&slot).unwrap();
        std::fs::remove_dir(&run).unwrap();
        // The last one out puts everything back.
        d.undo();
        assert_eq!(sub("cgroup.subtree_control").trim(), "");
        assert!(!leaf.exists());
        assert_eq!(ours.cgroup(), home);

        // A run that died with its watchdog left its leaf (named for a pid that is gone) and
        // the controller on: the next run's start puts them back.
        let stale = make_dir(&test.join("orchestrator-2147483646-5-supervisor")).unwrap();
        std::fs::write(stale.join("cgroup.procs"), ours.0.id().to_string()).unwrap();
        std::fs::write(test.join("cgroup.subtree_control"), b"+hugetlb").unwrap();
        remove_stale(&test);
        assert!(stale.exists(), "a leaf is not a stale run's cgroup to kill");
        restore(&test, "hugetlb");
        assert_eq!(sub("cgroup.subtree_control").trim(), "");
        assert!(!stale.exists());
        assert_eq!(ours.cgroup(), home);
        drop(ours);

        // A controller the cgroup does not have: refused, saying so.
        let err = Delegation::enable(&test, "no-such-controller", "5-6", &[]).err().unwrap();
        assert!(err.contains("the no-such-controller controller is not available to"), "{err}");
        std::fs::remove_dir(&test).unwrap();
    }
}
