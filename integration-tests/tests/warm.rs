//! Warm Python jobs (`--warm`): each is forked from a zygote, is still its own process, and
//! sees and leaves exactly what a fresh `python script.py` would. Every item of the warm
//! child's set-up list is a test here, most of them as a comparison with the same job run
//! fresh.
//!
//! Needs python3 (numpy for the numpy cases, as `.ci/run` installs it); run with
//! `cargo test -- --ignored`.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::common::*;

/// The interpreter itself (not a shim, which would run for a fresh job and not for a warm
/// one and change its environment).
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 (the warm tests need it)");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn has_numpy(py: &str) -> bool {
    let ok = std::process::Command::new(py).args(["-c", "import numpy"]).status().is_ok_and(|s| s.success());
    if !ok && std::env::var_os("ORCHESTRATOR_REQUIRE_NUMPY").is_some() {
        panic!("numpy is required (ORCHESTRATOR_REQUIRE_NUMPY) but {py} cannot import it");
    }
    ok
}

/// Prints, as one JSON line, everything a job's process set-up decides.
const PROBE: &str = r#"
import json, os, random, signal, sys
def status(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return line.split()[1]
h = signal.getsignal(signal.SIGINT)
umask = os.umask(0o22)
os.umask(umask)
fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
print(json.dumps({
    "argv": sys.argv, "path0": sys.path[0], "name": __name__, "file": __file__,
    "pid": os.getpid(), "pgid": os.getpgid(0), "ppid": os.getppid(), "fds": fds,
    "sigint": getattr(h, "__name__", str(h)),
    "handlers": [str(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGPIPE, signal.SIGALRM)],
    "SigBlk": status("SigBlk"), "SigIgn": status("SigIgn"), "SigCgt": status("SigCgt"),
    "timer": signal.getitimer(signal.ITIMER_REAL),
    "stdout": [sys.stdout.line_buffering, sys.stdout.write_through, sys.stdout.encoding, sys.stdout.errors, type(sys.stdout.buffer).__name__],
    "stderr": [sys.stderr.line_buffering, sys.stderr.write_through, sys.stderr.encoding, sys.stderr.errors],
    "stdin": [sys.stdin.encoding, os.readlink("/proc/self/fd/0")],
    "env": {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_JOB_KEY"},
    "cwd": os.getcwd(), "umask": umask, "random": random.random(), "hash": hash("orchestrator"),
    "main_is_module": sys.modules["__main__"].__dict__ is globals(),
}, sort_keys=True))
"#;

struct Sweep {
    status: std::process::ExitStatus,
    stderr: String,
    dir: PathBuf,
    records: Vec<Value>,
    /// Each job's log lines without their time stamps (read at once: the next sweep in the
    /// same sandbox replaces the tree).
    logs: Vec<Vec<String>>,
    /// Every file and dir of the sweep dir.
    tree: Vec<String>,
    supervisor: u32,
}

impl Sweep {
    /// Job `num`'s log lines without their time stamps.
    fn log(&self, num: usize) -> Vec<String> {
        self.logs[num].clone()
    }

    /// The JSON line job `num` printed.
    fn probe(&self, num: usize) -> Value {
        let line = self
            .log(num)
            .into_iter()
            .find_map(|l| l.strip_prefix("stdout] {").map(|rest| format!("{{{rest}")))
            .unwrap_or_else(|| panic!("job {num} printed no probe line: {:?}\n{}", self.log(num), self.stderr));
        serde_json::from_str(&line).unwrap()
    }

    fn warm(&self) -> Vec<bool> {
        self.records.iter().map(|r| r["warm"] == Value::Bool(true)).collect()
    }
}

/// Run a sweep in `sb` (a fresh `multirun` dir each time) and wait for it.
fn sweep(sb: &Sandbox, warm: bool, args: &[&str], env: &[(&str, &str)]) -> Sweep {
    let _ = std::fs::remove_dir_all(sb.path().join("multirun"));
    let mut cmd = std::process::Command::new(orchestrator());
    cmd.current_dir(sb.path()).arg("run").arg("-q").arg("--no-progress");
    if warm {
        cmd.arg("--warm");
    }
    cmd.args(args).env_remove("PYTHONUNBUFFERED").env_remove("PYTHONHASHSEED");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let supervisor = child.id();
    let out = child.wait_with_output().unwrap();
    let dir = sb.sweep_dir();
    let records = if dir.join("jobs.jsonl").exists() { journal(&dir) } else { Vec::new() };
    let logs = records
        .iter()
        .map(|rec| {
            let text = std::fs::read_to_string(sb.path().join(rec["log"].as_str().unwrap())).unwrap_or_default();
            text.lines().map(|l| l.split_once("][").map_or(l, |(_, rest)| rest).to_owned()).collect()
        })
        .collect();
    Sweep {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        tree: tree(&dir),
        dir,
        records,
        logs,
        supervisor,
    }
}

const TWO_SLOTS: &str = "hydra.launcher.params.joblib.n_jobs=2";

/// Everything the probe of `sweep`'s job `num` reports that must be the same warm and
/// fresh (the sweep dir, whose name is the time, as `SWEEP`).
fn comparable(sweep: &Sweep, num: usize) -> Value {
    let mut probe = sweep.probe(num);
    let map = probe.as_object_mut().unwrap();
    for volatile in ["pid", "pgid", "ppid", "random", "hash"] {
        map.remove(volatile);
    }
    let text = probe.to_string().replace(sweep.dir.to_str().unwrap(), "SWEEP");
    serde_json::from_str(&text).unwrap()
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn warm_jobs_are_forked_their_own_process_group_and_the_supervisor_s_children() {
    let sb = Sandbox::new();
    sb.write("probe.py", PROBE);
    let py = python();
    let s = sweep(&sb, true, &["--multirun", "task=1,2,3,4", TWO_SLOTS, "--", &py, "probe.py"], &[]);
    assert!(s.status.success(), "{}", s.stderr);
    assert_eq!(s.warm(), vec![true; 4], "every job forked from the warm interpreter: {:?}", s.records);
    let mut pids = Vec::new();
    for num in 0..4 {
        let p = s.probe(num);
        let pid = p["pid"].as_u64().unwrap();
        assert_eq!(p["pgid"].as_u64(), Some(pid), "job {num} leads its own process group");
        assert_eq!(p["ppid"].as_u64(), Some(u64::from(s.supervisor)), "job {num} is the supervisor's child");
        assert_eq!(s.records[num]["pid"].as_u64(), Some(pid), "the record has the job's own pid");
        assert!(s.records[num]["cpu_user_s"].as_f64().is_some());
        pids.push(pid);
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4, "four processes");
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn a_warm_job_sees_what_a_fresh_one_sees() {
    // Signals, mask and timers; fds; stdio and its buffering; stdin; environment; cwd;
    // umask; argv, sys.path[0], __file__, __name__ and __main__: with Python's defaults,
    // with PYTHONUNBUFFERED, and with interpreter flags.
    let sb = Sandbox::new();
    sb.write("probe.py", PROBE);
    let py = python();
    for (flags, env) in [
        (&[][..], &[][..]),
        (&[], &[("PYTHONUNBUFFERED", "1")][..]),
        (&["-u", "-X", "utf8"], &[]),
        (&["-B"], &[("LC_ALL", "C")]),
    ] {
        let mut args = vec!["--multirun", "task=1,2", TWO_SLOTS, "--", &py];
        args.extend(flags);
        args.push("probe.py");
        let fresh = sweep(&sb, false, &args, env);
        let warm = sweep(&sb, true, &args, env);
        assert!(fresh.status.success() && warm.status.success(), "{}\n{}", fresh.stderr, warm.stderr);
        assert_eq!(warm.warm(), vec![true, true], "{flags:?} {env:?}: {}", warm.stderr);
        assert_eq!(fresh.warm(), vec![false, false]);
        for num in 0..2 {
            let (f, w) = (comparable(&fresh, num), comparable(&warm, num));
            assert_eq!(w, f, "job {num} with flags {flags:?} env {env:?}: warm (left) and fresh (right) differ");
        }
        let w = warm.probe(0);
        assert_eq!(w["fds"], serde_json::json!([0, 1, 2, 3]), "stdio and the fd that listed them, nothing else");
        assert_eq!(w["SigBlk"], "0000000000000000", "an empty signal mask");
        assert_eq!(w["sigint"], "default_int_handler");
        assert_eq!(w["main_is_module"], true);
    }
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn a_warm_module_job_runs_as_python_dash_m_does() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path().join("pkg")).unwrap();
    sb.write("pkg/__init__.py", "");
    sb.write("pkg/probe.py", PROBE);
    let py = python();
    let args = ["--multirun", "task=1,2", TWO_SLOTS, "--", &py, "-m", "pkg.probe"];
    let fresh = sweep(&sb, false, &args, &[]);
    // The module is preloaded too: it runs again as __main__, without runpy's warning.
    let preload = "+hydra.launcher.orchestrator.preload=[pkg.probe]";
    let warm = sweep(&sb, true, &[&["--multirun", "task=1,2", TWO_SLOTS, preload], &args[3..]].concat(), &[]);
    assert!(fresh.status.success() && warm.status.success(), "{}\n{}", fresh.stderr, warm.stderr);
    assert_eq!(warm.warm(), vec![true, true], "{}", warm.stderr);
    for num in 0..2 {
        assert_eq!(comparable(&warm, num), comparable(&fresh, num), "job {num}");
        assert!(!warm.log(num).iter().any(|l| l.contains("RuntimeWarning")), "{:?}", warm.log(num));
    }
    assert_eq!(warm.probe(0)["name"], "__main__");
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn what_the_zygote_buffered_is_not_printed_again_by_its_jobs() {
    let sb = Sandbox::new();
    sb.write("noisy.py", "import sys\nprint('printed while preloading')\nsys.stderr.write('also on stderr')\n");
    sb.write("app.py", "print('job output')\n");
    let py = python();
    let s = sweep(
        &sb,
        true,
        &["--multirun", "task=1,2,3", TWO_SLOTS, "+hydra.launcher.orchestrator.preload=[noisy]", "--", &py, "app.py"],
        &[],
    );
    assert!(s.status.success(), "{}", s.stderr);
    assert_eq!(s.warm(), vec![true; 3], "{}", s.stderr);
    for num in 0..3 {
        let log = s.log(num);
        assert!(log.iter().any(|l| l == "stdout] job output"), "{log:?}");
        assert!(!log.iter().any(|l| l.contains("preloading") || l.contains("also on")), "job {num}: {log:?}");
    }
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn random_state_is_each_job_s_own() {
    let sb = Sandbox::new();
    let py = python();
    let numpy = has_numpy(&py);
    if !numpy {
        partly_skipped(&format!("numpy's global RandomState across warm jobs (no numpy for {py})"));
    }
    let draw = if numpy { "import numpy as np\nn = np.random.rand()\n" } else { "n = 0\n" };
    sb.write("rng.py", &format!("import random\n{draw}print(f'draws {{random.random()}} {{n}}')\n"));
    let mut args = vec!["--multirun", "task=1,2,3,4", TWO_SLOTS];
    // numpy's global state is made at import: preloaded, every child has a copy of it.
    if numpy {
        args.push("+hydra.launcher.orchestrator.preload=[numpy]");
    }
    args.extend(["--", &py, "rng.py"]);
    let s = sweep(&sb, true, &args, &[]);
    assert!(s.status.success(), "{}", s.stderr);
    assert_eq!(s.warm(), vec![true; 4], "{}", s.stderr);
    let draws: Vec<String> =
        (0..4).map(|n| s.log(n).into_iter().find(|l| l.starts_with("stdout] draws")).unwrap()).collect();
    for which in [1, 2].into_iter().take(if numpy { 2 } else { 1 }) {
        let mut values: Vec<&str> = draws.iter().map(|d| d.split(' ').nth(which + 1).unwrap()).collect();
        values.sort();
        values.dedup();
        assert_eq!(values.len(), 4, "four different draws ({}): {draws:?}", ["", "random", "numpy"][which]);
    }
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn a_job_whose_start_up_variable_differs_runs_fresh_and_per_slot_values_reach_warm_jobs() {
    // PYTHONHASHSEED is read only at start-up: a slot whose value differs from the warm
    // interpreter's runs fresh. OMP_NUM_THREADS can differ: the job's environment has its own.
    let sb = Sandbox::new();
    sb.write("probe.py", PROBE);
    let py = python();
    let config = "hydra:\n  launcher:\n    params:\n      joblib:\n        n_jobs: 2\n    orchestrator:\n      slot_env:\n        PYTHONHASHSEED: [\"1\", \"2\"]\n        OMP_NUM_THREADS: [\"1\", \"2\"]\n";
    sb.write("c.yaml", config);
    let s = sweep(&sb, true, &["--config", "c.yaml", "--multirun", "task=1,2,3,4,5,6", "--", &py, "probe.py"], &[]);
    assert!(s.status.success(), "{}", s.stderr);
    assert!(s.records.iter().any(|r| r["slot"] == 1), "both slots used: {:?}", s.records);
    let hash_of = |seed: &str| {
        let out = std::process::Command::new(&py)
            .args(["-c", "print(hash('orchestrator'))"])
            .env("PYTHONHASHSEED", seed)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().parse::<i64>().unwrap()
    };
    let (mut warm, mut fresh) = (0, 0);
    for num in 0..6 {
        let p = s.probe(num);
        let slot = s.records[num]["slot"].as_u64().unwrap() as usize;
        let seed = ["1", "2"][slot];
        assert_eq!(p["env"]["PYTHONHASHSEED"], seed);
        assert_eq!(p["hash"].as_i64(), Some(hash_of(seed)), "job {num} in slot {slot} hashes with its own seed");
        assert_eq!(p["env"]["OMP_NUM_THREADS"], ["1", "2"][slot]);
        if s.records[num]["warm"] == true {
            warm += 1;
        } else {
            fresh += 1;
        }
    }
    assert!(warm > 0 && fresh > 0, "one slot's jobs warm, the other's fresh: {:?}", s.warm());
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn exit_codes_signals_tracebacks_and_atexit_are_a_fresh_interpreter_s() {
    let sb = Sandbox::new();
    sb.write(
        "ends.py",
        r#"import atexit, os, signal, sys
how = sys.argv[1].split("=")[1]
atexit.register(lambda: print("atexit ran"))
f = open("unflushed.txt", "w"); f.write("written at exit")
print("before", how)
def fail():
    raise ValueError("boom")
if how == "code": sys.exit(3)
if how == "text": sys.exit("a message")
if how == "raise": fail()
if how == "interrupt": raise KeyboardInterrupt
if how == "kill": os.kill(os.getpid(), signal.SIGKILL)
"#,
    );
    let py = python();
    let args = ["--multirun", "how=ok,code,text,raise,interrupt,kill", "hydra.job.chdir=true", TWO_SLOTS, "--", &py];
    let ends = |s: &Sweep| -> Vec<(Value, Value, Value)> {
        s.records.iter().map(|r| (r["status"].clone(), r["exit_code"].clone(), r["signal"].clone())).collect()
    };
    let fresh = sweep(&sb, false, &[&args[..], &[sb.path().join("ends.py").to_str().unwrap()]].concat(), &[]);
    let warm = sweep(&sb, true, &[&args[..], &[sb.path().join("ends.py").to_str().unwrap()]].concat(), &[]);
    assert_eq!(warm.warm(), vec![true; 6], "{}", warm.stderr);
    assert_eq!(ends(&warm), ends(&fresh), "exit codes and signals");
    assert_eq!(
        ends(&warm).iter().map(|e| (e.1.as_i64(), e.2.as_str().map(str::to_owned))).collect::<Vec<_>>(),
        vec![
            (Some(0), None),
            (Some(3), None),
            (Some(1), None),
            (Some(1), None),
            (None, Some("SIGINT".to_owned())),
            (None, Some("SIGKILL".to_owned()))
        ]
    );
    for num in 0..6 {
        let lines = |s: &Sweep| -> Vec<String> {
            let mut l: Vec<String> = s.log(num).into_iter().filter(|l| !l.starts_with("orchestrator]")).collect();
            l.sort(); // stdout and stderr are two pipes: their interleaving is not the job's
            l
        };
        assert_eq!(lines(&warm), lines(&fresh), "job {num}'s output");
    }
    let raised = warm.log(3);
    assert!(raised.iter().any(|l| l.ends_with("ValueError: boom")), "{raised:?}");
    assert!(!raised.iter().any(|l| l.contains("orchestrator-zygote") || l.contains("runpy")), "{raised:?}");
    assert!(warm.log(0).iter().any(|l| l == "stdout] atexit ran"));
    // The file the app left open was flushed at the interpreter's exit.
    let job0 = warm.dir.join("0/unflushed.txt");
    assert_eq!(std::fs::read_to_string(&job0).unwrap(), "written at exit");
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn fast_exit_skips_the_teardown_but_keeps_stdout_and_the_exit_code() {
    let sb = Sandbox::new();
    sb.write(
        "quick.py",
        "import atexit, sys\natexit.register(lambda: print('atexit ran'))\nprint('buffered line')\nsys.exit(int(sys.argv[1].split('=')[1]))\n",
    );
    let py = python();
    let s = sweep(
        &sb,
        true,
        &["--multirun", "code=0,4", TWO_SLOTS, "+hydra.launcher.orchestrator.fast_exit=true", "--", &py, "quick.py"],
        &[],
    );
    assert_eq!(s.warm(), vec![true, true], "{}", s.stderr);
    assert_eq!(s.records[0]["exit_code"], 0);
    assert_eq!(s.records[1]["exit_code"], 4);
    for num in 0..2 {
        let log = s.log(num);
        assert!(log.iter().any(|l| l == "stdout] buffered line"), "{log:?}");
        assert!(!log.iter().any(|l| l.contains("atexit ran")), "fast_exit skips atexit handlers: {log:?}");
    }
}

/// A job that starts a child, writes both pids to `pids` in its dir, and hangs.
const HANG: &str = r#"import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "300"])
with open(os.path.join(os.environ["ORCHESTRATOR_JOB_DIR"], "pids"), "w") as f:
    f.write(f"{os.getpid()}\n{child.pid}\n")
print("hanging", flush=True)
time.sleep(300)
"#;

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn a_warm_job_past_its_timeout_is_ended_with_its_children() {
    let sb = Sandbox::new();
    sb.write("hang.py", HANG);
    let py = python();
    let s = sweep(
        &sb,
        true,
        &["--multirun", "task=1,2", TWO_SLOTS, "hydra.launcher.params.joblib.timeout=1.5", "--", &py, "hang.py"],
        &[],
    );
    assert_eq!(s.warm(), vec![true, true], "{}", s.stderr);
    for r in &s.records {
        assert_eq!(r["status"], "timed_out", "{r}");
    }
    let pids = recorded_pids(&s.dir);
    assert_eq!(pids.len(), 4, "each job and its child: {pids:?}");
    assert_no_survivors(&pids);
}

/// The zygotes (warm interpreters) that are children of `supervisor`: the processes with
/// its command line that are not `jobs` (a forked job has it too).
fn zygotes_of(supervisor: u32, jobs: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(supervisor)
            && !jobs.contains(&pid)
            && String::from_utf8_lossy(&cmdline).contains("orchestrator-zygote")
        {
            out.push(pid);
        }
    }
    out
}

fn spawn_hanging_sweep(sb: &Sandbox, py: &str) -> std::process::Child {
    sb.write("hang.py", HANG);
    sb.spawn(&["-q", "--warm", "--multirun", "task=1,2,3,4", TWO_SLOTS, "--", py, "hang.py"])
}

fn wait_for_two_jobs(sb: &Sandbox) -> (PathBuf, Vec<u32>) {
    let mut found = (PathBuf::new(), Vec::new());
    wait_for(30, "two warm jobs to start", || {
        let Some(dir) = sb.sweep_dirs().into_iter().next() else { return false };
        let pids = recorded_pids(&dir);
        found = (dir, pids);
        found.1.len() == 4
    });
    found
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn ctrl_c_ends_warm_jobs_their_children_and_the_zygote() {
    let sb = Sandbox::new();
    let py = python();
    let child = spawn_hanging_sweep(&sb, &py);
    let (dir, pids) = wait_for_two_jobs(&sb);
    let zygotes = zygotes_of(child.id(), &pids);
    assert_eq!(zygotes.len(), 1, "one warm interpreter");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert_no_survivors(&[pids, zygotes].concat());
    let records = journal(&dir);
    assert!(records.iter().all(|r| r["status"] == "interrupted" || r["status"] == "not_started"), "{records:?}");
    assert!(records.iter().filter(|r| r["status"] == "interrupted").all(|r| r["warm"] == true));
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn a_killed_supervisor_takes_its_warm_jobs_and_zygote_with_it() {
    let sb = Sandbox::new();
    let py = python();
    let child = spawn_hanging_sweep(&sb, &py);
    let (_, pids) = wait_for_two_jobs(&sb);
    let zygotes = zygotes_of(child.id(), &pids);
    assert_eq!(zygotes.len(), 1);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait_with_output();
    assert_no_survivors(&[pids, zygotes].concat());
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn a_zygote_that_dies_is_started_again() {
    let sb = Sandbox::new();
    sb.write(
        "slow.py",
        "import os, time\nopen(os.path.join(os.environ['ORCHESTRATOR_JOB_DIR'], 'pids'), 'w').write(f'{os.getpid()}\\n')\ntime.sleep(0.6)\n",
    );
    let py = python();
    let child = sb.spawn(&[
        "-q",
        "--warm",
        "--multirun",
        "task=1,2,3,4",
        "hydra.launcher.params.joblib.n_jobs=1",
        "--",
        &py,
        "slow.py",
    ]);
    let supervisor = child.id();
    let mut zygotes = Vec::new();
    wait_for(30, "the first warm job", || {
        let Some(dir) = sb.sweep_dirs().into_iter().next() else { return false };
        let jobs = recorded_pids(&dir);
        zygotes = zygotes_of(supervisor, &jobs);
        !jobs.is_empty() && !zygotes.is_empty()
    });
    assert_eq!(zygotes.len(), 1, "{zygotes:?}");
    kill(Pid::from_raw(zygotes[0] as i32), Signal::SIGKILL).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let records = journal(&sb.sweep_dir());
    assert!(records.iter().all(|r| r["status"] == "succeeded"), "{records:?}");
    assert_eq!(records[0]["warm"], true);
    assert!(stderr.contains("warm Python interpreter failed") && stderr.contains("starting it again"), "{stderr}");
    // The job that found it dead ran fresh; the ones after it were forked by the new one.
    assert_eq!(records[1]["warm"], Value::Null, "{records:?}");
    assert_eq!(records[3]["warm"], true, "{records:?}");
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn a_preload_that_starts_a_thread_or_fails_means_fresh_jobs_said_once() {
    let sb = Sandbox::new();
    sb.write(
        "threaded.py",
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n",
    );
    sb.write("app.py", "print('ran')\n");
    let py = python();
    for (preload, said) in
        [("threaded", "started 1 thread(s)"), ("no_such_module_here", "preloading failed: ModuleNotFoundError")]
    {
        let s = sweep(
            &sb,
            true,
            &[
                "--multirun",
                "task=1,2,3",
                TWO_SLOTS,
                &format!("+hydra.launcher.orchestrator.preload=[{preload}]"),
                "--",
                &py,
                "app.py",
            ],
            &[],
        );
        assert!(s.status.success(), "{}", s.stderr);
        assert_eq!(s.warm(), vec![false; 3], "fresh processes instead");
        assert!(s.records.iter().all(|r| r["status"] == "succeeded"));
        assert_eq!(s.stderr.matches("warm Python jobs are off").count(), 1, "said once: {}", s.stderr);
        assert!(s.stderr.contains(said), "{}", s.stderr);
    }
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn a_warm_sweep_leaves_the_tree_logs_and_journal_of_a_fresh_one() {
    let sb = Sandbox::new();
    let app = repo().join("examples/my_app.py");
    let py = python();
    let config = repo().join("config/joblib.yaml");
    let args = ["--config", config.to_str().unwrap(), "--multirun", "task=1..5", "--", &py, app.to_str().unwrap()];
    let fresh = sweep(&sb, false, &args, &[]);
    let warm = sweep(&sb, true, &args, &[]);
    assert!(fresh.status.success() && warm.status.success(), "{}\n{}", fresh.stderr, warm.stderr);
    assert_eq!(warm.warm(), vec![true; 5], "{}", warm.stderr);
    assert_eq!(warm.tree, fresh.tree, "the same files");
    let keys = |s: &Sweep| -> Vec<Vec<String>> {
        s.records.iter().map(|r| r.as_object().unwrap().keys().filter(|k| *k != "warm").cloned().collect()).collect()
    };
    assert_eq!(keys(&warm), keys(&fresh), "the same journal fields");
    let same = ["num", "id", "status", "overrides", "exit_code", "signal", "timed_out", "stderr_bytes"];
    // The app prints its own pid, whose number of digits is the only thing its stdout may
    // differ in (pid 9999 against pid 10000).
    let pid_digits = |s: &Sweep, num: usize| s.records[num]["pid"].as_u64().unwrap().to_string().len() as i64;
    for num in 0..5 {
        for k in same {
            assert_eq!(warm.records[num][k], fresh.records[num][k], "job {num}'s {k}");
        }
        let bytes = |s: &Sweep| s.records[num]["stdout_bytes"].as_i64().unwrap() - pid_digits(s, num);
        assert_eq!(bytes(&warm), bytes(&fresh), "job {num}'s stdout_bytes, less its pid's digits");
        let strip = |s: &Sweep| -> Vec<String> {
            s.log(num)
                .into_iter()
                .map(|l| l.split(" pid ").next().unwrap().split(" after ").next().unwrap().to_owned())
                // The app's own time stamps and pid: each run of digits as one `#`.
                .map(|l| {
                    let mut out = String::new();
                    for c in l.chars() {
                        if !c.is_ascii_digit() {
                            out.push(c);
                        } else if !out.ends_with('#') {
                            out.push('#');
                        }
                    }
                    out
                })
                .collect()
        };
        assert_eq!(strip(&warm), strip(&fresh), "job {num}'s log lines");
    }
}

/// Every file and dir under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            out.push(e.path().strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn jobs_that_are_not_python_scripts_run_fresh_beside_warm_ones() {
    // `python -c` cannot be forked from a zygote made for a script: it runs fresh, and the
    // run goes on.
    let sb = Sandbox::new();
    let py = python();
    let s = sweep(&sb, true, &["--multirun", "task=1,2", TWO_SLOTS, "--", &py, "-c", "print('inline')"], &[]);
    assert!(s.status.success(), "{}", s.stderr);
    assert_eq!(s.warm(), vec![false, false]);
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn thread_limits_reach_numpy_in_warm_jobs_or_the_job_runs_fresh() {
    // numpy's BLAS read OPENBLAS_NUM_THREADS when the zygote imported it: a job with another
    // value gets it through threadpoolctl, or runs fresh when threadpoolctl is missing.
    let sb = Sandbox::new();
    let py = python();
    if !has_numpy(&py) {
        skip(&format!("thread limits of a preloaded numpy (no numpy for {py})"));
        return;
    }
    let threadpoolctl =
        std::process::Command::new(&py).args(["-c", "import threadpoolctl"]).status().is_ok_and(|s| s.success());
    sb.write(
        "blas.py",
        r#"import os, numpy
try:
    from threadpoolctl import threadpool_info
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
except ImportError:
    blas = []
print("threads", os.environ["OPENBLAS_NUM_THREADS"], blas)
"#,
    );
    // The first job (slot 0: starts are spaced out) makes the warm interpreter, with one
    // BLAS thread: a pool of 2 would be threads in the zygote, which is then not forked.
    let config = "hydra:\n  launcher:\n    params:\n      joblib:\n        n_jobs: 2\n    orchestrator:\n      start_delay: 0.4s\n      preload: [numpy]\n      slot_env:\n        OPENBLAS_NUM_THREADS: [\"1\", \"2\"]\n";
    sb.write("c.yaml", config);
    let s = sweep(&sb, true, &["--config", "c.yaml", "--multirun", "task=1,2,3,4", "--", &py, "blas.py"], &[]);
    assert!(s.status.success(), "{}", s.stderr);
    assert!(s.records.iter().any(|r| r["slot"] == 1), "both slots used: {:?}", s.records);
    for num in 0..4 {
        let slot = s.records[num]["slot"].as_u64().unwrap() as usize;
        let want = ["1", "2"][slot];
        let line = s.log(num).into_iter().find(|l| l.starts_with("stdout] threads")).unwrap();
        assert!(line.starts_with(&format!("stdout] threads {want} ")), "job {num} in slot {slot}: {line}");
        if threadpoolctl {
            assert_eq!(s.records[num]["warm"], true, "{}", s.stderr);
            assert!(line.ends_with(&format!("[{want}]")), "numpy's BLAS uses the job's limit: {line}");
        }
    }
    if !threadpoolctl {
        partly_skipped(&format!("threadpoolctl in warm jobs (not installed for {py}); checked the fresh fallback"));
        // The warm interpreter took slot 0's value: slot 1's jobs run fresh.
        let slots: Vec<(u64, bool)> =
            s.records.iter().map(|r| (r["slot"].as_u64().unwrap(), r["warm"] == true)).collect();
        assert!(slots.iter().all(|(slot, warm)| (*slot == 0) == *warm), "{slots:?}\n{}", s.stderr);
    }
}

/// A stand-in for torch, with the three calls the warm child makes of it: it tells whether
/// those calls are made (torch itself is not installed here).
const FAKE_TORCH: &str = r#"import os
class cuda:
    @staticmethod
    def is_initialized():
        return os.environ.get("FAKE_CUDA_INITIALISED") == "1"
def seed():
    print("torch.seed()")
def set_num_threads(n):
    print(f"torch.set_num_threads({n})")
"#;

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn torch_is_reseeded_given_the_job_s_threads_and_initialised_cuda_means_fresh() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path().join("torch")).unwrap();
    sb.write("torch/__init__.py", FAKE_TORCH);
    sb.write("app.py", "print('ran')\n");
    let py = python();
    let config = "hydra:\n  launcher:\n    params:\n      joblib:\n        n_jobs: 2\n    orchestrator:\n      start_delay: 0.3s\n      preload: [torch]\n      slot_env:\n        OMP_NUM_THREADS: [\"1\", \"2\"]\n";
    sb.write("c.yaml", config);
    let args = ["--config", "c.yaml", "--multirun", "task=1,2,3", "--", &py, "app.py"];
    let s = sweep(&sb, true, &args, &[]);
    assert!(s.status.success(), "{}", s.stderr);
    assert_eq!(s.warm(), vec![true; 3], "{}", s.stderr);
    for num in 0..3 {
        let log = s.log(num);
        assert!(log.iter().any(|l| l == "stdout] torch.seed()"), "job {num}: {log:?}");
        let slot = s.records[num]["slot"].as_u64().unwrap();
        let set = log.iter().any(|l| l == "stdout] torch.set_num_threads(2)");
        assert_eq!(set, slot == 1, "job {num} in slot {slot}: {log:?}");
    }
    let s = sweep(&sb, true, &args, &[("FAKE_CUDA_INITIALISED", "1")]);
    assert!(s.status.success(), "{}", s.stderr);
    assert_eq!(s.warm(), vec![false; 3]);
    assert!(s.stderr.contains("CUDA is initialised"), "{}", s.stderr);
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn ctrl_c_while_the_zygote_is_still_importing_stops_at_once() {
    // The jobs wait for the warm interpreter without holding up the run: Ctrl-C ends the
    // sweep now, not when the (slow) preload is done, and the importing zygote is killed.
    let sb = Sandbox::new();
    sb.write("slow_import.py", "import time\ntime.sleep(60)\n");
    sb.write("app.py", "import time\ntime.sleep(60)\n");
    let py = python();
    let child = sb.spawn(&[
        "-q",
        "--warm",
        "--multirun",
        "task=1,2,3",
        TWO_SLOTS,
        "+hydra.launcher.orchestrator.preload=[slow_import]",
        "--",
        &py,
        "app.py",
    ]);
    let supervisor = child.id();
    let mut zygotes = Vec::new();
    wait_for(30, "the zygote to start importing", || {
        zygotes = zygotes_of(supervisor, &[]);
        !zygotes.is_empty()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    kill(Pid::from_raw(supervisor as i32), Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(t0.elapsed() < std::time::Duration::from_secs(10), "it took {:?}", t0.elapsed());
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert_no_survivors(&zygotes);
    let records = journal(&sb.sweep_dir());
    assert!(records.iter().all(|r| r["status"] != "succeeded" && r["warm"] != true), "{records:?}");
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn without_cgroups_a_warm_job_s_forked_escapee_is_found_by_its_own_marker() {
    // A forked process keeps the environment block its interpreter started with: the job
    // writes its marker over the zygote's there, so its escapees are its own.
    let sb = Sandbox::new();
    sb.write(
        "escape.py",
        r#"import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(os.path.join(os.environ["ORCHESTRATOR_JOB_DIR"], "pids"), "w") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(300)
    os._exit(0)
time.sleep(0.5)
"#,
    );
    let py = python();
    let s = sweep(
        &sb,
        true,
        &["--multirun", "task=1,2", "hydra.launcher.params.joblib.n_jobs=1", "--", &py, "escape.py"],
        &[("ORCHESTRATOR_CGROUPS", "0")],
    );
    assert!(s.status.success(), "{}", s.stderr);
    assert_eq!(s.warm(), vec![true, true], "{}", s.stderr);
    for r in &s.records {
        assert_eq!(r["isolation"], "process-group", "{r}");
        assert!(r["leftover_processes"].as_u64().unwrap() >= 1, "ended at its job's end: {r}");
    }
    assert_no_survivors(&recorded_pids(&s.dir));
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn an_uncaught_keyboard_interrupt_runs_preloaded_atexit_handlers_then_dies_by_sigint() {
    let sb = Sandbox::new();
    sb.write("pre_mod.py", "import atexit\natexit.register(lambda: print('preloaded atexit ran'))\n");
    sb.write("kb.py", "import pre_mod\nraise KeyboardInterrupt\n");
    let py = python();
    let args = ["--multirun", "task=1", "+hydra.launcher.orchestrator.preload=[pre_mod]", "--", &py, "kb.py"];
    let fresh = sweep(&sb, false, &args, &[]);
    let warm = sweep(&sb, true, &args, &[]);
    assert_eq!(warm.warm(), vec![true], "{}", warm.stderr);
    for s in [&fresh, &warm] {
        assert_eq!(s.records[0]["signal"], "SIGINT", "{:?}", s.records);
        assert!(s.log(0).iter().any(|l| l == "stdout] preloaded atexit ran"), "{:?}", s.log(0));
    }
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn signals_the_supervisor_was_started_with_ignored_stay_ignored() {
    // nohup-style: a signal ignored when orchestrator started is ignored in fresh jobs (an
    // exec keeps SIG_IGN); warm jobs get the same.
    let sb = Sandbox::new();
    sb.write("probe.py", PROBE);
    let py = python();
    let run = |warm: bool| {
        let _ = std::fs::remove_dir_all(sb.path().join("multirun"));
        let mut cmd = std::process::Command::new(orchestrator());
        cmd.current_dir(sb.path()).args(["run", "-q"]);
        if warm {
            cmd.arg("--warm");
        }
        cmd.args(["--multirun", "task=1", "--", &py, "probe.py"]);
        // SAFETY: signal() with SIG_IGN between fork and exec is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::signal(libc::SIGUSR1, libc::SIG_IGN);
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                Ok(())
            });
        }
        assert!(cmd.status().unwrap().success());
        let dir = sb.sweep_dir();
        let log = std::fs::read_to_string(dir.join("0/probe.log")).unwrap();
        let line = log.lines().find_map(|l| l.split_once("[stdout] ").map(|(_, j)| j.to_owned())).unwrap();
        let probe: Value = serde_json::from_str(&line).unwrap();
        (probe["SigIgn"].clone(), probe["handlers"].clone(), journal(&dir)[0]["warm"].clone())
    };
    let (fresh, warm) = (run(false), run(true));
    assert_eq!(warm.2, true);
    assert_eq!((&warm.0, &warm.1), (&fresh.0, &fresh.1), "ignored signals and handlers");
    let ign = u64::from_str_radix(fresh.0.as_str().unwrap(), 16).unwrap();
    assert!(ign & (1 << (libc::SIGUSR1 - 1)) != 0, "SIGUSR1 ignored in the fresh job too: {ign:x}");
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn a_job_the_zygote_forked_too_late_never_runs_and_the_job_runs_once_fresh() {
    // The zygote's answer comes after the supervisor gave up (an after-fork hook that takes
    // 1.5 s; the supervisor waits 0.5 s here): the job it forked gets no go and exits
    // without running; the supervisor runs the job fresh instead, once.
    let sb = Sandbox::new();
    sb.write("slowfork.py", "import os, time\nos.register_at_fork(after_in_child=lambda: time.sleep(1.5))\n");
    sb.write(
        "once.py",
        "import os\nopen(os.path.join(os.environ['ORCHESTRATOR_SWEEP_DIR'], 'runs.txt'), 'a').write(f\"{os.environ['ORCHESTRATOR_JOB_NUM']}\\n\")\n",
    );
    let py = python();
    let s = sweep(
        &sb,
        true,
        &[
            "--multirun",
            "task=1,2",
            "hydra.launcher.params.joblib.n_jobs=1",
            "+hydra.launcher.orchestrator.preload=[slowfork]",
            "--",
            &py,
            "once.py",
        ],
        &[("ORCHESTRATOR_WARM_FORK_TIMEOUT_MS", "500")],
    );
    assert!(s.status.success(), "{}", s.stderr);
    assert_eq!(s.warm(), vec![false, false], "{}", s.stderr);
    // Past the late forks' hooks (1.5 s each) and their wait for a go that never comes.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let mut runs: Vec<String> =
        std::fs::read_to_string(s.dir.join("runs.txt")).unwrap().lines().map(str::to_owned).collect();
    runs.sort();
    assert_eq!(runs, ["0", "1"], "each job ran once");
    // Nothing of the sweep is left: no process started with its environment.
    let marker = sb.path().to_string_lossy().into_owned();
    let left: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| String::from_utf8_lossy(&env).contains(marker.as_str()))
        })
        .collect();
    assert!(left.is_empty(), "processes of the sweep left: {left:?}");
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn the_wait_for_the_warm_interpreter_is_not_the_job_s_time() {
    // A 2 s preload and a 1.5 s timeout: the jobs wait for the interpreter, then run in
    // milliseconds; their records' times are their own, and no timeout counts the wait.
    let sb = Sandbox::new();
    sb.write("slow_import.py", "import time\ntime.sleep(2)\n");
    sb.write("app.py", "print('quick')\n");
    let py = python();
    let s = sweep(
        &sb,
        true,
        &[
            "--multirun",
            "task=1,2",
            TWO_SLOTS,
            "hydra.launcher.params.joblib.timeout=1.5",
            "+hydra.launcher.orchestrator.preload=[slow_import]",
            "--",
            &py,
            "app.py",
        ],
        &[],
    );
    assert!(s.status.success(), "{}", s.stderr);
    assert_eq!(s.warm(), vec![true, true], "{}", s.stderr);
    for r in &s.records {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert!(r["duration_s"].as_f64().unwrap() < 1.0, "the job's own time: {r}");
    }
}

#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn a_warm_job_joins_its_memory_cgroup_and_over_its_limit_is_out_of_memory() {
    let sb = Sandbox::new();
    sb.write(
        "hog.py",
        "import sys\nmib = 20 if sys.argv[1] == 'task=1' else 300\nb = b'x' * (mib << 20)\nprint(len(b))\n",
    );
    let py = python();
    let mem_gb = format!("+hydra.launcher.orchestrator.mem_gb={}", 100.0 / 1024.0);
    let s = sweep(&sb, true, &["--multirun", "task=1,2", TWO_SLOTS, &mem_gb, "--", &py, "hog.py"], &[]);
    if s.stderr.contains("cannot limit each job's memory") {
        skip("a_warm_job_joins_its_memory_cgroup_and_over_its_limit_is_out_of_memory: no memory cgroup here");
        return;
    }
    assert_eq!(s.status.code(), Some(1), "{}", s.stderr);
    assert_eq!(s.warm(), vec![true, true], "{}", s.stderr);
    let by_num = |n: u64| s.records.iter().find(|r| r["num"] == n).unwrap();
    assert_eq!(by_num(0)["status"], "succeeded", "{:?}", s.records);
    let peak = by_num(0)["mem_peak_kib"].as_u64().unwrap();
    assert!((20 << 10..100 << 10).contains(&peak), "the forked job's own, not the zygote's: {peak}");
    assert_eq!(by_num(1)["status"], "out_of_memory", "{:?}", s.records);
    // The zygote was not in the job's cgroup: it serves on.
    assert!(!s.stderr.contains("warm Python interpreter failed"), "{}", s.stderr);
}
