//! Sweep order, numbering, concurrency and the child contract.

use crate::common::*;

fn overrides_of(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["overrides"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn two_keys_follow_hydra_order() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "task=1,2,3", "lr=0.1,0.01", "--", fixture(), "echo"])
        .assert()
        .success();
    let records = journal(&sb.sweep_dir());
    assert_eq!(
        overrides_of(&records),
        ["task=1 lr=0.1", "task=1 lr=0.01", "task=2 lr=0.1", "task=2 lr=0.01", "task=3 lr=0.1", "task=3 lr=0.01"]
    );
}

#[test]
fn three_keys_leftmost_slowest_and_argv_contract() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", &format!("{FAST}db:\n  driver: mysql\n"));
    sb.cmd()
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "-m",
            "--quiet",
            "a=x,y",
            "b=1..2",
            "db.driver=pg,sqlite",
            "--",
            fixture(),
            "echo",
        ])
        .assert()
        .success();
    let sweep = sb.sweep_dir();
    let records = journal(&sweep);
    assert_eq!(records.len(), 8);
    assert_eq!(overrides_of(&records)[0], "a=x b=1 db.driver=pg");
    assert_eq!(overrides_of(&records)[1], "a=x b=1 db.driver=sqlite");
    assert_eq!(overrides_of(&records)[2], "a=x b=2 db.driver=pg");
    assert_eq!(overrides_of(&records)[7], "a=y b=2 db.driver=sqlite");
    // argv: the app's own args, then the overrides, Hydra style.
    let echo = std::fs::read_to_string(sweep.join("5/echo.txt")).unwrap();
    let mut lines = echo.lines();
    let argv: Vec<String> = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(argv, ["echo", "a=y", "b=1", "db.driver=sqlite"]);
    let env: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(env["ORCHESTRATOR_JOB_NUM"], "5");
    assert_eq!(env["ORCHESTRATOR_JOB_ID"], "fixture_5");
    assert_eq!(env["ORCHESTRATOR_JOB_DIR"], sweep.join("5").to_str().unwrap());
    assert_eq!(env["ORCHESTRATOR_SWEEP_DIR"], sweep.to_str().unwrap());
    assert_eq!(env["ORCHESTRATOR_CONFIG"], sweep.join("5/.hydra/config.yaml").to_str().unwrap());
    let ov: serde_json::Value = serde_json::from_str(env["ORCHESTRATOR_OVERRIDES"].as_str().unwrap()).unwrap();
    assert_eq!(ov, serde_json::json!({"a": "y", "b": 1, "db.driver": "sqlite"}));
    assert!(env["ORCHESTRATOR_SLOT"].as_str().unwrap() == "0" || env["ORCHESTRATOR_SLOT"].as_str().unwrap() == "1");
    // Thread limits as loky sets them: cpus / n_jobs, at least 1.
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    assert_eq!(env["OMP_NUM_THREADS"], (cpus / 2).max(1).to_string());
    let config = std::fs::read_to_string(sweep.join("5/.hydra/config.yaml")).unwrap();
    // `y` quoted, as OmegaConf writes it.
    assert_eq!(config, "db:\n  driver: sqlite\na: 'y'\nb: 1\n");
}

#[test]
fn placeholders_replace_appended_overrides_and_slot_env() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "c.yaml",
        &format!(
            "{FAST}      slot_env:\n        CUDA_VISIBLE_DEVICES: [\"7\", \"9\"]\n        MY_PORT: \"80{{slot}}0\"\n"
        ),
    );
    sb.cmd()
        .env("OMP_NUM_THREADS", "5")
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "-m",
            "--quiet",
            "task=1,2",
            "--",
            fixture(),
            "echo",
            "--task={task}",
            "{job.num}",
        ])
        .assert()
        .success();
    let sweep = sb.sweep_dir();
    for n in 0..2 {
        let echo = std::fs::read_to_string(sweep.join(format!("{n}/echo.txt"))).unwrap();
        let mut lines = echo.lines();
        let argv: Vec<String> = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(argv, ["echo".to_string(), format!("--task={}", n + 1), n.to_string()]);
        let env: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        let slot: usize = env["ORCHESTRATOR_SLOT"].as_str().unwrap().parse().unwrap();
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], ["7", "9"][slot]);
        assert_eq!(env["MY_PORT"], format!("80{slot}0"));
        // The user's own setting wins over the computed thread limit.
        assert_eq!(env["OMP_NUM_THREADS"], "5");
    }
}

