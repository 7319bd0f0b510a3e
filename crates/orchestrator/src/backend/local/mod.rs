//! The local backend: one process group per job on this machine.
//!
//! What it does for each attempt: hands the job's payloads over as files, builds the job's
//! environment (ours, loky's thread limits, the slot's values, the job's own, its marker),
//! spawns the process (a vfork-style clone whose child writes the job's log and files before
//! it execs: see `sys::spawn`), pumps its stdout and stderr into the job's log, waits for it
//! through a pidfd, and ends what it left behind: its process group and the `setsid`
//! escapees that carry its marker (the supervisor is a child subreaper, so they come back to
//! it). Each job's processes are also the watchdog's to kill if the supervisor dies.

mod cgroup;
mod diagnose;
mod env;
mod leftovers;
mod payload;
mod reaper;
pub(crate) mod sys;
mod warm;
pub mod watchdog;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;
use orchestrator_worker::env as contract;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::diagnose::{argv_text, not_started_note, spawn_error};
pub use self::env::THREAD_VARS;
use self::leftovers::{end_cgroup, end_leftovers, end_strays, signal_tree};
use self::payload::{Placed, place_payloads};
use self::reaper::Reaper;
pub use self::warm::WarmOptions;
use super::{
    Attempt, Backend, BoxFuture, Capabilities, Collected, EndReason, Exit, ExitStatus, JobLog, LostError, StartError,
    StartRequest, Usage,
};
use crate::job::JobSpec;
use crate::output::{self, Clock, LogWriter};
use crate::runner::RunOptions;

/// Env var carrying the supervisor's private marker; it tells which job an adopted orphan
/// came from, so a daemonised grandchild is still ended with its job.
pub const JOB_KEY_VAR: &str = contract::JOB_KEY;

/// The start of the [`JOB_KEY_VAR`] entry (`NAME=value`) in the environment of every process
/// of every job started by the supervisor with process id `pid`: a watchdog that outlives the
/// supervisor finds what is left of its jobs by it.
pub fn job_marker_prefix(pid: u32) -> String {
    format!("{JOB_KEY_VAR}={pid}-")
}

/// Jobs as process groups on this machine (the default backend).
pub struct LocalBackend {
    ctx: Arc<Ctx>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend").field("run_key", &self.ctx.run_key).finish_non_exhaustive()
    }
}

/// What every attempt of a run shares.
struct Ctx {
    opts: RunOptions,
    reaper: Reaper,
    clock: Clock,
    run_key: String,
    own_pgid: u32,
    /// The environment every job starts from.
    env: env::BaseEnv,
    /// `PATH` lookups already done.
    programs: Mutex<HashMap<OsString, PathBuf>>,
    /// Where payloads are spilled, made on first need.
    spill: std::sync::OnceLock<Result<Arc<crate::spill::SpillStore>, String>>,
    /// The run's watchdog, if it has one; told the run is over in `run_ended`.
    watchdog: Mutex<Option<watchdog::Watchdog>>,
    /// A cgroup per slot, where the kernel lets us make them; else why not.
    cgroups: Result<cgroup::Cgroups, String>,
    /// Jobs with an attempt running: a marked process of any other job of the run is a
    /// leftover that got away from its job's end (marker mode only).
    running: Mutex<std::collections::HashSet<u64>>,
    /// When strays were last looked for (ms since the run started).
    strays_looked_at: std::sync::atomic::AtomicU64,
    /// The run's start, for `clock_ms`.
    started: Instant,
    /// The warm Python interpreters, when jobs may be forked from one.
    warm: Option<warm::Warm>,
}

