//! The node side of the Slurm backend: this binary, started by a job array's batch script
//! as `<binary> __slurm-task <batch dir>`, runs the job of its array task with the same
//! child contract as the local backend (argv, cwd, the job's environment, the slot's
//! values, loky's thread limits from the task's CPUs), writes the job's files first, captures
//! its stdout and stderr into the job's log with the local line format, forwards the signals
//! it gets (Slurm's SIGTERM at the time limit or on `scancel`, a `--signal` warning) to the
//! job's process group, ends what the job left in its group, and writes a completion marker
//! (exit status, usage, byte counts, times, node) atomically: the supervisor's evidence of
//! how the program ended, with or without Slurm's accounting.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};

impl Done {
    pub(crate) fn start(&self) -> Option<DateTime<Utc>> {
        self.start_us.and_then(DateTime::from_timestamp_micros)
    }

    pub(crate) fn end(&self) -> Option<DateTime<Utc>> {
        self.end_us.and_then(DateTime::from_timestamp_micros)
    }
}
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use crate::backend::local::{THREAD_VARS, sys};
use crate::output::{self, Clock, LogWriter};
use orchestrator_worker::env as contract;

/// The first argument that makes the binary a Slurm task runner (not a user-facing command).
pub const ARG: &str = "__slurm-task";

/// The signal the supervisor sends a task (`scancel --batch --signal=40`) to have its job's
/// process group SIGKILLed: a SIGKILL from Slurm would kill this runner first, the job's
/// group (a group of its own) would outlive it until Slurm's KillWait, and no marker would
/// say how the job ended. SIGRTMIN+6 (glibc's SIGRTMIN is 34); never forwarded.
pub const KILL_REQUEST: i32 = 40;

/// One file the task writes before the program starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileEntry {
    pub(crate) path: PathBuf,
    /// The contents when they are UTF-8 (the `.hydra` YAML files always are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
    /// The contents otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) bytes: Option<Vec<u8>>,
}

/// What one array task runs: written by the supervisor into `<batch dir>/<task>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) num: u64,
    pub(crate) attempt: u32,
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    /// The job's own variables (the `ORCHESTRATOR_*` contract, `env_set`, ...).
    pub(crate) env: Vec<(OsString, OsString)>,
    /// The slot's values (`ORCHESTRATOR_SLOT`, `slot_env`), resolved for this task.
    pub(crate) slot_env: Vec<(String, String)>,
    pub(crate) slot: usize,
    pub(crate) cwd: Option<PathBuf>,
    /// Relative to the batch script's working directory (the supervisor's).
    pub(crate) log: PathBuf,
    pub(crate) files: Vec<FileEntry>,
    /// Set loky's thread limits from the task's CPUs (the local backend's `thread_limit`).
    pub(crate) thread_limit: bool,
    /// Between SIGTERM and SIGKILL for what the job leaves in its group.
    pub(crate) grace_ms: u64,
    /// Where the completion marker goes.
    pub(crate) marker: PathBuf,
}

/// The completion marker: how the task's program ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Done {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    #[serde(default)]
    pub(crate) core_dumped: bool,
    /// Why the program never ran (its files could not be written, it could not be exec'd).
    #[serde(default)]
    pub(crate) start_error: Option<String>,
    pub(crate) user_cpu: f64,
    pub(crate) sys_cpu: f64,
    pub(crate) max_rss_kib: u64,
    pub(crate) stdout_bytes: u64,
    pub(crate) stderr_bytes: u64,
    pub(crate) leftovers: u32,
    /// When the program started and ended, microseconds since the epoch (UTC).
    pub(crate) start_us: Option<i64>,
    pub(crate) end_us: Option<i64>,
    pub(crate) node: Option<String>,
    pub(crate) pid: Option<u32>,
    /// Where this attempt's records are in the job's log: `[from, to)` bytes.
    pub(crate) log_from: u64,
    pub(crate) log_to: u64,
    /// Signals the task got from outside (Slurm, scancel) and forwarded.
    #[serde(default)]
    pub(crate) got_signals: Vec<i32>,
}

