//! Ending what a job left behind: its process group, and the escapees (`setsid`) that carry
//! its marker and came back to us as their subreaper.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{Ctx, sys};

/// End whatever the job left behind: its process group and adopted orphans carrying its
/// marker. TERM first, SIGKILL after `grace`. Returns how many processes it found.
pub(super) async fn end_leftovers(ctx: &Ctx, pgid: u32, marker: &OsStr, grace: Duration) -> u32 {
    let mut seen: HashSet<u32> = HashSet::new();
    let mut termed = false;
    let started = Instant::now();
    let hard_stop = grace.saturating_add(Duration::from_secs(3));
    loop {
        let orphans = ctx.reaper.sweep(&|e| e == marker);
        let group = if sys::group_alive(pgid) { sys::live_group_members(pgid) } else { Vec::new() };
        if orphans.is_empty() && group.is_empty() {
            break;
        }
        seen.extend(orphans.iter().copied());
        seen.extend(group.iter().copied());
        for pid in &orphans {
            // A `setsid` escapee's own group goes down with it; count its members too.
            if let Some((_, own)) = sys::proc_state(*pid)
                && own == *pid
                && own != ctx.own_pgid
            {
                seen.extend(sys::live_group_members(own));
            }
        }
        let sig = if !termed && !grace.is_zero() {
            Some(Signal::SIGTERM)
        } else if started.elapsed() >= grace {
            Some(Signal::SIGKILL)
        } else {
            None
        };
        if let Some(sig) = sig {
            termed = true;
            sys::signal_group(pgid, sig);
            for pid in &orphans {
                signal_tree(*pid, sig, ctx.own_pgid);
            }
        }
        if started.elapsed() > hard_stop {
            tracing::warn!("processes of job group {pgid} survived SIGKILL: {group:?} {orphans:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen.len() as u32
}

/// Signal an adopted process and, if it leads its own group (a `setsid` escapee), the group.
pub(super) fn signal_tree(pid: u32, sig: Signal, own_pgid: u32) {
    sys::signal_pid(pid, sig);
    if let Some((_, pgid)) = sys::proc_state(pid)
        && pgid == pid
        && pgid != own_pgid
    {
        sys::signal_group(pgid, sig);
    }
}
