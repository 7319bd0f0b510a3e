//! `orchestrator launch --manifest <file|->`: the machine interface, for launchers written in
//! other languages (the Hydra plugin in `python/hydra_plugins/orchestrator_launcher`).
//!
//! The caller has already decided everything about each job (its command, environment,
//! working directory, dir and log); this command runs them under the supervisor, `n_jobs` at
//! a time, records each finished job in `<sweep_dir>/jobs.jsonl`, and streams what happens as
//! one JSON object per line on stdout. It writes no Hydra tree of its own.
//!
//! # The manifest (JSON)
//!
//! ```json
//! {
//!   "sweep_dir": "multirun/2026-11-24/15-41-20",
//!   "launcher": {"n_jobs": 2, "timeout": 30.0, "grace_period": "5s", "halt": "never",
//!                "slot_env": {"CUDA_VISIBLE_DEVICES": [0, 1]}},
//!   "jobs": [
//!     {"num": 0, "id": "my_app_0", "argv": ["/usr/bin/python3", "-m", "worker", "job0.pkl"],
//!      "env": {"PYTHONPATH": "..."}, "cwd": "/home/me/app",
//!      "dir": "multirun/2026-11-24/15-41-20/0",
//!      "log": "multirun/2026-11-24/15-41-20/0/my_app_orchestrator.log",
//!      "overrides": ["task=1"], "timeout": null}
//!   ]
//! }
//! ```
//!
//! - `launcher`: the keys of `hydra.launcher` (joblib's: `n_jobs`, `backend`, `prefer`,
//!   `require`, `verbose`, `timeout`, `pre_dispatch`, `batch_size`, `temp_folder`,
//!   `max_nbytes`, `mmap_mode`; orchestrator's: `grace_period`, `halt`, `slot_env`, flat or
//!   under `orchestrator`). They are read by the same code as a config file's, so a wrong key
//!   or value gets the same message (with a did-you-mean).
//! - `jobs[]`: `argv` (required, non-empty; `argv[0]` is run as given, a bare name is looked
//!   up in `PATH`), `log` (required: the job's capture log, appended to if it exists; its
//!   directory is made if missing), `num` (default: the index; numbers must differ), `id`
//!   (default: the num), `env` (added to this process's environment), `cwd` (default: this
//!   process's), `dir` (recorded in the journal), `overrides` (recorded), `timeout` (seconds,
//!   or a duration such as `"90s"`; default the launcher's; `null` = none).
//! - Relative paths are taken from this process's working directory.
//!
//! # Events (stdout, one JSON object per line)
//!
//! `sweep_started` (`jobs`, `n_jobs`, `sweep_dir`, `journal`), then per job `job_queued`,
//! `job_started` (`pid`, `slot`, `time`; `queued` on Slurm, then `job_running` when the task
//! is seen running), `output` (`stream`, `line`, `complete`: only when the
//! line ended with a newline) and `job_finished` (the journal record, plus `event`); a job the
//! run stopped before it started gets `job_not_started`; last `sweep_finished` (`jobs`,
//! `succeeded`, `failed`, `not_started`, `duration_s`, `sweep_dir`, `interrupted_by`). Every
//! event of a job carries the manifest's `num` and `id`.
//!
//! # Exit codes
//!
//! As `orchestrator run`: 0 all succeeded; 1 a job failed, was killed, timed out, could not
//! start or never started, or the journal could not be written; 2 a bad manifest (nothing
//! started, nothing created), or a sweep dir another run holds (each run holds an exclusive
//! `flock` on its sweep dir, as `orchestrator run` does); 3 the supervisor itself failed; 128 + the signal when stopped
//! by SIGINT, SIGTERM, SIGHUP or SIGQUIT (the first one is forwarded to every job, a second
//! one kills them). If the process that started this one goes away, the run stops as on
//! SIGTERM, so a launcher killed outright leaves no job behind.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::{Event, JobRecord, JobSpec, Journal, RunOptions, Stop, StopReason, Supervisor};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::exit;