/// Who decided whether a queued task runs its program: the task runner as it starts, or
/// the supervisor withdrawing the task (the halt policy `soon`). A task Slurm starts in the
/// instant the supervisor cancels it would otherwise be killed though it had started; with
/// the claim, whoever links `<task>.claim` first wins, and the other side abides by it: a
/// started task runs to its end, a withdrawn one never runs its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    Started,
    Withdrawn,
}

impl Claim {
    fn word(self) -> &'static str {
        match self {
            Claim::Started => "started",
            Claim::Withdrawn => "withdrawn",
        }
    }
}

/// The claim file of one start of the task whose completion marker is `marker`: its first
/// (`restarts` 0) or, after Slurm requeued it (a preemption, a node failure), its
/// `restarts`-th (`SLURM_RESTART_COUNT`, scontrol's `Restarts=`). Each start is claimed
/// anew: a requeued task waiting in the queue can be withdrawn like one that never ran.
pub(crate) fn claim_path(marker: &Path, restarts: u32) -> PathBuf {
    if restarts == 0 { marker.with_extension("claim") } else { marker.with_extension(format!("r{restarts}.claim")) }
}

/// Claim the task for `who`; returns who holds the claim (`who`, or the other side if it
/// was first). The file appears with its contents whole (a temporary file, synced, then
/// linked into place, which fails if the name exists, on NFS too); a loser that still reads
/// it empty (a network filesystem's cache) looks again for a moment.
pub(crate) fn claim(path: &Path, who: Claim) -> io::Result<Claim> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let made = (|| {
        let mut tmp = tempfile::Builder::new().prefix(".claim").tempfile_in(dir)?;
        io::Write::write_all(&mut tmp, who.word().as_bytes())?;
        tmp.as_file().sync_all()?;
        Ok::<_, io::Error>(tmp)
    })();
    let error = match made.map(|tmp| tmp.persist_noclobber(path)) {
        Ok(Ok(_)) => return Ok(who),
        Ok(Err(e)) => e.error,
        Err(e) => e,
    };
    // The name was taken (by the other side), or the file could not be made (a full disk,
    // a quota): the other side may hold the claim all the same.
    let exists = error.kind() == io::ErrorKind::AlreadyExists;
    for _ in 0..if exists { 25 } else { 1 } {
        if let Some(held) = held(path) {
            return Ok(held);
        }
        if exists {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    Err(if exists {
        io::Error::other(format!("{}: a claim that says neither started nor withdrawn", path.display()))
    } else {
        error
    })
}

/// Whether the latest start of the task whose completion marker is `marker` was claimed as
/// withdrawn (by a run that may have died before it cancelled the task).
pub(crate) fn withdrawn(marker: &Path) -> bool {
    let mut latest = None;
    for restarts in 0.. {
        match held(&claim_path(marker, restarts)) {
            Some(h) => latest = Some(h),
            None => break,
        }
    }
    latest == Some(Claim::Withdrawn)
}

/// Who holds the claim at `path`, if anyone does.
fn held(path: &Path) -> Option<Claim> {
    match std::fs::read_to_string(path).ok()?.trim() {
        "started" => Some(Claim::Started),
        "withdrawn" => Some(Claim::Withdrawn),
        _ => None,
    }
}

/// If this process was started as a Slurm task (its first argument is [`ARG`]), be one and
/// return the exit code to end with; `None` otherwise. The CLI calls it first thing.
pub fn serve_if_requested() -> Option<u8> {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == ARG) {
        let dir = args.next().map(PathBuf::from).unwrap_or_default();
        return Some(match main(&dir) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("orchestrator __slurm-task: {e}");
                120
            }
        });
    }
    None
}

