//! The launcher section of the config, typed with joblib's semantics.

use std::path::PathBuf;
use std::time::Duration;

use serde_yaml::Value;

use crate::error::{ConfigError, ConfigErrorKind, Origin, did_you_mean};
use crate::expr;

/// `n_jobs` as written (not yet resolved against the CPU count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NJobs(pub Option<i64>);

impl NJobs {
    /// joblib's rule: null = 1, negative = `cpus + 1 + n` (at least 1), positive as is.
    pub fn resolve(self, cpus: usize) -> usize {
        match self.0 {
            None => 1,
            Some(n) if n < 0 => {
                let cpus = i64::try_from(cpus).unwrap_or(i64::MAX);
                usize::try_from(cpus.saturating_add(1).saturating_add(n).max(1)).unwrap_or(1)
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }
}

/// joblib's `backend` values. Every job here is a separate process whatever the backend;
/// the README says what each value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// A process per job (the default; what `None` means too).
    Loky,
    /// Same as `loky` here.
    Multiprocessing,
    /// Accepted; jobs are external programs, so they still run as processes.
    Threading,
    /// One job at a time.
    Sequential,
}

/// joblib's `prefer` hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Prefer {
    /// `processes`.
    Processes,
    /// `threads` (jobs still run as processes).
    Threads,
}

/// joblib's `mmap_mode` for arguments spilled to `temp_folder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MmapMode {
    /// Read-only.
    R,
    /// Shared read-write (`w+` is read as this, as joblib does).
    RPlus,
    /// Copy-on-write.
    C,
}

/// How far ahead jobs are prepared.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PreDispatch {
    /// Every job may be prepared up front.
    All,
    /// An expression in `n_jobs` (joblib's default is `2*n_jobs`).
    Expr(String),
}

impl PreDispatch {
    /// Number of jobs that may be dispatched (prepared or running) at once; never below `n_jobs`.
    pub fn resolve(&self, n_jobs: usize) -> usize {
        match self {
            PreDispatch::All => usize::MAX,
            PreDispatch::Expr(e) => {
                let v = expr::eval(e, n_jobs as f64).unwrap_or(2.0 * n_jobs as f64);
                (v.max(0.0) as usize).max(n_jobs)
            }
        }
    }
}

/// joblib's `batch_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchSize {
    /// `auto`.
    Auto,
    /// A fixed positive size.
    Fixed(u64),
}

/// What to do after the first failed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HaltPolicy {
    /// Run every job whatever happens (Hydra's behaviour).
    #[default]
    Never,
    /// Start no new job; let running ones finish.
    Soon,
    /// Stop at once: end running jobs too (joblib's behaviour).
    Now,
}

/// Which endings of an attempt are tried again when `retries` allows (never a user's stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryOn {
    /// A non-zero exit code.
    pub failed: bool,
    /// Ran past its timeout.
    pub timed_out: bool,
    /// Killed by a signal it did not get from the supervisor (a crash, the OOM killer).
    pub signaled: bool,
    /// Could not be started (a missing program stays missing: off by default).
    pub spawn_failed: bool,
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn { failed: true, timed_out: true, signaled: true, spawn_failed: false }
    }
}

/// The words `retry_on` takes.
pub const RETRY_ON_WORDS: &[&str] = &["failed", "timed_out", "signaled", "spawn_failed"];

/// Default first delay before a retry; it doubles per attempt up to [`MAX_RETRY_DELAY`].
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The cap on the doubling retry delay.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// A per-slot environment value: a template with `{slot}`, or a list handed out by slot.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SlotValue {
    /// `"{slot}"`-style template.
    Template(String),
    /// One value per slot; must have at least `n_jobs` entries.
    PerSlot(Vec<String>),
}

impl SlotValue {
    /// The value for `slot`.
    pub fn for_slot(&self, slot: usize) -> String {
        match self {
            SlotValue::Template(t) => t.replace("{slot}", &slot.to_string()),
            SlotValue::PerSlot(v) => v.get(slot % v.len().max(1)).cloned().unwrap_or_default(),
        }
    }
}

