//! The seed sweep end to end: header, app lines, output tree, logs, journal.

use crate::common::*;

/// The Rust example app under its own name (`my_app`), as a user would build it.
fn rust_app(sb: &Sandbox) -> String {
    let dest = sb.path().join("my_app");
    std::fs::copy(env!("CARGO_BIN_EXE_example-my-app"), &dest).unwrap();
    dest.to_string_lossy().into_owned()
}

#[test]
fn seed_sweep_with_the_rust_example_writes_hydra_tree() {
    let sb = Sandbox::new();
    let app = rust_app(&sb);
    check_seed_sweep(&sb, &[app.as_str()]);
}

/// Needs python3, which `.ci/run` installs; run with `cargo test -- --ignored`.
#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn seed_sweep_with_the_python_example_writes_hydra_tree() {
    let sb = Sandbox::new();
    let app = repo().join("examples/my_app.py");
    check_seed_sweep(&sb, &["python3", app.to_str().unwrap()]);
}

fn check_seed_sweep(sb: &Sandbox, app: &[&str]) {
    let config = repo().join("config/joblib.yaml");
    let out = sb
        .cmd()
        .args(["--config", config.to_str().unwrap(), "--multirun", "task=1..5", "--"])
        .args(app)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);

    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].ends_with(
            "[HYDRA] Joblib.Parallel(n_jobs=-1,backend=loky,prefer=processes,require=None,verbose=0,timeout=None,pre_dispatch=2*n_jobs,batch_size=auto,temp_folder=None,max_nbytes=1M,mmap_mode=r) is launching 5 jobs"
        ),
        "{}",
        lines[0]
    );
    let sweep = sb.sweep_dir();
    let rel = sweep.strip_prefix(sb.path()).unwrap();
    assert!(
        lines[1].ends_with(&format!("[HYDRA] Launching jobs, sweep output dir : {}", rel.display())),
        "{}",
        lines[1]
    );
    for i in 0..5 {
        assert!(lines[2 + i].ends_with(&format!("[HYDRA] \t#{i} : task={}", i + 1)), "{}", lines[2 + i]);
    }
    for task in 1..=5 {
        let want = format!("executing task {task} ...");
        assert_eq!(
            lines.iter().filter(|l| l.contains("][__main__][INFO] - Process ID ") && l.ends_with(&want)).count(),
            1,
            "{stdout}"
        );
    }
    assert!(lines.last().unwrap().contains("5 of 5 jobs succeeded"), "{stdout}");

    let multirun = std::fs::read_to_string(sweep.join("multirun.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&multirun).unwrap();
    assert_eq!(doc["hydra"]["launcher"]["n_jobs"], serde_yaml::Value::from(-1));
    assert!(doc["hydra"]["launcher"]["backend"].is_null());
    assert_eq!(doc["hydra"]["overrides"]["task"][0].as_str(), Some("task=1..5"));
    assert_eq!(doc["hydra"]["job"]["num"].as_str(), Some("???"));

    let records = journal(&sweep);
    assert_eq!(records.len(), 5);
    for (i, r) in records.iter().enumerate() {
        let dir = sweep.join(i.to_string());
        assert_eq!(r["num"], i as u64);
        assert_eq!(r["status"], "succeeded");
        assert_eq!(r["exit_code"], 0);
        assert_eq!(r["timed_out"], false);
        assert_eq!(r["overrides"][0], format!("task={}", i + 1));
        assert!(r["duration_s"].as_f64().unwrap() >= 1.0);
        assert!(r["start"].as_str().unwrap().ends_with('Z'));
        assert_eq!(std::fs::read_to_string(dir.join(".hydra/config.yaml")).unwrap(), format!("task: {}\n", i + 1));
        assert_eq!(std::fs::read_to_string(dir.join(".hydra/overrides.yaml")).unwrap(), format!("- task={}\n", i + 1));
        let hydra: serde_yaml::Value = read_yaml(dir.join(".hydra/hydra.yaml"));
        assert_eq!(hydra["hydra"]["job"]["num"], serde_yaml::Value::from(i as u64));
        assert_eq!(hydra["hydra"]["job"]["id"].as_str(), Some(format!("my_app_{i}").as_str()));
        assert_eq!(hydra["hydra"]["job"]["override_dirname"].as_str(), Some(format!("task={}", i + 1).as_str()));
        assert_eq!(hydra["hydra"]["runtime"]["choices"]["hydra/launcher"], "joblib");
        // The keys in Hydra's order (hydra-core 1.3.8's hydra.yaml, less its logging and help
        // blocks).
        let keys: Vec<&str> = hydra["hydra"].as_mapping().unwrap().keys().filter_map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "run",
                "sweep",
                "launcher",
                "sweeper",
                "env",
                "mode",
                "searchpath",
                "callbacks",
                "output_subdir",
                "overrides",
                "job",
                "runtime",
                "verbose"
            ]
        );
        let log = std::fs::read_to_string(dir.join("my_app.log")).unwrap();
        assert_eq!(r["log"].as_str().unwrap(), rel.join(i.to_string()).join("my_app.log").to_str().unwrap());
        let log_lines: Vec<&str> = log.lines().collect();
        assert!(log_lines[0].contains("][orchestrator] started pid "), "{log}");
        assert!(
            log_lines[1].contains("][stdout] [") && log_lines[1].ends_with(&format!("executing task {} ...", i + 1)),
            "{log}"
        );
        assert!(log_lines.last().unwrap().contains("][orchestrator] exit code 0 after "), "{log}");
    }
}
