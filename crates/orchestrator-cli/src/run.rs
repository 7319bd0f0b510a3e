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
    let mut overrides = args.overrides.clone();
    if let Some(backend) = &args.backend {
        overrides.push(format!("hydra.launcher.orchestrator.backend={backend}"));
    }
    if args.warm {
        overrides.push("hydra.launcher.orchestrator.warm=true".to_owned());
    }
    let mut request = SweepRequest::new(config, overrides, args.app.clone(), base_dir);
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
    // `--detach`: the supervisor goes on in the background, in a session of its own; this
    // process says where once the sweep is submitted.
    let mut detached = None;
    let mut mode = mode;
    if args.detach {
        if prepared.slurm.is_none() {
            eprintln!(
                "error: --detach needs the slurm backend (local jobs are this process's children)\n  = help: add --backend slurm"
            );
            return exit::USAGE;
        }
        match detach() {
            Ok(Detach::Parent(code)) => return code,
            Ok(Detach::Child(tx)) => {
                detached = Some(tx);
                mode = Mode::Quiet;
            }
            Err(e) => {
                eprintln!("error: cannot detach: {e}");
                return exit::INTERNAL;
            }
        }
    }
    // The input is valid and jobs are about to start: from here on, if this process dies
    // without ending them, the watchdog does (the backend starts it; see `crate::main`).
    prepared.options.watchdog = true;
    // Local jobs: the backend is made here, so that --verbose can say how it keeps each job's
    // processes together. (A Slurm run's backend is made when its sweep dir exists.)
    let isolation = if prepared.slurm.is_some() {
        "Slurm tasks (each task's node runner ends what the job left)".to_string()
    } else {
        let backend = match local_backend(&prepared.options) {
            Ok(b) => b,
            Err(code) => return code,
        };
        let isolation = backend.isolation();
        prepared.options.backend = Some(backend);
        isolation
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::INTERNAL;
        }
    };
    let code = runtime.block_on(execute(prepared, mode, display, isolation, detached));
    // Every job has ended: what the runner stopped, it has waited for.
    drop(runtime);
    code
}

async fn execute(
    mut prepared: PreparedSweep,
    mode: Mode,
    display: report::Display,
    isolation: String,
    detached: Option<std::fs::File>,
) -> u8 {
    let total = prepared.total();
    let on_slurm = prepared.slurm.is_some();
    prepared.options.forward_output = mode != Mode::Quiet;
    let (stop_tx, stop_rx) = watch::channel(Stop::None);
    let first_signal = match crate::signals::install(stop_tx.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return exit::INTERNAL;
        }
    };
    let (ev_tx, mut ev_rx) = mpsc::channel(4096);
    let run = match prepared.start(Some(ev_tx), stop_rx) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(mut tx) = detached {
                use std::io::Write;
                let _ = writeln!(tx, "E{e}");
            }
            return exit::INTERNAL;
        }
    };
    if let Some(tx) = detached {
        use std::io::Write;
        // From here on our output goes to the sweep's supervisor log.
        let log = run.abs_dir.join(".slurm").join("supervisor.log");
        if let Ok(f) = std::fs::OpenOptions::new().create(true).append(true).open(&log) {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 onto our own stdout and stderr.
            unsafe {
                libc::dup2(f.as_raw_fd(), 1);
                libc::dup2(f.as_raw_fd(), 2);
            }
        }
        let said = format!("S{}\t{}\t{}\n", run.dir.display(), std::process::id(), log.display());
        // The parent returns once the first array is in Slurm's queue (its first job
        // started), or the run is over (a refused submission).
        let (tx2, rx2) = mpsc::channel(4096);
        let upstream = std::mem::replace(&mut ev_rx, rx2);
        tokio::spawn(async move {
            let mut upstream = upstream;
            let mut pipe = Some((tx, said));
            while let Some(ev) = upstream.recv().await {
                if matches!(ev, orchestrator::Event::Started { .. } | orchestrator::Event::RunFinished { .. })
                    && let Some((mut tx, said)) = pipe.take()
                {
                    let _ = tx.write_all(said.as_bytes());
                }
                if tx2.send(ev).await.is_err() {
                    break;
                }
            }
        });
    }
    if on_slurm {
        // A second Ctrl-C on a cluster run: no wait for Slurm to end the tasks (that can take
        // a while); say what is still in its queue and go. The watchdog cancels the arrays
        // once this process is gone; their jobs have no record and run again on --resume.
        let mut stop = stop_tx.subscribe();
        let sweep_dir = run.abs_dir.clone();
        let first = first_signal.clone();
        tokio::spawn(async move {
            if stop.wait_for(|s| *s == Stop::Immediate).await.is_err() {
                return;
            }
            let queued = tokio::task::spawn_blocking(move || slurm_queue(&sweep_dir)).await.unwrap_or_default();
            let what = if queued.is_empty() {
                "nothing of the sweep is in Slurm's queue".to_owned()
            } else {
                format!("still in Slurm's queue, cancelled by the watchdog as this process ends: {}", queued.join(", "))
            };
            eprintln!(
                "{} second signal: not waiting for Slurm; {what}\n  = help: the jobs without a record run again with --resume",
                report::hydra_prefix()
            );
            let code = first.borrow().map_or(exit::SIGTERM, |s| u8::try_from(128 + s).unwrap_or(exit::SIGTERM));
            std::process::exit(i32::from(code));
        });
    }
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

