#!/usr/bin/env bash
# spawn.sh: the "many tiny jobs" benchmark.
#
# N jobs of `true` with 2 slots, timed for:
#   floor         bench/floor.c: posix_spawnp + waitpid, nothing else, `true` with no argument
#   floor_arg     the same with one argument, `true task=1`: the argv shape that orchestrator's
#                 jobs (`true task=N`, Hydra style) and xargs -n1 (`true N`) run. It matters:
#                 coreutils' `true` with exactly one argument sets up the locale to check for
#                 --help/--version, about 0.2 ms of CPU per process here.
#   floor_threads bench/floor.c -T: one thread per slot, each starting a child and waiting
#                 for that one. Faster than `floor` on 2 cores (the kernel wakes the
#                 waiting thread on the CPU its child just left, which starts the next child
#                 there at once): the lowest any launcher can go here. Information only;
#                 the ratios are to `floor` and `floor_arg`.
#   xargs         xargs -P2 -n1 true          (input: seq N)
#   parallel      parallel --will-cite -j2 true   (input: seq N)
#   orchestrator  orchestrator run --multirun task=1..N ... -- true, writing its full
#                 per-job output tree (multirun/<date>/<time>/...) into a temp dir
#
# Each tool runs REPS times (interleaved: rep 1 of every tool, then rep 2, ...) after one
# untimed warm-up; the table shows the median wall time, the peak RSS (GNU time's %M: the
# largest single process of the tool's tree) and the ratios to both floors' medians.
# The table goes to stdout and to bench/results/spawn-<date>.md.
#
# Environment:
#   N=2000            jobs per run
#   REPS=5            timed repetitions per tool
#   ORCH=path         orchestrator binary (default: build target/release/orchestrator)
#   SKIP_ORCH=1       leave orchestrator out (peers only)
#   RUN_TIMEOUT=300   seconds before one run of a tool counts as hung: it is killed and
#                     the script fails
#   CLEAN_EACH_REP=1  delete orchestrator's tree after each run, not at exit (on ext4
#                     this slows the following runs: see bench_orchestrator)
#   TMPDIR=/tmp       where the temp dir goes, and with it orchestrator's trees
#
# Timings are information, never a pass/fail test. The script fails only when a tool
# fails or orchestrator's output tree does not hold N jobs.
set -euo pipefail
export LC_ALL=C # '.' as the decimal separator in $EPOCHREALTIME and awk