/// Keys that go under `hydra.launcher.orchestrator` when given flat: the plugin's flat fields
/// that are orchestrator's own (the plugin's `backend` is joblib's, so not every key of
/// `ORCHESTRATOR_KEYS` is one).
const OWN_KEYS: &[&str] = &[
    "grace_period",
    "halt",
    "slot_env",
    "retries",
    "retry_delay",
    "retry_on",
    "warm",
    "preload",
    "fast_exit",
    "slurm",
    "mem_gb",
    "min_free_memory",
    "max_load",
    "start_delay",
];
const MANIFEST_KEYS: &[&str] = &["sweep_dir", "launcher", "jobs"];
const JOB_KEYS: &[&str] = &["num", "id", "argv", "env", "cwd", "dir", "log", "overrides", "timeout"];

/// One job of the manifest.
#[derive(Debug)]
struct ManifestJob {
    num: u64,
    id: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    dir: Option<PathBuf>,
    log: PathBuf,
    overrides: Vec<String>,
    timeout: Option<Duration>,
}

#[derive(Debug)]
struct Manifest {
    sweep_dir: PathBuf,
    options: RunOptions,
    /// The launcher config, where the jobs go to Slurm (`backend: slurm`).
    slurm: Option<Box<orchestrator_config::LauncherConfig>>,
    jobs: Vec<ManifestJob>,
}

/// Run `orchestrator launch --manifest <path>` (`-` = stdin) and return the exit code.
pub fn main(manifest: &Path) -> u8 {
    let text = if manifest == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(manifest)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read the manifest {}: {e}", manifest.display());
            return exit::USAGE;
        }
    };
    let mut m = match parse(&text) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: invalid manifest {}: {e}", manifest.display());
            return exit::USAGE;
        }
    };
    // Slurm: the cluster is checked, and the array tried (`sbatch --test-only`), before
    // anything is created.
    let slurm = match m.slurm.take() {
        Some(launcher) => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| m.sweep_dir.clone());
            let mut notes = Vec::new();
            let total = m.jobs.len() as u64;
            match orchestrator_hydra::slurm_settings(&launcher, m.options.n_jobs, total, &cwd, &mut notes) {
                Ok(s) => {
                    for note in notes {
                        eprintln!("[orchestrator] {note}");
                    }
                    Some(s)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::USAGE;
                }
            }
        }
        None => None,
    };
    // The backend starts the run's watchdog (see `crate::main`).
    m.options.watchdog = true;
    m.options.forward_output = true;
    if slurm.is_none() && m.options.memory_limit.is_some() {
        // Made now: a limit it cannot enforce is refused before anything is created.
        match crate::run::local_backend(&m.options) {
            Ok(b) => m.options.backend = Some(b),
            Err(code) => return code,
        }
    }
    if let Err(e) = std::fs::create_dir_all(&m.sweep_dir) {
        eprintln!("error: cannot create the sweep dir {}: {e}", m.sweep_dir.display());
        return exit::INTERNAL;
    }
    // As `orchestrator run` does: one run at a time in a sweep dir (two sweeps that Hydra
    // named alike, started in the same second, would otherwise mix their jobs' files).
    let _lock = match lock_dir(&m.sweep_dir) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let journal = match Journal::open(&m.sweep_dir.join("jobs.jsonl")) {
        Ok(j) => Arc::new(j),
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", m.sweep_dir.join("jobs.jsonl").display());
            return exit::INTERNAL;
        }
    };
    if let Some(mut settings) = slurm {
        settings.work_dir = m.sweep_dir.join(".slurm");
        settings.expected = m.jobs.len() as u64;
        settings.watchdog = true;
        // As `orchestrator run` does: a slot per job waits for its array task, and Slurm's
        // throttle (%P) keeps n_jobs of them running.
        m.options.n_jobs = m.jobs.len().max(1);
        m.options.backend = Some(Arc::new(orchestrator::backend::slurm::SlurmBackend::new(settings)));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::INTERNAL;
        }
    };
    let code = runtime.block_on(execute(m, journal));
    drop(runtime);
    code
}

