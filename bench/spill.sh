#!/usr/bin/env bash
# spill.sh: the "one large argument shared by many jobs" benchmark.
#
# One SIZE_MIB (512) MiB file given as argument `data` to JOBS (32) jobs, 2 at a time; every
# job reads all of it. Timed in the same run:
#   orchestrator  orchestrator run --config <max_nbytes 1M, mmap_mode r, temp_folder T>
#                   --multirun data=@big.bin x=1..JOBS -- sum_arg
#                 (the file is snapshotted once into T/orchestrator-spill-<pid>-*/ and
#                 every job maps that copy read-only)
#   floor         dd big.bin into T once, then JOBS x `sum_arg data=@T/copy` with
#                 xargs -P2: the write and the reads that no launcher can avoid
#   joblib        bench/spill_joblib.py: Parallel(n_jobs=2, max_nbytes='1M', mmap_mode='r',
#                 temp_folder=T) over JOBS tasks that each sum a uint8 array of the same
#                 bytes (loaded with np.fromfile), in a venv with joblib and numpy
#
# While orchestrator and joblib run, a sampler reads every SAMPLE_S seconds the VmHWM of
# the supervisor (the orchestrator process, or joblib's parent python process) from
# /proc/<pid>/status, its wchar from /proc/<pid>/io, and the files in its private dir
# under T (their count and total size). VmHWM is the kernel's high-water mark of that one
# process's resident set, children excluded; it only grows, so the last value read before
# the process exits is its peak (growth in the last SAMPLE_S before exit could be missed).
# GNU time's %M is not used for it: it also covers the waited children, here 512 MiB jobs.
#
# The table goes to stdout and to bench/results/spill-<date>-<time>.md; progress goes to
# stderr. Timings are information, never a pass/fail test. The script fails when a tool
# fails, a job reads a wrong sum, or orchestrator leaves its spill dir behind.
#
# Environment:
#   REPS=3          timed repetitions per tool (after WARMUP untimed ones), interleaved
#   WARMUP=1        untimed repetitions first
#   JOBS=32         jobs (tasks) per run
#   SIZE_MIB=512    size of the shared argument
#   TEMP_FOLDER=/dev/shm   where the tools write the shared copy (the floor too)
#   ORCH=path, SUM_ARG=path   binaries to use (default: cargo build --release)
#   VENV=path       venv for joblib (default: bench/.venv-spill, created if missing)
#   SKIP_JOBLIB=1   leave joblib out
#   SAMPLE_S=0.05   sampling period
#   RUN_TIMEOUT=600 seconds before one run counts as hung (SIGTERM, then SIGKILL)
set -euo pipefail
export LC_ALL=C # '.' as the decimal separator in $EPOCHREALTIME and awk

REPS=${REPS:-3}
WARMUP=${WARMUP:-1}
JOBS=${JOBS:-32}
SIZE_MIB=${SIZE_MIB:-512}
SLOTS=2
TEMP_FOLDER=${TEMP_FOLDER:-/dev/shm}
SKIP_JOBLIB=${SKIP_JOBLIB:-0}
SAMPLE_S=${SAMPLE_S:-0.05}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$REPO/bench/.venv-spill}
RSS_WARN_MIB=64

# log, die, apt_install
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

positive_ints REPS JOBS SIZE_MIB RUN_TIMEOUT
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer (got '$WARMUP')"
[[ $SAMPLE_S =~ ^[0-9]*\.?[0-9]+$ ]] || die "SAMPLE_S must be a number of seconds (got '$SAMPLE_S')"
[[ -d $TEMP_FOLDER && -w $TEMP_FOLDER ]] || die "TEMP_FOLDER=$TEMP_FOLDER is not a writable directory"
TEMP_FOLDER=$(cd "$TEMP_FOLDER" && pwd -P)
SIZE=$((SIZE_MIB * 1024 * 1024))

# free_bytes DIR
free_bytes() { df -PB1 -- "$1" | awk 'NR == 2 { print $4 }'; }

load_before=$(cut -d ' ' -f 1-3 /proc/loadavg) # before any build of ours

