//! Start a job's process the way `posix_spawn` does (a `CLONE_VM | CLONE_VFORK` child that
//! only calls `execve`), plus the two things `posix_spawn` cannot do: the parent-death
//! signal and its race check.
//!
//! Why not `std::process::Command` with `pre_exec`: a `pre_exec` hook makes std use a
//! full `fork()`, whose page-table copy, copy-on-write faults and TLB shootdowns across the
//! runtime's threads cost more than the rest of a short job's supervision (measured: ~20%
//! of the supervisor's CPU on 2,000 `true` jobs). A vfork child shares our memory and
//! runs only async-signal-safe system calls until `execve`.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// What to start.
pub struct SpawnRequest<'a> {
    /// Absolute or cwd-relative path of the executable (already looked up in `PATH`).
    pub program: &'a Path,
    /// `argv[0..]`, including `argv[0]`.
    pub argv: &'a [OsString],
    /// The complete environment, as `NAME=value` entries.
    pub env: &'a [OsString],
    /// Working directory for the child, if not ours.
    pub cwd: Option<&'a Path>,
}

/// A started child: its pid (also its process group id) and its output pipes (read ends,
/// already non-blocking).
pub struct Spawned {
    /// Process id; the child leads its own process group with the same id.
    pub pid: u32,
    /// Read end of the child's stdout.
    pub stdout: OwnedFd,
    /// Read end of the child's stderr.
    pub stderr: OwnedFd,
}

struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// The child's errno when it fails before or in `execve`; 0 while all goes well. The
    /// parent reads it once the child has exec'd or exited (CLONE_VFORK holds it till then),
    /// as glibc's posix_spawn does, so no status pipe is needed.
    error: AtomicI32,
    parent: libc::pid_t,
    old_mask: libc::sigset_t,
    /// Signals (bit n = signal n) the child resets to their default action.
    reset: u64,
}

/// Which signals have a handler here (or are SIGPIPE, which Rust ignores): bit n = signal n.
/// Asking the kernel costs ~64 system calls, and the child did it on every spawn while we
/// waited for its exec; dispositions change rarely, so the answer is kept for 100 ms.
fn signals_to_reset() -> u64 {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static CACHE: Mutex<Option<(Instant, u64)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, mask)) = *cache
        && at.elapsed() < Duration::from_millis(100)
    {
        return mask;
    }
    let mut mask = 0u64;
    for sig in 1..libc::SIGRTMAX().min(64) {
        // SAFETY: querying a disposition into a local struct.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only reads the current one.
        let ok = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0;
        if ok && old.sa_sigaction != libc::SIG_DFL && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE) {
            mask |= 1 << sig;
        }
    }
    *cache = Some((Instant::now(), mask));
    mask
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "argument or environment value contains a NUL byte"))
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; a fresh pipe's read end has no other status flag.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Start `req` in a new process group, with stdin on /dev/null and stdout/stderr piped, and
/// SIGKILL as its parent-death signal. Errors (e.g. `ENOENT`, `EACCES`, `E2BIG`) come
/// from the child's `execve` and are reported here.
pub fn spawn(req: &SpawnRequest<'_>) -> io::Result<Spawned> {
    let path = cstring(req.program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = req.argv.iter().map(|a| cstring(a.as_bytes())).collect::<io::Result<_>>()?;
    let env: Vec<CString> = req.env.iter().map(|e| cstring(e.as_bytes())).collect::<io::Result<_>>()?;
    let cwd = req.cwd.map(|c| cstring(c.as_os_str().as_bytes())).transpose()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());

    let devnull = dev_null()?;
    let (out_r, out_w) = pipe_cloexec()?;
    let (err_r, err_w) = pipe_cloexec()?;
    // Our ends are read by the async runtime: non-blocking from the start (the child's ends
    // stay blocking, as programs expect).
    set_nonblocking(&out_r)?;
    set_nonblocking(&err_r)?;

    let mut args = ChildArgs {
        path: path.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: env_ptrs.as_ptr(),
        cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        stdin: devnull.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        error: AtomicI32::new(0),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        // SAFETY: sigset_t is plain data, filled below.
        old_mask: unsafe { std::mem::zeroed() },
        reset: signals_to_reset(),
    };
    // The child shares our memory: block every signal so that none of our handlers can run
    // on its stack before it has reset them; it restores this mask before exec.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to local sigsets.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut args.old_mask);
    }
    let pid = CHILD_STACK.with_borrow_mut(|stack| {
        // SAFETY: the stack grows down on every Linux architecture we build for, so the
        // child starts at the top of the buffer; CLONE_VFORK suspends us until the child has
        // called execve or _exit, so `args`, the strings and the stack outlive its use of
        // them, and the stack is free again when clone returns.
        unsafe {
            let top = stack.as_mut_ptr().add(stack.len()) as *mut libc::c_void;
            libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut args as *mut ChildArgs).cast(),
            )
        }
    });
    let clone_err = io::Error::last_os_error();
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &args.old_mask, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(clone_err);
    }
    drop((out_w, err_w));
    let errno = args.error.load(Ordering::Acquire);
    if errno != 0 {
        // exec failed and the child has exited: reap it here, nobody else knows its pid.
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(Spawned { pid: pid as u32, stdout: out_r, stderr: err_r })
}