fn main(dir: &Path) -> io::Result<u8> {
    let index = std::env::var("SLURM_ARRAY_TASK_ID")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| io::Error::other("SLURM_ARRAY_TASK_ID is not set: not an array task"))?;
    let path = dir.join(format!("{index}.json"));
    let text = std::fs::read(&path).map_err(|e| io::Error::other(format!("cannot read {}: {e}", path.display())))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
    let restarts = std::env::var("SLURM_RESTART_COUNT").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    match claim(&claim_path(&manifest.marker, restarts), Claim::Started) {
        Ok(Claim::Started) => {}
        // The supervisor withdrew it first (and cancels it): the job never runs here.
        Ok(Claim::Withdrawn) => {
            eprintln!("orchestrator __slurm-task: job #{} was withdrawn before it started", manifest.num);
            return Ok(0);
        }
        // Without a claim the program still runs; a withdrawal then cancels it as it can.
        Err(e) => eprintln!("orchestrator __slurm-task: cannot claim the task's start: {e}"),
    }
    // A requeued task runs again: the last run's marker is not this one's.
    let _ = std::fs::remove_file(&manifest.marker);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let done = runtime.block_on(run(manifest.clone()));
    write_marker(&manifest.marker, &done)?;
    Ok(match (done.code, done.signal) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(1),
        _ => 127,
    })
}

