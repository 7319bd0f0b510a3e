//! A Hydra app (`@hydra.main`) as the child of `orchestrator run`: every job gets its own
//! Hydra run dir, filled by Hydra itself, with the job's number and id. Needs a Python with
//! hydra-core: `ORCHESTRATOR_TEST_HYDRA_PYTHON=/path/to/python cargo test -p integration-tests
//! --test integration hydra_app -- --ignored` (`.ci/run` uses the Hydra differential's venv).

use std::collections::BTreeSet;

use crate::common::*;

fn hydra_python() -> String {
    std::env::var("ORCHESTRATOR_TEST_HYDRA_PYTHON").unwrap_or_else(|_| {
        panic!("this test needs ORCHESTRATOR_TEST_HYDRA_PYTHON: a python with hydra-core installed (.ci/run sets it)")
    })
}

#[test]
#[ignore = "needs a Python with hydra-core (ORCHESTRATOR_TEST_HYDRA_PYTHON); .ci/run runs it"]
fn forty_jobs_of_a_hydra_app_leave_forty_hydra_dirs_with_their_own_overrides() {
    let sb = Sandbox::new();
    for f in ["my_app.py", "config.yaml"] {
        std::fs::copy(repo().join("integration-tests/fixtures/hydra_app").join(f), sb.path().join(f)).unwrap();
    }
    let python = hydra_python();
    let out = sb
        .cmd()
        .args(["-m", "task=1..40", "hydra.launcher.n_jobs=2", "--", &python, "my_app.py"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    let sweep = sb.sweep_dir();
    // Hydra made no run dir of its own: every job ran in its job dir.
    assert!(!sb.path().join("outputs").exists(), "a job ran in Hydra's default run dir");
    let mut seen_tasks = BTreeSet::new();
    for num in 0..40u64 {
        let dir = sweep.join(num.to_string());
        let overrides = read_yaml(dir.join(".hydra/overrides.yaml"));
        assert_eq!(overrides, serde_yaml::from_str::<serde_yaml::Value>(&format!("- task={}", num + 1)).unwrap());
        let config = read_yaml(dir.join(".hydra/config.yaml"));
        seen_tasks.insert(config["task"].as_u64().unwrap());
        // Written by Hydra: the job's number and id, and this dir as its output dir.
        let hydra = read_yaml(dir.join(".hydra/hydra.yaml"));
        assert_eq!(hydra["hydra"]["job"]["num"].as_u64(), Some(num));
        assert_eq!(hydra["hydra"]["job"]["id"].as_str(), Some(format!("my_app_{num}").as_str()));
        let output_dir = hydra["hydra"]["runtime"]["output_dir"].as_str().unwrap().to_string();
        assert_eq!(std::fs::canonicalize(&output_dir).unwrap(), std::fs::canonicalize(&dir).unwrap());
        // Hydra's log and ours, side by side.
        let hydra_log = std::fs::read_to_string(dir.join("my_app.log")).unwrap();
        assert!(hydra_log.contains(&format!("executing task {} (job {num}, id my_app_{num})", num + 1)), "{hydra_log}");
        let ours = std::fs::read_to_string(dir.join("my_app_orchestrator.log")).unwrap();
        assert!(ours.contains("exit code 0"), "{ours}");
    }
    assert_eq!(seen_tasks, (1..=40).collect());
    let records = journal(&sweep);
    assert_eq!(records.len(), 40);
    assert!(records.iter().all(|r| r["status"] == "succeeded"));
}

/// Detection, without Python: two shell scripts named `.py`, one that mentions
/// `hydra.main` (taken for a Hydra app: the Hydra overrides are appended, orchestrator writes
/// no `.hydra` files and logs beside Hydra's log) and one that does not.
#[test]
fn a_script_is_a_hydra_app_when_it_uses_hydra_main() {
    let sb = Sandbox::new();
    for (name, text) in [
        ("plain.py", "#!/bin/sh\necho \"args: $*\"\n"),
        ("app.py", "#!/bin/sh\n# @hydra.main(config_path=None)\necho \"args: $*\"\n"),
    ] {
        sb.write_script(name, text);
    }
    let run = |script: &str, dir: &str| {
        let out =
            sb.cmd().args(["-m", "task=1,2", &format!("hydra.sweep.dir={dir}"), "--", script]).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plain = run("./plain.py", "plain");
    assert!(plain.contains("args: task=2\n"), "{plain}");
    assert!(sb.path().join("plain/1/.hydra/config.yaml").exists());
    assert!(sb.path().join("plain/1/plain.log").exists());

    let app = run("./app.py", "app");
    let dir1 = std::fs::canonicalize(sb.path().join("app")).unwrap().join("1");
    assert!(
        app.contains(&format!(
            "args: task=2 hydra.run.dir='{}' hydra.job.num=1 hydra.job.id='app_1'\n",
            dir1.display()
        )),
        "{app}"
    );
    assert!(!sb.path().join("app/1/.hydra").exists(), "Hydra writes its own .hydra files");
    assert!(sb.path().join("app/1/app_orchestrator.log").exists());

    // Said either way in the config.
    let forced = sb
        .cmd()
        .args([
            "-m",
            "task=1",
            "hydra.sweep.dir=forced",
            "hydra.launcher.orchestrator.hydra_app=false",
            "--",
            "./app.py",
        ])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&forced.stdout).contains("args: task=1\n"));
}

#[test]
#[ignore = "needs a Python with hydra-core (ORCHESTRATOR_TEST_HYDRA_PYTHON); .ci/run runs it"]
fn a_hydra_app_run_warm_leaves_what_it_leaves_fresh_and_its_task_never_runs_in_the_zygote() {
    // The warm interpreter preloads Hydra and the app's script; this app calls its task at
    // module level, with no main guard: preloading must not run it (each job runs once).
    let sb = Sandbox::new();
    sb.write("config.yaml", "task: 0\n");
    sb.write(
        "unguarded.py",
        r#"import os
import hydra
from omegaconf import DictConfig

@hydra.main(version_base=None, config_path=".", config_name="config")
def my_app(cfg: DictConfig) -> None:
    with open(os.path.join(os.environ["ORCHESTRATOR_SWEEP_DIR"], "runs.txt"), "a") as f:
        f.write(f"{cfg.task}\n")
    print(f"task {cfg.task} in {os.getcwd()}")

my_app()
"#,
    );
    let python = hydra_python();
    let mut trees = Vec::new();
    for warm in [false, true] {
        let _ = std::fs::remove_dir_all(sb.path().join("multirun"));
        let mut cmd = sb.cmd();
        if warm {
            cmd.arg("--warm");
        }
        let out =
            cmd.args(["-m", "task=1..4", "hydra.launcher.n_jobs=2", "--", &python, "unguarded.py"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "warm={warm}: {stderr}");
        let sweep = sb.sweep_dir();
        let records = journal(&sweep);
        assert!(records.iter().all(|r| (r["warm"] == true) == warm), "warm={warm}: {records:?}\n{stderr}");
        let mut runs: Vec<String> =
            std::fs::read_to_string(sweep.join("runs.txt")).unwrap().lines().map(str::to_owned).collect();
        runs.sort();
        assert_eq!(runs, ["1", "2", "3", "4"], "warm={warm}: each task ran once");
        let mut files: Vec<String> = Vec::new();
        for num in 0..4 {
            for f in [".hydra/config.yaml", ".hydra/overrides.yaml", "unguarded.log"] {
                let p = sweep.join(num.to_string()).join(f);
                files.push(format!("{num}/{f}: {}", std::fs::read_to_string(&p).map(|t| t.len()).unwrap_or(0)));
            }
        }
        trees.push(files);
    }
    assert_eq!(trees[0], trees[1], "the same files, of the same sizes");
}