/// Runs in the vfork child: only raw system calls, no allocation, no locks.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive while the parent is suspended.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let fail = || -> ! {
            a.error.store(*libc::__errno_location(), Ordering::Release);
            libc::_exit(127)
        };
        // Our signal handlers must not run in the child: reset handled signals to default.
        // SIGPIPE too, which Rust ignores in its own process: a child (and any shell it
        // runs) must die of it as usual, as std::process::Command also arranges. Signals the
        // user ignored when starting us (e.g. SIGHUP under nohup) stay ignored.
        // (The set is worked out by the parent: see `signals_to_reset`.)
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..64 {
            if a.reset & (1u64 << sig) != 0 {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail();
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            fail();
        }
        if libc::getppid() != a.parent {
            // The supervisor died before the prctl took effect: do not run unsupervised.
            libc::_exit(137);
        }
        if libc::dup2(a.stdin, 0) < 0 || libc::dup2(a.stdout, 1) < 0 || libc::dup2(a.stderr, 2) < 0 {
            fail();
        }
        if !a.cwd.is_null() && libc::chdir(a.cwd) != 0 {
            fail();
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(a.path, a.argv, a.envp);
        fail()
    }
}

thread_local! {
    /// The vfork child's stack, reused: the thread that spawns is suspended while the child
    /// uses it. Contents do not matter, so it is allocated once and never cleared.
    static CHILD_STACK: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
}

/// One read-only `/dev/null` for every child's stdin, opened once.
fn dev_null() -> io::Result<&'static std::fs::File> {
    static DEV_NULL: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(f) = DEV_NULL.get() {
        return Ok(f);
    }
    let f = std::fs::File::open("/dev/null")?;
    Ok(DEV_NULL.get_or_init(|| f))
}

/// Find `program` the way a shell would: a name with a `/` is used as is, a bare name is
/// looked up in `PATH` (from `env`, else ours).
pub fn resolve_program(program: &OsStr, path_var: Option<&OsStr>) -> io::Result<std::path::PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(std::path::PathBuf::from(program));
    }
    let cwd = std::env::current_dir()?;
    which::which_in(program, path_var.or(std::env::var_os("PATH").as_deref()), cwd).map_err(|_| {
        io::Error::new(io::ErrorKind::NotFound, format!("`{}` not found in PATH", program.to_string_lossy()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_spawn(program: &Path, cwd: Option<&Path>) -> io::Result<Spawned> {
        let argv = [program.as_os_str().to_os_string()];
        spawn(&SpawnRequest { program, argv: &argv, env: &[], cwd })
    }

    #[test]
    fn errors_before_and_in_exec_come_back_with_their_errno() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("not-executable");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let e = try_spawn(&script, None).err().expect("a non-executable file cannot start");
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        let e = try_spawn(Path::new("/bin/true"), Some(&dir.path().join("missing"))).err().expect("no such cwd");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        // A good spawn after failed ones: the shared error slot does not leak between spawns.
        let child = try_spawn(Path::new("/bin/true"), Some(dir.path())).expect("/bin/true starts");
        let mut status = 0;
        // SAFETY: waiting for the child we just started.
        assert_eq!(unsafe { libc::waitpid(child.pid as i32, &mut status, 0) }, child.pid as i32);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
