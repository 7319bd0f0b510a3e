//! Shared helpers: a sandbox dir per test, the binaries, and process checks.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn orchestrator() -> &'static str {
    env!("CARGO_BIN_EXE_orchestrator-it")
}

pub fn fixture() -> &'static str {
    env!("CARGO_BIN_EXE_fixture")
}

/// Say that a test (or a part of one) did not run here, and why: `skipped: <what>`, straight to
/// the process's stderr. The harness captures `eprintln!` of a passing test, and a skip must
/// be seen (`.ci/run` counts these lines and takes them off the passed count).
pub fn skip(what: &str) {
    say("skipped", what);
}

/// Say that a part of a test did not run here while the rest did: `partly skipped: <what>`,
/// seen in CI's log but not counted as a skipped test.
pub fn partly_skipped(what: &str) {
    say("partly skipped", what);
}

fn say(label: &str, what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{label}: {what}");
}

/// Where the cgroup2 filesystem is mounted, from our `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    mounts().into_iter().find_map(|(point, fstype, _)| (fstype == "cgroup2").then_some(point))
}

/// Where the cgroup v1 hierarchy with `controller` is mounted, from our `/proc/self/mountinfo`.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    mounts().into_iter().find_map(|(point, fstype, options)| {
        (fstype == "cgroup" && options.split(',').any(|o| o == controller)).then_some(point)
    })
}

/// Each mount's point, filesystem type and super options.
fn mounts() -> Vec<(PathBuf, String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split_whitespace();
            let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
            Some((PathBuf::from(left.split_whitespace().nth(4)?), fstype.to_string(), options.to_string()))
        })
        .collect()
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// A YAML file the run wrote, parsed.
pub fn read_yaml(path: impl AsRef<Path>) -> serde_yaml::Value {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// A config with two slots and a short grace period, for fast tests.
pub const FAST: &str = "hydra:\n  launcher:\n    class: hydra_plugins.joblib_launcher.JoblibLauncher\n    params:\n      joblib:\n        n_jobs: 2\n        timeout: None\n    orchestrator:\n      grace_period: 0.5s\n";

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    /// [`Sandbox::write`], executable: a script for a job to run.
    pub fn write_script(&self, name: &str, text: &str) -> PathBuf {
        let p = self.write(name, text);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        p
    }

    /// `orchestrator run` in this sandbox.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(orchestrator());
        c.current_dir(self.path()).arg("run").timeout(Duration::from_secs(120));
        c
    }

    /// `orchestrator run` as a plain child process (for sending it signals).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(orchestrator())
            .current_dir(self.path())
            .arg("run")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn orchestrator")
    }

    /// Every sweep dir created under `multirun/<date>/<time>`.
    pub fn sweep_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for base in ["multirun", "outputs"] {
            let Ok(days) = std::fs::read_dir(self.path().join(base)) else { continue };
            for day in days.flatten() {
                for run in std::fs::read_dir(day.path()).into_iter().flatten().flatten() {
                    out.push(run.path());
                }
            }
        }
        out.sort();
        out
    }

    pub fn sweep_dir(&self) -> PathBuf {
        let dirs = self.sweep_dirs();
        assert_eq!(dirs.len(), 1, "expected exactly one sweep dir, found {dirs:?}");
        dirs.into_iter().next().unwrap_or_default()
    }

    pub fn nothing_created(&self) -> bool {
        !self.path().join("multirun").exists() && !self.path().join("outputs").exists()
    }
}

/// Parsed `jobs.jsonl`, sorted by job number.
pub fn journal(sweep: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(sweep.join("jobs.jsonl")).expect("jobs.jsonl");
    let mut v: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("journal line is JSON")).collect();
    v.sort_by_key(|r| r["num"].as_u64());
    v
}

/// Whether `pid` is a live process (zombies waiting for a late reaper do not count).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_string));
            !matches!(state.as_deref(), Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Pids the fixtures wrote into the job dirs' `pids` files.
pub fn recorded_pids(sweep: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(sweep).expect("sweep dir").flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path().join("pids")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    pids
}

/// Assert that none of `pids` survives (allowing a moment for SIGKILL delivery).
pub fn assert_no_survivors(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let survivors: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if survivors.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            // Do not leave them behind for the next test either.
            for p in &survivors {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p as i32), nix::sys::signal::Signal::SIGKILL);
            }
            panic!("processes survived: {survivors:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until `cond` holds, or panic after `secs`.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
