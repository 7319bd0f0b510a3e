#!/usr/bin/env bash
# slurm.sh: orchestrator's Slurm backend against Slurm's own floor and Hydra's submitit
# launcher, on the cluster that .ci/slurm/start.sh starts (2 CPUs), for N trivial jobs.
#
#   floor_wait    sbatch --wait --array=0-(N-1)%2 --wrap true: what the issue calls Slurm's
#                 floor; sbatch --wait polls slurmctld after 2 s, then 8 s, then every 32 s
#                 (.ci/slurm/NOTES.md), so it overstates the floor by up to that much
#   floor_poll    the same array, then `squeue` every 0.1 s until it is gone: the floor
#   orchestrator  orchestrator run --backend slurm --multirun task=1..N n_jobs=2 -- true
#                 (each task writes its job's .hydra files and log, and a completion marker)
#   submitit      python bench/hydra_app/my_app.py --multirun task=range(N) sleep=0
#                 hydra/launcher=submitit_slurm hydra.launcher.array_parallelism=2: Hydra 1.3
#                 with hydra-submitit-launcher 1.2.0 in a venv (skipped when SUBMITIT=0 or pip
#                 cannot install it); it needs sacct (accounting on)
# Columns: median wall time from command to last record (s), and for orchestrator its own
# CPU time (user+sys of the supervisor, not of the tasks). Timings are information, never a
# pass/fail test. Output: stdout and bench/results/slurm-<date>.md.
#
# Environment: NS="20 200" (sweep sizes), REPS=3, ORCH=path (default: build
# target/release/orchestrator), VENV=path (default bench/.venv-submitit), SUBMITIT=1.
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
NS=${NS:-"20 200"}
REPS=${REPS:-3}
SUBMITIT=${SUBMITIT:-1}
VENV=${VENV:-$REPO/bench/.venv-submitit}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
positive_ints REPS RUN_TIMEOUT

scontrol ping >/dev/null 2>&1 || die "no Slurm cluster (scontrol ping failed): bash .ci/slurm/start.sh"
if [[ -z ${ORCH:-} ]]; then
    (cd "$REPO" && cargo build --release -q -p orchestrator-cli)
    ORCH=$REPO/target/release/orchestrator
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if ((SUBMITIT)); then
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating $VENV (hydra-core, hydra-submitit-launcher)"
        if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q hydra-core==1.3.2 hydra-submitit-launcher==1.2.0; }; then
            log "cannot install hydra-submitit-launcher: submitit rows skipped"
            SUBMITIT=0
        fi
    fi
    if ! sacct -n -X -j 1 >/dev/null 2>&1; then
        log "accounting is off (submitit needs sacct): submitit rows skipped"
        SUBMITIT=0
    fi
fi

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", b - a }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

floor_wait() {
    local n=$1 t0
    t0=$(now)
    (cd "$WORK" && sbatch --wait --parsable --array=0-$((n - 1))%2 --output=/dev/null --wrap true >/dev/null)
    elapsed "$t0" "$(now)"
}

floor_poll() {
    local n=$1 t0 id
    t0=$(now)
    id=$(cd "$WORK" && sbatch --parsable --array=0-$((n - 1))%2 --output=/dev/null --wrap true)
    while [[ -n $(squeue -h -r -j "$id" -o %i 2>/dev/null) ]]; do sleep 0.1; done
    elapsed "$t0" "$(now)"
}

orchestrator() {
    local n=$1 dir="$WORK/orch-$RANDOM" t0 cpu
    t0=$(now)
    /usr/bin/time -f '%U %S' -o "$WORK/cpu" timeout "$RUN_TIMEOUT" "$ORCH" run --backend slurm --quiet -m \
        "task=1..$n" hydra.launcher.n_jobs=2 "hydra.sweep.dir=$dir" -- true >/dev/null 2>"$WORK/orch.err" ||
        { cat "$WORK/orch.err" >&2; die "orchestrator failed"; }
    local t1
    t1=$(now)
    [[ $(wc -l <"$dir/jobs.jsonl") -eq $n ]] || die "orchestrator: $dir/jobs.jsonl has not $n records"
    cpu=$(tail -n 1 "$WORK/cpu" | awk '{ printf "%.2f", $1 + $2 }')
    rm -rf "$dir"
    echo "$(elapsed "$t0" "$t1") $cpu"
}

submitit() {
    local n=$1 dir="$WORK/sub-$RANDOM" t0
    t0=$(now)
    (cd "$WORK" && timeout "$RUN_TIMEOUT" "$VENV/bin/python" "$REPO/bench/hydra_app/my_app.py" --multirun \
        "task=range(0,$n)" sleep=0 hydra/launcher=submitit_slurm hydra.launcher.array_parallelism=2 \
        hydra.launcher.timeout_min=10 hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=1 \
        "hydra.sweep.dir=$dir" >"$WORK/sub.log" 2>&1) || { tail -n 20 "$WORK/sub.log" >&2; die "submitit failed"; }
    elapsed "$t0" "$(now)"
    rm -rf "$dir"
}

out="$REPO/bench/results/slurm-$(date +%Y-%m-%d).md"
mkdir -p "$REPO/bench/results"
{
    echo "| jobs | floor: sbatch --wait | floor: sbatch + squeue 0.1 s | orchestrator | orchestrator CPU | submitit | orchestrator / floor | submitit / orchestrator |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
} >"$WORK/table"
for n in $NS; do
    positive_ints n
    : >"$WORK/fw"
    : >"$WORK/fp"
    : >"$WORK/o"
    : >"$WORK/oc"
    : >"$WORK/s"
    for ((r = 1; r <= REPS; r++)); do
        log "N=$n rep $r/$REPS"
        floor_wait "$n" >>"$WORK/fw"
        floor_poll "$n" >>"$WORK/fp"
        read -r wall cpu < <(orchestrator "$n")
        echo "$wall" >>"$WORK/o"
        echo "$cpu" >>"$WORK/oc"
        if ((SUBMITIT)); then submitit "$n" >>"$WORK/s"; fi
    done
    fw=$(median <"$WORK/fw")
    fp=$(median <"$WORK/fp")
    o=$(median <"$WORK/o")
    oc=$(median <"$WORK/oc")
    s=-
    sratio=-
    if ((SUBMITIT)); then
        s=$(median <"$WORK/s")
        sratio=$(awk -v a="$s" -v b="$o" 'BEGIN { printf "%.2fx", a / b }')
    fi
    ratio=$(awk -v a="$o" -v b="$fp" 'BEGIN { printf "%.2fx", a / b }')
    echo "| $n | ${fw}s | ${fp}s | ${o}s | ${oc}s | ${s}s | $ratio | $sratio |" >>"$WORK/table"
done
{
    echo "# bench/slurm.sh, $(date -u +%Y-%m-%dT%H:%MZ), Slurm $(scontrol show config | awk -F' *= *' '$1 == "SLURM_VERSION" { print $2 }'), $(nproc) CPUs, medians of $REPS"
    echo
    cat "$WORK/table"
} | tee "$out"
