//! The runner used as a library: events, outcomes, timeouts and stop requests.

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::Duration;

use orchestrator::{Event, JobSpec, Outcome, RunOptions, Stop, StopReason, Stream};
use tokio::sync::{mpsc, watch};

fn sh(num: u64, dir: &std::path::Path, script: &str) -> JobSpec {
    let mut spec =
        JobSpec::new(num, "sh", vec![OsString::from("-c"), OsString::from(script)], dir.join(format!("{num}.log")));
    spec.overrides = vec![format!("n={num}")];
    spec
}

async fn run_all(
    opts: RunOptions,
    jobs: Vec<JobSpec>,
    stop: watch::Receiver<Stop>,
) -> (orchestrator::RunSummary, Vec<Event>) {
    run_all_with(opts, jobs, stop, 1024, Duration::ZERO).await
}

/// `run_all` with an events channel of `capacity` and a consumer that takes `per_event`
/// over each event.
async fn run_all_with(
    opts: RunOptions,
    jobs: Vec<JobSpec>,
    stop: watch::Receiver<Stop>,
    capacity: usize,
    per_event: Duration,
) -> (orchestrator::RunSummary, Vec<Event>) {
    let (job_tx, job_rx) = mpsc::channel(16);
    let (ev_tx, mut ev_rx) = mpsc::channel(capacity);
    let feeder = tokio::spawn(async move {
        for j in jobs {
            if job_tx.send(j.into()).await.is_err() {
                break;
            }
        }
    });
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(e) = ev_rx.recv().await {
            all.push(e);
            if !per_event.is_zero() {
                tokio::time::sleep(per_event).await;
            }
        }
        all
    });
    // A task of its own, as `PreparedSweep::start` runs it.
    let summary = tokio::spawn(orchestrator::run(opts, job_rx, Some(ev_tx), stop)).await.unwrap();
    feeder.await.unwrap();
    (summary, collector.await.unwrap())
}

#[tokio::test(flavor = "current_thread")]
async fn events_arrive_in_order_for_every_job() {
    let dir = tempfile::tempdir().unwrap();
    let jobs: Vec<JobSpec> = (0..6).map(|n| sh(n, dir.path(), "echo out; echo err >&2")).collect();
    let mut opts = RunOptions::new(2);
    opts.forward_output = true;
    let (_tx, rx) = watch::channel(Stop::None);
    let (summary, events) = run_all(opts, jobs, rx).await;
    assert_eq!(summary.finished, 6);
    assert_eq!(summary.succeeded, 6);
    let mut phase: HashMap<u64, u8> = HashMap::new();
    let mut lines: HashMap<u64, Vec<(Stream, Vec<u8>)>> = HashMap::new();
    for e in &events {
        match e {
            Event::Started { num, slot, .. } => {
                assert!(*slot < 2);
                assert_eq!(phase.insert(*num, 1), None, "started once");
            }
            Event::Output { num, stream, line, complete } => {
                assert_eq!(phase.get(num), Some(&1), "output after start, before finish");
                assert!(complete);
                lines.entry(*num).or_default().push((*stream, line.clone()));
            }
            Event::Finished(r) => {
                assert_eq!(phase.insert(r.num, 2), Some(1), "finished after started");
                assert_eq!(r.outcome, Outcome::Succeeded);
                assert_eq!(r.stdout_bytes, 4);
                assert_eq!(r.stderr_bytes, 4);
            }
            _ => {}
        }
    }
    for n in 0..6 {
        assert_eq!(phase[&n], 2);
        let mut got = lines[&n].clone();
        got.sort_by_key(|(s, _)| *s == Stream::Stderr);
        assert_eq!(got, vec![(Stream::Stdout, b"out".to_vec()), (Stream::Stderr, b"err".to_vec())]);
        let log = std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap();
        assert!(log.contains("][stdout] out\n") && log.contains("][stderr] err\n"), "{log}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_slot_holds_one_job_at_a_time_though_it_is_handed_back_early() {
    // A job hands its slot back once its processes are gone, before its bookkeeping: the
    // next job may start (and say so) before the previous one's Finished event, but the
    // records of one slot never overlap, and no more than n_jobs run at once.
    let dir = tempfile::tempdir().unwrap();
    let jobs: Vec<JobSpec> = (0..150)
        .map(|n| match n % 3 {
            0 => JobSpec::new(n, "true", vec![], dir.path().join(format!("{n}.log"))),
            1 => sh(n, dir.path(), "exit 3"),
            _ => sh(n, dir.path(), "echo $n"),
        })
        .collect();
    let (_tx, rx) = watch::channel(Stop::None);
    let (summary, events) = run_all(RunOptions::new(3), jobs, rx).await;
    assert_eq!(summary.finished, 150);
    assert_eq!(summary.succeeded, 100);
    let mut running: HashMap<usize, u64> = HashMap::new(); // slot -> job, from the events
    type Span = (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>);
    let mut records: HashMap<usize, Vec<Span>> = HashMap::new();
    let mut ended_early = 0;
    for e in &events {
        match e {
            Event::Started { num, slot, .. } => {
                assert!(*slot < 3);
                if let Some(prev) = running.insert(*slot, *num) {
                    ended_early += 1;
                    assert!(prev < *num, "slot {slot}: job {num} after job {prev}");
                }
            }
            Event::Finished(r) => {
                if running.get(&r.slot) == Some(&r.num) {
                    running.remove(&r.slot);
                }
                records.entry(r.slot).or_default().push((r.start, r.end));
            }
            _ => {}
        }
    }
    for (slot, mut spans) in records {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "slot {slot}: {:?} overlaps {:?}", w[0], w[1]);
        }
    }
    // How often the next job started before the previous one's event is timing, not a
    // contract; it is only printed.
    eprintln!("{ended_early} of 150 jobs started before their slot's previous job was reported");
}

