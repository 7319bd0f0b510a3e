# orchestrator's fork server ("zygote") for warm Python jobs. Embedded in the binary and run as
#
#     python [the jobs' interpreter flags] -c <BOOT>
#
# where BOOT compiles this file, read from stdin, as `<orchestrator-zygote>`, its first line
# replaced by `# <settings as JSON>`; with the control socket (AF_UNIX, SOCK_SEQPACKET) on the fd the settings name. It imports
# what the sweep's jobs would import (the preload list), never running a job, checks that it
# is safe to fork (one thread, no CUDA), says so, then forks one process per request:
#
#   request  (one packet): JSON {"id", "argv", "env", "cwd", "cgroups"} + 5 fds (SCM_RIGHTS):
#            stdin, stdout, stderr, a report pipe the job writes to if its set-up fails, and
#            a "go" pipe: the job waits for the supervisor's byte on it (sent once it has
#            taken the job on) and exits at once if it gets none
#   reply    (one packet): JSON {"id", "pid"} or {"id", "error"}
#
# Each job is forked twice (zygote -> intermediate -> job) and the intermediate exits at once,
# so that the job is re-parented to the supervisor (a child subreaper): the supervisor waits
# for it, reads its rusage and kills its process group exactly as for a job it spawned
# itself; a late kill can never hit a reused pid, since only the supervisor reaps it. The
# zygote only forks: it never waits for, signals or outlives a job's supervision. It exits
# when the supervisor closes the socket (or dies: the socket closes with it).
#
# What a job's process does between the fork and the app (each is a test in the crate):
# new process group; parent-death signal once re-parented; every zygote fd closed; default
# signal handling and an empty signal mask; stdio re-bound to the job's pipes with Python's
# buffering; the job's environment, thread limits applied through the libraries' runtime
# calls; cwd; numpy's and torch's global RNGs re-seeded; then the script runs as __main__
# (or the module, for -m) with its own sys.argv and sys.path[0], and the process exits as a
# fresh interpreter would (SystemExit, atexit, flushing), or with os._exit when fast_exit is
# set (atexit handlers and unflushed files of the app are then lost).
import ctypes
import gc
import json
import os
import signal
import socket
import sys

# This file's first line, as BOOT read it into _src: the settings.
SETTINGS = json.loads(_src.split("\n", 1)[0][2:])  # noqa: F821 - set by BOOT
del _src  # noqa: F821
SOCK = socket.socket(fileno=SETTINGS["fd"])
SUPERVISOR = os.getppid()
LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
# -u or PYTHONUNBUFFERED: Python made stdout write-through (sys.flags does not say).
UNBUFFERED = bool(getattr(sys.stdout, "write_through", False))
# What the job is: a script path or a module (-m).
MODE, TARGET = SETTINGS["mode"], SETTINGS["target"]
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _send(obj):
    SOCK.send(json.dumps(obj).encode())


def _preload():
    """Import what jobs will import: modules by name, `module:attr.path` called (a warm-up
    hook, e.g. the Hydra plugin's), a `.py` path run as a module that is not __main__."""
    import importlib

    for item in SETTINGS["preload"]:
        if item.endswith(".py") and os.sep in item:
            _preload_script(item)
        elif ":" in item:
            mod, attrs = item.split(":", 1)
            target = importlib.import_module(mod)
            for attr in attrs.split("."):
                target = getattr(target, attr)
            target()
        else:
            importlib.import_module(item)


class _NotInTheZygote(BaseException):
    """Raised by a Hydra app's task if something calls it while its script is preloaded."""


def _preload_script(path):
    """Run the script as a module named otherwise than __main__ (its main guard keeps the task
    from running), for its imports; `hydra.main` is swapped for a decorator whose function
    stops the preload instead of running the task, for a script that calls it unguarded."""
    import runpy

    hydra = None
    try:
        import hydra
    except ImportError:
        pass
    real = getattr(hydra, "main", None)

    def main(*args, **kwargs):
        def decorate(task):
            def never(*a, **k):
                raise _NotInTheZygote()

            return never

        return decorate

    if real is not None:
        hydra.main = main
    try:
        runpy.run_path(path, run_name="__orchestrator_preload__")
    except _NotInTheZygote:
        pass
    finally:
        if real is not None:
            hydra.main = real


def _unsafe():
    """Why forking this interpreter would not be safe, or None."""
    tasks = os.listdir("/proc/self/task")
    if len(tasks) > 1:
        names = []
        for t in tasks:
            if int(t) != os.getpid():
                try:
                    with open(f"/proc/self/task/{t}/comm") as f:
                        names.append(f.read().strip())
                except OSError:
                    names.append(t)
        return (
            f"the preloaded modules started {len(tasks) - 1} thread(s) ({', '.join(names)}); "
            "only the forking thread survives a fork (a BLAS starts its pool at import unless "
            "OPENBLAS_NUM_THREADS/OMP_NUM_THREADS is 1: set it in slot_env or the environment)"
        )
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                return "CUDA is initialised (a forked child cannot use it)"
        except Exception:
            pass
    return None


