//! One attempt of a job, driven through its phases: running, terminating (after a timeout, a
//! stop or a cancel: a signal now, SIGKILL when the grace period is over), exited.
//!
//! The transitions are pure functions of the phase and what happened ([`Phase::on`]), so they
//! are tested without a process; [`drive`] applies them to a backend's [`Attempt`].

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Stop;
use crate::backend::{Attempt, Exit, ExitStatus, LostError};
use crate::job::{EndReason, Outcome, StopReason};

/// Why the supervisor ended an attempt before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndCause {
    /// It ran past its timeout.
    TimedOut,
    /// A stop request, the halt policy, or its own cancel.
    Stopped(StopReason),
}

/// Where a running attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Its program runs and nobody asked it to end.
    Running,
    /// Asked to end, for `cause`, with a signal: SIGKILL is due at `kill_at` (`None`: a
    /// grace period too long for the clock, never by itself).
    Terminating { cause: EndCause, kill_at: Option<Instant> },
    /// Sent SIGKILL, for `cause`.
    Killed { cause: EndCause },
}

/// Something that happens to a running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Happening {
    /// Its deadline passed.
    TimedOut,
    /// Its own cancel token was cancelled.
    Cancelled,
    /// The run's stop request is now this.
    Stop(Stop),
    /// The grace period is over.
    KillDue,
}

impl Phase {
    /// The phase after `what`, and the signal to send for it (if any). `now + grace` is when
    /// SIGKILL follows a first signal (with a zero grace period, at once after it).
    pub(crate) fn on(self, what: Happening, now: Instant, grace: Duration) -> (Phase, Option<i32>) {
        let terminate = |cause: EndCause, signal: i32| {
            // A grace period too long for the clock: SIGKILL never follows by itself.
            (Phase::Terminating { cause, kill_at: now.checked_add(grace) }, Some(signal))
        };
        match (self, what) {
            (Phase::Running, Happening::TimedOut) => terminate(EndCause::TimedOut, libc::SIGTERM),
            (Phase::Running, Happening::Cancelled) => {
                terminate(EndCause::Stopped(StopReason::Cancelled), libc::SIGTERM)
            }
            (Phase::Running, Happening::Stop(Stop::Graceful { reason, signal })) => {
                terminate(EndCause::Stopped(reason), signal)
            }
            (Phase::Running, Happening::Stop(Stop::Immediate)) => {
                (Phase::Killed { cause: EndCause::Stopped(StopReason::Interrupted) }, Some(libc::SIGKILL))
            }
            // Already ending: an immediate stop only brings SIGKILL forward.
            (Phase::Terminating { cause, .. }, Happening::Stop(Stop::Immediate) | Happening::KillDue) => {
                (Phase::Killed { cause }, Some(libc::SIGKILL))
            }
            (phase, _) => (phase, None),
        }
    }

    /// Why the attempt is ending, if it was asked to.
    pub(crate) fn cause(self) -> Option<EndCause> {
        match self {
            Phase::Running => None,
            Phase::Terminating { cause, .. } | Phase::Killed { cause } => Some(cause),
        }
    }

    fn kill_at(self) -> Option<Instant> {
        match self {
            Phase::Terminating { kill_at, .. } => kill_at,
            Phase::Running | Phase::Killed { .. } => None,
        }
    }
}

/// How an attempt ended: what its backend reported, and why the supervisor ended it (if it
/// did). This is the attempt's last phase.
#[derive(Debug, Clone)]
pub(crate) struct Exited {
    pub(crate) exit: Result<Exit, LostError>,
    pub(crate) cause: Option<EndCause>,
}

