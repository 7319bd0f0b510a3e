"""Warm jobs through the plugin (hydra.launcher.warm, on by default): every job is forked from
a warm interpreter, is still its own process, and returns and leaves what a fresh one does;
hydra.launcher.warm=false runs fresh processes; a failed preload falls back to them."""
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hydra.core.utils import JobStatus
from hydra.test_utils.test_utils import TSweepRunner
from omegaconf import DictConfig
from plugin_sweeps import journal, sweep

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm jobs are Linux only")


def what_the_job_sees(cfg: DictConfig) -> Dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("SigBlk", "SigIgn"):
                status[key] = line.split()[1]
    return {
        "a": cfg.a,
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "fds": fds,
        "status": status,
        "sigint": getattr(signal.getsignal(signal.SIGINT), "__name__", None),
        "sigterm": str(signal.getsignal(signal.SIGTERM)),
        "env": sorted(k for k in os.environ if k != "ORCHESTRATOR_JOB_KEY"),
        "cwd": os.getcwd(),
        "output_dir": HydraConfig.get().runtime.output_dir,
        "stdout": [sys.stdout.line_buffering, sys.stdout.write_through],
        "main": sys.modules["__main__"].__name__,
        # Whether the job found the batch's shared objects unpickled by the warm interpreter.
        "warm_hits": getattr(sys.modules.get("hydra_plugins.orchestrator_launcher._worker"), "WARM_HITS", None),
    }


def run(runner: TSweepRunner, tmp_path: Path, *overrides: str) -> Any:
    with sweep(runner, what_the_job_sees, tmp_path, "+a=1,2,3", *overrides) as s:
        rets = s.returns[0]
        assert [r.status for r in rets] == [JobStatus.COMPLETED] * 3
        return [r.return_value for r in rets], journal(tmp_path)


def test_warm_by_default_and_the_same_as_fresh(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    warm, warm_records = run(hydra_sweep_runner, tmp_path / "warm")
    fresh, fresh_records = run(hydra_sweep_runner, tmp_path / "fresh", "hydra.launcher.warm=false")
    assert [r.get("warm") for r in warm_records] == [True] * 3
    assert [r.get("warm") for r in fresh_records] == [None] * 3
    assert [w.pop("warm_hits") for w in warm] == [1, 1, 1]
    # (a fresh worker is __main__ only: the module is not imported under its name)
    assert [f.pop("warm_hits") for f in fresh] == [None, None, None]
    for w, f in zip(warm, fresh):
        # Its own process and process group, not the launcher's.
        assert w["pid"] == w["pgid"] and w["pid"] != os.getpid()
        for key in ("pid", "pgid"):
            w.pop(key)
            f.pop(key)
        for key in ("output_dir", "cwd"):
            w[key] = os.path.relpath(w[key], tmp_path / "warm")
            f[key] = os.path.relpath(f[key], tmp_path / "fresh")
        assert w == f
    # The same files in both trees.
    def tree(root: Path) -> List[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    assert tree(tmp_path / "warm") == tree(tmp_path / "fresh")


def test_fast_exit_still_returns_results(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    values, records = run(hydra_sweep_runner, tmp_path, "hydra.launcher.fast_exit=true")
    assert [v["a"] for v in values] == [1, 2, 3]
    assert [r.get("warm") for r in records] == [True] * 3


def test_a_failed_preload_runs_fresh_processes(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    values, records = run(hydra_sweep_runner, tmp_path, "hydra.launcher.preload=[no_such_module_anywhere]")
    assert [v["a"] for v in values] == [1, 2, 3]
    assert [r.get("warm") for r in records] == [None] * 3
