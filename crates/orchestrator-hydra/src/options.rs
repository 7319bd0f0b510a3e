//! The joblib launcher's config (`hydra.launcher`) as the runtime's [`RunOptions`].

use std::collections::HashMap;
use std::path::Path;

use orchestrator::{RetryPolicy, RunOptions};
use orchestrator_config::{Backend, ConfigError, LauncherConfig, SlotValue};

/// Why a launcher config cannot be run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// The YAML text, or a value in it.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A per-slot list (`slot_env`) shorter than `n_jobs`.
    #[error(
        "slot_env `{name}` lists {given} value(s) but n_jobs is {n_jobs}: each slot needs its own value\n  = help: give at least {n_jobs} values, or lower n_jobs"
    )]
    SlotValues {
        /// The variable.
        name: String,
        /// How many values it has.
        given: usize,
        /// The resolved `n_jobs`.
        n_jobs: usize,
    },
}

/// Options from a launcher config: `n_jobs` resolved against the CPUs this process may use
/// (`sequential` forces 1), grace period, halt policy, retries, per-slot environment, and
/// loky's thread limit (`cpus / n_jobs`, at least 1).
///
/// Fails when a per-slot list has fewer values than `n_jobs`.
pub fn run_options(launcher: &LauncherConfig) -> Result<RunOptions, OptionsError> {
    let cpus = orchestrator::available_cpus();
    let n_jobs = if launcher.backend == Some(Backend::Sequential) { 1 } else { launcher.n_jobs.resolve(cpus) };
    let mut options = RunOptions::new(n_jobs);
    options.grace = launcher.grace_period;
    options.halt = launcher.halt;
    options.slot_env = launcher.slot_env.clone();
    options.thread_limit = Some((cpus / n_jobs.max(1)).max(1));
    options.max_nbytes = launcher.max_nbytes;
    options.mmap_mode = launcher.mmap_mode;
    options.temp_folder = launcher.temp_folder.clone();
    let mut retry = RetryPolicy::new(launcher.retries, launcher.retry_delay);
    retry.on = launcher.retry_on;
    options.retry = retry;
    options.admission.min_free_memory = launcher.min_free_memory;
    options.admission.max_load = launcher.max_load;
    options.admission.start_delay = launcher.start_delay;
    for (name, value) in &options.slot_env {
        if let SlotValue::PerSlot(list) = value
            && list.len() < n_jobs
        {
            return Err(OptionsError::SlotValues { name: name.clone(), given: list.len(), n_jobs });
        }
    }
    Ok(options)
}

/// Options from a config's YAML text (the seed `joblib.yaml` format); the launcher section is
/// read, the rest ignored.
///
/// ```
/// let opts = orchestrator_hydra::options_from_yaml("hydra:\n  launcher:\n    n_jobs: 3\n").unwrap();
/// assert_eq!(opts.n_jobs, 3);
/// ```
pub fn options_from_yaml(text: &str) -> Result<RunOptions, OptionsError> {
    let loaded = orchestrator_config::load_config_str(text, Path::new("<yaml>"))?;
    let resolved = loaded.resolve(&HashMap::new())?;
    run_options(&resolved.launcher)
}
