#!/usr/bin/env bash
# hydra_plugin.sh: the Hydra launcher plugin (hydra/launcher=orchestrator) against Hydra's own
# joblib launcher, on the seed's example app, in the same venv and the same run.
#
# N jobs of bench/hydra_app/my_app.py with `sleep=0` (it logs one line and returns), 2 slots:
#   joblib   python my_app.py --multirun task=range(1,N+1) sleep=0 hydra.launcher.n_jobs=2
#            (the app's config selects hydra/launcher=joblib: 2 reused loky workers)
#   plugin   the same with hydra/launcher=orchestrator: one fresh worker process per job
#            (`python -m hydra_plugins.orchestrator_launcher._worker`), under the binary
# Each run is checked to have left N job dirs (and, for the plugin, N succeeded records in
# jobs.jsonl). The report adds where a plugin job's time goes: its wall and CPU time (from
# jobs.jsonl) and what importing Hydra alone costs a fresh interpreter.
#
# Environment:
#   N=40              jobs per run (the issue's rows: 40 and 200)
#   REPS=3            timed repetitions per tool, interleaved, after one untimed warm-up
#   VENV=path         venv (default bench/.venv-hydra-plugin; hydra-core, hydra-joblib-launcher
#                     installed if missing; the repository's package is reinstalled every
#                     run, so that the plugin and binary measured are this checkout's)
#   RUN_TIMEOUT=600   seconds before one run counts as hung
#
# Timings are information, never a pass/fail test.
set -euo pipefail
export LC_ALL=C
N=${N:-40}
REPS=${REPS:-3}
SLOTS=2
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$REPO/bench/.venv-hydra-plugin}
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
positive_ints N REPS RUN_TIMEOUT
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hydra-plugin-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

ensure_tools() {
    command -v python3 >/dev/null || apt_install python3 python3-venv
    /usr/bin/time --version 2>&1 | grep -q GNU || apt_install time
    PY=$VENV/bin/python
    if ! { [[ -x $PY ]] && "$PY" -c 'import hydra, hydra_plugins.hydra_joblib_launcher, cloudpickle' 2>/dev/null; }; then
        log "creating venv $VENV (pip install hydra-core hydra-joblib-launcher cloudpickle)"
        rm -rf -- "$VENV"
        python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
        "$VENV/bin/pip" install -q --disable-pip-version-check hydra-core hydra-joblib-launcher cloudpickle ||
            die "pip install hydra-core hydra-joblib-launcher cloudpickle failed"
    fi
    log "pip install $REPO (the plugin and the binary, built by maturin)"
    "$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$REPO" ||
        die "pip install $REPO failed"
    "$PY" -c 'import hydra_plugins.orchestrator_launcher' || die "the plugin is not importable in $VENV"
}

runs=0
bench_joblib() {
    local dir=$WORK/run-$((++runs))
    mkdir "$dir"
    (cd "$dir" && run_timed joblib "$PY" "$REPO/bench/hydra_app/my_app.py" --multirun "task=range(1,$((N + 1)))" \
        sleep=0 "hydra.launcher.n_jobs=$SLOTS") </dev/null
    verify_job_dirs joblib "$dir"
}

bench_plugin() {
    local dir=$WORK/run-$((++runs))
    mkdir "$dir"
    (cd "$dir" && run_timed plugin "$PY" "$REPO/bench/hydra_app/my_app.py" --multirun "task=range(1,$((N + 1)))" \
        sleep=0 hydra/launcher=orchestrator "hydra.launcher.n_jobs=$SLOTS") </dev/null
    verify_orchestrator_tree "$dir"
    cat "$SWEEP/jobs.jsonl" >>"$WORK/plugin.jobs"
}

load_before=$(cut -d ' ' -f 1-3 /proc/loadavg)
ensure_tools
tools=(joblib plugin)
run_reps "${tools[@]}"
# Only the timed rounds' jobs (the warm-up's are in the first N lines).
tail -n $((N * REPS)) "$WORK/plugin.jobs" >"$WORK/plugin.timed"

report() {
    local tool median min max rss joblib_median import_s
    read -r joblib_median _ <<<"$(stats joblib)"
    import_s=$(for _ in 1 2 3 4 5; do
        /usr/bin/time -f '%e' "$PY" -c 'import hydra.core.utils, hydra.core.hydra_config, cloudpickle' 2>&1 >/dev/null
    done | sort -g | awk '{ t[NR] = $1 } END { print t[3] }')
    report_header "Hydra plugin benchmark: $N jobs of the seed's my_app (sleep=0), $SLOTS slots"
    echo "- hydra-core $("$PY" -c 'import hydra; print(hydra.__version__)'), joblib" \
        "$("$PY" -c 'import joblib; print(joblib.__version__)'), Python $("$PY" -c 'import platform; print(platform.python_version())')"
    echo "- median of $REPS interleaved runs after 1 warm-up"
    echo
    echo "| launcher | median wall (s) | min-max (s) | per job (ms) | peak RSS (MiB) | time / joblib's |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for tool in "${tools[@]}"; do
        read -r median min max rss <<<"$(stats "$tool")"
        printf "| %s | %s |\n" "$tool" \
            "$(awk -v m="$median" -v lo="$min" -v hi="$max" -v rss="$rss" -v j="$joblib_median" -v n="$N" \
                'BEGIN { printf "%.3f | %.3f-%.3f | %.1f | %.1f | %.2fx", m, lo, hi, 1000 * m / n, rss / 1024, m / j }')"
    done
    echo
    echo "Per round, plugin time / joblib time: median $(round_ratio plugin joblib)x."
    echo
    echo "Where a plugin job's time goes (its worker process, from jobs.jsonl over the timed runs):" \
        "median wall $(grep -o '"duration_s":[0-9.]*' "$WORK/plugin.timed" | cut -d: -f2 | sort -g |
            awk '{ t[NR] = $1 } END { printf "%.0f", 1000 * t[int((NR + 1) / 2)] }') ms," \
        "median CPU $(grep -oE '"cpu_user_s":[0-9.]+,"cpu_sys_s":[0-9.]+' "$WORK/plugin.timed" |
            awk -F'[:,]' '{ print $2 + $4 }' | sort -g | awk '{ t[NR] = $1 } END { printf "%.0f", 1000 * t[int((NR + 1) / 2)] }') ms;" \
        "a fresh interpreter importing Hydra and cloudpickle alone: ${import_s}s (median of 5)." \
        "The rest is unpickling the job, composing its config (load_sweep_config) and Hydra's run_job."
    echo
    run_times "${tools[@]}"
}

publish hydra-plugin
