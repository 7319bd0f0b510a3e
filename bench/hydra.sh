#!/usr/bin/env bash
# hydra.sh: orchestrator against Hydra's own joblib launcher, on the seed's example app.
#
# N jobs of the seed's `my_app` with `sleep=0` (it logs one line and returns), 2 slots,
# timed for:
#   hydra            python bench/hydra_app/my_app.py --multirun task=range(1,N+1) sleep=0
#                    hydra.launcher.n_jobs=2: Hydra 1.3 with hydra-joblib-launcher, in a
#                    venv; the app runs in 2 reused loky worker processes
#   orchestrator_py  orchestrator run --config config/joblib.yaml --multirun task=1..N sleep=0
#                    hydra.launcher.params.joblib.n_jobs=2 --quiet -- python3 examples/my_app.py:
#                    the same app without Hydra, one python3 process per job
#   orchestrator     the same sweep of `true`: what orchestrator itself costs per job
# All three write the same Hydra tree (per job .hydra/{config,overrides,hydra}.yaml and a
# log); each run is checked to have left N job dirs.
#
# Each tool runs REPS times (interleaved) after one untimed warm-up; the table shows the
# median wall time, the peak RSS (GNU time's %M: the largest single process of the tree)
# and each tool's speed-up over hydra. It goes to stdout and bench/results/hydra-<date>.md.
#
# Environment:
#   N=200             jobs per run (Hydra takes about 65 ms per job here: 200 is ~13 s)
#   REPS=3            timed repetitions per tool
#   ORCH=path         orchestrator binary (default: build target/release/orchestrator)
#   VENV=path         venv for Hydra (default: bench/.venv-hydra, created if missing:
#                     pip install hydra-core hydra-joblib-launcher)
#   RUN_TIMEOUT=600   seconds before one run of a tool counts as hung
#   TMPDIR=/tmp       where the temp dir goes, and with it every tool's output tree
#
# Timings are information, never a pass/fail test.
set -euo pipefail
export LC_ALL=C # '.' as the decimal separator in $EPOCHREALTIME and awk

N=${N:-200}
REPS=${REPS:-3}
SLOTS=2
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG=$REPO/config/joblib.yaml
VENV=${VENV:-$REPO/bench/.venv-hydra}

# log, die, apt_install, run_timed, verify_job_dirs, verify_orchestrator_tree, stats, ensure_orchestrator,
# run_reps, report_header, run_times, publish
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

positive_ints N REPS RUN_TIMEOUT

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hydra-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

ensure_tools() {
    command -v python3 >/dev/null || apt_install python3 python3-venv
    /usr/bin/time --version 2>&1 | grep -q GNU || apt_install time
    PY=$VENV/bin/python
    if ! { [[ -x $PY ]] && "$PY" -c 'import hydra, hydra_plugins.hydra_joblib_launcher' 2>/dev/null; }; then
        log "creating venv $VENV (pip install hydra-core hydra-joblib-launcher)"
        rm -rf -- "$VENV"
        python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
        "$VENV/bin/pip" install -q --disable-pip-version-check hydra-core hydra-joblib-launcher ||
            die "pip install hydra-core hydra-joblib-launcher failed"
        "$PY" -c 'import hydra, hydra_plugins.hydra_joblib_launcher' ||
            die "hydra or its joblib launcher is not importable in $VENV"
    fi
    ensure_orchestrator
}

# Hydra's tree: one sweep dir with N job dirs holding .hydra/config.yaml, and N "executing
# task" lines in the job logs (Hydra writes no journal).
verify_hydra_tree() {
    local lines
    verify_job_dirs hydra "$1"
    lines=$(cat "$SWEEP"/*/my_app.log | grep -c 'executing task' || true)
    ((lines == N)) || die "hydra: $lines 'executing task' lines in the job logs, expected $N"
}

runs=0
bench_hydra() {
    local dir=$WORK/run-$((++runs))
    mkdir "$dir"
    (cd "$dir" && run_timed hydra "$PY" "$REPO/bench/hydra_app/my_app.py" --multirun "task=range(1,$((N + 1)))" \
        sleep=0 "hydra.launcher.n_jobs=$SLOTS") </dev/null
    verify_hydra_tree "$dir"
}

bench_orchestrator_py() {
    local dir=$WORK/run-$((++runs))
    mkdir "$dir"
    (cd "$dir" && run_timed orchestrator_py "$ORCH" run --config "$CONFIG" --multirun "task=1..$N" sleep=0 \
        "hydra.launcher.params.joblib.n_jobs=$SLOTS" --quiet -- python3 "$REPO/examples/my_app.py") </dev/null
    verify_orchestrator_tree "$dir"
}

bench_orchestrator() {
    local dir=$WORK/run-$((++runs))
    mkdir "$dir"
    (cd "$dir" && run_timed orchestrator "$ORCH" run --config "$CONFIG" --multirun "task=1..$N" sleep=0 \
        "hydra.launcher.params.joblib.n_jobs=$SLOTS" --quiet -- true) </dev/null
    verify_orchestrator_tree "$dir"
}

load_before=$(cut -d ' ' -f 1-3 /proc/loadavg)
ensure_tools
tools=(hydra orchestrator_py orchestrator)
run_reps "${tools[@]}"

declare -A command_of=(
    [hydra]="python bench/hydra_app/my_app.py --multirun task=range(1,$((N + 1))) sleep=0 hydra.launcher.n_jobs=$SLOTS"
    [orchestrator_py]="orchestrator run --config config/joblib.yaml --multirun task=1..$N sleep=0 hydra.launcher.params.joblib.n_jobs=$SLOTS --quiet -- python3 examples/my_app.py"
    [orchestrator]="the same sweep of true"
)

report() {
    local tool median min max rss hydra_median
    read -r hydra_median _ <<<"$(stats hydra)"
    report_header "Hydra benchmark: $N jobs of the seed's my_app (sleep=0), $SLOTS slots"
    echo "- hydra-core $("$PY" -c 'import hydra; print(hydra.__version__)'), joblib" \
        "$("$PY" -c 'import joblib; print(joblib.__version__)'), Python $("$PY" -c 'import platform; print(platform.python_version())');" \
        "orchestrator's jobs run $(python3 --version)"
    echo "- trees on $(df -PT "$WORK" | awk 'NR == 2 { print $2 }'); median of $REPS runs after 1 warm-up"
    echo
    echo "| tool | command | median wall (s) | min-max (s) | per job (ms) | peak RSS (MiB) | speed-up over hydra |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    for tool in "${tools[@]}"; do
        read -r median min max rss <<<"$(stats "$tool")"
        printf "| %s | \`%s\` | %s |\n" "$tool" "${command_of[$tool]}" \
            "$(awk -v m="$median" -v lo="$min" -v hi="$max" -v rss="$rss" -v h="$hydra_median" -v n="$N" \
                'BEGIN { printf "%.3f | %.3f-%.3f | %.2f | %.1f | %.1fx", m, lo, hi, 1000 * m / n, rss / 1024, h / m }')"
    done
    echo
    echo "Peak RSS is GNU time's %M: the largest single process of the tool's tree."
    run_times "${tools[@]}"
}

publish hydra
