//! A helper process that ends the jobs' processes if the supervisor dies without doing it
//! (SIGKILL, a crash, the OOM killer).
//!
//! The parent-death signal only reaches a job's main process; whatever it forked (in its
//! process group, or escaped with `setsid`) would live on. So before the first job starts,
//! the supervisor starts its own binary again as a watchdog, in a process group of its own
//! (a terminal's Ctrl-C does not reach it), holding the read end of a pipe whose write end
//! only the supervisor has. However the supervisor ends, the kernel closes that end; the
//! watchdog then kills every process carrying the supervisor's job marker, and the groups
//! they lead. After a normal run there is nothing left to find, and it just exits. It costs
//! one process start per run and nothing per job.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{SigHandler, Signal, signal};

/// The first argument that makes the binary a watchdog (not a user-facing subcommand).
pub const ARG: &str = "__watchdog";

/// Keeps the watchdog waiting; dropping it (or the process ending) lets it look.
#[derive(Debug)]
pub struct Watchdog {
    _alive: OwnedFd,
}

impl Watchdog {
    /// Start a watchdog for the jobs this process will start.
    pub fn start() -> std::io::Result<Watchdog> {
        // Both ends close-on-exec: no job may hold the write end, or the watchdog would
        // wait for it too.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Command::new("/proc/self/exe")
            .arg0("orchestrator-watchdog")
            .arg(ARG)
            .arg(std::process::id().to_string())
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/")
            .process_group(0)
            .spawn()?;
        Ok(Watchdog { _alive: write })
    }
}

/// The watchdog's life: `args` are the process's arguments after [`ARG`].
pub fn main(args: &[OsString]) -> u8 {
    let Some(pid) = args.first().and_then(|a| a.to_str()).and_then(|a| a.parse::<u32>().ok()) else {
        return crate::exit::USAGE;
    };
    // Only the supervisor's end matters; signals meant for the terminal's jobs do not.
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGPIPE] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let marker = orchestrator::runner::job_marker_prefix(pid);
    // Again until a pass finds nothing: a process may fork between our reads.
    for _ in 0..50 {
        if orchestrator::sys::kill_marked(marker.as_bytes()) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    0
}
