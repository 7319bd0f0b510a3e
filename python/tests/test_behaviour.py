"""What the launcher returns and how it ends jobs: return values, a raising task (picklable
or not), a task past hydra.launcher.timeout, a task that segfaults, Ctrl-C mid-sweep (no
process survives), the launcher's own settings (slot_env, refused values)."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, List

import pytest
import yaml
from hydra.core.utils import JobStatus
from hydra.test_utils.test_utils import TSweepRunner
from omegaconf import DictConfig
from plugin_sweeps import journal, sweep

from hydra_plugins.orchestrator_launcher._errors import OrchestratorJobError, TaskError

APPS = Path(__file__).parent / "apps"


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def returns_values(cfg: DictConfig) -> Any:
    return {"a": cfg.a, "pid": os.getpid(), "point": Point(cfg.a * 10)}


def test_return_values(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    with sweep(hydra_sweep_runner, returns_values, tmp_path, "+a=1,2,3") as s:
        rets = s.returns[0]
        assert [r.status for r in rets] == [JobStatus.COMPLETED] * 3
        assert [r.return_value["a"] for r in rets] == [1, 2, 3]
        assert [r.return_value["point"].x for r in rets] == [10, 20, 30]
        # One process per job, none of them this one.
        pids = {r.return_value["pid"] for r in rets}
        assert len(pids) == 3 and os.getpid() not in pids
        assert [r.overrides for r in rets] == [["+a=1"], ["+a=2"], ["+a=3"]]
        assert [r.hydra_cfg.hydra.job.num for r in rets] == [0, 1, 2]
        assert [r.task_name for r in rets] == ["a_module"] * 3
        # (the sweep runner removes its dir on exit)
        records = journal(tmp_path)
        assert [r["status"] for r in records] == ["succeeded"] * 3
        assert [r["pid"] for r in records] == [r.return_value["pid"] for r in rets]


def now_of_job(cfg: DictConfig) -> Any:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return {"dir": hc.sweep.dir, "output_dir": hc.runtime.output_dir, "cwd": os.getcwd()}


def test_now_in_subdir_is_the_same_in_launcher_and_job(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    # `${now:}` in the job's dir: the launcher (which names the capture log) and the job
    # (where Hydra writes) resolve it to the same value, as the sweep config carries the
    # resolver cache.
    subdir = "hydra.sweep.subdir=${hydra.job.num}_${now:%H-%M-%S-%f}"
    with sweep(hydra_sweep_runner, now_of_job, tmp_path, "+a=1,2", subdir) as s:
        out = [r.return_value["output_dir"] for r in s.returns[0]]
        records = journal(tmp_path)
        assert len(set(out)) == 2
        assert [r["dir"] for r in records] == out
        for r in records:
            assert Path(r["log"]).parent == Path(r["dir"])
            assert Path(r["log"]).is_file() and (Path(r["dir"]) / "a_module.log").is_file()


def raises_on_2(cfg: DictConfig) -> Any:
    if cfg.a == 2:
        raise ValueError(f"boom {cfg.a}")
    return cfg.a


def test_raising_task(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^boom 2$"):
        with sweep(hydra_sweep_runner, raises_on_2, tmp_path, "+a=1,2,3"):
            pass
    records = journal(tmp_path)
    # Every job ran (Hydra's behaviour: the sweeper raises after the batch).
    assert [r["status"] for r in records] == ["succeeded", "failed", "succeeded"]
    assert records[1]["exit_code"] == 1
    # The traceback is in the job's capture log.
    capture = Path(records[1]["log"]).read_text()
    assert "ValueError: boom 2" in capture


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raises_unpicklable(cfg: DictConfig) -> Any:
    raise Unpicklable()


def test_raising_task_unpicklable_exception(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"(?s)cannot be pickled.*Unpicklable: holds a lock"):
        with sweep(hydra_sweep_runner, raises_unpicklable, tmp_path, "+a=1"):
            pass


def returns_unpicklable(cfg: DictConfig) -> Any:
    return threading.Lock()


def test_unpicklable_return_value(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="return value cannot be pickled"):
        with sweep(hydra_sweep_runner, returns_unpicklable, tmp_path, "+a=1"):
            pass


def sleeps_on_2(cfg: DictConfig) -> Any:
    if cfg.a == 2:
        time.sleep(60)
    return cfg.a


def test_timeout(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(OrchestratorJobError, match=r"job #1 \(\+a=2\) ran past its timeout .* ended by SIGTERM"):
        with sweep(
            hydra_sweep_runner, sleeps_on_2, tmp_path, "+a=1,2,3", "hydra.launcher.timeout=8", "hydra.launcher.n_jobs=3"
        ):
            pass
    assert time.monotonic() - t0 < 40
    records = journal(tmp_path)
    assert [r["status"] for r in records] == ["succeeded", "timed_out", "succeeded"]
    assert records[1]["timed_out"] is True
    assert 8 <= records[1]["duration_s"] < 20


def segfaults_on_2(cfg: DictConfig) -> Any:
    if cfg.a == 2:
        os.kill(os.getpid(), signal.SIGSEGV)
    return cfg.a


def test_segfault(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    with pytest.raises(OrchestratorJobError, match=r"job #1 \(\+a=2\) was killed by SIGSEGV; its output is in .*a_module_orchestrator.log"):
        with sweep(hydra_sweep_runner, segfaults_on_2, tmp_path, "+a=1,2,3"):
            pass
    records = journal(tmp_path)
    assert [r["status"] for r in records] == ["succeeded", "signaled", "succeeded"]
    assert records[1]["signal"] == "SIGSEGV"


def hogs_on_2(cfg: DictConfig) -> Any:
    if cfg.a == 2:
        hog = b"x" * (400 << 20)
        return len(hog)
    return cfg.a


def test_memory_limit(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    try:
        with sweep(hydra_sweep_runner, hogs_on_2, tmp_path, "+a=1,2,3", "hydra.launcher.mem_gb=0.2"):
            pass
    except OrchestratorJobError as e:
        if not re.search(r"job #1 \(\+a=2\) ran out of memory \(over mem_gb\) and was ended by SIGKILL", str(e)):
            raise
    except Exception as e:  # the binary refused the limit: no memory cgroup here
        if "cannot limit each job's memory" in str(e):
            pytest.skip(f"no memory cgroup here (needs root, or a delegated cgroup, with a memory controller): {e}")
        raise
    else:
        pytest.fail("the job over its memory limit was not reported")
    records = journal(tmp_path)
    assert [r["status"] for r in records] == ["succeeded", "out_of_memory", "succeeded"]
    assert records[1]["signal"] == "SIGKILL"
    assert all(r["mem_peak_kib"] > 0 for r in records)
    assert records[1]["mem_peak_kib"] >= 190 << 10


def slot_value(cfg: DictConfig) -> Any:
    return os.environ.get("MY_GPU"), os.environ.get("ORCHESTRATOR_SLOT")


def test_slot_env(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    with sweep(
        hydra_sweep_runner,
        slot_value,
        tmp_path,
        "+a=1,2,3,4",
        "hydra.launcher.n_jobs=2",
        "+hydra.launcher.slot_env.MY_GPU=[g0, g1]",
    ) as s:
        values = [r.return_value for r in s.returns[0]]
    assert {v[0] for v in values} <= {"g0", "g1"}
    for gpu, slot in values:
        assert gpu == f"g{slot}"


def test_bad_launcher_value_is_refused(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)refused the launch.*invalid halt `sometimes`.*allowed values"):
        with sweep(hydra_sweep_runner, returns_values, tmp_path, "+a=1", "hydra.launcher.halt=sometimes"):
            pass
    assert not (tmp_path / "jobs.jsonl").exists()


def test_admission_settings_reach_the_run(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    # start_delay spaces the starts though three slots are free; a free-memory floor and a
    # load ceiling that always hold change nothing.
    overrides = (
        "+a=1,2,3",
        "hydra.launcher.n_jobs=3",
        "hydra.launcher.start_delay=0.4",
        "hydra.launcher.min_free_memory=1M",
        "hydra.launcher.max_load=1000",
    )
    with sweep(hydra_sweep_runner, returns_values, tmp_path, *overrides) as s:
        assert [r.status for r in s.returns[0]] == [JobStatus.COMPLETED] * 3
        records = journal(tmp_path)
    starts = sorted(datetime.fromisoformat(r["start"].replace("Z", "+00:00")) for r in records)
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:])]
    assert all(g >= 0.39 for g in gaps), gaps


def test_bad_admission_value_is_refused(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)refused the launch.*invalid max_load"):
        with sweep(hydra_sweep_runner, returns_values, tmp_path, "+a=1", "hydra.launcher.max_load=-1"):
            pass
    assert not (tmp_path / "jobs.jsonl").exists()


def fails_its_first_attempt_on_2(cfg: DictConfig) -> Any:
    if cfg.a == 2 and os.environ.get("ORCHESTRATOR_ATTEMPT", "1") == "1":
        raise RuntimeError("the first attempt of a=2 fails")
    return cfg.a


def test_retries(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    overrides = ("+a=1,2", "hydra.launcher.retries=1", "hydra.launcher.retry_delay=0.1")
    with sweep(hydra_sweep_runner, fails_its_first_attempt_on_2, tmp_path, *overrides) as s:
        rets = s.returns[0]
        assert [r.status for r in rets] == [JobStatus.COMPLETED] * 2
        assert [r.return_value for r in rets] == [1, 2]
        records = journal(tmp_path)
        assert [r["attempts"] for r in records] == [1, 2]
        assert [a["status"] for a in records[1]["earlier_attempts"]] == ["failed"]
        log = (tmp_path / "1" / "a_module_orchestrator.log").read_text()
        assert "the first attempt of a=2 fails" in log and "retrying in 0.100s" in log


class MarkCallback:
    """A Hydra callback: on_job_* run in the job's process, on_multirun_* in the launcher's."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(config.hydra.sweep.dir, "multirun_start").write_text(str(os.getpid()))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(os.environ["ORCHESTRATOR_JOB_DIR"], "job_start").write_text(str(os.getpid()))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        Path(config.hydra.runtime.output_dir, "job_end").write_text(f"{os.getpid()} {job_return.status.name}")


