//! A whole sweep, as the CLI runs it: validate the config, overrides and app, lay out the
//! Hydra tree, and run its jobs under the supervisor, each prepared as a slot takes it.
//!
//! [`PreparedSweep::prepare`] checks everything and creates nothing; [`PreparedSweep::start`]
//! creates the sweep dir (or adopts it, to resume) and runs the jobs.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Local;
use orchestrator_config::compose::apply_overrides;
use orchestrator_config::grammar::{Override, OverrideError, OverrideKind, parse_override};
use orchestrator_config::sweep::{SweepContext, SweepError, SweepPlan};
use orchestrator_config::{ConfigError, LoadedConfig, load_config_str};
use serde_yaml::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use orchestrator::JobStatus;
use orchestrator::journal::{Journal, JournalRecord};
use orchestrator::spill::SpillStore;
use orchestrator::temp::TempFolder;
use orchestrator::{Event, JobSource, RunOptions, RunSummary, Stop, run};

use crate::args::LargeArgs;
use crate::layout::{LayoutError, SweepLayout, job_name_for};

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
    /// A `temp_folder` that cannot hold spill files.
    #[error(transparent)]
    TempFolder(#[from] orchestrator::temp::TempFolderError),
    /// The launcher's values as run options (slot values).
    #[error(transparent)]
    Options(#[from] crate::options::OptionsError),
    /// The Slurm cluster cannot be used, or refused the sweep's submission (tested with
    /// `sbatch --test-only`, so nothing was queued).
    #[error(transparent)]
    Slurm(#[from] orchestrator::backend::slurm::SlurmError),
    /// Anything else about the request (the app, resume).
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
    /// The resumed dir's lock, taken while preparing (a fresh sweep's is taken when its dir
    /// is made).
    lock: Option<DirLock>,
    /// Where large values go, resolved (and checked) while preparing.
    temp_folder: TempFolder,
    /// How this sweep was started, written into its dir (a fresh sweep's only).
    pub record: crate::record::SweepRecord,
    /// With `backend: slurm`: how to submit (its batch dir is set when the sweep dir exists).
    pub slurm: Option<orchestrator::backend::slurm::SlurmSettings>,
    /// Things to say once before the run (e.g. how `timeout` became Slurm's `--time`).
    pub notes: Vec<String>,
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

/// A job as a dry run shows it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PlannedJob {
    /// Its number.
    pub num: u64,
    /// Its overrides, as Hydra shows them.
    pub overrides: Vec<String>,
    /// Its dir, or why it could not be prepared.
    pub dir: Result<PathBuf, String>,
    /// Its command: the program, then its arguments (large values as they would be passed
    /// are not spilled in a dry run: shown as typed).
    pub argv: Vec<OsString>,
}

/// Up to how many jobs every job is composed before anything starts (when some could fail,
/// or share a dir).
const CHECK_EVERY_JOB_MAX: u64 = 100_000;

/// How many jobs [`orchestrator::RunInfo::listed`] names (a header lists them).
pub const LISTED_MAX: usize = 1000;

impl PreparedSweep {
    /// Jobs that will run (all of them, or the unfinished ones when resuming).
    pub fn total(&self) -> u64 {
        self.plan.len() - self.done.iter().filter(|n| **n < self.plan.len()).count() as u64
    }

    /// What each job that would run is, lazily, for a dry run: its number, overrides, dir
    /// and command, or why it could not be prepared. Nothing is created.
    pub fn planned(&self) -> impl Iterator<Item = PlannedJob> + '_ {
        (0..self.plan.len()).filter(|n| !self.done.contains(n)).filter_map(|n| self.plan.job(n)).map(|j| {
            let overrides = j.items.iter().map(|o| o.display()).collect();
            let (dir, argv) = match self.layout.check(&j) {
                Ok(sub) => {
                    let dir = if sub.is_empty() { self.layout.dir.clone() } else { self.layout.dir.join(sub) };
                    (Ok(dir), self.layout.argv_preview(&j))
                }
                Err(e) => (Err(e.to_string()), Vec::new()),
            };
            PlannedJob { num: j.num, overrides, dir, argv }
        })
    }

    /// `(num, overrides as Hydra shows them)` of the jobs that will run, lazily.
    pub fn listed(&self) -> impl Iterator<Item = (u64, String)> + '_ {
        (0..self.plan.len()).filter(|n| !self.done.contains(n)).filter_map(|n| self.plan.job(n)).map(|j| {
            let text = j.items.iter().map(|o| o.display()).collect::<Vec<_>>().join(" ");
            (j.num, text)
        })
    }

    /// Create the sweep dir (or adopt it when resuming), open the journal, and run: each
    /// job is prepared by the slot that takes it, just before it starts.
    pub fn start(
        self,
        events: Option<mpsc::Sender<Event>>,
        stop: watch::Receiver<Stop>,
    ) -> Result<SweepRun, LayoutError> {
        let total = self.total();
        let listed: Vec<(u64, String)> = self.listed().take(LISTED_MAX).collect();
        let PreparedSweep {
            mut layout,
            plan,
            mut options,
            done,
            resuming,
            file_refs,
            base_dir,
            lock,
            mut temp_folder,
            banner,
            record,
            slurm,
            ..
        } = self;
        let mut info = orchestrator::RunInfo::new(banner);
        info.total = Some(total);
        info.dir = Some(layout.dir.clone());
        info.listed = listed;
        info.resumed = resuming.then(|| (plan.len() - total, plan.len()));
        options.info = info;
        // On Slurm the sweep dir is made first: large arguments go under it (the nodes share
        // it; the submit host's /dev/shm they do not), unless temp_folder says where.
        let mut early_lock = None;
        if slurm.is_some() {
            early_lock = Some(if resuming {
                layout.adopt()?;
                None
            } else {
                layout.create()?;
                DirLock::take(&layout.abs_dir, &layout.dir)
                    .map_err(|e| LayoutError::Io { path: layout.abs_dir.clone(), source: std::io::Error::other(e) })?
            });
            if layout.resolved.launcher.temp_folder.is_none() {
                temp_folder = TempFolder {
                    path: layout.abs_dir.join(".slurm").join("args"),
                    reason: "the sweep dir, which the Slurm nodes share".into(),
                };
            }
        }
        // Snapshot `@file` arguments before anything is created: running out of space in
        // temp_folder must leave no sweep dir and start no job.
        let launcher = &layout.resolved.launcher;
        tracing::debug!("temp_folder: {} ({})", temp_folder.path.display(), temp_folder.reason);
        let mut large = LargeArgs::new(launcher.max_nbytes, launcher.mmap_mode, temp_folder.clone());
        large.snapshot(&file_refs, &base_dir)?;
        large.spill_config(&layout.resolved.app)?;
        let large = Arc::new(large);
        layout.large = Some(large.clone());
        let lock = if let Some(early) = early_lock {
            if resuming { lock } else { early }
        } else if resuming {
            layout.adopt()?;
            lock
        } else {
            layout.create()?;
            // Taken at once: nobody else knows this new dir yet. Held until the run ends, so
            // that a resume of it cannot start meanwhile.
            DirLock::take(&layout.abs_dir, &layout.dir)
                .map_err(|e| LayoutError::Io { path: layout.abs_dir.clone(), source: std::io::Error::other(e) })?
        };
        if !resuming {
            // The resumed sweep keeps the record it was started with.
            record
                .write(&layout.abs_dir)
                .map_err(|source| LayoutError::Io { path: layout.abs_dir.join(crate::record::RECORD_FILE), source })?;
        }
        let journal_path = layout.abs_dir.join("jobs.jsonl");
        let journal = Journal::open(&journal_path).map_err(|source| LayoutError::Io { path: journal_path, source })?;
        options.journal = Some(Arc::new(journal));
        if let Some(mut settings) = slurm {
            settings.work_dir = layout.abs_dir.join(".slurm");
            settings.expected = total;
            settings.job_name = layout.job_name.clone();
            settings.watchdog = options.watchdog;
            settings.resuming = resuming;
            // A slot is a task that waits for its job's array task: as many as jobs, and
            // Slurm's throttle (%P) keeps n_jobs of them running.
            options.n_jobs = usize::try_from(total).unwrap_or(usize::MAX).max(1);
            options.backend = Some(Arc::new(orchestrator::backend::slurm::SlurmBackend::new(settings)));
        }
        let layout = Arc::new(layout);
        // Each job is prepared by the slot that takes it, on that slot's thread, just before
        // it starts (so never more than `pre_dispatch` ahead): no thread hands jobs over.
        let source = {
            let layout = layout.clone();
            let mut next = 0u64;
            JobSource::Lazy(Box::new(move || {
                while next < plan.len() {
                    let num = next;
                    next += 1;
                    if !done.contains(&num)
                        && let Some(job) = plan.job(num)
                    {
                        return Some(layout.prepare(&job).into());
                    }
                }
                None
            }))
        };
        let keep = large.clone();
        let runner = tokio::spawn(async move {
            let summary = run(options, source, events, stop).await;
            // Spill files must outlive every job that maps them.
            drop(keep);
            drop(lock);
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

/// What an earlier sweep left: its overrides (as typed), its jobs' records, and the lock
/// that keeps any other run out of its dir while this one resumes it.
struct Earlier {
    /// As given to `--resume`.
    dir: PathBuf,
    /// Its `hydra.*` overrides (without `hydra.mode=`), then its sweep's.
    hydra: Vec<String>,
    task: Vec<String>,
    /// `hydra.sweep.subdir` as the sweep had it.
    subdir: Option<String>,
    /// Every readable record: job number, overrides, whether it succeeded, its dir.
    records: Vec<JournalRecord>,
    lock: Option<DirLock>,
}

/// An exclusive `flock` on a sweep dir, held while a run or a resume uses it.
#[derive(Debug)]
struct DirLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

impl DirLock {
    /// Lock `dir`, or say that another run holds it. Where locks cannot be taken at all (a
    /// file system without `flock`), the run goes on unlocked, with a warning.
    fn take(dir: &Path, shown: &Path) -> Result<Option<DirLock>, String> {
        let unlocked = |why: String| {
            tracing::warn!("cannot lock {} ({why}): a resume of it could run at the same time", shown.display());
            Ok(None)
        };
        let file = match std::fs::File::open(dir) {
            Ok(f) => f,
            Err(e) => return unlocked(e.to_string()),
        };
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(DirLock(lock))),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(format!(
                "{} is in use by another orchestrator run (the sweep itself, or another resume of it)\n  = help: wait for that run to end, then resume",
                shown.display()
            )),
            Err((_, e)) => unlocked(e.to_string()),
        }
    }
}

fn read_earlier(dir: &Path, base_dir: &Path) -> Result<Earlier, SetupError> {
    let path = base_dir.join(dir);
    let multirun = path.join("multirun.yaml");
    let invalid = |why: String| SetupError::Invalid(format!("cannot resume {}: {why}", dir.display()));
    let text = std::fs::read_to_string(&multirun).map_err(|e| {
        invalid(format!(
            "cannot read {}: {e}\n  = help: --resume takes a sweep dir, e.g. multirun/2026-11-24/15-41-20",
            multirun.display()
        ))
    })?;
    let doc: Value =
        serde_yaml::from_str(&text).map_err(|e| invalid(format!("{} is not valid YAML: {e}", multirun.display())))?;
    let not_a_sweep = |what: &str| {
        invalid(format!(
            "{} has no {what}, so it is not the multirun.yaml of a sweep\n  = help: --resume takes a dir made by `orchestrator run --multirun` (or by Hydra), e.g. multirun/2026-11-24/15-41-20",
            multirun.display()
        ))
    };
    let strings = |v: Option<&Value>, what: &str| -> Result<Vec<String>, SetupError> {
        let seq = v.and_then(Value::as_sequence).ok_or_else(|| not_a_sweep(&format!("`{what}` list")))?;
        seq.iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| not_a_sweep(&format!("string in `{what}`"))))
            .collect()
    };
    let overrides_node = doc.get("hydra").and_then(|h| h.get("overrides"));
    let hydra: Vec<String> = strings(overrides_node.and_then(|o| o.get("hydra")), "hydra.overrides.hydra")?
        .into_iter()
        .filter(|o| !o.starts_with("hydra.mode="))
        .collect();
    let task = strings(overrides_node.and_then(|o| o.get("task")), "hydra.overrides.task")?;
    let subdir = doc
        .get("hydra")
        .and_then(|h| h.get("sweep"))
        .and_then(|s| s.get("subdir"))
        .and_then(Value::as_str)
        .map(str::to_string);
    // Before the journal is read: a run still writing it would change what it says.
    let lock = DirLock::take(&path, dir).map_err(invalid)?;
    let journal = path.join("jobs.jsonl");
    let records = match orchestrator::journal::read_journal(&journal) {
        Ok(records) => records,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(invalid(format!("cannot read {}: {e}", journal.display()))),
    };
    Ok(Earlier { dir: dir.to_path_buf(), hydra, task, subdir, records, lock })
}

