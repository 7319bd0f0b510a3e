#!/usr/bin/env bash
# warm.sh: warm Python jobs (one process per job forked from a warm interpreter per sweep)
# against fresh interpreters, through the Hydra plugin and through `orchestrator run`, in
# the same venv and the same run.
#
# N jobs, 2 slots, every row in the same interleaved rounds:
#   Hydra's seed app (bench/hydra_app/my_app.py, sleep=0: it logs one line and returns)
#     joblib        python my_app.py --multirun task=range(1,N+1) sleep=0 hydra/launcher=joblib
#                   hydra.launcher.n_jobs=2 (Hydra's joblib launcher: 2 reused loky workers)
#     plugin_fresh  the same with hydra/launcher=orchestrator hydra.launcher.warm=false: a fresh
#                   `python -m hydra_plugins.orchestrator_launcher._worker` per job
#     plugin_warm   hydra/launcher=orchestrator (warm by default): each job forked from a warm
#                   interpreter that has imported Hydra and unpickled the batch's shared objects
#     plugin_fast   plugin_warm with hydra.launcher.fast_exit=true: jobs end with os._exit
#   A plain script importing numpy (sum.py, written into the work dir)
#     xargs         seq N | xargs -P2 python sum.py task=i: a fresh interpreter per job and
#                   nothing else, the floor of a fresh job (with the thread limits orchestrator
#                   sets for its jobs, OMP_NUM_THREADS=cores/slots and the like)
#     cli_fresh     orchestrator run --multirun task=1..N hydra.launcher.params.joblib.n_jobs=2
#                   -- python sum.py: a fresh interpreter per job, supervised
#     cli_warm      the same with --warm '+hydra.launcher.orchestrator.preload=[numpy]'
# Every run is checked: N job dirs, N succeeded records in jobs.jsonl, and every record has
# "warm": true in the warm rows, none in the fresh ones (a sweep that fell back to fresh
# processes must not pass for a warm result); xargs must print N sums. The report gives, per
# row, the median wall of the sweep, its ratio to joblib's (Hydra rows) or cli_fresh's
# (script rows), the CPU of the whole sweep per job (GNU time: the launcher, the zygote and
# every job), and for orchestrator's rows the median per-job CPU (cpu_user_s + cpu_sys_s)
# and wall (duration_s) from jobs.jsonl over the timed runs, and the serial parts of the
# sweep (before the first task runs, after the last); then what a fresh interpreter pays for
# its imports alone and the CPU spent outside the jobs, to show where the time goes.
#
# Environment:
#   N=40              jobs per run (the issue's rows: 40 and 200)
#   REPS=3            timed repetitions per row, interleaved, after one untimed warm-up
#   VENV=path         venv (default bench/.venv-warm; hydra-core, hydra-joblib-launcher,
#                     cloudpickle and numpy installed if missing; the repository's package
#                     is reinstalled every run, so that the plugin and binary measured are
#                     this checkout's, built in CARGO_TARGET_DIR, default target/)
#   RUN_TIMEOUT=900   seconds before one run counts as hung
#   TMPDIR=/dev/shm   where the work dir goes, and with it every sweep's tree (tmpfs: inode
#                     creation on these ext4 disks would drown the difference)
#
# Timings are information, never a pass/fail test.
set -euo pipefail
export LC_ALL=C # '.' as the decimal separator in $EPOCHREALTIME and awk
N=${N:-40}
REPS=${REPS:-3}
SLOTS=2
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$REPO/bench/.venv-warm}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
positive_ints N REPS RUN_TIMEOUT
[[ -d ${TMPDIR:-/dev/shm} ]] || die "TMPDIR=${TMPDIR:-/dev/shm} is not a directory"
WORK=$(mktemp -d "${TMPDIR:-/dev/shm}/warm-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

ensure_tools() {
    local mods='import hydra, hydra_plugins.hydra_joblib_launcher, cloudpickle, numpy'
    command -v python3 >/dev/null || apt_install python3 python3-venv
    /usr/bin/time --version 2>&1 | grep -q GNU || apt_install time
    PY=$VENV/bin/python
    if ! { [[ -x $PY ]] && "$PY" -c "$mods" 2>/dev/null; }; then
        log "creating venv $VENV (pip install hydra-core hydra-joblib-launcher cloudpickle numpy)"
        rm -rf -- "$VENV"
        python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
        "$VENV/bin/pip" install -q --disable-pip-version-check hydra-core hydra-joblib-launcher cloudpickle numpy ||
            die "pip install hydra-core hydra-joblib-launcher cloudpickle numpy failed"
        "$PY" -c "$mods" || die "hydra, its joblib launcher, cloudpickle or numpy is not importable in $VENV"
    fi
    log "pip install $REPO (the plugin and the binary, built by maturin in $CARGO_TARGET_DIR)"
    "$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$REPO" ||
        die "pip install $REPO failed"
    "$PY" -c 'import hydra_plugins.orchestrator_launcher' || die "the plugin is not importable in $VENV"
    # The CLI rows run the binary the plugin runs (the venv's), copied into $WORK.
    ORCH=$VENV/bin/orchestrator
    ensure_orchestrator
    printf '%s\n' 'import sys' '' 'import numpy as np' '' \
        "print(np.arange(int(sys.argv[1].split('=')[1])).sum())" >"$WORK/sum.py"
}

# timed TOOL CMD...: run_timed TOOL, with the CPU time (user sys, s) of CMD and everything
# it waited for (the launcher, the zygote, every job) appended to $WORK/TOOL.cpu.
timed() {
    local tool=$1
    shift
    run_timed "$tool" /usr/bin/time -a -o "$WORK/$tool.cpu" -f '%U %S' "$@"
}

# check_jobs TOOL WARM: the sweep just verified (SWEEP) has N records with "warm": true
# (WARM=1) or none (WARM=0); its records are kept in $WORK/TOOL.jobs.
check_jobs() {
    local tool=$1 want=$2 warm
    warm=$(grep -c '"warm":true' "$SWEEP/jobs.jsonl" || true)
    if ((want)); then
        ((warm == N)) || die "$tool: only $warm of $N jobs in jobs.jsonl say \"warm\": true: the sweep" \
            "(partly) fell back to fresh processes; its output: $(grep -i warm "$WORK/$tool.log" | head -n 5)"
    else
        ((warm == 0)) || die "$tool: $warm of $N jobs in jobs.jsonl say \"warm\": true in a fresh row"
    fi
    cat "$SWEEP/jobs.jsonl" >>"$WORK/$tool.jobs"
}

# phases TOOL T0 T1 FIRST LAST: append "lead tail" to $WORK/TOOL.phases: the seconds from T0
# (the command's start, epoch seconds) to FIRST and from LAST to T1 (its end); FIRST and LAST
# are times `date -d` reads. The serial parts of a sweep, before its first job and after its last.
phases() {
    awk -v t0="$2" -v t1="$3" -v a="$(date -d "$4" +%s.%N)" -v b="$(date -d "$5" +%s.%N)" \
        'BEGIN { printf "%.4f %.4f\n", a - t0, t1 - b }' >>"$WORK/$1.phases"
}

# text_min / text_max: the first / last line of stdin in text order.
text_min() { awk 'NR == 1 || $0 < m { m = $0 } END { print m }'; }
text_max() { awk '$0 > m { m = $0 } END { print m }'; }

# jsonl_phases TOOL T0 T1: phases from SWEEP/jobs.jsonl: the first job's "start" and the last
# job's "end" (ISO 8601 UTC times of one format: their text sorts as they do).
jsonl_phases() {
    phases "$1" "$2" "$3" \
        "$(grep -o '"start":"[^"]*"' "$SWEEP/jobs.jsonl" | cut -d '"' -f 4 | text_min)" \
        "$(grep -o '"end":"[^"]*"' "$SWEEP/jobs.jsonl" | cut -d '"' -f 4 | text_max)"
}

# task_phases TOOL T0 T1: phases from the seed app's "executing task" log lines (Hydra's job
# logging, local time to the ms), the first and the last: when the first task ran, and the
# last (the same measure for Hydra's launcher and the plugin, less the end of the last job).
task_phases() {
    local times
    times=$(cat "$SWEEP"/*/my_app.log | grep 'executing task' | cut -c 2-24 | tr ',' '.')
    phases "$1" "$2" "$3" "$(text_min <<<"$times")" "$(text_max <<<"$times")"
}

runs=0
# hydra_row TOOL WARM OVERRIDE...: the seed app's sweep with the given launcher overrides.
hydra_row() {
    local tool=$1 warm=$2 dir=$WORK/run-$((++runs)) t0 t1
    shift 2
    mkdir "$dir"
    t0=$EPOCHREALTIME
    (cd "$dir" && timed "$tool" "$PY" "$REPO/bench/hydra_app/my_app.py" --multirun "task=range(1,$((N + 1)))" \
        sleep=0 "$@" "hydra.launcher.n_jobs=$SLOTS") </dev/null
    t1=$EPOCHREALTIME
    if [[ $tool == joblib ]]; then
        verify_job_dirs joblib "$dir"
    else
        verify_orchestrator_tree "$dir"
        check_jobs "$tool" "$warm"
    fi
    local lines
    lines=$(cat "$SWEEP"/*/my_app.log | grep -c 'executing task' || true)
    ((lines == N)) || die "$tool: $lines 'executing task' lines in the job logs, expected $N"
    task_phases "$tool" "$t0" "$t1"
    rm -rf "$dir"
}

bench_joblib() { hydra_row joblib 0 hydra/launcher=joblib; }
bench_plugin_fresh() { hydra_row plugin_fresh 0 hydra/launcher=orchestrator hydra.launcher.warm=false; }
bench_plugin_warm() { hydra_row plugin_warm 1 hydra/launcher=orchestrator; }
bench_plugin_fast() { hydra_row plugin_fast 1 hydra/launcher=orchestrator hydra.launcher.fast_exit=true; }

# cli_row TOOL WARM ARG...: sum.py's sweep under `orchestrator run`, with ARGs before `--`.
cli_row() {
    local tool=$1 warm=$2 dir=$WORK/run-$((++runs)) t0 t1
    shift 2
    mkdir "$dir"
    cp "$WORK/sum.py" "$dir/"
    t0=$EPOCHREALTIME
    (cd "$dir" && timed "$tool" "$ORCH" run --quiet --no-progress --multirun "task=1..$N" \
        "hydra.launcher.params.joblib.n_jobs=$SLOTS" "$@" -- "$PY" sum.py) </dev/null
    t1=$EPOCHREALTIME
    verify_orchestrator_tree "$dir"
    check_jobs "$tool" "$warm"
    jsonl_phases "$tool" "$t0" "$t1"
    rm -rf "$dir"
}

bench_cli_fresh() { cli_row cli_fresh 0; }
bench_cli_warm() { cli_row cli_warm 1 --warm '+hydra.launcher.orchestrator.preload=[numpy]'; }

# The thread limits orchestrator (as joblib's loky) gives each job: cores / slots, at least 1
# (without them numpy's OpenBLAS starts a thread per core in every process).
threads=$(($(nproc) / SLOTS))
((threads >= 1)) || threads=1
THREAD_ENV=()
for var in OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS BLIS_NUM_THREADS VECLIB_MAXIMUM_THREADS \
    NUMBA_NUM_THREADS NUMEXPR_NUM_THREADS; do
    THREAD_ENV+=("$var=$threads")
done

bench_xargs() {
    local dir=$WORK/run-$((++runs)) sums
    mkdir "$dir"
    cp "$WORK/sum.py" "$dir/"
    # shellcheck disable=SC2016 # expanded by the inner shell
    (cd "$dir" && timed xargs env "${THREAD_ENV[@]}" bash -c 'seq 1 "$1" | sed "s/^/task=/" | xargs -P "$2" -n 1 "$3" sum.py' \
        _ "$N" "$SLOTS" "$PY") </dev/null
    # N newlines and nothing but digits: with PYTHONUNBUFFERED, print() writes a sum and its
    # newline apart, so two jobs' lines can interleave ("12" "34" "\n" "\n").
    sums=$(wc -l <"$WORK/xargs.log")
    ((sums == N)) || die "xargs: $sums lines printed, expected $N sums"
    ! grep -qvE '^[0-9]*$' "$WORK/xargs.log" || die "xargs: its output is not just sums: $(head -n 5 "$WORK/xargs.log")"
    rm -rf "$dir"
}

load_before=$(cut -d ' ' -f 1-3 /proc/loadavg)
ensure_tools
tools=(joblib plugin_fresh plugin_warm plugin_fast xargs cli_fresh cli_warm)
run_reps "${tools[@]}"
# Only the timed rounds (the warm-up's come first).
for tool in "${tools[@]}"; do
    tail -n "$REPS" "$WORK/$tool.cpu" >"$WORK/$tool.cpu.timed"
    if [[ -f $WORK/$tool.jobs ]]; then
        tail -n $((N * REPS)) "$WORK/$tool.jobs" >"$WORK/$tool.timed"
    fi
    if [[ -f $WORK/$tool.phases ]]; then
        tail -n "$REPS" "$WORK/$tool.phases" >"$WORK/$tool.phases.timed"
    fi
done

declare -A base_of=([joblib]=joblib [plugin_fresh]=joblib [plugin_warm]=joblib [plugin_fast]=joblib
    [xargs]=cli_fresh [cli_fresh]=cli_fresh [cli_warm]=cli_fresh)
declare -A what_of=(
    [joblib]="\`my_app.py --multirun task=range(1,$((N + 1))) sleep=0 hydra/launcher=joblib hydra.launcher.n_jobs=$SLOTS\`"
    [plugin_fresh]="the same, \`hydra/launcher=orchestrator hydra.launcher.warm=false\`"
    [plugin_warm]="the same, \`hydra/launcher=orchestrator\` (warm)"
    [plugin_fast]="the same, warm, \`hydra.launcher.fast_exit=true\`"
    [xargs]="\`seq $N \\| xargs -P$SLOTS python sum.py task=i\` (with orchestrator's \`OMP_NUM_THREADS=$threads\` and the like)"
    [cli_fresh]="\`orchestrator run --multirun task=1..$N hydra.launcher.params.joblib.n_jobs=$SLOTS -- python sum.py\`"
    [cli_warm]="the same, \`--warm '+hydra.launcher.orchestrator.preload=[numpy]'\`"
)

# median: the median of the numbers on stdin, one a line.
median() {
    sort -g | awk '{ t[NR] = $1 } END { if (NR) printf "%.6f", (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2 }'
}

# job_cpu TOOL / job_wall TOOL: the median per-job CPU (user + sys) / wall, in seconds, over
# the timed runs' records.
job_cpus() { grep -oE '"cpu_user_s":[0-9.e-]+,"cpu_sys_s":[0-9.e-]+' "$WORK/$1.timed" | awk -F'[:,]' '{ print $2 + $4 }'; }
job_cpu() { job_cpus "$1" | median; }
job_wall() { grep -o '"duration_s":[0-9.e-]*' "$WORK/$1.timed" | cut -d: -f2 | median; }

# sweep_cpu TOOL: the median CPU (user + sys, s) of TOOL's whole timed runs.
sweep_cpu() { awk '{ print $1 + $2 }' "$WORK/$1.cpu.timed" | median; }

# outside TOOL: the CPU per job (s) spent outside the jobs, over the timed runs: the sweeps'
# CPU less their jobs' (means, as these sum).
outside() {
    awk -v jobs="$(job_cpus "$1" | awk '{ s += $1 } END { print s }')" -v n=$((N * REPS)) \
        '{ s += $1 + $2 } END { printf "%.6f", (s - jobs) / n }' "$WORK/$1.cpu.timed"
}

# lead TOOL / tail TOOL: the median seconds from the command's start to its first job's
# start / from its last job's end to the command's end.
lead() { cut -d ' ' -f 1 "$WORK/$1.phases.timed" | median; }
tail_of() { cut -d ' ' -f 2 "$WORK/$1.phases.timed" | median; }

# cpu_of CODE: the median CPU (user + sys, s) of 7 fresh `python -c CODE`, from wait4 (GNU
# time rounds to 10 ms).
cpu_of() {
    "$PY" - "$PY" "$1" <<'EOF'
import os, statistics, sys
cpu = []
for _ in range(7):
    pid = os.posix_spawn(sys.argv[1], [sys.argv[1], "-c", sys.argv[2]], os.environ)
    _, status, ru = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"python -c {sys.argv[2]!r} failed")
    cpu.append(ru.ru_utime + ru.ru_stime)
print(f"{statistics.median(cpu):.6f}")
EOF
}

ms() { awk -v s="$1" 'BEGIN { printf "%.0f", 1000 * s }'; }
secs() { awk -v s="$1" 'BEGIN { printf "%.2f", s }'; }

report() {
    local tool median min max rss base base_median jcpu jwall phases
    local py_bare py_hydra py_warmup py_numpy
    py_bare=$(cpu_of 'pass')
    py_hydra=$(cpu_of 'import hydra, omegaconf, cloudpickle')
    # The plugin's warm-up without a batch to unpickle: Hydra's imports and plugin scan.
    py_warmup=$(ORCHESTRATOR_HYDRA_COMMON='' cpu_of 'from hydra_plugins.orchestrator_launcher._worker import warm_up; warm_up()')
    py_numpy=$(export "${THREAD_ENV[@]}" && cpu_of 'import numpy')
    report_header "Warm Python jobs: $N jobs, $SLOTS slots"
    echo "- hydra-core $("$PY" -c 'import hydra; print(hydra.__version__)'), joblib" \
        "$("$PY" -c 'import joblib; print(joblib.__version__)'), numpy $("$PY" -c 'import numpy; print(numpy.__version__)')," \
        "Python $("$PY" -c 'import platform; print(platform.python_version())')"
    echo "- sweep trees on $(df -PT "$WORK" | awk 'NR == 2 { print $2 }'); median of $REPS interleaved runs after 1 warm-up"
    echo
    echo "| row | what runs | median wall (s) | min-max (s) | time / base | sweep CPU per job (ms) | job CPU (ms) | job wall (ms) | serial: before / after the jobs (s) | peak RSS (MiB) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for tool in "${tools[@]}"; do
        read -r median min max rss <<<"$(stats "$tool")"
        base=${base_of[$tool]}
        read -r base_median _ <<<"$(stats "$base")"
        jcpu=- jwall=- phases=-
        if [[ -f $WORK/$tool.timed ]]; then
            jcpu=$(ms "$(job_cpu "$tool")")
            jwall=$(ms "$(job_wall "$tool")")
        fi
        if [[ -f $WORK/$tool.phases.timed ]]; then
            phases="$(secs "$(lead "$tool")") / $(secs "$(tail_of "$tool")")"
        fi
        printf "| %s | %s | %s | %s | %s | %s |\n" "$tool" "${what_of[$tool]}" \
            "$(awk -v m="$median" -v lo="$min" -v hi="$max" -v b="$base_median" \
                'BEGIN { printf "%.3f | %.3f-%.3f | %.2fx", m, lo, hi, m / b }') ($base)" \
            "$(awk -v c="$(sweep_cpu "$tool")" -v n="$N" 'BEGIN { printf "%.0f", 1000 * c / n }')" \
            "$jcpu | $jwall | $phases" "$(awk -v rss="$rss" 'BEGIN { printf "%.1f", rss / 1024 }')"
    done
    echo
    echo "- time / base: the ratio of the medians. Per round (each ratio between runs seconds apart):" \
        "plugin_fresh $(round_ratio plugin_fresh joblib)x, plugin_warm $(round_ratio plugin_warm joblib)x," \
        "plugin_fast $(round_ratio plugin_fast joblib)x joblib's; xargs $(round_ratio xargs cli_fresh)x," \
        "cli_warm $(round_ratio cli_warm cli_fresh)x cli_fresh's."
    echo "- sweep CPU: user + sys of the command and all it waited for (GNU time), over N; job CPU and" \
        "wall: medians of cpu_user_s + cpu_sys_s and of duration_s in jobs.jsonl (timed runs); serial:" \
        "from the command's start to the first task's \"executing task\" log line (Hydra rows) or the" \
        "first job's \"start\" (jobs.jsonl), and from the last such line or \"end\" to the command's" \
        "end (medians). Every record of the warm rows said \"warm\": true," \
        "none of the fresh rows'."
    echo
    echo "Where the rest goes:"
    echo
    echo "- fresh \`python -c\` (median CPU of 7, from wait4): 'pass' (a bare interpreter) $(ms "$py_bare") ms;" \
        "'import hydra, omegaconf, cloudpickle' $(ms "$py_hydra") ms; the plugin's warm-up without a batch to" \
        "unpickle (its imports and Hydra's plugin scan: what the warm interpreter does once instead of" \
        "every fresh job) $(ms "$py_warmup") ms; 'import numpy' $(ms "$py_numpy") ms."
    awk -v fresh="$(job_cpu plugin_fresh)" -v warm="$(job_cpu plugin_warm)" -v fast="$(job_cpu plugin_fast)" \
        -v warmup="$py_warmup" -v cfresh="$(job_cpu cli_fresh)" -v cwarm="$(job_cpu cli_warm)" \
        -v numpy="$py_numpy" -v bare="$py_bare" 'BEGIN {
        printf "- plugin job CPU: fresh %.0f ms, of which the warm-up %.0f ms, leaving %.0f ms; warm %.0f ms" \
            " (unpickling its job, composing its config, Hydra'\''s run_job with the app, writing its result," \
            " the interpreter'\''s teardown); fast_exit saves %.0f ms of it (%.0f ms).\n",
            1000 * fresh, 1000 * warmup, 1000 * (fresh - warmup), 1000 * warm, 1000 * (warm - fast), 1000 * fast
        printf "- sum.py job CPU: fresh %.0f ms (a bare interpreter %.0f ms, importing numpy %.0f ms), warm %.0f ms.\n",
            1000 * cfresh, 1000 * bare, 1000 * numpy, 1000 * cwarm
    }'
    echo "- outside the jobs, CPU per job (the sweeps' CPU less their jobs', means):" \
        "plugin_fresh $(ms "$(outside plugin_fresh)") ms, plugin_warm $(ms "$(outside plugin_warm)") ms," \
        "plugin_fast $(ms "$(outside plugin_fast)") ms (the Hydra parent: its start, the basic sweeper" \
        "composing every job's config once more to validate the batch, the launcher; the binary; the" \
        "zygote's warm-up and forks); cli_fresh $(ms "$(outside cli_fresh)") ms, cli_warm" \
        "$(ms "$(outside cli_warm)") ms (the binary; the zygote)."
    echo "- serial, before the first task logs its line (median): joblib $(secs "$(lead joblib)") s," \
        "plugin_fresh $(secs "$(lead plugin_fresh)") s, plugin_warm $(secs "$(lead plugin_warm)") s," \
        "plugin_fast $(secs "$(lead plugin_fast)") s: Python and Hydra start, the basic sweeper composing" \
        "all $N configs to validate the batch, the launcher's preparation, one job's start (a fresh" \
        "\`python -c 'import hydra, omegaconf, cloudpickle'\` alone takes $(ms "$py_hydra") ms of CPU)."
    echo
    run_times "${tools[@]}"
}

publish "warm-n$N"
