#!/usr/bin/env python3
"""The seed's Hydra example app, rewritten to need no Hydra.

Under orchestrator it receives its overrides as `key=value` arguments (`task=3`), exactly
as a Hydra app would, and its job context in `ORCHESTRATOR_*` environment variables.
Run it by hand with `python3 examples/my_app.py task=2`.
"""
import logging
import os
import sys
import time

log = logging.getLogger("__main__")


def parse_overrides(argv):
    cfg = {"task": 1, "sleep": 1}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            continue
        key = key.lstrip("+")
        try:
            cfg[key] = int(value)
        except ValueError:
            cfg[key] = value
    return cfg


def my_app(cfg):
    log.info(f"Process ID {os.getpid()} executing task {cfg['task']} ...")
    # `sleep=0` makes it a no-op job (the Hydra comparison in bench/hydra.sh uses that).
    time.sleep(float(cfg.get("sleep", 1)))


if __name__ == "__main__":
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
    )
    my_app(parse_overrides(sys.argv[1:]))
