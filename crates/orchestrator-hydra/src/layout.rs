//! From a validated config and sweep plan to job specs: the Hydra-compatible output tree.
//!
//! `SweepLayout::create` makes the sweep dir and `multirun.yaml`; `prepare` returns one job's
//! [`JobSpec`], whose `files` are the job's `.hydra/{config,overrides,hydra}.yaml`: the job's
//! process makes its dir, its log and those files as it starts. Everything
//! that can fail because of user input is checked by `SweepLayout::check` before any
//! directory is created.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Local};
use orchestrator_config::compose::apply_overrides;
use orchestrator_config::grammar::Element;
use orchestrator_config::sweep::{JobOverrides, ResolvedOverride};

use orchestrator::{JobFile, JobSpec};
use orchestrator_config::interp::{
    config_text, interpolate, lookup, override_dirname, substitute, typed_override_dirname,
};
use orchestrator_config::yaml_out::{overrides_yaml, yaml_general, yaml_scalar, yaml_text};
use orchestrator_config::{JOBLIB_CLASSES, LauncherForm, ResolvedConfig};
use orchestrator_worker::env;
use serde_yaml::{Mapping, Value};

use crate::args::LargeArgs;

/// Problems found while laying out the sweep; all are the user's input or the filesystem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A `${...}` in `hydra.sweep.dir`/`subdir` that cannot be resolved.
    #[error("cannot resolve `{interpolation}` in {key} `{template}`: {why}")]
    Interpolation {
        /// `hydra.sweep.dir` or `hydra.sweep.subdir`.
        key: &'static str,
        /// The template.
        template: String,
        /// The bad interpolation.
        interpolation: String,
        /// Why.
        why: String,
    },
    /// An override that cannot be applied to the app config.
    #[error("{0}")]
    Compose(String),
    /// `hydra.sweep.subdir` puts a job's dir outside the sweep dir.
    #[error(
        "hydra.sweep.subdir `{template}` gives `{subdir}`, outside the sweep dir\n  = help: give a relative path without `..`, or set hydra.launcher.orchestrator.allow_outside_sweep_dir=true if that is meant"
    )]
    Outside {
        /// The template.
        template: String,
        /// What it gave.
        subdir: String,
    },
    /// A large argument could not be spilled or copied.
    #[error(transparent)]
    Spill(#[from] orchestrator::spill::SpillError),
    /// Creating or writing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io { path: path.to_path_buf(), source }
}

/// What a sweep needs to lay out its jobs.
#[derive(Debug, Clone)]
pub struct SweepLayout {
    /// The sweep directory (relative to the cwd, as Hydra prints it).
    pub dir: PathBuf,
    /// Its absolute path.
    pub abs_dir: PathBuf,
    /// The job name (log file stem, job id prefix).
    pub job_name: String,
    /// The config that every job starts from.
    pub resolved: ResolvedConfig,
    /// The config file's stem (`hydra.job.config_name`).
    pub config_name: String,
    /// The app command: program then arguments.
    pub command: Vec<OsString>,
    /// Whether the command has placeholders (then overrides are not appended).
    pub placeholders: bool,
    /// Whether the app is a Hydra app: each job then gets its own Hydra run dir (its job dir,
    /// with `hydra.run.dir`, `hydra.job.num` and `hydra.job.id` appended to its overrides), where
    /// Hydra writes `.hydra/` and its log itself; ours goes beside them as
    /// `<name>_orchestrator.log`.
    pub hydra_app: bool,
    /// Overrides of `hydra.*` keys, as written (for `hydra.yaml`).
    pub hydra_overrides: Vec<String>,
    /// The sweep's overrides as written (for `multirun.yaml`).
    pub sweep_overrides: Vec<String>,
    /// Its overrides that are not sweeps, applied to the app config in `multirun.yaml`.
    pub fixed: Vec<ResolvedOverride>,
    /// `false` for a single run (no `--multirun`): the job runs in the sweep dir itself.
    pub multirun: bool,
    /// Start time, for `${now:...}`.
    pub started: DateTime<Local>,
    /// Resolved `n_jobs`, exported to jobs.
    pub n_jobs: usize,
    /// Large arguments (`@file` values, values over `max_nbytes`); set when the sweep starts.
    pub large: Option<Arc<LargeArgs>>,
    /// Every job's `hydra.yaml` but for the job's own values, rendered on first use.
    pub(crate) hydra_text: std::sync::OnceLock<HydraText>,
}

