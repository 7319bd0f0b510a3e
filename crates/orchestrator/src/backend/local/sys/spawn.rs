//! Start a job's process the way `posix_spawn` does (a `CLONE_VM` child that shares our
//! memory and only makes system calls until `execve`), plus the two things `posix_spawn`
//! cannot do, the parent-death signal and its race check, and one thing it will not: it
//! does not wait for the child's exec (see `spawn`).
//!
//! Why not `std::process::Command` with `pre_exec`: a `pre_exec` hook makes std use a
//! full `fork()`, whose page-table copy, copy-on-write faults and TLB shootdowns across the
//! runtime's threads cost more than the rest of a short job's supervision (measured: ~20%
//! of the supervisor's CPU on 2,000 `true` jobs).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

/// A child's environment: the entries every job of a run shares (made once per run), minus
/// those the job replaces, plus the job's own.
pub struct Env {
    shared: Arc<[CString]>,
    /// Indices into `shared` of the entries the job replaces, in increasing order.
    replaced: Vec<usize>,
    own: Vec<CString>,
}

impl Env {
    /// `shared` entries (`NAME=value`), minus those at the `replaced` indices, plus `own`
    /// entries.
    pub fn new(shared: Arc<[CString]>, mut replaced: Vec<usize>, own: Vec<CString>) -> Env {
        replaced.sort_unstable();
        replaced.dedup();
        Env { shared, replaced, own }
    }

    /// Every entry, in the order the child gets them.
    pub fn entries(&self) -> impl Iterator<Item = &CStr> {
        let mut replaced = self.replaced.iter().peekable();
        let kept = self.shared.iter().enumerate().filter_map(move |(i, e)| {
            if replaced.peek() == Some(&&i) {
                replaced.next();
                None
            } else {
                Some(e.as_c_str())
            }
        });
        kept.chain(self.own.iter().map(|e| e.as_c_str()))
    }
}

/// Something the child does before `execve`, in order (see [`SpawnRequest::setup`]).
#[non_exhaustive]
pub enum SetupStep {
    /// Make a directory; one that exists already is fine.
    Dir(CString),
    /// Create a file, or replace one, holding these bytes.
    File(CString, Vec<u8>),
    /// Create a file if it is missing; one that exists keeps what it holds (a job's log
    /// when the job runs again on resume).
    Keep(CString),
}

/// A setup step as the child reads it: raw pointers into the `SetupStep` it came from.
struct RawStep {
    /// Null for a directory.
    data: *const u8,
    len: usize,
    path: *const libc::c_char,
    /// Replace the file's contents (`File`), or keep them (`Keep`).
    truncate: bool,
}

/// Why a child never ran its program.
#[derive(Debug)]
pub struct ExecFailure {
    /// The failed system call's error.
    pub error: io::Error,
    /// The path of the setup step that failed; `None` when it was the rest (e.g. `execve`).
    pub setup_path: Option<std::path::PathBuf>,
}

/// What to start.
pub struct SpawnRequest<'a> {
    /// Absolute or cwd-relative path of the executable (already looked up in `PATH`).
    pub program: &'a Path,
    /// `argv[0..]`, including `argv[0]`.
    pub argv: &'a [OsString],
    /// The complete environment; the child keeps it until its exec.
    pub env: Env,
    /// Working directory for the child, if not ours.
    pub cwd: Option<&'a Path>,
    /// Done by the child first, before it changes to `cwd`: relative paths are from ours.
    pub setup: Vec<SetupStep>,
    /// The cgroup (v2) the child starts in, if any.
    pub cgroup: Option<IntoCgroup<'a>>,
}

/// A cgroup v2 cgroup for a child to start in: made in it at once by `clone3` with
/// `CLONE_INTO_CGROUP` (Linux 5.7, x86_64 here) where the kernel takes that, else moved into it
/// by the child's own first step, a write of `0` to its `cgroup.procs`.
///
/// Why both: a move takes the kernel's cgroup threadgroup lock for writing, which waits for an
/// RCU grace period (0.04 ms at the median but up to 6 ms here); a child made in its cgroup
/// never moves.
pub struct IntoCgroup<'a> {
    /// The cgroup's directory, open (`O_PATH` is enough).
    pub dir: std::os::fd::BorrowedFd<'a>,
    /// Its `cgroup.procs`, for the move.
    pub procs: CString,
}

