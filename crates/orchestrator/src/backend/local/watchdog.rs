//! A helper process that ends the jobs' processes if the supervisor dies without doing it
//! (SIGKILL, a crash, the OOM killer).
//!
//! The parent-death signal only reaches a job's main process; whatever it forked (in its
//! process group, or escaped with `setsid`) would live on. So before the first job starts,
//! the supervisor starts its own binary again as a watchdog, in a process group of its own
//! (a terminal's Ctrl-C does not reach it), holding the read end of a pipe whose write end
//! only the supervisor has. If the supervisor ends without saying it is done, the kernel
//! closes that end; the watchdog then kills every process carrying the supervisor's job
//! marker, and their process groups. A run that ends normally (the runner has ended every
//! job) says so, and the watchdog exits at once. It costs one process start per run and
//! nothing per job.
//!
//! A program that embeds the runtime gets one with [`RunOptions::watchdog`](crate::RunOptions::watchdog),
//! provided it calls [`serve_if_requested`] first thing in `main`: the watchdog is that same
//! program started again with [`ARG`].

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{SigHandler, Signal, signal};

use super::sys;

/// The first argument that makes the binary a watchdog (not a user-facing subcommand).
pub const ARG: &str = "__watchdog";

/// What the supervisor writes when its run ended normally.
const DONE: u8 = b'D';
/// What the watchdog writes back once it is running.
const READY: u8 = b'R';
/// How long a new watchdog may take to say it runs.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a watchdog could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchdogError {
    /// A pipe or the process could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// It started but did not answer as a watchdog.
    #[error("{0}")]
    NoAnswer(String),
}

/// A running watchdog. Dropped without [`Watchdog::finish`] (a panic), it looks for jobs'
/// processes left behind, as if the supervisor had died.
#[derive(Debug)]
pub struct Watchdog {
    alive: Option<std::fs::File>,
    child: Child,
}

impl Watchdog {
    /// Start a watchdog for the jobs this process will start.
    pub fn start() -> Result<Watchdog, WatchdogError> {
        Self::start_with(&[], None)
    }

    /// [`Watchdog::start`], which also kills everything in the run's cgroups under each dir
    /// of `cgroups` (and removes them), and cancels (`scancel`) the Slurm job arrays listed in
    /// `slurm_arrays` (one id a line, appended as they are submitted), if the supervisor dies
    /// without saying the run is over: their processes and tasks outlive it otherwise.
    pub fn start_with(
        cgroups: &[&std::path::Path],
        slurm_arrays: Option<&std::path::Path>,
    ) -> Result<Watchdog, WatchdogError> {
        Self::start_full(cgroups, None, slurm_arrays)
    }

    /// [`Watchdog::start_with`], which also puts back the memory controller the run enabled
    /// below `restore` (the local backend's own v2 cgroup), as the run would at its end.
    pub(crate) fn start_full(
        cgroups: &[&std::path::Path],
        restore: Option<&std::path::Path>,
        slurm_arrays: Option<&std::path::Path>,
    ) -> Result<Watchdog, WatchdogError> {
        // Every end close-on-exec: no job may hold the write end, or the watchdog would wait
        // for it too.
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let pipe = |e: nix::errno::Errno| WatchdogError::Io { what: "cannot make a pipe", source: e.into() };
        let (alive_r, alive_w) = nix::unistd::pipe2(cloexec).map_err(pipe)?;
        let (ready_r, ready_w) = nix::unistd::pipe2(cloexec).map_err(pipe)?;
        let mut child = Command::new("/proc/self/exe")
            .arg0("orchestrator-watchdog")
            .arg(ARG)
            .arg(std::process::id().to_string())
            .arg(sys::own_pgid().to_string())
            .args(cgroups.iter().map(|c| tagged(CGROUPS_ARG, c)))
            .args(restore.map(|p| tagged(RESTORE_ARG, p)))
            .args(slurm_arrays.map(|p| tagged(SLURM_ARG, p)))
            .stdin(Stdio::from(alive_r))
            .stdout(Stdio::from(ready_w))
            .stderr(Stdio::null())
            .current_dir("/")
            // Not marked as one of our jobs' processes: a run this one is a job of must not
            // take the watchdog for a leftover of that job (and kill it before it is done).
            .env_remove(super::JOB_KEY_VAR)
            .process_group(0)
            .spawn()
            .map_err(|source| WatchdogError::Io { what: "cannot start /proc/self/exe", source })?;
        // `/proc/self/exe` is not always this program (run through the dynamic loader, or an
        // emulator): only a watchdog that answers counts.
        if let Err(e) = wait_ready(ready_r) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(WatchdogError::NoAnswer(e));
        }
        Ok(Watchdog { alive: Some(std::fs::File::from(alive_w)), child })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The run ended normally: the watchdog exits without looking.
    pub fn finish(mut self) {
        if let Some(mut alive) = self.alive.take() {
            let _ = alive.write_all(&[DONE]);
        }
        // Reaped here, or it would stay a zombie under a run this one is a job of.
        let _ = self.child.wait();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing our end without DONE makes it look; not waited for.
        drop(self.alive.take());
    }
}

