//! The few system calls the supervisor needs that std and tokio do not offer.
//!
//! This is the only module with `unsafe`: spawning, pidfd, `wait4` and subreaping.

mod spawn;

pub use spawn::{
    Env, ExecWatch, IntoCgroup, SetupStep, SpawnRequest, Spawned, cstring, pipe_cloexec, resolve_program,
    set_nonblocking, spawn,
};

use std::ffi::OsStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The value of the extended attribute `name` of `path` (its first 64 bytes), if it has one.
pub fn xattr(path: &std::path::Path, name: &std::ffi::CStr) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut value = [0u8; 64];
    // SAFETY: `path` and `name` are NUL-terminated; `value` is writable for its length.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    (n >= 0).then(|| value[..n as usize].to_vec())
}

/// Set the extended attribute `name` of `path` to `value` (for tests).
#[cfg(test)]
pub fn set_xattr(path: &std::path::Path, name: &std::ffi::CStr, value: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `path` and `name` are NUL-terminated; `value` is readable for its length.
    let r = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make this process the reaper of its orphaned descendants, so that a job's daemonised
/// grandchildren are re-parented to us (not to pid 1) and can still be found and ended.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments has no memory effects.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether this process is a child subreaper.
pub fn is_child_subreaper() -> bool {
    let mut on: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer.
    let rc = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut on as *mut libc::c_int, 0, 0, 0) };
    rc == 0 && on != 0
}

/// A pidfd: becomes readable when the process exits (Linux >= 5.3).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// How a reaped process ended, with its resource usage.
#[derive(Debug, Clone, Copy)]
pub struct Reaped {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Terminating signal, if it was killed.
    pub signal: Option<i32>,
    /// Whether it dumped core.
    pub core_dumped: bool,
    /// User CPU seconds (its own and its waited-for descendants').
    pub user_cpu: f64,
    /// System CPU seconds.
    pub sys_cpu: f64,
    /// Peak resident set size in KiB (largest of it and its waited-for descendants).
    pub max_rss_kib: u64,
}

/// Reap `pid` if it has exited. Never waits on any other pid (tokio and others own theirs).
pub fn try_wait4(pid: u32) -> io::Result<Option<Reaped>> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals.
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, libc::WNOHANG, &mut usage) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc == 0 {
        return Ok(None);
    }
    Ok(Some(Reaped::from_wait(status, &usage)))
}

impl Reaped {
    /// What `wait4` said of a process: its status word and its resource usage.
    pub fn from_wait(status: libc::c_int, usage: &libc::rusage) -> Reaped {
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Reaped {
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            core_dumped: libc::WIFSIGNALED(status) && libc::WCOREDUMP(status),
            user_cpu: tv(usage.ru_utime),
            sys_cpu: tv(usage.ru_stime),
            max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        }
    }
}

/// Send `sig` to a process group. `Ok(false)` means the group no longer exists.
pub fn signal_group(pgid: u32, sig: Signal) -> bool {
    killpg(Pid::from_raw(pgid as i32), sig).is_ok()
}

/// Send `sig` to one process. `false` if it is gone.
pub fn signal_pid(pid: u32, sig: Signal) -> bool {
    kill(Pid::from_raw(pid as i32), sig).is_ok()
}

