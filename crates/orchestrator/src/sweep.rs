//! A whole sweep, as the CLI runs it: validate the config, overrides and app, lay out the
//! Hydra tree, prepare jobs `pre_dispatch` ahead, and run them under the supervisor.
//!
//! [`PreparedSweep::prepare`] checks everything and creates nothing; [`PreparedSweep::start`]
//! creates the sweep dir (or adopts it, to resume) and runs the jobs.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Local;
use orchestrator_config::compose::apply_overrides;
use orchestrator_config::grammar::{Override, OverrideError, parse_override};
use orchestrator_config::sweep::{SweepContext, SweepError, SweepPlan};
use orchestrator_config::{ConfigError, LoadedConfig, load_config_str};
use serde_yaml::Value;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::args::LargeArgs;
use crate::event::Event;
use crate::journal::Journal;
use crate::launch::{LayoutError, SweepLayout, job_name_for};
use crate::runner::{RunOptions, RunSummary, Stop, run};
use crate::spill::SpillStore;
use crate::temp::TempFolder;

/// Where the config comes from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConfigInput {
    /// A YAML file.
    File(PathBuf),
    /// YAML text; `name` names it in error messages.
    Text {
        /// The YAML.
        text: String,
        /// What to call it in errors (e.g. `request body`).
        name: PathBuf,
    },
    /// No config: joblib's defaults.
    Defaults,
}

impl ConfigInput {
    fn path(&self) -> Option<&Path> {
        match self {
            ConfigInput::File(p) => Some(p),
            _ => None,
        }
    }
}

/// Everything that describes a sweep, as the command line gives it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SweepRequest {
    /// The config.
    pub config: ConfigInput,
    /// Overrides, one per element, as typed (`task=1..5`, `hydra.launcher.n_jobs=2`).
    pub overrides: Vec<String>,
    /// The app: program, then its arguments.
    pub app: Vec<OsString>,
    /// Sweep (`--multirun`); otherwise a single run, and a sweep value is an error.
    pub multirun: bool,
    /// Resume the sweep in this dir.
    pub resume: Option<PathBuf>,
    /// Relative sweep dirs are taken from here (the CLI's current dir).
    pub base_dir: PathBuf,
}

impl SweepRequest {
    /// A sweep of `app` with `overrides` and the given config, in `base_dir`.
    pub fn new(config: ConfigInput, overrides: Vec<String>, app: Vec<OsString>, base_dir: PathBuf) -> Self {
        SweepRequest { config, overrides, app, multirun: true, resume: None, base_dir }
    }
}

