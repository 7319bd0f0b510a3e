//! `orchestrator run`: turn the arguments into a sweep request, run it, report.

use orchestrator::Stop;
use orchestrator_hydra::sweep::{ConfigInput, PreparedSweep, SweepRequest};
use tokio::sync::{mpsc, watch};

use crate::cli::RunArgs;
use crate::exit;
use crate::report::{self, Mode};

pub fn main(args: RunArgs) -> u8 {
    let mode = if args.json {
        Mode::Json
    } else if args.quiet {
        Mode::Quiet
    } else {
        Mode::Plain
    };
    let base_dir = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot read the current directory: {e}");
            return exit::USAGE;
        }
    };
    let config = match &args.config {
        Some(p) => ConfigInput::File(p.clone()),
        None => ConfigInput::Defaults,
    };
    let mut overrides = args.overrides.clone();
    if let Some(backend) = &args.backend {
        overrides.push(format!("hydra.launcher.orchestrator.backend={backend}"));
    }
    let mut request = SweepRequest::new(config, overrides, args.app.clone(), base_dir);
    request.multirun = args.multirun;
    request.resume = args.resume.clone();
    let mut prepared = match PreparedSweep::prepare(&request) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let launcher_verbose = prepared.layout.resolved.launcher.verbose;
    if mode != Mode::Json {
        for note in &prepared.notes {
            eprintln!("{} {note}", report::hydra_prefix());
        }
    }
    let display = report::Display {
        verbose: if args.verbose { launcher_verbose.max(11) } else { launcher_verbose },
        n_jobs: prepared.options.n_jobs,
        bar: !args.no_progress
            && std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var_os("TERM").is_some_and(|t| t != "dumb"),
    };
    // The input is valid and jobs are about to start: from here on, if this process dies
    // without ending them, the watchdog does (the run starts it; see `crate::main`).
    prepared.options.watchdog = true;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::INTERNAL;
        }
    };
    let code = runtime.block_on(execute(prepared, mode, display));
    // Every job has ended: what the runner stopped, it has waited for.
    drop(runtime);
    code
}

async fn execute(mut prepared: PreparedSweep, mode: Mode, display: report::Display) -> u8 {
    let total = prepared.total();
    prepared.options.forward_output = mode != Mode::Quiet;
    let (stop_tx, stop_rx) = watch::channel(Stop::None);
    let first_signal = match crate::signals::install(stop_tx.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return exit::INTERNAL;
        }
    };
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    let run = match prepared.start(Some(ev_tx), stop_rx) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INTERNAL;
        }
    };
    if display.verbose > 0 && mode == Mode::Plain {
        let where_ = match &run.spill {
            Some(store) => format!("large arguments are spilled to {}", store.dir().display()),
            None => format!("large arguments would be spilled under {}", run.temp_folder.path.display()),
        };
        eprintln!("{} temp_folder: {where_} ({})", report::hydra_prefix(), run.temp_folder.reason);
    }
    // Everything from here on (the header, the jobs' lines, the summary) comes from the
    // run's events.
    let reporter = tokio::spawn(report::consume(mode, display, ev_rx));
    let summary = run.done.await.unwrap_or_default();
    let _ = reporter.await;
    let stopped_by = *first_signal.borrow();
    if let Some(error) = &summary.journal_error {
        eprintln!(
            "{} error: {} write(s) to the journal failed, the first: {error}\n  = help: the jobs whose records are missing would run again on --resume",
            report::hydra_prefix(),
            summary.journal_errors
        );
    }
    match stopped_by {
        // 128 + the signal, as a shell reports a process it ended (130 for Ctrl-C).
        Some(s) => u8::try_from(128 + s).unwrap_or(exit::SIGTERM),
        None if summary.failures.is_empty() && summary.finished == total && summary.journal_errors == 0 => exit::OK,
        None => exit::JOBS_FAILED,
    }
}