/// An exclusive `flock` on the sweep dir (the lock `orchestrator run` takes), held until this
/// process ends; `None` where the file system has no locks (with a warning).
fn lock_dir(dir: &Path) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, String> {
    let unlocked = |why: String| {
        tracing::warn!("cannot lock {} ({why}): another run could use it at the same time", dir.display());
        Ok(None)
    };
    let file = match std::fs::File::open(dir) {
        Ok(f) => f,
        Err(e) => return unlocked(e.to_string()),
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(format!(
            "{} is in use by another orchestrator run (two sweeps given the same dir, e.g. started in the same second)\n  = help: give each sweep its own dir, e.g. hydra.sweep.dir='multirun/${{now:%Y-%m-%d}}/${{now:%H-%M-%S-%f}}'",
            dir.display()
        )),
        Err((_, e)) => unlocked(e.to_string()),
    }
}

/// Writes events as JSON lines, flushing when no other event is waiting.
struct Out {
    out: std::io::BufWriter<std::io::Stdout>,
}

impl Out {
    fn emit(&mut self, v: &Value) {
        let _ = writeln!(self.out, "{v}");
    }
    fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

async fn execute(m: Manifest, journal: Arc<Journal>) -> u8 {
    let Manifest { sweep_dir, options, jobs, .. } = m;
    let total = jobs.len();
    let n_jobs = options.n_jobs;
    let mut out = Out { out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()) };
    let (stop_tx, mut stop_rx) = watch::channel(Stop::None);
    let first_signal = match crate::signals::install(stop_tx.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return exit::INTERNAL;
        }
    };
    let t0 = Instant::now();
    let (supervisor, mut events) = Supervisor::start(options);
    // Stop requests from the signal handlers go to the supervisor as they come.
    let forward = {
        let sup = supervisor.clone();
        tokio::spawn(async move {
            while stop_rx.changed().await.is_ok() {
                let s = *stop_rx.borrow();
                sup.stop(s);
            }
        })
    };
    // Our parent gone (a launcher killed outright): stop as SIGTERM would.
    let orphaned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let parent_watch = {
        let stop_tx = stop_tx.clone();
        let orphaned = orphaned.clone();
        let parent = nix::unistd::getppid();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if nix::unistd::getppid() != parent {
                    orphaned.store(true, std::sync::atomic::Ordering::Relaxed);
                    stop_tx.send_modify(|s| {
                        *s = (*s).max(Stop::Graceful { reason: StopReason::Interrupted, signal: SIGTERM })
                    });
                    break;
                }
            }
        })
    };
    out.emit(&json!({
        "event": "sweep_started", "jobs": total, "n_jobs": n_jobs,
        "sweep_dir": sweep_dir.display().to_string(),
        "journal": journal.path().display().to_string(),
    }));
    out.flush();

    // The supervisor numbers jobs in submission order: its num is the index in `jobs`.
    let ids: Vec<(u64, String)> = jobs.iter().map(|j| (j.num, j.id.clone())).collect();
    let driver = {
        let sup = supervisor.clone();
        tokio::spawn(async move {
            let mut handles = Vec::with_capacity(jobs.len());
            for job in jobs {
                match sup.submit(spec_of(job)).await {
                    Ok(h) => handles.push(Some(h)),
                    // Stopped before this one was submitted.
                    Err(_) => handles.push(None),
                }
            }
            let mut started = Vec::with_capacity(handles.len());
            for h in handles {
                started.push(match h {
                    Some(h) => h.wait().await.is_ok(),
                    None => false,
                });
            }
            let summary = sup.drain(Duration::from_secs(100 * 365 * 86_400)).await.ok();
            (started, summary)
        })
    };
    let mut driver = driver;
    let mut finished = vec![false; total];
    let mut succeeded = 0u64;
    let mut failed = 0u64;
    let mut journal_error: Option<String> = None;
    let mut handle_event = |ev: Event, out: &mut Out| {
        let idx = match &ev {
            Event::Queued { num }
            | Event::Started { num, .. }
            | Event::Running { num, .. }
            | Event::Output { num, .. }
            | Event::Retrying { num, .. } => *num,
            Event::Finished(rec) => rec.num,
            _ => return,
        };
        let Some((num, id)) = ids.get(idx as usize) else { return };
        if let Event::Finished(rec) = &ev {
            let mut rec: JobRecord = (**rec).clone();
            rec.num = *num;
            rec.id = id.clone();
            if let Err(e) = journal.append(&rec) {
                journal_error.get_or_insert_with(|| e.to_string());
            }
            if rec.outcome.is_success() {
                succeeded += 1;
            } else {
                failed += 1;
            }
            finished[idx as usize] = true;
            let mut v = rec.to_value();
            if let Some(m) = v.as_object_mut() {
                m.insert("event".into(), json!("job_finished"));
            }
            out.emit(&v);
            return;
        }
        let mut v = ev.to_json();
        if let Some(m) = v.as_object_mut() {
            m.insert("num".into(), json!(num));
            m.insert("id".into(), json!(id));
        }
        out.emit(&v);
    };
    let (started, summary) = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => {
                    handle_event(ev, &mut out);
                    if events.is_empty() {
                        out.flush();
                    }
                }
                None => {
                    // Cannot happen while we hold the supervisor; wait for the driver.
                    break (&mut driver).await.unwrap_or_default();
                }
            },
            done = &mut driver => break done.unwrap_or_default(),
        }
    };
    // The runner has ended: what it sent is in the channel.
    while let Ok(ev) = events.try_recv() {
        handle_event(ev, &mut out);
    }
    forward.abort();
    parent_watch.abort();
    drop(supervisor);
    let mut not_started = 0u64;
    for (idx, (num, id)) in ids.iter().enumerate() {
        if !finished[idx] {
            not_started += 1;
            let why =
                if started.get(idx).copied().unwrap_or(false) { "no record" } else { "stopped before it started" };
            out.emit(&json!({"event": "job_not_started", "num": num, "id": id, "reason": why}));
        }
    }
    if let Err(e) = journal.sync() {
        journal_error.get_or_insert_with(|| e.to_string());
    }
    let signal = *first_signal.borrow();
    let signal = signal.or(orphaned.load(std::sync::atomic::Ordering::Relaxed).then_some(SIGTERM));
    let interrupted_by = signal.map(|s| {
        nix::sys::signal::Signal::try_from(s).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {s}"))
    });
    out.emit(&json!({
        "event": "sweep_finished", "jobs": total, "succeeded": succeeded, "failed": failed,
        "not_started": not_started, "duration_s": t0.elapsed().as_secs_f64(),
        "sweep_dir": sweep_dir.display().to_string(), "interrupted_by": interrupted_by,
    }));
    out.flush();
    let journal_errors = summary.as_ref().map_or(0, |s| s.journal_errors);
    if let Some(e) = &journal_error {
        eprintln!("error: a write to {} failed: {e}", journal.path().display());
    }
    match signal {
        Some(s) => u8::try_from(128 + s).unwrap_or(exit::SIGTERM),
        None if failed == 0 && not_started == 0 && journal_error.is_none() && journal_errors == 0 => exit::OK,
        None => exit::JOBS_FAILED,
    }
}