/// A started child: its pid (also its process group id), its output pipes (read ends,
/// already non-blocking) and the memory its start-up still reads.
pub struct Spawned {
    /// Process id; the child leads its own process group with the same id.
    pub pid: u32,
    /// Read end of the child's stdout.
    pub stdout: OwnedFd,
    /// Read end of the child's stderr.
    pub stderr: OwnedFd,
    /// Tells, once the child has exited, whether it ever ran the program.
    pub exec: ExecWatch,
}

/// What the child reads between `clone` and `execve`, all raw pointers into its `ChildMem`.
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    steps: *const RawStep,
    n_steps: usize,
    /// The first step to do: 1 when the child was made in its cgroup and its first step (the
    /// move into it) is done already.
    first_step: usize,
    /// The child's errno when it fails before or in `execve`; 0 while all goes well.
    error: AtomicI32,
    /// Index of the setup step that failed, if one did; `usize::MAX` otherwise.
    failed_step: std::sync::atomic::AtomicUsize,
    parent: libc::pid_t,
    /// Signals (bit n - 1 = signal n) the child resets to their default action.
    reset: u64,
}

/// Everything the child may touch until it has exec'd or exited: its stack, its arguments
/// and the strings they point to. Boxed, so that it does not move while the child runs.
struct ChildMem {
    stack: Stack,
    /// Non-zero while the child may still use this memory: the kernel zeroes it (and wakes
    /// futex waiters) when the child execs or exits, as `CLONE_CHILD_CLEARTID` asks.
    busy: AtomicI32,
    args: ChildArgs,
    _path: CString,
    _argv: Vec<CString>,
    _env: Env,
    _cwd: Option<CString>,
    _argv_ptrs: Vec<*const libc::c_char>,
    _env_ptrs: Vec<*const libc::c_char>,
    setup: Vec<SetupStep>,
    _raw_steps: Vec<RawStep>,
}

// SAFETY: the raw pointers point into the same `ChildMem` (or the shared environment it
// holds), whose heap buffers never move; the only fields written after construction
// (`busy`, `args.error`, `args.failed_step`) are atomics.
unsafe impl Send for ChildMem {}
unsafe impl Sync for ChildMem {}

/// Whether a started child ever ran its program. It owns the memory the child reads until
/// `execve`, and frees it only once the kernel says the child is done with it.
pub struct ExecWatch(Option<Box<ChildMem>>);

impl ExecWatch {
    /// What kept the child from running its program (a setup step, `chdir` or `execve`
    /// that failed), once the child has exited; `None` if it exec'd or is still on its way.
    pub fn failure(&self) -> Option<ExecFailure> {
        let mem = self.0.as_ref()?;
        if mem.busy.load(Ordering::Acquire) != 0 {
            return None;
        }
        let errno = mem.args.error.load(Ordering::Acquire);
        if errno == 0 {
            return None;
        }
        let setup_path = mem.setup.get(mem.args.failed_step.load(Ordering::Acquire)).map(|step| {
            let (SetupStep::Dir(p) | SetupStep::File(p, _) | SetupStep::Keep(p)) = step;
            std::path::PathBuf::from(OsStr::from_bytes(p.to_bytes()))
        });
        Some(ExecFailure { error: io::Error::from_raw_os_error(errno), setup_path })
    }

    /// Free the child's start-up memory (its stack goes back to the pool) if it has exec'd
    /// its program; `true` once that is done. A long job's supervisor calls this soon after
    /// the start, rather than holding the memory until the job ends.
    pub fn release_if_running(&mut self) -> bool {
        match &self.0 {
            None => true,
            Some(mem) if mem.busy.load(Ordering::Acquire) == 0 && mem.args.error.load(Ordering::Acquire) == 0 => {
                self.0 = None;
                true
            }
            Some(_) => false,
        }
    }
}

/// Start-up memory of children dropped before they had exec'd or exited, freed by a later
/// `spawn` once the kernel says they are done with it. Boxed: the child holds addresses
/// inside each `ChildMem` (its arguments, the word the kernel clears), so it must not move.
#[allow(clippy::vec_box)]
static PENDING: std::sync::Mutex<Vec<Box<ChildMem>>> = std::sync::Mutex::new(Vec::new());

impl Drop for ExecWatch {
    fn drop(&mut self) {
        let Some(mem) = self.0.take() else { return };
        // Normally the child has long exec'd or exited (this is dropped after reaping it).
        // If not (a job abandoned between spawn and exec), the child may still read the
        // memory: keep it until it is done, without blocking this thread.
        if mem.busy.load(Ordering::Acquire) != 0 {
            PENDING.lock().unwrap_or_else(|e| e.into_inner()).push(mem);
        }
    }
}

/// A child's stack: raw memory that no Rust reference points into while the child runs.
struct Stack(std::ptr::NonNull<u8>);

