#!/usr/bin/env python3
"""joblib's side of bench/spill.sh: one large array shared by many tasks.

Loads SRC (raw bytes) into memory as a uint8 numpy array, then runs

    Parallel(n_jobs=N_JOBS, max_nbytes="1M", mmap_mode="r", temp_folder=TEMP_FOLDER)(
        delayed(read_fully)(arr) for _ in range(TASKS))

where each task sums every byte of the array it gets. joblib dumps the array once into a
memmap under TEMP_FOLDER and hands the workers a read-only np.memmap of it, which is the
behaviour orchestrator's `max_nbytes`/`mmap_mode`/`temp_folder` copy.

Prints one JSON line on stdout (the sum, how many tasks saw a memmap, which backing files,
the workers' peak RSS, the time of each phase). Exits 1 if a task saw something other than
a memmap, the tasks disagree on the sum, or the sum is not --expect-sum.

Usage: spill_joblib.py SRC [--tasks 32] [--n-jobs 2] [--max-nbytes 1M] [--mmap-mode r]
                           [--temp-folder /dev/shm] [--expect-sum S]
"""

import argparse
import json
import os
import resource
import sys
import time

T_START = time.perf_counter()

import joblib  # noqa: E402
import numpy as np  # noqa: E402
from joblib import Parallel, delayed  # noqa: E402

T_IMPORTED = time.perf_counter()


def read_fully(arr):
    """One task: read every byte. Returns what the parent checks."""
    total = int(arr.sum(dtype=np.uint64))
    backing = getattr(arr, "filename", None)  # set on np.memmap
    return {
        "sum": total,
        "size": int(arr.nbytes),
        "memmap": isinstance(arr, np.memmap),
        "file": backing,
        "pid": os.getpid(),
        # Linux: KiB, the worker's own peak (loky workers are reused across tasks).
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src")
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--max-nbytes", default="1M")
    p.add_argument("--mmap-mode", default="r")
    p.add_argument("--temp-folder", default=None)
    p.add_argument("--expect-sum", type=int, default=None)
    a = p.parse_args()

    arr = np.fromfile(a.src, dtype=np.uint8)
    t_loaded = time.perf_counter()
    results = Parallel(
        n_jobs=a.n_jobs,
        max_nbytes=a.max_nbytes,
        mmap_mode=a.mmap_mode,
        temp_folder=a.temp_folder,
    )(delayed(read_fully)(arr) for _ in range(a.tasks))
    t_done = time.perf_counter()

    sums = sorted({r["sum"] for r in results})
    files = sorted({str(r["file"]) for r in results})
    report = {
        "tasks": len(results),
        "size": int(arr.nbytes),
        "sums": sums,
        "memmap_tasks": sum(r["memmap"] for r in results),
        "memmap_files": files,
        "workers": len({r["pid"] for r in results}),
        "worker_maxrss_kib": max(r["maxrss_kib"] for r in results),
        "import_s": round(T_IMPORTED - T_START, 4),
        "load_s": round(t_loaded - T_IMPORTED, 4),
        "parallel_s": round(t_done - t_loaded, 4),
        "joblib": joblib.__version__,
        "numpy": np.__version__,
    }
    print(json.dumps(report), flush=True)

    problems = []
    if len(results) != a.tasks:
        problems.append(f"{len(results)} results for {a.tasks} tasks")
    if report["memmap_tasks"] != a.tasks:
        problems.append(f"only {report['memmap_tasks']} of {a.tasks} tasks got a memmap")
    if len(sums) != 1:
        problems.append(f"tasks disagree on the sum: {sums}")
    elif a.expect_sum is not None and sums[0] != a.expect_sum:
        problems.append(f"sum {sums[0]}, expected {a.expect_sum}")
    if problems:
        print("spill_joblib.py: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
