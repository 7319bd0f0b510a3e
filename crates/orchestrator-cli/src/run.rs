//! `orchestrator run`: turn the arguments into a sweep request, run it, report.

use std::time::Instant;

use orchestrator::Stop;
use orchestrator_hydra::sweep::{ConfigInput, PreparedSweep, SweepRequest};
use tokio::sync::{mpsc, watch};

use crate::cli::RunArgs;
use crate::exit;
use crate::report::{self, Header, Mode};

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
    let mut request = SweepRequest::new(config, args.overrides.clone(), args.app.clone(), base_dir);
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
    let display = report::Display {
        total: prepared.total(),
        verbose: if args.verbose { launcher_verbose.max(11) } else { launcher_verbose },
        n_jobs: prepared.options.n_jobs,
        bar: !args.no_progress
            && std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var_os("TERM").is_some_and(|t| t != "dumb"),
    };
    // The input is valid and jobs are about to start: from here on, if this process dies
    // without ending them, the watchdog does.
    let watchdog = match crate::watchdog::Watchdog::start() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot start the watchdog ({e}): if this process is killed, what its jobs forked may outlive them"
            );
            None
        }
    };
    // Our child, but not a job's: the reaper need not look at it each time a job ends.
    prepared.options.foreign_children.extend(watchdog.as_ref().map(|w| w.pid()));
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
    if let Some(w) = watchdog {
        w.finish();
    }
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
    let resuming = prepared.resuming.then(|| (prepared.plan.len() - total, prepared.plan.len()));
    let banner = prepared.banner.clone();
    let listed: Vec<(u64, String)> = prepared.listed().take(1000).collect();
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
    if let Some((done, all)) = resuming {
        report::resuming(mode, &run.dir, done, all);
    }
    report::header(
        mode,
        Header {
            banner: &banner,
            n_jobs_total: total,
            sweep_dir: &run.dir,
            jobs: &mut listed.into_iter(),
            listed_max: 1000,
        },
    );
    let reporter = tokio::spawn(report::consume(mode, display, ev_rx));
    let t0 = Instant::now();
    let summary = run.done.await.unwrap_or_default();
    let _ = reporter.await;
    let stopped_by = *first_signal.borrow();
    report::summary(mode, &summary, total, t0.elapsed(), &run.dir, stopped_by);
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