// SAFETY: a plain heap allocation, used by one child at a time.
unsafe impl Send for Stack {}

const STACK_SIZE: usize = 64 * 1024;
const STACK_LAYOUT: std::alloc::Layout = match std::alloc::Layout::from_size_align(STACK_SIZE, 16) {
    Ok(l) => l,
    Err(_) => panic!("stack layout"),
};

/// Stacks of children that have exec'd or exited, kept for the next ones.
static STACKS: std::sync::Mutex<Vec<Stack>> = std::sync::Mutex::new(Vec::new());

impl Stack {
    fn get() -> Stack {
        if let Some(s) = STACKS.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return s;
        }
        // SAFETY: a non-zero-sized layout; contents do not matter, so no zeroing.
        let p = unsafe { std::alloc::alloc(STACK_LAYOUT) };
        Stack(std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(STACK_LAYOUT)))
    }

    /// The initial stack pointer: stacks grow down on every Linux architecture we build for.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the allocation.
        unsafe { self.0.as_ptr().add(STACK_SIZE).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut pool = STACKS.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < 16 {
            pool.push(Stack(self.0));
        } else {
            // SAFETY: allocated in `get` with the same layout, and no child uses it any more.
            unsafe { std::alloc::dealloc(self.0.as_ptr(), STACK_LAYOUT) };
        }
    }
}

/// Which signals have a handler here (or are SIGPIPE, which Rust ignores): bit n - 1 =
/// signal n, as in the kernel's sigset (signals 1 to 64).
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
    for sig in 1..=libc::SIGRTMAX().min(64) {
        // SAFETY: querying a disposition into a local struct.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only reads the current one.
        let ok = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0;
        if ok && old.sa_sigaction != libc::SIG_DFL && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE) {
            mask |= 1 << (sig - 1);
        }
    }
    *cache = Some((Instant::now(), mask));
    mask
}