impl Exited {
    /// The outcome this ending gives, for a job with time limit `limit`.
    pub(crate) fn outcome(&self, limit: Option<Duration>) -> Outcome {
        let exit = match &self.exit {
            Ok(exit) => exit,
            Err(lost) => return Outcome::Lost { error: lost.message.clone() },
        };
        let (code, signal) = match exit.status {
            ExitStatus::Code(c) => (Some(c), None),
            ExitStatus::Signal { signal, .. } => (None, Some(signal)),
            ExitStatus::Ended { code, signal, .. } => (code, signal),
        };
        match self.cause {
            Some(EndCause::TimedOut) => Outcome::TimedOut { limit: limit.unwrap_or_default(), code, signal },
            Some(EndCause::Stopped(reason)) => Outcome::Stopped { reason, code, signal },
            None => match exit.status {
                ExitStatus::Code(0) => Outcome::Succeeded,
                ExitStatus::Code(code) => Outcome::Failed { code },
                ExitStatus::Signal { signal, core_dumped } => Outcome::Signaled { signal, core_dumped },
                // The cluster's time limit is the job's timeout (rounded up to its granularity).
                ExitStatus::Ended { reason: EndReason::TimeLimit, code, signal } => {
                    Outcome::TimedOut { limit: limit.unwrap_or_default(), code, signal }
                }
                ExitStatus::Ended { reason, code, signal } => Outcome::ClusterEnded { reason, code, signal },
            },
        }
    }
}

/// Run `attempt` to its end: its deadline (`timeout` from now), its own cancel and the run's
/// stop requests each move it to terminating; SIGKILL follows after `grace`.
pub(crate) async fn drive(
    attempt: &mut dyn Attempt,
    timeout: Option<Duration>,
    grace: Duration,
    stop: &mut watch::Receiver<Stop>,
    cancel: &CancellationToken,
) -> Exited {
    // A limit too far out for the clock is no limit (library callers can pass Duration::MAX).
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut phase = Phase::Running;
    let mut stop_open = true;
    // A stop requested before we started still applies to us.
    let mut pending = Some(*stop.borrow_and_update());
    loop {
        if let Some(req) = pending.take() {
            phase = apply(attempt, phase, Happening::Stop(req), grace);
            // A drain starts no new job: an attempt still waiting to run (a queued cluster
            // task) is dropped, as a job the run never started would be.
            if req == Stop::Drain && phase == Phase::Running && attempt.withdraw().await {
                phase = Phase::Terminating { cause: EndCause::Stopped(StopReason::Halt), kill_at: None };
            }
        }
        let running = phase == Phase::Running;
        let kill_at = phase.kill_at();
        tokio::select! {
            exit = attempt.wait() => return Exited { exit, cause: phase.cause() },
            () = sleep_until(deadline), if running && deadline.is_some() => {
                phase = apply(attempt, phase, Happening::TimedOut, grace);
            }
            () = sleep_until(kill_at), if kill_at.is_some() => {
                phase = apply(attempt, phase, Happening::KillDue, grace);
            }
            () = cancel.cancelled(), if running => {
                phase = apply(attempt, phase, Happening::Cancelled, grace);
            }
            changed = stop.changed(), if stop_open => match changed {
                Ok(()) => pending = Some(*stop.borrow_and_update()),
                Err(_) => stop_open = false,
            },
        }
    }
}

