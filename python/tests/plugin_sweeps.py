"""What the plugin's tests share: a sweep through `hydra/launcher=orchestrator` with Hydra's
own sweep runner, and the sweep's journal."""
import json
from pathlib import Path
from typing import Any, List

from hydra.test_utils.test_utils import TSweepRunner


def sweep(runner: TSweepRunner, task: Any, tmp_path: Path, *overrides: str) -> Any:
    return runner(
        calling_file=None,
        calling_module="hydra.test_utils.a_module",
        task_function=task,
        config_path="configs",
        config_name="compose.yaml",
        overrides=["hydra/launcher=orchestrator", *overrides],
        temp_dir=tmp_path,
    )


def journal(sweep_dir: Path) -> List[dict]:
    """jobs.jsonl, by job number."""
    records = [json.loads(line) for line in (sweep_dir / "jobs.jsonl").read_text().splitlines()]
    return sorted(records, key=lambda r: r["num"])
