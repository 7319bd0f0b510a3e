#!/usr/bin/env bash
# The Python side's tests, as a user gets the package: a fresh venv, `pip install <repo>`
# (maturin, from PyPI, builds the orchestrator binary into the wheel), hydra-core 1.3.x,
# pytest and Hydra's joblib launcher (the seed test compares against it), then pytest on
# python/tests (Hydra's own launcher suites included).
#
#   python/run_tests.sh [pytest args]
#
# Environment:
#   PYTHON=python3            the interpreter to make the venv with (3.9 or newer)
#   VENV=dir                  the venv (default target/python-tests-venv; recreated each run)
#   HYDRA_CORE=hydra-core==1.3.8
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-$ROOT/target/python-tests-venv}
HYDRA_CORE=${HYDRA_CORE:-hydra-core==1.3.8}

echo "== venv $VENV ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
echo "== pip install $ROOT $HYDRA_CORE pytest hydra-joblib-launcher"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$ROOT" "$HYDRA_CORE" pytest hydra-joblib-launcher
"$VENV/bin/python" -c 'import hydra, omegaconf; print("== hydra-core", hydra.__version__, "omegaconf", omegaconf.__version__)'
echo "== $("$VENV/bin/orchestrator" --version)"

# The installed plugin and binary are what is tested: nothing from the source tree is put on
# sys.path (pytest adds python/tests only), and the binary is found as a user's would be.
unset ORCHESTRATOR_BIN
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider python/tests "$@"