/// The launcher configuration: joblib's parameters plus orchestrator's own settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LauncherConfig {
    /// Number of parallel jobs, as written.
    pub n_jobs: NJobs,
    /// `backend`; `None` means the default (loky).
    pub backend: Option<Backend>,
    /// `prefer`.
    pub prefer: Option<Prefer>,
    /// `require: sharedmem` when set.
    pub require_sharedmem: bool,
    /// joblib's verbosity level.
    pub verbose: u32,
    /// Per-job wall-clock limit.
    pub timeout: Option<Duration>,
    /// How far ahead jobs are prepared.
    pub pre_dispatch: PreDispatch,
    /// `batch_size` (accepted; each job is one process).
    pub batch_size: BatchSize,
    /// Where large arguments are spilled; `None` = joblib's resolution order.
    pub temp_folder: Option<PathBuf>,
    /// Spill threshold in bytes; `None` = never spill.
    pub max_nbytes: Option<u64>,
    /// How spilled arguments are mapped.
    pub mmap_mode: Option<MmapMode>,
    /// Time between SIGTERM and SIGKILL when a job is ended.
    pub grace_period: Duration,
    /// What to do after the first failure.
    pub halt: HaltPolicy,
    /// Environment values handed out per slot (e.g. `CUDA_VISIBLE_DEVICES`).
    pub slot_env: Vec<(String, SlotValue)>,
    /// How many times a job is tried again after an attempt that ended as `retry_on` says.
    pub retries: u32,
    /// The delay before the first retry; doubled for each later one, up to [`MAX_RETRY_DELAY`].
    pub retry_delay: Duration,
    /// Which endings are retried.
    pub retry_on: RetryOn,
    /// Whether the app is a Hydra app (`@hydra.main`): each job then runs in its own Hydra
    /// run dir, which Hydra fills itself. `None` = find out from the app's script.
    pub hydra_app: Option<bool>,
    /// Let `hydra.sweep.subdir` put job dirs outside the sweep dir (an absolute path, `..`).
    pub allow_outside_sweep_dir: bool,
    /// Start no job while less memory than this is available (bytes).
    pub min_free_memory: Option<u64>,
    /// Start no job while the 1-minute load average is above this.
    pub max_load: Option<f64>,
    /// At least this long between two job starts.
    pub start_delay: Option<Duration>,
    /// The joblib parameters as `key=value` in the order written, for the launch banner.
    pub banner: Vec<(String, String)>,
    /// Where jobs run (`hydra.launcher.orchestrator.backend`).
    pub exec: ExecBackend,
    /// The Slurm settings (`hydra.launcher.orchestrator.slurm`), used with [`ExecBackend::Slurm`].
    pub slurm: SlurmConfig,
    /// Fork Python jobs from a warm interpreter (`hydra.launcher.orchestrator.warm`).
    pub warm: bool,
    /// What the warm interpreter imports first (`preload`): modules, `module:function`
    /// hooks, `.py` paths.
    pub preload: Vec<String>,
    /// Warm jobs end with `os._exit` (`fast_exit`), skipping the interpreter's teardown.
    pub fast_exit: bool,
    /// Each job's memory limit in gigabytes (`mem_gb`): a memory cgroup's locally, `--mem`
    /// on Slurm (where `slurm.mem_gb`, if set, wins).
    pub mem_gb: Option<f64>,
}

/// Where jobs run: `hydra.launcher.orchestrator.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExecBackend {
    /// Process groups on this machine.
    #[default]
    Local,
    /// A Slurm cluster: one job array per sweep.
    Slurm,
}

/// The words `backend` takes under `hydra.launcher.orchestrator`.
pub const EXEC_BACKENDS: &[&str] = &["local", "slurm"];