fn apply(attempt: &mut dyn Attempt, phase: Phase, what: Happening, grace: Duration) -> Phase {
    let (next, signal) = phase.on(what, Instant::now(), grace);
    if let Some(signal) = signal {
        attempt.signal(signal);
    }
    next
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);

    #[test]
    fn a_timeout_terminates_then_the_grace_period_kills() {
        let now = Instant::now();
        let (p, sig) = Phase::Running.on(Happening::TimedOut, now, GRACE);
        assert_eq!(sig, Some(libc::SIGTERM));
        assert_eq!(p, Phase::Terminating { cause: EndCause::TimedOut, kill_at: Some(now + GRACE) });
        let (p, sig) = p.on(Happening::KillDue, now + GRACE, GRACE);
        assert_eq!((p, sig), (Phase::Killed { cause: EndCause::TimedOut }, Some(libc::SIGKILL)));
        // Nothing more to send: it is being killed.
        for later in [Happening::Stop(Stop::Immediate), Happening::KillDue, Happening::TimedOut] {
            assert_eq!(p.on(later, now, GRACE), (p, None), "{later:?}");
        }
    }

    #[test]
    fn a_graceful_stop_forwards_its_signal_and_a_later_cause_does_not_replace_the_first() {
        let now = Instant::now();
        let stop = Stop::Graceful { reason: StopReason::Interrupted, signal: libc::SIGINT };
        let (p, sig) = Phase::Running.on(Happening::Stop(stop), now, GRACE);
        assert_eq!(sig, Some(libc::SIGINT));
        assert_eq!(p.cause(), Some(EndCause::Stopped(StopReason::Interrupted)));
        for later in [Happening::TimedOut, Happening::Cancelled, Happening::Stop(stop), Happening::Stop(Stop::Drain)] {
            assert_eq!(p.on(later, now, GRACE), (p, None), "{later:?}");
        }
        // An immediate stop brings SIGKILL forward, keeping the first cause.
        let (p2, sig) = p.on(Happening::Stop(Stop::Immediate), now, GRACE);
        assert_eq!(sig, Some(libc::SIGKILL));
        assert_eq!(p2.cause(), Some(EndCause::Stopped(StopReason::Interrupted)));
    }

    #[test]
    fn drain_and_none_leave_a_running_attempt_alone_and_zero_grace_kills_right_after() {
        let now = Instant::now();
        assert_eq!(Phase::Running.on(Happening::Stop(Stop::Drain), now, GRACE), (Phase::Running, None));
        assert_eq!(Phase::Running.on(Happening::Stop(Stop::None), now, GRACE), (Phase::Running, None));
        assert_eq!(Phase::Running.on(Happening::KillDue, now, GRACE), (Phase::Running, None));
        let (p, sig) = Phase::Running.on(Happening::Cancelled, now, Duration::ZERO);
        assert_eq!(sig, Some(libc::SIGTERM));
        assert_eq!(p, Phase::Terminating { cause: EndCause::Stopped(StopReason::Cancelled), kill_at: Some(now) });
    }

    #[test]
    fn outcomes_map_every_ending() {
        let code = |c| Ok(Exit::new(ExitStatus::Code(c)));
        let signal = |s| Ok(Exit::new(ExitStatus::Signal { signal: s, core_dumped: false }));
        let ended = |exit, cause| Exited { exit, cause };
        assert_eq!(ended(code(0), None).outcome(None), Outcome::Succeeded);
        assert_eq!(ended(code(2), None).outcome(None), Outcome::Failed { code: 2 });
        assert_eq!(ended(signal(11), None).outcome(None), Outcome::Signaled { signal: 11, core_dumped: false });
        let limit = Duration::from_secs(1);
        assert_eq!(
            ended(signal(9), Some(EndCause::TimedOut)).outcome(Some(limit)),
            Outcome::TimedOut { limit, code: None, signal: Some(9) }
        );
        // A job that exits 0 on SIGTERM after its timeout is still timed out, not a success.
        assert!(matches!(ended(code(0), Some(EndCause::TimedOut)).outcome(Some(limit)), Outcome::TimedOut { .. }));
        assert_eq!(
            ended(signal(2), Some(EndCause::Stopped(StopReason::Interrupted))).outcome(None),
            Outcome::Stopped { reason: StopReason::Interrupted, code: None, signal: Some(2) }
        );
        assert_eq!(ended(Err(LostError::new("gone")), None).outcome(None), Outcome::Lost { error: "gone".into() });
        // A cluster's endings: its time limit is the job's timeout; the others keep their reason.
        let cluster = |reason| Ok(Exit::new(ExitStatus::Ended { reason, code: None, signal: Some(9) }));
        assert_eq!(
            ended(cluster(EndReason::TimeLimit), None).outcome(Some(limit)),
            Outcome::TimedOut { limit, code: None, signal: Some(9) }
        );
        let node = ended(cluster(EndReason::NodeFail), None).outcome(None);
        assert_eq!(node.status(), "node_failed");
        assert_eq!(ended(cluster(EndReason::OutOfMemory), None).outcome(None).status(), "out_of_memory");
        // Ended by us first: our reason wins.
        assert!(matches!(
            ended(cluster(EndReason::Cancelled), Some(EndCause::Stopped(StopReason::Interrupted))).outcome(None),
            Outcome::Stopped { reason: StopReason::Interrupted, .. }
        ));
    }
}