def test_callbacks_run_where_hydra_runs_them(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boom 2"):
        with sweep(
            hydra_sweep_runner,
            raises_on_2,
            tmp_path,
            "+a=1,2",
            "+hydra.callbacks.mark._target_=test_behaviour.MarkCallback",
        ):
            pass
    assert (tmp_path / "multirun_start").read_text() == str(os.getpid())
    records = journal(tmp_path)
    for r, status in zip(records, ("COMPLETED", "FAILED")):
        job_dir = Path(r["dir"])
        assert (job_dir / "job_start").read_text() == str(r["pid"])
        assert (job_dir / "job_end").read_text() == f"{r['pid']} {status}"


def test_halt_now(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    # halt=now (joblib's behaviour): the first failure ends the running jobs and starts no
    # other; each of them gets a FAILED JobReturn that says so (the sweeper raises the first
    # failed job's, in job order: job 0's).
    with pytest.raises(OrchestratorJobError, match=r"job #0 \(\+a=1\) was stopped after another job failed"):
        with sweep(
            hydra_sweep_runner,
            halt_app,
            tmp_path,
            "+a=1,2,3,4",
            "hydra.launcher.n_jobs=2",
            "hydra.launcher.halt=now",
        ):
            pass
    statuses = {r["num"]: r["status"] for r in journal(tmp_path)}
    assert statuses[1] == "failed"
    assert statuses.get(0) == "halted", statuses
    assert 2 not in statuses and 3 not in statuses, statuses


def halt_app(cfg: DictConfig) -> Any:
    if cfg.a == 2:
        time.sleep(1)
        raise ValueError("boom 2")
    time.sleep(30)
    return cfg.a


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def descendants(pid: int) -> List[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().split(") ")[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if ppid == pid:
                out.append(int(d))
    return out + [g for c in out for g in descendants(c)]


def start_sleepers(tmp_path: Path) -> "tuple[subprocess.Popen, List[int], List[int], List[str]]":
    """The sleeper app, 4 jobs, 2 at a time: returns once both running jobs have logged."""
    sweep_dir = tmp_path / "sweep"
    app = subprocess.Popen(
        [
            sys.executable,
            str(APPS / "sleeper.py"),
            "--multirun",
            "hydra/launcher=orchestrator",
            "hydra.launcher.n_jobs=2",
            "task=1,2,3,4",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: List[str] = []
    job_pids: List[int] = []
    assert app.stdout is not None
    for line in app.stdout:
        seen.append(line)
        m = re.search(r"job pid (\d+) task", line)
        if m:
            job_pids.append(int(m.group(1)))
        if len(job_pids) == 2:
            break
    assert len(job_pids) == 2, "".join(seen)
    everything = descendants(app.pid)
    # the binary, its watchdog, the two jobs
    assert set(job_pids) <= set(everything) and len(everything) >= 3, everything
    return app, job_pids, everything, seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_the_app_mid_sweep_leaves_no_process(tmp_path: Path, sig: int) -> None:
    # Ctrl-C (or SIGTERM) reaches the app: the launcher forwards it once to the binary, which
    # forwards it to the running jobs and starts no other; the app ends as that signal would.
    app, job_pids, everything, seen = start_sleepers(tmp_path)
    t0 = time.monotonic()
    app.send_signal(sig)
    rest, _ = app.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    survivors = [p for p in everything if alive(p)]
    assert survivors == [], (survivors, "".join(seen) + rest)
    if sig == signal.SIGINT:
        assert app.returncode != 0 and "KeyboardInterrupt" in rest, (app.returncode, rest)
    else:
        assert app.returncode == -signal.SIGTERM, (app.returncode, rest)
    sweep_dir = tmp_path / "sweep"
    records = journal(sweep_dir)
    assert [r["status"] for r in records] == ["interrupted", "interrupted"]
    assert sorted(r["pid"] for r in records) == sorted(job_pids)
    # The two jobs that had not started never did.
    assert not (sweep_dir / "2").exists() and not (sweep_dir / "3").exists()


def test_killed_app_leaves_no_process(tmp_path: Path) -> None:
    # SIGKILL cannot be forwarded: the binary sees its parent gone and stops the jobs.
    app, job_pids, everything, seen = start_sleepers(tmp_path)
    app.kill()
    app.communicate(timeout=60)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(p) for p in everything):
        time.sleep(0.1)
    survivors = [p for p in everything if alive(p)]
    assert survivors == [], survivors
    records = journal(tmp_path / "sweep")
    assert [r["status"] for r in records] == ["interrupted", "interrupted"]


def sleepers_cmd(*overrides: str) -> List[str]:
    return [
        sys.executable,
        str(APPS / "sleeper.py"),
        "--multirun",
        "hydra/launcher=orchestrator",
        "hydra.launcher.n_jobs=2",
        *overrides,
    ]


def test_second_sweep_into_a_busy_dir_is_refused(tmp_path: Path) -> None:
    # Two sweeps given the same dir: the second is refused (the binary holds a lock on the
    # sweep dir, as `orchestrator run` does) instead of mixing its jobs' files with the first's.
    sweep_dir = tmp_path / "same"
    first = subprocess.Popen(
        sleepers_cmd("task=1,2", "sleep=4", f"hydra.sweep.dir={sweep_dir}"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert first.stdout is not None
    started = 0
    for line in first.stdout:
        started += "job pid" in line
        if started == 2:
            break
    second = subprocess.run(
        sleepers_cmd("task=3,4", "sleep=0", f"hydra.sweep.dir={sweep_dir}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    rest, _ = first.communicate(timeout=60)
    assert first.returncode == 0, rest
    assert second.returncode != 0
    assert "is in use by another orchestrator run" in second.stderr, second.stderr
    records = journal(sweep_dir)
    assert [(r["num"], r["overrides"], r["status"]) for r in records] == [
        (0, ["task=1", "sleep=4"], "succeeded"),
        (1, ["task=2", "sleep=4"], "succeeded"),
    ]


def test_two_sweeps_started_in_the_same_second(tmp_path: Path) -> None:
    # Hydra names a sweep's dir after the second it started in. Two sweeps started together
    # either got different dirs, or one of them was refused: never one dir with both's jobs.
    procs = [
        subprocess.Popen(
            sleepers_cmd(f"task={a},{b}", "sleep=2"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a, b in ((1, 2), (3, 4))
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    dirs = sorted(p.parent for p in tmp_path.glob("multirun/*/*/multirun.yaml"))
    journals = [journal(d) for d in dirs if (d / "jobs.jsonl").exists()]
    if len(dirs) == 1:
        assert sorted(codes) != [0, 0] and 0 in codes, (codes, outs)
        loser = codes.index(max(codes))
        assert "is in use by another orchestrator run" in outs[loser][1], outs[loser][1]
        assert len(journals) == 1 and len(journals[0]) == 2
    else:
        assert codes == [0, 0], outs
        assert len(journals) == 2
    for records in journals:
        # each journal holds one sweep's two jobs
        assert [r["num"] for r in records] == [0, 1]
        assert [r["overrides"] for r in records] in (
            [["task=1", "sleep=2"], ["task=2", "sleep=2"]],
            [["task=3", "sleep=2"], ["task=4", "sleep=2"]],
        )
