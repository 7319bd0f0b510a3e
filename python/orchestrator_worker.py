"""What a Python job started by orchestrator can read about itself. Plain Python 3.

    import orchestrator_worker as ow
    ctx = ow.job_context()          # num, id, dir, sweep_dir, slot, config, overrides
    data = ow.open_arg("data")      # bytes-like: inline text, or the file mapped per mmap_mode
    arr = ow.as_numpy("data", "float64")  # numpy.memmap when numpy is installed

Arguments bigger than max_nbytes arrive as files (`data=@/dev/shm/orchestrator-spill-.../<hash>`),
described in the ORCHESTRATOR_ARGS environment variable with their mmap_mode:
r = read-only, r+ = shared read-write (writes reach the file), c = copy-on-write (writes stay
in this process), null = a plain file.
"""
import json
import mmap
import os
import sys

__all__ = ["job_context", "arg_files", "open_arg", "as_numpy"]


def job_context():
    """The job's identity and paths (values are None outside orchestrator)."""
    env = os.environ.get
    num = env("ORCHESTRATOR_JOB_NUM")
    slot = env("ORCHESTRATOR_SLOT")
    overrides = env("ORCHESTRATOR_OVERRIDES")
    return {
        "num": int(num) if num is not None else None,
        "id": env("ORCHESTRATOR_JOB_ID"),
        "dir": env("ORCHESTRATOR_JOB_DIR"),
        "sweep_dir": env("ORCHESTRATOR_SWEEP_DIR"),
        "slot": int(slot) if slot is not None else None,
        "config": env("ORCHESTRATOR_CONFIG"),
        "overrides": json.loads(overrides) if overrides else {},
    }


def arg_files():
    """Arguments passed as files: {key: {"path", "mode", "size", "shared"}}."""
    text = os.environ.get("ORCHESTRATOR_ARGS")
    return json.loads(text) if text else {}


def _inline(key, argv=None):
    found = None
    for a in (sys.argv[1:] if argv is None else argv):
        k, sep, v = a.partition("=")
        if sep and k.lstrip("+") == key:
            found = v
    return found


_ACCESS = {"r": mmap.ACCESS_READ, "r+": mmap.ACCESS_WRITE, "w+": mmap.ACCESS_WRITE, "c": mmap.ACCESS_COPY}


def _map(path, mode):
    if mode is None:
        with open(path, "rb") as f:
            return f.read()
    writable = mode in ("r+", "w+")
    with open(path, "r+b" if writable else "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=_ACCESS[mode])


def open_arg(key):
    """Argument `key` as bytes (inline) or an mmap of its file (r: read-only, r+: shared
    writable, c: private writable), or bytes for mmap_mode null."""
    info = arg_files().get(key)
    if info is not None:
        return _map(info["path"], info.get("mode"))
    value = _inline(key)
    if value is None:
        raise KeyError(f"no argument {key!r} (neither in ORCHESTRATOR_ARGS nor as {key}=... in argv)")
    if len(value) > 1 and value.startswith("@"):
        return _map(value[1:], "r")
    return value.encode()


def as_numpy(key, dtype="uint8", shape=None):
    """Argument `key` as a numpy array: numpy.memmap of its file with the sweep's mode, or an
    array over the inline bytes. Needs numpy."""
    import numpy as np  # optional dependency

    info = arg_files().get(key)
    if info is not None and info.get("mode") is not None:
        return np.memmap(info["path"], dtype=dtype, mode={"w+": "r+"}.get(info["mode"], info["mode"]), shape=shape)
    data = open_arg(key)
    return np.frombuffer(bytes(data), dtype=dtype) if shape is None else np.frombuffer(bytes(data), dtype=dtype).reshape(shape)