def _threads_fixed():
    """Whether a loaded library has read the thread-count variables (OMP_NUM_THREADS, ...)
    with no runtime call here to set them per job: then a job whose values differ from the
    zygote's runs fresh. torch has its own (torch.set_num_threads); the rest need
    threadpoolctl."""
    native = [m for m in ("numpy", "scipy", "numexpr", "mkl", "sklearn", "torch") if m in sys.modules]
    if not native or native == ["torch"]:
        return False
    try:
        from threadpoolctl import ThreadpoolController  # noqa: F401 - 3.0 and later
    except ImportError:
        return True
    return False


def _zygote_fds():
    """The fds open now (not the one that listed them, closed by then)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
            fds.add(int(name))
        except OSError:
            pass
    return fds


# How signals were when this interpreter started, as a fresh one's would be (a signal the
# supervisor's caller ignores, nohup's SIGHUP, stays ignored): each job gets them back.
INITIAL_SIGNALS = {}
for _sig in (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGCHLD,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGPIPE,
):
    _handler = signal.getsignal(_sig)
    if _handler is not None:
        INITIAL_SIGNALS[_sig] = _handler


def main():
    # Nothing but stdio and the socket: whatever else the supervisor's process had open
    # without close-on-exec is not the jobs' to hold.
    os.closerange(3, SETTINGS["fd"])
    os.closerange(SETTINGS["fd"] + 1, 1 << 20)
    # Ctrl-C at the terminal is the supervisor's to handle (the zygote has a process group of
    # its own); blocked rather than ignored, so that a SIGINT sent to a job just forked, still
    # setting up, is not lost: it is delivered once the job unblocks it.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    # As the jobs will have it (the script's dir; for a module, the cwd it was keyed on).
    sys.path[0] = os.path.dirname(os.path.realpath(TARGET)) if MODE == "path" else SETTINGS["dir"]
    try:
        _preload()
    except BaseException as e:  # noqa: B902 - any failure means: run jobs fresh
        import traceback

        text = "".join(traceback.format_exception_only(type(e), e)).strip()
        _send({"ready": False, "error": f"preloading failed: {text}"})
        return None
    why = _unsafe()
    if why is not None:
        _send({"ready": False, "error": why})
        return None
    # Jobs share the preloaded objects' pages until they write them: keep the collector
    # from touching (and so copying) them in every job.
    gc.collect()
    gc.freeze()
    # The fds the preloaded modules opened stay open in jobs, as they would be in a fresh
    # interpreter that imported them; the socket and anything received are closed.
    global PRELOAD_FDS
    PRELOAD_FDS = _zygote_fds() - {0, 1, 2, SOCK.fileno()}
    _send({"ready": True, "pid": os.getpid(), "modules": len(sys.modules), "threads_fixed": _threads_fixed()})
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(SOCK, 1 << 20, 8)
        except InterruptedError:
            continue
        except OSError:
            return None
        if not msg:
            return None
        req = json.loads(msg)
        job = _fork(req, fds)
        if job is not None:
            return job  # in the job's process


def _fork(req, fds):
    """Fork the job (through an intermediate that exits at once) and reply with its pid.
    Returns the request in the job's process, None in the zygote."""
    # Buffered output would be printed again by every child.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        r, w = os.pipe()
        first = os.fork()
    except OSError as e:
        for fd in fds:
            os.close(fd)
        _send({"id": req["id"], "error": f"fork failed: {e}"})
        return None
    if first == 0:
        try:
            os.close(r)
            intermediate = os.getpid()
            job = os.fork()
        except BaseException:  # noqa: B902
            os._exit(1)
        if job == 0:
            os.close(w)
            req["fds"] = fds
            req["intermediate"] = intermediate
            return req
        try:
            # Also here, so that the group exists before the supervisor hears of the job.
            os.setpgid(job, job)
        except OSError:
            pass
        try:
            os.write(w, b"%d" % job)
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 64)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(first, 0)
    for fd in fds:
        os.close(fd)
    if data:
        _send({"id": req["id"], "pid": int(data)})
    else:
        _send({"id": req["id"], "error": "the intermediate process failed to fork the job"})
    return None


# ---- in the job's process ------------------------------------------------------------------


