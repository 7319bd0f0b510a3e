//! Large arguments: the max_nbytes boundary, sharing, mmap modes, cleanup, ENOSPC.

use std::path::{Path, PathBuf};

use crate::common::*;

fn config(sb: &Sandbox, extra: &str) -> PathBuf {
    let tmp = sb.path().join("tmpf");
    std::fs::create_dir_all(&tmp).unwrap();
    sb.write(
        "c.yaml",
        &format!(
            "hydra:\n  launcher:\n    n_jobs: 1\n    temp_folder: {}\n{extra}    orchestrator:\n      grace_period: 300ms\n",
            tmp.display()
        ),
    )
}

fn reports(sweep: &Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| std::fs::read_to_string(sweep.join(i.to_string()).join("arg.txt")).unwrap().trim().to_string())
        .collect()
}

/// `orchestrator run -c <cfg> -m --quiet <args> -- fixture <fixture_args>`, which must succeed.
fn sweep_ok(sb: &Sandbox, cfg: &Path, args: &[&str], fixture_args: &[&str]) {
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet"])
        .args(args)
        .arg("--")
        .arg(fixture())
        .args(fixture_args)
        .assert()
        .success();
}

/// The value of `key=` in a fixture's report line.
fn field(line: &str, key: &str) -> String {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or_default().to_string()
}

fn spill_dirs(folder: &Path) -> Vec<String> {
    std::fs::read_dir(folder)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("orchestrator-spill-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn values_spill_strictly_above_max_nbytes() {
    let sb = Sandbox::new();
    let cfg = config(&sb, "    max_nbytes: 100\n");
    for n in [99, 100, 101] {
        sb.write(&format!("f{n}"), &"a".repeat(n));
    }
    sweep_ok(&sb, &cfg, &["data=@f99,@f100,@f101"], &["argcheck", "data"]);
    let sweep = sb.sweep_dir();
    let r = reports(&sweep, 3);
    assert!(r[0].starts_with("inline len=99"), "{r:?}");
    assert!(r[1].starts_with("inline len=100"), "{r:?}");
    assert!(r[2].starts_with("file shared=true size=101"), "{r:?}");
    assert!(r[2].contains(&format!("path={}", sb.path().join("tmpf").display())), "{r:?}");
    let argv2 = std::fs::read_to_string(sweep.join("2/argv.txt")).unwrap();
    assert!(argv2.contains(" data=@/"), "argv carries a reference, not the bytes: {argv2}");
    assert!(spill_dirs(&sb.path().join("tmpf")).is_empty(), "spill dir removed at the end");
}

#[test]
fn one_mebibyte_is_1048576_bytes() {
    let sb = Sandbox::new();
    let cfg = config(&sb, "    max_nbytes: 1M\n");
    std::fs::write(sb.path().join("exact"), vec![b'b'; 1_048_576]).unwrap();
    std::fs::write(sb.path().join("over"), vec![b'b'; 1_048_577]).unwrap();
    sweep_ok(&sb, &cfg, &["data=@exact,@over"], &["argcheck", "data"]);
    let r = reports(&sb.sweep_dir(), 2);
    // Too big for argv but not above max_nbytes: the job's own copy, not the shared spill.
    assert!(r[0].starts_with("file shared=false size=1048576"), "{r:?}");
    assert!(r[1].starts_with("file shared=true size=1048577"), "{r:?}");
}

#[test]
fn jobs_sharing_a_value_map_one_file() {
    let sb = Sandbox::new();
    let cfg = config(&sb, "    max_nbytes: 1K\n");
    std::fs::write(sb.path().join("big"), vec![7u8; 300_000]).unwrap();
    sweep_ok(&sb, &cfg, &["data=@big", "x=1,2,3"], &["argcheck", "data"]);
    let r = reports(&sb.sweep_dir(), 3);
    assert!(r.iter().all(|l| l.starts_with("file shared=true size=300000")), "{r:?}");
    assert_eq!(field(&r[0], "ino="), field(&r[1], "ino="));
    assert_eq!(field(&r[1], "ino="), field(&r[2], "ino="));
    assert!(r.iter().all(|l| l.contains("len=300000")));
}

#[test]
fn mmap_modes_are_honoured_by_real_children() {
    for (mode, first, second) in [
        ("r", "refused: argument `data` is mapped read-only", "file=a"),
        ("r+", "wrote, mine=X; file=X", "file=X"),
        ("c", "wrote, mine=X; file=a", "file=a"),
    ] {
        let sb = Sandbox::new();
        let cfg = config(&sb, &format!("    max_nbytes: 10\n    mmap_mode: {mode}\n"));
        sb.write("v", &"a".repeat(64));
        // n_jobs: 1, so job 1 runs after job 0 and sees what job 0 left in the shared file.
        sweep_ok(&sb, &cfg, &["data=@v", "x=1,2"], &["argwrite", "data"]);
        let r = reports(&sb.sweep_dir(), 2);
        assert!(r[0].starts_with(first), "mode {mode}: {r:?}");
        assert!(r[1].ends_with(second), "mode {mode}: {r:?}");
    }
}

#[test]
fn the_spill_dir_is_removed_after_a_timeout_and_after_ctrl_c() {
    let sb = Sandbox::new();
    let cfg = config(&sb, "    max_nbytes: 10\n    timeout: 0.5\n");
    sb.write("v", &"a".repeat(64));
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "data=@v", "--", fixture(), "hang-ignore-term"])
        .assert()
        .code(1);
    assert!(spill_dirs(&sb.path().join("tmpf")).is_empty());

    let sb = Sandbox::new();
    let cfg = config(&sb, "    max_nbytes: 10\n");
    sb.write("v", &"a".repeat(64));
    let child = sb.spawn(&["-c", cfg.to_str().unwrap(), "-m", "data=@v", "x=1,2,3", "--", fixture(), "sleep", "30"]);
    wait_for(20, "the spill dir", || !spill_dirs(&sb.path().join("tmpf")).is_empty());
    wait_for(20, "a job to start", || sb.sweep_dirs().first().is_some_and(|s| s.join("0/fixture.log").exists()));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(spill_dirs(&sb.path().join("tmpf")).is_empty());
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn running_out_of_space_in_temp_folder_starts_nothing() {
    let sb = Sandbox::new();
    let tiny = sb.path().join("tiny");
    std::fs::create_dir(&tiny).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&tiny)
        .status()
        .unwrap();
    assert!(status.success(), "this test mounts a 1 MiB tmpfs (needs root, as CI has)");
    let _guard = Mount(tiny.clone());
    let cfg = sb.write(
        "c.yaml",
        &format!("hydra:\n  launcher:\n    n_jobs: 1\n    temp_folder: {}\n    max_nbytes: 1K\n", tiny.display()),
    );
    std::fs::write(sb.path().join("big"), vec![1u8; 2 << 20]).unwrap();
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "data=@big", "--", fixture(), "argcheck", "data"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains(&format!("not enough space in temp_folder {}", tiny.display())), "{stderr}");
    assert!(stderr.contains("2097152 bytes needed"), "{stderr}");
    assert!(sb.nothing_created(), "no sweep dir");
    assert!(spill_dirs(&tiny).is_empty(), "no half-written spill left");
}

