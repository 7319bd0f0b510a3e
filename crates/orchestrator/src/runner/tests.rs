//! The scheduler's lifecycle on the fake backend and tokio's paused clock: timeouts, grace
//! and SIGKILL, halt policies, stop escalation, cancel before start, retries. No process is
//! started and nothing sleeps: every time below is virtual and exact.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::*;
use crate::backend::ExitStatus;
use crate::backend::fake::{FakeBackend, Happened, Script};
use crate::job::{JobStatus, Outcome};

const S: Duration = Duration::from_secs(1);

fn job(num: u64) -> JobSpec {
    JobSpec::new(num, "app", vec![], format!("/nonexistent/{num}.log"))
}

fn options(n_jobs: usize, backend: &FakeBackend) -> RunOptions {
    let mut opts = RunOptions::new(n_jobs);
    opts.backend = Some(Arc::new(backend.clone()));
    opts.slot_threads = Some(0);
    opts.grace = 5 * S;
    opts
}

/// Run `jobs` to the end; the events, in order, and the summary.
async fn run_jobs(opts: RunOptions, jobs: Vec<Submission>, stop: watch::Receiver<Stop>) -> (RunSummary, Vec<Event>) {
    let (job_tx, job_rx) = mpsc::channel(jobs.len().max(1));
    for j in jobs {
        job_tx.send(j).await.unwrap();
    }
    drop(job_tx);
    let (ev_tx, mut ev_rx) = mpsc::channel(10_000);
    let summary = run(opts, job_rx, Some(ev_tx), stop).await;
    let mut events = Vec::new();
    while let Ok(e) = ev_rx.try_recv() {
        events.push(e);
    }
    (summary, events)
}

fn no_stop() -> watch::Receiver<Stop> {
    let (tx, rx) = watch::channel(Stop::None);
    std::mem::forget(tx);
    rx
}

fn finished(events: &[Event]) -> Vec<JobRecord> {
    let mut records: Vec<JobRecord> = events
        .iter()
        .filter_map(|e| match e {
            Event::Finished(r) => Some((**r).clone()),
            _ => None,
        })
        .collect();
    records.sort_by_key(|r| r.num);
    records
}

/// `(job, attempt, seconds since t0, what)` of the backend's history.
fn timeline(backend: &FakeBackend, t0: Instant) -> Vec<(u64, u32, f64, Happened)> {
    backend.history().iter().map(|e| (e.num, e.attempt, (e.at - t0).as_secs_f64(), e.what)).collect()
}

