//! The bad-input catalogue: every case exits 2 with a message that names the problem,
//! starts no job and creates no output dir. None may panic.

use crate::common::*;

const SEED_HEAD: &str =
    "hydra:\n  launcher:\n    class: hydra_plugins.joblib_launcher.JoblibLauncher\n    params:\n      joblib:\n";

fn seed_with(line: &str) -> String {
    format!("{SEED_HEAD}        {line}\n")
}

struct Case {
    name: &'static str,
    config: Option<String>,
    args: Vec<&'static str>,
    app: Vec<String>,
    expect: &'static [&'static str],
}

fn case(name: &'static str, config: Option<String>, args: &[&'static str], expect: &'static [&'static str]) -> Case {
    Case { name, config, args: args.to_vec(), app: vec![fixture().to_string(), "echo".into()], expect }
}

fn catalogue() -> Vec<Case> {
    vec![
        case("yaml syntax", Some("hydra:\n  launcher: [\n".into()), &[], &["invalid YAML", "c.yaml:"]),
        case("tab indentation", Some("hydra:\n\tlauncher: 1\n".into()), &[], &["invalid YAML"]),
        case("top level list", Some("- a\n- b\n".into()), &[], &["must be a mapping at the top level"]),
        case(
            "unknown joblib key",
            Some(seed_with("n_job: 2")),
            &[],
            &["unknown key `n_job`", "did you mean `n_jobs`", "c.yaml:6:9"],
        ),
        case(
            "unknown hydra key",
            Some("hydra:\n  lancher: {}\n".into()),
            &[],
            &["unknown key `lancher`", "did you mean `launcher`"],
        ),
        case(
            "unknown launcher class",
            Some("hydra:\n  launcher:\n    class: foo.Bar\n".into()),
            &[],
            &["unsupported launcher `foo.Bar`"],
        ),
        case(
            "unknown params key",
            Some(format!("{SEED_HEAD}        n_jobs: 1\n    orchestrator:\n      grace: 1s\n")),
            &[],
            &["unknown key `grace`", "grace_period"],
        ),
        case("n_jobs zero", Some(seed_with("n_jobs: 0")), &[], &["n_jobs == 0 has no meaning", "c.yaml:6:9"]),
        case("n_jobs text", Some(seed_with("n_jobs: many")), &[], &["invalid n_jobs `many`"]),
        case("n_jobs float", Some(seed_with("n_jobs: 1.5")), &[], &["invalid n_jobs `1.5`"]),
        case(
            "bad backend",
            Some(seed_with("backend: lokky")),
            &[],
            &["invalid backend `lokky`", "did you mean `loky`"],
        ),
        case("bad prefer", Some(seed_with("prefer: gpus")), &[], &["invalid prefer `gpus`", "processes, threads"]),
        case("bad require", Some(seed_with("require: everything")), &[], &["invalid require", "sharedmem"]),
        case("bad verbose", Some(seed_with("verbose: loud")), &[], &["invalid verbose"]),
        case("bad timeout", Some(seed_with("timeout: soon")), &[], &["invalid timeout `soon`"]),
        case("negative timeout", Some(seed_with("timeout: -1")), &[], &["invalid timeout `-1`"]),
        case("zero timeout", Some(seed_with("timeout: 0")), &[], &["timeout must be greater than 0"]),
        case("bad duration unit", Some(seed_with("timeout: 5 fortnights")), &[], &["invalid timeout"]),
        case(
            "bad pre_dispatch",
            Some(seed_with("pre_dispatch: 2*n_job")),
            &[],
            &["invalid pre_dispatch `2*n_job`", "unknown name `n_job`"],
        ),
        case("pre_dispatch syntax", Some(seed_with("pre_dispatch: 2*")), &[], &["invalid pre_dispatch"]),
        case(
            "bad batch_size",
            Some(seed_with("batch_size: 0")),
            &[],
            &["batch_size must be `auto` or a positive integer"],
        ),
        case("bad max_nbytes", Some(seed_with("max_nbytes: 1Q")), &[], &["invalid max_nbytes `1Q`", "1024-based"]),
        case("negative max_nbytes", Some(seed_with("max_nbytes: -5")), &[], &["invalid max_nbytes"]),
        case("bad mmap_mode", Some(seed_with("mmap_mode: rw")), &[], &["invalid mmap_mode `rw`", "r, r+, w+"]),
        case("bad temp_folder", Some(seed_with("temp_folder: 3")), &[], &["invalid temp_folder"]),
        case(
            "bad halt",
            Some(format!("{SEED_HEAD}        n_jobs: 1\n    orchestrator:\n      halt: sometimes\n")),
            &[],
            &["invalid halt `sometimes`"],
        ),
        case(
            "slot_env list too short",
            Some(format!("{SEED_HEAD}        n_jobs: 3\n    orchestrator:\n      slot_env:\n        GPU: [0]\n")),
            &[],
            &["slot_env `GPU` lists 1 value(s) but n_jobs is 3"],
        ),
        case(
            "override bad n_jobs",
            None,
            &["hydra.launcher.params.joblib.n_jobs=0"],
            &["n_jobs == 0", "command-line override `hydra.launcher.params.joblib.n_jobs=0`"],
        ),
        case(
            "override unknown launcher key",
            None,
            &["hydra.launcher.n_job=2"],
            &["unknown key `n_job`", "did you mean `n_jobs`"],
        ),
        case(
            "sweep over launcher key",
            None,
            &["hydra.launcher.n_jobs=1,2"],
            &["cannot sweep over `hydra.launcher.n_jobs`"],
        ),
        case("override syntax", None, &["task=1,,2"], &["invalid override `task=1,,2`", "^"]),
        case("override missing equals", None, &["task"], &["invalid override `task`"]),
        case("override unterminated quote", None, &["name='abc"], &["invalid override", "quote"]),
        case("override bad function", None, &["task=rnage(1,3)"], &["rnage", "range"]),
        case("override range step zero", None, &["task=range(1,5,0)"], &["invalid override"]),
        case("sweep without multirun", None, &["task=1,2"], &["--multirun"]),
        case("add existing key", Some("task: 1\n".into()), &["-m", "+task=2"], &["task"]),
        case("delete missing key", None, &["-m", "~nothing"], &["nothing"]),
        case(
            "config file missing",
            None,
            &["--config", "does-not-exist.yaml"],
            &["cannot read config file", "does-not-exist.yaml"],
        ),
        case(
            "bad subdir interpolation",
            Some("hydra:\n  sweep:\n    subdir: ${nope}\n".into()),
            &["-m", "task=1"],
            &["cannot resolve `${nope}`"],
        ),
        case(
            "bad sweep dir interpolation",
            Some("hydra:\n  sweep:\n    dir: out/${when}\n".into()),
            &["-m", "task=1"],
            &["cannot resolve `${when}`"],
        ),
        case(
            "a job in the middle that cannot be composed",
            None,
            &["-m", "a=2,1,2", "~a=2"],
            &["job #1 (a=1 ~a=2): could not delete from config: the value of `a` is 1 and not 2"],
        ),
        case(
            "temp_folder that is a file",
            None,
            &["-m", "task=1", "hydra.launcher.params.joblib.temp_folder=plain.txt"],
            &["/plain.txt (temp_folder in the config) cannot hold spill files: it is not a directory"],
        ),
        case(
            "unknown override_dirname key",
            Some("hydra:\n  job:\n    config:\n      override_dirname:\n        exclude: [seed]\n".into()),
            &["-m", "task=1"],
            &["unknown key `exclude`", "exclude_keys"],
        ),
        case(
            "env_set name with =",
            Some("hydra:\n  job:\n    env_set:\n      A=B: x\n".into()),
            &["-m", "task=1"],
            &["`A=B` is not a variable name"],
        ),
        case(
            "sweep dir that names no new dir",
            None,
            &["-m", "task=1", "hydra.sweep.dir=."],
            &["hydra.sweep.dir `.` names no directory to create", "hydra.sweep.dir=multirun/my_sweep"],
        ),
        case("empty sweep dir", None, &["-m", "task=1", "hydra.sweep.dir="], &["hydra.sweep.dir is empty"]),
        case(
            "run dir that names no new dir",
            None,
            &["task=1", "hydra.run.dir=.."],
            &["hydra.run.dir `..` names no directory"],
        ),
        Case {
            name: "missing app",
            config: None,
            args: vec!["-m", "task=1"],
            app: vec!["no-such-app-xyz".into()],
            expect: &["app `no-such-app-xyz` was not found"],
        },
        Case {
            name: "app not executable",
            config: None,
            args: vec!["-m", "task=1"],
            app: vec!["./plain.txt".into()],
            expect: &["is not executable", "chmod +x"],
        },
        Case {
            name: "app is a directory",
            config: None,
            args: vec!["-m", "task=1"],
            app: vec!["./adir".into()],
            expect: &["is a directory"],
        },
    ]
}

