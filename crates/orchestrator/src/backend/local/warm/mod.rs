//! Warm Python jobs: a fork server ("zygote") per sweep, so that a Python job costs a fork
//! instead of an interpreter start and its imports, and is still its own process.
//!
//! The zygote is `zygote.py` (embedded), started with the jobs' interpreter and flags the
//! first time a job that it can run comes (one per interpreter, flags, script or module and
//! cwd). It imports the preload list, checks that forking is safe (one thread, no CUDA),
//! and then forks one process per request, handed the job's argv, environment, cwd and pipe
//! fds over a Unix socket. It double-forks, so that the job is this process's own child (we
//! are a child subreaper): from there on a warm job is supervised exactly as a fresh one
//! (pidfd and `wait4` with its rusage, `killpg`, its slot's cgroup, the end of what it left),
//! by the same [`LocalAttempt`](super::LocalAttempt).
//!
//! A job runs fresh instead, with the reason in the supervisor's log, when it is not a
//! Python script or module, when a variable read at interpreter start-up differs from the
//! zygote's, or when the zygote cannot serve: preloading failed or made forking unsafe (said
//! once, as a warning, for the whole sweep), or it died (restarted up to 3 times).

mod python;

pub(super) use self::python::is_python;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use serde_json::{Value, json};

use self::python::{PyCommand, Target};
use crate::job::JobSpec;

/// The zygote's source, read by [`BOOT`] from its stdin.
const ZYGOTE_PY: &str = include_str!("zygote.py");

/// What `python -c` runs: the zygote's source, from stdin (so that `ps` shows a short
/// command line), under a name its tracebacks and the jobs' can be told by.
/// Its settings (JSON) come first, on a line of their own.
const BOOT: &str = "import sys; _src = sys.stdin.read(); exec(compile(_src, '<orchestrator-zygote>', 'exec'))";

/// The fd the zygote finds its control socket on.
const ZYGOTE_FD: RawFd = 3;

/// How long the zygote may take to import the preload list.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a fork request may take (`ORCHESTRATOR_WARM_FORK_TIMEOUT_MS` shortens it, for
/// the test of a zygote that answers too late).
fn fork_timeout() -> Duration {
    std::env::var("ORCHESTRATOR_WARM_FORK_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// How many times a zygote that died is started again before its jobs run fresh for good.
const MAX_RESTARTS: u32 = 3;

/// Requests larger than this (a huge environment or argv) run fresh: one datagram each.
const MAX_REQUEST: usize = 128 * 1024;

/// The warm mode's settings (`hydra.launcher.orchestrator.warm`, `preload`, `fast_exit`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmOptions {
    /// What the zygote imports before it forks: module names (`numpy`), `module:function`
    /// (called with no arguments: a warm-up hook), or a `.py` path (run as a module that is
    /// not `__main__`, so that its imports are done and its task is not run).
    pub preload: Vec<String>,
    /// Jobs end with `os._exit` once the app returns (stdio flushed), skipping the
    /// interpreter's teardown (8-28 ms of CPU a job measured here); the app's atexit handlers and files it
    /// did not flush or close are then lost.
    pub fast_exit: bool,
}

impl WarmOptions {
    /// Warm mode with nothing preloaded beyond the job's own script.
    pub fn new() -> WarmOptions {
        WarmOptions::default()
    }
}

/// Which zygote a job needs: its interpreter and flags, and its script (an absolute path,
/// so that jobs each in a dir of their own, `hydra.job.chdir`, share one) or its module
/// with the dir it is imported from (`sys.path[0]` is the cwd for `-m`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    program: PathBuf,
    flags: Vec<OsString>,
    target: Target,
    /// Where the zygote runs (and, for a module, what `sys.path[0]` is).
    dir: PathBuf,
}

