//! `orchestrator run`: validate everything, lay out the sweep, run it, report.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::Local;
use orchestrator::launch::{SweepLayout, job_name_for};
use orchestrator::{Journal, RunOptions, Stop};
use orchestrator_config::compose::apply_overrides;
use orchestrator_config::grammar::{Override, parse_override};
use orchestrator_config::sweep::{SweepContext, SweepPlan};
use orchestrator_config::{Backend, LoadedConfig, load_config_str};
use serde_yaml::Value;
use tokio::sync::{mpsc, watch};

use crate::cli::RunArgs;
use crate::exit;
use crate::report::{self, Header, Mode};

/// A usage or config error: printed as is, exit code 2, nothing started or created.
struct UsageError(String);

impl<E: std::fmt::Display> From<E> for UsageError {
    fn from(e: E) -> Self {
        UsageError(e.to_string())
    }
}

pub fn main(args: RunArgs) -> u8 {
    let mode = if args.json {
        Mode::Json
    } else if args.quiet {
        Mode::Quiet
    } else {
        Mode::Plain
    };
    let prepared = match prepare(&args) {
        Ok(p) => p,
        Err(UsageError(msg)) => {
            eprintln!("error: {msg}");
            return exit::USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::INTERNAL;
        }
    };
    runtime.block_on(execute(prepared, mode))
}

struct Prepared {
    layout: SweepLayout,
    plan: Arc<SweepPlan>,
    options: RunOptions,
    banner: String,
    /// Job numbers that already succeeded (resume): not run again.
    done: Arc<HashSet<u64>>,
    resuming: bool,
    /// joblib verbosity for progress lines.
    verbose: u32,
    /// Draw a progress bar.
    bar: bool,
}

/// What an earlier sweep left: its overrides (as typed) and its successful jobs.
struct Earlier {
    dir: PathBuf,
    overrides: Vec<String>,
    done: HashSet<u64>,
}

fn read_earlier(dir: &Path) -> Result<Earlier, UsageError> {
    let multirun = dir.join("multirun.yaml");
    let text = std::fs::read_to_string(&multirun).map_err(|e| {
        UsageError(format!(
            "cannot resume {}: cannot read {}: {e}\n  = help: --resume takes a sweep dir, e.g. multirun/2026-11-24/15-41-20",
            dir.display(),
            multirun.display()
        ))
    })?;
    let doc: Value = serde_yaml::from_str(&text)
        .map_err(|e| UsageError(format!("cannot resume: {} is not valid YAML: {e}", multirun.display())))?;
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_sequence)
            .map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let overrides_node = doc.get("hydra").and_then(|h| h.get("overrides"));
    let mut overrides: Vec<String> = strings(overrides_node.and_then(|o| o.get("hydra")))
        .into_iter()
        .filter(|o| !o.starts_with("hydra.mode="))
        .collect();
    overrides.extend(strings(overrides_node.and_then(|o| o.get("task"))));
    let done = match orchestrator::journal::read_journal(&dir.join("jobs.jsonl")) {
        Ok(records) => {
            records.iter().filter(|r| r["status"] == "succeeded").filter_map(|r| r["num"].as_u64()).collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
        Err(e) => {
            return Err(UsageError(format!("cannot resume: cannot read {}: {e}", dir.join("jobs.jsonl").display())));
        }
    };
    Ok(Earlier { dir: dir.to_path_buf(), overrides, done })
}