/// Whether `command` runs a Hydra app: a Python script (`python x.py`, or a script run
/// directly) whose text uses `hydra.main`. Relative paths are taken from `base_dir`.
pub fn is_hydra_app(command: &[OsString], base_dir: &Path) -> bool {
    let script = match command.first() {
        Some(program) if Path::new(program).file_name().is_some_and(|n| n.to_string_lossy().starts_with("python")) => {
            match command.iter().skip(1).find(|a| a.to_string_lossy().ends_with(".py")) {
                Some(s) => s,
                None => return false,
            }
        }
        Some(program) if program.to_string_lossy().ends_with(".py") => program,
        _ => return false,
    };
    // The start of the file is enough: `@hydra.main` stands above the task function.
    let mut text = Vec::new();
    let path = base_dir.join(script);
    let read = std::fs::File::open(&path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 1 << 20), &mut text));
    if read.is_err() {
        return false;
    }
    let text = String::from_utf8_lossy(&text);
    text.contains("hydra.main(") || (text.contains("from hydra import") && text.contains("main"))
}

/// What a warm interpreter imports for a Hydra app before the config's own list: Hydra, its
/// plugin scan, and the app's script (run as a module that is not `__main__`, `hydra.main`
/// kept from running the task: see the zygote), so that a job only composes and runs.
pub(crate) fn hydra_preload(app: &[OsString], cwd: &Path, own: Vec<String>) -> Vec<String> {
    let script = app.iter().skip(1).find(|a| a.to_string_lossy().ends_with(".py"));
    let mut preload = vec!["hydra".to_owned(), "hydra.core.plugins:Plugins.instance".to_owned()];
    if let Some(path) = script.map(|s| cwd.join(s)).and_then(|p| p.to_str().map(str::to_owned)) {
        preload.push(path);
    }
    preload.extend(own);
    preload
}

/// `text` as one value of Hydra's override grammar: quoted, so that `=`, `,`, spaces and
/// brackets in a path stay in it.
fn hydra_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The name Hydra would give the job: the script's stem for `python x.py`, else the program's.
pub fn job_name_for(command: &[OsString]) -> String {
    let stem = |s: &OsString| {
        Path::new(s).file_stem().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "app".into())
    };
    let Some(program) = command.first() else {
        return "app".into();
    };
    let prog = stem(program);
    if (prog.starts_with("python") || prog == "uv" || prog == "pypy3")
        && let Some(script) = command.iter().skip(1).find(|a| a.to_string_lossy().ends_with(".py"))
    {
        return stem(script);
    }
    prog
}

impl SweepLayout {
    /// Resolve `${...}` in the sweep dir template (only `now:` and `hydra.job.name`).
    pub fn resolve_dir(template: &str, started: &DateTime<Local>, job_name: &str) -> Result<String, LayoutError> {
        interpolate(template, &|expr| {
            if let Some(fmt) = expr.strip_prefix("now:") {
                let mut out = String::new();
                write!(out, "{}", started.format(fmt))
                    .map_err(|_| format!("`{fmt}` is not a valid strftime format"))?;
                Ok(out)
            } else if expr == "hydra.job.name" {
                Ok(job_name.to_string())
            } else {
                Err("only ${now:<strftime format>} and ${hydra.job.name} can be used in the sweep dir".to_string())
            }
        })
        .map_err(|(interpolation, why)| LayoutError::Interpolation {
            key: "hydra.sweep.dir",
            template: template.to_string(),
            interpolation,
            why,
        })
    }

    /// Check that job `num` can be composed and named, without writing anything.
    /// Returns the job's subdir.
    pub fn check(&self, job: &JobOverrides) -> Result<String, LayoutError> {
        let config = self.compose(job)?;
        self.subdir(job, &config)
    }

    /// Whether every job's subdir has its number or id in it, so that no two can be the same.
    pub fn subdirs_unique_by_template(&self) -> bool {
        let t = &self.resolved.hydra.sweep_subdir;
        t.contains("${hydra.job.num}") || t.contains("${hydra.job.id}")
    }

