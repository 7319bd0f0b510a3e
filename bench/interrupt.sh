#!/usr/bin/env bash
# interrupt.sh: Ctrl-C in the middle of a sweep. How long until the launcher exits, and
# what does it leave running?
#
# Each tool starts a sweep of 6 jobs, 2 at a time, in a process group of its own; after
# WAIT_S (2) seconds the whole group gets SIGINT, as a terminal's Ctrl-C would send it.
# Measured: the time from SIGINT to the launcher's exit (a launcher still running after
# HANG_S (30) seconds is counted as hung and killed), its exit status, and the processes of
# the sweep still alive 1 s after it exited (found by a marker in their command line, then
# killed, as are any other processes left in the launcher's session). Two kinds of job:
#   helper      sh -c 'sleep <marker> & wait': a job that started a background helper, which
#               (as POSIX says for `&` in a non-interactive shell) ignores SIGINT
#               tools: xargs -P2, GNU parallel -j2, orchestrator
#   stubborn    sh -c "trap '' INT TERM; sleep <marker>": a job that ignores SIGINT and SIGTERM
#               (its sleep inherits that), so only SIGKILL ends it
#               tools: xargs -P2, GNU parallel -j2, orchestrator
#   python_app  the seed's my_app with sleep=<marker> (a job that is busy when Ctrl-C comes)
#               tools: Hydra's joblib launcher (bench/hydra_app, venv as in hydra.sh),
#               orchestrator running examples/my_app.py
# orchestrator runs with its default 5 s grace period between SIGINT and SIGKILL.
#
# Environment: REPS=3, WAIT_S=2, HANG_S=30, ORCH=path, VENV=path (default
# bench/.venv-hydra; SKIP_HYDRA=1 leaves Hydra out). Information, never a pass/fail test.
set -euo pipefail
export LC_ALL=C

REPS=${REPS:-3}
WAIT_S=${WAIT_S:-2}
HANG_S=${HANG_S:-30}
SKIP_HYDRA=${SKIP_HYDRA:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG=$REPO/config/joblib.yaml
VENV=${VENV:-$REPO/bench/.venv-hydra}

# log, die, apt_install, ensure_orchestrator, report_header, publish
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/interrupt-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
load_before=$(cut -d ' ' -f 1-3 /proc/loadavg)

command -v parallel >/dev/null || apt_install parallel
command -v setsid >/dev/null || apt_install util-linux
command -v pgrep >/dev/null || apt_install procps
ensure_orchestrator
PY=$VENV/bin/python
if [[ $SKIP_HYDRA != 1 ]] && ! "$PY" -c 'import hydra, hydra_plugins.hydra_joblib_launcher' 2>/dev/null; then
    die "no Hydra in $VENV: run bench/hydra.sh once (it creates the venv), or SKIP_HYDRA=1"
fi

marker_seq=0
# A sleep length no other process uses, to find the sweep's processes by.
new_marker() { MARKER="1$((++marker_seq))$$.5"; }

# survivors SID: pids of live (non-zombie) processes of session SID (the launcher's: its
# workers, its jobs) or whose command line holds $MARKER (a job that left the session).
survivors() {
    local pid
    for pid in $({ pgrep -s "$1" || true; pgrep -f -- "$MARKER" || true; } | sort -u); do
        [[ $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) =~ ^[ZX]?$ ]] || echo "$pid"
    done
}

# interrupt NAME CMD...: run CMD in a new session (its own process group) in a fresh dir,
# SIGINT the group after WAIT_S, and append "latency_s status survivors" to NAME.samples.
interrupt() {
    local name=$1 dir pid t0 waited=0 status latency left
    shift
    dir=$(mktemp -d "$WORK/run.XXXXXX")
    (cd "$dir" && exec setsid "$@") </dev/null >"$WORK/$name.log" 2>&1 &
    pid=$!
    sleep "$WAIT_S"
    kill -0 "$pid" 2>/dev/null || die "$name exited before the interrupt: $(tail -n 5 "$WORK/$name.log")"
    t0=$EPOCHREALTIME
    kill -INT -- "-$pid"
    while kill -0 "$pid" 2>/dev/null && ((waited < HANG_S * 20)); do
        sleep 0.05
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        latency="hung"
        kill -KILL -- "-$pid" 2>/dev/null || true
    else
        latency=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
    fi
    status=0
    wait "$pid" || status=$?
    sleep 1
    left=$(survivors "$pid" | wc -l)
    survivors "$pid" | xargs -r kill -KILL 2>/dev/null || true
    echo "$latency $status $left" >>"$WORK/$name.samples"
}

