//! The slots of a run, on threads of the runner's own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use orchestrator_config::HaltPolicy;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::admission::{StartGate, Starting};
use super::unit::{Ctx, lost_record, run_unit};
use super::{RunSummary, Source, Stop};
use crate::job::{JobRecord, Outcome, StopReason};

/// The slots of one run. Each slot is a task that takes a job, runs it, and takes the next,
/// on one of a few threads of our own (one per CPU at most), each with its own event loop:
/// a job's end wakes the thread of its slot, which starts the slot's next job at once,
/// without a round trip through a central dispatcher. On 2 cores with tiny jobs that
/// round trip (a second wake-up per job, on whichever CPU) was a tenth of the run time.
pub(super) struct Slots {
    pub(super) source: Source,
    pub(super) workers: Vec<tokio::runtime::Handle>,
    pub(super) tracker: tokio_util::task::TaskTracker,
    pub(super) n_jobs: usize,
    /// Slots made so far; a new one is made when all are busy (n_jobs can be huge, and
    /// only as many slots as jobs ever run at once are made).
    pub(super) made: AtomicUsize,
    pub(super) busy: AtomicUsize,
    /// The source said it has no more jobs.
    pub(super) exhausted: AtomicBool,
    pub(super) summary: Mutex<RunSummary>,
    pub(super) stop: watch::Sender<Stop>,
    /// Whose turn it is to start a job, and when the last one started (admission's
    /// `start_delay`).
    pub(super) start_gate: StartGate,
}

impl Slots {
    pub(super) fn add_slot(self: &Arc<Self>, slot: usize, ctx: &Arc<Ctx>) {
        let worker = &self.workers[slot % self.workers.len()];
        self.tracker.spawn_on(slot_loop(slot, self.clone(), ctx.clone()), worker);
    }

    /// A slot took a job: if no slot is left waiting for the next one, make one.
    fn took_job(self: &Arc<Self>, ctx: &Arc<Ctx>) {
        let busy = self.busy.fetch_add(1, Ordering::AcqRel) + 1;
        let made = self.made.load(Ordering::Acquire);
        if busy >= made
            && made < self.n_jobs
            && self.made.compare_exchange(made, made + 1, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.add_slot(made, ctx);
        }
    }

    /// A slot saw a stop before the source ran dry: jobs were left unstarted.
    fn stopped_early(&self) {
        if !self.exhausted.load(Ordering::Acquire) {
            self.summary.lock().unwrap_or_else(|e| e.into_inner()).stopped_early = true;
        }
    }

    fn account(&self, record: JobRecord, halt: HaltPolicy) {
        let mut summary = self.summary.lock().unwrap_or_else(|e| e.into_inner());
        summary.finished += 1;
        if record.is_success() {
            summary.succeeded += 1;
            return;
        }
        self.halt_after(&record, halt);
        summary.failures.push(record);
    }

    /// The halt policy's stop after a job that did not succeed. Also called by the job's
    /// unit as soon as its record is final, before the record is published: a slow event
    /// consumer must not let another slot start a job meanwhile.
    pub(super) fn halt_after(&self, record: &JobRecord, halt: HaltPolicy) {
        if record.is_success() || matches!(record.outcome, Outcome::Stopped { .. }) {
            return;
        }
        match halt {
            HaltPolicy::Soon => self.stop.send_modify(|s| *s = (*s).max(Stop::Drain)),
            HaltPolicy::Now => self
                .stop
                .send_modify(|s| *s = (*s).max(Stop::Graceful { reason: StopReason::Halt, signal: libc::SIGTERM })),
            _ => {}
        }
    }
}