const SIGTERM: i32 = nix::sys::signal::Signal::SIGTERM as i32;

fn spec_of(job: ManifestJob) -> JobSpec {
    // The runtime makes the log's own dir; a deeper one (a nested `hydra.sweep.subdir`) is
    // made here.
    if let Some(grand) = job.log.parent().and_then(Path::parent)
        && !grand.as_os_str().is_empty()
    {
        let _ = std::fs::create_dir_all(grand);
    }
    let mut argv = job.argv.into_iter().map(OsString::from);
    let program = argv.next().unwrap_or_default();
    let mut spec = JobSpec::new(job.num, program, argv.collect(), job.log);
    spec.id = job.id;
    spec.env = job.env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    spec.cwd = job.cwd;
    spec.dir = job.dir;
    spec.timeout = job.timeout;
    spec.overrides = job.overrides;
    spec
}

fn parse(text: &str) -> Result<Manifest, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let root = root.as_object().ok_or("the manifest must be a JSON object")?;
    check_keys(root, MANIFEST_KEYS, "the manifest")?;
    let sweep_dir =
        PathBuf::from(root.get("sweep_dir").and_then(Value::as_str).ok_or("`sweep_dir` (a string) is required")?);
    let (options, default_timeout, slurm) = launcher_options(root.get("launcher").unwrap_or(&Value::Null))?;
    let jobs = root.get("jobs").and_then(Value::as_array).ok_or("`jobs` (a list) is required")?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut seen = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        let j = parse_job(i, job, default_timeout)?;
        if let Some(prev) = seen.insert(j.num, i) {
            return Err(format!("jobs[{i}] and jobs[{prev}] have the same num {}", j.num));
        }
        out.push(j);
    }
    Ok(Manifest { sweep_dir, options, slurm, jobs: out })
}

