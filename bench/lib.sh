# Shared by the benchmark scripts: `source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`.
# shellcheck shell=bash

log() { printf '%s\n' "$*" >&2; }

die() {
    log "$(basename "$0"): error: $*"
    exit 1
}

# positive_ints NAME...: die unless each named variable holds a positive integer.
positive_ints() {
    local name
    for name in "$@"; do
        [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer (got '${!name}')"
    done
}

# apt_install PKG...: install Debian packages (root only), running `apt-get update` once.
apt_updated=0
apt_install() {
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "missing Debian package(s) $*: install them and run again"
    fi
    if ((!apt_updated)); then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The functions below use globals of the calling script: WORK (its temp dir), RUN_TIMEOUT
# (seconds before a run counts as hung) and N (jobs per sweep).

# run_timed NAME CMD...: run CMD once under GNU time, append "wall_seconds rss_kib" to
# $WORK/NAME.samples; stdout and stderr go to $WORK/NAME.log. Fails if CMD fails or
# outlives RUN_TIMEOUT (then it gets SIGTERM, and SIGKILL 10 s later).
run_timed() {
    local name=$1 t0 t1 rc=0
    shift
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%M' -o "$WORK/$name.rss" timeout -k 10 "$RUN_TIMEOUT" "$@" \
        >"$WORK/$name.log" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    if ((rc == 124 || rc == 137)); then
        log "--- $name output (last 20 lines):"
        tail -n 20 "$WORK/$name.log" >&2
        die "$name still running after RUN_TIMEOUT=${RUN_TIMEOUT}s: killed (hung?)"
    elif ((rc != 0)); then
        log "--- $name exited $rc; its output (last 20 lines):"
        tail -n 20 "$WORK/$name.log" >&2
        die "$name failed"
    fi
    # -o holds the %M line, after any "Command exited with non-zero status" line.
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }') $(tail -n 1 "$WORK/$name.rss")" \
        >>"$WORK/$name.samples"
}

# verify_job_dirs TOOL DIR: DIR holds one sweep dir multirun/<date>/<time>/ with N job dirs
# that have .hydra/config.yaml (Hydra's layout, which both Hydra and orchestrator write);
# the sweep dir is left in SWEEP. Dies otherwise.
verify_job_dirs() {
    local tool=$1 dir=$2 sweeps jobdirs
    mapfile -t sweeps < <(find "$dir/multirun" -mindepth 2 -maxdepth 2 -type d 2>/dev/null)
    ((${#sweeps[@]} == 1)) ||
        die "$tool: expected one sweep dir multirun/<date>/<time>/ in $dir, found ${#sweeps[@]}"
    SWEEP=${sweeps[0]}
    jobdirs=$(find "$SWEEP" -mindepth 3 -maxdepth 3 -path '*/.hydra/config.yaml' | wc -l)
    ((jobdirs == N)) || die "$tool: $jobdirs job dirs with .hydra/config.yaml, expected $N"
}

# Fail loudly unless orchestrator left exactly one sweep dir with N job dirs and N
# successful lines in jobs.jsonl: a run that did nothing must not look fast.
verify_orchestrator_tree() {
    local dir=$1 sweep jsonl lines ok nums leftover
    verify_job_dirs orchestrator "$dir"
    sweep=$SWEEP
    jsonl=$sweep/jobs.jsonl
    [[ -f $jsonl ]] || die "orchestrator: no jobs.jsonl in $sweep"
    lines=$(wc -l <"$jsonl")
    ok=$(grep -c '"status":"succeeded"' "$jsonl" || true)
    nums=$(grep -o '"num":[0-9]*' "$jsonl" | sort -u | wc -l)
    ((lines == N)) || die "orchestrator: jobs.jsonl has $lines lines, expected $N"
    ((nums == N)) || die "orchestrator: jobs.jsonl has $nums distinct job numbers, expected $N"
    ((ok == N)) || die "orchestrator: $ok of $N jobs in jobs.jsonl have status succeeded"
    # Jobs run with their job dir as cwd: any process still there was left behind.
    leftover=$(find /proc/[0-9]*/cwd -maxdepth 0 -lname "$dir/*" 2>/dev/null | wc -l || true)
    ((leftover == 0)) || log "warning: $leftover process(es) still running in $dir after orchestrator exited"
    leftover=$(grep -o '"leftover_processes":[1-9][0-9]*' "$jsonl" | wc -l || true)
    ((leftover == 0)) || log "warning: jobs.jsonl reports leftover processes for $leftover job(s)"
}

# stats NAME: "median min max peak_rss_kib" over NAME's samples.
stats() {
    sort -g "$WORK/$1.samples" | awk '
        { t[NR] = $1; if ($2 > rss) rss = $2 }
        END {
            m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
            printf "%.3f %.3f %.3f %d\n", m, t[1], t[NR], rss
        }'
}

# round_ratio TOOL BASE: the median over the rounds of TOOL's time / BASE's time in the
# same round. The rounds are interleaved, so each ratio compares runs made seconds apart:
# a slow phase of the machine (the floor's median moves by 10-20% from run to run here)
# cancels out more than in the ratio of the two medians.
round_ratio() {
    paste -d ' ' "$WORK/$1.samples" "$WORK/$2.samples" | awk '{ print $1 / $3 }' | sort -g | awk '
        { r[NR] = $1 }
        END { printf "%.2f", (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }'
}

# ensure_orchestrator: ORCH, or target/release/orchestrator built now; copied into $WORK
# (and ORCH pointed at the copy) so that a rebuild during the run cannot swap it.
ensure_orchestrator() {
    if [[ -z ${ORCH:-} ]]; then
        ORCH=$REPO/target/release/orchestrator
        log "cargo build --release -p orchestrator-cli"
        (cd "$REPO" && cargo build --release -q -p orchestrator-cli) ||
            die "orchestrator does not build (ORCH=path runs a given binary)"
    fi
    [[ -x $ORCH ]] || die "ORCH=$ORCH is not an executable"
    cp "$ORCH" "$WORK/orchestrator"
    ORCH=$WORK/orchestrator
}

# run_reps TOOL...: bench_TOOL for each TOOL once untimed (a warm-up: its samples are
# dropped), then rounds_of the TOOLs.
run_reps() {
    local tool
    log "warm-up: $*"
    for tool in "$@"; do
        "bench_$tool"
        rm -f "$WORK/$tool.samples"
    done
    rounds_of "$@"
}

# rounds_of TOOL...: REPS rounds of bench_TOOL for each TOOL, interleaved (round 1 of every
# tool, then round 2, ...) so that a slow phase of the machine hits all the tools alike.
rounds_of() {
    local tool rep
    for ((rep = 1; rep <= REPS; rep++)); do
        log "rep $rep/$REPS"
        for tool in "$@"; do
            "bench_$tool"
        done
    done
}

# report_header TITLE: the lines every report starts with. Uses load_before, read by the
# script before it built or ran anything.
report_header() {
    local git_rev
    git_rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "?")
    git -C "$REPO" diff --quiet HEAD 2>/dev/null || git_rev+=" (uncommitted changes)"
    echo "# $1"
    echo
    echo "- $(date '+%Y-%m-%d %H:%M:%S %z'); repo $git_rev"
    echo "- $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), Linux $(uname -r)"
    echo "- load average before: ${load_before:-?}; after: $(cut -d ' ' -f 1-3 /proc/loadavg)"
}

# run_times TOOL...: the wall time of every run of each TOOL, in run order.
run_times() {
    local tool
    echo "Wall times of each run (s), in run order:"
    echo
    for tool in "$@"; do
        echo "- $tool: $(cut -d ' ' -f 1 "$WORK/$tool.samples" | paste -sd ' ')"
    done
}

# publish NAME: the script's `report` to stdout and to bench/results/NAME-<date>-<time>.md.
publish() {
    local out
    mkdir -p "$REPO/bench/results"
    out=$REPO/bench/results/$1-$(date +%Y-%m-%d-%H%M%S).md
    report | tee "$out"
    log "written: $out"
}
