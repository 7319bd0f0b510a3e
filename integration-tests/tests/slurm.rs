//! The Slurm backend against a real cluster (`.ci/slurm/start.sh` starts a one-node one).
//!
//! Without a cluster (`scontrol ping` fails) each test prints `skipped: <name>: no Slurm
//! cluster` and returns; with `ORCHESTRATOR_REQUIRE_SLURM=1` (CI) a missing cluster fails
//! the test. Each test says whether the cluster runs with accounting (`sacct`) or without:
//! CI runs the suite in both modes.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// Whether a cluster answers; prints the skip (or panics under ORCHESTRATOR_REQUIRE_SLURM=1).
fn cluster(name: &str) -> bool {
    let up = Command::new("scontrol")
        .arg("ping")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(" is UP"))
        .unwrap_or(false);
    if !up {
        if std::env::var("ORCHESTRATOR_REQUIRE_SLURM").as_deref() == Ok("1") {
            panic!("{name}: no Slurm cluster, and ORCHESTRATOR_REQUIRE_SLURM=1 (start one with .ci/slurm/start.sh)");
        }
        skip(&format!("{name}: no Slurm cluster"));
        return false;
    }
    let config = Command::new("scontrol").args(["show", "config"]).output().map(|o| o.stdout).unwrap_or_default();
    let accounting = !String::from_utf8_lossy(&config).contains("accounting_storage/none");
    eprintln!("{name}: Slurm cluster up, accounting {}", if accounting { "on" } else { "off" });
    true
}

