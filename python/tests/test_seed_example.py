"""The seed's example app (apps/seed: `@hydra.main` my_app.py + config.yaml, copied from the
project's reference example) run as a user runs it, through Hydra's joblib launcher and
through `hydra/launcher=orchestrator`, in the same test: the trees must be the same file by
file (modulo timestamps, pids and the launcher's own settings), plus orchestrator's
`jobs.jsonl` and one capture log per job beside Hydra's."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

SEED = Path(__file__).parent / "apps" / "seed"


def run_app(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "my_app.py", "--multirun", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    d = tmp_path / "app"
    shutil.copytree(SEED, d)
    return d


def files(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[__main__\]\[INFO\] - Process ID (\d+) executing task (\d+) \.\.\.$")


def normalize_hydra(doc: Dict[str, Any], sweep_dir: Path) -> Dict[str, Any]:
    """What differs by design between the two runs: the launcher node and the launcher
    choice, the sweep dir (each run has its own) and the override that set both."""
    h = doc["hydra"]
    h.pop("launcher")
    h["runtime"]["choices"].pop("hydra/launcher")
    h["overrides"]["hydra"] = [
        o for o in h["overrides"]["hydra"] if not o.startswith(("hydra/launcher=", "hydra.sweep.dir="))
    ]
    text = json.dumps(doc).replace(str(sweep_dir), "<SWEEP>")
    return json.loads(text)


def test_seed_tree_matches_joblib(app_dir: Path, tmp_path: Path) -> None:
    joblib_dir = tmp_path / "joblib"
    orch_dir = tmp_path / "orch"
    tasks = "task=1,2,3,4,5"
    try:
        import hydra_plugins.hydra_joblib_launcher  # noqa: F401
    except ImportError:  # pragma: no cover
        pytest.fail("hydra-joblib-launcher must be installed for this test (python/run_tests.sh does)")
    j = run_app(app_dir, "hydra/launcher=joblib", tasks, f"hydra.sweep.dir={joblib_dir}")
    o = run_app(app_dir, "hydra/launcher=orchestrator", tasks, f"hydra.sweep.dir={orch_dir}")
    assert "Joblib.Parallel" in j.stdout
    assert "Orchestrator(" in o.stdout and "is launching 5 jobs" in o.stdout

    # Same files, plus orchestrator's journal and capture logs.
    extra = {"jobs.jsonl"} | {f"{n}/my_app_orchestrator.log" for n in range(5)}
    assert set(files(orch_dir)) == set(files(joblib_dir)) | extra
    assert not (set(files(joblib_dir)) & extra)

    for rel in files(joblib_dir):
        a, b = joblib_dir / rel, orch_dir / rel
        if rel.endswith("overrides.yaml") or rel.endswith("config.yaml"):
            assert a.read_text() == b.read_text(), rel
        elif rel.endswith("hydra.yaml") or rel == "multirun.yaml":
            da = normalize_hydra(yaml.safe_load(a.read_text()), joblib_dir)
            db = normalize_hydra(yaml.safe_load(b.read_text()), orch_dir)
            assert da == db, rel
        elif rel.endswith("my_app.log"):
            la, lb = a.read_text().splitlines(), b.read_text().splitlines()
            assert len(la) == len(lb) == 1, (la, lb)
            ma, mb = LOG_LINE.match(la[0]), LOG_LINE.match(lb[0])
            assert ma and mb, (la, lb)
            assert ma.group(2) == mb.group(2) == str(int(rel.split("/")[0]) + 1)
        else:
            raise AssertionError(f"unexpected file {rel}")

    # hydra.yaml of the orchestrator run names its launcher.
    h = yaml.safe_load((orch_dir / "0/.hydra/hydra.yaml").read_text())["hydra"]
    assert h["launcher"]["_target_"].endswith("OrchestratorLauncher")
    assert h["job"]["num"] == 0 and h["job"]["id"] == "my_app_0"
    assert h["mode"] == "MULTIRUN"

    # The journal: one record per job, each job's pid is the one its Hydra log names.
    records = [json.loads(line) for line in (orch_dir / "jobs.jsonl").read_text().splitlines()]
    assert sorted(r["num"] for r in records) == [0, 1, 2, 3, 4]
    for r in records:
        n = r["num"]
        assert r["status"] == "succeeded" and r["exit_code"] == 0, r
        assert r["id"] == f"my_app_{n}"
        assert r["overrides"] == [f"task={n + 1}"]
        assert Path(r["dir"]) == orch_dir / str(n)
        assert Path(r["log"]) == orch_dir / str(n) / "my_app_orchestrator.log"
        pid = LOG_LINE.match((orch_dir / str(n) / "my_app.log").read_text().strip()).group(1)
        assert r["pid"] == int(pid)
        capture = (orch_dir / str(n) / "my_app_orchestrator.log").read_text().splitlines()
        assert f"[orchestrator] started pid {pid} in slot" in capture[0]
        assert sys.executable in capture[0] and "-m hydra_plugins.orchestrator_launcher._worker" in capture[0]
        assert any(
            "[stdout] " in line and f"Process ID {pid} executing task {n + 1} ..." in line for line in capture
        ), capture
        assert "[orchestrator] exit code 0" in capture[-1]
    # The jobs' lines reached the console, as with joblib.
    for t in range(1, 6):
        assert re.search(rf"executing task {t} \.\.\.", o.stdout)


def test_seed_n_jobs_1(app_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "one"
    run_app(app_dir, "hydra/launcher=orchestrator", "task=1,2,3", "hydra.launcher.n_jobs=1", f"hydra.sweep.dir={sweep}")
    records = sorted(
        (json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()), key=lambda r: r["start"]
    )
    assert [r["num"] for r in records] == [0, 1, 2]
    assert {r["slot"] for r in records} == {0}
    for a, b in zip(records, records[1:]):
        assert a["end"] <= b["start"], (a, b)
