"""The installed package: the binary where pip put it, found as uv finds its own; the plugin
discovered by Hydra; importing it cheap (Hydra imports every plugin at every start)."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from hydra_plugins.orchestrator_launcher._find_bin import find_orchestrator_bin

SEED = Path(__file__).parent / "apps" / "seed"


def test_binary_is_in_the_scripts_dir_and_runs(monkeypatch) -> None:
    monkeypatch.delenv("ORCHESTRATOR_BIN", raising=False)
    path = find_orchestrator_bin()
    assert Path(path) == Path(sysconfig.get_path("scripts")) / "orchestrator"
    out = subprocess.run([path, "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage: orchestrator" in out and "run" in out


def test_env_var_overrides(monkeypatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-orchestrator"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("ORCHESTRATOR_BIN", str(fake))
    assert find_orchestrator_bin() == str(fake)


def test_plugin_listed_by_hydra() -> None:
    out = subprocess.run(
        [sys.executable, "my_app.py", "--info", "plugins"], cwd=SEED, capture_output=True, text=True, check=True
    ).stdout
    assert "OrchestratorLauncher" in out


def test_import_is_light() -> None:
    # Importing the plugin's public modules (what Hydra's plugin scan does) loads nothing
    # but them, once what they take from Hydra is loaded: the launching code, cloudpickle,
    # subprocess and the worker come only when a sweep runs.
    code = """
import sys
import hydra.core.config_store, hydra.core.utils, hydra.plugins.launcher, hydra.types
before = set(sys.modules)
import hydra_plugins.orchestrator_launcher.config
import hydra_plugins.orchestrator_launcher.orchestrator_launcher
print(sorted(set(sys.modules) - before))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(
        [
            "hydra_plugins",
            "hydra_plugins.orchestrator_launcher",
            "hydra_plugins.orchestrator_launcher.config",
            "hydra_plugins.orchestrator_launcher.orchestrator_launcher",
        ]
    )
