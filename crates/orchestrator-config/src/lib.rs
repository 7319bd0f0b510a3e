//! Pure configuration logic for orchestrator: the seed `joblib.yaml` format, the Hydra
//! override grammar, and lazy sweep expansion. Nothing here touches processes.
#![deny(missing_docs)]

pub mod compose;
mod config;
mod error;
pub mod expr;
#[doc(hidden)]
pub mod fuzzing;
pub mod grammar;
pub mod interp;
pub mod launcher;
mod locate;
pub mod sweep;
pub mod yaml11;
pub mod yaml_out;

pub use config::{
    DEFAULT_SWEEP_DIR, DEFAULT_SWEEP_SUBDIR, HydraSettings, JOBLIB_CLASSES, LauncherForm, LoadedConfig,
    MAX_CONFIG_BYTES, MAX_FLOW_DEPTH, OverrideDirname, ResolvedConfig, load_config_file, load_config_str,
};
pub use error::{ConfigError, ConfigErrorKind, Origin, escape_controls};
pub use launcher::{
    Backend, BatchSize, ExecBackend, HaltPolicy, LauncherConfig, MmapMode, NJobs, PreDispatch, Prefer, RetryOn,
    SlotValue, SlurmConfig,
};