/// One slot: take a job, start it, and once its processes are gone (it hands the slot back
/// before writing its log, journal line and events) take the next.
async fn slot_loop(slot: usize, slots: Arc<Slots>, ctx: Arc<Ctx>) {
    let mut stop = slots.stop.subscribe();
    let mut jobs: JoinSet<JobRecord> = JoinSet::new();
    let mut nums: HashMap<tokio::task::Id, u64> = HashMap::new();
    let collect = |done: Result<(tokio::task::Id, JobRecord), tokio::task::JoinError>,
                   nums: &mut HashMap<tokio::task::Id, u64>| {
        let record = match done {
            Ok((id, record)) => {
                nums.remove(&id);
                record
            }
            Err(e) => lost_record(nums.remove(&e.id()).unwrap_or(u64::MAX), slot, &e.to_string()),
        };
        slots.account(record, ctx.opts.halt);
    };
    loop {
        while let Some(done) = jobs.try_join_next_with_id() {
            collect(done, &mut nums);
        }
        if *stop.borrow_and_update() != Stop::None {
            slots.stopped_early();
            break;
        }
        let Some(sub) = slots.source.next(&mut stop).await else {
            if *stop.borrow() == Stop::None {
                slots.exhausted.store(true, Ordering::Release);
            } else {
                slots.stopped_early();
            }
            break;
        };
        // A stop (or another slot's failure under a halt policy) may have come while this
        // slot waited for the job or prepared it: then the job never starts (a caller
        // waiting on it gets `NotStarted`).
        if *stop.borrow_and_update() != Stop::None {
            drop(sub);
            slots.stopped_early();
            break;
        }
        let starting = if ctx.opts.admission.is_active() {
            match ctx.opts.admission.admit(&slots.start_gate, &mut stop).await {
                Some(starting) => starting,
                None => {
                    drop(sub);
                    slots.stopped_early();
                    break;
                }
            }
        } else {
            Starting::free()
        };
        // A stop that came as admission let the job through: it still never starts.
        if *stop.borrow_and_update() != Stop::None {
            drop((sub, starting));
            slots.stopped_early();
            break;
        }
        slots.took_job(&ctx);
        let (freed_tx, freed_rx) = oneshot::channel();
        let num = sub.spec.num;
        let handle = jobs.spawn(run_unit(sub, slot, ctx.clone(), stop.clone(), freed_tx, starting));
        nums.insert(handle.id(), num);
        let freed_early = freed_rx.await.is_ok();
        slots.busy.fetch_sub(1, Ordering::AcqRel);
        if !freed_early {
            // It ended without handing the slot back (a failure under a halt policy, a
            // timeout, a stop): its record must count before this slot goes on.
            while let Some(done) = jobs.join_next_with_id().await {
                collect(done, &mut nums);
            }
        }
    }
    while let Some(done) = jobs.join_next_with_id().await {
        collect(done, &mut nums);
    }
}

/// The slots' threads. Dropping this (at the run's end, or with its future) ends them and
/// waits for them: by then every task they ran is dropped, so the reaper's last owner is the
/// run's, whose drop kills whatever jobs are left before the process can go on (and exit).
pub(super) struct Workers {
    pub(super) handles: Vec<tokio::runtime::Handle>,
    threads: Vec<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Workers {
    /// `count` threads, each with a current-thread runtime; if none can be made, the
    /// caller's runtime does the work.
    pub(super) fn start(count: usize) -> Workers {
        let mut workers = Workers { handles: Vec::new(), threads: Vec::new() };
        for i in 0..count {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
            let started = std::thread::Builder::new().name(format!("orchestrator-slots-{i}")).spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::warn!("cannot start a runtime for the slots: {e}");
                        return;
                    }
                };
                if handle_tx.send(rt.handle().clone()).is_ok() {
                    rt.block_on(async {
                        let _ = shutdown_rx.await;
                    });
                }
            });
            match started.ok().and_then(|thread| Some((handle_rx.recv().ok()?, thread))) {
                Some((handle, thread)) => {
                    workers.handles.push(handle);
                    workers.threads.push((shutdown_tx, thread));
                }
                None => {
                    tracing::warn!("cannot start a thread for the slots; running them on the caller's runtime");
                    break;
                }
            }
        }
        if workers.handles.is_empty() {
            workers.handles.push(tokio::runtime::Handle::current());
        }
        workers
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Every thread is told first, so that they wind down together.
        let threads: Vec<_> = self
            .threads
            .drain(..)
            .map(|(shutdown, thread)| {
                drop(shutdown);
                thread
            })
            .collect();
        for thread in threads {
            // A panic there was already reported on stderr; nothing more to do with it.
            let _ = thread.join();
        }
    }
}