/// The tasks of the sweep in `dir` that Slurm still has in its queue, as
/// `<array>_<task> (<state>)`.
fn slurm_queue(dir: &std::path::Path) -> Vec<String> {
    let arrays = crate::status::sweep_arrays(dir);
    if arrays.is_empty() {
        return Vec::new();
    }
    match crate::status::queued_tasks(&arrays) {
        Ok(Some(tasks)) => tasks.into_iter().map(|(id, state)| format!("{id} ({})", state.to_lowercase())).collect(),
        _ => Vec::new(),
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

enum Detach {
    /// This process goes on, in the background; tell the parent through this pipe.
    Child(std::fs::File),
    /// This process reported what the child said: exit with this.
    Parent(u8),
}

/// Fork: the child becomes a session leader with stdin from /dev/null and goes on as the
/// sweep's supervisor; the parent waits until the child says the sweep is submitted (or
/// failed), prints where it is, and returns. Called before any thread exists.
fn detach() -> std::io::Result<Detach> {
    use std::io::BufRead;
    // Close-on-exec: no process the supervisor starts (sbatch, the watchdog) may hold it.
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    // SAFETY: no other thread exists yet (the runtime is made after this).
    match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let _ = nix::unistd::setsid();
            if let Ok(null) = std::fs::File::open("/dev/null") {
                use std::os::fd::AsRawFd;
                // SAFETY: dup2 onto our own stdin.
                unsafe { libc::dup2(null.as_raw_fd(), 0) };
            }
            Ok(Detach::Child(std::fs::File::from(w)))
        }
        nix::unistd::ForkResult::Parent { .. } => {
            drop(w);
            let mut line = String::new();
            let mut reader = std::io::BufReader::new(std::fs::File::from(r));
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if let Some(ok) = line.strip_prefix('S') {
                let mut parts = ok.split('\t');
                let (dir, pid, log) =
                    (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                println!("{} submitted; sweep dir: {dir}", report::hydra_prefix());
                println!(
                    "{} supervised in the background by pid {pid} (its output: {log}); progress: orchestrator status {dir}",
                    report::hydra_prefix()
                );
                Ok(Detach::Parent(exit::OK))
            } else if let Some(e) = line.strip_prefix('E') {
                eprintln!("error: {e}");
                Ok(Detach::Parent(exit::INTERNAL))
            } else {
                eprintln!("error: the detached supervisor ended before it submitted the sweep");
                Ok(Detach::Parent(exit::INTERNAL))
            }
        }
    }
}

/// The local backend for a run with `options`; a memory limit it cannot enforce (no memory
/// cgroup here) is a usage error, said before anything starts.
pub(crate) fn local_backend(
    options: &orchestrator::RunOptions,
) -> Result<std::sync::Arc<orchestrator::LocalBackend>, u8> {
    use orchestrator::Backend as _;
    let backend = orchestrator::LocalBackend::new(options);
    if let Some(limit) = options.memory_limit
        && let Err(why) = backend.memory()
    {
        backend.run_ended();
        eprintln!(
            "error: cannot limit each job's memory to {} MiB (mem_gb): {why}\n  = help: a per-job memory limit needs a memory cgroup per job, which orchestrator makes as root or in a cgroup subtree delegated to it (e.g. under `systemd-run --user --scope -p Delegate=yes`), with the memory controller of cgroup v2 or of a cgroup v1 memory hierarchy; or remove mem_gb",
            limit.div_ceil(1 << 20)
        );
        return Err(exit::USAGE);
    }
    Ok(std::sync::Arc::new(backend))
}