impl LocalBackend {
    /// A backend for one run with `opts`: it makes this process a child subreaper (if
    /// `opts.subreaper`), takes our environment as every job's base, and starts the watchdog
    /// (if `opts.watchdog`).
    pub fn new(opts: &RunOptions) -> LocalBackend {
        if opts.subreaper
            && let Err(e) = sys::set_child_subreaper()
        {
            tracing::warn!("cannot become a child subreaper ({e}); daemonised grandchildren may outlive their job");
        }
        let base_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        // Starts with our pid (see `job_marker_prefix`); the time tells runs of one process apart.
        let run_key = format!("{}-{}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or(0));
        let cgroups = if opts.cgroups {
            cgroup::Cgroups::create(&run_key, opts.memory_limit)
        } else {
            Err("turned off (RunOptions::cgroups)".into())
        };
        match &cgroups {
            Ok(c) => tracing::debug!("jobs run in cgroups under {}", c.dir().display()),
            Err(why) => tracing::debug!("no cgroup per job ({why}): process groups and markers only"),
        }
        let watchdog = if opts.watchdog {
            let dirs: Vec<&std::path::Path> = match &cgroups {
                Ok(c) => std::iter::once(c.dir()).chain(c.v1_memory_dir()).collect(),
                Err(_) => Vec::new(),
            };
            let restore = cgroups.as_ref().ok().and_then(|c| c.delegated_from());
            match watchdog::Watchdog::start_full(&dirs, restore, None) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        "cannot start the watchdog ({e}): if this process is killed, what its jobs forked may outlive them"
                    );
                    None
                }
            }
        } else {
            None
        };
        let warm = opts.warm.clone().and_then(|w| {
            // A warm job is forked by the zygote's child, which exits at once: only a
            // subreaper gets the job as its own child.
            if opts.subreaper && sys::is_child_subreaper() {
                Some(warm::Warm::new(w, &run_key))
            } else {
                tracing::warn!(
                    "warm Python jobs need this process to be a child subreaper; jobs run as fresh processes"
                );
                None
            }
        });
        // Our children that are not jobs': the reaper need not look at them each time a job ends.
        let foreign = opts.foreign_children.iter().copied().chain(watchdog.as_ref().map(|w| w.pid())).collect();
        LocalBackend {
            ctx: Arc::new(Ctx {
                env: env::BaseEnv::new(&base_env, opts.thread_limit),
                opts: opts.clone(),
                reaper: Reaper::new(foreign),
                clock: Clock::new(),
                run_key,
                own_pgid: sys::own_pgid(),
                programs: Mutex::new(HashMap::new()),
                spill: std::sync::OnceLock::new(),
                watchdog: Mutex::new(watchdog),
                cgroups,
                running: Mutex::new(Default::default()),
                strays_looked_at: std::sync::atomic::AtomicU64::new(0),
                started: Instant::now(),
                warm,
            }),
        }
    }

    /// How jobs' processes are kept together here, and why: for `--verbose`.
    pub fn isolation(&self) -> String {
        match &self.ctx.cgroups {
            Ok(c) => format!(
                "a cgroup per slot under {} (leftovers found by cgroup.procs, ended by cgroup.kill); {}",
                c.dir().display(),
                match c.memory_dir() {
                    Ok(place) => format!("memory measured{} in {place}", self.limit_text()),
                    Err(why) => format!("no memory cgroup ({why})"),
                }
            ),
            Err(why) => format!("process groups and markers (no cgroup: {why})"),
        }
    }

    fn limit_text(&self) -> String {
        self.ctx
            .opts
            .memory_limit
            .map(|b| format!(" and limited to {} MiB a job", b.div_ceil(1 << 20)))
            .unwrap_or_default()
    }

    /// Whether each job gets a memory cgroup (its peak memory, the memory limit, OOM kills),
    /// or why not.
    pub fn memory(&self) -> Result<(), String> {
        match &self.ctx.cgroups {
            Ok(c) => c.memory_dir().map(|_| ()).map_err(str::to_owned),
            Err(why) => Err(format!("no cgroup per job: {why}")),
        }
    }

    /// See [`warm::Warm::wait_for`].
    fn warm_wait(&self, req: &StartRequest<'_>) -> Option<super::BoxFuture<'static, ()>> {
        let ctx = &self.ctx;
        let warm = ctx.warm.as_ref()?;
        if !warm::is_python(&req.job.program) {
            return None;
        }
        let program = ctx.resolve(&req.job.program).ok()?;
        let marker = OsString::from(format!("{JOB_KEY_VAR}={}.{}", ctx.run_key, req.job.num));
        let env = ctx.env.for_job(req.job, req.slot, &ctx.opts.slot_env, &marker, Vec::new()).ok()?;
        warm.wait_for(req.job, &program, &env)
    }

    fn start_now(&self, req: StartRequest<'_>) -> Result<Box<dyn Attempt>, StartError> {
        let ctx = &self.ctx;
        let spec = req.job;
        let marker = OsString::from(format!("{JOB_KEY_VAR}={}.{}", ctx.run_key, spec.num));
        // The job's process creates the log (see `setup_steps`); until it is past that, the
        // records wait in memory. On the paths where no process starts, the log is ours to make.
        let mut log = LogWriter::deferred(spec.log_path.clone(), ctx.clock);
        let joined = match &ctx.cgroups {
            Ok(c) => match c.join(req.slot) {
                Ok(j) => Some(j),
                // Its memory limit cannot be applied: it does not run without it.
                Err(e) if ctx.opts.memory_limit.is_some() => {
                    let error = format!("cannot make slot {}'s cgroups, so no memory limit: {e}", req.slot);
                    log.allow_open();
                    log.note(&format!("could not start: {error}"));
                    return Err(StartError::new(error));
                }
                Err(e) => {
                    tracing::warn!("cannot make slot {}'s cgroup ({e}); job #{} runs without one", req.slot, spec.num);
                    None
                }
            },
            Err(_) => None,
        };
        let placed = match place_payloads(spec, ctx) {
            Ok(p) => p,
            Err(e) => {
                log.allow_open();
                log.note(&format!("could not hand over payloads: {e}"));
                return Err(StartError::new(e.to_string()));
            }
        };
        let spawned = ctx.resolve(&spec.program).and_then(|program| {
            let argv: Vec<OsString> = std::iter::once(spec.program.clone()).chain(spec.args.iter().cloned()).collect();
            let mut extra = Vec::with_capacity(2);
            if let Some(json) = &placed.json {
                extra.push((OsString::from(contract::ARGS), OsString::from(json)));
            }
            if req.attempt > 1 {
                extra.push((OsString::from(contract::ATTEMPT), OsString::from(req.attempt.to_string())));
            }
            let env = ctx.env.for_job(spec, req.slot, &ctx.opts.slot_env, &marker, extra)?;
            if let Some(warm) = ctx.warm.as_ref().filter(|_| warm::is_python(&spec.program)) {
                // Its files first: a forked job has no set-up steps of its own.
                write_files(&spec.log_path, &req.files)?;
                let procs: Vec<&OsStr> =
                    joined.iter().flat_map(|j| &j.procs).map(|p| OsStr::from_bytes(p.as_bytes())).collect();
                if let Some(w) = warm.start(spec, &program, &env, &procs, &|pid| ctx.reaper.register(pid)) {
                    return Ok(Child {
                        pid: w.pid,
                        stdout: w.stdout,
                        stderr: w.stderr,
                        start: StartWatch::Warm(w.report),
                    });
                }
            }
            let mut setup = setup_steps(&spec.log_path, req.files)?;
            if let Some(j) = &joined {
                // First: everything the job does and starts is in its cgroups. The slot's (v2)
                // it is made in, or moved into by `spawn`; a v1 memory cgroup it joins itself.
                for procs in j.procs.iter().skip(1).rev() {
                    setup.insert(0, sys::SetupStep::File(procs.clone(), b"0".to_vec()));
                }
            }
            let cgroup = joined.as_ref().and_then(|j| {
                Some(sys::IntoCgroup { dir: std::os::fd::AsFd::as_fd(&*j.fd), procs: j.procs.first()?.clone() })
            });
            let s = ctx.reaper.spawn(sys::SpawnRequest {
                program: &program,
                argv: &argv,
                env,
                cwd: spec.cwd.as_deref(),
                setup,
                cgroup,
            })?;
            Ok(Child { pid: s.pid, stdout: s.stdout, stderr: s.stderr, start: StartWatch::Exec(s.exec) })
        });
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let error = spawn_error(spec, &e);
                log.allow_open();
                log.note(&not_started_note(spec, &error));
                placed.release(ctx);
                return Err(StartError::new(error));
            }
        };
        let Child { pid, stdout, stderr, start } = child;
        let warm = matches!(start, StartWatch::Warm(_));
        if warm {
            // Its files are written: the log may be opened at once.
            log.allow_open();
        }
        // Read ends of fresh pipes, already non-blocking: no need for tokio's checks.
        let stdout = pipe::Receiver::from_owned_fd_unchecked(stdout).ok();
        let stderr = pipe::Receiver::from_owned_fd_unchecked(stderr).ok();
        let attempt = if req.attempt > 1 { format!(" (attempt {})", req.attempt) } else { String::new() };
        log.note(&format!("started pid {pid} in slot {}{attempt}: {}", req.slot, argv_text(spec)));
        if joined.is_none() {
            ctx.running.lock().unwrap_or_else(|e| e.into_inner()).insert(spec.num);
        }
        let abandon = CancellationToken::new();
        let gate = Arc::new(output::LogGate::default());
        let pump = tokio::spawn(output::pump(spec.num, stdout, stderr, log, req.output, abandon.clone(), gate.clone()));
        Ok(Box::new(LocalAttempt {
            ctx: self.ctx.clone(),
            pid,
            marker,
            start,
            warm,
            started_at: Utc::now(),
            // When to look whether the child has exec'd, to free its start-up memory (a job
            // that ends sooner frees it at its end).
            release_at: (!warm).then(|| tokio::time::Instant::now() + Duration::from_millis(50)),
            gate,
            pump,
            abandon,
            pidfd: sys::async_pidfd(pid),
            placed,
            reaped: false,
            slot: req.slot,
            num: spec.num,
            memory: joined.as_ref().and_then(|j| j.memory.clone()),
            cgroup: joined.map(|j| j.dir),
            usage: None,
            oom_kills: 0,
        }))
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            writes_files_before_exec: true,
            local_processes: true,
            forwards_signals: true,
            enforces_timeout: false,
            queues: false,
        }
    }

    fn start<'a>(&'a self, req: StartRequest<'a>) -> BoxFuture<'a, Result<Box<dyn Attempt>, StartError>> {
        // A warm job whose interpreter is still starting waits for it (without blocking the
        // slot's thread), then starts as any other.
        if let Some(wait) = self.warm_wait(&req) {
            return Box::pin(async move {
                wait.await;
                self.start_now(req)
            });
        }
        // Spawning does not wait: done now, in the caller's task (the pump is spawned there).
        Box::pin(std::future::ready(self.start_now(req)))
    }

    fn stop_requested(&self) {
        if let Some(warm) = &self.ctx.warm {
            warm.stop_requested();
        }
    }

    fn run_ended(&self) {
        let ctx = &self.ctx;
        if let Some(warm) = &ctx.warm {
            warm.shut_down();
        }
        // Whatever is still marked as ours (a job's escapee that outlived every check) ends now.
        let prefix = format!("{JOB_KEY_VAR}={}.", ctx.run_key);
        for pid in ctx.reaper.sweep(&|entry| entry.as_encoded_bytes().starts_with(prefix.as_bytes())) {
            sys::signal_pid(pid, Signal::SIGKILL);
        }
        if let Some(w) = ctx.watchdog.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.finish();
        }
    }
}