    /// Create the sweep dir (a fresh one: `_1`, `_2`… are added if the name is taken) and
    /// write `multirun.yaml`. Returns the dir actually created.
    pub fn create(&mut self) -> Result<(), LayoutError> {
        let base = self.abs_dir.clone();
        if let Some(parent) = base.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut candidate = base.clone();
        let mut suffix = String::new();
        let mut n = 0;
        loop {
            match std::fs::create_dir(&candidate) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => {
                    n += 1;
                    suffix = format!("_{n}");
                    let mut name = base.file_name().map(|f| f.to_os_string()).unwrap_or_default();
                    name.push(&suffix);
                    candidate = base.with_file_name(name);
                }
                Err(e) => return Err(LayoutError::Io { path: candidate, source: e }),
            }
        }
        if !suffix.is_empty() {
            let mut name = self.dir.file_name().map(|f| f.to_os_string()).unwrap_or_default();
            name.push(&suffix);
            self.dir = self.dir.with_file_name(name);
            // The files say where this sweep is, not the taken dir its template named.
            self.resolved.hydra.sweep_dir = self.dir.display().to_string();
        }
        self.abs_dir = candidate;
        // A single run keeps its copy with the job's files (none without an output_subdir).
        let multirun = match (&self.resolved.hydra.output_subdir, self.multirun) {
            (_, true) => Some(self.abs_dir.join("multirun.yaml")),
            (Some(sub), false) => {
                let hydra_dir = self.abs_dir.join(sub);
                std::fs::create_dir_all(&hydra_dir).map_err(io_err(&hydra_dir))?;
                Some(hydra_dir.join("multirun.yaml"))
            }
            (None, false) => None,
        };
        // Hydra's multirun.yaml holds the app config with the overrides that are not sweeps.
        let app = self.compose(&JobOverrides { num: 0, items: self.fixed.clone() }).unwrap_or_else(|e| {
            tracing::debug!("multirun.yaml keeps the config without its fixed overrides: {e}");
            self.resolved.app.clone()
        });
        let mut root = match app {
            Value::Mapping(m) => m,
            _ => Mapping::new(),
        };
        let hydra = self.hydra_node(None, None);
        let mut doc = Mapping::new();
        doc.insert("hydra".into(), hydra);
        for (k, v) in std::mem::take(&mut root) {
            doc.insert(k, v);
        }
        if let Some(path) = multirun {
            write_yaml(&path, &Value::Mapping(doc))?;
        }
        Ok(())
    }

    /// Use the existing sweep dir (`--resume`): nothing is created, `multirun.yaml` is kept.
    pub fn adopt(&mut self) -> Result<(), LayoutError> {
        if !self.abs_dir.is_dir() {
            return Err(LayoutError::Io {
                path: self.abs_dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "the sweep dir to resume does not exist"),
            });
        }
        Ok(())
    }

    /// Compose job's config: the app config with its overrides applied.
    pub fn compose(&self, job: &JobOverrides) -> Result<Value, LayoutError> {
        let mut config = self.resolved.app.clone();
        apply_overrides(&mut config, &job.items).map_err(|e| LayoutError::Compose(e.to_string()))?;
        Ok(config)
    }

    fn job_id(&self, num: u64) -> String {
        format!("{}_{num}", self.job_name)
    }

    pub(crate) fn subdir(&self, job: &JobOverrides, config: &Value) -> Result<String, LayoutError> {
        if !self.multirun {
            return Ok(String::new());
        }
        let template = &self.resolved.hydra.sweep_subdir;
        interpolate(template, &|expr| match expr {
            "hydra.job.num" => Ok(job.num.to_string()),
            "hydra.job.id" => Ok(self.job_id(job.num)),
            "hydra.job.name" => Ok(self.job_name.clone()),
            "hydra.job.override_dirname" => Ok(override_dirname(&job.items, &self.resolved.hydra.override_dirname)),
            key => config_text(config, key).ok_or_else(|| format!("`{key}` is not a key of the job's config")),
        })
        .map_err(|(interpolation, why)| LayoutError::Interpolation {
            key: "hydra.sweep.subdir",
            template: template.clone(),
            interpolation,
            why,
        })
        .and_then(|sub| {
            let path = Path::new(&sub);
            let leaves = path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir);
            if leaves && !self.resolved.launcher.allow_outside_sweep_dir {
                return Err(LayoutError::Outside { template: template.clone(), subdir: sub });
            }
            Ok(sub)
        })
    }

    /// Render job `num`'s `.hydra` files; returns the spec to run it.
    pub fn prepare(&self, job: &JobOverrides) -> JobSpec {
        let display: Vec<String> = job.items.iter().map(ResolvedOverride::display).collect();
        let mut spec = JobSpec::new(job.num, OsString::new(), Vec::new(), PathBuf::new());
        spec.id = self.job_id(job.num);
        spec.overrides = display.clone();
        spec.timeout = self.resolved.launcher.timeout;
        match self.prepare_inner(job, &display, &mut spec) {
            Ok(()) => {}
            Err(e) => spec.setup_error = Some(e.to_string()),
        }
        spec
    }

    fn prepare_inner(&self, job: &JobOverrides, display: &[String], spec: &mut JobSpec) -> Result<(), LayoutError> {
        let config = self.compose(job)?;
        let sub = self.subdir(job, &config)?;
        let dir = if sub.is_empty() { self.abs_dir.clone() } else { self.abs_dir.join(&sub) };
        let rel_dir = if sub.is_empty() { self.dir.clone() } else { self.dir.join(&sub) };
        let hydra_dir = self.resolved.hydra.output_subdir.as_ref().map(|sub| dir.join(sub));
        // A Hydra app writes its own `.hydra/` in its run dir: ours would be written over.
        let own_files = hydra_dir.as_ref().filter(|_| !self.hydra_app);
        // The job's own process makes its dir, its log and `.hydra` as it starts (see
        // `JobSpec::files`): creating them was most of this thread's work per job. Only the
        // levels above a nested subdir template (`${a}/${b}`) are made here.
        if !sub.is_empty()
            && let Some(parent) = dir.parent()
            && parent != self.abs_dir
        {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        // Large arguments: the job gets `key=@path` (or the file's text inline) instead.
        let mut argv_items: Vec<String> = display.to_vec();
        let mut args_json = serde_json::Map::new();
        let mut replaced = job.clone();
        if let Some(large) = &self.large {
            let mut budget = crate::args::INLINE_BUDGET;
            for (i, item) in job.items.iter().enumerate() {
                let Some(value) = &item.value else { continue };
                if let Some((text, info)) = large.resolve(&item.key, value, &dir, &mut budget)? {
                    argv_items[i] = format!("{}{}={text}", item.kind.prefix(), item.key);
                    replaced.items[i].value = Some(Element::Str { value: text, quote: None });
                    if let Some(info) = info {
                        args_json.insert(item.key.clone(), serde_json::to_value(&info).unwrap_or_default());
                    }
                }
            }
        }
        let mut config = if args_json.is_empty() && argv_items == display { config } else { self.compose(&replaced)? };
        if let Some(large) = &self.large {
            let overridden: Vec<&str> = job.items.iter().map(|i| i.key.as_str()).collect();
            large.apply_to_config(&mut config, &overridden, &mut args_json);
        }
        // Rendered here, written by the job's process (see above).
        let config_path = hydra_dir.as_ref().map(|d| d.join("config.yaml"));
        if let (Some(hydra_dir), Some(config_path)) = (own_files, &config_path) {
            let overrides_path = hydra_dir.join("overrides.yaml");
            let hydra_path = hydra_dir.join("hydra.yaml");
            spec.files = vec![
                JobFile::new(config_path, render(config_path, yaml_text(&config))?),
                JobFile::new(&overrides_path, render(&overrides_path, overrides_yaml(display))?),
                JobFile::new(&hydra_path, render(&hydra_path, self.hydra_yaml(job, &dir))?),
            ];
        }

        let (program, args) = self.argv(&replaced, &config, &dir, &argv_items);
        // Hydra writes `<name>.log` in its run dir: the captured output goes beside it.
        let log_name = if self.hydra_app {
            format!("{}_orchestrator.log", self.job_name)
        } else {
            format!("{}.log", self.job_name)
        };
        spec.program = program;
        spec.args = args;
        spec.log_path = rel_dir.join(&log_name);
        spec.dir = Some(rel_dir);
        if self.resolved.hydra.chdir {
            spec.cwd = Some(dir.clone());
            spec.log_path = dir.join(&log_name);
        }
        // As argv carries them: a value handed over as a file is its `@path` here too.
        let overrides_json: serde_json::Map<String, serde_json::Value> = replaced
            .items
            .iter()
            .filter_map(|o| {
                let v = o.value.as_ref()?.to_yaml();
                Some((o.key.clone(), serde_json::to_value(v).unwrap_or(serde_json::Value::Null)))
            })
            .collect();
        let env = [
            (env::JOB_NUM, Some(job.num.to_string())),
            (env::JOB_ID, Some(spec.id.clone())),
            (env::JOB_NAME, Some(self.job_name.clone())),
            (env::JOB_DIR, Some(dir.display().to_string())),
            (env::SWEEP_DIR, Some(self.abs_dir.display().to_string())),
            (env::CONFIG, config_path.map(|p| p.display().to_string())),
            (env::OVERRIDES, Some(serde_json::Value::Object(overrides_json).to_string())),
            (env::N_JOBS, Some(self.n_jobs.to_string())),
        ];
        spec.env = env.into_iter().filter_map(|(k, v)| Some((OsString::from(k), OsString::from(v?)))).collect();
        if !args_json.is_empty() {
            spec.env.push((env::ARGS.into(), serde_json::Value::Object(args_json).to_string().into()));
        }
        for (k, v) in &self.resolved.hydra.env_set {
            spec.env.push((k.into(), v.into()));
        }
        Ok(())
    }

    /// Job `job`'s command line as it would run (for a dry run: large values as typed, not
    /// spilled).
    pub fn argv_preview(&self, job: &JobOverrides) -> Vec<OsString> {
        let Ok(config) = self.compose(job) else { return Vec::new() };
        let Ok(sub) = self.subdir(job, &config) else { return Vec::new() };
        let dir = if sub.is_empty() { self.abs_dir.clone() } else { self.abs_dir.join(&sub) };
        let display: Vec<String> = job.items.iter().map(ResolvedOverride::display).collect();
        let (program, args) = self.argv(job, &config, &dir, &display);
        std::iter::once(program).chain(args).collect()
    }

    fn argv(&self, job: &JobOverrides, config: &Value, dir: &Path, display: &[String]) -> (OsString, Vec<OsString>) {
        let mut words = self.command.iter();
        let program = words.next().cloned().unwrap_or_default();
        let mut args: Vec<OsString> = Vec::new();
        if self.placeholders {
            let lookup_ph = |name: &str| -> Option<String> { self.placeholder(name, job, config, dir) };
            for w in words {
                match w.to_str() {
                    Some(s) => args.push(substitute(s, &lookup_ph).into()),
                    None => args.push(w.clone()),
                }
            }
        } else {
            args.extend(words.cloned());
            args.extend(display.iter().map(OsString::from));
        }
        // A Hydra app runs in its job's dir, as that job (see `SweepLayout::hydra_app`).
        if self.hydra_app {
            args.push(format!("hydra.run.dir={}", hydra_quoted(&dir.to_string_lossy())).into());
            args.push(format!("hydra.job.num={}", job.num).into());
            args.push(format!("hydra.job.id={}", hydra_quoted(&self.job_id(job.num))).into());
        }
        (program, args)
    }

    fn placeholder(&self, name: &str, job: &JobOverrides, config: &Value, dir: &Path) -> Option<String> {
        Some(match name {
            "job.num" => job.num.to_string(),
            "job.id" => self.job_id(job.num),
            "job.name" => self.job_name.clone(),
            "job.dir" => dir.display().to_string(),
            "sweep.dir" => self.abs_dir.display().to_string(),
            key => config_text(config, key)?,
        })
    }

    /// Whether `command` (after the program) uses any placeholder that job 0 can fill.
    pub fn detect_placeholders(&mut self, job0: &JobOverrides) -> Result<(), LayoutError> {
        let config = self.compose(job0)?;
        let dir = self.abs_dir.clone();
        let found = self.command.iter().skip(1).filter_map(|w| w.to_str()).any(|w| {
            let hit = std::cell::Cell::new(false);
            substitute(w, &|name| {
                let v = self.placeholder(name, job0, &config, &dir);
                hit.set(hit.get() | v.is_some());
                v
            });
            hit.get()
        });
        self.placeholders = found;
        Ok(())
    }

    fn hydra_node(&self, job: Option<&JobOverrides>, dir: Option<&Path>) -> Value {
        let mut m = self.hydra_static();
        m.extend(self.hydra_per_job(job, dir));
        Value::Mapping(m)
    }

    /// A job's `hydra.yaml`, as `serde_yaml` renders [`Self::hydra_node`] (a test checks
    /// they are byte-identical). Rendering the whole node took more of a job's preparation
    /// than creating its files, so both halves are rendered once per sweep: the keys every
    /// job shares as they are, the job's own keys with markers where its values go.
    fn hydra_yaml(&self, job: &JobOverrides, dir: &Path) -> Result<String, serde_yaml::Error> {
        let rendered = match self.hydra_text.get() {
            Some(r) => r,
            None => {
                let shared = yaml_general(&hydra_doc(self.hydra_static()))?;
                let own = yaml_general(&hydra_doc(self.hydra_keys_of(PerJob::markers())))?;
                self.hydra_text.get_or_init(|| HydraText { shared, own: PerJobTemplate::parse(&own) })
            }
        };
        // Both are `hydra:` followed by a block mapping indented the same way: the job's
        // keys go on after the shared ones.
        let mut text = rendered.shared.clone();
        match rendered.own.as_ref().and_then(|t| t.render(self, job, dir)) {
            Some(own) => text.push_str(&own),
            None => {
                // A value the template cannot take (a multi-line string, no overrides).
                let own = yaml_general(&hydra_doc(self.hydra_per_job(Some(job), Some(dir))))?;
                text.push_str(own.strip_prefix("hydra:\n").unwrap_or(&own));
            }
        }
        Ok(text)
    }

    /// The keys of the `hydra` node that are the same for every job, in Hydra's order.
    fn hydra_static(&self) -> Mapping {
        let r = &self.resolved;
        let mut m = Mapping::new();
        let mut run = Mapping::new();
        run.insert("dir".into(), "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}".into());
        m.insert("run".into(), Value::Mapping(run));
        let mut sweep = Mapping::new();
        sweep.insert("dir".into(), r.hydra.sweep_dir.clone().into());
        sweep.insert("subdir".into(), r.hydra.sweep_subdir.clone().into());
        m.insert("sweep".into(), Value::Mapping(sweep));
        m.insert("launcher".into(), self.launcher_node());
        let mut sweeper = Mapping::new();
        sweeper.insert("_target_".into(), "hydra._internal.core_plugins.basic_sweeper.BasicSweeper".into());
        sweeper.insert("max_batch_size".into(), Value::Null);
        // As the config gives them, each as a string (the sweeper's `Dict[str, str]`).
        let params = match lookup(&r.hydra_doc, "hydra.sweeper.params") {
            Some(Value::Mapping(m)) => Value::Mapping(
                m.into_iter()
                    .map(|(k, v)| {
                        let text = orchestrator_config::launcher::python_scalar_str(&v);
                        (k, text.map_or(v, Value::String))
                    })
                    .collect(),
            ),
            other => other.unwrap_or(Value::Null),
        };
        sweeper.insert("params".into(), params);
        m.insert("sweeper".into(), Value::Mapping(sweeper));
        m.insert("env".into(), Value::Mapping(Mapping::new()));
        m.insert("mode".into(), if self.multirun { "MULTIRUN" } else { "RUN" }.into());
        m.insert("searchpath".into(), Value::Sequence(Vec::new()));
        m.insert("callbacks".into(), Value::Mapping(Mapping::new()));
        m.insert("output_subdir".into(), r.hydra.output_subdir.clone().map_or(Value::Null, Value::String));
        m
    }

    /// The keys of the `hydra` node that depend on the job (or, without one, on the sweep).
    fn hydra_per_job(&self, job: Option<&JobOverrides>, dir: Option<&Path>) -> Mapping {
        let unknown = || Value::String("???".into());
        self.hydra_keys_of(PerJob {
            task: match job {
                Some(j) => j.items.iter().map(|o| Value::String(o.display())).collect(),
                None => self.sweep_overrides.iter().map(|s| Value::String(s.clone())).collect(),
            },
            override_dirname: match job {
                Some(j) => override_dirname(&j.items, &self.resolved.hydra.override_dirname),
                None => typed_override_dirname(&self.sweep_overrides, &self.resolved.hydra.override_dirname),
            }
            .into(),
            id: job.map(|j| Value::String(self.job_id(j.num))).unwrap_or_else(unknown),
            num: job.map(|j| Value::Number(j.num.into())).unwrap_or_else(unknown),
            output_dir: dir.map(|d| Value::String(d.display().to_string())).unwrap_or_else(unknown),
        })
    }

    /// The job-dependent keys in Hydra's order, around the given values.
    fn hydra_keys_of(&self, values: PerJob) -> Mapping {
        let r = &self.resolved;
        let mut m = Mapping::new();
        let mut overrides = Mapping::new();
        // Hydra adds `hydra.mode=` after the command line's own.
        let mut hydra_list: Vec<Value> = self.hydra_overrides.iter().map(|s| Value::String(s.clone())).collect();
        hydra_list.push(Value::String(format!("hydra.mode={}", if self.multirun { "MULTIRUN" } else { "RUN" })));
        overrides.insert("hydra".into(), Value::Sequence(hydra_list));
        overrides.insert("task".into(), Value::Sequence(values.task));
        m.insert("overrides".into(), Value::Mapping(overrides));
        let mut jobm = Mapping::new();
        jobm.insert("name".into(), self.job_name.clone().into());
        // null unless given, as Hydra records it.
        let chdir = match lookup(&r.hydra_doc, "hydra.job.chdir") {
            Some(Value::Bool(b)) => Value::Bool(b),
            _ => Value::Null,
        };
        jobm.insert("chdir".into(), chdir);
        jobm.insert("override_dirname".into(), values.override_dirname);
        jobm.insert("id".into(), values.id);
        jobm.insert("num".into(), values.num);
        jobm.insert("config_name".into(), self.config_name.clone().into());
        let mut env_set = Mapping::new();
        for (k, v) in &r.hydra.env_set {
            env_set.insert(k.clone().into(), v.clone().into());
        }
        jobm.insert("env_set".into(), Value::Mapping(env_set));
        let how = &r.hydra.override_dirname;
        let mut dirname = Mapping::new();
        dirname.insert("kv_sep".into(), how.kv_sep.clone().into());
        dirname.insert("item_sep".into(), how.item_sep.clone().into());
        dirname.insert(
            "exclude_keys".into(),
            Value::Sequence(how.exclude_keys.iter().map(|k| k.clone().into()).collect()),
        );
        let mut config = Mapping::new();
        config.insert("override_dirname".into(), Value::Mapping(dirname));
        jobm.insert("config".into(), Value::Mapping(config));
        m.insert("job".into(), Value::Mapping(jobm));
        let mut runtime = Mapping::new();
        runtime.insert("version".into(), format!("orchestrator {}", env!("CARGO_PKG_VERSION")).into());
        static CWD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let cwd = CWD.get_or_init(|| std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default());
        runtime.insert("cwd".into(), cwd.clone().into());
        runtime.insert("output_dir".into(), values.output_dir);
        // The config groups Hydra's own config was composed from, as it records them.
        let mut choices = Mapping::new();
        for (group, choice) in [
            ("hydra/env", Some("default")),
            ("hydra/callbacks", None),
            ("hydra/job_logging", Some("default")),
            ("hydra/hydra_logging", Some("default")),
            ("hydra/hydra_help", Some("default")),
            ("hydra/help", Some("default")),
            ("hydra/sweeper", Some("basic")),
            ("hydra/launcher", Some("joblib")),
            ("hydra/output", Some("default")),
        ] {
            choices.insert(group.into(), choice.map_or(Value::Null, Value::from));
        }
        runtime.insert("choices".into(), Value::Mapping(choices));
        m.insert("runtime".into(), Value::Mapping(runtime));
        m.insert("verbose".into(), Value::Bool(false));
        m
    }

    /// The launcher as Hydra's current plugin writes it: `_target_` then the joblib keys,
    /// with `None` written as null.
    fn launcher_node(&self) -> Value {
        let mut m = Mapping::new();
        let target = match &self.resolved.form {
            LauncherForm::Flat { target } => target.clone(),
            _ => JOBLIB_CLASSES[1].to_string(),
        };
        m.insert("_target_".into(), target.into());
        let source = launcher_params(&self.resolved.hydra_doc);
        for (k, shown) in &self.resolved.launcher.banner {
            let v = source.and_then(|s| s.get(k.as_str())).cloned().unwrap_or_else(|| default_value(shown));
            let v = if matches!(&v, Value::String(s) if s == "None") { Value::Null } else { v };
            // Typed as the plugin's JoblibLauncherConf types them: `timeout: 30` is the float
            // 30.0, `batch_size: 8` the string '8'.
            let v = match (k.as_str(), v) {
                ("timeout", Value::Number(n)) if !n.is_f64() => n.as_f64().map_or(Value::Number(n), Value::from),
                ("prefer" | "pre_dispatch" | "batch_size" | "max_nbytes" | "mmap_mode", v @ Value::Number(_)) => {
                    orchestrator_config::launcher::python_scalar_str(&v).map_or(v, Value::String)
                }
                (_, v) => v,
            };
            m.insert(k.clone().into(), v);
        }
        Value::Mapping(m)
    }
}

