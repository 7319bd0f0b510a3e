//! Signals belong to the binary: map SIGINT, SIGTERM, SIGHUP (the terminal or ssh session
//! went away) and SIGQUIT (Ctrl-\\) onto stop requests for the runner.

use orchestrator::{Stop, StopReason};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Forward the first of these signals as a graceful stop (the same signal goes to every job),
/// and any later one as an immediate kill. Returns the first signal's number, once seen.
pub fn install(stop: watch::Sender<Stop>) -> std::io::Result<watch::Receiver<Option<i32>>> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    let (first_tx, first_rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                Some(()) = int.recv() => libc_sig::SIGINT,
                Some(()) = term.recv() => libc_sig::SIGTERM,
                Some(()) = hup.recv() => libc_sig::SIGHUP,
                Some(()) = quit.recv() => libc_sig::SIGQUIT,
                else => break,
            };
            if first_tx.borrow().is_none() {
                let _ = first_tx.send(Some(sig));
                stop.send_modify(|s| *s = (*s).max(Stop::Graceful { reason: StopReason::Interrupted, signal: sig }));
            } else {
                stop.send_modify(|s| *s = Stop::Immediate);
            }
        }
    });
    Ok(first_rx)
}

mod libc_sig {
    pub const SIGINT: i32 = nix::sys::signal::Signal::SIGINT as i32;
    pub const SIGTERM: i32 = nix::sys::signal::Signal::SIGTERM as i32;
    pub const SIGHUP: i32 = nix::sys::signal::Signal::SIGHUP as i32;
    pub const SIGQUIT: i32 = nix::sys::signal::Signal::SIGQUIT as i32;
}
