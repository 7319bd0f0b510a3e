"""The plugin on a real Slurm cluster (hydra.launcher.backend=slurm): the one-node cluster
.ci/run starts (.ci/slurm/start.sh). Without a cluster these tests are skipped by name; with
ORCHESTRATOR_REQUIRE_SLURM=1 (as in CI) a missing cluster is a failure."""
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hydra.core.utils import JobStatus
from hydra.test_utils.test_utils import TSweepRunner
from omegaconf import DictConfig

import plugin_sweeps
from plugin_sweeps import journal


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "up" in out.stdout


UP = _cluster_up()
if not UP and os.environ.get("ORCHESTRATOR_REQUIRE_SLURM") == "1":
    raise RuntimeError("ORCHESTRATOR_REQUIRE_SLURM=1 but no Slurm cluster answers (sinfo): start one with .ci/slurm/start.sh")
pytestmark = pytest.mark.skipif(not UP, reason="no Slurm cluster (.ci/slurm/start.sh starts one)")


def sweep(runner: TSweepRunner, task: Any, tmp_path: Path, *overrides: str) -> Any:
    return plugin_sweeps.sweep(runner, task, tmp_path, "hydra.launcher.backend=slurm", *overrides)


def queued() -> str:
    return subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout.strip()


def returns_its_node(cfg: DictConfig) -> Any:
    return {"a": cfg.a, "slurm_job": os.environ.get("SLURM_JOB_ID"), "task": os.environ.get("SLURM_ARRAY_TASK_ID")}


def test_jobs_run_as_slurm_tasks_and_return_their_values(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    with sweep(hydra_sweep_runner, returns_its_node, tmp_path, "+a=1,2,3", "hydra.launcher.n_jobs=2") as s:
        rets = s.returns[0]
        assert [r.status for r in rets] == [JobStatus.COMPLETED] * 3
        assert [r.return_value["a"] for r in rets] == [1, 2, 3]
        # Each job was a task of an array, not a local process.
        assert all(r.return_value["slurm_job"] for r in rets)
        assert sorted(r.return_value["task"] for r in rets) == ["0", "1", "2"]
        records = journal(tmp_path)
        assert [r["status"] for r in records] == ["succeeded"] * 3
        assert all(r["isolation"] == "slurm-task" and r["node"] for r in records)
        assert all((tmp_path / str(n) / ".hydra" / "config.yaml").exists() for n in range(3))
        # The job files the launcher wrote in the sweep dir for the nodes are gone.
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".orchestrator-hydra-")]
    assert queued() == ""


def raises_on_2(cfg: DictConfig) -> Any:
    if cfg.a == 2:
        raise ValueError("a=2 fails on the cluster")
    return cfg.a


def test_a_failing_task_on_the_cluster(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    # As locally: every job runs, then the sweeper raises the task's exception.
    with pytest.raises(ValueError, match="a=2 fails on the cluster"):
        with sweep(hydra_sweep_runner, raises_on_2, tmp_path, "+a=1,2,3"):
            pass
    records = journal(tmp_path)
    assert [r["status"] for r in records] == ["succeeded", "failed", "succeeded"]
    assert records[1]["exit_code"] == 1 and records[1]["isolation"] == "slurm-task"
    assert "ValueError: a=2 fails on the cluster" in Path(records[1]["log"]).read_text()
    assert queued() == ""


def test_a_submission_slurm_refuses_is_an_error_and_nothing_is_queued(
    hydra_sweep_runner: TSweepRunner, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)refused the launch.*no_such_partition"):
        with sweep(hydra_sweep_runner, returns_its_node, tmp_path, "+a=1", "+hydra.launcher.slurm.partition=no_such_partition"):
            pass
    assert not (tmp_path / "jobs.jsonl").exists()
    assert queued() == ""