/// (job, seconds from `t0`) of each start, in order.
fn started_at(backend: &FakeBackend, t0: Instant) -> Vec<(u64, f64)> {
    timeline(backend, t0).into_iter().filter(|e| e.3 == Happened::Started).map(|e| (e.0, e.2)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_timeout_sends_sigterm_then_sigkill_after_the_grace_period() {
    let backend = FakeBackend::new(|_, _| Script::exits(0, 3600 * S).ignoring_signals());
    let t0 = Instant::now();
    let mut spec = job(0);
    spec.timeout = Some(2 * S);
    let (summary, events) = run_jobs(options(1, &backend), vec![spec.into()], no_stop()).await;
    assert_eq!(
        timeline(&backend, t0),
        [
            (0, 1, 0.0, Happened::Started),
            (0, 1, 2.0, Happened::Signal(libc::SIGTERM)),
            (0, 1, 7.0, Happened::Signal(libc::SIGKILL)),
            (0, 1, 7.0, Happened::Exited(ExitStatus::Signal { signal: libc::SIGKILL, core_dumped: false })),
        ]
    );
    let r = &finished(&events)[0];
    assert_eq!(r.outcome, Outcome::TimedOut { limit: 2 * S, code: None, signal: Some(libc::SIGKILL) });
    assert_eq!(r.duration, 7 * S);
    assert_eq!(summary.failures.len(), 1);
    assert!(
        backend.notes(0)[0].starts_with("timed out after 2s, ended by SIGKILL after 7.000s"),
        "{:?}",
        backend.notes(0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_that_ends_on_sigterm_is_not_killed() {
    let backend = FakeBackend::new(|_, _| Script::exits(0, 3600 * S));
    let t0 = Instant::now();
    let mut spec = job(0);
    spec.timeout = Some(S);
    let (_, events) = run_jobs(options(1, &backend), vec![spec.into()], no_stop()).await;
    let signals: Vec<_> = timeline(&backend, t0).into_iter().filter(|e| matches!(e.3, Happened::Signal(_))).collect();
    assert_eq!(signals, [(0, 1, 1.0, Happened::Signal(libc::SIGTERM))]);
    assert_eq!(finished(&events)[0].outcome, Outcome::TimedOut { limit: S, code: None, signal: Some(libc::SIGTERM) });
}

#[tokio::test(start_paused = true)]
async fn halt_soon_lets_running_jobs_finish_and_starts_no_other() {
    // Job 0 fails at 1 s; job 1 runs 5 s; jobs 2 and 3 never start.
    let backend = FakeBackend::new(|j, _| if j.num == 0 { Script::exits(1, S) } else { Script::exits(0, 5 * S) });
    let mut opts = options(2, &backend);
    opts.halt = HaltPolicy::Soon;
    let (summary, events) = run_jobs(opts, (0..4).map(|n| job(n).into()).collect(), no_stop()).await;
    let records = finished(&events);
    assert_eq!(
        records.iter().map(|r| (r.num, r.outcome.status())).collect::<Vec<_>>(),
        [(0, "failed"), (1, "succeeded")]
    );
    assert!(summary.stopped_early);
    assert!(events.iter().any(|e| matches!(e, Event::Stopping { request: Stop::Drain })));
}

#[tokio::test(start_paused = true)]
async fn halt_now_ends_running_jobs_as_halted() {
    let backend = FakeBackend::new(|j, _| if j.num == 0 { Script::exits(3, S) } else { Script::exits(0, 10 * S) });
    let t0 = Instant::now();
    let mut opts = options(2, &backend);
    opts.halt = HaltPolicy::Now;
    let (_, events) = run_jobs(opts, (0..3).map(|n| job(n).into()).collect(), no_stop()).await;
    let records = finished(&events);
    assert_eq!(
        records[1].outcome,
        Outcome::Stopped { reason: StopReason::Halt, code: None, signal: Some(libc::SIGTERM) }
    );
    assert_eq!(records.len(), 2, "job 2 never starts");
    assert!(timeline(&backend, t0).contains(&(1, 1, 1.0, Happened::Signal(libc::SIGTERM))));
}

#[tokio::test(start_paused = true)]
async fn a_second_stop_escalates_to_sigkill_before_the_grace_period_ends() {
    let backend = FakeBackend::new(|_, _| Script::exits(0, 3600 * S).ignoring_signals());
    let t0 = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(Stop::None);
    tokio::spawn(async move {
        tokio::time::sleep(S).await;
        stop_tx
            .send_modify(|s| *s = (*s).max(Stop::Graceful { reason: StopReason::Interrupted, signal: libc::SIGINT }));
        tokio::time::sleep(S).await;
        stop_tx.send_modify(|s| *s = (*s).max(Stop::Immediate));
        std::future::pending::<()>().await;
    });
    let (summary, events) = run_jobs(options(2, &backend), (0..3).map(|n| job(n).into()).collect(), stop_rx).await;
    let mut signals: Vec<_> =
        timeline(&backend, t0).into_iter().filter(|e| matches!(e.3, Happened::Signal(_))).collect();
    // The two jobs in time order, each job's before the other's at one time.
    signals.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
    assert_eq!(
        signals,
        [
            (0, 1, 1.0, Happened::Signal(libc::SIGINT)),
            (1, 1, 1.0, Happened::Signal(libc::SIGINT)),
            (0, 1, 2.0, Happened::Signal(libc::SIGKILL)),
            (1, 1, 2.0, Happened::Signal(libc::SIGKILL)),
        ]
    );
    let records = finished(&events);
    assert!(records.iter().all(|r| r.outcome.job_status() == JobStatus::Interrupted), "{records:?}");
    assert_eq!(records.len(), 2, "job 2 never starts");
    assert!(summary.stopped_early);
    let stops: Vec<Stop> = events
        .iter()
        .filter_map(|e| match e {
            Event::Stopping { request } => Some(*request),
            _ => None,
        })
        .collect();
    assert_eq!(stops, [Stop::Graceful { reason: StopReason::Interrupted, signal: libc::SIGINT }, Stop::Immediate]);
    match events.last() {
        Some(Event::RunFinished { interrupted_by, stop, .. }) => {
            assert_eq!((*interrupted_by, *stop), (Some(libc::SIGINT), Stop::Immediate));
        }
        other => panic!("the last event is {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_cancelled_before_it_starts_never_reaches_the_backend() {
    let backend = FakeBackend::new(|_, _| Script::exits(0, S));
    let sub = Submission::from(job(0));
    sub.cancel.cancel();
    let (_, events) = run_jobs(options(1, &backend), vec![sub, job(1).into()], no_stop()).await;
    let records = finished(&events);
    assert_eq!(records[0].outcome, Outcome::Stopped { reason: StopReason::Cancelled, code: None, signal: None });
    assert_eq!(records[1].outcome, Outcome::Succeeded);
    assert!(backend.history().iter().all(|e| e.num == 1));
}

#[tokio::test(start_paused = true)]
async fn a_failed_job_is_retried_with_a_doubling_delay_and_keeps_every_attempt() {
    // Fails twice, then succeeds.
    let backend = FakeBackend::new(|_, attempt| Script::exits(if attempt < 3 { 7 } else { 0 }, S));
    let t0 = Instant::now();
    let mut opts = options(1, &backend);
    opts.retry = RetryPolicy::new(3, 2 * S);
    let (summary, events) = run_jobs(opts, vec![job(0).into()], no_stop()).await;
    let starts: Vec<_> = timeline(&backend, t0).into_iter().filter(|e| e.3 == Happened::Started).collect();
    // 1 s run, 2 s delay, 1 s run, 4 s delay.
    assert_eq!(
        starts,
        [(0, 1, 0.0, Happened::Started), (0, 2, 3.0, Happened::Started), (0, 3, 8.0, Happened::Started)]
    );
    let r = &finished(&events)[0];
    assert_eq!((r.outcome.clone(), r.attempts), (Outcome::Succeeded, 3));
    assert_eq!(
        r.earlier_attempts.iter().map(|a| (a.attempt, a.status, a.exit_code)).collect::<Vec<_>>(),
        [(1, JobStatus::Failed, Some(7)), (2, JobStatus::Failed, Some(7))]
    );
    assert_eq!(r.duration, 9 * S);
    assert!(summary.failures.is_empty(), "only the final outcome counts");
    let retries: Vec<(u32, Duration)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Retrying { attempt, delay, .. } => Some((*attempt, *delay)),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [(1, 2 * S), (2, 4 * S)]);
    let starts: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Started { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [1, 2, 3]);
    assert_eq!(
        backend.notes(0),
        [
            "attempt 1 of 4: exit code 7 after 1.000s; retrying in 2s",
            "attempt 2 of 4: exit code 7 after 1.000s; retrying in 4s",
            "attempt 3 of 4: exit code 0 after 1.000s",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_halt_policy_judges_only_final_outcomes() {
    // Job 0 fails once, then succeeds: under `halt: soon`, job 1 still runs.
    let backend = FakeBackend::new(|j, attempt| Script::exits(if j.num == 0 && attempt == 1 { 1 } else { 0 }, S));
    let mut opts = options(1, &backend);
    opts.halt = HaltPolicy::Soon;
    opts.retry = RetryPolicy::new(1, Duration::ZERO);
    let (summary, events) = run_jobs(opts, vec![job(0).into(), job(1).into()], no_stop()).await;
    let records = finished(&events);
    assert_eq!(
        records.iter().map(|r| (r.outcome.status(), r.attempts)).collect::<Vec<_>>(),
        [("succeeded", 2), ("succeeded", 1)]
    );
    assert!(!summary.stopped_early);
}

#[tokio::test(start_paused = true)]
async fn retries_run_out_and_the_last_outcome_is_the_jobs() {
    let backend = FakeBackend::new(|_, _| Script::exits(0, 10 * S));
    let mut opts = options(1, &backend);
    opts.retry = RetryPolicy::new(2, S);
    let mut spec = job(0);
    spec.timeout = Some(S);
    let (summary, events) = run_jobs(opts, vec![spec.into()], no_stop()).await;
    let r = &finished(&events)[0];
    assert_eq!(r.attempts, 3);
    assert_eq!(r.outcome.job_status(), JobStatus::TimedOut);
    assert_eq!(r.earlier_attempts.len(), 2);
    assert_eq!(summary.failures.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_job_past_its_time_limit_is_requeued_max_num_timeout_times_at_once() {
    // Job 0 always runs past its limit: 1 attempt + 2 requeues (no retries). Job 1 fails:
    // a requeue is for time limits only. Job 2 runs past its limit once, then finishes.
    let backend = FakeBackend::new(|j, attempt| match (j.num, attempt) {
        (0, _) => Script::exits(0, 10 * S),
        // Well inside its limit: an exit at the limit's own instant could be either.
        (1, _) => Script::exits(3, S / 2),
        (_, 1) => Script::exits(0, 10 * S),
        _ => Script::exits(0, S / 2),
    });
    let mut opts = options(1, &backend);
    opts.retry.requeue_timeouts = 2;
    let jobs: Vec<Submission> = (0..3)
        .map(|n| {
            let mut spec = job(n);
            spec.timeout = Some(S);
            spec.into()
        })
        .collect();
    let t0 = tokio::time::Instant::now();
    let (_, events) = run_jobs(opts, jobs, no_stop()).await;
    let records = finished(&events);
    let by_num = |n: u64| records.iter().find(|r| r.num == n).unwrap();
    assert_eq!((by_num(0).outcome.job_status(), by_num(0).attempts), (JobStatus::TimedOut, 3));
    assert_eq!((by_num(1).outcome.clone(), by_num(1).attempts), (Outcome::Failed { code: 3 }, 1));
    assert_eq!((by_num(2).outcome.clone(), by_num(2).attempts), (Outcome::Succeeded, 2));
    // No delay before a requeue: 3 limits of job 0, job 1's second, job 2's limit and run,
    // one after the other in the one slot (plus the grace periods of the ended attempts).
    assert!(t0.elapsed() < 30 * S, "{:?}", t0.elapsed());
    let notes = backend.notes(0);
    assert!(notes.iter().any(|n| n.contains("requeued (1 of max_num_timeout 2)")), "{notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("attempt 3 of 3:")), "{notes:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_the_retry_delay_ends_the_job_with_the_attempt_it_had() {
    let backend = FakeBackend::new(|_, _| Script::exits(2, S));
    let (stop_tx, stop_rx) = watch::channel(Stop::None);
    tokio::spawn(async move {
        tokio::time::sleep(3 * S).await;
        stop_tx
            .send_modify(|s| *s = (*s).max(Stop::Graceful { reason: StopReason::Interrupted, signal: libc::SIGTERM }));
        std::future::pending::<()>().await;
    });
    let mut opts = options(1, &backend);
    opts.retry = RetryPolicy::new(5, 10 * S);
    let (_, events) = run_jobs(opts, vec![job(0).into()], stop_rx).await;
    let r = &finished(&events)[0];
    assert_eq!((r.outcome.clone(), r.attempts, r.earlier_attempts.len()), (Outcome::Failed { code: 2 }, 1, 0));
    assert_eq!(r.duration, S, "the record ends with the attempt, not the interrupted delay");
    assert_eq!(backend.history().iter().filter(|e| e.what == Happened::Started).count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_job_that_cannot_start_is_not_retried_by_default() {
    let backend = FakeBackend::new(|_, _| Script::unstartable("no such program"));
    let mut opts = options(1, &backend);
    opts.retry = RetryPolicy::new(3, S);
    let (_, events) = run_jobs(opts, vec![job(0).into()], no_stop()).await;
    let r = &finished(&events)[0];
    assert_eq!((r.outcome.clone(), r.attempts), (Outcome::SpawnFailed { error: "no such program".into() }, 1));
    assert!(!events.iter().any(|e| matches!(e, Event::Started { .. })));
}

#[tokio::test(start_paused = true)]
async fn the_events_begin_and_end_the_run() {
    let backend = FakeBackend::new(|_, _| Script::exits(0, S));
    let mut opts = options(2, &backend);
    opts.info = RunInfo::new("fake run");
    opts.info.total = Some(2);
    let (_, events) = run_jobs(opts, vec![job(0).into(), job(1).into()], no_stop()).await;
    match events.first() {
        Some(Event::RunStarted(info)) => {
            assert_eq!(
                (info.label.as_str(), info.total, info.n_jobs, info.backend.as_str()),
                ("fake run", Some(2), 2, "fake")
            )
        }
        other => panic!("the first event is {other:?}"),
    }
    match events.last() {
        Some(Event::RunFinished { finished, succeeded, total, duration, .. }) => {
            assert_eq!((*finished, *succeeded, *total, *duration), (2, 2, Some(2), S));
        }
        other => panic!("the last event is {other:?}"),
    }
}

#[test]
fn stop_requests_escalate_by_order() {
    let graceful = Stop::Graceful { reason: StopReason::Interrupted, signal: 2 };
    assert!(Stop::None < Stop::Drain && Stop::Drain < graceful && graceful < Stop::Immediate);
    assert_eq!(Stop::Drain.max(graceful), graceful);
}

#[tokio::test(start_paused = true)]
async fn a_jobs_own_retry_policy_wins_over_the_runs() {
    let backend = FakeBackend::new(|_, attempt| Script::exits(if attempt < 2 { 1 } else { 0 }, S));
    let mut spec = job(0);
    spec.retry = Some(RetryPolicy::new(1, Duration::ZERO));
    let (_, events) = run_jobs(options(1, &backend), vec![spec.into(), job(1).into()], no_stop()).await;
    let records = finished(&events);
    assert_eq!(
        records.iter().map(|r| (r.outcome.status(), r.attempts)).collect::<Vec<_>>(),
        [("succeeded", 2), ("failed", 1)]
    );
}

#[tokio::test(start_paused = true)]
async fn admission_spaces_the_starts_and_holds_jobs_while_memory_is_short() {
    let backend = FakeBackend::new(|_, _| Script::exits(0, 10 * S));
    let t0 = Instant::now();
    let mut opts = options(3, &backend);
    opts.admission.start_delay = Some(S);
    // Short of memory for the first 5 s.
    opts.admission.min_free_memory = Some(1 << 30);
    opts.admission.probe = Some(Arc::new(move || {
        let free = if Instant::now() - t0 < 5 * S { 1 << 20 } else { 2 << 30 };
        SystemState { available_memory: Some(free), load: Some(0.5) }
    }));
    let (_, events) = run_jobs(opts, (0..3).map(|n| job(n).into()).collect(), no_stop()).await;
    assert_eq!(finished(&events).len(), 3);
    let mut starts: Vec<f64> = started_at(&backend, t0).into_iter().map(|(_, at)| at).collect();
    starts.sort_by(f64::total_cmp);
    // Held until 5 s (checked every 0.1 s), then one a second.
    assert_eq!(starts.len(), 3);
    assert!((5.0..5.2).contains(&starts[0]), "{starts:?}");
    assert_eq!([starts[1] - starts[0], starts[2] - starts[1]], [1.0, 1.0], "{starts:?}");
}

#[tokio::test(start_paused = true)]
async fn the_start_delay_counts_from_the_last_real_start() {
    // The first job takes 2.5 s to start (a warm interpreter getting ready); the others
    // start at once. Spaced from their admissions, the second and third would start at 1 s
    // and 2 s, before the first; spaced from real starts they follow it a second apart.
    let backend = FakeBackend::new(|spec, _| {
        let script = Script::exits(0, 10 * S);
        if spec.num == 0 { script.starting_after(S * 5 / 2) } else { script }
    });
    let t0 = Instant::now();
    let mut opts = options(3, &backend);
    opts.admission.start_delay = Some(S);
    let (_, events) = run_jobs(opts, (0..3).map(|n| job(n).into()).collect(), no_stop()).await;
    assert_eq!(finished(&events).len(), 3);
    let starts = started_at(&backend, t0);
    assert_eq!(starts, [(0, 2.5), (1, 3.5), (2, 4.5)]);
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_a_start_holds_the_turn_leaves_the_waiting_jobs_unstarted() {
    // Job 0 takes 5 s to start; jobs 1 and 2 wait for their turn. A drain at 2 s: job 0
    // (already starting) runs, the others never start.
    let backend = FakeBackend::new(|spec, _| {
        let script = Script::exits(0, S);
        if spec.num == 0 { script.starting_after(5 * S) } else { script }
    });
    let t0 = Instant::now();
    let mut opts = options(3, &backend);
    opts.admission.start_delay = Some(S);
    let (stop_tx, stop_rx) = watch::channel(Stop::None);
    tokio::spawn(async move {
        tokio::time::sleep(2 * S).await;
        stop_tx.send_modify(|s| *s = (*s).max(Stop::Drain));
        std::future::pending::<()>().await;
    });
    let (summary, events) = run_jobs(opts, (0..3).map(|n| job(n).into()).collect(), stop_rx).await;
    let starts = started_at(&backend, t0);
    assert_eq!(starts, [(0, 5.0)]);
    assert_eq!(finished(&events).iter().map(|r| r.num).collect::<Vec<_>>(), [0]);
    assert!(summary.stopped_early);
}

#[tokio::test(start_paused = true)]
async fn a_job_that_cannot_start_does_not_hold_the_next_one_back() {
    let backend = FakeBackend::new(|spec, _| {
        if spec.num == 0 { Script::unstartable("no such program").starting_after(S) } else { Script::exits(0, S) }
    });
    let t0 = Instant::now();
    let mut opts = options(2, &backend);
    opts.admission.start_delay = Some(10 * S);
    let (_, events) = run_jobs(opts, (0..2).map(|n| job(n).into()).collect(), no_stop()).await;
    assert_eq!(finished(&events).len(), 2);
    let starts = started_at(&backend, t0);
    // Job 0's failed start is no start: job 1 goes as soon as it failed, not 10 s later.
    assert_eq!(starts, [(1, 1.0)]);
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_a_job_is_held_back_leaves_it_unstarted() {
    let backend = FakeBackend::new(|_, _| Script::exits(0, S));
    let mut opts = options(1, &backend);
    opts.admission.max_load = Some(1.0);
    opts.admission.probe = Some(Arc::new(|| SystemState { available_memory: None, load: Some(8.0) }));
    let (stop_tx, stop_rx) = watch::channel(Stop::None);
    tokio::spawn(async move {
        tokio::time::sleep(3 * S).await;
        stop_tx.send_modify(|s| *s = (*s).max(Stop::Drain));
        std::future::pending::<()>().await;
    });
    let (summary, events) = run_jobs(opts, vec![job(0).into()], stop_rx).await;
    assert!(finished(&events).is_empty() && backend.history().is_empty());
    assert!(summary.stopped_early);
}
