//! Process hygiene: timeouts, escaped grandchildren, signals. Every test looks for
//! surviving PIDs; none trusts exit codes alone.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::*;

fn timeout_config(sb: &Sandbox) -> std::path::PathBuf {
    sb.write(
        "c.yaml",
        "hydra:\n  launcher:\n    _target_: hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher\n    n_jobs: 2\n    timeout: 1\n    orchestrator:\n      grace_period: 300ms\n",
    )
}

#[test]
fn timeout_ends_a_job_that_ignores_sigterm_and_its_grandchild() {
    let sb = Sandbox::new();
    let cfg = timeout_config(&sb);
    let out = sb
        .cmd()
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "-m",
            "--quiet",
            "+mode=hang-ignore-term,sleep",
            "--",
            fixture(),
            "{mode}",
            "0.2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let sweep = sb.sweep_dir();
    let pids = recorded_pids(&sweep);
    assert_eq!(pids.len(), 2, "leader and grandchild recorded");
    assert_no_survivors(&pids);
    let records = journal(&sweep);
    assert_eq!(records[0]["status"], "timed_out");
    assert_eq!(records[0]["timed_out"], true);
    assert_eq!(records[0]["signal"], "SIGKILL", "it ignored SIGTERM, so SIGKILL after the grace period");
    assert_eq!(records[1]["status"], "succeeded", "the other job goes on");
    let log = std::fs::read_to_string(sweep.join("0/fixture.log")).unwrap();
    assert!(log.contains("timed out after 1s, ended by SIGKILL"), "{log}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("#0 : +mode=hang-ignore-term -> timed out after 1s"), "{stderr}");
}

#[test]
fn timeout_ends_a_setsid_grandchild_that_left_the_group() {
    let sb = Sandbox::new();
    let cfg = timeout_config(&sb);
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "task=1", "--", fixture(), "setsid-hang"])
        .assert()
        .code(1);
    let sweep = sb.sweep_dir();
    let pids = recorded_pids(&sweep);
    assert_eq!(pids.len(), 3, "leader, setsid child and its child recorded");
    assert_no_survivors(&pids);
    assert_eq!(journal(&sweep)[0]["status"], "timed_out");
}

#[test]
fn a_job_that_daemonises_and_exits_leaves_nothing_behind() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "task=1", "--", fixture(), "daemonize"])
        .assert()
        .success();
    let sweep = sb.sweep_dir();
    let pids = recorded_pids(&sweep);
    assert_eq!(pids.len(), 3);
    assert_no_survivors(&pids);
    let r = &journal(&sweep)[0];
    assert_eq!(r["status"], "succeeded");
    assert!(r["leftover_processes"].as_u64().unwrap() >= 2, "{r}");
}

