#!/usr/bin/env bash
# ab.sh OLD NEW: two orchestrator binaries, same sweep, interleaved, in one run.
#
# N jobs of `true` (2 slots), each binary REPS times, alternating (old, new, old, new...),
# with the sweep's tree on tmpfs (/dev/shm) so that inode creation does not drown the
# difference. Reports, per binary, the median wall time and the median CPU time (user + sys
# of orchestrator and every job, from GNU time) per job, and new/old ratios. Information,
# never a pass/fail test: use it to check that a change costs nothing per job.
#
# Environment: N=2000, REPS=9, SHM=/dev/shm.
set -euo pipefail
export LC_ALL=C
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
OLD=$1 NEW=$2
N=${N:-2000}
REPS=${REPS:-9}
SHM=${SHM:-/dev/shm}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "$SHM/ab-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 2; }

run_one() { # binary tag rep -> "wall cpu"
    local dir="$WORK/$2-$3"
    /usr/bin/time -f "%e %U %S" -o "$WORK/t" "$1" run -q --no-progress -c "$REPO/config/joblib.yaml" -m \
        "task=1..$N" hydra.launcher.params.joblib.n_jobs=2 "hydra.sweep.dir=$dir" -- true >/dev/null 2>&1
    [ "$(wc -l <"$dir/jobs.jsonl")" -eq "$N" ] || { echo "$2: $dir/jobs.jsonl does not hold $N jobs" >&2; exit 1; }
    rm -rf "$dir"
    awk '{printf "%s %.3f\n", $1, $2 + $3}' "$WORK/t"
}

run_one "$OLD" warm 0 >/dev/null
run_one "$NEW" warm 0 >/dev/null
: >"$WORK/old" && : >"$WORK/new"
for rep in $(seq "$REPS"); do
    run_one "$OLD" old "$rep" >>"$WORK/old"
    run_one "$NEW" new "$rep" >>"$WORK/new"
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ow=$(cut -d' ' -f1 "$WORK/old" | median) oc=$(cut -d' ' -f2 "$WORK/old" | median)
nw=$(cut -d' ' -f1 "$WORK/new" | median) nc=$(cut -d' ' -f2 "$WORK/new" | median)
printf '| binary | median wall (s) | median CPU (s) | CPU per job (ms) |\n|---|---:|---:|---:|\n'
awk -v w="$ow" -v c="$oc" -v n="$N" 'BEGIN {printf "| old | %.3f | %.3f | %.3f |\n", w, c, c * 1000 / n}'
awk -v w="$nw" -v c="$nc" -v n="$N" 'BEGIN {printf "| new | %.3f | %.3f | %.3f |\n", w, c, c * 1000 / n}'
awk -v ow="$ow" -v oc="$oc" -v nw="$nw" -v nc="$nc" 'BEGIN {printf "\nnew/old: wall %.3fx, CPU %.3fx (%d jobs, %d interleaved runs each)\n", nw / ow, nc / oc, '"$N"', '"$REPS"'}'
echo "runs (wall cpu): old: $(tr '\n' ' ' <"$WORK/old")"
echo "runs (wall cpu): new: $(tr '\n' ' ' <"$WORK/new")"