fn check_keys(map: &Map<String, Value>, known: &[&str], what: &str) -> Result<(), String> {
    for k in map.keys() {
        if !known.contains(&k.as_str()) {
            let near = known.iter().min_by_key(|c| strsim_distance(k, c)).filter(|c| strsim_distance(k, c) <= 2);
            return Err(match near {
                Some(c) => format!("unknown key `{k}` in {what}; did you mean `{c}`? known keys: {}", known.join(", ")),
                None => format!("unknown key `{k}` in {what}; known keys: {}", known.join(", ")),
            });
        }
    }
    Ok(())
}

/// Edit distance, for the manifest's own keys (the launcher's go through the config reader).
fn strsim_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The launcher options, read as `hydra.launcher` of a config file is: returns the run
/// options, the per-job timeout, and the launcher config when its jobs go to Slurm.
type LauncherOptions = (RunOptions, Option<Duration>, Option<Box<orchestrator_config::LauncherConfig>>);

fn launcher_options(v: &Value) -> Result<LauncherOptions, String> {
    let mut flat = match v {
        Value::Null => Map::new(),
        Value::Object(m) => m.clone(),
        _ => return Err("`launcher` must be an object".into()),
    };
    let mut own = match flat.remove("orchestrator") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("`launcher.orchestrator` must be an object".into()),
    };
    for k in OWN_KEYS {
        if let Some(v) = flat.remove(*k) {
            own.insert((*k).to_string(), v);
        }
    }
    if !own.is_empty() {
        flat.insert("orchestrator".into(), Value::Object(own));
    }
    // JSON is YAML: strings stay quoted, so YAML 1.1's readings of plain scalars never apply.
    let doc = json!({"hydra": {"launcher": flat}});
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    let origin = Path::new("<manifest launcher>");
    let loaded = orchestrator_config::load_config_str(&text, origin).map_err(|e| e.to_string())?;
    let resolved = loaded.resolve(&HashMap::new()).map_err(|e| e.to_string())?;
    let options = orchestrator_hydra::run_options(&resolved.launcher).map_err(|e| e.to_string())?;
    let slurm = (resolved.launcher.exec == orchestrator_config::ExecBackend::Slurm)
        .then(|| Box::new(resolved.launcher.clone()));
    Ok((options, resolved.launcher.timeout, slurm))
}