/// The values of `hydra` that differ from job to job.
struct PerJob {
    task: Vec<Value>,
    override_dirname: Value,
    id: Value,
    num: Value,
    output_dir: Value,
}

/// Plain scalars standing where a job's values go in the per-job template.
const MARK_TASK: &str = "orchestrator-marker-task";
const MARK_DIRNAME: &str = "orchestrator-marker-override-dirname";
const MARK_ID: &str = "orchestrator-marker-id";
const MARK_NUM: &str = "orchestrator-marker-num";
const MARK_DIR: &str = "orchestrator-marker-output-dir";

impl PerJob {
    fn markers() -> PerJob {
        PerJob {
            task: vec![MARK_TASK.into()],
            override_dirname: MARK_DIRNAME.into(),
            id: MARK_ID.into(),
            num: MARK_NUM.into(),
            output_dir: MARK_DIR.into(),
        }
    }
}

/// `hydra.yaml` rendered once per sweep (see `SweepLayout::hydra_yaml`).
#[derive(Debug, Clone)]
pub(crate) struct HydraText {
    shared: String,
    /// `None` if a marker was not found exactly once (a static value that contains one).
    own: Option<PerJobTemplate>,
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    /// One line per override, each starting with this (`    - `).
    TaskItems(String),
    OverrideDirname,
    Id,
    Num,
    OutputDir,
}