# --- temp files and cleanup ----------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/spill-bench.XXXXXX")
FLOOR_DIR=""
CUR_PID="" CUR_SAMPLER=""
TOOL_PIDS=() # every supervisor pid we started: their spill/memmap dirs are ours to check

cleanup() {
    local pid d i
    for pid in $CUR_SAMPLER $CUR_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give an interrupted tool up to 5 s to clean up after itself before judging leftovers.
    if [[ -n $CUR_PID ]]; then
        for ((i = 0; i < 50; i++)); do
            kill -0 "$CUR_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$CUR_PID" 2>/dev/null || true
        wait "$CUR_PID" 2>/dev/null || true
    fi
    for pid in "${TOOL_PIDS[@]}"; do
        for d in "$TEMP_FOLDER/orchestrator-spill-$pid-"* "$TEMP_FOLDER/joblib_memmapping_folder_${pid}_"*; do
            [[ -e $d ]] || continue
            log "cleanup: removing $d (left behind by pid $pid)"
            rm -rf -- "$d" || true
        done
    done
    if [[ -n $FLOOR_DIR ]]; then rm -rf -- "$FLOOR_DIR" || true; fi
    rm -rf -- "$WORK" || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools ---------------------------------------------------------------------------------

ensure_tools() {
    command -v xargs >/dev/null || apt_install findutils
    # GNU time, for the jobs' peak RSS in the floor run.
    /usr/bin/time --version 2>&1 | grep -q GNU || apt_install time
    if ! command -v stat >/dev/null || ! command -v dd >/dev/null; then apt_install coreutils; fi
}

ensure_binaries() {
    if [[ -z ${ORCH:-} || -z ${SUM_ARG:-} ]]; then
        log "cargo build --release -p orchestrator-cli -p sum_arg"
        (cd "$REPO" && cargo build --release -q -p orchestrator-cli -p sum_arg) ||
            die "orchestrator or sum_arg does not build"
        ORCH=${ORCH:-$REPO/target/release/orchestrator}
        SUM_ARG=${SUM_ARG:-$REPO/target/release/sum_arg}
    fi
    [[ -x $ORCH ]] || die "ORCH=$ORCH is not an executable"
    [[ -x $SUM_ARG ]] || die "SUM_ARG=$SUM_ARG is not an executable"
    # Copies, so that a rebuild during the benchmark cannot swap a binary between reps.
    mkdir "$WORK/bin"
    cp "$ORCH" "$WORK/bin/orchestrator"
    cp "$SUM_ARG" "$WORK/bin/sum_arg"
    ORCH=$WORK/bin/orchestrator
    SUM_ARG=$WORK/bin/sum_arg
}

ensure_venv() {
    PY=$VENV/bin/python
    if [[ -x $PY ]] && "$PY" -c 'import joblib, numpy' 2>/dev/null; then
        return
    fi
    command -v python3 >/dev/null || apt_install python3 python3-venv
    log "creating venv $VENV (pip install joblib numpy)"
    rm -rf -- "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q --disable-pip-version-check joblib numpy ||
        die "pip install joblib numpy failed"
    "$PY" -c 'import joblib, numpy' || die "joblib/numpy not importable in $VENV"
}

# --- measuring -----------------------------------------------------------------------------

# sample PID PREFIX OUT: until PID exits (or has no memory left: a zombie), every SAMPLE_S
# seconds read PID's VmHWM and RssAnon (/proc/PID/status) and wchar (/proc/PID/io), and
# the files in TEMP_FOLDER/PREFIX* (how many, their total size). Writes one line to OUT:
#   vmhwm_kib rssanon_max_kib wchar_bytes files_bytes_max files_max samples cpu_s timed_out
# cpu_s is the sampler's own CPU time (with its stat/sleep children). After RUN_TIMEOUT
# seconds PID gets SIGTERM, and SIGKILL 10 s later.
sample() {
    local pid=$1 prefix=$2 out=$3
    local hwm=0 anon=0 wchar=0 bytes_max=0 files_max=0 n=0 timed_out=0 seen k v s bytes
    local -a dirs files sizes stat
    local d start=$SECONDS
    shopt -s nullglob dotglob
    while :; do
        seen=0
        while read -r k v _; do
            case $k in
            VmHWM:)
                hwm=$v
                seen=1
                ;;
            RssAnon:) if ((v > anon)); then anon=$v; fi ;;
            esac
        done 2>/dev/null <"/proc/$pid/status" || break
        ((seen)) || break # a zombie: its memory is gone, VmHWM with it
        while read -r k v; do
            if [[ $k == wchar: ]]; then wchar=$v; fi
        done 2>/dev/null <"/proc/$pid/io" || true
        dirs=("$TEMP_FOLDER/$prefix"*)
        files=()
        for d in "${dirs[@]}"; do
            files+=("$d"/*)
        done
        if ((${#files[@]} > files_max)); then files_max=${#files[@]}; fi
        if ((${#files[@]})); then
            mapfile -t sizes < <(stat -c %s -- "${files[@]}" 2>/dev/null || true)
            bytes=0
            for s in "${sizes[@]}"; do bytes=$((bytes + s)); done
            if ((bytes > bytes_max)); then bytes_max=$bytes; fi
        fi
        n=$((n + 1))
        if ((timed_out == 0 && SECONDS - start > RUN_TIMEOUT)); then
            kill -TERM "$pid" 2>/dev/null || true
            timed_out=1
        elif ((timed_out == 1 && SECONDS - start > RUN_TIMEOUT + 10)); then
            kill -KILL "$pid" 2>/dev/null || true
            timed_out=2
        fi
        sleep "$SAMPLE_S"
    done
    read -ra stat <"/proc/$BASHPID/stat"
    echo "$hwm $anon $wchar $bytes_max $files_max $n" \
        "$(awk -v t=$((stat[13] + stat[14] + stat[15] + stat[16])) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')" \
        "$timed_out" >"$out"
}

# run_measured NAME PREFIX_TEMPLATE CMD...: start CMD in the background (stdout to
# $WORK/NAME.out, stderr to $WORK/NAME.err), sample it (PREFIX_TEMPLATE with %p replaced by
# its pid), wait. Sets RM_WALL (seconds), RM_PID, RM_SAMPLE (the sampler's line); fails if
# CMD fails or hangs.
run_measured() {
    local name=$1 tmpl=$2 t0 t1 rc=0 pid spid
    shift 2
    t0=$EPOCHREALTIME
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
    pid=$!
    CUR_PID=$pid
    TOOL_PIDS+=("$pid")
    sample "$pid" "${tmpl//%p/$pid}" "$WORK/$name.sample" &
    spid=$!
    CUR_SAMPLER=$spid
    wait "$pid" || rc=$?
    t1=$EPOCHREALTIME
    CUR_PID=""
    wait "$spid" || die "$name: the sampler failed"
    CUR_SAMPLER=""
    RM_PID=$pid
    RM_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
    RM_SAMPLE=$(<"$WORK/$name.sample")
    if [[ ${RM_SAMPLE##* } != 0 ]]; then
        die "$name still running after RUN_TIMEOUT=${RUN_TIMEOUT}s: killed (hung?); command: $*"
    elif ((rc != 0)); then
        log "--- $name exited $rc; command: $*"
        log "--- stdout (last 20 lines):"
        tail -n 20 "$WORK/$name.out" >&2
        log "--- stderr (last 20 lines):"
        tail -n 20 "$WORK/$name.err" >&2
        die "$name failed"
    fi
}

# check_sums NAME FILE...: every line "job N: SIZE bytes, sum S" in FILE... must say
# SIZE bytes and EXPECTED_SUM, and there must be JOBS of them.
check_sums() {
    local name=$1 lines bad
    shift
    lines=$(cat -- "$@" | grep -Eo 'job [0-9-]+: [0-9]+ bytes, sum [0-9]+' | wc -l)
    bad=$(cat -- "$@" | grep -Eo 'job [0-9-]+: [0-9]+ bytes, sum [0-9]+' |
        grep -Fvc ": $SIZE bytes, sum $EXPECTED_SUM" || true)
    ((lines == JOBS)) || die "$name: $lines job outputs with a sum, expected $JOBS"
    ((bad == 0)) || die "$name: $bad job(s) read a different size or sum than $SIZE bytes, sum $EXPECTED_SUM"
}

bench_orchestrator() {
    local dir=$WORK/orch-run sweeps sweep jsonl n ok nums paths hwm anon wchar bytes files cpu jobrss
    rm -rf "$dir"
    mkdir "$dir"
    run_measured orchestrator "orchestrator-spill-%p-" env -C "$dir" "$ORCH" run --config "$WORK/spill.yaml" \
        --multirun "data=@$SRC" "x=1..$JOBS" --quiet -- "$SUM_ARG"
    # The spill dir must be gone once orchestrator has exited.
    if compgen -G "$TEMP_FOLDER/orchestrator-spill-$RM_PID-*" >/dev/null; then
        log "--- left behind after orchestrator (pid $RM_PID) exited 0:"
        ls -la "$TEMP_FOLDER/orchestrator-spill-$RM_PID-"* >&2
        die "orchestrator left its spill dir in $TEMP_FOLDER; command: (cd $dir && $ORCH run --config $WORK/spill.yaml --multirun data=@$SRC x=1..$JOBS --quiet -- $SUM_ARG)"
    fi
    mapfile -t sweeps < <(find "$dir/multirun" -mindepth 2 -maxdepth 2 -type d 2>/dev/null)
    ((${#sweeps[@]} == 1)) || die "orchestrator: expected one sweep dir in $dir/multirun, found ${#sweeps[@]}"
    sweep=${sweeps[0]}
    jsonl=$sweep/jobs.jsonl
    [[ -f $jsonl ]] || die "orchestrator: no jobs.jsonl in $sweep"
    n=$(wc -l <"$jsonl")
    ok=$(grep -c '"status":"succeeded"' "$jsonl" || true)
    nums=$(grep -o '"num":[0-9]*' "$jsonl" | sort -u | wc -l)
    ((n == JOBS && ok == JOBS && nums == JOBS)) ||
        die "orchestrator: jobs.jsonl has $n lines, $nums distinct jobs, $ok succeeded; expected $JOBS"
    check_sums orchestrator "$sweep"/*/*.log
    # Every job must have been given the same file, in this run's spill dir.
    paths=$(grep -ho 'started pid [0-9]* in slot [0-9]*: .*' "$sweep"/*/*.log | grep -o 'data=@[^ ]*' | sort | uniq -c)
    [[ $(wc -l <<<"$paths") == 1 && $paths == *" data=@$TEMP_FOLDER/orchestrator-spill-$RM_PID-"* ]] ||
        die "orchestrator: the jobs were not all given one file in $TEMP_FOLDER/orchestrator-spill-$RM_PID-*: $paths"
    [[ ${paths%% data=@*} =~ ^\ *$JOBS$ ]] || die "orchestrator: only ${paths%% data=@*} jobs got the spilled file"
    jobrss=$(grep -o '"max_rss_kib":[0-9]*' "$jsonl" | cut -d : -f 2 | sort -n | tail -n 1)
    read -r hwm anon wchar bytes files _ cpu _ <<<"$RM_SAMPLE"
    echo "$RM_WALL $hwm $anon $wchar $bytes $files $cpu $jobrss" >>"$WORK/orchestrator.samples"
    rm -rf "$dir"
}

bench_floor() {
    local copy=$FLOOR_DIR/copy.bin copy_wall read_wall bytes files jobrss
    run_measured floor-copy "${FLOOR_DIR##*/}" dd if="$SRC" of="$copy" bs=1M status=none
    copy_wall=$RM_WALL
    # What dd wrote is known exactly: the copy (the sampler ran only to cost what it costs).
    bytes=$(stat -c %s -- "$copy")
    files=$(find "$FLOOR_DIR" -type f | wc -l)
    run_measured floor-read "${FLOOR_DIR##*/}" /usr/bin/time -f %M -o "$WORK/floor-read.rss" \
        xargs -a "$WORK/seq" -P "$SLOTS" -I '{}' "$SUM_ARG" "data=@$copy" 'x={}'
    read_wall=$RM_WALL
    check_sums floor "$WORK/floor-read.out"
    jobrss=$(tail -n 1 "$WORK/floor-read.rss")
    rm -f -- "$copy"
    echo "$(awk -v a="$copy_wall" -v b="$read_wall" 'BEGIN { printf "%.4f", a + b }')" \
        "$copy_wall $read_wall $bytes $files $jobrss" >>"$WORK/floor.samples"
}

