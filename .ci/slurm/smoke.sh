#!/usr/bin/env bash
# .ci/slurm/smoke.sh - a short check that the cluster from .ci/slurm/start.sh runs what the
# Slurm backend relies on: sbatch --array with a %throttle, sbatch --wait, exit codes, scancel,
# squeue, and sacct (or, without accounting, sacct's refusal).
# Prints "N passed, M failed" and exits non-zero if anything failed. About 15 s.
#
# No `set -e`: a failed check is counted and reported, it must not end the script.
set -uo pipefail
W=$(mktemp -d -t slurm-smoke.XXXXXX)
chmod 0755 "$W"
cd "$W" || exit 1
pass=0 fail=0
ok() {
    echo "ok   - $*"
    pass=$((pass + 1))
}
bad() {
    echo "FAIL - $*"
    fail=$((fail + 1))
}
# check DESCRIPTION COMMAND...: the check passes if COMMAND succeeds
check() {
    local d=$1
    shift
    if "$@"; then ok "$d"; else bad "$d"; fi
}
# gone JOBID [SECONDS]: wait until no task of the job is pending, running or completing
gone() {
    local _
    for _ in $(seq $((${2:-30} * 5))); do
        [ -z "$(squeue -h -t PD,R,CG,S -j "$1" 2>/dev/null)" ] && return 0
        sleep 0.2
    done
    return 1
}
# field JOBID NAME: a field of `scontrol show job` (first task's, for an array)
field() { scontrol show job "$1" 2>/dev/null | grep -o " $2=[^ ]*" | head -1 | cut -d= -f2; }

check "node is idle" test "$(sinfo -h -o %T)" = idle

# --- array with a throttle: 6 tasks, at most 1 at a time (the node has 2 CPUs, so %2 would
# not show whether the throttle works); each records its start and end.
# shellcheck disable=SC2016 # expanded by the job's shell, not here
a=$(sbatch --parsable --array=0-5%1 --output="$W/arr-%A_%a.out" \
    --wrap 'echo "start $(date +%s.%N)"; echo "id $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT"; sleep 0.5; [ "$SLURM_ARRAY_TASK_ID" = 3 ] && exit 4; echo "end $(date +%s.%N)"')
check "sbatch --parsable prints a bare job id" test -n "${a}" -a -z "${a//[0-9]/}"
sleep 0.3
check "squeue -h -r -o '%i|%T' lists the array's tasks" \
    bash -c "squeue -h -r -j $a -o '%i|%T' | grep -Eq '^${a}_[0-9]+\|(RUNNING|PENDING)$'"
gone "$a" 60
n=0
for t in 0 1 2 3 4 5; do grep -qx "id $a $t 6" "$W/arr-${a}_$t.out" 2>/dev/null && n=$((n + 1)); done
check "array 0-5%1: 6 tasks saw their SLURM_ARRAY_* variables" test "$n" = 6
# Throttle: at each task's start, count the tasks running (start <= s < end); never above 1.
max=$(cat "$W"/arr-"$a"_*.out | awk '
    /^start/ { s[++n] = $2 } /^end/ { e[n] = $2 }
    END { m = 0; for (i = 1; i <= n; i++) { c = 0
            for (j = 1; j <= n; j++) if (s[j] <= s[i] && (e[j] == "" ? s[j] + 0.5 : e[j]) > s[i]) c++
            if (c > m) m = c }
          print m }')
check "array %1 throttle: one task at a time (saw $max)" test "$max" = 1
check "failed task: FAILED ExitCode=4:0" test "$(field "${a}_3" JobState) $(field "${a}_3" ExitCode)" = "FAILED 4:0"
check "succeeded task: COMPLETED ExitCode=0:0" test "$(field "${a}_0" JobState) $(field "${a}_0" ExitCode)" = "COMPLETED 0:0"

# --- sbatch --wait returns the job's exit code
sbatch --wait --output=/dev/null --wrap 'exit 3' >/dev/null 2>&1
rc=$?
check "sbatch --wait returns the job's exit code (3, got $rc)" test "$rc" = 3
sbatch --wait --output=/dev/null --wrap 'true' >/dev/null 2>&1
rc=$?
check "sbatch --wait returns 0 for a job that succeeded (got $rc)" test "$rc" = 0

# --- scancel of a running array
c=$(sbatch --parsable --array=0-3 --output=/dev/null --wrap 'sleep 300')
for _ in $(seq 50); do [ "$(field "${c}_0" JobState)" = RUNNING ] && break; sleep 0.2; done
scancel "$c"
check "scancel: the array leaves the queue within 15 s" gone "$c" 15
check "scancel: tasks are CANCELLED" test "$(field "${c}_0" JobState)" = CANCELLED

# --- accounting: sacct sees the array's tasks, or says accounting is disabled
# (not `scontrol ... | grep -q`: grep's early exit would fail the pipeline under pipefail)
if [[ "$(scontrol show config)" == *accounting_storage/slurmdbd* ]]; then
    got=""
    for _ in $(seq 50); do
        got=$(sacct -n -X -P -j "$a" -o JobID,State,ExitCode 2>/dev/null | sort | tr '\n' ' ')
        [[ "$got" == *"${a}_5|COMPLETED|0:0"* && "$got" == *"${a}_3|FAILED|4:0"* ]] && break
        sleep 0.2
    done
    check "sacct: array tasks with states and exit codes" test "$(wc -w <<<"$got")" = 6 -a -z "${got##*"${a}_3|FAILED|4:0"*}"
    # Right after scancel sacct can show one transient record for the whole array
    # ("<id>|CANCELLED by 0") before the per-task records: retry for a while.
    for _ in $(seq 50); do
        got=$(sacct -n -X -P -j "$c" -o JobID,State 2>/dev/null | sort | tr '\n' ' ')
        [[ "$got" == *"${c}_0|CANCELLED"* ]] && break
        sleep 0.2
    done
    check "sacct: cancelled tasks are CANCELLED" test -z "${got##*"${c}_0|CANCELLED"*}"
else
    out=$(sacct -n -X -P -j "$a" 2>&1)
    check "sacct without accounting says it is disabled" test "$out" = "Slurm accounting storage is disabled"
fi

echo "$pass passed, $fail failed"
if [ "$fail" = 0 ]; then rm -rf "$W"; else echo "outputs kept in $W"; fi
[ "$fail" = 0 ]
