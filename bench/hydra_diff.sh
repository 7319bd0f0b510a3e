#!/usr/bin/env bash
# hydra_diff.sh: orchestrator against real Hydra, override by override.
#
# Runs every case of bench/hydra_diff/cases.py (about 500 override sets: comma lists, ranges,
# choice/sort/shuffle/glob, casts, quoting and escapes, +/++/~, lists and dicts, numbers,
# interpolations, hydra.sweeper.params) through Hydra's own basic sweeper and through
# orchestrator, and compares, job by job, the job count and order, each job's
# overrides.yaml and config.yaml (raw text, and values and types as PyYAML and OmegaConf read
# them), and which inputs each refuses. Prints the report; exits 1 when a case falls in
# another category (same / differs / only one refuses / both refuse) than
# bench/hydra_diff/expected.json records. The differences recorded there are the documented
# ones (README: the `1..5` ranges, clean float ranges, str() casts, inputs only orchestrator
# accepts, empty sweeps).
#
# Environment:
#   VENV=path   a venv with hydra-core (default: bench/.venv-hydra-diff, made if missing with
#               the versions expected.json was recorded with: hydra-core 1.3.8, omegaconf
#               2.3.1, PyYAML 6.0.4, so that a new release cannot change the verdict)
#   ORCH=path   orchestrator binary (default: build target/release/orchestrator)
#   KEEP=1      keep the work dir (each case's two trees and result.json) and print its path
#   WRITE_EXPECTED=1  record this run's categories as the expected ones
#
# Takes about 3 minutes on 2 cores.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$REPO/bench/.venv-hydra-diff}
PINNED=(hydra-core==1.3.8 omegaconf==2.3.1 PyYAML==6.0.4)

# log, die, apt_install, ensure_orchestrator
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hydra-diff.XXXXXX")
if [[ ${KEEP:-0} == 1 ]]; then
    trap 'log "results kept in $WORK"' EXIT
else
    trap 'rm -rf "$WORK"' EXIT
fi

command -v python3 >/dev/null || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
PY=$VENV/bin/python
if ! { [[ -x $PY ]] && "$PY" -c 'import hydra, omegaconf, yaml' 2>/dev/null; }; then
    log "creating venv $VENV (pip install ${PINNED[*]})"
    rm -rf -- "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PINNED[@]}" || die "pip install ${PINNED[*]} failed"
fi
ensure_orchestrator
log "hydra-core $("$PY" -c 'import hydra; print(hydra.__version__)'), omegaconf $("$PY" -c 'import omegaconf; print(omegaconf.__version__)'); orchestrator $("$ORCH" --version | awk '{ print $NF }')"

export WORK HYDRA_PYTHON=$PY ORCH JOBLIB=$REPO/config/joblib.yaml
cases=$(cd "$REPO/bench/hydra_diff" && "$PY" -c 'from cases import CASES; print(len(CASES))')
log "running $cases cases (log: $WORK/run.log)"
"$PY" "$REPO/bench/hydra_diff/harness.py" >"$WORK/run.log" 2>&1 || die "the harness failed: see $WORK/run.log"
if [[ ${WRITE_EXPECTED:-0} == 1 ]]; then
    "$PY" "$REPO/bench/hydra_diff/compare.py" --write-expected
else
    "$PY" "$REPO/bench/hydra_diff/compare.py"
fi
