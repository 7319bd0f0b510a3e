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
    if launcher.exec == orchestrator_config::ExecBackend::Slurm {
        // submitit's requeues after a time limit or a preemption.
        retry.requeue_timeouts = u32::try_from(launcher.slurm.max_num_timeout).unwrap_or(u32::MAX);
    }
    options.retry = retry;
    options.admission.min_free_memory = launcher.min_free_memory;
    options.admission.max_load = launcher.max_load;
    options.admission.start_delay = launcher.start_delay;
    options.memory_limit = launcher.mem_gb.map(|gb| (gb * (1u64 << 30) as f64).ceil() as u64);
    if launcher.warm {
        let mut warm = orchestrator::backend::local::WarmOptions::new();
        warm.preload = launcher.preload.clone();
        warm.fast_exit = launcher.fast_exit;
        options.warm = Some(warm);
    }
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

/// How a sweep of `total` jobs is submitted to Slurm: checks the cluster (`sbatch` on PATH,
/// the controller up) and asks Slurm whether it would take the array (`sbatch --test-only`:
/// a bad partition or too much memory is refused here, with Slurm's words, before anything
/// is created). `notes` gets what the user should hear once (the time limit's rounding).
pub fn slurm_settings(
    launcher: &LauncherConfig,
    n_jobs: usize,
    total: u64,
    cwd: &Path,
    notes: &mut Vec<String>,
) -> Result<orchestrator::backend::slurm::SlurmSettings, orchestrator::backend::slurm::SlurmError> {
    use orchestrator::backend::slurm::{SlurmSettings, probe};
    let info = probe()?;
    // `mem_gb` beside the other backends' settings is the Slurm one's too, unless it has its own.
    let mut c = launcher.slurm.clone();
    c.mem_gb = c.mem_gb.or(launcher.mem_gb);
    let c = &c;
    let mut s = SlurmSettings::new(cwd.join(".slurm"), &info);
    s.chdir = cwd.to_path_buf();
    s.throttle = c.array_parallelism.map_or(n_jobs, |p| usize::try_from(p).unwrap_or(usize::MAX)).max(1);
    if let (None, Some(n)) = (c.array_parallelism, launcher.n_jobs.0)
        && n < 0
    {
        // joblib's "all the CPUs" is this machine's, which may not be what a cluster user
        // meant: say what it became.
        notes.push(format!(
            "n_jobs {n} is this machine's CPUs: at most {n_jobs} tasks of the array run at once (set n_jobs or slurm.array_parallelism for more)"
        ));
    }
    s.time_limit_min = match (c.timeout_min, launcher.timeout) {
        (Some(m), _) => Some(m),
        (None, Some(t)) => {
            let minutes = t.as_secs_f64() / 60.0;
            let m = (minutes.ceil() as u64).max(1);
            if (m as f64 - minutes).abs() > 1e-9 {
                notes.push(format!(
                    "timeout {}s becomes Slurm's --time={m} (Slurm limits are whole minutes, enforced within about 30 s)",
                    t.as_secs_f64()
                ));
            }
            Some(m)
        }
        (None, None) => None,
    };
    s.sbatch_args = sbatch_flags(c);
    s.setup = c.setup.clone();
    s.srun_args = c.srun_args.clone();
    s.slot_env = launcher.slot_env.clone();
    s.grace = launcher.grace_period;
    s.test_submission(total)?;
    Ok(s)
}

/// The sbatch flags of the Slurm settings (submitit's names), in a fixed order;
/// `additional_parameters` last (`mail_type: END` is `--mail-type=END`).
pub fn sbatch_flags(c: &orchestrator_config::SlurmConfig) -> Vec<String> {
    let mut a = Vec::new();
    let mut flag = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            a.push(format!("--{name}={v}"));
        }
    };
    flag("partition", c.partition.clone());
    flag("qos", c.qos.clone());
    flag("account", c.account.clone());
    flag("comment", c.comment.clone());
    flag("constraint", c.constraint.clone());
    flag("exclude", c.exclude.clone());
    flag("gres", c.gres.clone());
    flag("cpus-per-task", c.cpus_per_task.map(|n| n.to_string()));
    flag("gpus-per-node", c.gpus_per_node.clone());
    flag("gpus-per-task", c.gpus_per_task.clone());
    flag("cpus-per-gpu", c.cpus_per_gpu.map(|n| n.to_string()));
    flag("mem", c.mem_gb.map(|g| format!("{}M", (g * 1024.0).ceil() as u64)));
    flag("mem-per-cpu", c.mem_per_cpu.clone());
    flag("mem-per-gpu", c.mem_per_gpu.clone());
    flag("nodes", c.nodes.map(|n| n.to_string()));
    flag("ntasks-per-node", c.tasks_per_node.map(|n| n.to_string()));
    flag("signal", c.signal_delay_s.map(|s| format!("B:USR2@{s}")));
    for (name, value) in &c.additional_parameters {
        let name = name.replace('_', "-");
        match value {
            Some(v) => a.push(format!("--{name}={v}")),
            None => a.push(format!("--{name}")),
        }
    }
    a
}

#[cfg(test)]
mod tests {
    #[test]
    fn submitit_keys_become_sbatch_flags() {
        let text = "hydra:\n  launcher:\n    orchestrator:\n      backend: slurm\n      slurm:\n        partition: debug\n        mem_gb: 1.5\n        cpus_per_task: 2\n        tasks_per_node: 1\n        signal_delay_s: 90\n        additional_parameters:\n          mail_type: END\n          exclusive: true\n";
        let loaded = orchestrator_config::load_config_str(text, std::path::Path::new("<t>")).unwrap();
        let resolved = loaded.resolve(&std::collections::HashMap::new()).unwrap();
        assert_eq!(resolved.launcher.exec, orchestrator_config::ExecBackend::Slurm);
        assert_eq!(
            super::sbatch_flags(&resolved.launcher.slurm),
            [
                "--partition=debug",
                "--cpus-per-task=2",
                "--mem=1536M",
                "--ntasks-per-node=1",
                "--signal=B:USR2@90",
                "--mail-type=END",
                "--exclusive"
            ]
        );
    }
}
