//! The local backend: one process group per job on this machine.
//!
//! What it does for each attempt: hands the job's payloads over as files, builds the job's
//! environment (ours, loky's thread limits, the slot's values, the job's own, its marker),
//! spawns the process (a vfork-style clone whose child writes the job's log and files before
//! it execs: see `sys::spawn`), pumps its stdout and stderr into the job's log, waits for it
//! through a pidfd, and ends what it left behind: its process group and the `setsid`
//! escapees that carry its marker (the supervisor is a child subreaper, so they come back to
//! it). Each job's processes are also the watchdog's to kill if the supervisor dies.

mod reaper;
pub(crate) mod sys;
pub mod watchdog;

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
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

use self::reaper::Reaper;
use super::{
    Attempt, Backend, BoxFuture, Capabilities, Collected, Exit, ExitStatus, JobLog, LostError, StartError,
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

/// Thread-count variables that numeric libraries read; set per job as joblib's loky does.
pub const THREAD_VARS: &[&str] = &[
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
];

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
    /// Our environment when the run started, as the `NAME=value` C strings every job
    /// starts from (made once, shared by every job).
    base_env: Arc<[CString]>,
    /// Indices in `base_env` of each name in it (an environment can hold a name twice, and
    /// `getenv` would see the first).
    base_index: HashMap<OsString, Vec<usize>>,
    /// `PATH` in that environment, for looking up programs.
    path_var: Option<OsString>,
    /// The thread-count variables to add to every job (those not in `base_env`).
    thread_env: Vec<(OsString, OsString)>,
    /// `PATH` lookups already done.
    programs: Mutex<HashMap<OsString, PathBuf>>,
    /// Where payloads are spilled, made on first need.
    spill: std::sync::OnceLock<Result<Arc<crate::spill::SpillStore>, String>>,
    /// The run's watchdog, if it has one; told the run is over in `run_ended`.
    watchdog: Mutex<Option<watchdog::Watchdog>>,
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
        let watchdog = if opts.watchdog {
            match watchdog::Watchdog::start() {
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
        let base_env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let (shared, base_index) = shared_env(&base_env);
        // Our children that are not jobs': the reaper need not look at them each time a job ends.
        let foreign = opts.foreign_children.iter().copied().chain(watchdog.as_ref().map(|w| w.pid())).collect();
        LocalBackend {
            ctx: Arc::new(Ctx {
                thread_env: thread_env(opts.thread_limit, &base_env),
                opts: opts.clone(),
                reaper: Reaper::new(foreign),
                clock: Clock::new(),
                // Starts with our pid (see `job_marker_prefix`); the time tells runs of one
                // process apart.
                run_key: format!("{}-{}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or(0)),
                own_pgid: sys::own_pgid(),
                path_var: path_var(&base_env),
                base_env: shared,
                base_index,
                programs: Mutex::new(HashMap::new()),
                spill: std::sync::OnceLock::new(),
                watchdog: Mutex::new(watchdog),
            }),
        }
    }

    fn start_now(&self, req: StartRequest<'_>) -> Result<Box<dyn Attempt>, StartError> {
        let ctx = &self.ctx;
        let spec = req.job;
        let marker = OsString::from(format!("{JOB_KEY_VAR}={}.{}", ctx.run_key, spec.num));
        // The job's process creates the log (see `setup_steps`); until it is past that, the
        // records wait in memory. On the paths where no process starts, the log is ours to make.
        let mut log = LogWriter::deferred(spec.log_path.clone(), ctx.clock);
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
            let env = job_env(spec, req.slot, ctx, &marker, extra)?;
            let setup = setup_steps(&spec.log_path, req.files)?;
            ctx.reaper.spawn(sys::SpawnRequest { program: &program, argv: &argv, env, cwd: spec.cwd.as_deref(), setup })
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
        let sys::Spawned { pid, stdout, stderr, exec } = child;
        // Read ends of fresh pipes, already non-blocking: no need for tokio's checks.
        let stdout = pipe::Receiver::from_owned_fd_unchecked(stdout).ok();
        let stderr = pipe::Receiver::from_owned_fd_unchecked(stderr).ok();
        let attempt = if req.attempt > 1 { format!(" (attempt {})", req.attempt) } else { String::new() };
        log.note(&format!("started pid {pid} in slot {}{attempt}: {}", req.slot, argv_text(spec)));
        let abandon = CancellationToken::new();
        let gate = Arc::new(output::LogGate::default());
        let pump = tokio::spawn(output::pump(spec.num, stdout, stderr, log, req.output, abandon.clone(), gate.clone()));
        Ok(Box::new(LocalAttempt {
            ctx: self.ctx.clone(),
            pid,
            marker,
            exec,
            // When to look whether the child has exec'd, to free its start-up memory (a job
            // that ends sooner frees it at its end).
            release_at: Some(tokio::time::Instant::now() + Duration::from_millis(50)),
            gate,
            pump,
            abandon,
            pidfd: sys::async_pidfd(pid),
            placed,
            reaped: false,
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
        }
    }

    fn start<'a>(&'a self, req: StartRequest<'a>) -> BoxFuture<'a, Result<Box<dyn Attempt>, StartError>> {
        // Spawning does not wait: done now, in the caller's task (the pump is spawned there).
        Box::pin(std::future::ready(self.start_now(req)))
    }

    fn run_ended(&self) {
        let ctx = &self.ctx;
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
    exec: sys::ExecWatch,
    release_at: Option<tokio::time::Instant>,
    gate: Arc<output::LogGate>,
    pump: JoinHandle<(LogWriter, output::Captured)>,
    abandon: CancellationToken,
    pidfd: Option<AsyncFd<OwnedFd>>,
    placed: Placed,
    /// The leader has been waited for: its pid may be reused now.
    reaped: bool,
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
                        if self.exec.release_if_running() {
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
            let usage = Usage { user_cpu: r.user_cpu, sys_cpu: r.sys_cpu, max_rss_kib: r.max_rss_kib };
            let mut exit = Exit::new(status);
            exit.usage = usage;
            Ok(exit)
        })
    }

    fn signal(&mut self, signal: i32) {
        let sig = Signal::try_from(signal).unwrap_or(Signal::SIGTERM);
        // The group's id is the leader's pid: safe to use until the leader is reaped.
        if !self.reaped {
            sys::signal_group(self.pid, sig);
        }
        let marker = self.marker.as_os_str();
        for orphan in self.ctx.reaper.sweep(&|e| e == marker) {
            signal_tree(orphan, sig, self.ctx.own_pgid);
        }
    }

    fn clean_up(&mut self, grace: Duration) -> BoxFuture<'_, u32> {
        Box::pin(async move {
            let found = end_leftovers(&self.ctx, self.pid, &self.marker, grace).await;
            self.ctx.reaper.release_group(self.pid);
            found
        })
    }

    fn collect<'a>(self: Box<Self>, job: &'a JobSpec) -> BoxFuture<'a, Collected> {
        Box::pin(async move {
            let LocalAttempt { ctx, pump, abandon, gate, exec, placed, .. } = *self;
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
            // A child that could not write its files or exec its program exited with 127 and
            // left us its errno.
            let start_error = exec.failure().map(|f| match &f.setup_path {
                Some(path) => format!("cannot write {}: {}", path.display(), f.error),
                None => spawn_error(job, &f.error),
            });
            if let Some(error) = &start_error {
                log.note(&not_started_note(job, error));
            }
            placed.release(&ctx);
            Collected {
                log: Box::new(Log(log)),
                stdout_bytes: captured.stdout,
                stderr_bytes: captured.stderr,
                start_error,
            }
        })
    }
}