/// The job-dependent half of `hydra.yaml` (after its `hydra:` line), split at the markers.
#[derive(Debug, Clone)]
struct PerJobTemplate {
    pieces: Vec<Piece>,
}

impl PerJobTemplate {
    fn parse(rendered: &str) -> Option<PerJobTemplate> {
        let text = rendered.strip_prefix("hydra:\n")?;
        let marks = [MARK_TASK, MARK_DIRNAME, MARK_ID, MARK_NUM, MARK_DIR];
        if marks.iter().any(|m| text.matches(m).count() != 1) {
            return None;
        }
        let mut found: Vec<(usize, &str)> = marks.iter().map(|m| (text.find(m).unwrap_or(0), *m)).collect();
        found.sort();
        let mut pieces = Vec::new();
        let mut at = 0;
        for (pos, mark) in found {
            let piece = match mark {
                MARK_TASK => {
                    // The whole `    - <marker>` line is replaced by one line per override.
                    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
                    pieces.push(Piece::Text(text[at..line_start].to_string()));
                    at = pos + mark.len() + 1; // and its newline
                    if text.as_bytes().get(pos + mark.len()) != Some(&b'\n') {
                        return None;
                    }
                    pieces.push(Piece::TaskItems(text[line_start..pos].to_string()));
                    continue;
                }
                MARK_DIRNAME => Piece::OverrideDirname,
                MARK_ID => Piece::Id,
                MARK_NUM => Piece::Num,
                _ => Piece::OutputDir,
            };
            pieces.push(Piece::Text(text[at..pos].to_string()));
            pieces.push(piece);
            at = pos + mark.len();
        }
        pieces.push(Piece::Text(text[at..].to_string()));
        Some(PerJobTemplate { pieces })
    }