N=${N:-2000}
REPS=${REPS:-5}
SLOTS=2
SKIP_ORCH=${SKIP_ORCH:-0}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
CLEAN_EACH_REP=${CLEAN_EACH_REP:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG=$REPO/config/joblib.yaml

# log, die, apt_install, run_timed, verify_orchestrator_tree, stats, ensure_orchestrator,
# run_reps, report_header, run_times, publish
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

positive_ints N REPS RUN_TIMEOUT

WORK=$(mktemp -d "${TMPDIR:-/tmp}/spawn-bench.XXXXXX")
SHM_WORK=
trap 'rm -rf "$WORK" ${SHM_WORK:+"$SHM_WORK"}' EXIT

# --- peers -------------------------------------------------------------------------------

ensure_peers() {
    command -v cc >/dev/null || apt_install gcc libc6-dev
    command -v parallel >/dev/null || apt_install parallel
    command -v xargs >/dev/null || apt_install findutils
    # GNU time (for %M); bash's `time` keyword and busybox time cannot report it.
    /usr/bin/time --version 2>&1 | grep -q GNU || apt_install time
    parallel --version 2>/dev/null | grep -q 'GNU parallel' ||
        die "'parallel' is not GNU parallel (moreutils' parallel takes other arguments)"
    # rust-parallel, a Rust peer (tokio, one process per line of input): RUST_PARALLEL, or
    # on PATH, or built once from crates.io into bench/.tools (about a minute).
    if [[ -z ${RUST_PARALLEL:-} ]]; then
        RUST_PARALLEL=$(command -v rust-parallel || echo "$REPO/bench/.tools/bin/rust-parallel")
    fi
    if [[ ! -x $RUST_PARALLEL ]]; then
        log "cargo install --locked rust-parallel --root bench/.tools"
        cargo install -q --locked rust-parallel --root "$REPO/bench/.tools" ||
            die "cannot build rust-parallel (set RUST_PARALLEL=path to use an installed one)"
        RUST_PARALLEL=$REPO/bench/.tools/bin/rust-parallel
    fi
}


# --- measuring ---------------------------------------------------------------------------

# Each bench_* function runs its tool once: run_timed, then any checks and cleanup.
bench_floor() {
    run_timed floor "$WORK/floor" -n "$N" -P "$SLOTS" -- true </dev/null
}

bench_floor_arg() {
    run_timed floor_arg "$WORK/floor" -n "$N" -P "$SLOTS" -- true task=1 </dev/null
}

bench_floor_threads() {
    run_timed floor_threads "$WORK/floor" -T -n "$N" -P "$SLOTS" -- true </dev/null
}

bench_xargs() {
    run_timed xargs xargs -P "$SLOTS" -n 1 true <"$WORK/input"
}

bench_rust_parallel() {
    run_timed rust_parallel "$RUST_PARALLEL" -j "$SLOTS" true <"$WORK/input"
}

bench_parallel() {
    run_timed parallel parallel --will-cite -j "$SLOTS" true <"$WORK/input"
}

# Every run gets a fresh working dir. The trees are deleted together at exit, not between
# runs: on ext4, creating files right after deleting thousands of them is several times
# slower (the inode allocator skips inodes freed in the last minutes), so deleting the
# previous run's tree would make each run slower than the one before. CLEAN_EACH_REP=1
# deletes them between runs anyway.
orch_runs=0
# run_orchestrator NAME BASE: one timed run as NAME, its tree in a fresh dir under BASE.
run_orchestrator() {
    local name=$1 dir=$2/orch-$((++orch_runs))
    mkdir "$dir"
    (cd "$dir" && run_timed "$name" "$ORCH" run --config "$CONFIG" --multirun "task=1..$N" \
        "hydra.launcher.params.joblib.n_jobs=$SLOTS" --quiet -- true) </dev/null
    verify_orchestrator_tree "$dir"
    if [[ $CLEAN_EACH_REP == 1 ]]; then
        rm -rf "$dir"
    fi
}

bench_orchestrator() {
    run_orchestrator orchestrator "$WORK"
}

# The same with the tree on tmpfs: what orchestrator itself costs, without the disk's
# filesystem (whose cost for 12,000 new inodes varies with its history: see the README).
bench_orchestrator_tmpfs() {
    run_orchestrator orchestrator_tmpfs "$SHM_WORK"
}

# --- main --------------------------------------------------------------------------------

load_before=$(cut -d ' ' -f 1-3 /proc/loadavg) # before any build of ours
ensure_peers
tools=(floor floor_arg floor_threads xargs rust_parallel parallel)
if [[ $SKIP_ORCH == 1 ]]; then
    log "SKIP_ORCH=1: orchestrator left out"
else
    ensure_orchestrator
    [[ -f $CONFIG ]] || die "config not found: $CONFIG"
    tools+=(orchestrator)
    # A second orchestrator row with its trees on tmpfs, unless they are there already.
    if [[ $(df -PT /dev/shm 2>/dev/null | awk 'NR == 2 { print $2 }') == tmpfs &&
        $(df -PT "$WORK" | awk 'NR == 2 { print $2 }') != tmpfs ]]; then
        SHM_WORK=$(mktemp -d /dev/shm/spawn-bench.XXXXXX)
        tools+=(orchestrator_tmpfs)
    fi
fi

cc -O2 -pthread -o "$WORK/floor" "$REPO/bench/floor.c"
seq "$N" >"$WORK/input"

run_reps "${tools[@]}"

declare -A command_of=(
    [floor]="floor -n $N -P $SLOTS -- true"
    [floor_arg]="floor -n $N -P $SLOTS -- true task=1"
    [floor_threads]="floor -T -n $N -P $SLOTS -- true"
    [xargs]="seq $N \\| xargs -P$SLOTS -n1 true"
    [rust_parallel]="seq $N \\| rust-parallel -j$SLOTS true"
    [parallel]="seq $N \\| parallel --will-cite -j$SLOTS true"
    [orchestrator]="orchestrator run --config config/joblib.yaml --multirun task=1..$N hydra.launcher.params.joblib.n_jobs=$SLOTS --quiet -- true"
    [orchestrator_tmpfs]="the same, run in a dir on /dev/shm"
)
read -r floor_median _ <<<"$(stats floor)"
read -r floor_arg_median _ <<<"$(stats floor_arg)"

# version_of TOOL: a short version string ("?" if unknown).
version_of() {
    local v
    case $1 in
    floor | floor_arg | floor_threads) v="cc $(cc -dumpversion)" ;;
    xargs) v=$(xargs --version | awk 'NR == 1 { print "findutils " $NF }') ;;
    parallel) v=$(parallel --version | awk 'NR == 1 { print $NF }') ;;
    rust_parallel) v=$("$RUST_PARALLEL" --version | awk 'NR == 1 { print $NF }') ;;
    orchestrator*) v=$("$ORCH" --version 2>/dev/null | awk 'NR == 1 { print $NF }') ;;
    esac
    echo "${v:-?}"
}

report() {
    local tool median min max rss
    report_header "spawn benchmark: $N jobs of \`true\`, $SLOTS slots"
    echo "- median of $REPS runs after 1 warm-up"
    if [[ $SKIP_ORCH != 1 ]]; then
        echo "- orchestrator's trees on $(df -PT "$WORK" | awk 'NR == 2 { print $2 }')" \
            "($(df -P "$WORK" | awk 'NR == 2 { print $NF }'))${SHM_WORK:+, those of orchestrator_tmpfs on tmpfs}," \
            "deleted $([[ $CLEAN_EACH_REP == 1 ]] && echo "after each run" || echo "at exit")"
    fi
    echo
    echo "| tool | version | command | median wall (s) | min-max (s) | per job (ms) | peak RSS (MiB) | vs floor | vs floor_arg (same argv) | vs floor, vs floor_arg: per round |"
    echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for tool in "${tools[@]}"; do
        read -r median min max rss <<<"$(stats "$tool")"
        printf "| %s | %s | \`%s\` | %s |\n" "$tool" "$(version_of "$tool")" "${command_of[$tool]}" \
            "$(awk -v m="$median" -v lo="$min" -v hi="$max" -v rss="$rss" -v f="$floor_median" -v fa="$floor_arg_median" -v n="$N" \
                'BEGIN { printf "%.3f | %.3f-%.3f | %.2f | %.1f | %.2fx | %.2fx", m, lo, hi, 1000 * m / n, rss / 1024, m / f, m / fa }') | $(round_ratio "$tool" floor)x, $(round_ratio "$tool" floor_arg)x"
    done
    echo
    echo "Peak RSS is GNU time's %M: the largest single process of the tool's tree."
    run_times "${tools[@]}"
}

publish spawn