/// Whether a process group still has any member (zombies included).
pub fn group_alive(pgid: u32) -> bool {
    killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

/// The children of the threads that start jobs, listed by the kernel in
/// `/proc/self/task/<tid>/children`. A child is listed under the thread that spawned it; an
/// orphan re-parented to us under our first live thread, the main one (the kernel's
/// `find_new_reaper`), so those threads are the only ones worth reading. The files are kept
/// open: read again from offset 0, a file lists its thread's children afresh (it is a
/// seq_file), which saves a procfs path walk per job.
#[derive(Default)]
pub struct ChildLists {
    /// Per thread: its tid, a number telling it from an earlier thread with the same tid,
    /// and its open children file.
    files: Vec<(i32, u64, Option<std::fs::File>)>,
}

impl ChildLists {
    /// Watch the calling thread's children too.
    pub fn add_current_thread(&mut self) {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        thread_local! {
            static ME: (i32, u64) = (gettid(), NEXT.fetch_add(1, Ordering::Relaxed));
        }
        let (tid, me) = ME.with(|m| *m);
        match self.files.iter_mut().find(|(t, _, _)| *t == tid) {
            Some(entry) if entry.1 == me => {}
            // A thread that spawned before has died and its tid went to this one: its open
            // file lists the dead thread's (no) children, so open this one's.
            Some(entry) => *entry = (tid, me, None),
            None => self.files.push((tid, me, None)),
        }
    }

    /// Watch the main thread's children too: an orphan re-parented to us (a subreaper) goes
    /// to our first live thread, which is the main thread, whichever thread spawned its
    /// ancestor.
    pub fn add_main_thread(&mut self) {
        let pid = std::process::id() as i32;
        if !self.files.iter().any(|(t, _, _)| *t == pid) {
            self.files.push((pid, 0, None));
        }
    }

    /// The pids of the watched threads' children, zombies included.
    pub fn read(&mut self) -> Vec<u32> {
        use std::os::unix::fs::FileExt;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let mut text = Vec::new();
        for (tid, _, file) in &mut self.files {
            if file.is_none() {
                *file = std::fs::File::open(format!("/proc/self/task/{tid}/children")).ok();
            }
            let Some(f) = file else { continue };
            text.clear();
            while let Ok(n) = f.read_at(&mut buf, text.len() as u64) {
                if n == 0 {
                    break;
                }
                text.extend_from_slice(&buf[..n]);
                // A seq_file read stops short only at the end, or when the next entry
                // ("<pid> ", at most 12 bytes) does not fit: no need for a read that says 0.
                if n + 16 <= buf.len() {
                    break;
                }
            }
            out.extend(
                text.split(|b| b.is_ascii_whitespace())
                    .filter_map(|p| std::str::from_utf8(p).ok())
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        out
    }
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// State letter and process group of `pid` from `/proc/<pid>/stat`.
pub fn proc_state(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((state, pgid))
}

/// Whether any `NAME=value` entry of `pid`'s environment satisfies `pred`.
pub fn environ_matches(pid: u32, pred: &dyn Fn(&OsStr) -> bool) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    match std::fs::read(format!("/proc/{pid}/environ")) {
        // Empty while the process is between `fork` and `execve`'s new image, or exiting:
        // not known yet.
        Ok(env) if env.is_empty() => None,
        Ok(env) => Some(env.split(|b| *b == 0).any(|entry| pred(OsStr::from_bytes(entry)))),
        Err(_) => None,
    }
}

/// Every process id in `/proc` (none if it cannot be read).
fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
}

/// Live (not zombie) members of process group `pgid`, found by scanning `/proc`.
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    all_pids()
        .filter(|pid| matches!(proc_state(*pid), Some((state, g)) if g == pgid && state != 'Z' && state != 'X'))
        .collect()
}

/// SIGKILL every process whose environment has an entry starting with `marker` (found by
/// scanning `/proc`; zombies have none), and the process group each one is in (a job's
/// group, or one it made with `setsid`), which takes the members that cleared their
/// environment with it. Never this process, nor the groups in `spare` (the supervisor's:
/// a job may have joined it). Returns how many marked processes it found.
pub fn kill_marked(marker: &[u8], spare: &[u32]) -> usize {
    let me = std::process::id();
    let my_group = own_pgid();
    let mut found = 0;
    for pid in all_pids() {
        if pid == me || environ_matches(pid, &|entry| entry.as_encoded_bytes().starts_with(marker)) != Some(true) {
            continue;
        }
        found += 1;
        signal_pid(pid, Signal::SIGKILL);
        if let Some((_, pgid)) = proc_state(pid)
            && pgid != my_group
            && pgid > 1
            && !spare.contains(&pgid)
        {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
    found
}

/// The process group of this process.
pub fn own_pgid() -> u32 {
    nix::unistd::getpgrp().as_raw() as u32
}

/// Number of CPUs this process may use (affinity and cgroup aware).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A pidfd registered with the tokio reactor; readable once `pid` has exited.
pub fn async_pidfd(pid: u32) -> Option<tokio::io::unix::AsyncFd<OwnedFd>> {
    let fd = pidfd_open(pid).ok()?;
    // SAFETY: we own `fd` and it stays open for as long as the AsyncFd, which owns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok() }
}

/// Have the program `cmd` starts find `fd` (close-on-exec here) open at `target`, without
/// close-on-exec there.
pub fn pass_fd(cmd: &mut std::process::Command, fd: RawFd, target: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe system calls (fcntl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if fd == target {
                // dup2 onto itself would keep close-on-exec.
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) >= 0
            };
            if ok { Ok(()) } else { Err(io::Error::last_os_error()) }
        });
    }
}

/// The real user id of this process.
pub fn getuid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_lists_read_afresh_each_time() {
        let mut lists = ChildLists::default();
        lists.add_current_thread();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert!(lists.read().contains(&child.id()), "a live child is listed");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!lists.read().contains(&child.id()), "a reaped child is gone from the same open file");
    }
}