#[test]
fn a_200_megabyte_argument_reaches_8_jobs_through_one_file() {
    let sb = Sandbox::new();
    let cfg = config(&sb, "    max_nbytes: 1M\n");
    let data: Vec<u8> = (0..200_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(sb.path().join("huge"), &data).unwrap();
    drop(data);
    sweep_ok(&sb, &cfg, &["hydra.launcher.n_jobs=2", "data=@huge", "x=1..8"], &["argcheck", "data"]);
    let r = reports(&sb.sweep_dir(), 8);
    for l in &r {
        assert!(l.starts_with("file shared=true size=200000000"), "{l}");
        assert_eq!(field(l, "ino="), field(&r[0], "ino="));
        assert_eq!(field(l, "sum="), field(&r[0], "sum="));
    }
    assert!(spill_dirs(&sb.path().join("tmpf")).is_empty());
}

#[test]
fn a_missing_argument_file_is_a_usage_error() {
    let sb = Sandbox::new();
    let cfg = config(&sb, "");
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "data=@nope.bin", "--", fixture(), "argcheck", "data"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the argument file `@nope.bin`"));
    assert!(sb.nothing_created());
}

/// Needs python3 (`.ci/run` has it): the Python module reads a spilled argument.
#[test]
#[ignore = "needs python3; .ci/run runs it"]
fn the_python_module_reads_spilled_arguments() {
    let sb = Sandbox::new();
    let cfg = config(&sb, "    max_nbytes: 1K\n");
    std::fs::write(sb.path().join("big"), vec![3u8; 100_000]).unwrap();
    let script = repo().join("examples/sum_arg.py");
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "data=@big", "x=1,2", "--", "python3", script.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("job 0: 100000 bytes, sum 300000"), "{stdout}");
    assert!(stdout.contains("job 1: 100000 bytes, sum 300000"), "{stdout}");
}

#[test]
fn big_app_config_values_are_spilled_once_not_copied_per_job() {
    let sb = Sandbox::new();
    let tmp = sb.path().join("tmpf");
    std::fs::create_dir_all(&tmp).unwrap();
    let table = "z".repeat(5000);
    let cfg = sb.write(
        "c.yaml",
        &format!(
            "table: {table}\nsmall: 1\nhydra:\n  launcher:\n    n_jobs: 1\n    temp_folder: {}\n    max_nbytes: 1K\n",
            tmp.display()
        ),
    );
    sweep_ok(&sb, &cfg, &["x=1,2"], &["argcheck", "table"]);
    let sweep = sb.sweep_dir();
    let r = reports(&sweep, 2);
    assert!(r.iter().all(|l| l.starts_with("file shared=true size=5000")), "{r:?}");
    assert_eq!(field(&r[0], "ino="), field(&r[1], "ino="));
    let config = std::fs::read_to_string(sweep.join("0/.hydra/config.yaml")).unwrap();
    assert!(config.contains("table: '@") && config.contains("small: 1") && config.len() < 1000, "{config}");
}