/// Whether an override (as typed) is Hydra's own (a `hydra.*` key, or a `hydra/…` group
/// choice) rather than the app's config.
fn is_hydra(o: &Override) -> bool {
    o.key == "hydra" || o.key.starts_with("hydra.") || o.key.starts_with("hydra/")
}

impl PreparedSweep {
    /// Validate everything a sweep needs, without creating anything: the config, the
    /// overrides, the plan, the app, the first and last jobs' composition and dirs.
    pub fn prepare(req: &SweepRequest) -> Result<PreparedSweep, SetupError> {
        let args = req;
        let mut loaded = match &args.config {
            ConfigInput::File(path) => orchestrator_config::load_config_file(path)?,
            ConfigInput::Text { text, name } => load_config_str(text, name)?,
            ConfigInput::Defaults => load_config_str("", Path::new("<defaults>"))?,
        };
        let earlier = args.resume.as_deref().map(|d| read_earlier(d, &args.base_dir)).transpose()?;
        let multirun = args.multirun || earlier.is_some();
        let given = match &earlier {
            None => args.overrides.clone(),
            Some(e) => {
                // The sweep's own overrides define its jobs and must not change; launcher
                // settings may (a longer timeout for the jobs that timed out): the sweep's
                // apply first, these after them.
                let mut hydra_given = Vec::new();
                let mut task_given = Vec::new();
                for text in &args.overrides {
                    if is_hydra(&parse_override(text)?) {
                        hydra_given.push(text.clone())
                    } else {
                        task_given.push(text.clone())
                    }
                }
                if !task_given.is_empty() && task_given != e.task {
                    return Err(SetupError::Invalid(format!(
                        "cannot resume {}: its sweep was `{}`, these overrides sweep `{}`\n  = help: give the same sweep overrides in the same order, or none to reuse the sweep's; `hydra.*` settings may change",
                        e.dir.display(),
                        e.task.join(" "),
                        task_given.join(" ")
                    )));
                }
                e.hydra.iter().chain(&hydra_given).chain(&e.task).cloned().collect()
            }
        };
        let mut hydra_overrides: Vec<Override> = Vec::new();
        let mut app_overrides: Vec<Override> = Vec::new();
        // Hydra's own config group choices (`hydra/launcher=joblib`): recorded, never passed on.
        let mut hydra_groups: Vec<String> = Vec::new();
        for text in &given {
            let o = parse_override(text)?;
            if let Some(group) = o.key.strip_prefix("hydra/") {
                let value = text.split_once('=').map_or("", |(_, v)| v).trim().to_string();
                if group == "launcher" && !value.contains("joblib") {
                    return Err(SetupError::Invalid(format!(
                        "`{text}`: orchestrator is a joblib launcher, it cannot run jobs through `{value}`\n  = help: drop it, or use hydra/launcher=joblib"
                    )));
                }
                // Given again on resume, it is the sweep's already.
                if !hydra_groups.contains(text) {
                    hydra_groups.push(text.clone());
                }
                continue;
            }
            if is_hydra(&o) {
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
        let (resolved, mut hydra_texts) = resolve_with_overrides(&mut loaded, &hydra_overrides)?;
        let hydra_doc = &resolved.hydra_doc;
        hydra_texts.splice(0..0, hydra_groups);
        // Hydra's BasicSweeper: the config's `hydra.sweeper.params` come first, then the command
        // line's overrides (a key given again keeps its first position and takes the new value).
        let params = if multirun { sweeper_params(hydra_doc)? } else { Vec::new() };
        let n_params = params.len();
        app_overrides.splice(0..0, params);

        let cwd = args.base_dir.clone();
        let config_dir = args.config.path().and_then(|p| p.parent()).map(|p| cwd.join(p));
        let ctx = SweepContext { config_dir, cwd: cwd.clone(), seed: None };
        let refs = crate::args::file_refs(&app_overrides);
        for r in &refs {
            let path = cwd.join(&r[1..]);
            // The kind first: opening a FIFO would wait for a writer.
            if let Err(e) = std::fs::metadata(&path)
                .and_then(|m| if m.is_file() { Ok(()) } else { Err(std::io::Error::other("not a regular file")) })
                .and_then(|()| std::fs::File::open(&path).map(drop))
            {
                return Err(SetupError::Invalid(format!(
                    "cannot read the argument file `{r}` ({}): {e}\n  = help: `key=@path` passes the file's contents; quote the value ('@...') to pass the text itself",
                    path.display()
                )));
            }
        }
        // The command line's own (kind, key)s: multirun.yaml applies those that are not
        // sweeps, never the sweeper's params (Hydra's sweeper adds them later).
        let typed_keys: Vec<(OverrideKind, String)> =
            app_overrides[n_params..].iter().map(|o| (o.kind, o.key.clone())).collect();
        // `+`, `++` and `~` can fail for some values and not others (`a=1,2 '~a=2'`).
        let per_value_risk = app_overrides.iter().any(|o| o.kind != OverrideKind::Change);
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
        let launcher = &resolved.launcher;
        let on_slurm = launcher.exec == orchestrator_config::ExecBackend::Slurm;
        // Where the jobs run decides whether the local PATH says anything about the app.
        check_program(&args.app, !on_slurm)?;
        let mut options = crate::options::run_options(launcher)?;
        // Checked now whenever a value may spill: found out at the first spill, it would fail
        // jobs one by one in a sweep dir made for nothing.
        let temp_folder = orchestrator::temp::resolve_temp_folder(launcher.temp_folder.as_deref(), &cwd);
        if launcher.max_nbytes.is_some() {
            temp_folder.check()?;
        }
        let n_jobs = options.n_jobs;
        let total = plan.len();
        let mut notes = Vec::new();
        let slurm = if on_slurm {
            Some(crate::options::slurm_settings(launcher, n_jobs, total, &cwd, &mut notes)?)
        } else {
            None
        };
        let job_name = resolved.hydra.job_name.clone().unwrap_or_else(|| job_name_for(&args.app));
        let started = Local::now();
        let template = if multirun { resolved.hydra.sweep_dir.clone() } else { run_dir_template(hydra_doc) };
        let dir = match &earlier {
            Some(e) => e.dir.to_string_lossy().into_owned(),
            None => SweepLayout::resolve_dir(&template, &started, &job_name)?,
        };
        if earlier.is_none() && Path::new(&dir).file_name().is_none() {
            let (key, example) =
                if multirun { ("hydra.sweep.dir", "multirun/my_sweep") } else { ("hydra.run.dir", "outputs/my_run") };
            let what = if template.is_empty() {
                format!("{key} is empty")
            } else {
                format!("{key} `{template}` names no directory to create")
            };
            return Err(SetupError::Invalid(format!(
                "{what}\n  = help: give a new directory, e.g. {key}={example} (a name that is taken gets a fresh `_1`, `_2`... suffix)"
            )));
        }
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
        // `hydra.sweep.dir=/dev/null` made `/dev/null_1`: a path that exists must be a dir.
        if earlier.is_none()
            && let Ok(meta) = std::fs::metadata(&abs_dir)
            && !meta.is_dir()
        {
            let key = if multirun { "hydra.sweep.dir" } else { "hydra.run.dir" };
            return Err(SetupError::Invalid(format!(
                "{key} `{dir}` is a file, not a directory\n  = help: give a directory path (a new one is made), e.g. {key}=multirun/my_sweep"
            )));
        }
        // Paths are shown (and opened) relative to this process's cwd when they are below it,
        // as Hydra prints them; a service with another base dir gets absolute paths.
        let shown = match std::env::current_dir() {
            Ok(here) => abs_dir.strip_prefix(&here).map(Path::to_path_buf).unwrap_or_else(|_| abs_dir.clone()),
            Err(_) => abs_dir.clone(),
        };
        // `--resume .`: the cwd itself.
        let shown = if shown.as_os_str().is_empty() { PathBuf::from(".") } else { shown };
        let hydra_app = resolved.launcher.hydra_app.unwrap_or_else(|| crate::layout::is_hydra_app(&args.app, &cwd));
        if hydra_app && let Some(warm) = options.warm.as_mut() {
            warm.preload = crate::layout::hydra_preload(&args.app, &cwd, std::mem::take(&mut warm.preload));
        }
        let mut layout = SweepLayout {
            dir: shown,
            abs_dir,
            job_name,
            resolved,
            config_name,
            command: args.app.clone(),
            placeholders: false,
            hydra_app,
            hydra_overrides: hydra_texts,
            // As typed on the command line (multirun.yaml's `task` list, as Hydra writes it).
            sweep_overrides: plan.sweep_overrides().split_off(n_params),
            fixed: plan.fixed().into_iter().filter(|f| typed_keys.contains(&(f.kind, f.key.clone()))).collect(),
            multirun,
            started,
            n_jobs,
            large: None,
            hydra_text: Default::default(),
        };
        if total > 0 {
            // An error names the job: with a sweep, which values it comes from matters.
            let check = |job: &orchestrator_config::sweep::JobOverrides| {
                layout.check(job).map_err(|e| {
                    let shown: Vec<String> = job.items.iter().map(|i| i.display()).collect();
                    SetupError::Invalid(format!("job #{} ({}): {e}", job.num, shown.join(" ")))
                })
            };
            let job0 = plan.job(0).ok_or_else(|| SetupError::Invalid("the sweep has no job 0".into()))?;
            check(&job0)?;
            if total > 1
                && let Some(last) = plan.job(total - 1)
            {
                check(&last)?;
            }
            // The others too when some could fail, or when their dirs could coincide (a
            // subdir without the job's number), as long as that stays cheap (about 10 us a
            // job); a bigger sweep finds out job by job, each recorded as not started.
            let dirs_may_coincide = multirun && total > 1 && !layout.subdirs_unique_by_template();
            if dirs_may_coincide && total > CHECK_EVERY_JOB_MAX {
                return Err(SetupError::Invalid(format!(
                    "hydra.sweep.subdir `{}` has no ${{hydra.job.num}}, and {total} jobs are too many to check that no two share a dir\n  = help: put ${{hydra.job.num}} (or ${{hydra.job.id}}) in hydra.sweep.subdir",
                    layout.resolved.hydra.sweep_subdir
                )));
            }
            if (per_value_risk || dirs_may_coincide) && total <= CHECK_EVERY_JOB_MAX {
                let mut seen: HashMap<String, u64> = HashMap::new();
                for job in plan.iter() {
                    // Jobs 0 and N-1 were checked above; their dirs are needed here too.
                    if !dirs_may_coincide && (job.num == 0 || job.num == total - 1) {
                        continue;
                    }
                    let sub = check(&job)?;
                    if dirs_may_coincide && let Some(first) = seen.insert(sub.clone(), job.num) {
                        return Err(SetupError::Invalid(format!(
                            "jobs #{first} and #{} would share one dir, {}: hydra.sweep.subdir `{}` gives both the same path, and their logs and .hydra files would mix\n  = help: put ${{hydra.job.num}} in hydra.sweep.subdir (e.g. `{}`)",
                            job.num,
                            layout.dir.join(&sub).display(),
                            layout.resolved.hydra.sweep_subdir,
                            match layout.resolved.hydra.sweep_subdir.as_str() {
                                "" => String::from("${hydra.job.num}"),
                                t => format!("{t}_${{hydra.job.num}}"),
                            },
                        )));
                    }
                }
            }
            layout.detect_placeholders(&job0)?;
        }
        let resuming = earlier.is_some();
        let (done, lock) = match earlier {
            Some(e) => (check_earlier_jobs(&e, &plan, &layout)?, e.lock),
            None => (HashSet::new(), None),
        };
        let done = Arc::new(done);
        Ok(PreparedSweep {
            layout,
            plan: Arc::new(plan),
            options,
            banner,
            done,
            resuming,
            file_refs: refs,
            base_dir: cwd,
            lock,
            temp_folder,
            record: crate::record::SweepRecord {
                version: 1,
                config: match &args.config {
                    ConfigInput::Defaults => None,
                    _ => Some(crate::record::RecordedConfig { path: loaded.path.clone(), text: loaded.text.clone() }),
                },
                overrides: args.overrides.clone(),
                app: args.app.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
                base_dir: args.base_dir.clone(),
                jobs: total,
                n_jobs,
            },
            slurm,
            notes,
        })
    }
}

/// `hydra.run.dir` for single runs: Hydra's default unless the config (or an override)
/// sets it.
fn run_dir_template(root: &Value) -> String {
    root.get("hydra")
        .and_then(|h| h.get("run"))
        .and_then(|r| r.get("dir"))
        .and_then(Value::as_str)
        .unwrap_or("outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}")
        .to_string()
}

/// `hydra.sweeper.params` (`key: sweep` pairs, e.g. `task: 1,2,3`) as overrides, in order.
fn sweeper_params(root: &Value) -> Result<Vec<Override>, SetupError> {
    let Some(params) = root.get("hydra").and_then(|h| h.get("sweeper")).and_then(|s| s.get("params")) else {
        return Ok(Vec::new());
    };
    let help =
        "  = help: each entry is `key: <sweep>` as on the command line, e.g. `task: 1,2,3` or `lr: range(0.1,0.5,0.1)`";
    let Some(map) = params.as_mapping() else {
        if params.is_null() {
            return Ok(Vec::new());
        }
        return Err(SetupError::Invalid(format!("hydra.sweeper.params must be a mapping\n{help}")));
    };
    map.iter()
        .map(|(k, v)| {
            let Some(key) = k.as_str() else {
                return Err(SetupError::Invalid(format!("hydra.sweeper.params: a key must be a string\n{help}")));
            };
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Null => "null".into(),
                Value::Bool(_) | Value::Number(_) => orchestrator_config::interp::scalar_text(v),
                // Hydra writes `f"{k}={v}"`: a list is one value, a list.
                Value::Sequence(_) => serde_json::to_string(v).unwrap_or_default(),
                _ => {
                    return Err(SetupError::Invalid(format!(
                        "hydra.sweeper.params.{key} must be a value or a sweep written as text\n{help}"
                    )));
                }
            };
            parse_override(&format!("{key}={value}"))
                .map_err(|e| SetupError::Invalid(format!("in hydra.sweeper.params.{key}: {e}")))
        })
        .collect()
}

/// A recorded override as this version shows it; as recorded if it does not read as one value.
fn normalized(recorded: &str) -> String {
    use orchestrator_config::grammar::{OverrideValue, parse_override};
    match parse_override(recorded) {
        Ok(o) => {
            let value = match o.value {
                None => None,
                Some(OverrideValue::Element(e)) => Some(e),
                Some(_) => return recorded.to_string(),
            };
            orchestrator_config::sweep::ResolvedOverride { kind: o.kind, key: o.key, value }.display()
        }
        Err(_) => recorded.to_string(),
    }
}

/// A resumed sweep must expand to the jobs its journal recorded, under the same dir names.
/// Returns the numbers of the jobs that succeeded.
fn check_earlier_jobs(e: &Earlier, plan: &SweepPlan, layout: &SweepLayout) -> Result<HashSet<u64>, SetupError> {
    let invalid = |why: String| SetupError::Invalid(format!("cannot resume {}: {why}", e.dir.display()));
    if let Some(old) = &e.subdir
        && *old != layout.resolved.hydra.sweep_subdir
    {
        return Err(invalid(format!(
            "its jobs' dirs were named by hydra.sweep.subdir `{old}`, this config names them `{}`\n  = help: resume with the sweep's config (-c), or add hydra.sweep.subdir='{old}'",
            layout.resolved.hydra.sweep_subdir
        )));
    }
    let mut done = HashSet::new();
    // By job number, so that the error names the first job that differs.
    let mut records: Vec<&JournalRecord> = e.records.iter().collect();
    records.sort_by_key(|r| r.num);
    for r in records {
        let (num, recorded, dir) = (&r.num, &r.overrides, &r.dir);
        let job = plan.job(*num);
        let now: Option<Vec<String>> =
            job.as_ref().map(|j| j.items.iter().map(orchestrator_config::sweep::ResolvedOverride::display).collect());
        // Read back and shown again: a journal written by an earlier version shows the same
        // job in other words (`flag=true`, `~b` where this one writes `flag=True`, `~b=null`).
        let overrides: Vec<String> = recorded.iter().map(|o| normalized(o)).collect();
        if now.as_ref() != Some(&overrides) {
            let now = match &now {
                Some(o) => format!("makes job #{num} `{}`", o.join(" ")),
                None => format!("has no job #{num}"),
            };
            return Err(invalid(format!(
                "its journal has job #{num} as `{}`, but the sweep now {now}\n  = help: resuming needs the same jobs in the same order; shuffle() and glob() (over files that changed) do not expand the same way twice, so start a new sweep",
                recorded.join(" ")
            )));
        }
        // The same dir, too: a subdir made of values (`${name}`, override_dirname's settings)
        // can move with another config even when the template reads the same.
        if let (Some(dir), Some(job)) = (dir, job) {
            let sub = layout
                .compose(&job)
                .and_then(|config| layout.subdir(&job, &config))
                .map_err(|e| invalid(e.to_string()))?;
            if !sub.is_empty() && !Path::new(dir.as_ref()).ends_with(&sub) {
                return Err(invalid(format!(
                    "its journal has job #{num} in `{dir}`, but this config puts it in `{sub}`\n  = help: resume with the sweep's config (-c), so that every job keeps its dir"
                )));
            }
        }
        if r.status == JobStatus::Succeeded {
            done.insert(*num);
        }
    }
    Ok(done)
}

/// Apply `hydra.*` overrides to the document and validate the result; errors about an
/// overridden key point at the override. The document is taken out of `loaded` (which keeps
/// its text, for the record and error snippets): a large config is not copied for this.
fn resolve_with_overrides(
    loaded: &mut LoadedConfig,
    overrides: &[Override],
) -> Result<(orchestrator_config::ResolvedConfig, Vec<String>), SetupError> {
    // `hydra.launcher.n_jobs=2` is how the current plugin's users write it: with the seed's
    // `class`/`params` form it means `hydra.launcher.params.joblib.n_jobs`.
    let params_form = loaded.root.get("hydra").and_then(|h| h.get("launcher")).and_then(|l| l.get("params")).is_some();
    let overrides: Vec<Override> = overrides
        .iter()
        .cloned()
        .map(|mut o| {
            if params_form
                && let Some(k) = o.key.strip_prefix("hydra.launcher.")
                // Any other key too, so that a misspelt one is checked (with a suggestion)
                // against joblib's keys.
                && !["class", "params", "orchestrator"].contains(&k.split('.').next().unwrap_or_default())
            {
                o.key = format!("hydra.launcher.params.joblib.{k}");
            }
            o
        })
        .collect();
    let plan =
        SweepPlan::new(overrides.clone(), &SweepContext { config_dir: None, cwd: PathBuf::from("."), seed: None })?;
    let mut root = std::mem::replace(&mut loaded.root, Value::Null);
    let mut overridden = HashMap::new();
    let mut texts = Vec::new();
    if let Some(job) = plan.job(0) {
        apply_overrides(&mut root, &job.items).map_err(|e| SetupError::Invalid(e.to_string()))?;
        for (o, item) in overrides.iter().zip(&job.items) {
            overridden.insert(item.key.clone(), o.input.clone());
            texts.push(o.input.clone());
        }
    }
    Ok((loaded.resolve_root(root, &overridden)?, texts))
}

/// The app must exist and be executable before anything is created. Jobs that run elsewhere
/// (`local` false: a cluster's nodes) may find a bare name in their own `PATH`.
fn check_program(app: &[OsString], local: bool) -> Result<(), SetupError> {
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
    } else if !local {
        if which::which(program).is_err() {
            tracing::warn!("app `{shown}` is not in this machine's PATH; the nodes must have it");
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
