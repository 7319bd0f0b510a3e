//! The service over real HTTP on 127.0.0.1: run a sweep, stream its events, cancel another
//! and check that none of its processes survived, reject bad bodies with 400.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Service {
    child: Child,
    addr: String,
    _root: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Service {
    start_with(&[])
}

fn start_with(extra: &[&str]) -> Service {
    let root = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_embed_service"))
        .args(["--listen", "127.0.0.1:0", "--root", root.path().to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").expect("listening line").to_string();
    Service { child, addr, _root: root }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

const CONFIG: &str = "hydra:\n  launcher:\n    n_jobs: 2\n    orchestrator:\n      grace_period: 300ms\n";

fn wait_state(addr: &str, id: u64, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http(addr, "GET", &format!("/sweeps/{id}"), None);
        assert_eq!(code, 200, "{body}");
        let v = json_of(&body);
        if v["state"] == want {
            return v;
        }
        assert!(Instant::now() < deadline, "sweep {id} never reached {want}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !matches!(s.rsplit(')').next().and_then(|r| r.split_whitespace().next()), Some("Z") | Some("X")))
        .unwrap_or(false)
}

#[test]
fn run_stream_cancel_and_reject() {
    let svc = start();
    let addr = svc.addr.as_str();

    // 1. A sweep runs to the end; its outcomes are in the status.
    let req = json!({"config": CONFIG, "overrides": ["task=1..3"], "command": ["sh", "-c", "echo job $0"]});
    let (code, body) = http(addr, "POST", "/sweeps", Some(&req.to_string()));
    assert_eq!(code, 201, "{body}");
    let id = json_of(&body)["id"].as_u64().unwrap();
    let done = wait_state(addr, id, "finished");
    let records = done["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r["status"] == "succeeded"), "{done}");

    // 2. Events stream as Server-Sent Events until the sweep ends.
    let req =
        json!({"config": CONFIG, "overrides": ["task=1..2"], "command": ["sh", "-c", "sleep 0.5; echo hello $0"]});
    let (code, body) = http(addr, "POST", "/sweeps", Some(&req.to_string()));
    assert_eq!(code, 201, "{body}");
    let id2 = json_of(&body)["id"].as_u64().unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /sweeps/{id2}/events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Read to the end: the stream must close once the sweep has ended.
    let mut events = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.expect("the event stream ends with the sweep");
        if let Some(data) = line.strip_prefix("data: ") {
            events.push(json_of(data));
        }
    }
    assert!(events.iter().any(|e| e["event"] == "output" && e["line"] == "hello task=2"), "{events:?}");
    assert_eq!(events.iter().filter(|e| e["event"] == "job_finished").count(), 2);
    let last = events.last().unwrap();
    assert_eq!((&last["event"], &last["state"]), (&json!("sweep_finished"), &json!("finished")), "{events:?}");

    // A stream opened after the end gets the last event and ends; a DELETE is too late.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /sweeps/{id}/events HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let data: Vec<Value> = BufReader::new(s)
        .lines()
        .map(|l| l.expect("the event stream of an ended sweep ends"))
        .filter_map(|l| l.strip_prefix("data: ").map(json_of))
        .collect();
    assert_eq!(data, [json!({"event": "sweep_finished", "state": "finished", "finished": 3})]);
    let (code, body) = http(addr, "DELETE", &format!("/sweeps/{id}"), None);
    assert_eq!(code, 409, "{body}");
    assert_eq!(json_of(&body)["state"], "finished");

    // A halt policy that stops a sweep is not a cancel.
    let halting = format!("{CONFIG}      halt: soon\n").replace("n_jobs: 2", "n_jobs: 1");
    let req = json!({"config": halting, "overrides": ["task=1..3"], "command": ["false"]});
    let (code, body) = http(addr, "POST", "/sweeps", Some(&req.to_string()));
    assert_eq!(code, 201, "{body}");
    let halted = wait_state(addr, json_of(&body)["id"].as_u64().unwrap(), "halted");
    assert_eq!(halted["records"].as_array().unwrap().len(), 1, "{halted}");

    // 3. Cancel a sweep mid-way: every process it started is gone.
    let script = "echo $$ > $ORCHESTRATOR_JOB_DIR/pids; sleep 60 & echo $! >> $ORCHESTRATOR_JOB_DIR/pids; wait";
    let req = json!({"config": CONFIG, "overrides": ["task=1..6"], "command": ["sh", "-c", script]});
    let (code, body) = http(addr, "POST", "/sweeps", Some(&req.to_string()));
    assert_eq!(code, 201, "{body}");
    let created = json_of(&body);
    let id3 = created["id"].as_u64().unwrap();
    let dir = std::path::PathBuf::from(created["sweep_dir"].as_str().unwrap());
    let pids = || -> Vec<u32> {
        (0..6)
            .filter_map(|n| std::fs::read_to_string(dir.join(n.to_string()).join("pids")).ok())
            .flat_map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<u32>>())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids().len() < 4 {
        assert!(Instant::now() < deadline, "jobs did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, body) = http(addr, "DELETE", &format!("/sweeps/{id3}"), None);
    assert_eq!(code, 202, "{body}");
    let end = wait_state(addr, id3, "cancelled");
    assert_eq!(end["records"].as_array().unwrap().len(), 2, "only the running jobs ended; none started after: {end}");
    let pids = pids();
    let deadline = Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "survivors: {:?}", pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(20));
    }

    // 4. Bad bodies get 400 with a message naming the field.
    for (body, want) in [
        (r#"{"overrides": []}"#.to_string(), "missing field `command`"),
        (r#"{"comand": ["true"]}"#.to_string(), "unknown field `comand`"),
        (r#"{"command": "true"}"#.to_string(), "invalid type"),
        (r#"{"command": []}"#.to_string(), "field `command` must not be empty"),
        ("not json".to_string(), "invalid request body"),
        (json!({"config": "hydra:\n  launcher:\n    n_jobs: 0\n", "command": ["true"]}).to_string(), "n_jobs == 0"),
        (json!({"overrides": ["task=1,,2"], "command": ["true"]}).to_string(), "invalid override `task=1,,2`"),
        (json!({"command": ["no-such-program-xyz"]}).to_string(), "was not found"),
    ] {
        let (code, resp) = http(addr, "POST", "/sweeps", Some(&body));
        assert_eq!(code, 400, "{body} -> {resp}");
        assert!(json_of(&resp)["error"].as_str().unwrap().contains(want), "{body} -> {resp}");
    }
    let (code, _) = http(addr, "GET", "/sweeps/999", None);
    assert_eq!(code, 404);
}

#[test]
fn ended_sweeps_beyond_keep_finished_are_forgotten() {
    let svc = start_with(&["--keep-finished", "1"]);
    let addr = svc.addr.as_str();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let req = json!({"config": CONFIG, "overrides": ["task=1,2"], "command": ["true"]});
        let (code, body) = http(addr, "POST", "/sweeps", Some(&req.to_string()));
        assert_eq!(code, 201, "{body}");
        let id = json_of(&body)["id"].as_u64().unwrap();
        wait_state(addr, id, "finished");
        ids.push(id);
    }
    let (code, body) = http(addr, "GET", &format!("/sweeps/{}", ids[0]), None);
    assert_eq!(code, 404, "{body}");
    assert!(json_of(&body)["error"].as_str().unwrap().contains("forgotten"), "{body}");
    let (code, body) = http(addr, "GET", &format!("/sweeps/{}", ids[1]), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_of(&body)["records"].as_array().unwrap().len(), 2);
}

#[test]
fn the_sweep_that_ended_last_is_kept_whatever_its_id() {
    let svc = start_with(&["--keep-finished", "1"]);
    let addr = svc.addr.as_str();
    let mut ids = Vec::new();
    for command in [json!(["sh", "-c", "sleep 1"]), json!(["true"])] {
        let req = json!({"config": CONFIG, "overrides": ["task=1"], "command": command});
        let (code, body) = http(addr, "POST", "/sweeps", Some(&req.to_string()));
        assert_eq!(code, 201, "{body}");
        ids.push(json_of(&body)["id"].as_u64().unwrap());
    }
    wait_state(addr, ids[1], "finished");
    wait_state(addr, ids[0], "finished"); // ends last, so the short one is forgotten
    let (code, body) = http(addr, "GET", &format!("/sweeps/{}", ids[1]), None);
    assert_eq!(code, 404, "{body}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [&["--keep-finished", "many"][..], &["--keep-finished", "0"], &["--keep-finished"], &["--lisen", "x"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_embed_service")).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains("usage: embed_service"), "{args:?}: {err}");
    }
}