/// One job's process group.
struct LocalAttempt {
    ctx: Arc<Ctx>,
    pid: u32,
    marker: OsString,
    /// Tells whether the job ever ran its program.
    start: StartWatch,
    /// Forked from a warm interpreter.
    warm: bool,
    /// When its process was started (a warm job may have waited for its interpreter before).
    started_at: chrono::DateTime<Utc>,
    release_at: Option<tokio::time::Instant>,
    gate: Arc<output::LogGate>,
    pump: JoinHandle<(LogWriter, output::Captured)>,
    abandon: CancellationToken,
    pidfd: Option<AsyncFd<OwnedFd>>,
    placed: Placed,
    /// The leader has been waited for: its pid may be reused now.
    reaped: bool,
    slot: usize,
    num: u64,
    /// The slot's cgroup, which holds every process of the job.
    cgroup: Option<std::path::PathBuf>,
    /// The whole tree's CPU time, from the cgroup, once it is empty.
    usage: Option<Usage>,
    /// The slot's memory cgroup, where it has one.
    memory: Option<cgroup::MemoryWatch>,
    /// Processes of the job the kernel killed for memory (known once its cgroup is empty).
    oom_kills: u64,
}

impl Attempt for LocalAttempt {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn wait(&mut self) -> BoxFuture<'_, Result<Exit, LostError>> {
        Box::pin(async move {
            let reaped = loop {
                tokio::select! {
                    r = wait_exit(self.pidfd.as_ref(), self.pid) => break r,
                    () = sleep_until(self.release_at), if self.release_at.is_some() => {
                        if self.start.release_if_running() {
                            self.gate.execd(); // the log can be opened now
                            self.release_at = None;
                        } else {
                            self.release_at = Some(tokio::time::Instant::now() + Duration::from_millis(50));
                        }
                    }
                }
            };
            self.reaped = true;
            self.ctx.reaper.release_leader(self.pid);
            let r = reaped.map_err(|e| LostError::new(format!("lost track of pid {}: {e}", self.pid)))?;
            let status = match (r.code, r.signal) {
                (Some(code), _) => ExitStatus::Code(code),
                (None, Some(signal)) => ExitStatus::Signal { signal, core_dumped: r.core_dumped },
                (None, None) => ExitStatus::Code(-1),
            };
            // Killed by the kernel for going over the memory limit: its own outcome.
            let status = match status {
                ExitStatus::Signal { signal: libc::SIGKILL, .. }
                    if self.memory.as_ref().is_some_and(|m| m.oom_kills() > 0) =>
                {
                    ExitStatus::Ended { reason: EndReason::OutOfMemory, code: None, signal: Some(libc::SIGKILL) }
                }
                other => other,
            };
            let usage =
                Usage { user_cpu: r.user_cpu, sys_cpu: r.sys_cpu, max_rss_kib: r.max_rss_kib, mem_peak_kib: None };
            let mut exit = Exit::new(status);
            exit.usage = usage;
            if self.warm {
                // Its own times, not the wait for the warm interpreter that came first.
                exit.started = Some(self.started_at);
                exit.ended = Some(Utc::now());
            }
            Ok(exit)
        })
    }

    fn signal(&mut self, signal: i32) {
        let sig = Signal::try_from(signal).unwrap_or(Signal::SIGTERM);
        // The group's id is the leader's pid: safe to use until the leader is reaped.
        if !self.reaped {
            sys::signal_group(self.pid, sig);
        }
        match &self.cgroup {
            // Every process of the job, whatever group or environment it has now.
            Some(dir) if sig == Signal::SIGKILL => cgroup::kill(dir),
            Some(dir) => {
                for pid in cgroup::tree_members(dir) {
                    sys::signal_pid(pid, sig);
                }
            }
            None => {
                let marker = self.marker.as_os_str();
                for orphan in self.ctx.reaper.sweep(&|e| e == marker) {
                    signal_tree(orphan, sig, self.ctx.own_pgid);
                }
            }
        }
    }

    fn clean_up(&mut self, grace: Duration) -> BoxFuture<'_, u32> {
        Box::pin(async move {
            let found = match (&self.cgroup, &self.ctx.cgroups) {
                (Some(dir), Ok(cgroups)) => {
                    let (found, empty) = end_cgroup(&self.ctx, dir, grace).await;
                    if empty {
                        let mem_peak_kib = self.memory.as_ref().and_then(|m| m.peak_kib());
                        self.oom_kills = self.memory.as_ref().map_or(0, |m| m.oom_kills());
                        self.usage = cgroups.job_cpu(self.slot).map(|(user_cpu, sys_cpu)| Usage {
                            user_cpu,
                            sys_cpu,
                            max_rss_kib: 0,
                            mem_peak_kib,
                        });
                        if !cgroups.tidy(self.slot) {
                            tracing::warn!(
                                "slot {}'s cgroup keeps cgroups job #{} made in it; the slot gets a new one",
                                self.slot,
                                self.num
                            );
                            cgroups.retire(self.slot);
                        }
                    } else {
                        cgroups.retire(self.slot);
                    }
                    found
                }
                _ => {
                    let found = end_leftovers(&self.ctx, self.pid, &self.marker, grace).await;
                    self.ctx.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.num);
                    end_strays(&self.ctx);
                    found
                }
            };
            self.ctx.reaper.release_group(self.pid);
            found
        })
    }

    fn collect<'a>(self: Box<Self>, job: &'a JobSpec) -> BoxFuture<'a, Collected> {
        Box::pin(async move {
            let LocalAttempt { ctx, pump, abandon, gate, start, placed, cgroup, usage, warm, oom_kills, .. } = *self;
            // Only now: the pump, woken by this, would wake us before the next job could start.
            gate.ended();
            let mut pump = pump;
            // Every process that held the pipes is gone now, so EOF is due; a process that
            // escaped both the group and the marker could still hold them, so do not wait
            // forever.
            let (mut log, captured, panicked) = match tokio::time::timeout(Duration::from_secs(2), &mut pump).await {
                Ok(joined) => pump_output(job, joined),
                Err(_) => {
                    abandon.cancel();
                    let (mut log, captured, panicked) = pump_output(job, pump.await);
                    log.note("stopped reading output: a process outside the job's group still holds its stdout/stderr");
                    (log, captured, panicked)
                }
            };
            if let Some(e) = panicked {
                log.note(&format!("output capture failed: {e}"));
            }
            if oom_kills > 0 {
                let limit = ctx
                    .opts
                    .memory_limit
                    .map(|b| format!(" (its limit is {} MiB)", b.div_ceil(1 << 20)))
                    .unwrap_or_default();
                log.note(&format!("the kernel killed {oom_kills} process(es) of the job for memory{limit}"));
            }
            // A child that could not write its files or exec its program exited with 127 and
            // left us its errno.
            let start_error = start.failure(job);
            if let Some(error) = &start_error {
                log.note(&not_started_note(job, error));
            }
            placed.release(&ctx);
            Collected {
                log: Box::new(Log(log)),
                stdout_bytes: captured.stdout,
                stderr_bytes: captured.stderr,
                start_error,
                usage,
                isolation: Some(if cgroup.is_some() { "cgroup" } else { "process-group" }),
                warm,
            }
        })
    }
}