/// `bytes` as a C string, or an error saying that a NUL byte cannot be in one.
pub fn cstring(bytes: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "argument or environment value contains a NUL byte"))
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Make `fd` non-blocking.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; a fresh pipe's read end has no other status flag.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Start `req` in a new process group, with stdin on /dev/null and stdout/stderr piped, and
/// SIGKILL as its parent-death signal.
///
/// Returns as soon as the child exists, without waiting for its `execve`: errors found
/// here are ours (pipes, `clone`, a NUL byte in an argument); errors of the child's
/// `chdir` or `execve` (e.g. `ENOENT`, `EACCES`, `E2BIG`) make it exit with 127 and are
/// told by [`ExecWatch::failure`] once it has exited.
pub fn spawn(req: SpawnRequest<'_>) -> io::Result<Spawned> {
    let path = cstring(req.program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = req.argv.iter().map(|a| cstring(a.as_bytes())).collect::<io::Result<_>>()?;
    let env = req.env;
    let mut setup = req.setup;
    // The move into the cgroup, first: everything the job does and starts is in it. Skipped
    // by a child made there.
    let into = req.cgroup.map(|c| {
        setup.insert(0, SetupStep::File(c.procs, b"0".to_vec()));
        c.dir.as_raw_fd()
    });
    let raw_steps: Vec<RawStep> = setup
        .iter()
        .map(|step| match step {
            SetupStep::Dir(p) => RawStep { data: std::ptr::null(), len: 0, path: p.as_ptr(), truncate: false },
            SetupStep::File(p, data) => {
                RawStep { data: data.as_ptr(), len: data.len(), path: p.as_ptr(), truncate: true }
            }
            // Any non-null pointer marks a file; nothing is read from it when `len` is 0.
            SetupStep::Keep(p) => RawStep { data: p.as_ptr().cast(), len: 0, path: p.as_ptr(), truncate: false },
        })
        .collect();
    let cwd = req.cwd.map(|c| cstring(c.as_os_str().as_bytes())).transpose()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.entries().map(|c| c.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());

    {
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.is_empty() {
            pending.retain(|m| m.busy.load(Ordering::Acquire) != 0);
        }
    }
    let devnull = dev_null()?;
    let (out_r, out_w) = pipe_cloexec()?;
    let (err_r, err_w) = pipe_cloexec()?;
    // Our ends are read by the async runtime: non-blocking from the start (the child's ends
    // stay blocking, as programs expect).
    set_nonblocking(&out_r)?;
    set_nonblocking(&err_r)?;

    let args = ChildArgs {
        path: path.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: env_ptrs.as_ptr(),
        cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        stdin: devnull.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        steps: raw_steps.as_ptr(),
        n_steps: raw_steps.len(),
        first_step: 0,
        error: AtomicI32::new(0),
        failed_step: std::sync::atomic::AtomicUsize::new(usize::MAX),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        reset: signals_to_reset(),
    };
    let mut mem = Box::new(ChildMem {
        stack: Stack::get(),
        busy: AtomicI32::new(-1),
        args,
        _path: path,
        _argv: argv,
        _env: env,
        _cwd: cwd,
        _argv_ptrs: argv_ptrs,
        _env_ptrs: env_ptrs,
        setup,
        _raw_steps: raw_steps,
    });
    // The child shares our memory: block every signal so that none of our handlers can run
    // on its stack before it has reset them; it unblocks them just before exec.
    // SAFETY: sigset_t is plain data, filled below.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to local sigsets.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old_mask);
    }
    // Not CLONE_VFORK, which posix_spawn uses: that would suspend this thread, and with it
    // every job it supervises, for the whole of the child's exec (~120 µs for a `true`);
    // going on while the child execs is worth 10-15% of wall time on many tiny jobs. The
    // child shares our memory all the same, so it reads only `mem` and writes only its own
    // stack and the atomics `error` and `failed_step`.
    // SAFETY: `child_main` gets a pointer to `mem.args`, in a box that is freed only once
    // `busy` reads 0, i.e. after the kernel's CLONE_CHILD_CLEARTID write at the child's exec
    // or exit (see `ExecWatch`).
    let made_in_cgroup = into.and_then(|fd| {
        mem.args.first_step = 1;
        // SAFETY: as for `clone` below; the child gets the same memory and stack.
        let r = unsafe { clone_into_cgroup(&mem, fd) };
        if r.is_none() {
            mem.args.first_step = 0;
        }
        r
    });
    let (pid, clone_err) = match made_in_cgroup {
        Some(r) => r,
        None => {
            // SAFETY: see above.
            let pid = unsafe {
                libc::clone(
                    child_main,
                    mem.stack.top(),
                    libc::CLONE_VM | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD,
                    (&mem.args as *const ChildArgs).cast_mut().cast(),
                    std::ptr::null_mut::<libc::pid_t>(),
                    std::ptr::null_mut::<libc::c_void>(),
                    mem.busy.as_ptr(),
                )
            };
            (pid, io::Error::last_os_error())
        }
    };
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
    if pid < 0 {
        mem.busy.store(0, Ordering::Release); // no child ever saw it
        return Err(clone_err);
    }
    // The child makes itself a group leader, but maybe not yet: do it from here too (as
    // shells do), so that a signal sent to the job's group right after we return cannot
    // miss it. EACCES means the child has exec'd, so it did it already.
    // SAFETY: setpgid on our own unreaped child.
    unsafe { libc::setpgid(pid, pid) };
    drop((out_w, err_w));
    Ok(Spawned { pid: pid as u32, stdout: out_r, stderr: err_r, exec: ExecWatch(Some(mem)) })
}