fn prepare(args: &RunArgs) -> Result<Prepared, UsageError> {
    let loaded = match &args.config {
        Some(path) => orchestrator_config::load_config_file(path)?,
        None => load_config_str("", Path::new("<defaults>"))?,
    };
    let earlier = args.resume.as_deref().map(read_earlier).transpose()?;
    let multirun = args.multirun || earlier.is_some();
    let given = match &earlier {
        Some(e) if args.overrides.is_empty() => e.overrides.clone(),
        Some(e) if args.overrides != e.overrides => {
            return Err(UsageError(format!(
                "cannot resume {}: its overrides were `{}`, these are `{}`\n  = help: give the same overrides, or none to reuse the sweep's",
                e.dir.display(),
                e.overrides.join(" "),
                args.overrides.join(" ")
            )));
        }
        _ => args.overrides.clone(),
    };
    let mut hydra_overrides: Vec<Override> = Vec::new();
    let mut app_overrides: Vec<Override> = Vec::new();
    for text in &given {
        let o = parse_override(text)?;
        if o.key == "hydra" || o.key.starts_with("hydra.") {
            if o.is_sweep() {
                return Err(UsageError(format!(
                    "cannot sweep over `{}`: launcher settings are the same for every job\n  = help: give one value, e.g. `{}=2`",
                    o.key, o.key
                )));
            }
            hydra_overrides.push(o);
        } else {
            app_overrides.push(o);
        }
    }
    let (resolved, hydra_texts) = resolve_with_overrides(&loaded, &hydra_overrides)?;

    let cwd = std::env::current_dir().map_err(|e| UsageError(format!("cannot read the current directory: {e}")))?;
    let config_dir = args.config.as_ref().and_then(|p| p.parent()).map(|p| cwd.join(p));
    let ctx = SweepContext { config_dir, cwd: cwd.clone(), seed: None };
    let plan = SweepPlan::new(app_overrides, &ctx)?;
    if !multirun && plan.is_sweep() {
        let swept = plan
            .sweep_overrides()
            .into_iter()
            .find(|s| s.contains(',') || s.contains("..") || s.contains('('))
            .unwrap_or_default();
        return Err(UsageError(format!(
            "ambiguous value for argument `{swept}`: it is a sweep, but --multirun was not given\n  = help: add --multirun (-m) to run one job per value, or quote the value to use it as one string"
        )));
    }
    check_program(&args.app)?;

    let cpus = orchestrator::sys::available_cpus();
    let launcher = &resolved.launcher;
    let mut n_jobs = launcher.n_jobs.resolve(cpus);
    if launcher.backend == Some(Backend::Sequential) {
        n_jobs = 1;
    }
    let total = plan.len();
    let job_name = resolved.hydra.job_name.clone().unwrap_or_else(|| job_name_for(&args.app));
    let started = Local::now();
    let template = if multirun { resolved.hydra.sweep_dir.clone() } else { run_dir_template(&loaded) };
    let dir = match &earlier {
        Some(e) => e.dir.to_string_lossy().into_owned(),
        None => SweepLayout::resolve_dir(&template, &started, &job_name)?,
    };
    let banner = format!(
        "Joblib.Parallel({})",
        launcher
            .banner
            .iter()
            .map(|(k, v)| if k == "backend" && v == "None" { format!("{k}=loky") } else { format!("{k}={v}") })
            .collect::<Vec<_>>()
            .join(",")
    );
    let config_name = args
        .config
        .as_ref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let mut options = RunOptions::new(n_jobs);
    options.grace = launcher.grace_period;
    options.halt = launcher.halt;
    options.slot_env = launcher.slot_env.clone();
    options.thread_limit = Some((cpus / n_jobs).max(1));
    for (name, value) in &options.slot_env {
        if let orchestrator_config::SlotValue::PerSlot(list) = value {
            if list.len() < n_jobs {
                return Err(UsageError(format!(
                    "slot_env `{name}` lists {} value(s) but n_jobs is {n_jobs}: each slot needs its own value\n  = help: give at least {n_jobs} values, or lower n_jobs",
                    list.len()
                )));
            }
        }
    }
    let temp = orchestrator::temp::resolve_temp_folder(launcher.temp_folder.as_deref());
    tracing::debug!("temp_folder: {} ({})", temp.path.display(), temp.reason);
    let abs_dir = cwd.join(&dir);
    let mut layout = SweepLayout {
        dir: PathBuf::from(dir),
        abs_dir,
        job_name,
        resolved,
        config_name,
        command: args.app.clone(),
        placeholders: false,
        hydra_overrides: hydra_texts,
        sweep_overrides: plan.sweep_overrides(),
        multirun,
        started,
        n_jobs,
    };
    if total > 0 {
        let job0 = plan.job(0).ok_or_else(|| UsageError("the sweep has no job 0".into()))?;
        layout.check(&job0)?;
        layout.detect_placeholders(&job0)?;
        if total > 1 {
            if let Some(last) = plan.job(total - 1) {
                layout.check(&last)?;
            }
        }
    }
    let resuming = earlier.is_some();
    let done = Arc::new(earlier.map(|e| e.done).unwrap_or_default());
    let verbose =
        if args.verbose { layout.resolved.launcher.verbose.max(11) } else { layout.resolved.launcher.verbose };
    let bar = !args.no_progress
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("TERM").is_some_and(|t| t != "dumb");
    Ok(Prepared { layout, plan: Arc::new(plan), options, banner, done, resuming, verbose, bar })
}

/// `hydra.run.dir` for single runs: Hydra's default unless the config sets it.
fn run_dir_template(loaded: &LoadedConfig) -> String {
    loaded
        .root
        .get("hydra")
        .and_then(|h| h.get("run"))
        .and_then(|r| r.get("dir"))
        .and_then(Value::as_str)
        .unwrap_or("outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}")
        .to_string()
}