def _set_up(req):
    """Everything between the fork and the app; raises with a message on failure."""
    stdin, stdout, stderr, report, go = req["fds"]
    SOCK.close()
    os.setpgid(0, 0)
    # Re-parented to the supervisor once the intermediate is gone (microseconds); only then
    # does a parent-death signal mean the supervisor's death. (The supervisor's main thread
    # is then the parent: the signal comes when the supervisor's process ends.)
    while os.getppid() == req["intermediate"]:
        os.sched_yield()
    _parent_death_signal()
    if os.getppid() != SUPERVISOR:
        os._exit(137)  # the supervisor is gone already
    # Nothing runs before the supervisor has taken the job on (it waits for it, it can kill
    # it); one that gave up on it (the zygote's answer came too late) closes the pipe.
    if os.read(go, 1) != b"1":
        os._exit(0)
    os.close(go)
    _set_marker(SETTINGS["marker_var"], req["env"].get(SETTINGS["marker_var"], ""))
    for procs in req.get("cgroups", ()):
        with open(procs, "w") as f:
            f.write("0")
    # Signals as a fresh interpreter has them; no timers; then an empty mask (a SIGINT that
    # came meanwhile is delivered now, to Python's handler).
    signal.set_wakeup_fd(-1)
    for sig, handler in INITIAL_SIGNALS.items():
        signal.signal(sig, handler)
    signal.setitimer(signal.ITIMER_REAL, 0)
    # stdio on the job's pipes.
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    keep = {0, 1, 2, report} | PRELOAD_FDS
    for fd in _zygote_fds():
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    _rebind_stdio()
    # The job's environment; start-up-only variables were checked by the supervisor.
    env = req["env"]
    old_threads = {k: os.environ.get(k) for k in THREAD_VARS + ("GOTO_NUM_THREADS",)}
    os.environ.clear()
    os.environ.update(env)
    _apply_thread_limits(old_threads, env)
    os.chdir(req["cwd"])
    _reseed()
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    return report


def _set_marker(name, value):
    """Write the job's marker over the zygote's in this process's environment block, in
    place: /proc/<pid>/environ (how the supervisor tells a job's escaped processes, forks
    included, without a cgroup) shows the environment a process started with, which for a
    forked job is the zygote's. The zygote's value was padded to leave room."""
    if not value:
        return
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # Fields 50 and 51 of stat (env_start, env_end); the list starts at field 3.
    start, end = int(fields[47]), int(fields[48])
    block = ctypes.string_at(start, end - start)
    key = name.encode() + b"="
    at = 0 if block.startswith(key) else block.find(b"\0" + key) + 1
    if at <= 0 and not block.startswith(key):
        return
    stop = block.find(b"\0", at)
    stop = len(block) if stop < 0 else stop
    entry = key + value.encode()
    if len(entry) > stop - at:
        return
    ctypes.memmove(start + at, entry + b"\0" * (stop - at - len(entry)), stop - at)


def _parent_death_signal():
    LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _rebind_stdio():
    """sys.stdin/stdout/stderr as a fresh interpreter makes them on fds that are not a
    terminal (Python's create_stdio): stdout block-buffered, stderr line-buffered with
    backslashreplace; with -u or PYTHONUNBUFFERED, an unbuffered binary layer and
    write-through text."""
    import io

    unbuffered = UNBUFFERED
    enc = getattr(sys.stdout, "encoding", None) or "utf-8"
    errors = getattr(sys.stdout, "errors", None) or "strict"

    def writer(fd, line_buffering, errs):
        buf = io.open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False)
        return io.TextIOWrapper(
            buf, encoding=enc, errors=errs, newline="\n", line_buffering=line_buffering, write_through=unbuffered
        )

    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding=enc, errors=errors)
    sys.stdout = sys.__stdout__ = writer(1, False, errors)
    # Python: stderr is line-buffered unless unbuffered.
    sys.stderr = sys.__stderr__ = writer(2, not unbuffered, "backslashreplace")


def _blas_limits(env):
    """The thread counts each library would take from `env` at its start, by threadpoolctl's
    internal_api (each reads its own variable first, then OMP_NUM_THREADS)."""
    omp = env.get("OMP_NUM_THREADS")
    return {
        "openblas": env.get("OPENBLAS_NUM_THREADS") or env.get("GOTO_NUM_THREADS") or omp,
        "mkl": env.get("MKL_NUM_THREADS") or omp,
        "blis": env.get("BLIS_NUM_THREADS") or omp,
        "openmp": omp,
    }