/// Whether `clone3` with `CLONE_INTO_CGROUP` is worth trying: cleared for good once the kernel
/// (older than 5.7) or a seccomp filter (containers' default, ENOSYS) refuses it.
static CLONE3_INTO_CGROUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Children made in their cgroup by `clone3` so far (for tests, and cheap).
static MADE_IN_CGROUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `clone3`'s argument (`struct clone_args`, its size as of Linux 5.7).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The child of `mem`, made by `clone3` in the cgroup open at `cgroup` (flags as `clone`'s
/// below, plus `CLONE_INTO_CGROUP`): `(pid, error)` as `clone` gives them, or `None` when the
/// kernel would not make it there (the caller makes it the other way, and it moves itself).
///
/// # Safety
/// As for `clone` in `spawn`: `mem` stays where it is, and alive, until the child has exec'd
/// or exited.
#[cfg(target_arch = "x86_64")]
unsafe fn clone_into_cgroup(mem: &ChildMem, cgroup: RawFd) -> Option<(libc::c_int, io::Error)> {
    use std::sync::atomic::Ordering::Relaxed;
    if !CLONE3_INTO_CGROUP.load(Relaxed) {
        return None;
    }
    let args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_CHILD_CLEARTID) as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: mem.busy.as_ptr() as u64,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        // The lowest address and the size, where `clone` takes the top.
        stack: mem.stack.0.as_ptr() as u64,
        stack_size: STACK_SIZE as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup as u64,
    };
    let arg = (&mem.args as *const ChildArgs).cast_mut().cast::<libc::c_void>();
    let main: extern "C" fn(*mut libc::c_void) -> libc::c_int = child_main;
    let ret: isize;
    // SAFETY: `clone3` returns in both processes. The parent goes on here with the pid (or
    // -errno) in rax. The child returns with rax 0 on its own stack (the kernel sets its
    // stack pointer to `stack + stack_size`, which is 16-byte aligned because the stack's
    // allocation and size are), with every other register as the parent's: it clears the
    // frame pointer (an unwinder must not walk into the parent's live stack) and calls
    // `child_main(arg)` from r12 and r13, which never returns (it execs or exits), so the
    // registers it changes never reach Rust code. The parent's stack is not touched.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") &args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") main,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret >= 0 {
        MADE_IN_CGROUP.fetch_add(1, Relaxed);
        return Some((ret as libc::c_int, io::Error::from_raw_os_error(0)));
    }
    let errno = -ret as i32;
    match errno {
        // No `clone3` (before 5.3, or a seccomp filter: ENOSYS, or EPERM in older container
        // profiles), or no `CLONE_INTO_CGROUP` (before 5.7): not again.
        libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::E2BIG => CLONE3_INTO_CGROUP.store(false, Relaxed),
        // The process limit: the other way would fail the same, and says so.
        _ => {}
    }
    tracing::debug!("clone3 into a cgroup: {}; the child moves itself", io::Error::from_raw_os_error(errno));
    None
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone_into_cgroup(_: &ChildMem, _: RawFd) -> Option<(libc::c_int, io::Error)> {
    None
}

/// `CLONE_INTO_CGROUP` (Linux 5.7; not in the libc crate for every target).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Runs in the clone child, beside the parent thread and in its memory, until `execve`.
///
/// Only raw system calls: no allocation, no locks, and no libc wrappers, because those set
/// `errno` on failure, which here is the parent thread's and could change under it (e.g.
/// its EAGAIN from a pipe read turning into our ENOENT).
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    use syscalls::{Errno, Sysno, syscall};
    // SAFETY: `arg` points to the parent's `ChildArgs`, alive until we exec or exit.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let exit = |code: usize| -> ! {
            let _ = syscall!(Sysno::exit_group, code);
            std::hint::unreachable_unchecked()
        };
        let fail = |e: Errno| -> ! {
            a.error.store(e.into_raw(), Ordering::Release);
            exit(127)
        };
        // Our signal handlers must not run in the child: reset handled signals to default.
        // SIGPIPE too, which Rust ignores in its own process: a child (and any shell it
        // runs) must die of it as usual, as std::process::Command also arranges. Signals the
        // user ignored when starting us (e.g. SIGHUP under nohup) stay ignored.
        // (The set is worked out by the parent: see `signals_to_reset`.) A kernel sigaction
        // that is all zeros is SIG_DFL with no flags and an empty mask, on every arch.
        let dfl = [0u64; 4];
        for sig in 1..=64usize {
            if a.reset & (1u64 << (sig - 1)) != 0 {
                let _ = syscall!(Sysno::rt_sigaction, sig, dfl.as_ptr(), 0, 8);
            }
        }
        if let Err(e) = syscall!(Sysno::setpgid, 0, 0) {
            fail(e);
        }
        if let Err(e) = syscall!(Sysno::prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
            fail(e);
        }
        if syscall!(Sysno::getppid) != Ok(a.parent as usize) {
            // The supervisor died before the prctl took effect: do not run unsupervised.
            exit(137);
        }
        for (from, to) in [(a.stdin, 0), (a.stdout, 1), (a.stderr, 2)] {
            // dup3 (newer archs have no dup2) refuses from == to: then the descriptor is in
            // place already, and only its close-on-exec flag must go.
            let r = if from == to {
                syscall!(Sysno::fcntl, to, libc::F_SETFD, 0)
            } else {
                syscall!(Sysno::dup3, from, to, 0)
            };
            if let Err(e) = r {
                fail(e);
            }
        }
        // Every other descriptor is close-on-exec, but until then we hold copies of them,
        // among them other jobs' pipe ends, whose EOF would wait for our setup's file I/O.
        // (Before Linux 5.9 this fails, and the exec closes them.)
        let _ = syscall!(Sysno::close_range, 3, u32::MAX, 0);
        for i in a.first_step..a.n_steps {
            if let Err(e) = setup_step(&*a.steps.add(i)) {
                a.failed_step.store(i, Ordering::Release);
                fail(e);
            }
        }
        if !a.cwd.is_null()
            && let Err(e) = syscall!(Sysno::chdir, a.cwd)
        {
            fail(e);
        }
        let empty = 0u64;
        let _ = syscall!(Sysno::rt_sigprocmask, libc::SIG_SETMASK, &empty as *const u64, 0, 8);
        match syscall!(Sysno::execve, a.path, a.argv, a.envp) {
            Err(e) => fail(e),
            Ok(_) => fail(Errno::ENOEXEC), // execve returns only on failure
        }
    }
}

