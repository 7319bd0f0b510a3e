//! The Hydra layer of orchestrator, above the Hydra-agnostic runtime (`orchestrator`): it turns
//! a config (the seed `joblib.yaml` format) and overrides into jobs, lays out Hydra's output
//! tree (`multirun.yaml`, each job's `.hydra/*.yaml`), hands large arguments over, and maps
//! the joblib launcher's keys onto the runtime's [`RunOptions`](orchestrator::RunOptions).
//! The runtime never imports from here.
#![deny(missing_docs)]

pub mod args;
pub mod layout;
mod options;
pub mod record;
pub mod sweep;

pub use options::{OptionsError, options_from_yaml, run_options, slurm_settings};
pub use record::SweepRecord;
pub use sweep::{ConfigInput, PreparedSweep, SetupError, SweepRequest, SweepRun};
