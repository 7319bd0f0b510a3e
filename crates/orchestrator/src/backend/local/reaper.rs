//! Which of the supervisor's children belong to jobs, so that reaping adopted orphans never
//! steals the exit status of a job leader or of a child the embedding program owns.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::sync::Mutex;

use nix::sys::signal::Signal;

use super::sys;

/// Tracks which of our children belong to jobs, so that reaping adopted orphans never
/// steals the exit status of a job leader or of a child the embedding program owns.
pub(super) struct Reaper {
    state: Mutex<ReaperState>,
    /// See [`RunOptions::foreign_children`](crate::RunOptions::foreign_children).
    foreign: HashSet<u32>,
}

#[derive(Default)]
struct ReaperState {
    /// Job leaders: reaped only by their job's task.
    leaders: HashSet<u32>,
    /// Process groups of jobs not yet cleaned up: dead members are ours to reap.
    groups: HashSet<u32>,
    /// Orphans seen alive carrying one of our markers.
    adopted: HashSet<u32>,
    /// Threads that spawned jobs: our children (and adopted orphans) are listed under them.
    spawners: sys::ChildLists,
}

/// The runner's state goes when its last task does. If that happens with jobs still running
/// (the runtime was dropped under them), their process groups are killed here: nothing else
/// would ever stop them. Only groups whose leader is not reaped yet: its pid, and so the
/// group's id, cannot have been reused.
impl Drop for Reaper {
    fn drop(&mut self) {
        let state = self.lock();
        for &leader in state.leaders.iter() {
            sys::signal_group(leader, Signal::SIGKILL);
        }
    }
}

impl Reaper {
    /// A reaper that also watches the main thread's children, where orphans go.
    pub(super) fn new(foreign: HashSet<u32>) -> Reaper {
        let mut state = ReaperState::default();
        state.spawners.add_main_thread();
        Reaper { state: Mutex::new(state), foreign }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReaperState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn spawn(&self, req: sys::SpawnRequest<'_>) -> io::Result<sys::Spawned> {
        // Holding the lock across spawn: a concurrent sweep must not see the new leader
        // before it is registered, or it could reap it.
        let mut state = self.lock();
        let child = sys::spawn(req)?;
        state.spawners.add_current_thread();
        state.leaders.insert(child.pid);
        state.groups.insert(child.pid);
        Ok(child)
    }

    /// A job leader we did not spawn ourselves (a warm job, re-parented to us): from now on
    /// it is treated as one we spawned.
    pub(super) fn register(&self, pid: u32) {
        let mut state = self.lock();
        state.leaders.insert(pid);
        state.groups.insert(pid);
    }

    pub(super) fn release_leader(&self, pid: u32) {
        self.lock().leaders.remove(&pid);
    }

    /// Processes of ours found some other way (a job's cgroup) than by marker: reaped once
    /// they are dead.
    pub(super) fn adopt(&self, pids: impl IntoIterator<Item = u32>) {
        self.lock().adopted.extend(pids);
    }

    pub(super) fn release_group(&self, pgid: u32) {
        self.lock().groups.remove(&pgid);
    }

    /// Reap dead orphans of our jobs; return the live ones whose environment matches `marker`.
    pub(super) fn sweep(&self, marker: &dyn Fn(&OsStr) -> bool) -> Vec<u32> {
        self.sweep_counting(marker).0
    }

    /// [`Reaper::sweep`], and how many live children could not be told (their environment
    /// was unreadable: in the middle of an `execve`, say).
    pub(super) fn sweep_counting(&self, marker: &dyn Fn(&OsStr) -> bool) -> (Vec<u32>, usize) {
        let mut state = self.lock();
        let mut live = Vec::new();
        let mut unknown = 0;
        for pid in state.spawners.read() {
            if state.leaders.contains(&pid) || self.foreign.contains(&pid) {
                continue;
            }
            match sys::proc_state(pid) {
                Some(('Z' | 'X', pgid)) if state.groups.contains(&pgid) || state.adopted.remove(&pid) => {
                    let _ = sys::try_wait4(pid);
                }
                Some(('Z' | 'X', _)) | None => {}
                Some(_) => match sys::environ_matches(pid, marker) {
                    Some(true) => {
                        state.adopted.insert(pid);
                        live.push(pid);
                    }
                    Some(false) => {}
                    None => unknown += 1,
                },
            }
        }
        (live, unknown)
    }
}