/// The run's zygotes.
pub(super) struct Warm {
    opts: WarmOptions,
    /// Marker entry (`NAME=value`) for the zygote's environment: the zygote and every
    /// process forked from it carry it in `/proc/<pid>/environ` (a fork keeps the
    /// environment it started with), so the watchdog and the run's end find them. Padded:
    /// each job writes its own marker over it in place (see `zygote.py`).
    marker: OsString,
    zygotes: Mutex<HashMap<Key, Arc<Entry>>>,
    /// Set when the run is stopping: jobs no longer wait for a zygote that is starting.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// One zygote's state, and whether it has settled (serves, or is off) for the jobs that
/// wait for it (`tokio::sync::watch` works across the slots' runtimes).
struct Entry {
    state: Mutex<State>,
    settled: tokio::sync::watch::Sender<bool>,
    /// The pid of the zygote being started (0: none), for a run that ends meanwhile.
    starting: std::sync::atomic::AtomicU32,
}

impl Entry {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum State {
    /// Being started (on a thread of its own); this many times before.
    Starting,
    Serving(Zygote),
    /// It cannot serve; jobs run fresh.
    Off,
}

/// A started job: its pid (it leads its own process group and is our child), its output
/// pipes (read ends, non-blocking) and its start report.
pub(super) struct Started {
    pub(super) pid: u32,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
    pub(super) report: Report,
}

/// Why a warm job never ran its app (its set-up failed), written by it before it exited.
pub(super) struct Report(OwnedFd);

impl Report {
    /// What the job said, once it has exited; `None` if it ran the app.
    pub(super) fn failure(&self) -> Option<String> {
        let mut text = Vec::new();
        let mut file = std::fs::File::from(self.0.try_clone().ok()?);
        let _ = file.read_to_end(&mut text);
        (!text.is_empty()).then(|| format!("its warm start failed: {}", String::from_utf8_lossy(&text)))
    }
}

impl Warm {
    pub(super) fn new(opts: WarmOptions, run_key: &str) -> Warm {
        Warm {
            opts,
            // Room for a job's marker (`<run key>.<job number>`) in place of this one.
            marker: OsString::from(format!("{}={run_key}.zygote{}", super::JOB_KEY_VAR, "_".repeat(20))),
            zygotes: Mutex::new(HashMap::new()),
            stopping: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The run is stopping: a job waiting for a zygote to start waits no more.
    pub(super) fn stop_requested(&self) {
        self.stopping.send_replace(true);
    }

    /// What `spec` would run in a warm interpreter, which one, and in which cwd; `None`: it
    /// runs fresh.
    fn job(spec: &JobSpec, program: &Path) -> Option<(Key, PyCommand, PathBuf)> {
        if !python::is_python(&spec.program) {
            return None;
        }
        let cmd = match python::parse(&spec.args) {
            Ok(c) => c,
            Err(why) => {
                tracing::debug!("job #{} runs fresh: {why}", spec.num);
                return None;
            }
        };
        let here = std::env::current_dir().ok()?;
        let cwd = spec.cwd.as_ref().map_or_else(|| here.clone(), |c| here.join(c));
        let (target, dir) = match &cmd.target {
            Target::Path(p) => (Target::Path(cwd.join(p).into_os_string()), here),
            Target::Module(m) => (Target::Module(m.clone()), cwd.clone()),
        };
        Some((Key { program: program.to_path_buf(), flags: cmd.flags.clone(), target, dir }, cmd, cwd))
    }

    /// If `spec`'s zygote is starting (started now, if it is the first job that needs it),
    /// a future that resolves once it serves or is off, or the run is stopping: the job
    /// waits for it rather than import everything itself meanwhile. `None`: no need to wait.
    pub(super) fn wait_for(
        &self,
        spec: &JobSpec,
        program: &Path,
        env: &super::sys::Env,
    ) -> Option<super::super::BoxFuture<'static, ()>> {
        let (key, _, _) = Self::job(spec, program)?;
        let entry = {
            let mut zygotes = self.zygotes.lock().unwrap_or_else(|e| e.into_inner());
            match zygotes.get(&key) {
                Some(e) => e.clone(),
                None => {
                    let entry = Arc::new(Entry {
                        state: Mutex::new(State::Starting),
                        settled: tokio::sync::watch::Sender::new(false),
                        starting: std::sync::atomic::AtomicU32::new(0),
                    });
                    zygotes.insert(key.clone(), entry.clone());
                    self.launch(&entry, key, pairs(env), 0, None);
                    entry
                }
            }
        };
        let mut settled = entry.settled.subscribe();
        if *settled.borrow() {
            return None;
        }
        let mut stopping = self.stopping.subscribe();
        Some(Box::pin(async move {
            tokio::select! {
                _ = settled.wait_for(|s| *s) => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        }))
    }

    /// Start `spec` from its zygote, if it serves: `None` means run it fresh (why is
    /// logged). `program` is the resolved interpreter, `env` the job's whole environment,
    /// `cgroups` the `cgroup.procs` files it joins first, `register` takes the job on (it is
    /// called before the job may run anything).
    pub(super) fn start(
        &self,
        spec: &JobSpec,
        program: &Path,
        env: &super::sys::Env,
        cgroups: &[&OsStr],
        register: &dyn Fn(u32),
    ) -> Option<Started> {
        let (key, cmd, cwd) = Self::job(spec, program)?;
        let entry = self.zygotes.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned()?;
        let env = pairs(env);
        let mut state = entry.lock();
        let State::Serving(zygote) = &mut *state else { return None };
        if let Some(name) = zygote.startup_differs(&env) {
            tracing::debug!(
                "job #{} runs fresh: its {} differs from the warm interpreter's (read only at start-up)",
                spec.num,
                name.to_string_lossy()
            );
            return None;
        }
        match zygote.fork(&cmd, &env, &cwd, cgroups, register) {
            Ok(started) => Some(started),
            Err(ForkError::Job(why)) => {
                tracing::debug!("job #{} runs fresh: {why}", spec.num);
                None
            }
            Err(ForkError::Zygote(why)) => {
                let restarts = zygote.restarts + 1;
                let State::Serving(old) = std::mem::replace(&mut *state, State::Off) else { return None };
                if restarts > MAX_RESTARTS {
                    tracing::warn!(
                        "the warm Python interpreter failed {restarts} times ({why}); the sweep's remaining jobs run as fresh processes"
                    );
                    std::thread::spawn(move || old.end());
                } else {
                    tracing::warn!("the warm Python interpreter failed ({why}); starting it again");
                    *state = State::Starting;
                    drop(state);
                    entry.settled.send_replace(false);
                    self.launch(&entry, key, env, restarts, Some(old));
                }
                None
            }
        }
    }

    /// Start a zygote for `key` with `env` (the first job's) on a thread of its own (after
    /// ending `old`, the one it replaces), and settle `entry` once it is ready or failed.
    fn launch(&self, entry: &Arc<Entry>, key: Key, env: Vec<(OsString, OsString)>, restarts: u32, old: Option<Zygote>) {
        let (entry, marker, opts) = (entry.clone(), self.marker.clone(), self.opts.clone());
        let start = move || {
            if let Some(old) = old {
                old.end();
            }
            let t0 = Instant::now();
            let state = match Zygote::start(&key, &env, &marker, &opts, restarts, &entry.starting) {
                Ok(z) => {
                    tracing::info!(
                        "warm Python interpreter ready in {:.3}s (pid {}, {} modules loaded)",
                        t0.elapsed().as_secs_f64(),
                        z.child.id(),
                        z.modules
                    );
                    State::Serving(z)
                }
                Err(why) => {
                    tracing::warn!(
                        "warm Python jobs are off for {}: {why}; its jobs run as fresh processes",
                        describe(&key)
                    );
                    State::Off
                }
            };
            *entry.lock() = state;
            entry.starting.store(0, std::sync::atomic::Ordering::Release);
            entry.settled.send_replace(true);
        };
        if let Err(e) = std::thread::Builder::new().name("orchestrator-zygote".into()).spawn(start) {
            tracing::warn!("cannot start a thread for the warm Python interpreter ({e}); jobs run as fresh processes");
        }
    }

    /// The run is over: every zygote exits (it sees its socket close), or is killed.
    pub(super) fn shut_down(&self) {
        self.stop_requested();
        let entries: Vec<Arc<Entry>> =
            self.zygotes.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, e)| e).collect();
        for entry in entries {
            let state = std::mem::replace(&mut *entry.lock(), State::Off);
            match state {
                State::Serving(z) => z.end(),
                // Still importing: killed (its thread then reaps it, or the run's end does).
                State::Starting => {
                    let pid = entry.starting.load(std::sync::atomic::Ordering::Acquire);
                    if pid != 0 {
                        super::sys::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                }
                State::Off => {}
            }
        }
    }
}

/// `python app.py` / `python -m mod`, for messages.
fn describe(key: &Key) -> String {
    match &key.target {
        Target::Path(p) => format!("`{} {}`", key.program.display(), p.to_string_lossy()),
        Target::Module(m) => format!("`{} -m {m}`", key.program.display()),
    }
}

/// A job's environment as `(name, value)` pairs.
fn pairs(env: &super::sys::Env) -> Vec<(OsString, OsString)> {
    env.entries().filter_map(|e| split_entry(e.to_bytes())).collect()
}

fn split_entry(entry: &[u8]) -> Option<(OsString, OsString)> {
    let eq = entry.iter().position(|b| *b == b'=')?;
    Some((OsStr::from_bytes(&entry[..eq]).to_owned(), OsStr::from_bytes(&entry[eq + 1..]).to_owned()))
}

enum ForkError {
    /// This job cannot be sent (its environment is not UTF-8, it is too big): run it fresh.
    Job(String),
    /// The zygote did not answer as it should: it is ended and started again.
    Zygote(String),
}

struct Zygote {
    child: std::process::Child,
    sock: OwnedFd,
    /// Its start-up-only variables, to compare jobs' with.
    startup: Vec<(OsString, OsString)>,
    /// The thread-count variables were read by libraries it loaded, and it has no runtime
    /// call to change them (no threadpoolctl): they count as start-up variables.
    threads_fixed: bool,
    modules: u64,
    next_id: u64,
    restarts: u32,
}

impl Zygote {
    fn start(
        key: &Key,
        env: &[(OsString, OsString)],
        marker: &OsStr,
        opts: &WarmOptions,
        restarts: u32,
        starting: &std::sync::atomic::AtomicU32,
    ) -> Result<Zygote, String> {
        let (ours, theirs) = socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| format!("cannot make its socket: {e}"))?;
        let (mode, target) = match &key.target {
            Target::Path(p) => ("path", p.to_str().ok_or("its script's path is not UTF-8")?.to_owned()),
            Target::Module(m) => ("module", m.clone()),
        };
        let settings = json!({
            "fd": ZYGOTE_FD,
            "mode": mode,
            "target": target,
            "preload": opts.preload,
            "fast_exit": opts.fast_exit,
            "marker_var": super::JOB_KEY_VAR,
            "dir": key.dir.to_str().ok_or("its dir is not UTF-8")?,
        });
        // What it says before it is ready (a traceback from a crash) is kept for the message.
        let stderr = tempfile::tempfile().map_err(|e| format!("cannot make a file for its stderr: {e}"))?;
        let (marker_name, marker_value) = split_entry(marker.as_bytes()).ok_or("bad marker")?;
        let mut cmd = std::process::Command::new(&key.program);
        cmd.args(&key.flags)
            .arg("-c")
            .arg(BOOT)
            .env_clear()
            .envs(env.iter().filter(|(k, _)| *k != marker_name).map(|(k, v)| (k, v)))
            .env(&marker_name, &marker_value)
            // Libraries it preloads read these at import: with 1, a BLAS starts no thread pool
            // (which would make forking unsafe); each job gets its own counts at run time
            // (`_apply_thread_limits`), or runs fresh where that cannot be done.
            .envs(super::THREAD_VARS.iter().chain(&["GOTO_NUM_THREADS"]).map(|v| (v, "1")))
            // Asked by torch's `cuda.is_available()` not to initialise CUDA in the zygote.
            .env("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
            // A module's dir may be the first job's own, not made yet: the run's then.
            .current_dir(if key.dir.is_dir() { key.dir.as_path() } else { Path::new(".") })
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(stderr.try_clone().map_err(|e| e.to_string())?)
            // Not in the terminal's group: Ctrl-C is the supervisor's to handle.
            .process_group(0);
        super::sys::pass_fd(&mut cmd, theirs.as_raw_fd(), ZYGOTE_FD);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", key.program.display()))?;
        starting.store(child.id(), std::sync::atomic::Ordering::Release);
        drop(theirs);
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            // It reads all of it before it does anything: a pipe's buffer (64 KiB) would do,
            // but a failed write must not hang us either way.
            let _ = stdin.write_all(format!("# {settings}\n{ZYGOTE_PY}").as_bytes());
        }
        let mut zygote =
            Zygote { child, sock: ours, startup: Vec::new(), threads_fixed: false, modules: 0, next_id: 1, restarts };
        let ready = match zygote.receive(READY_TIMEOUT) {
            Ok(v) => v,
            Err(e) => {
                zygote.end();
                let mut said = String::new();
                let mut stderr = stderr;
                let _ = stderr.rewind();
                let _ = stderr.read_to_string(&mut said);
                let said = said.trim();
                let tail = said.len().saturating_sub(2000);
                let tail = said.get(tail..).unwrap_or(said);
                return Err(if tail.is_empty() { e } else { format!("{e}; it said: {tail}") });
            }
        };
        if ready.get("ready") != Some(&Value::Bool(true)) {
            zygote.end();
            let why = ready.get("error").and_then(Value::as_str).unwrap_or("it did not say why");
            return Err(why.to_owned());
        }
        zygote.modules = ready.get("modules").and_then(Value::as_u64).unwrap_or(0);
        zygote.threads_fixed = ready.get("threads_fixed") == Some(&Value::Bool(true));
        zygote.startup = env
            .iter()
            .filter(|(k, _)| zygote.fixed(k) && !super::THREAD_VARS.iter().any(|v| OsStr::new(v) == k))
            .cloned()
            .chain(
                // The counts it started with (1), which a job's must equal when they are fixed.
                (zygote.threads_fixed)
                    .then(|| super::THREAD_VARS.iter().map(|v| (OsString::from(v), OsString::from("1"))))
                    .into_iter()
                    .flatten(),
            )
            .collect();
        Ok(zygote)
    }