/// A job name no other test (or earlier run) uses, to find this test's tasks in squeue.
fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("it{}{}{tag}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Tasks of array(s) named `name` still in the queue.
fn queued(name: &str) -> Vec<String> {
    let out = Command::new("squeue").args(["-h", "-r", "-n", name, "-o", "%i|%T"]).output().expect("squeue");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn slurm_config(sb: &Sandbox, n_jobs: u32, extra: &str) -> std::path::PathBuf {
    sb.write(
        "slurm.yaml",
        &format!(
            "hydra:\n  launcher:\n    n_jobs: {n_jobs}\n    orchestrator:\n      grace_period: 1s\n      backend: slurm\n{extra}"
        ),
    )
}

/// Every file under `dir` (relative, sorted), without the backend's own `.slurm`.
fn tree(dir: &std::path::Path) -> Vec<String> {
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if rel == ".slurm" {
                continue;
            }
            if p.is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A journal record without what differs from run to run (times, usage, pid, node).
fn stable(r: &Value) -> Value {
    let mut r = r.clone();
    let m = r.as_object_mut().unwrap();
    // stdout_bytes too: the app prints its pid, whose digits vary. `isolation` says how each
    // backend kept the job's processes together (a local cgroup, a Slurm task);
    // `mem_peak_kib` is measured where the local backend has a memory cgroup.
    for k in [
        "mem_peak_kib",
        "pid",
        "start",
        "end",
        "duration_s",
        "cpu_user_s",
        "cpu_sys_s",
        "max_rss_kib",
        "node",
        "slot",
        "stdout_bytes",
        "isolation",
    ] {
        m.remove(k);
    }
    r
}

/// The log's tags and texts, without the stamps, and the supervisor's own notes.
fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once("]["))
        .map(|(_, rest)| rest.to_string())
        .filter(|l| !l.starts_with("orchestrator]"))
        // The app's own line carries its time and pid.
        .map(|l| match l.split_once("executing") {
            Some((_, task)) => format!("{} executing{task}", &l[..7]),
            None => l,
        })
        .collect()
}

#[test]
fn slurm_seed_sweep_leaves_the_same_tree_and_journal_as_locally() {
    if !cluster("slurm_seed_sweep_leaves_the_same_tree_and_journal_as_locally") {
        return;
    }
    let config = repo().join("config/joblib.yaml");
    let name = unique("seed");
    let run = |sb: &Sandbox, backend: &str| {
        let app = sb.path().join("my_app");
        std::fs::copy(env!("CARGO_BIN_EXE_example-my-app"), &app).unwrap();
        let out = sb
            .cmd()
            .args(["--config", config.to_str().unwrap(), "--backend", backend, "--multirun", "task=1..5"])
            .args(["hydra.sweep.dir=sweep", &format!("hydra.job.name={name}"), "--", app.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{backend}: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let (local, slurm) = (Sandbox::new(), Sandbox::new());
    let local_out = run(&local, "local");
    let t0 = Instant::now();
    let slurm_out = run(&slurm, "slurm");
    eprintln!("seed sweep on Slurm: {:.2}s", t0.elapsed().as_secs_f64());
    let (ld, sd) = (local.path().join("sweep"), slurm.path().join("sweep"));
    assert_eq!(tree(&ld), tree(&sd), "the output trees differ");
    assert!(sd.join(".slurm/b0/0.done").exists(), "the task's completion marker");
    for n in 0..5 {
        for f in ["config.yaml", "overrides.yaml"] {
            let rel = format!("{n}/.hydra/{f}");
            assert_eq!(std::fs::read(ld.join(&rel)).unwrap(), std::fs::read(sd.join(&rel)).unwrap(), "{rel}");
        }
        let hydra = |sb: &Sandbox, d: &std::path::Path| {
            std::fs::read_to_string(d.join(format!("{n}/.hydra/hydra.yaml")))
                .unwrap()
                .replace(sb.path().to_str().unwrap(), "<sandbox>")
                .replace("orchestrator.backend=slurm", "orchestrator.backend=local")
        };
        let (lh, sh) = (hydra(&local, &ld), hydra(&slurm, &sd));
        let differing: Vec<(&str, &str)> = lh.lines().zip(sh.lines()).filter(|(a, b)| a != b).collect();
        assert!(differing.is_empty(), "{n}/.hydra/hydra.yaml differs: {differing:?}");
        let log = format!("{n}/{name}.log");
        assert_eq!(log_lines(&ld.join(&log)), log_lines(&sd.join(&log)), "{log}");
        let text = std::fs::read_to_string(sd.join(&log)).unwrap();
        assert!(text.contains("(Slurm task "), "{text}");
        assert!(text.contains("][orchestrator] exit code 0 after "), "{text}");
    }
    let (lj, sj) = (journal(&ld), journal(&sd));
    assert_eq!(lj.iter().map(stable).collect::<Vec<_>>(), sj.iter().map(stable).collect::<Vec<_>>());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    for r in &sj {
        assert_eq!(r["node"], host.as_str(), "{r}");
        assert!(r["duration_s"].as_f64().unwrap() >= 1.0, "my_app sleeps 1 s: {r}");
        assert!(r["slot"].as_u64().unwrap() < 2, "n_jobs is 2 here (all CPUs): {r}");
    }
    assert!(lj.iter().all(|r| r.get("node").is_none()), "local records have no node");
    // The console: the same header and one app line per job.
    let header =
        |s: &str| s.lines().take(7).map(|l| l.split_once("][HYDRA]").unwrap().1.to_string()).collect::<Vec<_>>();
    assert_eq!(header(&local_out), header(&slurm_out));
    assert_eq!(slurm_out.matches("executing task").count(), 5, "{slurm_out}");
    assert!(queued(&name).is_empty());
}

#[test]
fn slurm_failing_task_is_recorded_with_its_exit_code() {
    if !cluster("slurm_failing_task_is_recorded_with_its_exit_code") {
        return;
    }
    let sb = Sandbox::new();
    let name = unique("fail");
    let cfg = slurm_config(&sb, 2, "");
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "task=1..4", &format!("hydra.job.name={name}"), "--"])
        .args([fixture(), "fail-on", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("#2 : task=3 -> exit code 3"), "{stderr}");
    let sweep = sb.sweep_dir();
    let records = journal(&sweep);
    let status: Vec<&str> = records.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["succeeded", "succeeded", "failed", "succeeded"]);
    assert_eq!(records[2]["exit_code"], 3);
    assert_eq!(records[2]["stderr_bytes"], "failing on purpose: task=3\n".len());
    let log = std::fs::read_to_string(sweep.join(format!("2/{name}.log"))).unwrap();
    assert!(log.contains("][stderr] failing on purpose: task=3\n"), "{log}");
    assert!(log.contains("][orchestrator] exit code 3 after "), "{log}");
    assert!(queued(&name).is_empty());
}

#[test]
fn slurm_ctrl_c_mid_array_leaves_nothing_queued_and_no_process() {
    if !cluster("slurm_ctrl_c_mid_array_leaves_nothing_queued_and_no_process") {
        return;
    }
    let sb = Sandbox::new();
    let name = unique("cancel");
    let cfg = slurm_config(&sb, 2, "");
    let mut child = sb.spawn(&[
        "-c",
        cfg.to_str().unwrap(),
        "-m",
        "task=1..6",
        &format!("hydra.job.name={name}"),
        "--",
        fixture(),
        "hang-ignore-term",
    ]);
    // Two tasks running (their pids written), four pending.
    wait_for(60, "two running tasks", || sb.sweep_dirs().first().is_some_and(|s| recorded_pids(s).len() >= 4));
    assert!(queued(&name).len() >= 3, "{:?}", queued(&name));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let t0 = Instant::now();
    let status = child.wait().unwrap();
    let took = t0.elapsed();
    eprintln!("Ctrl-C to exit: {:.2}s", took.as_secs_f64());
    assert_eq!(status.code(), Some(130));
    // Looked at in squeue, not inferred from the exit code.
    assert!(queued(&name).is_empty(), "still queued: {:?}", queued(&name));
    let sweep = sb.sweep_dir();
    assert_no_survivors(&recorded_pids(&sweep));
    let records = journal(&sweep);
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(|r| r["status"] == "interrupted"), "{records:?}");
    // The two that ran ignore SIGINT (forwarded) and SIGTERM: SIGKILL after the grace
    // period; the four that never ran were cancelled in the queue.
    let signals: Vec<&Value> = records.iter().map(|r| &r["signal"]).collect();
    assert_eq!(signals.iter().filter(|s| **s == "SIGKILL").count(), 2, "{records:?}");
    assert_eq!(signals.iter().filter(|s| s.is_null()).count(), 4, "{records:?}");
    assert!(took < Duration::from_secs(5), "the grace period is 1 s: {took:?}");
}

#[test]
fn slurm_job_lines_reach_the_console_while_the_task_runs_and_queued_is_not_running() {
    if !cluster("slurm_job_lines_reach_the_console_while_the_task_runs_and_queued_is_not_running") {
        return;
    }
    use std::io::BufRead;
    let sb = Sandbox::new();
    let cfg = slurm_config(&sb, 2, "");
    let release = sb.path().join("release");
    // The job prints a line, then waits for the test: its line must come before its end.
    let script =
        format!("echo live-line-$ORCHESTRATOR_JOB_NUM; while [ ! -e {} ]; do sleep 0.1; done", release.display());
    let mut child = sb.spawn(&[
        "--json",
        "-c",
        cfg.to_str().unwrap(),
        "-m",
        "task=1",
        &format!("hydra.job.name={}", unique("live")),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    // Should the line never come, the job is let go after a minute (and the test fails).
    let backstop = release.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = std::fs::write(backstop, "");
    });
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let mut kinds = Vec::new();
    for line in stdout.lines() {
        let event: Value = serde_json::from_str(&line.unwrap()).unwrap();
        kinds.push(event["event"].as_str().unwrap().to_owned());
        if event["event"] == "job_started" {
            assert_eq!(event["queued"], true, "submitted, not yet running: {event}");
        }
        if event["event"] == "output" {
            assert!(!release.exists(), "the line came after the job was let go: {event}");
            seen.push(event["line"].as_str().unwrap().to_owned());
            std::fs::write(&release, "").unwrap();
        }
        if event["event"] == "job_finished" {
            assert_eq!(event["status"], "succeeded", "{event}");
        }
    }
    assert!(child.wait().unwrap().success());
    // Once, not again from the end's read-back.
    assert_eq!(seen, ["live-line-0"]);
    // Submitted, then seen running (it runs for as long as the test holds it), then its line.
    let at = |k: &str| kinds.iter().position(|x| x == k).unwrap_or_else(|| panic!("no {k}: {kinds:?}"));
    assert!(at("job_started") < at("job_running") && at("job_running") < at("output"), "{kinds:?}");
}

#[test]
fn slurm_second_ctrl_c_returns_at_once_and_says_what_is_queued() {
    if !cluster("slurm_second_ctrl_c_returns_at_once_and_says_what_is_queued") {
        return;
    }
    let sb = Sandbox::new();
    let name = unique("twice");
    // A long grace period: after the first Ctrl-C the supervisor would wait for it.
    let cfg = sb.write(
        "slurm.yaml",
        "hydra:\n  launcher:\n    n_jobs: 2\n    orchestrator:\n      grace_period: 60s\n      backend: slurm\n",
    );
    let child = sb.spawn(&[
        "-c",
        cfg.to_str().unwrap(),
        "-m",
        "task=1..6",
        &format!("hydra.job.name={name}"),
        "--",
        fixture(),
        "hang-ignore-term",
    ]);
    wait_for(60, "two running tasks", || sb.sweep_dirs().first().is_some_and(|s| recorded_pids(s).len() >= 4));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(took < Duration::from_secs(5), "the second Ctrl-C does not wait: {took:?}");
    assert!(stderr.contains("second signal: not waiting for Slurm"), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    // Then the watchdog cancels what is left, and nothing of the job survives on the node.
    wait_for(60, "the queue to empty", || queued(&name).is_empty());
    assert_no_survivors(&recorded_pids(&sb.sweep_dir()));
}

#[test]
fn slurm_supervisor_killed_with_sigkill_leaves_nothing_queued() {
    if !cluster("slurm_supervisor_killed_with_sigkill_leaves_nothing_queued") {
        return;
    }
    let sb = Sandbox::new();
    let name = unique("kill9");
    let cfg = slurm_config(&sb, 2, "");
    let mut child = sb.spawn(&[
        "-c",
        cfg.to_str().unwrap(),
        "-m",
        "task=1..4",
        &format!("hydra.job.name={name}"),
        "--",
        fixture(),
        "hang-ignore-term",
    ]);
    wait_for(60, "two running tasks", || sb.sweep_dirs().first().is_some_and(|s| recorded_pids(s).len() >= 4));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    // The watchdog cancels the array; Slurm ends the tasks (SIGKILL after its KillWait for
    // these, which ignore SIGTERM).
    wait_for(30, "the array to leave the queue", || queued(&name).is_empty());
    let pids = recorded_pids(&sb.sweep_dir());
    wait_for(15, "the tasks' processes to end", || pids.iter().all(|p| !alive(*p)));
}

#[test]
fn slurm_resume_attaches_to_the_tasks_a_dead_supervisor_left_queued() {
    if !cluster("slurm_resume_attaches_to_the_tasks_a_dead_supervisor_left_queued") {
        return;
    }
    let sb = Sandbox::new();
    let name = unique("adopt");
    let cfg = slurm_config(&sb, 1, "");
    // Each run of a job leaves a line in its own file (a job run twice shows), then waits
    // for the test to let it go.
    let release = sb.path().join("release");
    let script =
        format!("echo ran >> {}/ran-$1; while [ ! -e {} ]; do sleep 0.1; done", sb.path().display(), release.display());
    let args = [
        "-c",
        cfg.to_str().unwrap(),
        "-m",
        "task=1,2,3",
        &format!("hydra.job.name={name}"),
        "--",
        "sh",
        "-c",
        &script,
        "sh",
    ];
    let mut child = sb.spawn(&args);
    wait_for(60, "the first task to run", || sb.path().join("ran-task=1").exists());
    // The supervisor and its watchdog (its child, whichever thread started it) both die (a
    // lost login node): the tasks stay queued.
    let supervisor = child.id().to_string();
    let watchdogs: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
            fields.split_whitespace().nth(1) == Some(supervisor.as_str())
        })
        .collect();
    assert!(!watchdogs.is_empty(), "the supervisor has a watchdog");
    for pid in watchdogs.into_iter().chain([child.id() as i32]) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(queued(&name).len(), 3, "one running, two pending: {:?}", queued(&name));
    let sweep = sb.sweep_dir();
    let resumed = Command::new(orchestrator())
        .current_dir(sb.path())
        .arg("resume")
        .arg(&sweep)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The resumed run follows the tasks; then they are let go.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(&release, "").unwrap();
    let out = resumed.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let records = journal(&sweep);
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(records.iter().all(|r| r["status"] == "succeeded"), "{records:?}");
    for task in 1..=3 {
        let ran = std::fs::read_to_string(sb.path().join(format!("ran-task={task}"))).unwrap();
        assert_eq!(ran.lines().count(), 1, "task={task} ran once, by the array of the first run");
        let log = std::fs::read_to_string(sb.path().join(records[task - 1]["log"].as_str().unwrap())).unwrap();
        assert!(log.contains("followed Slurm task"), "{log}");
    }
    let arrays = std::fs::read_to_string(sweep.join(".slurm/arrays")).unwrap();
    assert_eq!(arrays.lines().count(), 1, "nothing submitted again: {arrays}");
    assert!(queued(&name).is_empty());
}