/// The Slurm settings, with the names of Hydra's submitit launcher
/// (`hydra.launcher.orchestrator.slurm`). Unset values leave Slurm's defaults.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct SlurmConfig {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--qos`.
    pub qos: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--comment`.
    pub comment: Option<String>,
    /// `--constraint`.
    pub constraint: Option<String>,
    /// `--exclude`.
    pub exclude: Option<String>,
    /// `--gres`.
    pub gres: Option<String>,
    /// `--time` in minutes (instead of `timeout`, rounded up to minutes).
    pub timeout_min: Option<u64>,
    /// `--cpus-per-task`.
    pub cpus_per_task: Option<u64>,
    /// `--gpus-per-node`.
    pub gpus_per_node: Option<String>,
    /// `--gpus-per-task`.
    pub gpus_per_task: Option<String>,
    /// `--cpus-per-gpu`.
    pub cpus_per_gpu: Option<u64>,
    /// `--mem` in GB (submitit's unit: `--mem=<n>GB`).
    pub mem_gb: Option<f64>,
    /// `--mem-per-cpu`.
    pub mem_per_cpu: Option<String>,
    /// `--mem-per-gpu`.
    pub mem_per_gpu: Option<String>,
    /// `--nodes`.
    pub nodes: Option<u64>,
    /// `--ntasks-per-node`.
    pub tasks_per_node: Option<u64>,
    /// The array's throttle (`%P`); `n_jobs` when unset.
    pub array_parallelism: Option<u64>,
    /// Seconds before the time limit at which the task gets SIGUSR2 (`--signal=B:USR2@s`).
    pub signal_delay_s: Option<u64>,
    /// How many times a task that hit its time limit is requeued (`--requeue`).
    pub max_num_timeout: u64,
    /// Any other sbatch flag: `name: value` becomes `--name=value` (`null` or `true`: `--name`).
    pub additional_parameters: Vec<(String, Option<String>)>,
    /// Shell lines run in the batch script before the job.
    pub setup: Vec<String>,
    /// Run the job through `srun` with these arguments.
    pub srun_args: Option<Vec<String>>,
}

/// The keys of `hydra.launcher.orchestrator.slurm` (submitit's names).
pub const SLURM_KEYS: &[&str] = &[
    "partition",
    "qos",
    "account",
    "comment",
    "constraint",
    "exclude",
    "gres",
    "timeout_min",
    "cpus_per_task",
    "gpus_per_node",
    "gpus_per_task",
    "cpus_per_gpu",
    "mem_gb",
    "mem_per_cpu",
    "mem_per_gpu",
    "nodes",
    "tasks_per_node",
    "array_parallelism",
    "signal_delay_s",
    "max_num_timeout",
    "additional_parameters",
    "setup",
    "srun_args",
];

impl Default for LauncherConfig {
    fn default() -> Self {
        LauncherConfig {
            n_jobs: NJobs(Some(-1)),
            backend: None,
            prefer: Some(Prefer::Processes),
            require_sharedmem: false,
            verbose: 0,
            timeout: None,
            pre_dispatch: PreDispatch::Expr("2*n_jobs".into()),
            batch_size: BatchSize::Auto,
            temp_folder: None,
            max_nbytes: Some(1024 * 1024),
            mmap_mode: Some(MmapMode::R),
            grace_period: DEFAULT_GRACE,
            halt: HaltPolicy::Never,
            slot_env: Vec::new(),
            retries: 0,
            retry_delay: DEFAULT_RETRY_DELAY,
            retry_on: RetryOn::default(),
            hydra_app: None,
            allow_outside_sweep_dir: false,
            min_free_memory: None,
            max_load: None,
            start_delay: None,
            banner: JOBLIB_KEYS.iter().map(|k| (k.to_string(), default_banner(k).to_string())).collect(),
            exec: ExecBackend::Local,
            slurm: SlurmConfig::default(),
            warm: false,
            preload: Vec::new(),
            fast_exit: false,
            mem_gb: None,
        }
    }
}

/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// joblib's parameters, in the plugin's field order.
pub const JOBLIB_KEYS: &[&str] = &[
    "n_jobs",
    "backend",
    "prefer",
    "require",
    "verbose",
    "timeout",
    "pre_dispatch",
    "batch_size",
    "temp_folder",
    "max_nbytes",
    "mmap_mode",
];

/// orchestrator's own launcher settings, under `hydra.launcher.orchestrator`.
pub const ORCHESTRATOR_KEYS: &[&str] = &[
    "grace_period",
    "halt",
    "slot_env",
    "retries",
    "retry_delay",
    "retry_on",
    "hydra_app",
    "allow_outside_sweep_dir",
    "min_free_memory",
    "max_load",
    "start_delay",
    "backend",
    "slurm",
    "warm",
    "preload",
    "fast_exit",
    "mem_gb",
];

fn default_banner(key: &str) -> &'static str {
    match key {
        "n_jobs" => "-1",
        "prefer" => "processes",
        "verbose" => "0",
        "pre_dispatch" => "2*n_jobs",
        "batch_size" => "auto",
        "max_nbytes" => "1M",
        "mmap_mode" => "r",
        _ => "None",
    }
}

/// Reads typed values out of YAML nodes and reports errors at the right place.
pub(crate) struct Reader<'a> {
    pub(crate) origin: &'a dyn Fn(&[&str]) -> Origin,
}

/// `None` is how the seed (a Python-ism) writes null; YAML itself reads it as a string.
pub(crate) fn is_null(v: &Value) -> bool {
    matches!(v, Value::Null) || matches!(v, Value::String(s) if s == "None")
}

/// Python's `str()` of a YAML value, for the `Joblib.Parallel(...)` banner.
pub(crate) fn python_str(v: &Value) -> String {
    if is_null(v) {
        return "None".into();
    }
    python_scalar_str(v).unwrap_or_else(|| serde_yaml::to_string(v).unwrap_or_default().trim().to_string())
}

/// Python's `str()` of a scalar, as Hydra's string fields take one (`True`, `1e-06`, `7`,
/// text as it is); `None` for null and collections.
pub fn python_scalar_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        Value::Number(n) => Some(match n.as_f64() {
            Some(f) if n.is_f64() => crate::grammar::python_float_repr(f),
            _ => n.to_string(),
        }),
        _ => None,
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        other => format!("`{}`", python_str(other)),
    }
}

impl Reader<'_> {
    fn invalid(&self, path: &[&str], message: String, help: &str) -> ConfigError {
        ConfigError::new(ConfigErrorKind::InvalidValue, message, (self.origin)(path)).with_help(help)
    }

    /// A memory size in gigabytes (`mem_gb`), or `None`.
    fn mem_gb(&self, path: &[&str], v: &Value) -> Result<Option<f64>, ConfigError> {
        match v {
            _ if is_null(v) => Ok(None),
            Value::Number(n) if n.as_f64().is_some_and(|f| f > 0.0 && f.is_finite() && f < 1e9) => Ok(n.as_f64()),
            _ => Err(self.invalid(path, format!("invalid mem_gb {}", show(v)), "gigabytes, > 0 (e.g. 4 or 0.5)")),
        }
    }

    /// Parse the joblib parameters of one mapping (the seed's `params.joblib` or the flat form).
    pub(crate) fn joblib_params(
        &self,
        base: &[&str],
        map: &serde_yaml::Mapping,
        cfg: &mut LauncherConfig,
    ) -> Result<(), ConfigError> {
        let mut banner = Vec::new();
        for (k, v) in map {
            let Some(key) = k.as_str() else {
                return Err(self.invalid(
                    base,
                    format!("key {} is not a string", show(k)),
                    "keys are joblib parameter names",
                ));
            };
            let mut path = base.to_vec();
            path.push(key);
            let p = &path[..];
            match key {
                "n_jobs" => cfg.n_jobs = NJobs(self.n_jobs(p, v)?),
                "backend" => cfg.backend = self.backend(p, v)?,
                "prefer" => cfg.prefer = self.prefer(p, v)?,
                "require" => cfg.require_sharedmem = self.require(p, v)?,
                "verbose" => cfg.verbose = self.verbose(p, v)?,
                "timeout" => cfg.timeout = self.duration(p, v, true)?,
                "pre_dispatch" => cfg.pre_dispatch = self.pre_dispatch(p, v)?,
                "batch_size" => cfg.batch_size = self.batch_size(p, v)?,
                "temp_folder" => cfg.temp_folder = self.temp_folder(p, v)?,
                "max_nbytes" => cfg.max_nbytes = self.max_nbytes(p, v)?,
                "mmap_mode" => cfg.mmap_mode = self.mmap_mode(p, v)?,
                _ if base.last() == Some(&"launcher") && FLAT_EXTRA.contains(&key) => continue,
                other => {
                    let mut err = ConfigError::new(
                        ConfigErrorKind::UnknownKey,
                        format!("unknown key `{other}` in `{}`", base.join(".")),
                        (self.origin)(p),
                    );
                    err = match did_you_mean(other, JOBLIB_KEYS) {
                        Some(s) => err.with_help(format!("did you mean `{s}`? known keys: {}", JOBLIB_KEYS.join(", "))),
                        None => err.with_help(format!("known keys: {}", JOBLIB_KEYS.join(", "))),
                    };
                    return Err(err);
                }
            }
            banner.push((key.to_string(), python_str(v)));
        }
        // Keep the banner in the config's own order, as Hydra prints it; fill in defaults.
        for k in JOBLIB_KEYS {
            if !banner.iter().any(|(b, _)| b == k) {
                banner.push((k.to_string(), default_banner(k).to_string()));
            }
        }
        cfg.banner = banner;
        Ok(())
    }

    pub(crate) fn orchestrator_params(
        &self,
        base: &[&str],
        map: &serde_yaml::Mapping,
        cfg: &mut LauncherConfig,
    ) -> Result<(), ConfigError> {
        for (k, v) in map {
            let key = k.as_str().unwrap_or("");
            let mut path = base.to_vec();
            path.push(key);
            let p = &path[..];
            match key {
                "grace_period" => {
                    cfg.grace_period = self.duration(p, v, false)?.unwrap_or(Duration::ZERO);
                }
                "halt" => {
                    cfg.halt = match v.as_str() {
                        _ if is_null(v) => HaltPolicy::Never,
                        Some("never") => HaltPolicy::Never,
                        Some("soon") => HaltPolicy::Soon,
                        Some("now") => HaltPolicy::Now,
                        _ => return Err(self.invalid(p, format!("invalid halt {}", show(v)), "allowed values: never (run every job), soon (start no new job after a failure), now (end running jobs too)")),
                    }
                }
                "slot_env" => cfg.slot_env = self.slot_env(p, v)?,
                "retries" => cfg.retries = self.retries(p, v)?,
                "retry_delay" => cfg.retry_delay = self.duration(p, v, false)?.unwrap_or(Duration::ZERO),
                "retry_on" => cfg.retry_on = self.retry_on(p, v)?,
                "min_free_memory" => {
                    let help = "bytes as an integer, or a number with K, M or G (1024-based: 2G), or None";
                    cfg.min_free_memory = match v {
                        _ if is_null(v) => None,
                        Value::Number(n) if n.as_u64().is_some() => n.as_u64(),
                        Value::String(t) if parse_size(t).is_some() => parse_size(t),
                        _ => return Err(self.invalid(p, format!("invalid min_free_memory {}", show(v)), help)),
                    }
                }
                "max_load" => {
                    cfg.max_load = match v {
                        _ if is_null(v) => None,
                        Value::Number(n) if n.as_f64().is_some_and(|f| f > 0.0 && f.is_finite()) => n.as_f64(),
                        _ => {
                            return Err(self.invalid(
                                p,
                                format!("invalid max_load {}", show(v)),
                                "a load average above 0 (e.g. 4 on a 4-CPU machine), or None",
                            ));
                        }
                    }
                }
                "start_delay" => cfg.start_delay = self.duration(p, v, true)?.filter(|d| !d.is_zero()),
                "allow_outside_sweep_dir" => {
                    cfg.allow_outside_sweep_dir = match v {
                        _ if is_null(v) => false,
                        Value::Bool(b) => *b,
                        _ => {
                            return Err(self.invalid(
                                p,
                                format!("invalid allow_outside_sweep_dir {}", show(v)),
                                "true or false (the default: every job dir stays inside the sweep dir)",
                            ));
                        }
                    }
                }
                "hydra_app" => {
                    cfg.hydra_app = match v {
                        _ if is_null(v) => None,
                        Value::Bool(b) => Some(*b),
                        Value::String(s) if s == "auto" => None,
                        _ => {
                            return Err(self.invalid(
                                p,
                                format!("invalid hydra_app {}", show(v)),
                                "true (the app is a Hydra app), false (a plain program), or auto (look for hydra.main in its script; the default)",
                            ));
                        }
                    }
                }
                "backend" => {
                    cfg.exec = match v.as_str() {
                        _ if is_null(v) => ExecBackend::Local,
                        Some("local") => ExecBackend::Local,
                        Some("slurm") => ExecBackend::Slurm,
                        other => {
                            let mut help = format!("allowed values: {}", EXEC_BACKENDS.join(", "));
                            if let Some(s) = other.and_then(|o| did_you_mean(o, EXEC_BACKENDS)) {
                                help = format!("did you mean `{s}`? {help}");
                            }
                            return Err(self.invalid(p, format!("invalid backend {}", show(v)), &help));
                        }
                    }
                }
                "slurm" => self.slurm_params(p, v, &mut cfg.slurm)?,
                "mem_gb" => cfg.mem_gb = self.mem_gb(p, v)?,
                "warm" | "fast_exit" => {
                    let on = match v {
                        _ if is_null(v) => false,
                        Value::Bool(b) => *b,
                        _ => {
                            let help = if key == "warm" {
                                "true (fork Python jobs from a warm interpreter) or false (the default: a fresh process per job)"
                            } else {
                                "true (warm jobs end with os._exit, skipping the interpreter's teardown) or false (the default)"
                            };
                            return Err(self.invalid(p, format!("invalid {key} {}", show(v)), help));
                        }
                    };
                    if key == "warm" {
                        cfg.warm = on;
                    } else {
                        cfg.fast_exit = on;
                    }
                }
                "preload" => {
                    let help = "a list of what the warm interpreter imports: module names (numpy), module:function hooks, or .py paths";
                    cfg.preload = match v {
                        _ if is_null(v) => Vec::new(),
                        Value::String(s) if !s.trim().is_empty() => vec![s.trim().to_owned()],
                        Value::Sequence(items) => items
                            .iter()
                            .map(|i| match i.as_str().map(str::trim) {
                                Some(s) if !s.is_empty() => Ok(s.to_owned()),
                                _ => Err(self.invalid(p, format!("invalid preload item {}", show(i)), help)),
                            })
                            .collect::<Result<_, _>>()?,
                        _ => return Err(self.invalid(p, format!("invalid preload {}", show(v)), help)),
                    }
                }
                other => {
                    let help = match did_you_mean(other, ORCHESTRATOR_KEYS) {
                        Some(s) => format!("did you mean `{s}`? known keys: {}", ORCHESTRATOR_KEYS.join(", ")),
                        None => format!("known keys: {}", ORCHESTRATOR_KEYS.join(", ")),
                    };
                    return Err(ConfigError::new(ConfigErrorKind::UnknownKey, format!("unknown key `{other}` in `{}`", base.join(".")), (self.origin)(p)).with_help(help));
                }
            }
        }
        if cfg.exec == ExecBackend::Slurm {
            // Admission waits on this machine (its memory, its load, the starts it makes):
            // on a cluster the scheduler starts the tasks, and holding submissions back
            // would split the sweep into arrays of one task, each with its own throttle.
            let admission = [
                ("min_free_memory", cfg.min_free_memory.is_some()),
                ("max_load", cfg.max_load.is_some()),
                ("start_delay", cfg.start_delay.is_some()),
            ];
            if let Some((key, _)) = admission.into_iter().find(|(_, set)| *set) {
                let mut path = base.to_vec();
                path.push(key);
                return Err(self.invalid(
                    &path,
                    format!("{key} does not apply with backend: slurm"),
                    "admission looks at this machine, and on Slurm the cluster's scheduler starts the tasks: cap them with n_jobs (the array's throttle), or pass sbatch flags in slurm.additional_parameters",
                ));
            }
        }
        Ok(())
    }

    fn slurm_params(&self, base: &[&str], v: &Value, cfg: &mut SlurmConfig) -> Result<(), ConfigError> {
        if is_null(v) {
            return Ok(());
        }
        let Value::Mapping(map) = v else {
            return Err(self.invalid(
                base,
                format!("invalid slurm {}", show(v)),
                "a mapping of Slurm settings, e.g. `partition: debug`",
            ));
        };
        for (k, v) in map {
            let key = k.as_str().unwrap_or("");
            let mut path = base.to_vec();
            path.push(key);
            let p = &path[..];
            let text = |v: &Value| -> Result<Option<String>, ConfigError> {
                if is_null(v) {
                    return Ok(None);
                }
                python_scalar_str(v)
                    .filter(|s| !s.is_empty())
                    .map(Some)
                    .ok_or_else(|| self.invalid(p, format!("invalid {key} {}", show(v)), "a string or a number"))
            };
            let count = |v: &Value| -> Result<Option<u64>, ConfigError> {
                if is_null(v) {
                    return Ok(None);
                }
                v.as_u64()
                    .map(Some)
                    .ok_or_else(|| self.invalid(p, format!("invalid {key} {}", show(v)), "a whole number >= 0"))
            };
            let list = |v: &Value| -> Result<Vec<String>, ConfigError> {
                match v {
                    _ if is_null(v) => Ok(Vec::new()),
                    Value::Sequence(items) => items
                        .iter()
                        .map(|i| {
                            python_scalar_str(i).ok_or_else(|| {
                                self.invalid(p, format!("invalid {key} item {}", show(i)), "a list of strings")
                            })
                        })
                        .collect(),
                    _ => Err(self.invalid(p, format!("invalid {key} {}", show(v)), "a list of strings")),
                }
            };
            match key {
                "partition" => cfg.partition = text(v)?,
                "qos" => cfg.qos = text(v)?,
                "account" => cfg.account = text(v)?,
                "comment" => cfg.comment = text(v)?,
                "constraint" => cfg.constraint = text(v)?,
                "exclude" => cfg.exclude = text(v)?,
                "gres" => cfg.gres = text(v)?,
                "timeout_min" => {
                    cfg.timeout_min = count(v)?;
                    if cfg.timeout_min == Some(0) {
                        return Err(self.invalid(p, "timeout_min must be at least 1".into(), "minutes, or None"));
                    }
                }
                "cpus_per_task" => cfg.cpus_per_task = count(v)?,
                "gpus_per_node" => cfg.gpus_per_node = text(v)?,
                "gpus_per_task" => cfg.gpus_per_task = text(v)?,
                "cpus_per_gpu" => cfg.cpus_per_gpu = count(v)?,
                "mem_gb" => cfg.mem_gb = self.mem_gb(p, v)?,
                "mem_per_cpu" => cfg.mem_per_cpu = text(v)?,
                "mem_per_gpu" => cfg.mem_per_gpu = text(v)?,
                "nodes" => cfg.nodes = count(v)?,
                "tasks_per_node" => cfg.tasks_per_node = count(v)?,
                "array_parallelism" => {
                    cfg.array_parallelism = count(v)?;
                    if cfg.array_parallelism == Some(0) {
                        return Err(self.invalid(p, "array_parallelism must be at least 1".into(), "tasks at once"));
                    }
                }
                "signal_delay_s" => cfg.signal_delay_s = count(v)?,
                "max_num_timeout" => cfg.max_num_timeout = count(v)?.unwrap_or(0),
                "additional_parameters" => {
                    cfg.additional_parameters = match v {
                        _ if is_null(v) => Vec::new(),
                        Value::Mapping(m) => {
                            let mut out = Vec::new();
                            for (name, value) in m {
                                let Some(name) = name.as_str().filter(|n| !n.is_empty() && !n.starts_with('-')) else {
                                    return Err(self.invalid(
                                        p,
                                        format!("invalid sbatch flag name {}", show(name)),
                                        "flag names without dashes: `mail_type: END` becomes --mail-type=END",
                                    ));
                                };
                                let value = match value {
                                    Value::Bool(true) => None,
                                    _ if is_null(value) => None,
                                    other => Some(python_scalar_str(other).ok_or_else(|| {
                                        self.invalid(p, format!("invalid value for `{name}`"), "a string or a number")
                                    })?),
                                };
                                out.push((name.to_string(), value));
                            }
                            out
                        }
                        _ => {
                            return Err(self.invalid(
                                p,
                                format!("invalid additional_parameters {}", show(v)),
                                "a mapping of sbatch flag to value",
                            ));
                        }
                    }
                }
                "setup" => cfg.setup = list(v)?,
                "srun_args" => cfg.srun_args = if is_null(v) { None } else { Some(list(v)?) },
                other => {
                    let help = match did_you_mean(other, SLURM_KEYS) {
                        Some(s) => format!("did you mean `{s}`? known keys: {}", SLURM_KEYS.join(", ")),
                        None => format!("known keys: {}", SLURM_KEYS.join(", ")),
                    };
                    return Err(ConfigError::new(
                        ConfigErrorKind::UnknownKey,
                        format!("unknown key `{other}` in `{}`", base.join(".")),
                        (self.origin)(p),
                    )
                    .with_help(help));
                }
            }
        }
        Ok(())
    }

    fn retries(&self, p: &[&str], v: &Value) -> Result<u32, ConfigError> {
        let help = "a whole number of retries, 0 (the default) to 1000";
        if is_null(v) {
            return Ok(0);
        }
        match v.as_u64() {
            Some(n) if n <= 1000 => Ok(n as u32),
            _ => Err(self.invalid(p, format!("invalid retries {}", show(v)), help)),
        }
    }

    fn retry_on(&self, p: &[&str], v: &Value) -> Result<RetryOn, ConfigError> {
        let help = format!(
            "a list of endings to retry, from: {} (default: failed, timed_out, signaled; a stop is never retried)",
            RETRY_ON_WORDS.join(", ")
        );
        if is_null(v) {
            return Ok(RetryOn::default());
        }
        let words: Vec<&Value> = match v {
            Value::Sequence(items) => items.iter().collect(),
            Value::String(_) => vec![v],
            _ => return Err(self.invalid(p, format!("invalid retry_on {}", show(v)), &help)),
        };
        let mut on = RetryOn { failed: false, timed_out: false, signaled: false, spawn_failed: false };
        for w in words {
            match w.as_str() {
                Some("failed") => on.failed = true,
                Some("timed_out") => on.timed_out = true,
                Some("signaled") => on.signaled = true,
                Some("spawn_failed") => on.spawn_failed = true,
                _ => {
                    let word = show(w);
                    let help = match w.as_str().and_then(|s| did_you_mean(s, RETRY_ON_WORDS)) {
                        Some(s) => format!("did you mean `{s}`? {help}"),
                        None => help.clone(),
                    };
                    return Err(self.invalid(p, format!("invalid retry_on value {word}"), &help));
                }
            }
        }
        Ok(on)
    }

    fn n_jobs(&self, p: &[&str], v: &Value) -> Result<Option<i64>, ConfigError> {
        const HELP: &str =
            "n_jobs is an integer other than 0: 2 = two jobs at a time, -1 = all CPUs, -2 = all but one, None = 1";
        if is_null(v) {
            return Ok(None);
        }
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(0) => Err(self.invalid(p, "n_jobs == 0 has no meaning".into(), HELP)),
            Some(n) => Ok(Some(n)),
            None => Err(self.invalid(p, format!("invalid n_jobs {}", show(v)), HELP)),
        }
    }

    fn backend(&self, p: &[&str], v: &Value) -> Result<Option<Backend>, ConfigError> {
        const ALLOWED: &[&str] = &["loky", "multiprocessing", "threading", "sequential"];
        if is_null(v) {
            return Ok(None);
        }
        match v.as_str() {
            Some("loky") => Ok(Some(Backend::Loky)),
            Some("multiprocessing") => Ok(Some(Backend::Multiprocessing)),
            Some("threading") => Ok(Some(Backend::Threading)),
            Some("sequential") => Ok(Some(Backend::Sequential)),
            Some("slurm") => Err(self.invalid(
                p,
                "joblib's backend cannot be `slurm`".into(),
                "the cluster backend is orchestrator's own setting: hydra.launcher.orchestrator.backend: slurm (or --backend slurm)",
            )),
            other => {
                let mut help = format!("allowed values: None, {}", ALLOWED.join(", "));
                if let Some(s) = other.and_then(|o| did_you_mean(o, ALLOWED)) {
                    help = format!("did you mean `{s}`? {help}");
                }
                Err(self.invalid(p, format!("invalid backend {}", show(v)), &help))
            }
        }
    }

    fn prefer(&self, p: &[&str], v: &Value) -> Result<Option<Prefer>, ConfigError> {
        if is_null(v) {
            return Ok(None);
        }
        match v.as_str() {
            Some("processes") => Ok(Some(Prefer::Processes)),
            Some("threads") => Ok(Some(Prefer::Threads)),
            _ => {
                Err(self.invalid(p, format!("invalid prefer {}", show(v)), "allowed values: processes, threads, None"))
            }
        }
    }

    fn require(&self, p: &[&str], v: &Value) -> Result<bool, ConfigError> {
        if is_null(v) {
            return Ok(false);
        }
        match v.as_str() {
            Some("sharedmem") => Ok(true),
            _ => Err(self.invalid(p, format!("invalid require {}", show(v)), "allowed values: sharedmem, None")),
        }
    }

    fn verbose(&self, p: &[&str], v: &Value) -> Result<u32, ConfigError> {
        let n = match v {
            _ if is_null(v) => Some(0),
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::Bool(b) => Some(u32::from(*b)),
            _ => None,
        };
        n.ok_or_else(|| {
            self.invalid(
                p,
                format!("invalid verbose {}", show(v)),
                "verbose is an integer >= 0 (0 = silent, higher = more progress lines)",
            )
        })
    }

    fn duration(&self, p: &[&str], v: &Value, null_ok: bool) -> Result<Option<Duration>, ConfigError> {
        let help = "a number of seconds (90, 2.5) or a duration (90s, 1h 30m, 500ms)";
        let name = p.last().copied().unwrap_or("duration");
        if is_null(v) {
            return if null_ok { Ok(None) } else { Err(self.invalid(p, format!("{name} must not be None"), help)) };
        }
        let secs = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(f) => Some(f),
                Err(_) => match humantime::parse_duration(s.trim()) {
                    // The same bound as for numbers (about 31,700 years): beyond it, deadlines
                    // would not fit in a clock's range.
                    Ok(d) if d.as_secs() < 1_000_000_000_000 => return self.positive(p, d, name, help),
                    Ok(_) => return Err(self.invalid(p, format!("invalid {name} {}: too long", show(v)), help)),
                    Err(e) => return Err(self.invalid(p, format!("invalid {name} {}: {e}", show(v)), help)),
                },
            },
            _ => None,
        };
        match secs {
            Some(s) if (0.0..1e12).contains(&s) => self.positive(p, Duration::from_secs_f64(s), name, help),
            _ => Err(self.invalid(p, format!("invalid {name} {}", show(v)), help)),
        }
    }

    fn positive(&self, p: &[&str], d: Duration, name: &str, help: &str) -> Result<Option<Duration>, ConfigError> {
        if d.is_zero() && name == "timeout" {
            return Err(self.invalid(p, "timeout must be greater than 0".into(), &format!("{help}; None = no limit")));
        }
        Ok(Some(d))
    }

    fn pre_dispatch(&self, p: &[&str], v: &Value) -> Result<PreDispatch, ConfigError> {
        let help = "`all`, a positive integer, or an expression in n_jobs such as `2*n_jobs`";
        let text = match v {
            _ if is_null(v) => return Err(self.invalid(p, "pre_dispatch must not be None".into(), help)),
            Value::String(s) if s.trim() == "all" => return Ok(PreDispatch::All),
            Value::String(s) => s.clone(),
            Value::Number(n) if n.as_u64().is_some_and(|n| n > 0) => n.to_string(),
            _ => return Err(self.invalid(p, format!("invalid pre_dispatch {}", show(v)), help)),
        };
        match expr::eval(&text, 1.0) {
            Ok(x) if x >= 1.0 => Ok(PreDispatch::Expr(text)),
            Ok(x) => Err(self.invalid(p, format!("pre_dispatch `{text}` is {x}, it must be at least 1"), help)),
            Err(e) => Err(self.invalid(
                p,
                format!("invalid pre_dispatch `{text}`: {} at character {}", e.message, e.column + 1),
                help,
            )),
        }
    }

    fn batch_size(&self, p: &[&str], v: &Value) -> Result<BatchSize, ConfigError> {
        match v {
            Value::String(s) if s == "auto" => Ok(BatchSize::Auto),
            Value::Number(n) if n.as_u64().is_some_and(|n| n > 0) => Ok(BatchSize::Fixed(n.as_u64().unwrap_or(1))),
            Value::String(s) if s.parse::<u64>().is_ok_and(|n| n > 0) => Ok(BatchSize::Fixed(s.parse().unwrap_or(1))),
            _ => Err(self.invalid(
                p,
                format!("invalid batch_size {}", show(v)),
                "batch_size must be `auto` or a positive integer",
            )),
        }
    }

    fn temp_folder(&self, p: &[&str], v: &Value) -> Result<Option<PathBuf>, ConfigError> {
        match v {
            _ if is_null(v) => Ok(None),
            Value::String(s) if !s.is_empty() => Ok(Some(PathBuf::from(s))),
            _ => Err(self.invalid(
                p,
                format!("invalid temp_folder {}", show(v)),
                "a directory path, or None for JOBLIB_TEMP_FOLDER, then /dev/shm, then the system temp dir",
            )),
        }
    }

    fn max_nbytes(&self, p: &[&str], v: &Value) -> Result<Option<u64>, ConfigError> {
        let help =
            "bytes as an integer, or a number with K, M or G (1024-based: 1M = 1048576, 1.5M), or None to never spill";
        match v {
            _ if is_null(v) => Ok(None),
            // Hydra hands joblib `int(value)`: a float is cut to its integer part.
            Value::Number(n) => n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64).map(|f| f as u64))
                .map(Some)
                .ok_or_else(|| self.invalid(p, format!("invalid max_nbytes {}", show(v)), help)),
            Value::String(s) => {
                parse_size(s).map(Some).ok_or_else(|| self.invalid(p, format!("invalid max_nbytes {}", show(v)), help))
            }
            _ => Err(self.invalid(p, format!("invalid max_nbytes {}", show(v)), help)),
        }
    }

    fn mmap_mode(&self, p: &[&str], v: &Value) -> Result<Option<MmapMode>, ConfigError> {
        match v.as_str() {
            _ if is_null(v) => Ok(None),
            Some("r") => Ok(Some(MmapMode::R)),
            Some("r+") | Some("w+") => Ok(Some(MmapMode::RPlus)),
            Some("c") => Ok(Some(MmapMode::C)),
            _ => Err(self.invalid(
                p,
                format!("invalid mmap_mode {}", show(v)),
                "allowed values: r, r+, w+ (read as r+), c, None",
            )),
        }
    }

    fn slot_env(&self, p: &[&str], v: &Value) -> Result<Vec<(String, SlotValue)>, ConfigError> {
        let help = "a mapping of variable name to a template with {slot} (\"{slot}\") or to a list with one value per slot ([0, 1])";
        if is_null(v) {
            return Ok(Vec::new());
        }
        let Value::Mapping(map) = v else {
            return Err(self.invalid(p, format!("invalid slot_env {}", show(v)), help));
        };
        let mut out = Vec::new();
        for (k, val) in map {
            let Some(name) = k.as_str().filter(|n| is_env_name(n)) else {
                return Err(self.invalid(p, format!("invalid environment variable name {}", show(k)), help));
            };
            let scalar = |x: &Value| match x {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            };
            let value = match val {
                Value::Sequence(items) if !items.is_empty() => {
                    let items: Option<Vec<String>> = items.iter().map(scalar).collect();
                    SlotValue::PerSlot(items.ok_or_else(|| {
                        self.invalid(p, format!("slot_env `{name}` has a list item that is not a scalar"), help)
                    })?)
                }
                other => SlotValue::Template(
                    scalar(other)
                        .ok_or_else(|| self.invalid(p, format!("invalid slot_env value for `{name}`"), help))?,
                ),
            };
            out.push((name.to_string(), value));
        }
        Ok(out)
    }
}

/// Keys the flat (`_target_`) form carries beside the joblib parameters.
const FLAT_EXTRA: &[&str] = &["_target_", "orchestrator"];

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// joblib's sizes (`memstr_to_bytes`): an integer, or a number followed by `K`, `M` or `G`
/// (1024-based, upper case only, as joblib). `1M` = 1,048,576; `1.5M` = 1,572,864.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let last = s.chars().last()?;
    let mult: u64 = match last {
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        _ => return None,
    };
    let num: f64 = s[..s.len() - 1].trim().parse().ok()?;
    if !num.is_finite() || num < 0.0 {
        return None;
    }
    let bytes = num * mult as f64;
    (bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_1024_based() {
        assert_eq!(parse_size("1M"), Some(1_048_576));
        assert_eq!(parse_size("1.5M"), Some(1_572_864));
        assert_eq!(parse_size("500K"), Some(512_000));
        assert_eq!(parse_size("2G"), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("1MiB"), None, "joblib accepts K, M, G only");
        assert_eq!(parse_size("1m"), None, "joblib is case-sensitive");
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1M"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn n_jobs_follows_joblib() {
        assert_eq!(NJobs(Some(-1)).resolve(2), 2);
        assert_eq!(NJobs(Some(-2)).resolve(2), 1);
        assert_eq!(NJobs(Some(-5)).resolve(2), 1);
        assert_eq!(NJobs(Some(4)).resolve(2), 4);
        assert_eq!(NJobs(None).resolve(8), 1);
    }

    #[test]
    fn pre_dispatch_resolves() {
        assert_eq!(PreDispatch::Expr("2*n_jobs".into()).resolve(2), 4);
        assert_eq!(PreDispatch::Expr("1".into()).resolve(3), 3);
        assert_eq!(PreDispatch::All.resolve(3), usize::MAX);
    }

    #[test]
    fn python_str_matches_joblib_banner() {
        assert_eq!(python_str(&Value::String("None".into())), "None");
        assert_eq!(python_str(&Value::Null), "None");
        assert_eq!(python_str(&serde_yaml::from_str::<Value>("2.0").unwrap()), "2.0");
        assert_eq!(python_str(&serde_yaml::from_str::<Value>("-1").unwrap()), "-1");
        // Python's float repr, as the scalars' str() everywhere else.
        assert_eq!(python_str(&serde_yaml::from_str::<Value>("1.0e-06").unwrap()), "1e-06");
        assert_eq!(python_str(&serde_yaml::from_str::<Value>("1.0e+20").unwrap()), "1e+20");
    }
}