/// A started job's process, however it was started.
struct Child {
    pid: u32,
    stdout: OwnedFd,
    stderr: OwnedFd,
    start: StartWatch,
}

/// Whether a started job ever ran its program.
enum StartWatch {
    /// Spawned: whether it exec'd.
    Exec(sys::ExecWatch),
    /// Forked from a warm interpreter: what it said if its set-up failed.
    Warm(warm::Report),
}

impl StartWatch {
    /// See [`sys::ExecWatch::release_if_running`]; a forked job holds none of our memory.
    fn release_if_running(&mut self) -> bool {
        match self {
            StartWatch::Exec(e) => e.release_if_running(),
            StartWatch::Warm(_) => true,
        }
    }

    /// Why the job never ran its program, once it has exited.
    fn failure(&self, job: &JobSpec) -> Option<String> {
        match self {
            StartWatch::Exec(e) => e.failure().map(|f| match &f.setup_path {
                Some(path) => format!("cannot write {}: {}", path.display(), f.error),
                None => spawn_error(job, &f.error),
            }),
            StartWatch::Warm(r) => r.failure(),
        }
    }
}

/// What a spawned job's set-up steps do (see [`setup_steps`]), done here for a job forked
/// from a warm interpreter: the log's directory, the log, the job's files.
fn write_files(log: &std::path::Path, files: &[crate::job::JobFile]) -> io::Result<()> {
    for step in setup_steps(log, files.to_vec())? {
        let (path, done) = match &step {
            sys::SetupStep::Dir(p) => (
                p,
                std::fs::create_dir(OsStr::from_bytes(p.to_bytes()))
                    .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) }),
            ),
            sys::SetupStep::File(p, contents) => (p, std::fs::write(OsStr::from_bytes(p.to_bytes()), contents)),
            sys::SetupStep::Keep(p) => (
                p,
                std::fs::OpenOptions::new().append(true).create(true).open(OsStr::from_bytes(p.to_bytes())).map(drop),
            ),
        };
        done.map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.to_string_lossy())))?;
    }
    Ok(())
}