#[test]
fn concurrency_reaches_but_never_exceeds_n_jobs() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "task=1..6", "--", fixture(), "sleep", "0.4"])
        .assert()
        .success();
    let sweep = sb.sweep_dir();
    let mut events = Vec::new();
    for n in 0..6 {
        let t = std::fs::read_to_string(sweep.join(format!("{n}/times"))).unwrap();
        let mut it = t.split_whitespace().map(|x| x.parse::<f64>().unwrap());
        events.push((it.next().unwrap(), 1));
        events.push((it.next().unwrap(), -1));
    }
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut cur, mut max) = (0, 0);
    for (_, d) in events {
        cur += d;
        max = max.max(cur);
    }
    assert_eq!(max, 2, "peak concurrency must equal n_jobs=2");
}

#[test]
fn failures_are_reported_and_others_still_run() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "task=1..4", "--", fixture(), "fail-on", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 of 4 jobs succeeded, 1 failed"), "{stderr}");
    assert!(stderr.contains("#1 : task=2 -> exit code 3; log: "), "{stderr}");
    let records = journal(&sb.sweep_dir());
    assert_eq!(records.len(), 4);
    assert_eq!(records[1]["status"], "failed");
    assert_eq!(records[1]["exit_code"], 3);
}

#[test]
fn halt_now_stops_at_the_first_failure() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", &format!("{FAST}      halt: now\n"));
    let out = sb
        .cmd()
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "-m",
            "--quiet",
            "hydra.launcher.params.joblib.n_jobs=1",
            "task=1..5",
            "--",
            fixture(),
            "fail-on",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let records = journal(&sb.sweep_dir());
    assert_eq!(records.len(), 2, "jobs after the failure must not start");
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 not started"));
}

#[test]
fn single_run_without_multirun_uses_outputs_dir() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    sb.cmd().args(["-c", cfg.to_str().unwrap(), "--quiet", "task=3", "--", fixture(), "echo"]).assert().success();
    let dirs = sb.sweep_dirs();
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].starts_with(sb.path().join("outputs")));
    assert!(dirs[0].join(".hydra/config.yaml").exists());
    assert!(dirs[0].join("fixture.log").exists());
}

#[test]
fn two_sweeps_in_the_same_second_get_their_own_dirs() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", "hydra:\n  sweep:\n    dir: multirun/day/fixed\n");
    for _ in 0..2 {
        sb.cmd()
            .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "task=1", "--", fixture(), "echo"])
            .assert()
            .success();
    }
    let dirs = sb.sweep_dirs();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert!(dirs[1].ends_with("fixed_1"));
}