#[test]
fn sigterm_cleans_the_spill_dir_and_a_sigkilled_supervisors_dir_is_cleaned_next_run() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for (sig, code) in [(Signal::SIGTERM, Some(143)), (Signal::SIGKILL, None)] {
        let sb = Sandbox::new();
        let cfg = config(&sb, "    max_nbytes: 10\n");
        sb.write("v", &"a".repeat(64));
        let tmpf = sb.path().join("tmpf");
        let child =
            sb.spawn(&["-c", cfg.to_str().unwrap(), "-m", "data=@v", "x=1,2,3", "--", fixture(), "sleep", "30"]);
        wait_for(20, "a job to start", || sb.sweep_dirs().first().is_some_and(|s| s.join("0/fixture.log").exists()));
        assert_eq!(spill_dirs(&tmpf).len(), 1);
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), code, "{sig:?}");
        if code.is_some() {
            assert!(spill_dirs(&tmpf).is_empty(), "SIGTERM removes the spill dir");
            continue;
        }
        // SIGKILL: nothing could clean up; the jobs died with the supervisor (parent-death
        // signal) and the next run in the same temp_folder removes the orphaned dir.
        assert_eq!(spill_dirs(&tmpf).len(), 1, "left by the killed supervisor");
        sb.write("c2.yaml", &std::fs::read_to_string(&cfg).unwrap());
        sb.cmd()
            .args(["-c", "c2.yaml", "-m", "--quiet", "data=@v", "--", fixture(), "argcheck", "data"])
            .assert()
            .success();
        assert!(spill_dirs(&tmpf).is_empty(), "the next run cleaned the stale dir");
    }
}

#[test]
fn a_value_that_starts_with_at_reaches_the_job_as_itself() {
    // Inline, `@other` would read to the workers as "the file `other`".
    let sb = Sandbox::new();
    let cfg = config(&sb, "    max_nbytes: 1M\n");
    sb.write("at.txt", "@other");
    sb.write("other", "WRONG!!!");
    sweep_ok(&sb, &cfg, &["data=@at.txt"], &["argcheck", "data"]);
    let r = reports(&sb.sweep_dir(), 1);
    assert!(r[0].starts_with("file shared=false size=6"), "{r:?}");
    assert!(r[0].contains("len=6"), "{r:?}");
}

#[test]
fn a_relative_temp_folder_still_works_for_jobs_in_their_own_dirs() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path().join("reltf")).unwrap();
    let cfg = sb.write(
        "c.yaml",
        "hydra:\n  job:\n    chdir: true\n  launcher:\n    n_jobs: 1\n    temp_folder: reltf\n    max_nbytes: 10\n",
    );
    sb.write("v", &"a".repeat(64));
    sweep_ok(&sb, &cfg, &["data=@v", "x=1,2"], &["argcheck", "data"]);
    let r = reports(&sb.sweep_dir(), 2);
    assert!(r.iter().all(|l| l.starts_with("file shared=true size=64")), "{r:?}");
    assert!(r.iter().all(|l| field(l, "path=").starts_with(&sb.path().join("reltf").display().to_string())), "{r:?}");
}

#[test]
fn an_argument_file_that_is_a_fifo_is_refused_at_once() {
    // Opening a FIFO waits for a writer: the check must not open it.
    let sb = Sandbox::new();
    let fifo = sb.path().join("ff");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = sb
        .cmd()
        .args(["-m", "x=@ff", "--", fixture(), "echo"])
        .timeout(std::time::Duration::from_secs(10))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
    assert!(sb.nothing_created());
}

#[test]
fn inline_values_past_the_environment_budget_go_to_files_instead_of_failing_the_job() {
    // Each fits in argv, but both inline would put 140 KB in ORCHESTRATOR_OVERRIDES, over
    // Linux's 128 KiB for one environment string: the job would not start (E2BIG).
    let sb = Sandbox::new();
    let cfg = config(&sb, "    max_nbytes: 1M\n");
    let x = format!("x={}", "a".repeat(70_000));
    let y = format!("y={}", "b".repeat(70_000));
    sweep_ok(&sb, &cfg, &[x.as_str(), y.as_str()], &["argcheck", "y"]);
    let r = reports(&sb.sweep_dir(), 1);
    assert!(r[0].starts_with("file shared=false size=70000"), "{r:?}");
}