#[test]
fn slurm_detach_returns_at_once_and_status_follows_the_sweep() {
    if !cluster("slurm_detach_returns_at_once_and_status_follows_the_sweep") {
        return;
    }
    let sb = Sandbox::new();
    let name = unique("detach");
    let cfg = slurm_config(&sb, 2, "");
    let t0 = Instant::now();
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "--detach", "-m", "task=1..4", &format!("hydra.job.name={name}")])
        .args(["--", fixture(), "sleep", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(t0.elapsed() < Duration::from_secs(5), "--detach returns once submitted: {:?}", t0.elapsed());
    assert!(stdout.contains("submitted; sweep dir: multirun/"), "{stdout}");
    let sweep = sb.sweep_dir();
    let status = || {
        let out = Command::new(orchestrator()).arg("status").arg(&sweep).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = status();
    assert!(first.contains(" of 4 succeeded"), "{first}");
    assert!(first.contains("supervisor: running"), "{first}");
    assert!(first.contains("Slurm: ") && !first.contains("nothing in the queue"), "{first}");
    wait_for(60, "the detached sweep to end", || status().contains("supervisor: none running"));
    let last = status();
    assert!(last.contains("jobs: 4 of 4 succeeded"), "{last}");
    assert!(last.contains("Slurm: nothing in the queue"), "{last}");
    assert!(queued(&name).is_empty());
    assert_eq!(journal(&sweep).len(), 4);
}

#[test]
fn slurm_task_over_its_memory_is_out_of_memory() {
    let name_ = "slurm_task_over_its_memory_is_out_of_memory";
    if !cluster(name_) {
        return;
    }
    // Only a cluster that enforces memory can say so (`.ci/slurm/start.sh` with
    // SLURM_CI_MEMKILL=1: OverMemoryKill; task/cgroup clusters say OUT_OF_MEMORY).
    let config = Command::new("scontrol").args(["show", "config"]).output().map(|o| o.stdout).unwrap_or_default();
    let config = String::from_utf8_lossy(&config);
    if !config.contains("OverMemoryKill") && !config.contains("task/cgroup") {
        skip(&format!("{name_}: the cluster does not enforce memory limits"));
        return;
    }
    let sb = Sandbox::new();
    let name = unique("oom");
    let cfg = slurm_config(&sb, 2, "      slurm:\n        mem_gb: 0.05\n");
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "task=1", &format!("hydra.job.name={name}"), "--"])
        .args([fixture(), "hog", "300"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let r = &journal(&sb.sweep_dir())[0];
    assert_eq!(r["status"], "out_of_memory", "{r}");
    assert_eq!(r["signal"], "SIGKILL", "{r}");
    assert!(r["exit_code"].is_null(), "{r}");
    assert!(stderr.contains("out of memory"), "{stderr}");
    assert!(queued(&name).is_empty());
}

#[test]
fn slurm_halt_soon_cancels_the_queued_tasks_after_a_failure() {
    if !cluster("slurm_halt_soon_cancels_the_queued_tasks_after_a_failure") {
        return;
    }
    let sb = Sandbox::new();
    let name = unique("halt");
    let cfg = slurm_config(&sb, 1, "      halt: soon\n");
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "task=1..5", &format!("hydra.job.name={name}"), "--"])
        // The others take a while: however slow the supervisor is to see the failure (its
        // squeue polls back off to 2 s, more on a loaded machine), at most one of them can
        // have started by then (the throttle is 1).
        .args(["/bin/bash", "-c", "case \"$1\" in task=1) exit 3;; *) sleep 5;; esac", "job"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let records = journal(&sb.sweep_dir());
    let status: Vec<&str> = records.iter().map(|r| r["status"].as_str().unwrap()).collect();
    // One at a time: the first fails; those still queued are dropped, never started. One
    // may have started meanwhile: it is not killed (halt: soon) but runs to its end.
    assert_eq!(status[0], "failed", "{records:?}");
    assert!(status.iter().filter(|s| **s == "halted").count() >= 3, "{status:?}");
    assert!(status[1..].iter().all(|s| ["halted", "succeeded"].contains(s)), "{status:?}");
    for r in records.iter().filter(|r| r["status"] == "halted") {
        assert!(r["signal"].is_null() && r["exit_code"].is_null(), "{r}");
        // Its program never ran: no line in its log, no job dir files written.
        assert_eq!((r["stdout_bytes"].as_u64(), r["stderr_bytes"].as_u64()), (Some(0), Some(0)), "{r}");
    }
    assert!(queued(&name).is_empty());
}

#[test]
fn slurm_halt_soon_withdraws_a_requeued_task_waiting_to_run_again() {
    if !cluster("slurm_halt_soon_withdraws_a_requeued_task_waiting_to_run_again") {
        return;
    }
    // Job 0 runs until Slurm requeues it (as a preemption or a node failure would): it then
    // waits two minutes in the queue (Slurm's requeue delay). Job 1 runs meanwhile and
    // fails: under halt: soon the requeued task, which has started once, is withdrawn all
    // the same, and the run ends now rather than after job 0's second run.
    let sb = Sandbox::new();
    let name = unique("requeue");
    let cfg = slurm_config(&sb, 1, "      halt: soon\n");
    let script = "case \"$1\" in task=1) sleep 60;; *) exit 3;; esac";
    let mut child = sb.spawn(&[
        "-c",
        cfg.to_str().unwrap(),
        "-m",
        "task=1,2",
        &format!("hydra.job.name={name}"),
        "--",
        "/bin/bash",
        "-c",
        script,
        "job",
    ]);
    // Job 0's task, `<array>_0`, while squeue says it runs.
    let running = || {
        queued(&name).iter().find_map(|l| l.strip_suffix("|RUNNING").filter(|t| t.ends_with("_0")).map(str::to_string))
    };
    // Running, and its program started (the task runner has claimed its start): a requeue
    // before that would leave a task that never ran, withdrawn as any queued one.
    let claimed = |sb: &Sandbox| {
        sb.sweep_dirs()
            .first()
            .is_some_and(|d| std::fs::read_to_string(d.join(".slurm/b0/0.claim")).is_ok_and(|c| c == "started"))
    };
    wait_for(60, "job 0 running", || running().is_some() && claimed(&sb));
    let task = running().unwrap();
    let requeued = Command::new("scontrol").args(["requeue", &task]).output().unwrap();
    assert!(requeued.status.success(), "{}", String::from_utf8_lossy(&requeued.stderr));
    let t0 = Instant::now();
    let status = child.wait().unwrap();
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(1));
    assert!(took < Duration::from_secs(60), "the run waited for the requeued task: {took:?}");
    let records = journal(&sb.sweep_dir());
    let status: Vec<&str> = records.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["halted", "failed"], "{records:?}");
    assert!(queued(&name).is_empty(), "still queued: {:?}", queued(&name));
    // Its second start was claimed as withdrawn: had it run, it would not have run the job.
    let claims: Vec<String> = std::fs::read_dir(sb.sweep_dir().join(".slurm/b0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".claim"))
        .collect();
    assert!(claims.contains(&"0.r1.claim".to_string()), "{claims:?}");
    let claim = std::fs::read_to_string(sb.sweep_dir().join(".slurm/b0/0.r1.claim")).unwrap();
    assert_eq!(claim, "withdrawn");
}

#[test]
fn slurm_rejected_submission_exits_2_with_slurms_message_and_queues_nothing() {
    if !cluster("slurm_rejected_submission_exits_2_with_slurms_message_and_queues_nothing") {
        return;
    }
    for (setting, said) in [
        ("partition: nosuch", "Invalid partition name specified"),
        ("mem_gb: 100000", "Requested node configuration is not available"),
    ] {
        let sb = Sandbox::new();
        let name = unique("rej");
        let cfg = slurm_config(&sb, 2, &format!("      slurm:\n        {setting}\n"));
        let out = sb
            .cmd()
            .args(["-c", cfg.to_str().unwrap(), "-m", "task=1..3", &format!("hydra.job.name={name}"), "--"])
            .args([fixture(), "echo"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{setting}: {stderr}");
        assert!(stderr.contains("Slurm refused the submission") && stderr.contains(said), "{setting}: {stderr}");
        assert!(sb.nothing_created(), "{setting}: a sweep dir was made");
        assert!(queued(&name).is_empty());
    }
}

/// Slurm's time limits are whole minutes, checked on a ~30 s timer: this takes 1-2 minutes.
#[test]
#[ignore = "slow (1-2 min: Slurm's minute-granular time limit); CI runs it with --ignored"]
fn slurm_task_past_its_one_minute_limit_is_timed_out() {
    if !cluster("slurm_task_past_its_one_minute_limit_is_timed_out") {
        return;
    }
    let sb = Sandbox::new();
    let name = unique("slow");
    let cfg = slurm_config(&sb, 2, "");
    let out = sb
        .cmd()
        .timeout(Duration::from_secs(240))
        .args(["-c", cfg.to_str().unwrap(), "-m", "task=1,2", "hydra.launcher.timeout=40s"])
        .args([&format!("hydra.job.name={name}"), "--", fixture(), "sleep", "300"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("timeout 40s becomes Slurm's --time=1"), "{stderr}");
    let records = journal(&sb.sweep_dir());
    for r in &records {
        assert_eq!(r["status"], "timed_out", "{r}");
        assert_eq!(r["timed_out"], true);
        let d = r["duration_s"].as_f64().unwrap();
        assert!((55.0..130.0).contains(&d), "Slurm ends it 60-90 s in: {r}");
    }
    assert!(queued(&name).is_empty());
}

#[test]
#[ignore = "slow (1-2 min: Slurm's minute-granular time limit); CI runs it with --ignored"]
fn slurm_task_past_its_limit_is_requeued_up_to_max_num_timeout() {
    if !cluster("slurm_task_past_its_limit_is_requeued_up_to_max_num_timeout") {
        return;
    }
    // Each job sleeps past its limit on its first attempt; requeued once, job 0 then succeeds
    // (as a job that resumes from its checkpoint would) and job 1 fails: a failure is no
    // reason to requeue.
    let sb = Sandbox::new();
    let name = unique("requeue");
    let cfg = slurm_config(&sb, 2, "      slurm:\n        max_num_timeout: 1\n");
    let script =
        r#"test -n "$ORCHESTRATOR_ATTEMPT" || exec sleep 300; echo "attempt $ORCHESTRATOR_ATTEMPT"; exit "$1""#;
    let out = sb
        .cmd()
        .timeout(Duration::from_secs(300))
        .args(["-c", cfg.to_str().unwrap(), "-m", "code=0,3", "hydra.launcher.timeout=40s"])
        .args([&format!("hydra.job.name={name}"), "--", "sh", "-c", script, "sh", "{code}"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let records = journal(&sb.sweep_dir());
    assert_eq!(records[0]["status"], "succeeded", "{records:?}");
    assert_eq!(records[1]["status"], "failed", "{records:?}");
    for r in &records {
        assert_eq!(r["attempts"], 2, "{r}");
        assert_eq!(r["earlier_attempts"][0]["status"], "timed_out", "{r}");
        let log = std::fs::read_to_string(sb.path().join(r["log"].as_str().unwrap())).unwrap();
        assert!(log.contains("requeued (1 of max_num_timeout 1)"), "{log}");
        assert!(log.contains("attempt 2"), "{log}");
    }
    assert!(queued(&name).is_empty());
}

#[test]
fn slurm_n_jobs_minus_one_says_what_throttle_it_became() {
    if !cluster("slurm_n_jobs_minus_one_says_what_throttle_it_became") {
        return;
    }
    let sb = Sandbox::new();
    let name = unique("throttle");
    let cfg = slurm_config(&sb, 2, "");
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "task=1,2,3", "hydra.launcher.n_jobs=-1"])
        .args([&format!("hydra.job.name={name}"), "--", fixture(), "echo"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(
        stderr.contains(&format!("n_jobs -1 is this machine's CPUs: at most {cpus} tasks of the array run at once")),
        "{stderr}"
    );
    assert_eq!(journal(&sb.sweep_dir()).len(), 3);
    assert!(queued(&name).is_empty());
}

#[test]
fn slurm_settings_are_checked_like_the_others() {
    // No cluster needed: the config is refused before Slurm is asked anything.
    let sb = Sandbox::new();
    let cfg = slurm_config(&sb, 2, "      slurm:\n        partiton: debug\n");
    let out = sb.cmd().args(["-c", cfg.to_str().unwrap(), "-m", "task=1", "--", fixture(), "echo"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown key `partiton` in `hydra.launcher.orchestrator.slurm`"), "{stderr}");
    assert!(stderr.contains("did you mean `partition`?"), "{stderr}");
    let out = sb
        .cmd()
        .args(["-m", "task=1", "hydra.launcher.orchestrator.backend=slrum", "--", fixture(), "echo"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("did you mean `slurm`?"), "{stderr}");
    // Admission is about this machine: refused with Slurm, wherever the backend was chosen.
    let cfg = slurm_config(&sb, 2, "");
    for (args, key) in [
        (vec!["-c", cfg.to_str().unwrap(), "hydra.launcher.orchestrator.start_delay=1s"], "start_delay"),
        (vec!["--backend", "slurm", "hydra.launcher.orchestrator.max_load=4"], "max_load"),
    ] {
        let out = sb.cmd().args(&args).args(["-m", "task=1", "--", fixture(), "echo"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("{key} does not apply with backend: slurm")), "{stderr}");
        assert!(stderr.contains("n_jobs (the array's throttle)"), "{stderr}");
    }
    assert!(sb.nothing_created());
}

#[test]
fn slurm_without_sbatch_is_a_usage_error_and_creates_nothing() {
    // No cluster needed: PATH without Slurm's tools.
    let sb = Sandbox::new();
    let empty = sb.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let out = sb
        .cmd()
        .env("PATH", &empty)
        .args(["--backend", "slurm", "-m", "task=1,2", "--", fixture(), "echo"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Slurm's `sbatch` was not found in PATH"), "{stderr}");
    assert!(sb.nothing_created());
}
