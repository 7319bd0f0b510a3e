//! Command-line arguments.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run parameter sweeps as supervised parallel processes (Hydra's joblib launcher, in Rust).
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the app once per combination of the overrides' values.
    ///
    /// Example: orchestrator run --config config/joblib.yaml --multirun task=1..5 -- python3 my_app.py
    Run(RunArgs),

    /// Run again the jobs of the sweep in DIR that have no successful record, with the config
    /// and app command it was started with (recorded in DIR/.orchestrator-sweep.json).
    ///
    /// Example: orchestrator resume multirun/2026-11-24/15-41-20 hydra.launcher.timeout=600
    Resume(ResumeArgs),

    /// Show a sweep's progress: jobs by status, what is running, what failed and why.
    Status(StatusArgs),

    /// Run the jobs of a JSON manifest and stream JSON events (for launchers such as the
    /// Hydra plugin; the manifest format is documented in `launch_cmd.rs`).
    #[command(hide = true)]
    Launch(LaunchArgs),
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The sweep dir.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// The config, if given again: it must be the one the sweep was started with.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print only the summary and errors.
    #[arg(short, long, conflicts_with = "json")]
    pub quiet: bool,

    /// joblib-style progress lines for every job.
    #[arg(short, long)]
    pub verbose: bool,

    /// Never draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// One JSON object per event on stdout.
    #[arg(long)]
    pub json: bool,

    /// `hydra.*` overrides to apply after the sweep's own (a longer timeout, another n_jobs);
    /// the sweep's own overrides, if given again, must be the same.
    #[arg(value_name = "OVERRIDE")]
    pub overrides: Vec<String>,

    /// The app, if given again: it must be the one the sweep was started with.
    #[arg(last = true, value_name = "APP")]
    pub app: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The sweep dir.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The manifest: a JSON file, or `-` for stdin.
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file (the seed `joblib.yaml` format). Without it, joblib's defaults apply.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Sweep: run one job per combination of values (`task=1,2,3 lr=0.1,0.01`).
    #[arg(short, long)]
    pub multirun: bool,

    /// Resume the sweep in DIR: run exactly the jobs with no successful record in its
    /// `jobs.jsonl`, with the same numbers and dirs. The overrides default to the sweep's own
    /// (from its `multirun.yaml`); if given, they must be the same.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,

    /// Print only the summary and errors (not the header and the jobs' lines).
    #[arg(short, long, conflicts_with = "json")]
    pub quiet: bool,

    /// joblib-style progress lines (`[Parallel(n_jobs=2)]: Done 3 out of 5 | elapsed: …`) for
    /// every job (joblib's level 11), whatever the config's `verbose` (which sets their frequency otherwise).
    #[arg(short, long)]
    pub verbose: bool,

    /// Never draw the progress bar (it is drawn only when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,

    /// Where the jobs run: `local` (this machine) or `slurm` (one job array on the cluster);
    /// the same as `hydra.launcher.orchestrator.backend=<BACKEND>`.
    #[arg(long, value_name = "BACKEND", value_parser = ["local", "slurm"])]
    pub backend: Option<String>,

    /// Fork Python jobs (`-- python app.py`, `-- python -m pkg.app`) from a warm interpreter
    /// that has imported what they import: each job is still its own process, started in
    /// milliseconds. The same as `hydra.launcher.orchestrator.warm=true`.
    #[arg(long)]
    pub warm: bool,

    /// With `--backend slurm`: submit, then return at once; a supervisor of its own (in the
    /// background, its output in `<sweep dir>/.slurm/supervisor.log`) follows the tasks and
    /// writes the journal. See `orchestrator status <sweep dir>`.
    #[arg(long, conflicts_with = "json")]
    pub detach: bool,

    /// Print one JSON object per event on stdout, for programs to read.
    #[arg(long)]
    pub json: bool,

    /// Check the config and overrides, print the jobs that would run (number, overrides,
    /// dir, command), and stop: nothing is created and nothing runs.
    #[arg(long)]
    pub dry_run: bool,

    /// Overrides: `key=value`, `key=a,b,c`, `key=1..5`, `+key=v`, `~key`, `hydra.launcher.params.joblib.n_jobs=2`.
    #[arg(value_name = "OVERRIDE")]
    pub overrides: Vec<String>,

    /// The app to run, after `--`: its overrides are appended as `key=value` arguments
    /// unless it contains placeholders such as `{task}` or `{job.num}`.
    #[arg(last = true, required = true, value_name = "APP")]
    pub app: Vec<OsString>,
}