/// Why a sweep cannot start. Every variant is the user's input; nothing was created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The config file or text.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An override's syntax.
    #[error(transparent)]
    Override(#[from] OverrideError),
    /// The sweep (empty, too large, a glob that matches nothing).
    #[error(transparent)]
    Sweep(#[from] SweepError),
    /// Composing the jobs or naming their dirs.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Anything else about the request (the app, resume, slot values).
    #[error("{0}")]
    Invalid(String),
}

/// A validated sweep, ready to start.
#[derive(Debug)]
#[non_exhaustive]
pub struct PreparedSweep {
    /// The output tree and how jobs are composed.
    pub layout: SweepLayout,
    /// The lazy cartesian product.
    pub plan: Arc<SweepPlan>,
    /// How the runner behaves (from the launcher config).
    pub options: RunOptions,
    /// `Joblib.Parallel(...)`, as Hydra prints it.
    pub banner: String,
    /// Job numbers that already succeeded (resume).
    pub done: Arc<HashSet<u64>>,
    /// Whether this resumes an earlier sweep.
    pub resuming: bool,
    /// `@path` values among the overrides, snapshotted when the sweep starts.
    pub file_refs: Vec<String>,
    /// Where relative paths (sweep dir, `@path` values) are taken from.
    pub base_dir: PathBuf,
    /// Prepare jobs (their dirs and files) in a task on the calling runtime instead of on a
    /// blocking thread. Faster on a current-thread runtime that does little else, as the
    /// CLI's (one thread fewer competing with the jobs for the CPUs, no cross-thread
    /// wake-up per job: 2,000 `true` jobs on 2 cores, 1.03 s -> 0.96 s), but each job's
    /// preparation then blocks that runtime (~0.1 ms on a local disk, longer on a slow
    /// one). Off by default; ignored on a multi-threaded runtime.
    pub prepare_on_runtime: bool,
}

/// A started sweep.
#[derive(Debug)]
#[non_exhaustive]
pub struct SweepRun {
    /// The sweep dir, as given (relative or absolute).
    pub dir: PathBuf,
    /// The sweep dir, absolute.
    pub abs_dir: PathBuf,
    /// Jobs that will run.
    pub total: u64,
    /// Resolves to the run's summary.
    pub done: JoinHandle<RunSummary>,
    /// Where large arguments are spilled, and why there.
    pub temp_folder: TempFolder,
    /// The spill store, if any value was spilled: it lives while this (or the run) holds
    /// it, so a library caller can read back what `r+` jobs wrote.
    pub spill: Option<Arc<SpillStore>>,
}

impl PreparedSweep {
    /// Jobs that will run (all of them, or the unfinished ones when resuming).
    pub fn total(&self) -> u64 {
        self.plan.len() - self.done.iter().filter(|n| **n < self.plan.len()).count() as u64
    }

    /// `(num, overrides as Hydra shows them)` of the jobs that will run, lazily.
    pub fn listed(&self) -> impl Iterator<Item = (u64, String)> + '_ {
        (0..self.plan.len()).filter(|n| !self.done.contains(n)).filter_map(|n| self.plan.job(n)).map(|j| {
            let text = j.items.iter().map(|o| o.display()).collect::<Vec<_>>().join(" ");
            (j.num, text)
        })
    }

    /// Create the sweep dir (or adopt it when resuming), open the journal, and run: jobs
    /// are prepared at most `pre_dispatch` ahead of the slots, on a blocking thread (or see
    /// [`PreparedSweep::prepare_on_runtime`]).
    pub fn start(
        self,
        events: Option<mpsc::Sender<Event>>,
        stop: watch::Receiver<Stop>,
    ) -> Result<SweepRun, LayoutError> {
        let total = self.total();
        let PreparedSweep {
            mut layout,
            plan,
            mut options,
            done,
            resuming,
            file_refs,
            base_dir,
            prepare_on_runtime,
            ..
        } = self;
        // Snapshot `@file` arguments before anything is created: running out of space in
        // temp_folder must leave no sweep dir and start no job.
        let launcher = &layout.resolved.launcher;
        let temp_folder = crate::temp::resolve_temp_folder(launcher.temp_folder.as_deref());
        tracing::debug!("temp_folder: {} ({})", temp_folder.path.display(), temp_folder.reason);
        let mut large = LargeArgs::new(launcher.max_nbytes, launcher.mmap_mode, temp_folder.clone());
        large.snapshot(&file_refs, &base_dir)?;
        large.spill_config(&layout.resolved.app)?;
        let large = Arc::new(large);
        layout.large = Some(large.clone());
        if resuming {
            layout.adopt()?;
        } else {
            layout.create()?;
        }
        let journal_path = layout.abs_dir.join("jobs.jsonl");
        let journal = Journal::open(&journal_path).map_err(|source| LayoutError::Io { path: journal_path, source })?;
        options.journal = Some(Arc::new(journal));
        let window = layout.resolved.launcher.pre_dispatch.resolve(options.n_jobs);
        let ahead = window.saturating_sub(options.n_jobs).clamp(1, 4096);
        let (job_tx, job_rx) = mpsc::channel(ahead);
        let layout = Arc::new(layout);
        let producer = {
            let layout = layout.clone();
            let mut stop = stop.clone();
            if prepare_on_runtime && Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
                tokio::spawn(async move {
                    for job in plan.iter().filter(|j| !done.contains(&j.num)) {
                        let Ok(permit) = job_tx.reserve().await else { break };
                        // Room means a job was just taken to start: let it start before
                        // preparing the next one on this thread.
                        tokio::task::yield_now().await;
                        if *stop.borrow_and_update() != Stop::None {
                            break;
                        }
                        permit.send(layout.prepare(&job).into());
                    }
                })
            } else {
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
            }
        };
        let keep = large.clone();
        let runner = tokio::spawn(async move {
            let summary = run(options, job_rx, events, stop).await;
            let _ = producer.await;
            // Spill files must outlive every job that maps them.
            drop(keep);
            summary
        });
        Ok(SweepRun {
            dir: layout.dir.clone(),
            abs_dir: layout.abs_dir.clone(),
            total,
            done: runner,
            temp_folder,
            spill: large.store(),
        })
    }
}

