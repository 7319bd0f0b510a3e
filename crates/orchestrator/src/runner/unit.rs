//! One job, from its slot to its record: its attempts one after another (a retry after the
//! policy's delay), the end record in its log, one journal line and one
//! [`Event::Finished`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::admission::Starting;
use super::attempt::{self, Exited};
use super::{RunOptions, RunSummary, Stop, Submission};
use crate::backend::{Backend, JobLog, StartRequest, Usage};
use crate::event::Event;
use crate::job::{AttemptRecord, JobRecord, JobSpec, Outcome, StopReason};

/// Applies the halt policy to a final record.
pub(crate) type HaltHook = Box<dyn Fn(&JobRecord) + Send + Sync>;

/// What every job of a run shares.
pub(crate) struct Ctx {
    pub(crate) opts: RunOptions,
    backend: Arc<dyn Backend>,
    events: Option<tokio::sync::mpsc::Sender<crate::event::Event>>,
    /// Journal appends that failed, and the first error.
    journal_errors: Mutex<(u64, Option<String>)>,
    /// Applies the halt policy to a final record (set once the slots exist).
    pub(crate) halt: std::sync::OnceLock<HaltHook>,
}

impl Ctx {
    pub(crate) fn new(
        opts: RunOptions,
        backend: Arc<dyn Backend>,
        events: Option<tokio::sync::mpsc::Sender<crate::event::Event>>,
    ) -> Ctx {
        Ctx { opts, backend, events, journal_errors: Mutex::new((0, None)), halt: std::sync::OnceLock::new() }
    }

    /// A job's record did not reach the journal: said at once, and counted for the summary.
    fn journal_failed(&self, error: String) {
        tracing::error!("{error}");
        let mut errors = self.journal_errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.0 += 1;
        errors.1.get_or_insert(error);
    }

    /// The run is over: the journal is synced, and its errors go into the summary.
    pub(crate) fn finish(&self, summary: &mut RunSummary) {
        if let Some(j) = &self.opts.journal
            && let Err(e) = j.sync()
        {
            self.journal_failed(format!("cannot sync {}: {e}", j.path().display()));
        }
        (summary.journal_errors, summary.journal_error) =
            std::mem::take(&mut *self.journal_errors.lock().unwrap_or_else(|e| e.into_inner()));
    }

    async fn send(&self, event: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event).await;
        }
    }
}

/// The record of a job whose task was lost (it panicked): its fate is unknown.
pub(crate) fn lost_record(num: u64, slot: usize, why: &str) -> JobRecord {
    let now = Utc::now();
    JobRecord::unstarted(
        num,
        num.to_string(),
        slot,
        now,
        Outcome::Lost { error: format!("supervisor task failed: {why}") },
    )
}

/// Run one job in `slot`, reply to its submitter, and return its record. `freed` is sent as
/// soon as the slot can take its next job: once the job's last attempt has no process left
/// (before its log, journal line and events are written), when nothing else has to happen
/// first. `starting` is told when the job's first attempt has started.
pub(crate) async fn run_unit(
    sub: Submission,
    slot: usize,
    ctx: Arc<Ctx>,
    stop: watch::Receiver<Stop>,
    freed: oneshot::Sender<()>,
    starting: Starting,
) -> JobRecord {
    let Submission { spec, cancel, reply } = sub;
    let record = run_job(spec, slot, &ctx, stop, cancel, freed, starting).await;
    if let Some(reply) = reply {
        // The caller may have dropped its handle: nobody to tell.
        let _ = reply.send(record.clone());
    }
    record
}

