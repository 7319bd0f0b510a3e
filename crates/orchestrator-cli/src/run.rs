//! `orchestrator run`: turn the arguments into a sweep request, run it, report.

use orchestrator::Stop;
use orchestrator_config::escape_controls;
use orchestrator_hydra::sweep::{ConfigInput, PreparedSweep, SweepRequest};
use tokio::sync::{mpsc, watch};

use crate::cli::RunArgs;
use crate::exit;
use crate::report::{self, Mode};

pub fn main(args: RunArgs) -> u8 {
    main_with(args, None)
}

/// [`main`], with the config given as input (`orchestrator resume`: the recorded text)
/// instead of `args.config`.
pub fn main_with(args: RunArgs, config: Option<ConfigInput>) -> u8 {
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
    let config = config.unwrap_or_else(|| match &args.config {
        Some(p) => ConfigInput::File(p.clone()),
        None => ConfigInput::Defaults,
    });
    let mut request = SweepRequest::new(config, args.overrides.clone(), args.app.clone(), base_dir);
    request.multirun = args.multirun;
    request.resume = args.resume.clone();
    let mut prepared = match PreparedSweep::prepare(&request) {
        Ok(p) => p,
        Err(e) => {
            // The message quotes the input: its control bytes are shown escaped.
            eprintln!("error: {}", orchestrator_config::escape_controls(&e.to_string()));
            return exit::USAGE;
        }
    };
    if args.dry_run {
        return dry_run(&prepared, mode);
    }
    let launcher_verbose = prepared.layout.resolved.launcher.verbose;
    let display = report::Display {
        verbose: if args.verbose { launcher_verbose.max(11) } else { launcher_verbose },
        n_jobs: prepared.options.n_jobs,
        bar: !args.no_progress
            && std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var_os("TERM").is_some_and(|t| t != "dumb"),
    };
    // The input is valid and jobs are about to start: from here on, if this process dies
    // without ending them, the watchdog does (the backend starts it; see `crate::main`).
    prepared.options.watchdog = true;
    let backend = std::sync::Arc::new(orchestrator::LocalBackend::new(&prepared.options));
    let isolation = backend.isolation();
    prepared.options.backend = Some(backend);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::INTERNAL;
        }
    };
    let code = runtime.block_on(execute(prepared, mode, display, isolation));
    // Every job has ended: what the runner stopped, it has waited for.
    drop(runtime);
    code
}

async fn execute(mut prepared: PreparedSweep, mode: Mode, display: report::Display, isolation: String) -> u8 {
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
        eprintln!("{} isolation: {isolation}", report::hydra_prefix());
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

/// `--dry-run`: the jobs that would run, and nothing else. Exit 2 if one of them could not be
/// prepared (it would be recorded as not started).
fn dry_run(prepared: &PreparedSweep, mode: Mode) -> u8 {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut bad = 0u64;
    if mode != Mode::Json {
        let _ = writeln!(
            out,
            "{} {} would launch {} jobs, sweep output dir : {} (dry run: nothing is created)",
            report::hydra_prefix(),
            prepared.banner,
            prepared.total(),
            prepared.layout.dir.display()
        );
    }
    for job in prepared.planned() {
        let command: Vec<String> = job.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        bad += u64::from(job.dir.is_err());
        let line = match mode {
            Mode::Json => serde_json::json!({
                "event": "dry_run_job", "num": job.num, "overrides": job.overrides,
                "dir": job.dir.as_ref().ok().map(|d| d.display().to_string()),
                "error": job.dir.as_ref().err(), "command": command,
            })
            .to_string(),
            _ => match &job.dir {
                Ok(dir) => format!(
                    "\t#{} : {} -> {}\n\t    {}",
                    job.num,
                    escape_controls(&job.overrides.join(" ")),
                    dir.display(),
                    escape_controls(&command.join(" "))
                ),
                Err(e) => {
                    format!("\t#{} : {} -> cannot be prepared: {e}", job.num, escape_controls(&job.overrides.join(" ")))
                }
            },
        };
        if writeln!(out, "{line}").is_err() {
            break; // stdout closed (`| head`): nothing more to say
        }
    }
    let _ = out.flush();
    if bad > 0 { exit::USAGE } else { exit::OK }
}