/// Apply `hydra.*` overrides to the document and validate the result; errors about an
/// overridden key point at the override.
fn resolve_with_overrides(
    loaded: &LoadedConfig,
    overrides: &[Override],
) -> Result<(orchestrator_config::ResolvedConfig, Vec<String>), UsageError> {
    let plan =
        SweepPlan::new(overrides.to_vec(), &SweepContext { config_dir: None, cwd: PathBuf::from("."), seed: None })?;
    let mut root = loaded.root.clone();
    let mut overridden = HashMap::new();
    let mut texts = Vec::new();
    if let Some(job) = plan.job(0) {
        apply_overrides(&mut root, &job.items)?;
        for (o, item) in overrides.iter().zip(&job.items) {
            overridden.insert(item.key.clone(), o.input.clone());
            texts.push(o.input.clone());
        }
    }
    Ok((loaded.resolve_root(&root, &overridden)?, texts))
}

/// The app must exist and be executable before anything is created.
fn check_program(app: &[OsString]) -> Result<(), UsageError> {
    let Some(program) = app.first() else {
        return Err(UsageError("no app given after `--`".into()));
    };
    let path = Path::new(program);
    let shown = path.display();
    if path.components().count() > 1 || program.to_string_lossy().contains('/') {
        let meta = std::fs::metadata(path).map_err(|e| UsageError(format!("app `{shown}` cannot be run: {e}")))?;
        use std::os::unix::fs::PermissionsExt;
        if meta.is_dir() {
            return Err(UsageError(format!("app `{shown}` is a directory, not a program")));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(UsageError(format!(
                "app `{shown}` is not executable\n  = help: `chmod +x {shown}`, or run it through its interpreter (e.g. `-- python3 {shown}`)"
            )));
        }
        Ok(())
    } else {
        which::which(program).map(|_| ()).map_err(|_| {
            UsageError(format!(
                "app `{shown}` was not found in PATH\n  = help: give its path (e.g. `./{shown}`) or install it"
            ))
        })
    }
}

async fn execute(p: Prepared, mode: Mode) -> u8 {
    let Prepared { mut layout, plan, mut options, banner, done, resuming, verbose, bar } = p;
    let created = if resuming { layout.adopt() } else { layout.create() };
    if let Err(e) = created {
        eprintln!("error: {e}");
        return exit::INTERNAL;
    }
    let journal_path = layout.abs_dir.join("jobs.jsonl");
    match Journal::open(&journal_path) {
        Ok(j) => options.journal = Some(Arc::new(j)),
        Err(e) => {
            eprintln!("error: cannot create {}: {e}", journal_path.display());
            return exit::INTERNAL;
        }
    }
    let total = plan.len() - done.iter().filter(|n| **n < plan.len()).count() as u64;
    if resuming {
        report::resuming(mode, &layout.dir, plan.len() - total, plan.len());
    }
    {
        let mut listed = (0..plan.len()).filter(|n| !done.contains(n)).filter_map(|n| plan.job(n)).map(|j| {
            let text = j.items.iter().map(|o| o.display()).collect::<Vec<_>>().join(" ");
            (j.num, text)
        });
        report::header(
            mode,
            Header {
                banner: &banner,
                n_jobs_total: total,
                sweep_dir: &layout.dir,
                jobs: &mut listed,
                listed_max: 1000,
            },
        );
    }
    options.forward_output = mode != Mode::Quiet;

    let (stop_tx, stop_rx) = watch::channel(Stop::None);
    let first_signal = match crate::signals::install(stop_tx.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return exit::INTERNAL;
        }
    };
    // Jobs are prepared (dirs and files written) at most `pre_dispatch` ahead of the slots.
    let window = layout.resolved.launcher.pre_dispatch.resolve(options.n_jobs);
    let ahead = window.saturating_sub(options.n_jobs).clamp(1, 4096);
    let (job_tx, job_rx) = mpsc::channel(ahead);
    let layout = Arc::new(layout);
    let producer = {
        let layout = layout.clone();
        let plan = plan.clone();
        let mut stop = stop_rx.clone();
        tokio::task::spawn_blocking(move || {
            for job in plan.iter().filter(|j| !done.contains(&j.num)) {
                if *stop.borrow_and_update() != Stop::None {
                    break;
                }
                if job_tx.blocking_send(layout.prepare(&job).into()).is_err() {
                    break;
                }
            }
        })
    };
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    let display = report::Display { total, verbose, n_jobs: options.n_jobs, bar };
    let reporter = tokio::spawn(report::consume(mode, display, ev_rx));
    let t0 = Instant::now();
    let summary = orchestrator::run(options, job_rx, Some(ev_tx), stop_rx).await;
    let _ = producer.await;
    let _ = reporter.await;
    let stopped_by = *first_signal.borrow();
    report::summary(mode, &summary, total, t0.elapsed(), &layout.dir, stopped_by);
    match stopped_by {
        Some(s) if s == nix::sys::signal::Signal::SIGINT as i32 => exit::SIGINT,
        Some(_) => exit::SIGTERM,
        None if summary.failures.is_empty() && summary.finished == total => exit::OK,
        None => exit::JOBS_FAILED,
    }
}
