//! The `orchestrator` command line as a library, so that the binary and the integration
//! tests' build of it share every line.

mod cli;
mod launch_cmd;
mod report;
mod resume;
mod run;
mod signals;
mod status;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes, documented in the README.
pub mod exit {
    /// Every job succeeded.
    pub const OK: u8 = 0;
    /// At least one job failed, timed out, or could not start.
    pub const JOBS_FAILED: u8 = 1;
    /// Bad usage or config: nothing was started.
    pub const USAGE: u8 = 2;
    /// The supervisor itself failed (e.g. cannot write the sweep dir).
    pub const INTERNAL: u8 = 3;
    /// Stopped by SIGINT (Ctrl-C).
    pub const SIGINT: u8 = 130;
    /// Stopped by SIGTERM.
    pub const SIGTERM: u8 = 143;
}

/// Parse the process arguments, run, and return the exit code.
pub fn main() -> ExitCode {
    // A run's watchdog is this binary started again (see `orchestrator::watchdog`).
    if let Some(code) = orchestrator::watchdog::serve_if_requested() {
        return ExitCode::from(code);
    }
    // A Slurm array task is this binary started again on its node (see
    // `orchestrator::backend::slurm::task`).
    if let Some(code) = orchestrator::backend::slurm::task::serve_if_requested() {
        return ExitCode::from(code);
    }
    let args = cli::Cli::parse();
    init_logging();
    match args.command {
        cli::Command::Run(run_args) => ExitCode::from(run::main(run_args)),
        cli::Command::Resume(args) => ExitCode::from(resume::main(args)),
        cli::Command::Status(args) => ExitCode::from(status::main(args)),
        cli::Command::Launch(args) => ExitCode::from(launch_cmd::main(&args.manifest)),
    }
}

/// The supervisor's own diagnostics (never job output) go to stderr, filtered by
/// `ORCHESTRATOR_LOG` (e.g. `debug`); warnings and errors by default.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ORCHESTRATOR_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}
