//! Output capture: huge lines, binary bytes, both streams, crashes.

use crate::common::*;

#[test]
fn fifty_megabytes_without_newline_are_logged_exactly() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let size: usize = 50 * 1024 * 1024;
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "task=1", "--", fixture(), "flood", &size.to_string()])
        .assert()
        .success();
    let sweep = sb.sweep_dir();
    let log = std::fs::read(sweep.join("0/fixture.log")).unwrap();
    let mut payload = 0usize;
    for line in log.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let tag_end = line.windows(2).position(|w| w == b"] ").expect("record prefix");
        let head = String::from_utf8_lossy(&line[..tag_end]);
        if head.ends_with("[stdout~") || head.ends_with("[stdout") {
            let body = &line[tag_end + 2..];
            assert!(body.iter().all(|b| *b == b'x'));
            payload += body.len();
        }
    }
    assert_eq!(payload, size);
    assert_eq!(journal(&sweep)[0]["stdout_bytes"], size as u64);
}

#[test]
fn invalid_utf8_is_kept_byte_exact() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let out = sb.cmd().args(["-c", cfg.to_str().unwrap(), "-m", "task=1", "--", fixture(), "binary"]).output().unwrap();
    assert!(out.status.success());
    let log = std::fs::read(sb.sweep_dir().join("0/fixture.log")).unwrap();
    assert!(log.windows(14).any(|w| w == b"bad \xff\xfe bytes \x80"), "raw bytes in the log");
    assert!(out.stdout.windows(14).any(|w| w == b"bad \xff\xfe bytes \x80"), "raw bytes on the console");
}

#[test]
fn both_streams_are_logged_in_order_with_tags() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "task=1", "--", fixture(), "interleave"])
        .assert()
        .success();
    let log = std::fs::read_to_string(sb.sweep_dir().join("0/fixture.log")).unwrap();
    let outs: Vec<&str> =
        log.lines().filter(|l| l.contains("][stdout] ")).map(|l| l.split("] ").nth(1).unwrap()).collect();
    let errs: Vec<&str> =
        log.lines().filter(|l| l.contains("][stderr] ")).map(|l| l.split("] ").nth(1).unwrap()).collect();
    assert_eq!(outs, (0..200).map(|i| format!("out {i}")).collect::<Vec<_>>());
    assert_eq!(errs, (0..200).map(|i| format!("err {i}")).collect::<Vec<_>>());
}

#[test]
fn console_lines_are_never_spliced() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let out = sb
        .cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "task=1..4", "--", fixture(), "interleave"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let job_lines: Vec<&str> = stdout.lines().filter(|l| !l.contains("[HYDRA]")).collect();
    assert_eq!(job_lines.len(), 800);
    assert!(job_lines.iter().all(|l| l.starts_with("out ") && l[4..].parse::<u32>().is_ok()), "{stdout}");
}

#[test]
fn segfault_is_reported_as_a_signal() {
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    let out = sb.cmd().args(["-c", cfg.to_str().unwrap(), "-m", "task=1", "--", fixture(), "segv"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = &journal(&sb.sweep_dir())[0];
    assert_eq!(r["status"], "signaled");
    assert_eq!(r["signal"], "SIGSEGV");
    assert!(r["exit_code"].is_null());
    assert!(String::from_utf8_lossy(&out.stderr).contains("killed by SIGSEGV"));
}

#[test]
fn children_get_the_default_sigpipe_behaviour() {
    // Rust ignores SIGPIPE in the supervisor; a child must not inherit that, or `yes | head`
    // in a job's shell would print "Broken pipe" errors instead of ending quietly.
    let sb = Sandbox::new();
    let cfg = sb.write("c.yaml", FAST);
    sb.cmd()
        .args(["-c", cfg.to_str().unwrap(), "-m", "--quiet", "task=1", "--", "sh", "-c", "yes | head -n 1"])
        .assert()
        .success();
    let log = std::fs::read_to_string(sb.sweep_dir().join("0/sh.log")).unwrap();
    assert!(!log.contains("Broken pipe"), "{log}");
    assert!(log.contains("][stdout] y\n"), "{log}");
}

/// What a user reads for a sweep with a failure, word for word (times, dates and durations
/// replaced): Hydra's header, the jobs' lines, the failure as it happens, the summary.
#[test]
fn console_of_a_sweep_with_a_failure() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args(["--multirun", "task=1,2,3", "hydra.launcher.params.joblib.n_jobs=1", "--"])
        .args([fixture(), "fail-on", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let console = format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    insta::with_settings!({filters => vec![
        (r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]", "[TIME]"),
        (r"multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", "multirun/[DATE]/[TIME]"),
        (r"in \d+\.\d+s", "in [DURATION]"),
    ]}, {
        insta::assert_snapshot!(console);
    });
}