/// The job's log as the scheduler sees it: notes are kept with the job's records until it is
/// closed, so that a quiet job's log is written in one go.
struct Log(LogWriter);

impl JobLog for Log {
    fn note(&mut self, text: &str) {
        self.0.note(text);
    }

    fn close(mut self: Box<Self>) {
        // The process is gone, so whatever it made of the log is there. A job that ended
        // without opening it (no output, within the first tick) gets its records in one write.
        self.0.allow_open();
    }
}

impl Ctx {
    fn resolve(&self, program: &OsStr) -> io::Result<PathBuf> {
        let mut cache = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(program) {
            return Ok(p.clone());
        }
        let resolved = sys::resolve_program(program, self.path_var.as_deref())?;
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

/// End whatever the job left behind: its process group and adopted orphans carrying its
/// marker. TERM first, SIGKILL after `grace`. Returns how many processes it found.
async fn end_leftovers(ctx: &Ctx, pgid: u32, marker: &OsStr, grace: Duration) -> u32 {
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
fn signal_tree(pid: u32, sig: Signal, own_pgid: u32) {
    sys::signal_pid(pid, sig);
    if let Some((_, pgid)) = sys::proc_state(pid)
        && pgid == pid
        && pgid != own_pgid
    {
        sys::signal_group(pgid, sig);
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

/// loky's thread limits, for the variables the user did not set.
fn thread_env(limit: Option<usize>, base_env: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    let Some(n) = limit else { return Vec::new() };
    THREAD_VARS
        .iter()
        .filter(|var| !base_env.iter().any(|(k, _)| k == *var))
        .map(|var| (OsString::from(var), OsString::from(n.to_string())))
        .collect()
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

/// The first `PATH` in `env`, as `getenv` would find it.
fn path_var(env: &[(OsString, OsString)]) -> Option<OsString> {
    env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone())
}

/// `base` as `NAME=value` C strings, and the index of each name among them.
fn shared_env(base: &[(OsString, OsString)]) -> (Arc<[CString]>, HashMap<OsString, Vec<usize>>) {
    let mut entries = Vec::with_capacity(base.len());
    let mut index: HashMap<OsString, Vec<usize>> = HashMap::with_capacity(base.len());
    for (k, v) in base {
        // Our own environment cannot hold a NUL byte; skip rather than trust that.
        if let Ok(c) = CString::new(env_entry(k, v)) {
            index.entry(k.clone()).or_default().push(entries.len());
            entries.push(c);
        }
    }
    (entries.into(), index)
}

/// The job's environment: ours, then (each replacing an inherited value of the same name)
/// loky's thread limits the user did not set, the slot's values, the job's own variables,
/// its marker and `extra`.
fn job_env(
    spec: &JobSpec,
    slot: usize,
    ctx: &Ctx,
    marker: &OsStr,
    extra: Vec<(OsString, OsString)>,
) -> io::Result<sys::Env> {
    use std::borrow::Cow;
    // Borrowed where possible: this runs for every job, between a slot freeing and the next
    // job's clone.
    let mut overlay: Vec<(&OsStr, Cow<'_, OsStr>)> = Vec::with_capacity(ctx.thread_env.len() + spec.env.len() + 4);
    for (var, value) in &ctx.thread_env {
        if !spec.env.iter().any(|(k, _)| k == var) {
            overlay.push((var, Cow::Borrowed(value)));
        }
    }
    overlay.push((OsStr::new(contract::SLOT), Cow::Owned(slot.to_string().into())));
    for (name, value) in &ctx.opts.slot_env {
        overlay.push((OsStr::new(name), Cow::Owned(value.for_slot(slot).into())));
    }
    // A name with `=` (or none) would set another variable than the one asked for.
    if let Some((bad, _)) = spec.env.iter().find(|(k, _)| k.is_empty() || k.as_bytes().contains(&b'=')) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("environment variable name `{}` is empty or contains `=`", bad.to_string_lossy()),
        ));
    }
    overlay.extend(spec.env.iter().map(|(k, v)| (k.as_os_str(), Cow::Borrowed(v.as_os_str()))));
    if let Some((k, v)) = marker.to_str().and_then(|m| m.split_once('=')) {
        overlay.push((OsStr::new(k), Cow::Borrowed(OsStr::new(v))));
    }
    for (k, v) in &extra {
        overlay.push((k, Cow::Borrowed(v)));
    }
    let replaced: Vec<usize> = overlay.iter().filter_map(|(k, _)| ctx.base_index.get(*k)).flatten().copied().collect();
    let mut own = Vec::with_capacity(overlay.len());
    // Later overlay entries win: emit only the last value of each name.
    for (i, (k, v)) in overlay.iter().enumerate() {
        if !overlay[i + 1..].iter().any(|(k2, _)| k2 == k) {
            own.push(sys::cstring(env_entry(k, v))?);
        }
    }
    Ok(sys::Env::new(ctx.base_env.clone(), replaced, own))
}

fn env_entry(name: &OsStr, value: &OsStr) -> Vec<u8> {
    // Room for the `=` and the C string's NUL.
    let mut e = Vec::with_capacity(name.len() + value.len() + 2);
    e.extend_from_slice(name.as_bytes());
    e.push(b'=');
    e.extend_from_slice(value.as_bytes());
    e
}

/// The log's note for a job whose program never ran: our spawn failed, or the child's set-up
/// or exec did.
fn not_started_note(spec: &JobSpec, error: &str) -> String {
    format!("could not start {}: {error}", spec.program.to_string_lossy())
}

fn spawn_error(spec: &JobSpec, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::E2BIG) => format!("{e}: {}", too_big(spec)),
        Some(libc::ENOENT) if spec.cwd.as_ref().is_some_and(|d| !d.is_dir()) => {
            format!(
                "working directory {} does not exist",
                spec.cwd.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
            )
        }
        _ => e.to_string(),
    }
}

/// Which of Linux's two limits an `execve` that failed with E2BIG went over: 128 KiB for
/// one argument or environment string, or `ARG_MAX` for all of them together.
fn too_big(spec: &JobSpec) -> String {
    const ONE: usize = 128 * 1024;
    let head = |s: &OsStr| s.to_string_lossy().chars().take(40).collect::<String>();
    if let Some(a) = spec.args.iter().find(|a| a.len() >= ONE) {
        return format!("argument `{}...` is {} bytes, over the 128 KiB one argument may hold", head(a), a.len());
    }
    if let Some((k, v)) = spec.env.iter().find(|(k, v)| k.len() + v.len() + 1 >= ONE) {
        return format!(
            "environment variable {} is {} bytes, over the 128 KiB one may hold",
            k.to_string_lossy(),
            k.len() + v.len() + 1
        );
    }
    let strings = |it: &mut dyn Iterator<Item = usize>| it.map(|n| n + 1 + std::mem::size_of::<usize>()).sum::<usize>();
    let argv = strings(&mut spec.args.iter().map(|a| a.len()));
    let env = strings(&mut std::env::vars_os().chain(spec.env.iter().cloned()).map(|(k, v)| k.len() + v.len() + 1));
    let limit = nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX).ok().flatten().unwrap_or(0);
    format!(
        "the arguments ({argv} bytes) and the environment (about {env} bytes) are over what a program may get in all (ARG_MAX, {limit} bytes here); pass big values as files (`key=@path`, or a lower max_nbytes)"
    )
}