bench_joblib() {
    local hwm anon wchar bytes files cpu fields left
    run_measured joblib "joblib_memmapping_folder_%p_" "$PY" "$REPO/bench/spill_joblib.py" "$SRC" \
        --tasks "$JOBS" --n-jobs "$SLOTS" --max-nbytes 1M --mmap-mode r --temp-folder "$TEMP_FOLDER" \
        --expect-sum "$EXPECTED_SUM"
    left=$(compgen -G "$TEMP_FOLDER/joblib_memmapping_folder_${RM_PID}_*" || true)
    [[ -z $left ]] || log "warning: joblib left $left behind"
    # import_s load_s parallel_s worker_maxrss_kib, plus checks the script makes itself.
    fields=$("$PY" - "$WORK/joblib.out" "$SIZE" "$EXPECTED_SUM" "$JOBS" "$TEMP_FOLDER/joblib_memmapping_folder_${RM_PID}_" <<'EOF'
import json, sys
out, size, want, jobs, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
d = json.loads(open(out).read().strip().splitlines()[-1])
ok = (d["size"] == size and d["sums"] == [want] and d["memmap_tasks"] == jobs
      and len(d["memmap_files"]) == 1 and d["memmap_files"][0].startswith(prefix))
if not ok:
    sys.exit("joblib: unexpected report: " + json.dumps(d))
print(d["import_s"], d["load_s"], d["parallel_s"], d["worker_maxrss_kib"], d["joblib"], d["numpy"])
EOF
    ) || die "joblib: its report does not check out"
    read -r hwm anon wchar bytes files _ cpu _ <<<"$RM_SAMPLE"
    echo "$RM_WALL $hwm $anon $wchar $bytes $files $cpu $fields" >>"$WORK/joblib.samples"
}

