# A Hydra app whose jobs sleep, for the Ctrl-C test: prints its pid, then sleeps.
import logging
import os
import time

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(version_base=None, config_path=".", config_name="sleeper")
def sleeper(cfg: DictConfig) -> None:
    log.info(f"job pid {os.getpid()} task {cfg.task}")
    time.sleep(cfg.sleep)


if __name__ == "__main__":
    sleeper()
