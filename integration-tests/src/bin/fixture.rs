//! Small misbehaving programs for the integration tests, one per mode:
//!
//! `fixture <mode> [args...] [key=value overrides...]`
//!
//! Modes write what the tests need to check (pids, start/end times, argv, env) into the
//! job's directory (`$ORCHESTRATOR_JOB_DIR`), so tests can look for surviving processes
//! instead of trusting exit codes.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn job_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::var("ORCHESTRATOR_JOB_DIR").unwrap_or_else(|_| ".".into());
    std::path::Path::new(&dir).join(name)
}

fn append(name: &str, text: &str) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(job_file(name)).expect("open job file");
    f.write_all(text.as_bytes()).expect("write job file");
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn ignore_term() {
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

/// fork(); the child runs `child` and never returns.
fn fork_then(child: impl FnOnce()) -> i32 {
    // SAFETY: the fixture is single-threaded, so the child may run arbitrary code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        child();
        // SAFETY: leave the forked child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match mode {
        "sleep" => {
            let secs: f64 = arg(1).parse().unwrap_or(0.2);
            let start = now();
            std::thread::sleep(Duration::from_secs_f64(secs));
            append("times", &format!("{start} {}\n", now()));
            println!("slept {secs}");
        }
        "echo" => {
            let env: serde_like::Map = std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with("ORCHESTRATOR_")
                        || k.ends_with("_NUM_THREADS")
                        || k == "CUDA_VISIBLE_DEVICES"
                        || k == "MY_PORT"
                        || k == "EXTRA"
                })
                .collect();
            let text = format!("{}\n{}\n", serde_like::list(&args), serde_like::map(&env));
            append("echo.txt", &text);
            print!("{text}");
            println!("cwd={}", std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default());
        }
        "hang-ignore-term" => {
            ignore_term();
            let child = fork_then(|| {
                ignore_term();
                forever()
            });
            append("pids", &format!("{}\n{child}\n", std::process::id()));
            println!("leader {} and grandchild {child} ignore SIGTERM", std::process::id());
            forever();
        }
        "setsid-hang" | "daemonize" => {
            let (tx, rx) = pipe();
            let child = fork_then(move || {
                // SAFETY: plain syscalls in the single-threaded child.
                unsafe { libc::setsid() };
                ignore_term();
                let grandchild = fork_then(|| {
                    ignore_term();
                    forever()
                });
                append("pids", &format!("{}\n{grandchild}\n", std::process::id()));
                // SAFETY: tell the parent the pids are written.
                unsafe {
                    libc::write(tx, b"k".as_ptr().cast(), 1);
                }
                forever()
            });
            let mut b = [0u8; 1];
            // SAFETY: wait for the child's byte.
            unsafe { libc::read(rx, b.as_mut_ptr().cast(), 1) };
            append("pids", &format!("{}\n", std::process::id()));
            println!("escaped session child {child}");
            if mode == "setsid-hang" {
                forever();
            }
        }
        "flood" => {
            let total: usize = arg(1).parse().unwrap_or(50 * 1024 * 1024);
            let chunk = vec![b'x'; 64 * 1024];
            let mut out = std::io::stdout().lock();
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk.len());
                out.write_all(&chunk[..n]).expect("write");
                left -= n;
            }
            out.flush().expect("flush");
        }
        "binary" => {
            let mut out = std::io::stdout().lock();
            out.write_all(b"bad \xff\xfe bytes \x80\n").expect("write");
            out.write_all(b"good line\n").expect("write");
        }
        "interleave" => {
            for i in 0..200 {
                println!("out {i}");
                eprintln!("err {i}");
            }
        }
        "segv" => {
            println!("about to crash");
            // SAFETY: deliberately crash with SIGSEGV; Rust's own handler (for stack
            // overflows) would otherwise swallow a raised signal.
            unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
        }
        "hog" => {
            // `fixture hog 300 [seconds]`: touch 300 MiB, say so, then hold it (40 s by
            // default: long enough for a memory limit to act).
            let mib: usize = arg(1).parse().unwrap_or(300);
            let hold: u64 = arg(2).parse().unwrap_or(40);
            let mut v = vec![0u8; mib << 20];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            println!("holding {mib} MiB");
            std::thread::sleep(Duration::from_secs(hold));
            println!("survived {}", v.iter().step_by(4096).count());
        }
        "exit" => {
            let code: i32 = arg(1).parse().unwrap_or(1);
            eprintln!("exiting with {code}");
            std::process::exit(code);
        }
        "fail-on" => {
            // `fixture fail-on 3 task=3` exits 3 when the task override equals the argument.
            let want = format!("task={}", arg(1));
            if args.iter().skip(2).any(|a| *a == want) {
                eprintln!("failing on purpose: {want}");
                std::process::exit(3);
            }
            println!("fine");
        }
        "argcheck" => {
            // Report how argument `key` arrived, and read it fully.
            use std::os::unix::fs::MetadataExt;
            let key = arg(1);
            let files = orchestrator_worker::arg_files();
            let bytes = orchestrator_worker::open_arg(&key).expect("open the argument");
            let sum = bytes.iter().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)));
            let report = match files.get(&key) {
                Some(f) => format!(
                    "file shared={} size={} ino={} path={} len={} sum={sum}\n",
                    f.shared,
                    f.size,
                    std::fs::metadata(&f.path).map(|m| m.ino()).unwrap_or(0),
                    f.path.display(),
                    bytes.len()
                ),
                None => format!("inline len={} sum={sum}\n", bytes.len()),
            };
            append("arg.txt", &report);
            let argv: Vec<String> = std::env::args().skip(1).map(|a| a.chars().take(80).collect()).collect();
            append("argv.txt", &format!("{}\n", argv.join(" ")));
        }
        "argwrite" => {
            // Try to write the first byte of argument `key`, then report what is there.
            let key = arg(1);
            let result = match orchestrator_worker::open_arg_mut(&key) {
                Ok(mut m) => {
                    m[0] = b'X';
                    m.flush().expect("flush");
                    format!("wrote, mine={}", m[0] as char)
                }
                Err(e) => format!("refused: {e}"),
            };
            let now = orchestrator_worker::open_arg(&key).expect("reopen")[0] as char;
            append("arg.txt", &format!("{result}; file={now}\n"));
        }
        other => {
            eprintln!("unknown fixture mode `{other}`");
            std::process::exit(64);
        }
    }
}

fn pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[1], fds[0])
}

/// Tiny JSON writer, to keep the fixture free of dependencies.
mod serde_like {
    pub type Map = std::collections::BTreeMap<String, String>;

    fn quote(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    pub fn list(items: &[String]) -> String {
        format!("[{}]", items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(","))
    }

    pub fn map(m: &Map) -> String {
        format!("{{{}}}", m.iter().map(|(k, v)| format!("{}:{}", quote(k), quote(v))).collect::<Vec<_>>().join(","))
    }
}