fn interrupt_with(sig: Signal, expected_code: i32) {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    // Job 0 ignores SIGTERM/SIGINT (needs SIGKILL), job 1 has a grandchild; 6 jobs queued.
    let child = sb.spawn(&[
        "-c",
        cfg.to_str().unwrap(),
        "-m",
        "+mode=hang-ignore-term,setsid-hang,sleep",
        "x=1,2",
        "--",
        fixture(),
        "{mode}",
        "30",
    ]);
    let orch_pid = child.id();
    wait_for(20, "both running jobs to record their pids", || {
        sb.sweep_dirs().first().map(|s| recorded_pids(s).len() >= 4).unwrap_or(false)
    });
    let t0 = Instant::now();
    kill(Pid::from_raw(orch_pid as i32), sig).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(expected_code), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    let sweep = sb.sweep_dir();
    assert_no_survivors(&recorded_pids(&sweep));
    assert!(!alive(orch_pid));
    let records = journal(&sweep);
    assert_eq!(records.len(), 2, "only the two started jobs are recorded");
    for r in &records {
        assert_eq!(r["status"], "interrupted", "{r}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("4 not started"), "{stderr}");
}

#[test]
fn sigint_forwards_kills_and_exits_130() {
    interrupt_with(Signal::SIGINT, 130);
}

#[test]
fn sigterm_forwards_kills_and_exits_143() {
    interrupt_with(Signal::SIGTERM, 143);
}

/// The terminal or ssh session went away: stopped as by SIGTERM, nothing left behind.
#[test]
fn sighup_forwards_kills_and_exits_129() {
    interrupt_with(Signal::SIGHUP, 129);
}

#[test]
fn sigquit_forwards_kills_and_exits_131() {
    interrupt_with(Signal::SIGQUIT, 131);
}

/// Run `task=1,2` of `job` (the program and its arguments), SIGKILL the supervisor once the
/// jobs have written `pids` process ids into their dirs, and check that none survives.
/// Returns the sandbox and its sweep dir.
fn kill_the_supervisor_of(job: &[&str], pids: usize) -> (Sandbox, std::path::PathBuf) {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let mut args = vec!["-c", cfg.to_str().unwrap(), "-m", "--quiet", "task=1,2", "--"];
    args.extend_from_slice(job);
    let mut child = sb.spawn(&args);
    wait_for(20, "jobs to start", || sb.sweep_dirs().first().map(|s| recorded_pids(s).len() >= pids).unwrap_or(false));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    let sweep = sb.sweep_dir();
    let recorded = recorded_pids(&sweep);
    assert_eq!(recorded.len(), pids, "{recorded:?}");
    assert_no_survivors(&recorded);
    (sb, sweep)
}

#[test]
fn children_die_with_a_killed_supervisor() {
    // The leaders die by the parent-death signal; their forked children, which ignore
    // SIGTERM and whose parent was the leader, by the watchdog.
    let (_sb, sweep) = kill_the_supervisor_of(&[fixture(), "hang-ignore-term"], 4);
    // The journal stays valid JSON lines even though the supervisor died mid-run.
    let text = std::fs::read_to_string(sweep.join("jobs.jsonl")).unwrap();
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

#[test]
fn escaped_sessions_die_with_a_killed_supervisor() {
    // Per job: the leader, a child that called setsid, and its child; all ignore SIGTERM.
    kill_the_supervisor_of(&[fixture(), "setsid-hang"], 6);
}

#[test]
fn a_job_member_without_the_marker_dies_with_a_killed_supervisor() {
    // `env -i` clears the marker: that process is found through its group, which a marked
    // sibling is still in.
    let script = r#"trap '' TERM; env -i sleep 300 & echo $! >> "$ORCHESTRATOR_JOB_DIR/pids"; sleep 301 & echo $! >> "$ORCHESTRATOR_JOB_DIR/pids"; wait"#;
    kill_the_supervisor_of(&["sh", "-c", script], 4);
}

#[test]
fn a_second_ctrl_c_kills_at_once() {
    let sb = Sandbox::new();
    // A long grace period: only the second signal can make this quick.
    let cfg = sb.write("c.yaml", "hydra:\n  launcher:\n    n_jobs: 2\n    orchestrator:\n      grace_period: 60s\n");
    let child =
        sb.spawn(&["-c", cfg.to_str().unwrap(), "-m", "--quiet", "task=1,2", "--", fixture(), "hang-ignore-term"]);
    let pid = Pid::from_raw(child.id() as i32);
    wait_for(20, "jobs to start", || sb.sweep_dirs().first().is_some_and(|s| recorded_pids(s).len() >= 4));
    let t0 = Instant::now();
    kill(pid, Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    kill(pid, Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert_no_survivors(&recorded_pids(&sb.sweep_dir()));
    assert!(journal(&sb.sweep_dir()).iter().all(|r| r["signal"] == "SIGKILL"));
}

#[test]
fn an_escaped_daemon_without_the_marker_dies_with_a_killed_supervisor_where_cgroups_are() {
    // `setsid -f env -i`: neither its group nor a marker leads to it; only its job's cgroup
    // does, which the watchdog kills. Without cgroups this is the documented limit.
    let probe = Sandbox::new();
    let out = probe.cmd().args(["-m", "--quiet", "task=1", "--", "true"]).output().unwrap();
    assert!(out.status.success());
    if journal(&probe.sweep_dir())[0]["isolation"] != "cgroup" {
        skip(
            "an_escaped_daemon_without_the_marker_dies_with_a_killed_supervisor_where_cgroups_are: no cgroup here (not root, or ORCHESTRATOR_CGROUPS=0)",
        );
        return;
    }
    let script = r#"setsid -f env -i sh -c 'echo $$ >> "$0/pids"; exec sleep 300' "$ORCHESTRATOR_JOB_DIR" </dev/null >/dev/null 2>&1; sleep 301 & echo $! >> "$ORCHESTRATOR_JOB_DIR/pids"; wait"#;
    kill_the_supervisor_of(&["sh", "-c", script], 4);
}

/// Whether jobs here can get a memory cgroup (with a limit, their records have
/// `mem_peak_kib`); prints the skip of `name` if not.
fn memory_cgroups(name: &str) -> bool {
    let probe = Sandbox::new();
    let out = probe.cmd().args(["-m", "--quiet", "task=1", "--", "true"]).output().unwrap();
    assert!(out.status.success());
    assert!(journal(&probe.sweep_dir())[0].get("mem_peak_kib").is_none(), "no memory cgroup without a limit");
    let probe = Sandbox::new();
    let limited = probe
        .cmd()
        .args(["-m", "--quiet", "task=1", "+hydra.launcher.orchestrator.mem_gb=1", "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&limited.stderr);
    if limited.status.code() == Some(2) && stderr.contains("cannot limit each job's memory") {
        skip(&format!(
            "{name}: no memory cgroup here (not root, no memory controller for us in v1 or v2, or ORCHESTRATOR_CGROUPS=0)"
        ));
        return false;
    }
    assert!(limited.status.success(), "{stderr}");
    // A limit it took means a memory cgroup, which measures the peak.
    assert!(journal(&probe.sweep_dir())[0]["mem_peak_kib"].as_u64().is_some(), "{stderr}");
    true
}

#[test]
fn the_peak_is_each_job_s_own_not_the_page_cache_an_earlier_job_of_its_slot_left() {
    if !memory_cgroups("the_peak_is_each_job_s_own_not_the_page_cache_an_earlier_job_of_its_slot_left") {
        return;
    }
    let sb = Sandbox::new();
    // One slot: task=1 leaves 64 MiB of page cache charged to it, task=2 does nothing.
    let script =
        r#"[ "$1" = task=1 ] && dd if=/dev/zero of="$ORCHESTRATOR_JOB_DIR/f" bs=1M count=64 status=none; true"#;
    let out = sb
        .cmd()
        .args([
            "-m",
            "task=1,2",
            "hydra.launcher.n_jobs=1",
            "+hydra.launcher.orchestrator.mem_gb=1",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = journal(&sb.sweep_dir());
    let peak = |n: usize| records[n]["mem_peak_kib"].as_u64().unwrap();
    assert!(peak(0) >= 60 << 10, "the page cache it wrote is its own: {}", peak(0));
    assert!(peak(1) < 16 << 10, "not the earlier job's: {}", peak(1));
}

#[test]
fn a_job_over_its_memory_limit_is_out_of_memory_and_the_others_run_on() {
    if !memory_cgroups("a_job_over_its_memory_limit_is_out_of_memory_and_the_others_run_on") {
        return;
    }
    let sb = Sandbox::new();
    // task=1 stays under the limit (100 MiB), task=2 goes over it, and task=3's child
    // goes over it while the job's own process lives on and fails.
    let script = r#"case "$1" in
        task=1) exec "$0" hog 20 0 ;;
        task=2) exec "$0" hog 300 ;;
        *) "$0" hog 300; echo "child ended $?"; exit 3 ;;
    esac"#;
    let mem_gb = format!("+hydra.launcher.orchestrator.mem_gb={}", 100.0 / 1024.0);
    let out = sb
        .cmd()
        .args(["-m", "--verbose", "task=1,2,3", &mem_gb, "--", "sh", "-c", script, fixture()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("memory measured and limited to 100 MiB a job"), "{stderr}");
    let records = journal(&sb.sweep_dir());
    let by_num = |n: u64| records.iter().find(|r| r["num"] == n).unwrap();
    let peak = |n: u64| by_num(n)["mem_peak_kib"].as_u64().unwrap();
    assert_eq!(by_num(0)["status"], "succeeded", "{records:?}");
    assert!((20 << 10..100 << 10).contains(&peak(0)), "its 20 MiB, the whole tree's: {}", peak(0));
    assert_eq!(by_num(1)["status"], "out_of_memory", "{records:?}");
    assert_eq!(by_num(1)["signal"], "SIGKILL");
    assert!(peak(1) >= 99 << 10, "up to the limit: {}", peak(1));
    assert_eq!(by_num(2)["status"], "failed", "{records:?}");
    assert_eq!(by_num(2)["exit_code"], 3);
    let log = |n: u64| std::fs::read_to_string(sb.path().join(by_num(n)["log"].as_str().unwrap())).unwrap();
    assert!(
        log(1).contains("the kernel killed 1 process(es) of the job for memory (its limit is 100 MiB)"),
        "{}",
        log(1)
    );
    assert!(log(1).contains("out of memory, ended by SIGKILL"), "{}", log(1));
    assert!(log(2).contains("child ended 137") && log(2).contains("the kernel killed 1 process(es)"), "{}", log(2));
    assert!(!log(0).contains("for memory"), "{}", log(0));
    // The run's memory cgroups are gone with it.
    let dir = stderr.split(" a job in ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap();
    assert!(!std::path::Path::new(dir).exists(), "{dir} is left");
}

/// Where no v1 hierarchy has the memory controller, cgroup v2 is looked at: here, in a mount
/// namespace of its own without the v1 `memory` mount, v2 has no memory controller either
/// (the kernel binds it to v1 on these machines), and the refusal names the cgroup and why.
#[test]
fn a_memory_limit_on_cgroup_v2_without_its_memory_controller_is_refused_naming_the_cgroup() {
    const NAME: &str = "a_memory_limit_on_cgroup_v2_without_its_memory_controller_is_refused_naming_the_cgroup";
    let Some(v1_memory) = v1_mount("memory") else {
        return skip(&format!("{NAME}: no v1 memory hierarchy to hide (a pure v2 system runs the memory tests above)"));
    };
    let private = std::process::Command::new("unshare").args(["-m", "true"]).output();
    if !private.is_ok_and(|o| o.status.success()) {
        return skip(&format!("{NAME}: cannot make a mount namespace (unshare -m: not root?)"));
    }
    let sb = Sandbox::new();
    let out = std::process::Command::new("unshare")
        .current_dir(sb.path())
        // Also in the CI step that turns cgroups off for the others.
        .env_remove("ORCHESTRATOR_CGROUPS")
        .args(["-m", "sh", "-c", r#"umount "$0" && exec "$@""#])
        .arg(&v1_memory)
        .args([orchestrator(), "run"])
        .args(["-m", "task=1,2", "+hydra.launcher.orchestrator.mem_gb=1", "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // Our cgroup (the child's, in the same mount namespace's view of cgroup2).
    let v2 = cgroup2_mount().unwrap();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim_start_matches('/');
    let cgroup = if own.is_empty() { v2 } else { v2.join(own) };
    let cgroup = cgroup.display();
    let (why, help) = stderr.split_once("= help:").unwrap_or((&stderr, ""));
    assert!(why.contains("cannot limit each job's memory to 1024 MiB (mem_gb)"), "{stderr}");
    assert!(
        why.contains(&format!("the memory controller is not available to {cgroup} (not in its cgroup.controllers")),
        "names the cgroup and says why: {stderr}"
    );
    assert!(help.contains("systemd-run --user --scope -p Delegate=yes"), "says what would do: {stderr}");
    assert!(sb.sweep_dirs().is_empty(), "nothing created");
    assert!(!sb.path().join("multirun").exists());
}

/// A job may make cgroups of its own inside its slot's (a nested orchestrator does) and move
/// a daemon there, out of the slot's `cgroup.procs` and with its environment cleared: it is
/// still the job's leftover, counted and killed at the job's end, and the slot serves the next
/// job.
#[test]
fn a_daemon_moved_into_a_cgroup_of_its_job_s_own_is_still_its_leftover() {
    let sb = Sandbox::new();
    let probe = sb.cmd().args(["-m", "--quiet", "task=1", "hydra.sweep.dir=probe", "--", "true"]).output().unwrap();
    assert!(probe.status.success());
    if journal(&sb.path().join("probe"))[0]["isolation"] != "cgroup" {
        return skip("a_daemon_moved_into_a_cgroup_of_its_job_s_own_is_still_its_leftover: no cgroup here");
    }
    let tag = format!("orchsub{}", std::process::id());
    let script = format!(
        r#"#!/bin/bash
cg=$(awk -F'::' '/^0::/ {{print $2}}' /proc/self/cgroup)
v2=$(awk '$9 == "cgroup2" {{print $5; exit}}' /proc/self/mountinfo)
if [ "$1" = "task=1" ]; then
    mkdir -p "$v2$cg/own/deeper"
    setsid -f env -i bash -c "echo \$\$ > $v2$cg/own/deeper/cgroup.procs; exec -a {tag} sleep 60" </dev/null >/dev/null 2>&1
    for _ in $(seq 100); do [ -s "$v2$cg/own/deeper/cgroup.procs" ] && break; sleep 0.01; done
    echo "moved: $(cat "$v2$cg/own/deeper/cgroup.procs")"
else
    echo "alive: $(pgrep -fc '^{tag}' || true) in $cg, cgroups below: $(find "$v2$cg" -mindepth 1 -type d | wc -l)"
fi
"#
    );
    sb.write_script("nest.sh", &script);
    let out = sb
        .cmd()
        .args(["-m", "--quiet", "task=1,2", "hydra.launcher.n_jobs=1", "hydra.sweep.dir=d", "--", "./nest.sh"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("cannot remove the cgroup"), "{stderr}");
    let records = journal(&sb.path().join("d"));
    let log = |n: u64| std::fs::read_to_string(sb.path().join(format!("d/{n}/nest.log"))).unwrap();
    assert!(log(0).contains("moved: "), "{}", log(0));
    assert_eq!(records.iter().find(|r| r["num"] == 0).unwrap()["leftover_processes"], 1, "{records:?}");
    assert!(log(1).contains("alive: 0 in /"), "killed at its job's end: {}", log(1));
    assert!(log(1).contains("/slot-0, "), "the same slot's cgroup served the next job: {}", log(1));
    assert!(log(1).contains("cgroups below: 0"), "the job's own cgroups went with it: {}", log(1));
    let survivors = std::process::Command::new("pgrep").args(["-fc", &format!("^{tag}")]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&survivors.stdout).trim(), "0", "outlived the sweep");
}

/// A run with a memory limit on cgroup v2 moves the processes of its cgroup into a leaf
/// (`orchestrator-<run>-supervisor`) and back at its end. If it died with its watchdog, the
/// next run started from there (by the Hydra app left in the leaf) puts them back first and
/// makes its cgroups beside the leaf's, not in it.
#[test]
fn a_supervisor_leaf_left_by_a_dead_run_is_put_back_by_the_next_run() {
    const NAME: &str = "a_supervisor_leaf_left_by_a_dead_run_is_put_back_by_the_next_run";
    let Some(v2) = cgroup2_mount() else {
        return skip(&format!("{NAME}: no cgroup2 hierarchy"));
    };
    let name = format!("orchestrator-test-leaf-{}", std::process::id());
    let home = v2.join(&name);
    if std::fs::create_dir(&home).is_err() {
        return skip(&format!("{NAME}: cannot make a cgroup (not root?)"));
    }
    /// Removes the test's cgroups, the test passed or not.
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            for dir in [self.0.join("orchestrator-4194304-1-supervisor"), self.0.clone()] {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
    let _remove = Remove(home.clone());
    // A leaf named for a pid that is gone (the largest pid_max).
    let leaf = home.join("orchestrator-4194304-1-supervisor");
    std::fs::create_dir(&leaf).unwrap();
    let sb = Sandbox::new();
    let out = std::process::Command::new("sh")
        .current_dir(sb.path())
        .env_remove("ORCHESTRATOR_CGROUPS")
        .args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#])
        .arg(&leaf)
        .args([orchestrator(), "run", "-m", "--quiet", "task=1,2", "--", "sh", "-c", "grep 0:: /proc/self/cgroup"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!leaf.exists(), "the dead run's leaf is gone");
    for r in journal(&sb.sweep_dir()) {
        let log = std::fs::read_to_string(sb.path().join(r["log"].as_str().unwrap())).unwrap();
        let line = log.lines().find(|l| l.contains("[stdout] 0::")).unwrap_or_default();
        assert!(line.contains(&format!("0::/{name}/orchestrator-")), "made beside the leaf: {log}");
        assert!(!line.contains("-supervisor/"), "{log}");
    }
}

#[test]
fn a_memory_limit_without_a_memory_cgroup_is_refused_before_anything_starts() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .env("ORCHESTRATOR_CGROUPS", "0")
        .args(["-m", "task=1,2", "+hydra.launcher.orchestrator.mem_gb=1", "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot limit each job's memory to 1024 MiB (mem_gb)"), "{stderr}");
    assert!(stderr.contains("ORCHESTRATOR_CGROUPS=0"), "says why: {stderr}");
    assert!(sb.sweep_dirs().is_empty(), "nothing created");
    assert!(!sb.path().join("multirun").exists());
}
