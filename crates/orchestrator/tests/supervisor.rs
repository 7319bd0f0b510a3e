//! The embeddable supervisor: concurrent submissions, per-job cancel, cancel-all, drain.

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use orchestrator::{Event, JobError, JobSpec, Outcome, RunOptions, StopReason, Supervisor, SupervisorError};

fn sh(dir: &std::path::Path, name: &str, script: &str) -> JobSpec {
    JobSpec::new(0, "sh", vec![OsString::from("-c"), OsString::from(script)], dir.join(format!("{name}.log")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_submissions_from_sixteen_tasks_keep_event_order() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, mut events) = Supervisor::start(RunOptions::new(2));
    let collector = tokio::spawn(async move {
        let mut seen: HashMap<u64, Vec<&'static str>> = HashMap::new();
        while let Some(e) = events.recv().await {
            match e {
                Event::Queued { num } => seen.entry(num).or_default().push("queued"),
                Event::Started { num, .. } => seen.entry(num).or_default().push("started"),
                Event::Finished(r) => seen.entry(r.num).or_default().push("finished"),
                Event::RunFinished { finished, .. } => {
                    assert_eq!(finished, 1000);
                    break;
                }
                _ => {}
            }
        }
        seen
    });
    let mut tasks = Vec::new();
    for t in 0..16 {
        let sup = sup.clone();
        let path = dir.path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            let mut handles = Vec::new();
            for i in 0..(1000 / 16 + usize::from(t < 1000 % 16)) {
                let spec = JobSpec::new(0, "true", vec![], path.join(format!("{t}-{i}.log")));
                handles.push(sup.submit(spec).await.unwrap());
            }
            let mut ok = 0;
            for h in handles {
                ok += usize::from(h.wait().await.unwrap().outcome.is_success());
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 1000);
    let summary = sup.drain(Duration::from_secs(30)).await.unwrap();
    assert_eq!(summary.succeeded, 1000);
    let seen = collector.await.unwrap();
    assert_eq!(seen.len(), 1000);
    for (num, order) in seen {
        assert_eq!(order, ["queued", "started", "finished"], "job {num}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn cancelling_one_job_leaves_the_others_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(3);
    opts.grace = Duration::from_millis(200);
    let (sup, _events) = Supervisor::start(opts);
    let long = sup.submit(sh(dir.path(), "long", "exec sleep 30")).await.unwrap();
    let short1 = sup.submit(sh(dir.path(), "a", "sleep 0.3")).await.unwrap();
    let short2 = sup.submit(sh(dir.path(), "b", "sleep 0.3")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    long.cancel();
    let r = long.wait().await.unwrap();
    assert!(
        matches!(r.outcome, Outcome::Stopped { reason: StopReason::Cancelled, signal: Some(15), .. }),
        "{:?}",
        r.outcome
    );
    assert!(short1.wait().await.unwrap().outcome.is_success());
    assert!(short2.wait().await.unwrap().outcome.is_success());
    // Cancelled before it starts: it never runs. The slots run on threads of their own and
    // take a job as soon as it is submitted, so all three are kept busy until it is
    // cancelled, or it could start before `cancel` is called.
    let go = dir.path().join("go");
    let wait_for_go = format!("echo up > {0}/up-$$; while [ ! -e {0}/go ]; do sleep 0.02; done", dir.path().display());
    let mut busy = Vec::new();
    for i in 0..3 {
        busy.push(sup.submit(sh(dir.path(), &format!("busy{i}"), &wait_for_go)).await.unwrap());
    }
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("up-"))
        .count()
        < 3
    {
        assert!(std::time::Instant::now() < until, "the busy jobs never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let never = dir.path().join("never-ran");
    let queued = sup.submit(sh(dir.path(), "never", &format!("touch {}", never.display()))).await.unwrap();
    queued.cancel();
    std::fs::write(&go, "").unwrap();
    let r = queued.wait().await.unwrap();
    assert_eq!(r.pid, None);
    assert_eq!(r.outcome.status(), "cancelled");
    for h in busy {
        assert!(h.wait().await.unwrap().outcome.is_success());
    }
    assert!(!never.exists());
    sup.drain(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn drain_with_a_deadline_ends_what_is_still_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(1);
    opts.grace = Duration::from_millis(200);
    let (sup, _events) = Supervisor::start(opts);
    let running = sup.submit(sh(dir.path(), "run", "exec sleep 30")).await.unwrap();
    let waiting = sup.submit(sh(dir.path(), "wait", "true")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    let summary = sup.drain(Duration::from_millis(300)).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "drain took {:?}", t0.elapsed());
    assert_eq!(summary.finished, 1);
    assert!(matches!(running.wait().await.unwrap().outcome, Outcome::Stopped { reason: StopReason::Interrupted, .. }));
    assert_eq!(waiting.wait().await.unwrap_err(), JobError::NotStarted { num: 1 });
    assert_eq!(sup.submit(sh(dir.path(), "late", "true")).await.unwrap_err(), SupervisorError::Closed);
}

#[tokio::test(flavor = "current_thread")]
async fn cancel_all_through_the_token_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(2);
    opts.grace = Duration::from_millis(200);
    let token = opts.cancel.clone();
    let (sup, _events) = Supervisor::start(opts);
    let a = sup.submit(sh(dir.path(), "a", "exec sleep 30")).await.unwrap();
    let b = sup.submit(sh(dir.path(), "b", "exec sleep 30")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    token.cancel();
    for h in [a, b] {
        let r = h.wait().await.unwrap();
        assert!(matches!(r.outcome, Outcome::Stopped { reason: StopReason::Interrupted, .. }), "{:?}", r.outcome);
    }
    assert_eq!(sup.submit(sh(dir.path(), "c", "true")).await.unwrap_err(), SupervisorError::Closed);
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_event_stream_does_not_stall_the_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = RunOptions::new(2);
    opts.forward_output = true;
    let (sup, events) = Supervisor::start(opts);
    drop(events);
    let mut handles = Vec::new();
    for i in 0..20 {
        handles.push(sup.submit(sh(dir.path(), &i.to_string(), "seq 1 500")).await.unwrap());
    }
    for h in handles {
        assert!(h.wait().await.unwrap().outcome.is_success());
    }
    sup.drain(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn payloads_are_shared_above_max_nbytes_and_readable_back_in_r_plus() {
    use orchestrator::Payload;
    use orchestrator::spill::SpillStore;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    let store = Arc::new(SpillStore::create(folder.path(), Some(orchestrator_config::MmapMode::RPlus)).unwrap());
    let mut opts = RunOptions::new(2);
    opts.max_nbytes = Some(1000);
    opts.mmap_mode = Some(orchestrator_config::MmapMode::RPlus);
    opts.spill = Some(store.clone());
    let (sup, _events) = Supervisor::start(opts);
    let big: Arc<[u8]> = vec![b'a'; 5000].into();
    // Each job prints its payload's path and whether it is shared, then writes a byte
    // into the shared file (r+): the supervisor must see it afterwards.
    let script = r#"
        info=$(printf '%s' "$ORCHESTRATOR_ARGS")
        path=$(printf '%s' "$info" | sed 's/.*"data":{[^}]*"path":"\([^"]*\)".*/\1/')
        echo "$info"
        echo "inode $(stat -c %i "$path")"
        printf X | dd of="$path" bs=1 count=1 conv=notrunc 2>/dev/null
    "#;
    let mut handles = Vec::new();
    for i in 0..3 {
        let mut spec = JobSpec::new(
            0,
            "sh",
            vec!["-c".into(), script.into(), "sh".into(), i.to_string().into()],
            dir.path().join(format!("{i}.log")),
        );
        spec.payloads = vec![Payload::new("data", big.clone()), Payload::new("small", vec![b'b'; 10])];
        handles.push(sup.submit(spec).await.unwrap());
    }
    for h in handles {
        let r = h.wait().await.unwrap();
        assert!(r.outcome.is_success(), "{:?}", r.outcome);
        let log = std::fs::read_to_string(&r.log).unwrap();
        assert!(log.contains(r#""shared":true"#) && log.contains(r#""shared":false"#), "{log}");
    }
    sup.drain(Duration::from_secs(5)).await.unwrap();
    let hash = blake3_hex(&big);
    let back = store.read(&hash).unwrap();
    assert_eq!(back[0], b'X', "the jobs' write reached the shared file");
    assert_eq!(back.len(), 5000);
    // One shared file for the three jobs; the small per-job files are gone.
    let files: Vec<_> = std::fs::read_dir(store.dir()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

fn blake3_hex(bytes: &[u8]) -> String {
    orchestrator::spill::content_hash(bytes)
}

fn alive(pid: i32) -> bool {
    // A zombie (killed, not yet reaped by anyone) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

fn wait_for_pids(path: &std::path::Path, n: usize) -> Vec<i32> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.len() >= n {
            return pids;
        }
        assert!(Instant::now() < until, "the job never wrote its pids");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_all_gone(pids: &[i32]) {
    let until = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < until, "still alive: {:?}", pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn cancel_all_leaves_the_callers_token_alone_which_still_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let app = tokio_util::sync::CancellationToken::new();
    let mut opts = RunOptions::new(1);
    opts.cancel = app.clone();
    let (one, _events) = Supervisor::start(opts.clone());
    one.cancel_all();
    assert!(!app.is_cancelled(), "cancel_all reached the caller's token");
    let (two, mut events) = Supervisor::start(opts);
    let job = two.submit(sh(dir.path(), "s", "sleep 30")).await.unwrap();
    while !matches!(events.recv().await, Some(Event::Started { .. })) {}
    app.cancel();
    let record = job.wait().await.unwrap();
    assert!(matches!(record.outcome, Outcome::Stopped { .. }), "{:?}", record.outcome);
}

#[test]
fn a_runtime_dropped_under_running_jobs_takes_their_processes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // The supervisor outlives the runtime: only the runtime's end can stop the job.
    let (sup, events, job) = rt.block_on(async {
        let (sup, events) = Supervisor::start(RunOptions::new(1));
        let script = format!("sleep 301 & echo $$ $! > {}; sleep 302", pids.display());
        let job = sup.submit(sh(dir.path(), "j", &script)).await.unwrap();
        (sup, events, job)
    });
    let job_pids = wait_for_pids(&pids, 2);
    drop(rt);
    // Not "eventually": by the time the drop returns, SIGKILL is on its way to every
    // process of the job (a program that exits right after would not wait for it).
    for &pid in &job_pids {
        assert!(killed_or_gone(pid), "pid {pid} was not sent SIGKILL before the runtime's drop returned");
    }
    assert_all_gone(&job_pids);
    drop((sup, events, job));
}

/// Whether `pid` is gone, dead, or has a SIGKILL pending.
fn killed_or_gone(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return true };
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default()
    };
    let state = field("State:");
    let pending = |name: &str| u64::from_str_radix(&field(name), 16).unwrap_or(0) & (1 << (libc::SIGKILL - 1)) != 0;
    state.starts_with('Z') || state.starts_with('X') || pending("SigPnd:") || pending("ShdPnd:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn dropping_every_handle_to_a_supervisor_stops_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let mut opts = RunOptions::new(1);
    opts.grace = Duration::from_millis(200);
    let (sup, events) = Supervisor::start(opts);
    let script = format!("sleep 301 & echo $$ $! > {}; sleep 302", pids.display());
    let job = sup.submit(sh(dir.path(), "j", &script)).await.unwrap();
    let job_pids = wait_for_pids(&pids, 2);
    drop((sup, events, job));
    tokio::task::spawn_blocking(move || assert_all_gone(&job_pids)).await.unwrap();
}