fn wait_ready(ready: OwnedFd) -> Result<(), String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let timeout = PollTimeout::try_from(START_TIMEOUT).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(0) => return Err(format!("it did not answer within {}s", START_TIMEOUT.as_secs())),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    let mut byte = [0u8; 1];
    match std::fs::File::from(ready).read(&mut byte) {
        Ok(1) if byte[0] == READY => Ok(()),
        Ok(_) => Err("/proc/self/exe is not orchestrator (started through a loader or an emulator?)".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// If this process was started as a watchdog (its first argument is [`ARG`]), be one and
/// return the exit code to end with; `None` otherwise. Call it first thing in `main` of a
/// program that runs jobs with [`RunOptions::watchdog`](crate::RunOptions::watchdog) on.
pub fn serve_if_requested() -> Option<u8> {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == ARG) {
        let rest: Vec<OsString> = args.collect();
        return Some(main(&rest));
    }
    None
}

/// The watchdog's life: `args` are the process's arguments after [`ARG`]: the supervisor's
/// pid and process group.
fn main(args: &[OsString]) -> u8 {
    let number = |i: usize| args.get(i).and_then(|a| a.to_str()).and_then(|a| a.parse::<u32>().ok());
    let (Some(pid), Some(group)) = (number(0), number(1)) else {
        return 2;
    };
    // Only the supervisor's end matters; signals meant for the terminal's jobs do not.
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    // Its name in `ps` and `top` (the program is `/proc/self/exe`, which they show as `exe`).
    let _ = nix::sys::prctl::set_name(c"orch-watchdog");
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(&[READY]).and_then(|()| stdout.flush()).is_err() {
        return 3;
    }
    drop(stdout);
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if buf[..n].contains(&DONE) => return 0,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let cgroups = tagged_args(args, CGROUPS_ARG);
    // A Slurm run's arrays: nothing of them may stay queued.
    if let Some(list) = tagged_arg(args, SLURM_ARG)
        && let Ok(text) = std::fs::read_to_string(&list)
    {
        let ids: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        if !ids.is_empty() {
            let _ = Command::new("scancel")
                .args(&ids)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let marker = super::job_marker_prefix(pid);
    // Again until a pass finds nothing: a process may fork between our reads.
    for _ in 0..50 {
        for dir in &cgroups {
            super::cgroup::kill_tree(dir);
        }
        if sys::kill_marked(marker.as_bytes(), &[group]) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for dir in &cgroups {
        super::cgroup::remove_tree(dir);
    }
    // Last: the controller can be disabled only once the run's cgroups are gone. This
    // process, in the supervisor's leaf, moves back with the rest.
    if let Some(parent) = tagged_arg(args, RESTORE_ARG) {
        super::cgroup::put_back(&parent, "memory");
    }
    0
}

/// The watchdog's optional arguments, after the pid and group: `cgroups=<dir>` (any number:
/// the run's v2 cgroups, its v1 memory cgroups), `restore=<dir>`, `slurm=<file>`.
const CGROUPS_ARG: &str = "cgroups=";
const RESTORE_ARG: &str = "restore=";
const SLURM_ARG: &str = "slurm=";

fn tagged(tag: &str, path: &std::path::Path) -> OsString {
    let mut arg = OsString::from(tag);
    arg.push(path.as_os_str());
    arg
}

fn tagged_arg(args: &[OsString], tag: &str) -> Option<std::path::PathBuf> {
    tagged_args(args, tag).into_iter().next()
}

fn tagged_args(args: &[OsString], tag: &str) -> Vec<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    args.iter()
        .skip(2)
        .filter_map(|a| {
            let rest = a.as_bytes().strip_prefix(tag.as_bytes())?;
            Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(rest)))
        })
        .collect()
}