#[test]
fn every_bad_input_exits_2_with_a_clear_message_and_creates_nothing() {
    let cases = catalogue();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    // Every message, word for word, as a reviewed snapshot: a change to what users read
    // shows up in review.
    let mut transcript = String::new();
    for c in cases {
        let sb = Sandbox::new();
        sb.write("plain.txt", "not a program");
        std::fs::create_dir(sb.path().join("adir")).unwrap();
        let mut cmd = sb.cmd();
        if let Some(text) = &c.config {
            let p = sb.write("c.yaml", text);
            cmd.arg("--config").arg(p.file_name().unwrap());
        }
        cmd.args(&c.args).arg("--").args(&c.app);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let mut problems = Vec::new();
        if out.status.code() != Some(2) {
            problems.push(format!("exit code {:?}", out.status.code()));
        }
        if stderr.contains("panicked") {
            problems.push("panicked".into());
        }
        for want in c.expect {
            if !stderr.contains(want) {
                problems.push(format!("missing `{want}`"));
            }
        }
        if !sb.nothing_created() {
            problems.push("created an output dir".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}\n--- stderr:\n{stderr}", c.name, problems.join(", ")));
        }
        let shown = stderr.replace(&sb.path().display().to_string(), "[SANDBOX]").replace(fixture(), "[FIXTURE]");
        transcript.push_str(&format!("### {}: {}\n{shown}\n", c.name, c.args.join(" ")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    insta::assert_snapshot!("bad_input_messages", transcript);
}

#[test]
fn usage_errors_from_clap_exit_2() {
    let sb = Sandbox::new();
    // No `--` and no app.
    sb.cmd().args(["task=1"]).assert().code(2);
    // Unknown flag.
    sb.cmd().args(["--frobnicate", "--", "true"]).assert().code(2);
    assert!(sb.nothing_created());
}
