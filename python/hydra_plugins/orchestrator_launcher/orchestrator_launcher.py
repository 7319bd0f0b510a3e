"""The Launcher class Hydra instantiates for `hydra/launcher=orchestrator`."""
import logging
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class OrchestratorLauncher(Launcher):
    def __init__(self, **kwargs: Any) -> None:
        """Runs each job of a sweep as its own process under the `orchestrator` binary:
        `n_jobs` at a time, each job's stdout/stderr captured into
        `<job dir>/<task>_orchestrator.log`, a per-job timeout that ends the job's whole
        process tree, `<sweep dir>/jobs.jsonl`, and Ctrl-C that leaves no process behind.
        Each job runs Hydra's own `run_job`, as the joblib launcher's workers do."""
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None
        self.params = kwargs

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from . import _core

        return _core.launch(
            launcher=self, job_overrides=job_overrides, initial_job_idx=initial_job_idx
        )