/// How one attempt ended, with what it left.
struct AttemptEnd {
    outcome: Outcome,
    pid: Option<u32>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// When its last process was gone.
    ended: Instant,
    duration: Duration,
    usage: Usage,
    stdout_bytes: u64,
    stderr_bytes: u64,
    leftovers: u32,
    isolation: Option<&'static str>,
    warm: bool,
    /// The job's log, to add the end record to; `None` when the backend could not start the
    /// attempt (it wrote why itself).
    log: Option<Box<dyn JobLog>>,
    /// Where it ran, if not here.
    node: Option<String>,
    /// The slot the backend ran it in, if it decides that.
    slot: Option<usize>,
    /// When its program really started and ended, as the backend knows it (a cluster task).
    ran: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

async fn run_job(
    mut spec: JobSpec,
    slot: usize,
    ctx: &Ctx,
    mut stop: watch::Receiver<Stop>,
    cancel: CancellationToken,
    freed: oneshot::Sender<()>,
    mut starting: Starting,
) -> JobRecord {
    let start = Utc::now();
    let t0 = Instant::now();
    if let Some(error) = spec.setup_error.take() {
        return publish(ctx, JobRecord::unstarted_spec(&spec, slot, start, Outcome::SpawnFailed { error })).await;
    }
    if cancel.is_cancelled() {
        let outcome = Outcome::Stopped { reason: StopReason::Cancelled, code: None, signal: None };
        return publish(ctx, JobRecord::unstarted_spec(&spec, slot, start, outcome)).await;
    }
    let policy = spec.retry.unwrap_or(ctx.opts.retry);
    let mut files = std::mem::take(&mut spec.files);
    let mut freed = Some(freed);
    let mut earlier: Vec<AttemptRecord> = Vec::new();
    let mut number = 1;
    // Attempts that were requeues after a time limit (`requeue_timeouts`), not retries.
    let mut requeued = 0;
    loop {
        // At most this many in all: the last one takes the files.
        let last = number >= policy.max_attempts().saturating_add(policy.requeue_timeouts);
        let max_attempts = policy.max_attempts().saturating_add(requeued);
        // The last attempt takes the files; an earlier one a copy (only with retries on).
        let files = if last { std::mem::take(&mut files) } else { files.clone() };
        let mut end = run_attempt(
            &spec,
            files,
            slot,
            number,
            ctx,
            &mut stop,
            &cancel,
            if last { freed.take() } else { None },
            &mut starting,
        )
        .await;
        let stopping = *stop.borrow() != Stop::None || cancel.is_cancelled();
        let retries_used = number - 1 - requeued;
        let retry = !stopping && retries_used < policy.retries && policy.retries_after(&end.outcome);
        let requeue = !stopping && !retry && requeued < policy.requeue_timeouts && policy.requeues_after(&end.outcome);
        if retry || requeue {
            let delay = if retry { policy.delay_before(retries_used + 1) } else { Duration::ZERO };
            if let Some(log) = end.log.as_mut() {
                let again = if retry {
                    format!("retrying in {}", crate::job::humanize(delay))
                } else {
                    format!("requeued ({} of max_num_timeout {})", requeued + 1, policy.requeue_timeouts)
                };
                log.note(&format!(
                    "attempt {number} of {}: {} after {}; {again}",
                    max_attempts + u32::from(requeue),
                    end.outcome.describe(),
                    precise(end.duration),
                ));
            }
            if let Some(log) = end.log.take() {
                // A log that failed here fails the job's next attempt's log too, or not: the
                // record tells only of the last attempt's.
                let _ = log.close();
            }
            let record = AttemptRecord::new(number, &end.outcome, end.start, end.duration);
            ctx.send(Event::Retrying { num: spec.num, attempt: number, outcome: end.outcome.clone(), delay }).await;
            earlier.push(record);
            // A stop during the delay ends the job with the attempt that was to be retried.
            let interrupted = tokio::select! {
                () = tokio::time::sleep(delay) => false,
                () = super::stopped(&mut stop) => true,
                () = cancel.cancelled() => true,
            };
            if !interrupted {
                number += 1;
                requeued += u32::from(requeue);
                continue;
            }
            earlier.pop();
        }
        let mut note = format!("{} after {}", end.outcome.describe(), precise(end.duration));
        if end.leftovers > 0 {
            note.push_str(&format!("; ended {} leftover process(es) of the job", end.leftovers));
        }
        if number > 1 {
            note = format!("attempt {number} of {max_attempts}: {note}");
        }
        let log_error = end.log.take().and_then(|mut log| {
            log.note(&note);
            log.close()
        });
        // A cluster task's own times: it may have waited in the queue before it ran.
        let (start, end_time, duration) = match end.ran {
            Some((s, e)) => (s, e, (e - s).to_std().unwrap_or_default()),
            None => (start, end.end, end.ended - t0),
        };
        let record = JobRecord {
            num: spec.num,
            id: spec.id.clone(),
            overrides: std::mem::take(&mut spec.overrides),
            outcome: end.outcome,
            pid: end.pid,
            slot: end.slot.unwrap_or(slot),
            start,
            end: end_time,
            duration,
            user_cpu: end.usage.user_cpu,
            sys_cpu: end.usage.sys_cpu,
            max_rss_kib: end.usage.max_rss_kib,
            mem_peak_kib: end.usage.mem_peak_kib,
            stdout_bytes: end.stdout_bytes,
            stderr_bytes: end.stderr_bytes,
            leftover_processes: end.leftovers,
            log: std::mem::take(&mut spec.log_path),
            dir: spec.dir.take(),
            attempts: number,
            earlier_attempts: earlier,
            log_error,
            isolation: end.isolation,
            node: end.node,
            warm: end.warm,
        };
        return publish(ctx, record).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_attempt(
    spec: &JobSpec,
    files: Vec<crate::job::JobFile>,
    slot: usize,
    number: u32,
    ctx: &Ctx,
    stop: &mut watch::Receiver<Stop>,
    cancel: &CancellationToken,
    freed: Option<oneshot::Sender<()>>,
    starting: &mut Starting,
) -> AttemptEnd {
    let start = Utc::now();
    let t0 = Instant::now();
    let output = if ctx.opts.forward_output { ctx.events.clone() } else { None };
    let req = StartRequest { job: spec, files, slot, attempt: number, output };
    let mut attempt = match ctx.backend.start(req).await {
        Ok(a) => {
            starting.started();
            a
        }
        Err(e) => {
            starting.release();
            return AttemptEnd {
                outcome: Outcome::SpawnFailed { error: e.message },
                pid: None,
                start,
                end: Utc::now(),
                ended: Instant::now(),
                duration: t0.elapsed(),
                usage: Usage::default(),
                stdout_bytes: 0,
                stderr_bytes: 0,
                leftovers: 0,
                isolation: None,
                warm: false,
                log: None,
                node: None,
                slot: None,
                ran: None,
            };
        }
    };
    let pid = attempt.pid();
    let queued = ctx.backend.capabilities().queues;
    ctx.send(Event::Started { num: spec.num, pid, slot, at: start, attempt: number, queued }).await;
    let grace = ctx.opts.grace;
    // A backend that applies the time limit itself (from the task's real start) gets none here.
    let timeout = if ctx.backend.capabilities().enforces_timeout { None } else { spec.timeout };
    let exited: Exited = attempt::drive(&mut *attempt, timeout, grace, stop, cancel).await;
    let immediate = *stop.borrow() == Stop::Immediate;
    let leftovers = attempt.clean_up(if immediate { Duration::ZERO } else { grace }).await;
    // The job ends when its last process is gone; the bookkeeping below is ours.
    let end = Utc::now();
    let ended = Instant::now();
    let duration = ended - t0;
    // Every process of the job is gone: its slot can take the next job now, while this one
    // writes its log, journal line and events (the next job's process then starts on the
    // CPU this one left, instead of after our bookkeeping). Not under a halt policy: a
    // failure of any running job must reach the runner before anything else starts.
    if exited.cause.is_none()
        && leftovers == 0
        && ctx.opts.halt == orchestrator_config::HaltPolicy::Never
        && let Some(freed) = freed
        && freed.send(()).is_ok()
    {
        tokio::task::yield_now().await;
    }
    let outcome = exited.outcome(spec.timeout);
    let node = exited.exit.as_ref().ok().and_then(|e| e.node.clone());
    let ran_slot = exited.exit.as_ref().ok().and_then(|e| e.slot);
    let ran = exited.exit.as_ref().ok().and_then(|e| Some((e.started?, e.ended?)));
    // The program's own run time where the backend knows it (not the queueing before it).
    let duration = ran.and_then(|(s, e)| (e - s).to_std().ok()).unwrap_or(duration);
    let collected = attempt.collect(spec).await;
    // The backend's figures for the whole tree, where it has them; the leader's otherwise.
    let leader = exited.exit.as_ref().map(|e| e.usage).unwrap_or_default();
    let usage = match collected.usage {
        Some(tree) => Usage { max_rss_kib: leader.max_rss_kib.max(tree.max_rss_kib), ..tree },
        None => leader,
    };
    // A process that never ran the program (its set-up or exec failed) did not start.
    let outcome = match (&exited.exit, collected.start_error) {
        (Ok(_), Some(error)) => Outcome::SpawnFailed { error },
        _ => outcome,
    };
    AttemptEnd {
        outcome,
        pid,
        start,
        end,
        ended,
        duration,
        usage,
        stdout_bytes: collected.stdout_bytes,
        stderr_bytes: collected.stderr_bytes,
        leftovers,
        isolation: collected.isolation,
        warm: collected.warm,
        log: Some(collected.log),
        node,
        slot: ran_slot,
        ran,
    }
}

fn precise(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// Append the final record to the journal and send it as [`Event::Finished`].
async fn publish(ctx: &Ctx, record: JobRecord) -> JobRecord {
    if let Some(halt) = ctx.halt.get() {
        halt(&record);
    }
    if let Some(j) = &ctx.opts.journal
        && let Err(e) = j.append(&record)
    {
        ctx.journal_failed(format!("cannot append job #{}'s record to {}: {e}", record.num, j.path().display()));
    }
    if let Some(tx) = &ctx.events {
        let _ = tx.send(Event::Finished(Box::new(record.clone()))).await;
    }
    record
}
