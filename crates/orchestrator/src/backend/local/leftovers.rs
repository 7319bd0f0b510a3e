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
    // A child whose environment cannot be read yet (a `setsid -f` daemon in the middle of
    // its `execve`) may be the job's: looked at again for a while before the job is done.
    let unsure_until = started + Duration::from_millis(100);
    loop {
        let (orphans, unknown) = ctx.reaper.sweep_counting(&|e| e == marker);
        let group = if sys::group_alive(pgid) { sys::live_group_members(pgid) } else { Vec::new() };
        if orphans.is_empty() && group.is_empty() {
            if unknown == 0 || Instant::now() >= unsure_until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
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

/// End whatever the job left in its cgroup at `dir` (all of it, whatever group or
/// environment): SIGTERM to each member, then `cgroup.kill` after `grace`. Returns how many
/// processes it found, and whether the cgroup is empty now.
pub(super) async fn end_cgroup(ctx: &Ctx, dir: &std::path::Path, grace: Duration) -> (u32, bool) {
    let mut seen: HashSet<u32> = HashSet::new();
    let mut termed = false;
    let started = Instant::now();
    let hard_stop = grace.saturating_add(Duration::from_secs(3));
    loop {
        let members = super::cgroup::tree_members(dir);
        // Empty once nothing is in it: an exiting process has left `cgroup.procs` already.
        if members.is_empty() && !super::cgroup::populated(dir) {
            break;
        }
        // Ours to reap once dead (they came back to us as their subreaper).
        ctx.reaper.adopt(members.iter().copied());
        seen.extend(members.iter().copied());
        if !termed && !grace.is_zero() {
            termed = true;
            for pid in &members {
                sys::signal_pid(*pid, Signal::SIGTERM);
            }
        } else if started.elapsed() >= grace {
            super::cgroup::kill(dir);
        }
        if started.elapsed() > hard_stop {
            tracing::warn!("processes in cgroup {} survived SIGKILL: {members:?}", dir.display());
            return (seen.len() as u32, false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !seen.is_empty() {
        // Reap the dead among them now, not at the run's end.
        let _ = ctx.reaper.sweep(&|_| false);
    }
    (seen.len() as u32, true)
}

/// Marked processes of jobs of this run that are no longer running: leftovers that got away
/// from their job's end (a daemon that was still being born then). Killed now; their job's
/// record is written already, so they are only reported here.
pub(super) fn end_strays(ctx: &Ctx) {
    // At most every 50 ms: it reads /proc again, and a stray is rare (a daemon caught
    // between fork and exec when its job ended); it dies at the next look.
    use std::sync::atomic::Ordering;
    let now = ctx.clock_ms();
    let last = ctx.strays_looked_at.load(Ordering::Relaxed);
    if now.saturating_sub(last) < 50
        || ctx.strays_looked_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        return;
    }
    let prefix = format!("{}={}.", super::JOB_KEY_VAR, ctx.run_key);
    let running = ctx.running.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let stray = |entry: &OsStr| {
        let Some(num) = entry.as_encoded_bytes().strip_prefix(prefix.as_bytes()) else { return false };
        std::str::from_utf8(num).ok().and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| !running.contains(&n))
    };
    for pid in ctx.reaper.sweep(&stray) {
        tracing::warn!("ending pid {pid}, left behind by a job of this run that has ended");
        signal_tree(pid, Signal::SIGKILL, ctx.own_pgid);
    }
}