/// What an earlier sweep left: its overrides (as typed) and its successful jobs.
struct Earlier {
    dir: PathBuf,
    overrides: Vec<String>,
    done: HashSet<u64>,
}

fn read_earlier(dir: &Path) -> Result<Earlier, SetupError> {
    let multirun = dir.join("multirun.yaml");
    let text = std::fs::read_to_string(&multirun).map_err(|e| {
        SetupError::Invalid(format!(
            "cannot resume {}: cannot read {}: {e}\n  = help: --resume takes a sweep dir, e.g. multirun/2026-11-24/15-41-20",
            dir.display(),
            multirun.display()
        ))
    })?;
    let doc: Value = serde_yaml::from_str(&text)
        .map_err(|e| SetupError::Invalid(format!("cannot resume: {} is not valid YAML: {e}", multirun.display())))?;
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
    let done = match crate::journal::read_journal(&dir.join("jobs.jsonl")) {
        Ok(records) => {
            records.iter().filter(|r| r["status"] == "succeeded").filter_map(|r| r["num"].as_u64()).collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
        Err(e) => {
            return Err(SetupError::Invalid(format!(
                "cannot resume: cannot read {}: {e}",
                dir.join("jobs.jsonl").display()
            )));
        }
    };
    Ok(Earlier { dir: dir.to_path_buf(), overrides, done })
}

impl PreparedSweep {
    /// Validate everything a sweep needs, without creating anything: the config, the
    /// overrides, the plan, the app, the first and last jobs' composition and dirs.
    pub fn prepare(req: &SweepRequest) -> Result<PreparedSweep, SetupError> {
        let args = req;
        let loaded = match &args.config {
            ConfigInput::File(path) => orchestrator_config::load_config_file(path)?,
            ConfigInput::Text { text, name } => load_config_str(text, name)?,
            ConfigInput::Defaults => load_config_str("", Path::new("<defaults>"))?,
        };
        let earlier = args.resume.as_deref().map(read_earlier).transpose()?;
        let multirun = args.multirun || earlier.is_some();
        let given = match &earlier {
            Some(e) if args.overrides.is_empty() => e.overrides.clone(),
            Some(e) if args.overrides != e.overrides => {
                return Err(SetupError::Invalid(format!(
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
                    return Err(SetupError::Invalid(format!(
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

        let cwd = args.base_dir.clone();
        let config_dir = args.config.path().and_then(|p| p.parent()).map(|p| cwd.join(p));
        let ctx = SweepContext { config_dir, cwd: cwd.clone(), seed: None };
        let refs = crate::args::file_refs(&app_overrides);
        for r in &refs {
            let path = cwd.join(&r[1..]);
            if let Err(e) = std::fs::File::open(&path)
                .and_then(|f| f.metadata())
                .and_then(|m| if m.is_file() { Ok(()) } else { Err(std::io::Error::other("not a regular file")) })
            {
                return Err(SetupError::Invalid(format!(
                    "cannot read the argument file `{r}` ({}): {e}\n  = help: `key=@path` passes the file's contents; quote the value ('@...') to pass the text itself",
                    path.display()
                )));
            }
        }
        let plan = SweepPlan::new(app_overrides, &ctx)?;
        if !multirun && plan.is_sweep() {
            let swept = plan
                .sweep_overrides()
                .into_iter()
                .find(|s| s.contains(',') || s.contains("..") || s.contains('('))
                .unwrap_or_default();
            return Err(SetupError::Invalid(format!(
                "ambiguous value for argument `{swept}`: it is a sweep, but --multirun was not given\n  = help: add --multirun (-m) to run one job per value, or quote the value to use it as one string"
            )));
        }
        check_program(&args.app)?;

        let launcher = &resolved.launcher;
        let options = RunOptions::from_launcher(launcher).map_err(SetupError::Invalid)?;
        let n_jobs = options.n_jobs;
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
            .path()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config".into());
        let abs_dir = cwd.join(&dir);
        // Paths are shown (and opened) relative to this process's cwd when they are below it,
        // as Hydra prints them; a service with another base dir gets absolute paths.
        let shown = match std::env::current_dir() {
            Ok(here) => abs_dir.strip_prefix(&here).map(Path::to_path_buf).unwrap_or_else(|_| abs_dir.clone()),
            Err(_) => abs_dir.clone(),
        };
        let mut layout = SweepLayout {
            dir: shown,
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
            large: None,
            hydra_text: Default::default(),
        };
        if total > 0 {
            let job0 = plan.job(0).ok_or_else(|| SetupError::Invalid("the sweep has no job 0".into()))?;
            layout.check(&job0)?;
            layout.detect_placeholders(&job0)?;
            if total > 1
                && let Some(last) = plan.job(total - 1)
            {
                layout.check(&last)?;
            }
        }
        let resuming = earlier.is_some();
        let done = Arc::new(earlier.map(|e| e.done).unwrap_or_default());
        Ok(PreparedSweep {
            layout,
            plan: Arc::new(plan),
            options,
            banner,
            done,
            resuming,
            file_refs: refs,
            base_dir: cwd,
            prepare_on_runtime: false,
        })
    }
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
) -> Result<(orchestrator_config::ResolvedConfig, Vec<String>), SetupError> {
    let plan =
        SweepPlan::new(overrides.to_vec(), &SweepContext { config_dir: None, cwd: PathBuf::from("."), seed: None })?;
    let mut root = loaded.root.clone();
    let mut overridden = HashMap::new();
    let mut texts = Vec::new();
    if let Some(job) = plan.job(0) {
        apply_overrides(&mut root, &job.items).map_err(|e| SetupError::Invalid(e.to_string()))?;
        for (o, item) in overrides.iter().zip(&job.items) {
            overridden.insert(item.key.clone(), o.input.clone());
            texts.push(o.input.clone());
        }
    }
    Ok((loaded.resolve_root(&root, &overridden)?, texts))
}

/// The app must exist and be executable before anything is created.
fn check_program(app: &[OsString]) -> Result<(), SetupError> {
    let Some(program) = app.first() else {
        return Err(SetupError::Invalid("no app given after `--`".into()));
    };
    let path = Path::new(program);
    let shown = path.display();
    if path.components().count() > 1 || program.to_string_lossy().contains('/') {
        let meta =
            std::fs::metadata(path).map_err(|e| SetupError::Invalid(format!("app `{shown}` cannot be run: {e}")))?;
        use std::os::unix::fs::PermissionsExt;
        if meta.is_dir() {
            return Err(SetupError::Invalid(format!("app `{shown}` is a directory, not a program")));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(SetupError::Invalid(format!(
                "app `{shown}` is not executable\n  = help: `chmod +x {shown}`, or run it through its interpreter (e.g. `-- python3 {shown}`)"
            )));
        }
        Ok(())
    } else {
        which::which(program).map(|_| ()).map_err(|_| {
            SetupError::Invalid(format!(
                "app `{shown}` was not found in PATH\n  = help: give its path (e.g. `./{shown}`) or install it"
            ))
        })
    }
}
