# The seed's Hydra joblib launcher example (../../../shared/reference/hydra-multirun-example),
# with its 1 s sleep made a config key, so that `sleep=0` measures Hydra's own cost per job.
# examples/my_app.py is the same app for orchestrator, without Hydra.
import logging
import os
import time

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(version_base=None, config_path=".", config_name="config")
def my_app(cfg: DictConfig) -> None:
    log.info(f"Process ID {os.getpid()} executing task {cfg.task} ...")
    time.sleep(cfg.sleep)


if __name__ == "__main__":
    my_app()
