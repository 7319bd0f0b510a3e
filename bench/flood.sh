#!/usr/bin/env bash
# flood.sh: capture throughput, with jobs that flood their stdout.
#
# N jobs (8) each write SIZE_MIB (128) MiB of 100-byte lines to stdout (`yes LINE | head -c
# SIZE`, run by sh), 2 at a time, timed for:
#   floor         bench/floor.c running the job with its stdout on /dev/null: nothing captured
#   xargs         xargs -P2, each job's stdout redirected to its own file: captured as is
#   parallel      GNU parallel --results DIR: each job's stdout in its own file
#   orchestrator  orchestrator run --multirun task=1..N --quiet -- sh -c '...': each line
#                 in the job's log, timestamped and tagged by stream
# and checked: every tool's files (orchestrator: its jobs.jsonl stdout_bytes) must hold all
# N x SIZE bytes. The table gives the median wall time, the captured throughput and the
# ratio to the floor; it goes to stdout and bench/results/flood-<date>.md.
#
# Environment: N=8, SIZE_MIB=128, REPS=3, ORCH=path (default: build it), RUN_TIMEOUT=300,
# TMPDIR=/tmp (where the captured output goes: N x SIZE_MIB per run, deleted after each).
# Timings are information, never a pass/fail test.
set -euo pipefail
export LC_ALL=C

N=${N:-8}
SIZE_MIB=${SIZE_MIB:-128}
REPS=${REPS:-3}
SLOTS=2
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG=$REPO/config/joblib.yaml

# log, die, apt_install, run_timed, verify_orchestrator_tree, stats, ensure_orchestrator,
# run_reps, report_header, run_times, publish
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

positive_ints N SIZE_MIB REPS

WORK=$(mktemp -d "${TMPDIR:-/tmp}/flood-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
load_before=$(cut -d ' ' -f 1-3 /proc/loadavg) # before any build of ours
SIZE=$((SIZE_MIB * 1024 * 1024))
LINE=$(printf '%099d' 0) # 99 characters + the newline `yes` adds
JOB="yes $LINE | head -c $SIZE"

command -v cc >/dev/null || apt_install gcc libc6-dev
command -v parallel >/dev/null || apt_install parallel
/usr/bin/time --version 2>&1 | grep -q GNU || apt_install time
parallel --version 2>/dev/null | grep -q 'GNU parallel' || die "'parallel' is not GNU parallel"
ensure_orchestrator
cc -O2 -pthread -o "$WORK/floor" "$REPO/bench/floor.c"
seq "$N" >"$WORK/input"

# check_bytes TOOL FILE...: the files hold N x SIZE bytes in all.
check_bytes() {
    local tool=$1 total
    shift
    total=$(cat "$@" | wc -c)
    ((total == N * SIZE)) || die "$tool: captured $total bytes, expected $((N * SIZE))"
}

bench_floor() {
    run_timed floor "$WORK/floor" -n "$N" -P "$SLOTS" -- sh -c "$JOB >/dev/null" </dev/null
}

bench_xargs() {
    local dir=$WORK/xargs
    mkdir "$dir"
    run_timed xargs xargs -P "$SLOTS" -I '{}' sh -c "$JOB >$dir/{}.out" <"$WORK/input"
    check_bytes xargs "$dir"/*.out
    rm -rf "$dir"
}

bench_parallel() {
    local dir=$WORK/parallel
    run_timed parallel parallel --will-cite -j "$SLOTS" --results "$dir" "$JOB; : {}" <"$WORK/input"
    local files
    mapfile -t files < <(find "$dir" -name stdout)
    check_bytes parallel "${files[@]}"
    rm -rf "$dir"
}

bench_orchestrator() {
    local dir=$WORK/orch bytes
    mkdir "$dir"
    (cd "$dir" && run_timed orchestrator "$ORCH" run --config "$CONFIG" --multirun "task=1..$N" \
        "hydra.launcher.params.joblib.n_jobs=$SLOTS" --quiet -- sh -c "$JOB") </dev/null
    verify_orchestrator_tree "$dir"
    bytes=$(grep -ho '"stdout_bytes":[0-9]*' "$dir"/multirun/*/*/jobs.jsonl | awk -F: '{ s += $2 } END { print s }')
    ((bytes == N * SIZE)) || die "orchestrator: jobs.jsonl counts $bytes stdout bytes, expected $((N * SIZE))"
    rm -rf "$dir"
}

tools=(floor xargs parallel orchestrator)
run_reps "${tools[@]}"

declare -A what_of=(
    [floor]="stdout to /dev/null (nothing captured)"
    [xargs]="each job's stdout to its own file"
    [parallel]="--results DIR: each job's stdout to its own file"
    [orchestrator]="each line to the job's log, timestamped and tagged"
)

report() {
    local tool median min max rss floor_median
    read -r floor_median _ <<<"$(stats floor)"
    report_header "flood benchmark: $N jobs writing $SIZE_MIB MiB of 100-byte lines each, $SLOTS slots"
    echo "- output on $(df -PT "$WORK" | awk 'NR == 2 { print $2 }'); median of $REPS runs after 1 warm-up"
    echo
    echo "| tool | output goes | median wall (s) | min-max (s) | MiB/s | peak RSS (MiB) | vs floor |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    for tool in "${tools[@]}"; do
        read -r median min max rss <<<"$(stats "$tool")"
        printf "| %s | %s | %s |\n" "$tool" "${what_of[$tool]}" \
            "$(awk -v m="$median" -v lo="$min" -v hi="$max" -v rss="$rss" -v f="$floor_median" -v mib=$((N * SIZE_MIB)) \
                'BEGIN { printf "%.3f | %.3f-%.3f | %.0f | %.1f | %.2fx", m, lo, hi, mib / m, rss / 1024, m / f }')"
    done
    echo
    run_times "${tools[@]}"
}

publish flood