fn argv_text(spec: &JobSpec) -> String {
    let mut s = spec.program.to_string_lossy().into_owned();
    for a in &spec.args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Payload files handed to one job, released when it ends.
#[derive(Default)]
struct Placed {
    json: Option<String>,
    shared: Vec<String>,
    own: Vec<PathBuf>,
}

impl Placed {
    fn release(self, ctx: &Ctx) {
        if let Some(Ok(store)) = ctx.spill.get() {
            for h in &self.shared {
                store.release(h);
            }
        }
        for f in &self.own {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn place_payloads(spec: &JobSpec, ctx: &Ctx) -> Result<Placed, crate::spill::SpillError> {
    use crate::spill::{SpillError, SpillStore};
    if spec.payloads.is_empty() {
        return Ok(Placed::default());
    }
    let mut names = HashSet::new();
    if let Some(p) = spec.payloads.iter().find(|p| !names.insert(p.name.as_str())) {
        return Err(SpillError::DuplicateName(p.name.clone()));
    }
    let store = ctx.spill.get_or_init(|| match &ctx.opts.spill {
        Some(s) => Ok(s.clone()),
        None => {
            let here = std::env::current_dir().unwrap_or_default();
            let folder = crate::temp::resolve_temp_folder(ctx.opts.temp_folder.as_deref(), &here);
            SpillStore::create(&folder.path, ctx.opts.mmap_mode).map(Arc::new).map_err(|e| e.to_string())
        }
    });
    let store = store
        .as_ref()
        .map_err(|e| SpillError::Io { path: PathBuf::from("temp_folder"), source: io::Error::other(e.clone()) })?;
    // Own copies are numbered: two payloads of one name, or two jobs given the
    // same number, must not share a file.
    static OWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mode = crate::spill::mode_name(ctx.opts.mmap_mode);
    let mut placed = Placed::default();
    let mut json = serde_json::Map::new();
    let mut place = |p: &crate::job::Payload, placed: &mut Placed| -> Result<(), SpillError> {
        let size = p.bytes.len() as u64;
        let (path, shared) = if ctx.opts.max_nbytes.is_some_and(|m| size > m) {
            let s = store.put_bytes(&p.bytes, false)?;
            placed.shared.push(s.hash);
            (s.path, true)
        } else {
            // Not shared: the job's own copy, next to the shared ones, gone when it ends.
            let seq = OWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = crate::spill::sanitize(&p.name);
            let path = store.dir().join(format!("job-{}-{}-{seq}-{name}", ctx.run_key, spec.num));
            std::fs::write(&path, &p.bytes).map_err(|source| SpillError::Io { path: path.clone(), source })?;
            placed.own.push(path.clone());
            (path, false)
        };
        let info = crate::spill::ArgInfo { path, mode, size, shared };
        json.insert(p.name.clone(), serde_json::to_value(&info).unwrap_or_default());
        Ok(())
    };
    for p in &spec.payloads {
        if let Err(e) = place(p, &mut placed) {
            // What was placed before the failure is handed back now, not at the sweep's end.
            placed.release(ctx);
            return Err(e);
        }
    }
    placed.json = Some(serde_json::Value::Object(json).to_string());
    Ok(placed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_config::SlotValue;

    fn ctx(base: &[(&str, &str)], opts: RunOptions) -> Ctx {
        let base_env: Vec<(OsString, OsString)> =
            base.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect();
        let (shared, base_index) = shared_env(&base_env);
        Ctx {
            thread_env: thread_env(opts.thread_limit, &base_env),
            path_var: path_var(&base_env),
            base_env: shared,
            base_index,
            opts,
            reaper: Reaper::new(HashSet::new()),
            clock: Clock::new(),
            run_key: "k".into(),
            own_pgid: 1,
            programs: Mutex::new(HashMap::new()),
            spill: std::sync::OnceLock::new(),
            watchdog: Mutex::new(None),
        }
    }

    #[test]
    fn job_env_layers_in_order_and_respects_user_thread_settings() {
        let mut opts = RunOptions::new(2);
        opts.thread_limit = Some(3);
        opts.slot_env = vec![("GPU".into(), SlotValue::PerSlot(vec!["4".into(), "5".into()]))];
        // An environment can hold a name twice: both copies give way to the slot's value.
        let ctx = ctx(&[("PATH", "/bin"), ("GPU", "older"), ("OMP_NUM_THREADS", "8"), ("GPU", "old")], opts);
        let mut spec = JobSpec::new(0, "x", vec![], "l");
        spec.env = vec![("MKL_NUM_THREADS".into(), "1".into()), ("A".into(), "1".into()), ("A".into(), "2".into())];
        let extra = vec![("ORCHESTRATOR_ARGS".into(), "{}".into())];
        let env = job_env(&spec, 1, &ctx, OsStr::new("ORCHESTRATOR_JOB_KEY=k.0"), extra).unwrap();
        let env: Vec<String> = env.entries().map(|e| e.to_str().unwrap().to_owned()).collect();
        let get = |k: &str| env.iter().filter(|e| e.starts_with(&format!("{k}="))).cloned().collect::<Vec<_>>();
        assert_eq!(get("PATH"), ["PATH=/bin"]);
        assert_eq!(get("OMP_NUM_THREADS"), ["OMP_NUM_THREADS=8"], "inherited setting wins");
        assert_eq!(get("MKL_NUM_THREADS"), ["MKL_NUM_THREADS=1"], "job setting wins");
        assert_eq!(get("OPENBLAS_NUM_THREADS"), ["OPENBLAS_NUM_THREADS=3"]);
        assert_eq!(get("GPU"), ["GPU=5"], "slot value replaces the inherited one");
        assert_eq!(get("A"), ["A=2"], "the last value of a name wins");
        assert_eq!(get("ORCHESTRATOR_SLOT"), ["ORCHESTRATOR_SLOT=1"]);
        assert_eq!(get("ORCHESTRATOR_JOB_KEY"), ["ORCHESTRATOR_JOB_KEY=k.0"]);
        assert_eq!(get("ORCHESTRATOR_ARGS"), ["ORCHESTRATOR_ARGS={}"]);
    }

    #[test]
    fn an_environment_name_with_an_equals_sign_is_refused() {
        let ctx = ctx(&[("PATH", "/bin")], RunOptions::new(1));
        for name in ["A=B", ""] {
            let mut spec = JobSpec::new(0, "x", vec![], "l");
            spec.env = vec![(name.into(), "x".into())];
            let e = job_env(&spec, 0, &ctx, OsStr::new("K=k.0"), Vec::new()).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains("is empty or contains `=`"), "{e}");
        }
    }
}