def _apply_thread_limits(old, env):
    """Thread-count variables were read when the libraries were imported (in the zygote):
    a job whose values differ gets them through the libraries' runtime calls (the binary
    runs it fresh when there is none: see _threads_fixed)."""
    before, after = _blas_limits(old), _blas_limits(env)
    changed = {}
    for api, value in after.items():
        if value != before[api] and value:
            try:
                changed[api] = int(value)
            except ValueError:
                pass
    if not changed:
        return
    torch = sys.modules.get("torch")
    if torch is not None and "openmp" in changed:
        try:
            torch.set_num_threads(changed["openmp"])
        except Exception:
            pass
    if any(m in sys.modules for m in ("numpy", "scipy", "numexpr", "mkl", "sklearn")):
        try:
            from threadpoolctl import ThreadpoolController

            controller = ThreadpoolController()
            for api, n in changed.items():
                controller.select(internal_api=api).limit(limits=n)
        except Exception:
            pass


def _reseed():
    """Global RNGs the zygote created are copies in every job: seed them afresh (Python's
    `random` does it itself at fork)."""
    nprandom = sys.modules.get("numpy.random")
    if nprandom is not None:
        try:
            nprandom.seed()
        except Exception:
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.seed()
        except Exception:
            pass


def _run(req):
    """Run the job's program as `python <argv>` would; returns its exit code."""
    import runpy
    import traceback

    argv = req["argv"]
    if MODE == "path":
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))
    else:
        sys.argv = [TARGET] + list(argv[1:])
        sys.path[0] = os.getcwd()
    try:
        if MODE == "path":
            _run_script(argv[0])
        else:
            _run_module(TARGET)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: B902 - what an uncaught exception does in a fresh python
        tb = e.__traceback__
        # Leave out the frames of this file and runpy: the traceback starts at the app.
        skip = ("<orchestrator-zygote>", "<frozen runpy>", runpy.__file__)
        while tb is not None and tb.tb_frame.f_code.co_filename in skip:
            tb = tb.tb_next
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        if isinstance(e, KeyboardInterrupt):
            # Python ends by SIGINT after its teardown: see _end_by_sigint.
            global _INTERRUPTED
            _INTERRUPTED = True
        return 1
    return 0


def _run_module(name):
    """`python -m name` in this process, as Python's own runpy._run_module_as_main, but in a
    fresh __main__ module; a module the zygote preloaded is run again as __main__ without
    runpy's warning about it."""
    import builtins
    import runpy
    import types
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*found in sys.modules")
            _, spec, code = runpy._get_module_details(name)
        run_code = runpy._run_code
    except AttributeError:  # runpy's internals changed: the public API (it warns)
        runpy.run_module(name, run_name="__main__", alter_sys=True)
        return
    except ImportError as e:
        # What `python -m` says of a module it cannot find.
        print(f"{sys.executable}: {e}", file=sys.stderr)
        sys.exit(1)
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.argv[0] = spec.origin
    run_code(code, main.__dict__, None, "__main__", spec)


def _run_script(script):
    """`python script.py` in this process: a fresh __main__ module (which stays __main__ until
    the exit, for atexit handlers and pickling), __file__ absolute, sys.argv[0] as written."""
    import builtins
    import runpy
    import types
    from importlib.machinery import SourceFileLoader

    path = os.path.abspath(script)
    if not os.path.isfile(path):
        # A directory or zip file with a __main__.py.
        runpy.run_path(path, run_name="__main__")
        return
    with open(path, "rb") as f:
        source = f.read()
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__cached__ = None
    main.__builtins__ = builtins
    main.__loader__ = SourceFileLoader("__main__", path)
    sys.modules["__main__"] = main
    exec(compile(source, path, "exec"), main.__dict__)


_INTERRUPTED = False


def _end_by_sigint():
    """An app that ended with an uncaught KeyboardInterrupt dies by SIGINT, as Python makes
    it do once its atexit handlers have run and its streams are flushed."""
    if _INTERRUPTED:
        import atexit

        atexit._run_exitfuncs()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


PRELOAD_FDS = set()
_JOB = main()
if _JOB is None:
    # The zygote is done: its preloaded modules' atexit handlers are the jobs' to run.
    os._exit(0)
try:
    _report = _set_up(_JOB)
except BaseException as e:  # noqa: B902 - the job never ran: tell the supervisor why
    try:
        os.write(_JOB["fds"][3], f"{type(e).__name__}: {e}".encode())
    finally:
        os._exit(127)
os.close(_report)
del _report
if SETTINGS.get("fast_exit"):
    # The app's teardown skipped: stdio flushed, then os._exit with the app's code.
    try:
        _code = _run(_JOB)
    except SystemExit as e:
        _code = e.code
    _flush()
    if _INTERRUPTED:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    if _code is None:
        _code = 0
    elif not isinstance(_code, int):
        print(_code, file=sys.stderr)
        _flush()
        _code = 1
    os._exit(_code & 0xFF)
_code = _run(_JOB)
_end_by_sigint()
sys.exit(_code)