# stats TOOL [COL]: "median min max" of column COL (default 1: the wall time).
stats() {
    awk -v c="${2:-1}" '{ print $c }' "$WORK/$1.samples" | sort -g | awk '
        { t[NR] = $1 }
        END {
            m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
            printf "%.3f %.3f %.3f\n", m, t[1], t[NR]
        }'
}
# colmax TOOL COL: the largest value of column COL.
colmax() { awk -v c="$2" '$c > m { m = $c } END { print m + 0 }' "$WORK/$1.samples"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# --- main ----------------------------------------------------------------------------------

ensure_tools
ensure_binaries
tools=(orchestrator floor)
if [[ $SKIP_JOBLIB == 1 ]]; then
    log "SKIP_JOBLIB=1: joblib left out"
else
    ensure_venv
    tools+=(joblib)
fi
CLK_TCK=$(getconf CLK_TCK)

free=$(free_bytes "$TEMP_FOLDER")
((free > 2 * SIZE)) || die "TEMP_FOLDER=$TEMP_FOLDER has $free bytes free; need $((2 * SIZE))"
free=$(free_bytes "$WORK")
((free > SIZE + 64 * 1048576)) || die "$WORK has $free bytes free; need $((SIZE + 64 * 1048576))"
FLOOR_DIR=$(mktemp -d "$TEMP_FOLDER/spill-bench-floor.XXXXXX")

SRC=$WORK/big.bin
log "writing $SIZE_MIB MiB of random bytes to $SRC"
head -c "$SIZE" /dev/urandom >"$SRC"
sync "$SRC" # no writeback of it to disk during the runs; its pages stay in the page cache
seq "$JOBS" >"$WORK/seq"
cat >"$WORK/spill.yaml" <<EOF
hydra:
  launcher:
    n_jobs: $SLOTS
    max_nbytes: 1M
    mmap_mode: r
    temp_folder: $TEMP_FOLDER
EOF
# The sum every job must print, read once straight from the source.
EXPECTED_SUM=$("$SUM_ARG" "data=@$SRC" | sed -n 's/.* bytes, sum \([0-9]*\)$/\1/p')
[[ -n $EXPECTED_SUM ]] || die "sum_arg printed no sum for $SRC"

for ((rep = 1; rep <= WARMUP; rep++)); do
    log "warm-up $rep/$WARMUP: ${tools[*]}"
    for tool in "${tools[@]}"; do
        "bench_$tool"
        rm -f "$WORK/$tool.samples"
    done
done
for ((rep = 1; rep <= REPS; rep++)); do
    log "rep $rep/$REPS: ${tools[*]}"
    for tool in "${tools[@]}"; do
        "bench_$tool"
        log "  $tool: $(tail -n 1 "$WORK/$tool.samples" | cut -d ' ' -f 1) s"
    done
done
load_after=$(cut -d ' ' -f 1-3 /proc/loadavg)
mapfile -t spill_left < <(find "$TEMP_FOLDER" -maxdepth 1 -name 'orchestrator-spill-*' 2>/dev/null)

# --- report --------------------------------------------------------------------------------

read -r floor_median _ <<<"$(stats floor)"
joblib_median=""
if [[ " ${tools[*]} " == *" joblib "* ]]; then read -r joblib_median _ <<<"$(stats joblib)"; fi

report() {
    local tool median min max git_rev rss written vs_joblib cmd anon wchar orch_v hwm_max
    git_rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "?")
    git -C "$REPO" diff --quiet HEAD 2>/dev/null || git_rev+=" (uncommitted changes)"
    orch_v=$("$ORCH" --version 2>/dev/null | awk 'NR == 1 { print $NF }')
    echo "# spill benchmark: one $SIZE_MIB MiB argument, $JOBS jobs that each read it fully, $SLOTS slots"
    echo
    echo "$(date '+%Y-%m-%d %H:%M:%S %z'); $(nproc) cores," \
        "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo);" \
        "$(awk '/^MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo);" \
        "Linux $(uname -r); repo $git_rev; temp_folder $TEMP_FOLDER ($(df -PT "$TEMP_FOLDER" | awk 'NR == 2 { print $2 }'));" \
        "median of $REPS runs after $WARMUP warm-up(s); load average before: $load_before, after: $load_after."
    echo
    echo "| tool | command | median wall (s) | min-max (s) | peak RSS of supervisor (MiB) | written to temp_folder | vs floor | vs joblib |"
    echo "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"
    for tool in "${tools[@]}"; do
        read -r median min max <<<"$(stats "$tool")"
        case $tool in
        orchestrator)
            cmd="orchestrator run --config C --multirun data=@big.bin x=1..$JOBS --quiet -- sum_arg"
            rss=$(mib $(($(colmax orchestrator 2) * 1024)))
            written="$(mib "$(colmax orchestrator 5)") MiB, $(colmax orchestrator 6) file (max seen at once); supervisor wrote $(mib "$(colmax orchestrator 4)") MiB in all"
            if [[ $(colmax orchestrator 5) != "$SIZE" ]]; then written+=" **(expected $SIZE_MIB MiB once)**"; fi
            ;;
        floor)
            cmd="dd big.bin → T/copy, then xargs -P$SLOTS sum_arg data=@T/copy ×$JOBS"
            rss="—"
            written="$(mib "$(colmax floor 4)") MiB, $(colmax floor 5) file (dd)"
            ;;
        joblib)
            cmd="spill_joblib.py: Parallel(n_jobs=$SLOTS, max_nbytes='1M', mmap_mode='r')(arr.sum() ×$JOBS)"
            rss=$(mib $(($(colmax joblib 2) * 1024)))
            written="$(mib "$(colmax joblib 5)") MiB, $(colmax joblib 6) file (max seen at once); parent wrote $(mib "$(colmax joblib 4)") MiB in all"
            ;;
        esac
        vs_joblib="—"
        if [[ -n $joblib_median ]]; then vs_joblib=$(awk -v m="$median" -v j="$joblib_median" 'BEGIN { printf "%.2fx", m / j }'); fi
        # shellcheck disable=SC2016 # the backticks are markdown
        printf '| %s | `%s` | %s | %s-%s | %s | %s | %s | %s |\n' "$tool" "$cmd" "$median" "$min" "$max" "$rss" "$written" \
            "$(awk -v m="$median" -v f="$floor_median" 'BEGIN { printf "%.2fx", m / f }')" "$vs_joblib"
    done
    echo
    echo "- **orchestrator** $orch_v: supervisor peak RSS = VmHWM of the orchestrator process alone (children excluded)," \
        "read from /proc/<pid>/status every ${SAMPLE_S}s until it exits; largest over the reps."
    anon=$(colmax orchestrator 3)
    hwm_max=$(colmax orchestrator 2)
    echo "  Its anonymous part (RssAnon, sampled) peaked at $(mib $((anon * 1024))) MiB." \
        "Largest job RSS (jobs.jsonl max_rss_kib: the job's mapping of the shared file): $(mib $(($(colmax orchestrator 8) * 1024))) MiB." \
        "All $JOBS jobs of every run got the same file (\`data=@$TEMP_FOLDER/orchestrator-spill-<pid>-<n>/<blake3>\`) and printed $SIZE bytes, sum $EXPECTED_SUM;" \
        "the spill dir was gone after every run."
    if ((hwm_max > RSS_WARN_MIB * 1024)); then
        echo "  **Warning: the supervisor's peak RSS is above $RSS_WARN_MIB MiB.**"
    fi
    read -r median min max <<<"$(stats floor 2)"
    echo "- **floor** = write once + read $JOBS times: \`dd bs=1M\` of big.bin into $TEMP_FOLDER: median $median s ($min-$max);" \
        "$JOBS × \`sum_arg data=@copy\` with \`xargs -P$SLOTS\`: median $(stats floor 3 | cut -d ' ' -f 1) s" \
        "(largest job RSS $(mib $(($(colmax floor 6) * 1024))) MiB, GNU time %M). Each rep's floor is the sum of its two parts."
    if [[ -n $joblib_median ]]; then
        local jv nv
        read -r _ _ _ _ _ _ _ _ _ _ _ jv nv <<<"$(tail -n 1 "$WORK/joblib.samples")"
        echo "- **joblib** $jv, numpy $nv, Python $("$PY" -c 'import platform; print(platform.python_version())'), loky backend:" \
            "wall is the whole python process (start, imports median $(stats joblib 8 | cut -d ' ' -f 1) s," \
            "np.fromfile of big.bin median $(stats joblib 9 | cut -d ' ' -f 1) s, Parallel(...) call median $(stats joblib 10 | cut -d ' ' -f 1) s, exit);" \
            "orchestrator's median over the Parallel(...) call's alone: $(awk -v m="$(stats orchestrator | cut -d ' ' -f 1)" -v j="$(stats joblib 10 | cut -d ' ' -f 1)" 'BEGIN { printf "%.2fx", m / j }')." \
            "Peak RSS is the parent's VmHWM (it holds the array: the user's data, not overhead);" \
            "largest worker RSS $(mib $(($(colmax joblib 11) * 1024))) MiB. Every task got an np.memmap of one file under" \
            "$TEMP_FOLDER/joblib_memmapping_folder_<pid>_*/ and returned sum $EXPECTED_SUM."
    fi
    echo "- Sampler CPU per run (median): orchestrator $(stats orchestrator 7 | cut -d ' ' -f 1) s" \
        "${joblib_median:+(joblib $(stats joblib 7 | cut -d ' ' -f 1) s)}; the floor runs are sampled as well." \
        "\"written to temp_folder\" is the largest total size of the files in the tool's private dir seen by the sampler," \
        "\"wrote in all\" the process's wchar (every write(2): spill file, logs, pipes)."
    if ((${#spill_left[@]})); then
        echo "- **orchestrator-spill-* dirs in $TEMP_FOLDER after the last run: ${spill_left[*]}**"
    else
        echo "- No orchestrator-spill-* dir in $TEMP_FOLDER after the last run."
    fi
    echo
    run_times "${tools[@]}"
}

publish spill