# job_script KIND: what each job of KIND runs under sh (with the current $MARKER).
job_script() {
    case $1 in
    helper) echo "sleep $MARKER & wait" ;;
    stubborn) echo "trap '' INT TERM; sleep $MARKER" ;;
    esac
}

# interrupt_TOOL KIND: a 6-job sweep of KIND under TOOL, interrupted (see interrupt).
interrupt_xargs() {
    new_marker
    seq 6 >"$WORK/input"
    interrupt "$1_xargs" sh -c "xargs -P2 -I{} sh -c $(printf %q "$(job_script "$1")") <$(printf %q "$WORK/input")"
}

interrupt_parallel() {
    new_marker
    interrupt "$1_parallel" sh -c "seq 6 | parallel --will-cite -j2 $(printf %q "$(job_script "$1"); : {}")"
}

interrupt_orchestrator() {
    new_marker
    interrupt "$1_orchestrator" "$ORCH" run --config "$CONFIG" --multirun task=1..6 \
        hydra.launcher.params.joblib.n_jobs=2 --quiet -- sh -c "$(job_script "$1")"
}

bench_helper_xargs() { interrupt_xargs helper; }
bench_helper_parallel() { interrupt_parallel helper; }
bench_helper_orchestrator() { interrupt_orchestrator helper; }
bench_stubborn_xargs() { interrupt_xargs stubborn; }
bench_stubborn_parallel() { interrupt_parallel stubborn; }
bench_stubborn_orchestrator() { interrupt_orchestrator stubborn; }

bench_python_app_hydra() {
    new_marker
    interrupt python_app_hydra "$PY" "$REPO/bench/hydra_app/my_app.py" --multirun "task=range(1,7)" \
        "sleep=$MARKER" hydra.launcher.n_jobs=2
}

bench_python_app_orchestrator() {
    new_marker
    interrupt python_app_orchestrator "$ORCH" run --config "$CONFIG" --multirun task=1..6 "sleep=$MARKER" \
        hydra.launcher.params.joblib.n_jobs=2 --quiet -- python3 "$REPO/examples/my_app.py"
}

tools=(helper_xargs helper_parallel helper_orchestrator stubborn_xargs stubborn_parallel stubborn_orchestrator)
[[ $SKIP_HYDRA == 1 ]] || tools+=(python_app_hydra)
tools+=(python_app_orchestrator)
rounds_of "${tools[@]}"

report() {
    local tool
    report_header "interrupt benchmark: SIGINT to the launcher's process group ${WAIT_S} s into a sweep of 6 jobs, 2 slots"
    echo "- $REPS runs each; \"hung\" = still running ${HANG_S} s after SIGINT"
    echo
    echo "| jobs | launcher | SIGINT to exit (s), each run | exit status | processes left behind, each run |"
    echo "| --- | --- | --- | --- | --- |"
    for tool in "${tools[@]}"; do
        printf "| %s | %s | %s | %s | %s |\n" "${tool%%_*}$([[ $tool == python_app* ]] && echo _app)" \
            "${tool##*_}" "$(cut -d ' ' -f 1 "$WORK/$tool.samples" | paste -sd ' ')" \
            "$(cut -d ' ' -f 2 "$WORK/$tool.samples" | sort -u | paste -sd ' ')" \
            "$(cut -d ' ' -f 3 "$WORK/$tool.samples" | paste -sd ' ')"
    done
}

publish interrupt