#[test]
fn resume_runs_exactly_the_jobs_without_a_successful_record() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let cfg = cfg.to_str().unwrap();
    sb.cmd().args(["-c", cfg, "-m", "--quiet", "task=1..4", "--", fixture(), "fail-on", "2"]).assert().code(1);
    let sweep = sb.sweep_dir();
    let first = journal(&sweep);
    assert_eq!(first.len(), 4);
    let first_start = std::fs::read_to_string(sweep.join("0/fixture.log")).unwrap();

    // Different overrides than the sweep's are refused, and nothing runs.
    let out = sb
        .cmd()
        .args(["-c", cfg, "--resume", sweep.to_str().unwrap(), "task=1..5", "--", fixture(), "echo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("its sweep was `task=1..4`, these overrides sweep `task=1..5`")
    );

    // Same sweep, fixed app: only job 1 runs again, in its own dir, with its own number.
    let out = sb
        .cmd()
        .args(["-c", cfg, "--resume", sweep.to_str().unwrap(), "--", fixture(), "fail-on", "99"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Resuming sweep"), "{stdout}");
    assert!(stdout.contains("3 of 4 jobs already succeeded"), "{stdout}");
    assert!(stdout.contains("\t#1 : task=2"), "{stdout}");
    assert!(!stdout.contains("\t#0 : task=1"), "{stdout}");
    assert_eq!(sb.sweep_dirs().len(), 1, "no new sweep dir");
    let text = std::fs::read_to_string(sweep.join("jobs.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[4]["num"], 1);
    assert_eq!(lines[4]["status"], "succeeded");
    assert_eq!(std::fs::read_to_string(sweep.join("0/fixture.log")).unwrap(), first_start, "job 0 untouched");
    // Job 1's log keeps its failed attempt, and the new one follows it.
    let log = std::fs::read_to_string(sweep.join("1/fixture.log")).unwrap();
    let failed = log.find("failing on purpose: task=2").expect("first attempt kept");
    let fine = log.find("[stdout] fine").expect("second attempt logged");
    assert!(failed < fine, "{log}");
    assert_eq!(log.matches("[orchestrator] started pid").count(), 2, "{log}");
}

/// A sweep run by `--resume` with launcher settings changed: the sweep's own overrides are
/// reused whatever their order on the command line, and `hydra.*` overrides may differ.
#[test]
fn resume_takes_new_launcher_settings_and_the_sweep_overrides_in_any_position() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let cfg = cfg.to_str().unwrap();
    let args = ["-c", cfg, "-m", "--quiet", "hydra.sweep.dir=multirun/day/s", "task=1..3", "--"];
    sb.cmd().args(args).args([fixture(), "fail-on", "3"]).assert().code(1);
    let sweep = sb.sweep_dir();
    let out = sb
        .cmd()
        .args(["-c", cfg, "--resume", "multirun/day/s", "task=1..3", "hydra.launcher.params.joblib.n_jobs=1"])
        .args(["--", fixture(), "fail-on", "99"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Joblib.Parallel(n_jobs=1,"), "{stdout}");
    assert!(stdout.contains("\t#2 : task=3"), "{stdout}");
    assert_eq!(journal(&sweep).iter().filter(|r| r["status"] == "succeeded").count(), 3);
}

/// What `--resume` must refuse, with exit 2 and without running anything.
#[test]
fn resume_refuses_what_would_run_other_jobs_than_the_sweep_recorded() {
    let refused = |sb: &Sandbox, args: &[&str], want: &str| {
        let before = std::fs::read(sb.sweep_dir().join("jobs.jsonl")).ok();
        let out = sb.cmd().args(args).args(["--", fixture(), "echo"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert_eq!(std::fs::read(sb.sweep_dir().join("jobs.jsonl")).ok(), before, "{args:?}: nothing ran");
    };

    // glob() expands again on resume: a file gone since the sweep renumbers its jobs.
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let cfg = cfg.to_str().unwrap();
    std::fs::create_dir(sb.path().join("in")).unwrap();
    sb.write("in/a.txt", "");
    sb.write("in/b.txt", "");
    sb.cmd().args(["-c", cfg, "-m", "--quiet", "f=glob(in/*.txt)", "--", fixture(), "echo"]).assert().success();
    std::fs::remove_file(sb.path().join("in/a.txt")).unwrap();
    let dir = sb.sweep_dir();
    let dir = dir.to_str().unwrap();
    refused(
        &sb,
        &["-c", cfg, "--resume", dir],
        "its journal has job #0 as `f=in/a.txt`, but the sweep now makes job #0 `f=in/b.txt`",
    );

    // Another config that names the jobs' dirs differently.
    let other = sb.write("other.yaml", &format!("{FAST}  sweep:\n    subdir: t_${{hydra.job.num}}\n"));
    refused(&sb, &["-c", other.to_str().unwrap(), "--resume", dir], "hydra.sweep.subdir `${hydra.job.num}`");

    // A dir whose multirun.yaml is not a sweep's.
    let fake = sb.path().join("fake");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(fake.join("multirun.yaml"), "foo: 1\n").unwrap();
    refused(&sb, &["--resume", "fake"], "is not the multirun.yaml of a sweep");
    assert!(!fake.join("0").exists() && !fake.join("jobs.jsonl").exists());
}

#[test]
fn a_sweep_dir_in_use_cannot_be_resumed_until_its_run_ends() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let cfg = cfg.to_str().unwrap();
    let mut first = sb.spawn(&["-c", cfg, "-m", "--quiet", "task=1,2", "--", fixture(), "sleep", "3"]);
    wait_for(20, "the sweep's first jobs", || sb.sweep_dirs().len() == 1 && sb.sweep_dir().join("0").exists());
    let dir = sb.sweep_dir();
    let out = sb.cmd().args(["-c", cfg, "--resume", dir.to_str().unwrap(), "--", fixture(), "echo"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is in use by another orchestrator run"), "{stderr}");
    assert!(first.wait().unwrap().success());
    assert_eq!(journal(&dir).len(), 2, "only the sweep's own records");
    // Once it has ended, resuming is fine (and has nothing left to run).
    let out = sb.cmd().args(["-c", cfg, "--resume", dir.to_str().unwrap(), "--", fixture(), "echo"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_journal_line_torn_by_a_kill_costs_only_its_own_record() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let cfg = cfg.to_str().unwrap();
    sb.cmd().args(["-c", cfg, "-m", "--quiet", "task=1..3", "--", fixture(), "fail-on", "2"]).assert().code(1);
    let dir = sb.sweep_dir();
    // The supervisor killed in the middle of job 2's record: half a line, no newline.
    let path = dir.join("jobs.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let torn = lines.iter().position(|l| l.contains("\"num\":2")).unwrap();
    let cut = lines.remove(torn);
    let kept = lines.join("\n");
    std::fs::write(&path, format!("{kept}\n{}", &cut[..cut.len() / 2])).unwrap();
    let resume = || {
        sb.cmd()
            .args(["-c", cfg, "--resume", dir.to_str().unwrap(), "--", fixture(), "fail-on", "99"])
            .output()
            .unwrap()
    };
    // Jobs 1 (failed) and 2 (record lost) run again; then nothing is left.
    let out = resume();
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 of 3 jobs already succeeded"));
    let out = resume();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("3 of 3 jobs already succeeded"), "{stdout}");
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed = text.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()).count();
    assert_eq!(parsed, text.lines().count() - 1, "only the torn line is not a record:\n{text}");
}

#[test]
fn json_events_parse_and_agree_with_the_journal() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--json", "task=1..4", "--", fixture(), "fail-on", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.first().unwrap()["event"], "sweep_started");
    assert_eq!(events.last().unwrap()["event"], "sweep_finished");
    assert_eq!(events.last().unwrap()["failed"], 1);
    let mut finished: Vec<serde_json::Value> =
        events.iter().filter(|e| e["event"] == "job_finished").cloned().collect();
    finished.sort_by_key(|e| e["num"].as_u64());
    let journal = journal(&sb.sweep_dir());
    assert_eq!(finished.len(), journal.len());
    for (mut e, j) in finished.into_iter().zip(journal) {
        e.as_object_mut().unwrap().remove("event");
        assert_eq!(e, j);
    }
    assert_eq!(events.iter().filter(|e| e["event"] == "output" && e["line"] == "fine").count(), 3);
}

#[test]
fn verbose_prints_joblib_progress_lines() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "-v", "task=1..3", "--", fixture(), "echo"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[Parallel(n_jobs=2)]: Done   1 out of   3 | elapsed: "), "{stderr}");
    assert!(
        stderr.contains("[Parallel(n_jobs=2)]: Done   3 out of   3 | elapsed: ") && stderr.contains(" finished"),
        "{stderr}"
    );
}

#[test]
fn a_single_run_goes_to_the_run_dir_an_override_gives() {
    let sb = Sandbox::new();
    let out =
        sb.cmd().args(["--quiet", "task=1", "hydra.run.dir=outputs/single", "--", fixture(), "echo"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(sb.path().join("outputs/single/jobs.jsonl").is_file());
    assert!(sb.path().join("outputs/single/.hydra/config.yaml").is_file());
}

#[test]
fn sweeper_params_in_the_config_come_before_the_command_line_as_in_hydra() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "c.yaml",
        &format!(
            "{FAST}  sweeper:\n    params:\n      task: 1,2\n      lr: range(0.5,0.7,0.1)\ntask: 0\nlr: 0.0\nname: x\n"
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let out = sb.cmd().args(["-c", cfg, "-m", "task=7", "name=a,b", "--", fixture(), "echo"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let jobs: Vec<&str> = stdout.lines().filter_map(|l| l.split("\t#").nth(1)).collect();
    // The same key keeps its first position and takes the command line's value.
    assert_eq!(
        jobs,
        [
            "0 : task=7 lr=0.5 name=a",
            "1 : task=7 lr=0.5 name=b",
            "2 : task=7 lr=0.6 name=a",
            "3 : task=7 lr=0.6 name=b"
        ]
    );
    // multirun.yaml lists what was typed, as Hydra's does.
    let multirun = std::fs::read_to_string(sb.sweep_dir().join("multirun.yaml")).unwrap();
    assert!(multirun.contains("    task:\n    - task=7\n    - name=a,b\n"), "{multirun}");
    // A single run has no sweeper.
    let out = sb.cmd().args(["-c", cfg, "--quiet", "--", fixture(), "echo"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn override_dirname_leaves_out_exclude_keys_and_uses_the_configured_separators() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "c.yaml",
        &format!(
            "{FAST}  sweep:\n    subdir: ${{hydra.job.override_dirname}}\n  job:\n    config:\n      override_dirname:\n        exclude_keys: [seed]\n        item_sep: '__'\n"
        ),
    );
    // `seed` leaves out `+seed=7` too: Hydra matches the key without its prefix.
    let args = ["-c", cfg.to_str().unwrap(), "-m", "--quiet", "task=1,2", "+seed=7", "+lr=0.1"];
    sb.cmd().args(args).args(["--", fixture(), "echo"]).assert().success();
    let sweep = sb.sweep_dir();
    let mut dirs: Vec<String> = std::fs::read_dir(&sweep)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["+lr=0.1__task=1", "+lr=0.1__task=2"]);
    let hydra = std::fs::read_to_string(sweep.join("+lr=0.1__task=1/.hydra/hydra.yaml")).unwrap();
    assert!(
        hydra.contains(
            "      override_dirname:\n        kv_sep: '='\n        item_sep: __\n        exclude_keys:\n        - seed\n"
        ),
        "{hydra}"
    );
}

#[test]
fn hydra_launcher_joblib_is_recorded_not_passed_to_the_app() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let args = ["-c", cfg.to_str().unwrap(), "-m", "--quiet", "hydra/launcher=joblib", "task=1"];
    sb.cmd().args(args).args(["--", fixture(), "echo"]).assert().success();
    let job = sb.sweep_dir().join("0");
    let log = std::fs::read_to_string(job.join("fixture.log")).unwrap();
    assert!(!log.contains("hydra/launcher"), "{log}");
    let config = std::fs::read_to_string(job.join(".hydra/config.yaml")).unwrap();
    assert!(!config.contains("launcher"), "{config}");
    let hydra = std::fs::read_to_string(job.join(".hydra/hydra.yaml")).unwrap();
    // In the command line's order, then `hydra.mode=`, as hydra-core 1.3.8 lists them.
    assert!(hydra.contains("    - hydra/launcher=joblib\n    - hydra.mode=MULTIRUN\n"), "{hydra}");
    // Typed again on resume, it is a Hydra setting, not a change of the sweep (and is
    // recorded once).
    let sweep = sb.sweep_dir();
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "--resume", sweep.to_str().unwrap(), "hydra/launcher=joblib"])
        .args(["--", fixture(), "echo"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Another launcher is not something this tool can be.
    let out =
        sb.cmd().args(["-m", "hydra/launcher=submitit_slurm", "task=1", "--", fixture(), "echo"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run jobs through `submitit_slurm`"));
}

#[test]
fn resume_refuses_a_config_that_would_move_the_jobs_dirs() {
    let sb = Sandbox::new();
    let subdir = "  sweep:\n    subdir: ${hydra.job.override_dirname}\n";
    let first = sb.write("a.yaml", &format!("{FAST}{subdir}"));
    let other = sb
        .write("b.yaml", &format!("{FAST}{subdir}  job:\n    config:\n      override_dirname:\n        kv_sep: '-'\n"));
    let args = ["-c", first.to_str().unwrap(), "-m", "--quiet", "task=1,2", "--", fixture(), "fail-on", "2"];
    sb.cmd().args(args).assert().code(1);
    let dir = sb.sweep_dir();
    let out = sb
        .cmd()
        .args(["-c", other.to_str().unwrap(), "--resume", dir.to_str().unwrap(), "--", fixture(), "echo"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("its journal has job #0 in") && stderr.contains("puts it in `task-1`"), "{stderr}");
    assert!(!dir.join("task-2").exists());
}

#[test]
fn multirun_yaml_holds_the_config_with_the_fixed_overrides_and_the_sweep_as_hydra_writes_it() {
    // What hydra-core 1.3.8 writes for the same config and overrides: the app config with the
    // overrides that are not sweeps applied, the sweeper's params, override_dirname sorted
    // and without exclude_keys, `hydra.mode=` after the command line's hydra overrides.
    let sb = Sandbox::new();
    let cfg = sb.write(
        "c.yaml",
        &format!(
            "a:\n  b: 0\n  c: 5\nx: {{}}\nz: 9\nw: 0\n{FAST}  sweeper:\n    params:\n      q: 1,2\n      w: 7\n  job:\n    config:\n      override_dirname:\n        exclude_keys: [seed]\n"
        ),
    );
    let args = ["-c", cfg.to_str().unwrap(), "-m", "--quiet", "a.b=1,2", "+x.y=2", "++z=3", "~a.c", "seed=1"];
    sb.cmd().args(args).args(["hydra.sweep.dir=out", "--", fixture(), "echo"]).assert().success();
    let multirun: serde_yaml::Value = read_yaml(sb.path().join("out/multirun.yaml"));
    let app: serde_yaml::Value = serde_yaml::from_str("a: {b: 0}\nx: {y: 2}\nz: 3\nseed: 1\n").unwrap();
    for key in ["a", "x", "z", "seed"] {
        assert_eq!(multirun[key], app[key], "{key}");
    }
    // The sweeper's params, fixed or not, are the sweeper's: not applied here, and recorded
    // as strings.
    assert_eq!(multirun["w"], 0);
    assert_eq!(multirun["hydra"]["sweeper"]["params"]["q"], "1,2");
    assert_eq!(multirun["hydra"]["sweeper"]["params"]["w"], "7");
    assert_eq!(multirun["hydra"]["job"]["override_dirname"], "++z=3,+x.y=2,a.b=1,2,~a.c");
    let hydra_overrides: Vec<String> = serde_yaml::from_value(multirun["hydra"]["overrides"]["hydra"].clone()).unwrap();
    assert_eq!(hydra_overrides, ["hydra.sweep.dir=out", "hydra.mode=MULTIRUN"]);
    // A second sweep into the same dir gets `out_1`, and its files say so.
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "a.b=3", "hydra.sweep.dir=out"])
        .args(["--", fixture(), "echo"])
        .assert()
        .success();
    let again: serde_yaml::Value = read_yaml(sb.path().join("out_1/multirun.yaml"));
    assert_eq!(again["hydra"]["sweep"]["dir"], "out_1");
    let job: serde_yaml::Value = read_yaml(sb.path().join("out_1/0/.hydra/hydra.yaml"));
    assert_eq!(job["hydra"]["sweep"]["dir"], "out_1");
    assert_eq!(job["hydra"]["runtime"]["output_dir"], sb.path().join("out_1/0").to_str().unwrap());
}

#[test]
fn hydra_launcher_n_jobs_works_with_the_seed_s_params_form_too() {
    // The current plugin's spelling, on the seed's `class`/`params` file.
    let sb = Sandbox::new();
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/joblib.yaml");
    let out = sb
        .cmd()
        .args(["-c", seed.to_str().unwrap(), "-m", "task=1,2", "hydra.launcher.n_jobs=1", "--", fixture(), "echo"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Joblib.Parallel(n_jobs=1,"), "{stdout}");
    // A key the launcher does not have is still an error.
    let out = sb
        .cmd()
        .args(["-c", seed.to_str().unwrap(), "-m", "task=1", "hydra.launcher.n_job=1", "--", fixture(), "echo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did you mean `n_jobs`?") && stderr.contains("hydra.launcher.n_job=1"), "{stderr}");
}

#[test]
fn output_subdir_moves_or_drops_the_per_job_files_as_in_hydra() {
    let sb = Sandbox::new();
    // null: no per-job YAML at all, and no ORCHESTRATOR_CONFIG to point at one.
    let cfg = sb.write("c.yaml", &format!("{FAST}  output_subdir: null\n"));
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "a=1", "hydra.sweep.dir=none"])
        .args(["--", fixture(), "echo"])
        .assert()
        .success();
    let job = sb.path().join("none/0");
    let mut names: Vec<String> =
        std::fs::read_dir(&job).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["echo.txt", "fixture.log"]);
    let echo = std::fs::read_to_string(job.join("echo.txt")).unwrap();
    let env: serde_json::Value = serde_json::from_str(echo.lines().nth(1).unwrap()).unwrap();
    assert!(env.get("ORCHESTRATOR_CONFIG").is_none(), "{env}");
    let multirun: serde_yaml::Value = read_yaml(sb.path().join("none/multirun.yaml"));
    assert!(multirun["hydra"]["output_subdir"].is_null());
    // Another name: the files go there, and the records say so.
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "a=1", "hydra.output_subdir=meta", "hydra.sweep.dir=meta"])
        .args(["--", fixture(), "echo"])
        .assert()
        .success();
    let hydra: serde_yaml::Value = read_yaml(sb.path().join("meta/0/meta/hydra.yaml"));
    assert_eq!(hydra["hydra"]["output_subdir"], "meta");
    assert!(sb.path().join("meta/0/meta/config.yaml").is_file());
    assert!(!sb.path().join("meta/0/.hydra").exists());
    // A path out of the job's dir is a config error; nothing is created.
    for bad in ["hydra.output_subdir=/tmp/x", "hydra.output_subdir=../x", "hydra.output_subdir="] {
        let out = sb
            .cmd()
            .args(["-c", cfg.to_str().unwrap(), "-m", "a=1", bad, "hydra.sweep.dir=bad"])
            .args(["--", fixture(), "echo"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("hydra.output_subdir must be a relative path"), "{bad}");
        assert!(!sb.path().join("bad").exists(), "{bad}");
    }
}

#[test]
fn hydra_yaml_types_the_launcher_keys_as_the_plugin_does() {
    // JoblibLauncherConf: `timeout: Optional[float]`, `batch_size: str`, ...
    let sb = Sandbox::new();
    let cfg = sb.write(
        "c.yaml",
        "hydra:\n  launcher:\n    _target_: hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher\n    timeout: 30\n    batch_size: 8\n    pre_dispatch: 4\n",
    );
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "a=1", "hydra.sweep.dir=o"])
        .args(["--", fixture(), "echo"])
        .assert()
        .success();
    let hydra: serde_yaml::Value = read_yaml(sb.path().join("o/0/.hydra/hydra.yaml"));
    let launcher = &hydra["hydra"]["launcher"];
    assert_eq!(launcher["timeout"], serde_yaml::Value::from(30.0));
    assert_eq!(launcher["batch_size"], "8");
    assert_eq!(launcher["pre_dispatch"], "4");
    assert_eq!(launcher["n_jobs"], -1);
    // hydra.job.chdir is null unless given, as Hydra writes it.
    assert!(hydra["hydra"]["job"]["chdir"].is_null());
}

#[test]
fn resume_reads_a_journal_that_shows_the_jobs_in_an_earlier_version_s_words() {
    // Versions before 2026-11-25 wrote `flag=true` and `~b` where Hydra (and now this one)
    // writes `flag=True` and `~b=null`: the same jobs.
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", &format!("b: 1\n{FAST}"));
    let cfg = cfg.to_str().unwrap();
    sb.cmd()
        .args(["-c", cfg, "-m", "--quiet", "task=1,2", "flag=true", "~b", "--", fixture(), "fail-on", "2"])
        .assert()
        .code(1);
    let sweep = sb.sweep_dir();
    let jsonl = sweep.join("jobs.jsonl");
    let text = std::fs::read_to_string(&jsonl).unwrap();
    assert!(text.contains(r#""flag=True","~b=null""#), "{text}");
    std::fs::write(&jsonl, text.replace("flag=True", "flag=true").replace("~b=null", "~b")).unwrap();
    let out = sb
        .cmd()
        .args(["-c", cfg, "--resume", sweep.to_str().unwrap(), "--", fixture(), "fail-on", "99"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 of 2 jobs already succeeded"), "{stdout}");
}