#[tokio::test(flavor = "current_thread")]
async fn under_halt_a_failure_starts_nothing_more_even_with_a_slow_event_consumer() {
    // A job that ends well while a failed one is still being recorded must not free its
    // slot early: the runner has to see the failure before it starts anything else. A
    // slow consumer of events holds the failed job's record back.
    let dir = tempfile::tempdir().unwrap();
    let mut jobs = vec![sh(0, dir.path(), "exit 1"), sh(1, dir.path(), "sleep 0.05")];
    jobs.extend((2..10).map(|n| sh(n, dir.path(), "true")));
    let mut opts = RunOptions::new(2);
    opts.halt = orchestrator_config::HaltPolicy::Now;
    opts.grace = Duration::from_millis(200);
    let (_tx, rx) = watch::channel(Stop::None);
    let (summary, events) = run_all_with(opts, jobs, rx, 1, Duration::from_millis(300)).await;
    let mut started: Vec<u64> =
        events.iter().filter_map(|e| if let Event::Started { num, .. } = e { Some(*num) } else { None }).collect();
    started.sort_unstable();
    assert_eq!(started, vec![0, 1], "{summary:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn outcomes_cover_exit_codes_signals_timeouts_and_spawn_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut timed = sh(2, dir.path(), "exec sleep 30");
    timed.timeout = Some(Duration::from_millis(200));
    let mut missing = JobSpec::new(3, "/nonexistent/program", vec![], dir.path().join("3.log"));
    missing.id = "missing".into();
    let jobs = vec![sh(0, dir.path(), "exit 7"), sh(1, dir.path(), "kill -9 $$"), timed, missing];
    let mut opts = RunOptions::new(4);
    opts.grace = Duration::from_millis(200);
    let (_tx, rx) = watch::channel(Stop::None);
    let (summary, _) = run_all(opts, jobs, rx).await;
    let mut by_num: Vec<_> = summary.failures.iter().map(|r| (r.num, r.outcome.clone())).collect();
    by_num.sort_by_key(|(n, _)| *n);
    assert_eq!(by_num[0].1, Outcome::Failed { code: 7 });
    assert_eq!(by_num[1].1, Outcome::Signaled { signal: 9, core_dumped: false });
    assert!(matches!(by_num[2].1, Outcome::TimedOut { signal: Some(15), .. }), "{:?}", by_num[2].1);
    assert!(
        matches!(&by_num[3].1, Outcome::SpawnFailed { error } if error.contains("No such file")),
        "{:?}",
        by_num[3].1
    );
    let log = std::fs::read_to_string(dir.path().join("3.log")).unwrap();
    assert!(log.contains("could not start /nonexistent/program"), "{log}");
}

#[tokio::test(flavor = "current_thread")]
async fn job_files_are_written_before_the_program_runs_and_a_failed_one_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("0").join(".hydra");
    std::fs::create_dir(dir.path().join("0")).unwrap();
    // The program reads its files at once: they must be complete when it starts.
    let mut ok = sh(0, dir.path(), &format!("cat {0}/a.yaml {0}/b.yaml > {0}/seen", sub.display()));
    ok.files = vec![
        orchestrator::JobFile::new(sub.join("a.yaml"), "a: 1\n"),
        orchestrator::JobFile::new(sub.join("b.yaml"), vec![b'x'; 200_000]),
    ];
    // A file whose directory's parent is missing cannot be written: the program never runs.
    let missing = dir.path().join("no").join("such").join("x.yaml");
    let mut bad = sh(1, dir.path(), &format!("touch {}/ran", dir.path().display()));
    bad.files = vec![orchestrator::JobFile::new(&missing, "x")];
    let (_tx, rx) = watch::channel(Stop::None);
    let (summary, _) = run_all(RunOptions::new(2), vec![ok, bad], rx).await;
    assert_eq!(summary.succeeded, 1, "{:?}", summary.failures);
    let seen = std::fs::read(sub.join("seen")).unwrap();
    assert_eq!(seen.len(), 5 + 200_000);
    assert!(seen.starts_with(b"a: 1\nxx"));
    let failure = &summary.failures[0];
    assert!(
        matches!(&failure.outcome, Outcome::SpawnFailed { error }
            if error.contains(&missing.parent().unwrap().display().to_string()) && error.contains("No such file")),
        "{:?}",
        failure.outcome
    );
    assert!(!dir.path().join("ran").exists(), "the program of a job whose files failed never ran");
    let log = std::fs::read_to_string(dir.path().join("1.log")).unwrap();
    assert!(log.contains("cannot write"), "{log}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_silent_job_has_its_log_and_start_record_while_it_runs() {
    // The job's process creates its log; the supervisor writes into it once the program
    // runs, so the start record must not wait for output or for the end: not for a job
    // that writes nothing, nor for one that closes its stdout and stderr and runs on.
    let dir = tempfile::tempdir().unwrap();
    let quiet = |n: u64, program: &str, args: &[&str]| {
        let log = dir.path().join(format!("sub{n}")).join("job.log");
        let mut job = JobSpec::new(n, program, args.iter().map(OsString::from).collect(), &log);
        job.overrides = vec![format!("n={n}")];
        (job, log)
    };
    for (job, log) in [quiet(0, "sleep", &["2"]), quiet(1, "sh", &["-c", "exec >/dev/null 2>&1; sleep 2"])] {
        let (_tx, rx) = watch::channel(Stop::None);
        let run = tokio::spawn(run_all(RunOptions::new(1), vec![job], rx));
        // Polled: under load the exec, and so the 50 ms check after it, can take a while.
        let mut text = String::new();
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("[orchestrator] started pid ") {
                break;
            }
        }
        assert!(text.contains("[orchestrator] started pid "), "{}: {text:?}", log.display());
        assert!(!run.is_finished(), "the record came while the job ran");
        let (summary, _) = run.await.unwrap();
        assert_eq!(summary.succeeded, 1);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("exit code 0"), "{text}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn silent_jobs_under_a_halt_policy_end_at_once() {
    // No early release under halt, so the job's end reaches the pump before or with its
    // pipes' EOF: the pump must not then wait for a notice that has already come.
    let dir = tempfile::tempdir().unwrap();
    let jobs: Vec<JobSpec> = (0..16).map(|n| sh(n, dir.path(), "exit 0")).collect();
    let mut opts = RunOptions::new(2);
    opts.halt = orchestrator_config::HaltPolicy::Soon;
    let (_tx, rx) = watch::channel(Stop::None);
    let (summary, events) = run_all(opts, jobs, rx).await;
    assert_eq!(summary.succeeded, 16);
    for e in &events {
        if let Event::Finished(r) = e {
            let log = std::fs::read_to_string(&r.log).unwrap();
            assert!(!log.contains("stopped reading output"), "{log}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_whose_leftover_holds_its_output_is_read_to_the_end() {
    // The leftover keeps the pipes open after the job's process exits; once it is ended the
    // pump sees EOF and must finish at once, not wait for the 2 s "escaped process" limit.
    let dir = tempfile::tempdir().unwrap();
    let jobs: Vec<JobSpec> = (0..16).map(|n| sh(n, dir.path(), "sleep 5 & exit 0")).collect();
    let mut opts = RunOptions::new(2);
    opts.grace = Duration::from_millis(100);
    let (_tx, rx) = watch::channel(Stop::None);
    let (summary, events) = run_all(opts, jobs, rx).await;
    assert_eq!(summary.succeeded, 16);
    for e in &events {
        if let Event::Finished(r) = e {
            assert_eq!(r.leftover_processes, 1, "{r:?}");
            let log = std::fs::read_to_string(&r.log).unwrap();
            assert!(!log.contains("stopped reading output"), "{log}");
            assert!(log.contains("started pid") && log.contains("exit code 0"), "{log}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_stop_request_ends_running_jobs_and_starts_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let jobs: Vec<JobSpec> = (0..5).map(|n| sh(n, dir.path(), "exec sleep 30")).collect();
    let mut opts = RunOptions::new(2);
    opts.grace = Duration::from_millis(300);
    let (tx, rx) = watch::channel(Stop::None);
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(Stop::Graceful { reason: StopReason::Interrupted, signal: libc_sigterm() }).unwrap();
        tx
    });
    let (summary, _) = run_all(opts, jobs, rx).await;
    let _tx = stopper.await.unwrap();
    assert_eq!(summary.finished, 2, "only the two running jobs end");
    assert!(summary.stopped_early);
    for r in &summary.failures {
        assert!(matches!(r.outcome, Outcome::Stopped { reason: StopReason::Interrupted, .. }), "{:?}", r.outcome);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_event_receiver_does_not_stall_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let (job_tx, job_rx) = mpsc::channel(16);
    let (ev_tx, ev_rx) = mpsc::channel(1);
    drop(ev_rx);
    for n in 0..4 {
        job_tx.send(sh(n, dir.path(), "seq 1 1000").into()).await.unwrap();
    }
    drop(job_tx);
    let mut opts = RunOptions::new(2);
    opts.forward_output = true;
    let (_tx, rx) = watch::channel(Stop::None);
    let summary =
        tokio::time::timeout(Duration::from_secs(20), orchestrator::run(opts, job_rx, Some(ev_tx), rx)).await.unwrap();
    assert_eq!(summary.succeeded, 4);
    let log = std::fs::read_to_string(dir.path().join("3.log")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("][stdout] ")).count(), 1000, "the log is complete regardless");
}

fn libc_sigterm() -> i32 {
    15
}

#[tokio::test(flavor = "current_thread")]
async fn records_that_do_not_reach_the_journal_are_counted_in_the_summary() {
    // /dev/full takes the open and refuses every write (ENOSPC), as a full disk would.
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(2);
    opts.journal = Some(std::sync::Arc::new(orchestrator::Journal::open(std::path::Path::new("/dev/full")).unwrap()));
    let jobs: Vec<JobSpec> = (0..3).map(|n| sh(n, dir.path(), "true")).collect();
    let (_tx, rx) = watch::channel(Stop::None);
    let (summary, _) = run_all(opts, jobs, rx).await;
    assert_eq!(summary.succeeded, 3);
    assert!(summary.journal_errors >= 3, "{}", summary.journal_errors);
    let first = summary.journal_error.unwrap();
    assert!(first.contains("cannot append job #") && first.contains("/dev/full"), "{first}");
}

#[tokio::test(flavor = "current_thread")]
async fn payloads_with_similar_names_get_files_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(1);
    opts.temp_folder = Some(dir.path().join("tf"));
    opts.forward_output = true;
    // Print each payload file the job was given (paths from ORCHESTRATOR_ARGS).
    let mut job = sh(
        0,
        dir.path(),
        r#"for f in $(echo "$ORCHESTRATOR_ARGS" | grep -o '"path":"[^"]*"' | cut -d'"' -f4); do cat "$f"; echo; done"#,
    );
    job.payloads = vec![
        orchestrator::Payload::new("a b", b"first".to_vec()),
        orchestrator::Payload::new("a_b", b"second".to_vec()),
    ];
    let (_tx, rx) = watch::channel(Stop::None);
    let (summary, events) = run_all(opts, vec![job], rx).await;
    assert_eq!(summary.succeeded, 1, "{:?}", summary.failures);
    let mut lines: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Output { line, .. } => Some(String::from_utf8_lossy(line).trim().to_string()),
            _ => None,
        })
        .collect();
    lines.sort();
    assert_eq!(lines, ["first", "second"]);
}

#[tokio::test(flavor = "current_thread")]
async fn two_payloads_of_one_name_are_refused_before_the_job_starts() {
    // ORCHESTRATOR_ARGS maps names to files: the second would hide the first.
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(1);
    opts.temp_folder = Some(dir.path().join("tf"));
    let marker = dir.path().join("ran");
    let mut job = sh(0, dir.path(), &format!("touch {}", marker.display()));
    job.payloads = vec![
        orchestrator::Payload::new("data", b"first".to_vec()),
        orchestrator::Payload::new("data", b"second".to_vec()),
    ];
    let (_tx, rx) = watch::channel(Stop::None);
    let (summary, _) = run_all(opts, vec![job], rx).await;
    assert_eq!(summary.failures.len(), 1);
    match &summary.failures[0].outcome {
        Outcome::SpawnFailed { error } => assert!(error.contains(r#"two payloads are named "data""#), "{error}"),
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
    assert!(!marker.exists(), "the job must not have run");
    // Nothing was placed: no payload file is left in temp_folder.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("tf")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(left.iter().all(|e| e.path().is_dir()), "{left:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn limits_too_large_for_memory_or_the_clock_mean_no_limit() {
    // n_jobs of usize::MAX makes no slot list; a timeout or grace of Duration::MAX is never.
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(usize::MAX);
    opts.grace = Duration::MAX;
    let jobs: Vec<JobSpec> = (0..3)
        .map(|n| {
            let mut j = sh(n, dir.path(), "true");
            j.timeout = Some(Duration::MAX);
            j
        })
        .collect();
    let (_tx, rx) = watch::channel(Stop::None);
    let (summary, _) = run_all(opts, jobs, rx).await;
    assert_eq!(summary.succeeded, 3, "{:?}", summary.failures);
}