/// The job's log as the scheduler sees it: notes are kept with the job's records until it is
/// closed, so that a quiet job's log is written in one go.
struct Log(LogWriter);

impl JobLog for Log {
    fn note(&mut self, text: &str) {
        self.0.note(text);
    }

    fn close(mut self: Box<Self>) -> Option<String> {
        // The process is gone, so whatever it made of the log is there. A job that ended
        // without opening it (no output, within the first tick) gets its records in one write.
        self.0.allow_open();
        self.0.error().map(str::to_owned)
    }
}

impl Ctx {
    /// Milliseconds since the run started.
    fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn resolve(&self, program: &OsStr) -> io::Result<PathBuf> {
        let mut cache = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(program) {
            return Ok(p.clone());
        }
        let resolved = sys::resolve_program(program, self.env.path.as_deref())?;
        cache.insert(program.to_os_string(), resolved.clone());
        Ok(resolved)
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait_exit(pidfd: Option<&AsyncFd<OwnedFd>>, pid: u32) -> io::Result<sys::Reaped> {
    loop {
        match pidfd {
            Some(fd) => {
                let mut guard = fd.readable().await?;
                if let Some(r) = sys::try_wait4(pid)? {
                    return Ok(r);
                }
                guard.clear_ready();
            }
            None => {
                if let Some(r) = sys::try_wait4(pid)? {
                    return Ok(r);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What the job's process does before it runs the program: create its log (one that exists,
/// from an earlier attempt of the job, is appended to), then write `files`; each file's
/// directory first when it differs from the previous file's.
fn setup_steps(log: &std::path::Path, files: Vec<crate::job::JobFile>) -> io::Result<Vec<sys::SetupStep>> {
    let mut steps = Vec::with_capacity(files.len() + 3);
    let mut last_dir: Option<PathBuf> = None;
    let log = (log.to_path_buf(), None);
    for (path, contents) in std::iter::once(log).chain(files.into_iter().map(|f| (f.path, Some(f.contents)))) {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = dir
            && last_dir.as_deref() != Some(d)
        {
            steps.push(sys::SetupStep::Dir(sys::cstring(d.as_os_str().as_bytes())?));
            last_dir = Some(d.to_path_buf());
        }
        let path = sys::cstring(path.into_os_string().into_vec())?;
        steps.push(match contents {
            Some(contents) => sys::SetupStep::File(path, contents),
            None => sys::SetupStep::Keep(path),
        });
    }
    Ok(steps)
}

/// What the pump hands back, and its panic if it had one (then the log is opened again for
/// the end record).
fn pump_output(
    spec: &JobSpec,
    joined: Result<(LogWriter, output::Captured), tokio::task::JoinError>,
) -> (LogWriter, output::Captured, Option<tokio::task::JoinError>) {
    match joined {
        Ok((log, captured)) => (log, captured, None),
        Err(e) => {
            let mut log = LogWriter::deferred(spec.log_path.clone(), Clock::new());
            log.allow_open();
            (log, output::Captured::default(), Some(e))
        }
    }
}
