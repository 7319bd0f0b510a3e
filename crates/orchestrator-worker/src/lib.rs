//! What a job started by orchestrator can read about itself.
//!
//! orchestrator passes a job's context through `ORCHESTRATOR_*` environment variables and
//! its overrides as `key=value` arguments (Hydra style). [`JobContext::from_env`] reads the
//! former; [`overrides_from_args`] parses the latter, so an app works both under
//! orchestrator and when run by hand.
#![deny(missing_docs)]

use std::path::PathBuf;

/// The job's identity and where its files are. Fields are `None` outside orchestrator.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct JobContext {
    /// Job number in the sweep (0..N-1).
    pub num: Option<u64>,
    /// Job id (`<name>_<num>`).
    pub id: Option<String>,
    /// The job's directory.
    pub dir: Option<PathBuf>,
    /// The sweep's directory.
    pub sweep_dir: Option<PathBuf>,
    /// The slot the job runs in (0..n_jobs-1): use it to pick a GPU or a port.
    pub slot: Option<usize>,
    /// Path of the job's composed config (`.hydra/config.yaml`).
    pub config: Option<PathBuf>,
    /// The job's overrides as a JSON object text (`{"task": 1}`).
    pub overrides_json: Option<String>,
}

impl JobContext {
    /// Read the context from this process's environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok();
        JobContext {
            num: var("ORCHESTRATOR_JOB_NUM").and_then(|v| v.parse().ok()),
            id: var("ORCHESTRATOR_JOB_ID"),
            dir: var("ORCHESTRATOR_JOB_DIR").map(PathBuf::from),
            sweep_dir: var("ORCHESTRATOR_SWEEP_DIR").map(PathBuf::from),
            slot: var("ORCHESTRATOR_SLOT").and_then(|v| v.parse().ok()),
            config: var("ORCHESTRATOR_CONFIG").map(PathBuf::from),
            overrides_json: var("ORCHESTRATOR_OVERRIDES"),
        }
    }

    /// Whether this process was started by orchestrator.
    pub fn is_orchestrated(&self) -> bool {
        self.num.is_some()
    }
}

/// `key=value` arguments as pairs, in order; other arguments are skipped. A leading `+`,
/// `++` is dropped from the key, as the override only says how the key was added.
pub fn overrides_from_args<I: IntoIterator<Item = String>>(args: I) -> Vec<(String, String)> {
    args.into_iter()
        .filter_map(|a| {
            let (k, v) = a.split_once('=')?;
            let k = k.trim_start_matches('+');
            (!k.is_empty() && !k.starts_with('-')).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hydra_style_args() {
        let got = overrides_from_args(["task=3", "--flag", "+extra=a=b", "plain"].map(String::from));
        assert_eq!(got, vec![("task".into(), "3".into()), ("extra".into(), "a=b".into())]);
    }
}