    /// `None` when a value cannot go in as a one-line scalar, or there are no overrides.
    fn render(&self, layout: &SweepLayout, job: &JobOverrides, dir: &Path) -> Option<String> {
        if job.items.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(1024);
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::TaskItems(prefix) => {
                    for item in &job.items {
                        out.push_str(prefix);
                        out.push_str(&yaml_scalar(&item.display())?);
                        out.push('\n');
                    }
                }
                Piece::OverrideDirname => {
                    let text = override_dirname(&job.items, &layout.resolved.hydra.override_dirname);
                    out.push_str(&yaml_scalar(&text)?)
                }
                Piece::Id => out.push_str(&yaml_scalar(&layout.job_id(job.num))?),
                Piece::Num => out.push_str(&job.num.to_string()),
                Piece::OutputDir => out.push_str(&yaml_scalar(&dir.display().to_string())?),
            }
        }
        Some(out)
    }
}

/// `{hydra: node}`.
fn hydra_doc(node: Mapping) -> Value {
    let mut doc = Mapping::new();
    doc.insert("hydra".into(), Value::Mapping(node));
    Value::Mapping(doc)
}

fn default_value(shown: &str) -> Value {
    if shown == "None" {
        return Value::Null;
    }
    serde_yaml::from_str(shown).unwrap_or_else(|_| Value::String(shown.to_string()))
}