/// One setup step, in the child: raw system calls only (see `child_main`).
///
/// # Safety
/// `step` points into a live `SetupStep` (a C string path, and `len` bytes at `data`).
unsafe fn setup_step(step: &RawStep) -> Result<(), syscalls::Errno> {
    use syscalls::{Errno, Sysno, syscall};
    // SAFETY: the caller's pointers are valid; these calls only read them.
    unsafe {
        if step.data.is_null() {
            return match syscall!(Sysno::mkdirat, libc::AT_FDCWD, step.path, 0o777) {
                Ok(_) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | if step.truncate { libc::O_TRUNC } else { 0 };
        let fd = syscall!(Sysno::openat, libc::AT_FDCWD, step.path, flags, 0o666)?;
        let mut done = 0;
        while done < step.len {
            match syscall!(Sysno::write, fd, step.data.add(done), step.len - done) {
                Ok(0) => {
                    let _ = syscall!(Sysno::close, fd);
                    return Err(Errno::EIO);
                }
                Ok(n) => done += n,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    let _ = syscall!(Sysno::close, fd);
                    return Err(e);
                }
            }
        }
        syscall!(Sysno::close, fd).map(|_| ())
    }
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

    fn no_env() -> Env {
        Env::new(Arc::from(Vec::new()), Vec::new(), Vec::new())
    }

    /// `program` with `argv` and `setup`, an empty environment, our cwd and no cgroup.
    fn request<'a>(program: &'a str, argv: &'a [OsString], setup: Vec<SetupStep>) -> SpawnRequest<'a> {
        SpawnRequest { program: Path::new(program), argv, env: no_env(), cwd: None, setup, cgroup: None }
    }

    extern "C" fn ignore_signal(_: libc::c_int) {}

    #[test]
    fn handled_signals_up_to_sigrtmax_are_reset() {
        let max = libc::SIGRTMAX().min(64);
        // SAFETY: a handler that does nothing, for a signal nothing in the tests sends.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = ignore_signal as *const () as libc::sighandler_t;
        // SAFETY: a valid action; the old one is not needed.
        assert_eq!(unsafe { libc::sigaction(max, &act, std::ptr::null_mut()) }, 0);
        std::thread::sleep(std::time::Duration::from_millis(150)); // past the cache
        let mask = signals_to_reset();
        assert_ne!(mask & (1 << (max - 1)), 0, "SIGRTMAX: {mask:#x}");
        assert_ne!(mask & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE, which Rust ignores: {mask:#x}");
        assert_eq!(mask & (1 << (libc::SIGCHLD - 1)), 0, "SIGCHLD has no handler: {mask:#x}");
    }

    #[test]
    fn env_keeps_shared_entries_not_replaced_then_own_ones() {
        let c = |s: &str| CString::new(s).unwrap();
        let env = Env::new(Arc::from(vec![c("A=1"), c("B=2"), c("C=3"), c("D=4")]), vec![1, 3], vec![c("B=9")]);
        let got: Vec<&str> = env.entries().map(|e| e.to_str().unwrap()).collect();
        assert_eq!(got, ["A=1", "C=3", "B=9"]);
    }

    /// Start `program`, wait for it, and return how it ended: its exec error, or its status.
    /// A child given a cgroup runs in it, whether `clone3` made it there or it moved there
    /// itself (the way for kernels before 5.7 and seccomp filters that refuse `clone3`), and
    /// a cgroup it can get into neither way is its setup's error.
    #[test]
    fn a_child_starts_in_its_cgroup_made_there_or_moved_there() {
        const NAME: &str = "a_child_starts_in_its_cgroup_made_there_or_moved_there";
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mount = crate::backend::local::cgroup::cgroup2_mount(&mountinfo);
        let name = format!("orchestrator-spawn-test-{}", std::process::id());
        let Some(cgroup) = mount.map(|m| m.join(&name)).filter(|c| std::fs::create_dir(c).is_ok()) else {
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "skipped: {NAME}: no cgroup2 hierarchy we may make a cgroup in");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let fd = std::fs::File::open(&cgroup).unwrap();
        let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        let runs = std::sync::atomic::AtomicUsize::new(0);
        let start = |made_there: bool, procs: CString| {
            CLONE3_INTO_CGROUP.store(made_there, Ordering::Relaxed);
            let out = dir.path().join(format!("run-{}", runs.fetch_add(1, Ordering::Relaxed)));
            let script = format!("cat /proc/self/cgroup > {}", out.display());
            let argv = [OsString::from("sh"), OsString::from("-c"), OsString::from(script)];
            let before = MADE_IN_CGROUP.load(Ordering::Relaxed);
            let into = IntoCgroup { dir: std::os::fd::AsFd::as_fd(&fd), procs };
            let req = SpawnRequest { cgroup: Some(into), ..request("/bin/sh", &argv, vec![]) };
            let child = spawn(req).unwrap();
            let mut status = 0;
            // SAFETY: waiting for our own child.
            assert_eq!(unsafe { libc::waitpid(child.pid as i32, &mut status, 0) }, child.pid as i32);
            let made = MADE_IN_CGROUP.load(Ordering::Relaxed) > before;
            (child.exec.failure(), std::fs::read_to_string(out).unwrap_or_default(), made)
        };
        // Where clone3 may be used (x86_64, Linux 5.7), it is.
        let (failure, seen, made) = start(true, procs.clone());
        assert!(failure.is_none(), "{failure:?}");
        assert!(seen.lines().any(|l| l == format!("0::/{name}")), "{seen}");
        assert_eq!(made, cfg!(target_arch = "x86_64"), "made in its cgroup by clone3");
        // The other way: it moves itself, first thing.
        let (failure, seen, made) = start(false, procs);
        assert!(failure.is_none(), "{failure:?}");
        assert!(seen.lines().any(|l| l == format!("0::/{name}")), "{seen}");
        assert!(!made);
        // Neither way works (its `cgroup.procs` is not one): the step's error, and no program.
        let bogus = CString::new(dir.path().join("missing/cgroup.procs").as_os_str().as_bytes()).unwrap();
        let (failure, seen, _) = start(false, bogus);
        let failure = failure.expect("not started");
        assert_eq!(failure.error.kind(), io::ErrorKind::NotFound, "{failure:?}");
        assert!(failure.setup_path.unwrap().ends_with("missing/cgroup.procs"));
        assert_eq!(seen, "");
        CLONE3_INTO_CGROUP.store(true, Ordering::Relaxed);
        std::fs::remove_dir(&cgroup).unwrap();
    }

    fn run(program: &Path, cwd: Option<&Path>) -> Result<i32, io::Error> {
        let argv = [program.as_os_str().to_os_string()];
        let child = spawn(SpawnRequest { program, argv: &argv, env: no_env(), cwd, setup: Vec::new(), cgroup: None })?;
        let mut status = 0;
        // SAFETY: waiting for the child we just started.
        assert_eq!(unsafe { libc::waitpid(child.pid as i32, &mut status, 0) }, child.pid as i32);
        match child.exec.failure() {
            Some(f) => {
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 127, "status {status:#x}");
                Err(f.error)
            }
            None => Ok(status),
        }
    }

    #[test]
    fn errors_before_and_in_exec_come_back_with_their_errno() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("not-executable");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let e = run(&script, None).expect_err("a non-executable file cannot start");
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        let e = run(Path::new("/bin/true"), Some(&dir.path().join("missing"))).expect_err("no such cwd");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        // A good spawn after failed ones: nothing leaks between spawns.
        let status = run(Path::new("/bin/true"), Some(dir.path())).expect("/bin/true starts");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn setup_steps_make_dirs_and_write_or_replace_files_before_exec() {
        let dir = tempfile::tempdir().unwrap();
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        let old = dir.path().join("old.txt");
        std::fs::write(&old, "a longer old content").unwrap();
        let new_dir = dir.path().join("new");
        let setup = vec![
            SetupStep::Dir(c(dir.path())), // exists already: fine
            SetupStep::Dir(c(&new_dir)),
            SetupStep::File(c(&new_dir.join("x")), b"abc".to_vec()),
            SetupStep::File(c(&old), b"1".to_vec()),
        ];
        let argv = [OsString::from("true")];
        let req = request("/bin/true", &argv, setup);
        let child = spawn(req).unwrap();
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(child.pid as i32, &mut status, 0) }, child.pid as i32);
        assert!(child.exec.failure().is_none());
        assert_eq!(std::fs::read(new_dir.join("x")).unwrap(), b"abc");
        assert_eq!(std::fs::read(&old).unwrap(), b"1");
    }

    #[test]
    fn memory_of_a_child_dropped_before_its_exec_is_kept_until_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        // Opening a FIFO to write blocks until someone reads it: the child stops in its
        // set-up, still reading the file's contents from our memory.
        let fifo = dir.path().join("fifo");
        // SAFETY: a valid C path.
        assert_eq!(unsafe { libc::mkfifo(c(&fifo).as_ptr(), 0o600) }, 0);
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let after = dir.path().join("after");
        let setup = vec![SetupStep::File(c(&fifo), payload.clone()), SetupStep::File(c(&after), b"done".to_vec())];
        let argv = [OsString::from("true")];
        let req = request("/bin/true", &argv, setup);
        let child = spawn(req).unwrap();
        let pid = child.pid as i32;
        drop(child); // the job is abandoned while its process is in its set-up
        assert_eq!(PENDING.lock().unwrap().len(), 1, "the memory is parked, not freed");
        // A plain `true`, spawned and reaped.
        let run_true = || {
            let argv = [OsString::from("true")];
            let req = request("/bin/true", &argv, vec![]);
            let child = spawn(req).unwrap();
            let mut status = 0;
            // SAFETY: waiting for our own child.
            assert_eq!(unsafe { libc::waitpid(child.pid as i32, &mut status, 0) }, child.pid as i32);
        };
        // Another spawn meanwhile must neither free it nor reuse its stack.
        run_true();
        assert_eq!(PENDING.lock().unwrap().len(), 1);
        // Reading the FIFO lets the child go on: it writes what the dropped memory holds.
        // Non-blocking, with a deadline: a child that died before opening it must fail the
        // test, not hang it.
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < payload.len() {
            assert!(std::time::Instant::now() < deadline, "the child wrote {} of {} bytes", got.len(), payload.len());
            match reader.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]), // 0: its open has not returned yet
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("reading the FIFO: {e}"),
            }
            if got.len() < payload.len() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        assert_eq!(got, payload);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
        assert_eq!(std::fs::read(&after).unwrap(), b"done");
        // The next spawn frees what is no longer in use.
        run_true();
        assert!(PENDING.lock().unwrap().is_empty());
    }

    #[test]
    fn start_up_memory_is_released_once_the_child_has_execd() {
        let argv: Vec<OsString> = ["sleep", "30"].iter().map(OsString::from).collect();
        let req = request("/bin/sleep", &argv, vec![]);
        let mut child = spawn(req).expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !child.exec.release_if_running() {
            assert!(std::time::Instant::now() < deadline, "the child never exec'd");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(child.exec.failure().is_none(), "released means it ran its program");
        // SAFETY: ending and reaping our own child.
        unsafe {
            libc::kill(child.pid as i32, libc::SIGKILL);
            let mut status = 0;
            assert_eq!(libc::waitpid(child.pid as i32, &mut status, 0), child.pid as i32);
        }
    }

    #[test]
    fn the_group_exists_as_soon_as_spawn_returns() {
        // spawn does not wait for the child's exec, so it sets the child's group itself: a
        // signal to the group right away must reach the child, not fail with ESRCH.
        for _ in 0..200 {
            let argv: Vec<OsString> = ["sleep", "30"].iter().map(OsString::from).collect();
            let req = request("/bin/sleep", &argv, vec![]);
            let child = spawn(req).expect("spawn");
            // SAFETY: signalling and then waiting for our own child's group.
            unsafe {
                assert_eq!(libc::kill(-(child.pid as i32), libc::SIGKILL), 0, "{}", io::Error::last_os_error());
                let mut status = 0;
                assert_eq!(libc::waitpid(child.pid as i32, &mut status, 0), child.pid as i32);
                assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL, "{status:#x}");
            }
            assert!(child.exec.failure().is_none());
        }
    }

    #[test]
    fn many_spawns_from_threads_at_once_all_run_their_program() {
        // Children that exec while others are being started on other threads: each must run
        // its own program with its own argument (memory is shared until exec).
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let code = (t * 50 + i) % 200;
                        let argv: Vec<OsString> =
                            ["/bin/sh", "-c", &format!("exit {code}")].iter().map(OsString::from).collect();
                        let req = request("/bin/sh", &argv, vec![]);
                        let child = spawn(req).expect("spawn");
                        let mut status = 0;
                        // SAFETY: waiting for our own child.
                        assert_eq!(unsafe { libc::waitpid(child.pid as i32, &mut status, 0) }, child.pid as i32);
                        assert!(child.exec.failure().is_none());
                        assert_eq!(libc::WEXITSTATUS(status), code);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