    /// The first start-up-only variable whose value in `env` differs from the zygote's.
    /// Whether the variable `name` cannot change between the zygote and a job.
    fn fixed(&self, name: &OsStr) -> bool {
        python::read_at_startup(name)
            || (self.threads_fixed && super::THREAD_VARS.iter().any(|v| OsStr::new(v) == name))
    }

    fn startup_differs<'e>(&self, env: &'e [(OsString, OsString)]) -> Option<&'e OsStr> {
        let job: Vec<&(OsString, OsString)> = env.iter().filter(|(k, _)| self.fixed(k)).collect();
        for (k, v) in &job {
            if !self.startup.iter().any(|(zk, zv)| zk == k && zv == v) {
                return Some(k);
            }
        }
        self.startup.iter().find(|(k, _)| !job.iter().any(|(jk, _)| jk == k)).map(|(k, _)| {
            // A variable the zygote has and the job does not: name it from the job's side.
            env.iter().map(|(n, _)| n.as_os_str()).find(|n| *n == k.as_os_str()).unwrap_or(OsStr::new("environment"))
        })
    }

    /// Have it fork the job; `register` takes the job on before the job may run anything
    /// (the job waits for a byte on its "go" pipe, and exits if that pipe closes without
    /// one: a job we gave up on never runs unsupervised).
    fn fork(
        &mut self,
        cmd: &PyCommand,
        env: &[(OsString, OsString)],
        cwd: &Path,
        cgroups: &[&OsStr],
        register: &dyn Fn(u32),
    ) -> Result<Started, ForkError> {
        let text = |s: &OsStr, what: &str| {
            s.to_str().map(str::to_owned).ok_or_else(|| ForkError::Job(format!("its {what} is not UTF-8")))
        };
        let mut argv = Vec::with_capacity(cmd.args.len() + 1);
        argv.push(match &cmd.target {
            Target::Path(p) => text(p, "script path")?,
            Target::Module(m) => m.clone(),
        });
        for a in &cmd.args {
            argv.push(text(a, "argument")?);
        }
        let mut envs = serde_json::Map::with_capacity(env.len());
        for (k, v) in env {
            envs.insert(text(k, "environment")?, Value::String(text(v, "environment")?));
        }
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({
            "id": id,
            "argv": argv,
            "env": envs,
            "cwd": text(cwd.as_os_str(), "cwd")?,
            "cgroups": cgroups.iter().map(|c| text(c, "cgroup path")).collect::<Result<Vec<_>, _>>()?,
        })
        .to_string();
        if request.len() > MAX_REQUEST {
            return Err(ForkError::Job(format!("its request ({} bytes) is too big to send", request.len())));
        }
        let io = |what: &'static str| move |e: io::Error| ForkError::Job(format!("cannot make its {what}: {e}"));
        let devnull = std::fs::File::open("/dev/null").map_err(io("stdin"))?;
        let (out_r, out_w) = super::sys::pipe_cloexec().map_err(io("stdout pipe"))?;
        let (err_r, err_w) = super::sys::pipe_cloexec().map_err(io("stderr pipe"))?;
        let (report_r, report_w) = super::sys::pipe_cloexec().map_err(io("report pipe"))?;
        let (go_r, go_w) = super::sys::pipe_cloexec().map_err(io("go pipe"))?;
        let fds = [devnull.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd(), report_w.as_raw_fd(), go_r.as_raw_fd()];
        let iov = [io::IoSlice::new(request.as_bytes())];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        loop {
            match socket::sendmsg::<()>(self.sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e @ (nix::errno::Errno::EMSGSIZE | nix::errno::Errno::ENOBUFS | nix::errno::Errno::ENOMEM)) => {
                    return Err(ForkError::Job(format!("cannot send it the job: {e}")));
                }
                Err(e) => return Err(ForkError::Zygote(format!("cannot send it a job: {e}"))),
            }
        }
        // Ours are closed now: the job holds the only write ends.
        drop((devnull, out_w, err_w, report_w, go_r));
        let reply = self.receive(fork_timeout()).map_err(ForkError::Zygote)?;
        if reply.get("id").and_then(Value::as_u64) != Some(id) {
            return Err(ForkError::Zygote(format!("it answered another request: {reply}")));
        }
        let pid = match (reply.get("pid").and_then(Value::as_u64), reply.get("error").and_then(Value::as_str)) {
            (Some(pid), _) => u32::try_from(pid).map_err(|_| ForkError::Zygote(format!("bad pid {pid}")))?,
            // It could not fork this one (EAGAIN under a process limit): it still serves.
            (None, Some(e)) => return Err(ForkError::Job(e.to_owned())),
            (None, None) => return Err(ForkError::Zygote(format!("a reply without a pid: {reply}"))),
        };
        // The job is our child now (the intermediate is gone): ours before it runs anything.
        register(pid);
        let mut go = std::fs::File::from(go_w);
        if let Err(e) = std::io::Write::write_all(&mut go, b"1") {
            // It died before reading (killed meanwhile): its end is ours to see as usual.
            tracing::debug!("warm job pid {pid} did not take its go: {e}");
        }
        drop(go);
        super::sys::set_nonblocking(&out_r).map_err(io("stdout pipe"))?;
        super::sys::set_nonblocking(&err_r).map_err(io("stderr pipe"))?;
        super::sys::set_nonblocking(&report_r).map_err(io("report pipe"))?;
        Ok(Started { pid, stdout: out_r, stderr: err_r, report: Report(report_r) })
    }

    /// One message, within `timeout`.
    fn receive(&mut self, timeout: Duration) -> Result<Value, String> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no answer within {}s", timeout.as_secs()));
            }
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(0) => continue,
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("cannot wait for it: {e}")),
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        let n = loop {
            match socket::recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("cannot read its answer: {e}")),
            }
        };
        if n == 0 {
            let status = self
                .child
                .try_wait()
                .ok()
                .flatten()
                .map_or("it closed its socket".to_owned(), |s| format!("it exited ({s})"));
            return Err(status);
        }
        serde_json::from_slice(&buf[..n]).map_err(|e| format!("it sent something else than JSON ({e})"))
    }

    /// Close its socket (it exits when it sees that), and make sure it is gone.
    fn end(self) {
        let Zygote { mut child, sock, .. } = self;
        drop(sock);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(500) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