fn launcher_params(root: &Value) -> Option<&Mapping> {
    let launcher = root.get("hydra")?.get("launcher")?;
    match launcher.get("params").and_then(|p| p.get("joblib")) {
        Some(Value::Mapping(m)) => Some(m),
        _ => match launcher {
            Value::Mapping(m) => Some(m),
            _ => None,
        },
    }
}

/// Rendered YAML for the file at `path`; a rendering error names the file.
fn render(path: &Path, text: Result<String, serde_yaml::Error>) -> Result<String, LayoutError> {
    text.map_err(|e| LayoutError::Io { path: path.to_path_buf(), source: std::io::Error::other(e) })
}

fn write_yaml(path: &Path, value: &Value) -> Result<(), LayoutError> {
    let text = render(path, yaml_text(value))?;
    std::fs::write(path, text).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_follow_hydra() {
        let cmd = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(job_name_for(&cmd(&["python3", "examples/my_app.py"])), "my_app");
        assert_eq!(job_name_for(&cmd(&["target/release/my_app"])), "my_app");
        assert_eq!(job_name_for(&cmd(&["/bin/true"])), "true");
    }

    #[test]
    fn sweep_dir_interpolation() {
        let t = Local::now();
        let d = SweepLayout::resolve_dir("multirun/${now:%Y}/x", &t, "app").unwrap();
        assert_eq!(d, format!("multirun/{}/x", t.format("%Y")));
        assert!(SweepLayout::resolve_dir("m/${oops}", &t, "app").is_err());
        assert!(SweepLayout::resolve_dir("m/${now:%Y", &t, "app").is_err());
    }

    #[test]
    fn hydra_yaml_renders_the_shared_part_once_and_equals_the_whole_node() {
        use crate::sweep::{ConfigInput, PreparedSweep, SweepRequest};
        let text = "hydra:\n  launcher:\n    n_jobs: 2\n  job:\n    env_set:\n      A: 'x: y'\nlr: 0.1\n";
        let config = ConfigInput::Text { text: text.into(), name: "t.yaml".into() };
        let overrides = [
            "lr=1e-3,'a: b',[1,2],true,'true',''",
            "+name=\"quoted value\",\"x #y\",plain",
            "hydra.launcher.verbose=3",
        ];
        let mut req = SweepRequest::new(
            config,
            overrides.iter().map(|s| s.to_string()).collect(),
            vec!["/bin/true".into()],
            std::env::temp_dir(),
        );
        req.multirun = true;
        let prepared = PreparedSweep::prepare(&req).unwrap();
        let layout = &prepared.layout;
        let odd_dirs = ["/tmp/a b/it's: #1", "/tmp/ünï/ç", "relative/dir", "/tmp/two\nlines", "-"];
        for n in 0..prepared.plan.len() {
            let job = prepared.plan.job(n).unwrap();
            let display: Vec<String> = job.items.iter().map(|o| o.display()).collect();
            let list = Value::Sequence(display.iter().map(|s| Value::String(s.clone())).collect());
            assert_eq!(overrides_yaml(&display).unwrap(), yaml_general(&list).unwrap());
            let dirs = std::iter::once(layout.abs_dir.join(n.to_string())).chain(odd_dirs.iter().map(PathBuf::from));
            for dir in dirs {
                let whole = yaml_general(&hydra_doc(match layout.hydra_node(Some(&job), Some(&dir)) {
                    Value::Mapping(m) => m,
                    _ => unreachable!(),
                }))
                .unwrap();
                assert_eq!(layout.hydra_yaml(&job, &dir).unwrap(), whole, "job {n} in {dir:?}");
            }
        }
        assert!(layout.hydra_text.get().is_some_and(|t| t.own.is_some()), "the template is used");
    }
}
