"""Hydra's own launcher test suites, run on `hydra/launcher=orchestrator`, wired as Hydra's
joblib plugin wires them (plugins/hydra_joblib_launcher/tests/test_joblib_launcher.py) and as
hydra-core's tests/test_basic_launcher.py wires the batched-sweeper suite.

Hydra's plugin tests start with `chdir_plugin_root()`, which walks up from the cwd to the
directory holding `setup.py` so that paths such as `example/my_app.py` resolve. This project
is packaged by maturin from the repository root's `pyproject.toml` and has no `setup.py`;
the suites below use no path relative to the cwd (their apps are the
`hydra.test_utils.a_module` package and scripts written into tmpdir), so the cwd is set to
the repository root (the plugin's root) explicitly instead.
"""
import os
from pathlib import Path

from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from pytest import mark, param

from hydra_plugins.orchestrator_launcher.orchestrator_launcher import OrchestratorLauncher

REPO_ROOT = Path(__file__).resolve().parents[2]
assert (REPO_ROOT / "pyproject.toml").is_file(), REPO_ROOT
os.chdir(REPO_ROOT)


def test_discovery() -> None:
    # The plugin is found by Hydra's plugin scan, as a Launcher.
    assert OrchestratorLauncher.__name__ in [
        x.__name__ for x in Plugins.instance().discover(Launcher)
    ]


@mark.parametrize("launcher_name, overrides", [("orchestrator", [])])
class TestOrchestratorLauncher(LauncherTestSuite):
    pass


@mark.parametrize(
    "launcher_name, overrides",
    [("orchestrator", ["hydra.launcher.n_jobs=2"])],
)
class TestOrchestratorLauncherTwoSlots(LauncherTestSuite):
    pass


@mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        param(
            {},
            [
                "-m",
                "hydra/job_logging=hydra_debug",
                "hydra/job_logging=disabled",
                "hydra/launcher=orchestrator",
            ],
            id="orchestrator",
        )
    ],
)
class TestOrchestratorLauncherIntegration(IntegrationTestSuite):
    pass


@mark.parametrize(
    "launcher_name, overrides",
    [
        (
            "orchestrator",
            ["hydra/sweeper=basic", "hydra.sweeper.max_batch_size=2"],
        )
    ],
)
class TestOrchestratorBatchedSweeper(BatchedSweeperTestSuite):
    pass
