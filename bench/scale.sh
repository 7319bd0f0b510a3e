#!/usr/bin/env bash
# scale.sh: does the supervisor's memory stay flat as a sweep grows?
#
# Sweeps of `true` with 2 slots and SIZES jobs (1000 10000 100000), each run once by
# orchestrator with its full output tree (on tmpfs unless TREE_DIR says otherwise: 100,000
# jobs are 600,000 files and dirs). For each size: wall time, time per job, the
# supervisor's peak RSS (VmHWM of the orchestrator process alone, read when it exits) and
# the same for `xargs -P2 -n1 true` as a reference. The sweep is lazy (job n is computed
# when it is due), so the peak RSS should not grow with the number of jobs.
#
# Environment: SIZES="1000 10000 100000", ORCH=path (default: build it),
# TREE_DIR=/dev/shm (where the trees go; each is deleted after its run), RUN_TIMEOUT=900.
# Timings are information, never a pass/fail test.
set -euo pipefail
export LC_ALL=C

SIZES=${SIZES:-1000 10000 100000}
SLOTS=2
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG=$REPO/config/joblib.yaml
TREE_DIR=${TREE_DIR:-/dev/shm}

# log, die, apt_install, run_timed, verify_orchestrator_tree, stats, ensure_orchestrator,
# report_header, publish
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

for n in $SIZES; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "SIZES must be positive integers (got '$n')"
done
WORK=$(mktemp -d "$TREE_DIR/scale-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
load_before=$(cut -d ' ' -f 1-3 /proc/loadavg)

/usr/bin/time --version 2>&1 | grep -q GNU || apt_install time
ensure_orchestrator

# peak_rss_kib PID: VmHWM of PID, polled until it exits (the last value read is the peak:
# VmHWM only grows). Prints the value in KiB. After RUN_TIMEOUT seconds PID gets SIGTERM.
peak_rss_kib() {
    local pid=$1 hwm=0 v start=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
        v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        [[ -n $v ]] && hwm=$v
        if ((SECONDS - start > RUN_TIMEOUT)); then
            log "still running after RUN_TIMEOUT=${RUN_TIMEOUT}s: SIGTERM"
            kill -TERM "$pid" 2>/dev/null || true
        fi
        sleep 0.2
    done
    echo "$hwm"
}

rows=()
for N in $SIZES; do
    dir=$WORK/orch-$N
    mkdir "$dir"
    log "orchestrator, $N jobs"
    t0=$EPOCHREALTIME
    # exec: $! is the orchestrator process itself, whose VmHWM is read.
    (cd "$dir" && exec "$ORCH" run --config "$CONFIG" --multirun "task=1..$N" \
        "hydra.launcher.params.joblib.n_jobs=$SLOTS" --quiet -- true) </dev/null >"$WORK/orch.log" 2>&1 &
    pid=$!
    rss=$(peak_rss_kib "$pid")
    wait "$pid" || die "orchestrator failed on $N jobs: $(tail -n 5 "$WORK/orch.log")"
    t1=$EPOCHREALTIME
    verify_orchestrator_tree "$dir"
    rm -rf "$dir"
    orch_wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    log "xargs, $N jobs"
    seq "$N" >"$WORK/input"
    run_timed "xargs-$N" xargs -P "$SLOTS" -n 1 true <"$WORK/input"
    read -r xargs_wall xargs_rss <"$WORK/xargs-$N.samples"
    rows+=("$(awk -v n="$N" -v w="$orch_wall" -v r="$rss" -v xw="$xargs_wall" -v xr="$xargs_rss" \
        'BEGIN { printf "| %d | %.2f | %.3f | %.1f | %.2f | %.1f |", n, w, 1000 * w / n, r / 1024, xw, xr / 1024 }')")
done

report() {
    report_header "scale benchmark: sweeps of \`true\`, $SLOTS slots"
    echo "- orchestrator's trees on $(df -PT "$WORK" | awk 'NR == 2 { print $2 }'), one run per size"
    echo
    echo "| jobs | orchestrator wall (s) | per job (ms) | supervisor peak RSS (MiB) | xargs wall (s) | xargs peak RSS (MiB) |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${rows[@]}"
}

publish scale