fn write_marker(path: &Path, done: &Done) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec(done).map_err(io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn node_name() -> Option<String> {
    std::env::var("SLURMD_NODENAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

async fn run(m: Manifest) -> Done {
    let clock = Clock::new();
    let node = node_name();
    let mut done = Done { node: node.clone(), ..Done::default() };
    // The job's dir (one level, as locally) and its log.
    if let Some(parent) = m.log.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::create_dir(parent);
    }
    done.log_from = file_len(&m.log);
    let mut log = LogWriter::deferred(m.log.clone(), clock);
    log.allow_open();
    let not_started = |log: &mut LogWriter, done: &mut Done, error: String| {
        log.note(&format!("could not start {}: {error}", m.program.to_string_lossy()));
        log.flush();
        done.start_error = Some(error);
        done.code = Some(127);
    };
    for f in &m.files {
        let written = (|| {
            if let Some(d) = f.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(d)?;
            }
            let contents: &[u8] = match (&f.text, &f.bytes) {
                (Some(t), _) => t.as_bytes(),
                (None, Some(b)) => b,
                (None, None) => &[],
            };
            std::fs::write(&f.path, contents)
        })();
        if let Err(e) = written {
            not_started(&mut log, &mut done, format!("cannot write {}: {e}", f.path.display()));
            drop(log);
            done.log_to = file_len(&m.log);
            return done;
        }
    }
    let mut cmd = Command::new(&m.program);
    cmd.args(&m.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    if let Some(cwd) = &m.cwd {
        cmd.current_dir(cwd);
    }
    if m.thread_limit {
        let cpus = std::env::var("SLURM_CPUS_PER_TASK")
            .ok()
            .or_else(|| std::env::var("SLURM_CPUS_ON_NODE").ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        for var in THREAD_VARS {
            if std::env::var_os(var).is_none() && !m.env.iter().any(|(k, _)| k == *var) {
                cmd.env(var, cpus.to_string());
            }
        }
    }
    for (k, v) in &m.slot_env {
        cmd.env(k, v);
    }
    for (k, v) in &m.env {
        cmd.env(k, v);
    }
    if m.attempt > 1 {
        cmd.env(contract::ATTEMPT, m.attempt.to_string());
    }
    // Slurm starts batch scripts with some signals ignored (SIGINT here): the job gets the
    // default dispositions, as a local job does, so that a forwarded signal acts.
    // SAFETY: only sigaction (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    // Our handlers before the job exists: a signal that comes meanwhile waits for it.
    let mut streams = signal_streams();
    // Slurm's own variables are in our environment already (inherited).
    done.start_us = Some(Utc::now().timestamp_micros());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            not_started(&mut log, &mut done, e.to_string());
            drop(log);
            done.log_to = file_len(&m.log);
            done.end_us = Some(Utc::now().timestamp_micros());
            return done;
        }
    };
    let pid = child.id();
    done.pid = Some(pid);
    let attempt = if m.attempt > 1 { format!(" (attempt {})", m.attempt) } else { String::new() };
    let mut argv = m.program.to_string_lossy().into_owned();
    for a in &m.args {
        argv.push(' ');
        argv.push_str(&a.to_string_lossy());
    }
    let task = match (std::env::var("SLURM_ARRAY_JOB_ID"), std::env::var("SLURM_ARRAY_TASK_ID")) {
        (Ok(a), Ok(t)) => format!(" (Slurm task {a}_{t})"),
        _ => String::new(),
    };
    let on = node.as_deref().map(|n| format!(" on {n}")).unwrap_or_default();
    log.note(&format!("started pid {pid} in slot {}{attempt}{on}{task}: {argv}", m.slot));
    let to_receiver = |fd: Option<std::os::fd::OwnedFd>| {
        let fd = fd?;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).ok()?;
        pipe::Receiver::from_owned_fd_unchecked(fd).ok()
    };
    let stdout = to_receiver(child.stdout.take().map(Into::into));
    let stderr = to_receiver(child.stderr.take().map(Into::into));
    let abandon = CancellationToken::new();
    let gate = std::sync::Arc::new(output::LogGate::default());
    let pump = tokio::spawn(output::pump(m.num, stdout, stderr, log, None, abandon.clone(), gate.clone()));
    // The std handle is not used to wait: wait4 gives the usage too.
    std::mem::forget(child);
    let waiter = tokio::task::spawn_blocking(move || wait4_blocking(pid));
    let mut got = Vec::new();
    let reaped = {
        let mut waiter = waiter;
        loop {
            let any_signal = async {
                let futs = streams.iter_mut().map(|(n, s)| {
                    let n = *n;
                    Box::pin(async move {
                        s.recv().await;
                        n
                    })
                });
                futures_select_all(futs.collect()).await
            };
            tokio::select! {
                r = &mut waiter => break r.ok().flatten(),
                n = any_signal => {
                    let n = if n == KILL_REQUEST { libc::SIGKILL } else { n };
                    got.push(n);
                    if let Ok(sig) = Signal::try_from(n) {
                        sys::signal_group(pid, sig);
                    }
                }
            }
        }
    };
    done.end_us = Some(Utc::now().timestamp_micros());
    done.got_signals = got;
    match reaped {
        Some(r) => {
            done.code = r.code;
            done.signal = r.signal;
            done.core_dumped = r.core_dumped;
            done.user_cpu = r.user_cpu;
            done.sys_cpu = r.sys_cpu;
            done.max_rss_kib = r.max_rss_kib;
        }
        None => done.code = Some(-1),
    }
    // What the job left in its group: SIGTERM, SIGKILL after the grace period.
    let left = sys::live_group_members(pid);
    if !left.is_empty() {
        done.leftovers = left.len() as u32;
        sys::signal_group(pid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(m.grace_ms);
        while sys::group_alive(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sys::signal_group(pid, Signal::SIGKILL);
    }
    gate.ended();
    let mut pump = pump;
    let (mut log, captured) = match tokio::time::timeout(Duration::from_secs(2), &mut pump).await {
        Ok(Ok(x)) => x,
        Ok(Err(_)) => (LogWriter::deferred(m.log.clone(), clock), output::Captured::default()),
        Err(_) => {
            abandon.cancel();
            match pump.await {
                Ok(x) => x,
                Err(_) => (LogWriter::deferred(m.log.clone(), clock), output::Captured::default()),
            }
        }
    };
    log.allow_open();
    log.flush();
    drop(log);
    done.stdout_bytes = captured.stdout;
    done.stderr_bytes = captured.stderr;
    done.log_to = file_len(&m.log);
    done
}

/// Handlers for the signals a task forwards to its job.
fn signal_streams() -> Vec<(i32, tokio::signal::unix::Signal)> {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
        SignalKind::from_raw(KILL_REQUEST),
    ];
    kinds.iter().filter_map(|k| Some((k.as_raw_value(), signal(*k).ok()?))).collect()
}

/// The first of `futs` to finish.
async fn futures_select_all<F: std::future::Future<Output = i32> + Unpin>(mut futs: Vec<F>) -> i32 {
    if futs.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(n) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(n);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn wait4_blocking(pid: u32) -> Option<sys::Reaped> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to locals.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        return Some(sys::Reaped::from_wait(status, &usage));
    }
}