fn parse_job(i: usize, v: &Value, default_timeout: Option<Duration>) -> Result<ManifestJob, String> {
    let what = format!("jobs[{i}]");
    let m = v.as_object().ok_or_else(|| format!("{what} must be an object"))?;
    check_keys(m, JOB_KEYS, &what)?;
    let string_list = |key: &str| -> Result<Vec<String>, String> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| format!("{what}.{key} must be a list of strings"))
                })
                .collect(),
            Some(_) => Err(format!("{what}.{key} must be a list of strings")),
        }
    };
    let path = |key: &str| -> Result<Option<PathBuf>, String> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(PathBuf::from(s))),
            Some(_) => Err(format!("{what}.{key} must be a non-empty string")),
        }
    };
    let num = match m.get("num") {
        None | Some(Value::Null) => i as u64,
        Some(n) => n.as_u64().ok_or_else(|| format!("{what}.num must be a non-negative integer"))?,
    };
    let id = match m.get("id") {
        None | Some(Value::Null) => num.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(format!("{what}.id must be a string")),
    };
    let argv = string_list("argv")?;
    if argv.is_empty() {
        return Err(format!("{what}.argv must be a non-empty list of strings"));
    }
    let env = match m.get("env") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(e)) => e
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!("{what}.env.{k} must be a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("{what}.env must be an object of strings")),
    };
    let log = path("log")?.ok_or_else(|| format!("{what}.log (the job's capture log) is required"))?;
    let timeout = match m.get("timeout") {
        None => default_timeout,
        Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            let secs = n.as_f64().filter(|s| s.is_finite() && *s > 0.0);
            Some(Duration::from_secs_f64(secs.ok_or_else(|| format!("{what}.timeout must be positive"))?))
        }
        Some(Value::String(s)) => {
            // The config reader's duration rules: read it as a launcher timeout.
            let (_, t, _) = launcher_options(&json!({ "timeout": s })).map_err(|e| format!("{what}.timeout: {e}"))?;
            t
        }
        Some(_) => return Err(format!("{what}.timeout must be seconds, a duration string, or null")),
    };
    Ok(ManifestJob {
        num,
        id,
        argv,
        env,
        cwd: path("cwd")?,
        dir: path("dir")?,
        log,
        overrides: string_list("overrides")?,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(launcher: Value, jobs: Value) -> String {
        json!({"sweep_dir": "s", "launcher": launcher, "jobs": jobs}).to_string()
    }

    #[test]
    fn launcher_keys_are_read_as_a_config_file_s() {
        let text = manifest(
            json!({"n_jobs": 3, "timeout": 2.5, "grace_period": "1s", "halt": "soon", "slot_env": {"GPU": [0, 1, 2]}}),
            json!([{"argv": ["true"], "log": "s/0/x.log"}, {"argv": ["true"], "log": "s/1/x.log", "timeout": null}]),
        );
        let m = parse(&text).unwrap();
        assert_eq!(m.options.n_jobs, 3);
        assert_eq!(m.options.grace, Duration::from_secs(1));
        assert_eq!(m.jobs[0].timeout, Some(Duration::from_millis(2500)));
        assert_eq!(m.jobs[1].timeout, None);
        assert_eq!((m.jobs[1].num, m.jobs[1].id.as_str()), (1, "1"));
    }

    #[test]
    fn a_misspelt_launcher_key_gets_the_config_s_did_you_mean() {
        let e = parse(&manifest(json!({"n_job": 2}), json!([]))).unwrap_err();
        assert!(e.contains("unknown key `n_job`") && e.contains("did you mean `n_jobs`?"), "{e}");
        let e = parse(&manifest(json!({"halt": "sometimes"}), json!([]))).unwrap_err();
        assert!(e.contains("invalid halt `sometimes`"), "{e}");
    }

    #[test]
    fn bad_jobs_are_refused() {
        let e = parse(&manifest(json!({}), json!([{"argv": [], "log": "x"}]))).unwrap_err();
        assert!(e.contains("jobs[0].argv"), "{e}");
        let e = parse(&manifest(json!({}), json!([{"argv": ["true"]}]))).unwrap_err();
        assert!(e.contains("jobs[0].log"), "{e}");
        let e = parse(&manifest(json!({}), json!([{"argv": ["true"], "log": "x", "lgo": 1}]))).unwrap_err();
        assert!(e.contains("did you mean `log`?"), "{e}");
        let two = json!([{"num": 4, "argv": ["a"], "log": "x"}, {"num": 4, "argv": ["b"], "log": "y"}]);
        assert!(parse(&manifest(json!({}), two)).unwrap_err().contains("same num 4"));
        let t = parse(&manifest(json!({}), json!([{"argv": ["a"], "log": "x", "timeout": "1m 30s"}]))).unwrap();
        assert_eq!(t.jobs[0].timeout, Some(Duration::from_secs(90)));
    }
}
