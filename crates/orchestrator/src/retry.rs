//! When a job that did not succeed is tried again, and after how long.

use std::time::Duration;

pub use orchestrator_config::RetryOn;
use orchestrator_config::launcher::{DEFAULT_RETRY_DELAY, MAX_RETRY_DELAY};

use crate::job::Outcome;

/// A job's retries: how many, after which endings, and the delay before each.
///
/// The delay before retry *n* (1-based) is `delay * 2^(n-1)`, capped at `max_delay`
/// ([`MAX_RETRY_DELAY`], 5 minutes, unless set otherwise). A stop (Ctrl-C, a cancelled job,
/// the halt policy) is never retried, and neither is a job while the run is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// How many times a job may be tried again (0: never).
    pub retries: u32,
    /// The delay before the first retry.
    pub delay: Duration,
    /// The longest delay, however many retries came before.
    pub max_delay: Duration,
    /// Which endings are retried.
    pub on: RetryOn,
    /// Attempts beyond `retries` for a job whose attempt ran into its time limit (or was
    /// preempted on a cluster): submitit's `max_num_timeout`, the requeues a long job gets
    /// to finish (it resumes from its own checkpoint). They come at once, without the delay.
    pub requeue_timeouts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 0,
            delay: DEFAULT_RETRY_DELAY,
            max_delay: MAX_RETRY_DELAY,
            on: RetryOn::default(),
            requeue_timeouts: 0,
        }
    }
}

impl RetryPolicy {
    /// `retries` retries after the default endings, with `delay` doubling per attempt.
    pub fn new(retries: u32, delay: Duration) -> Self {
        RetryPolicy { retries, delay, ..RetryPolicy::default() }
    }

    /// How many attempts a job gets at most.
    pub fn max_attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    /// Whether an attempt that ended as `outcome` is tried again by this policy (if attempts
    /// are left).
    pub fn retries_after(&self, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Failed { .. } => self.on.failed,
            Outcome::TimedOut { .. } => self.on.timed_out,
            Outcome::Signaled { .. } => self.on.signaled,
            Outcome::SpawnFailed { .. } => self.on.spawn_failed,
            // A cluster's node failure or preemption: the job itself may be fine.
            Outcome::ClusterEnded { reason, .. } => match reason {
                crate::job::EndReason::NodeFail | crate::job::EndReason::Preempted => self.on.signaled,
                crate::job::EndReason::OutOfMemory => self.on.signaled,
                crate::job::EndReason::TimeLimit => self.on.timed_out,
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether `outcome` is one that [`RetryPolicy::requeue_timeouts`] counts: a time limit
    /// (the job's timeout, a cluster's) or a preemption.
    pub fn requeues_after(&self, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::TimedOut { .. } => true,
            Outcome::ClusterEnded { reason, .. } => {
                matches!(reason, crate::job::EndReason::TimeLimit | crate::job::EndReason::Preempted)
            }
            _ => false,
        }
    }

    /// The delay before retry number `retry` (1 for the first).
    pub fn delay_before(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.delay.checked_mul(factor).unwrap_or(Duration::MAX).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::StopReason;

    #[test]
    fn the_delay_doubles_up_to_the_cap() {
        let p = RetryPolicy::new(40, Duration::from_secs(1));
        let delays: Vec<u64> = (1..=10).map(|n| p.delay_before(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(p.delay_before(40), Duration::from_secs(300), "no overflow past 2^31");
        assert_eq!(RetryPolicy::new(3, Duration::ZERO).delay_before(3), Duration::ZERO);
    }

    #[test]
    fn only_the_chosen_endings_are_retried_and_never_a_stop() {
        let p = RetryPolicy::new(1, Duration::ZERO);
        let limit = Duration::from_secs(1);
        assert!(p.retries_after(&Outcome::Failed { code: 1 }));
        assert!(p.retries_after(&Outcome::TimedOut { limit, code: None, signal: Some(9) }));
        assert!(p.retries_after(&Outcome::Signaled { signal: 11, core_dumped: false }));
        assert!(!p.retries_after(&Outcome::SpawnFailed { error: "no such file".into() }));
        assert!(!p.retries_after(&Outcome::Succeeded));
        for reason in [StopReason::Interrupted, StopReason::Cancelled, StopReason::Halt] {
            assert!(!p.retries_after(&Outcome::Stopped { reason, code: Some(1), signal: None }));
        }
        let mut only_timeouts = p;
        only_timeouts.on.failed = false;
        only_timeouts.on.signaled = false;
        assert!(!only_timeouts.retries_after(&Outcome::Failed { code: 1 }));
        assert!(only_timeouts.retries_after(&Outcome::TimedOut { limit, code: None, signal: Some(15) }));
    }
}
