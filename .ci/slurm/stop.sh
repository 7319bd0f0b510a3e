#!/usr/bin/env bash
# .ci/slurm/stop.sh - stop the daemons that .ci/slurm/start.sh started.
#
# Only processes named by pid files under $RUN are signalled, and only while the process
# name still matches the file's name (no pkill, no killall): a munged or mariadb that was
# already running before start.sh has no pid file there and is left alone.
#
#   stop.sh                   cancel all jobs, then stop everything start.sh started
#   stop.sh slurmctld ...     stop only the named daemons (start.sh uses this to restart)
#   SLURM_CI_CANCEL_JOBS=0    do not scancel queued/running jobs first
#
# Each daemon gets SIGTERM, then SIGKILL if it is still alive after 30 s.
set -euo pipefail
trap '' PIPE # a closed log pipe must not kill us half-way

RUN=/run/orchestrator-slurm
CANCEL=${SLURM_CI_CANCEL_JOBS:-1}
# Clients before servers: slurmd and slurmctld still talk to slurmdbd, which needs mariadb,
# and every daemon authenticates through munged.
ORDER=(slurmd slurmctld slurmdbd mariadbd munged)

T0=$EPOCHREALTIME
log() { printf '[ci-slurm stop +%5.2fs] %s\n' "$(awk -v a="$EPOCHREALTIME" -v b="$T0" 'BEGIN { printf "%.2f", a - b }')" "$*" >&2; }
# running PID: the process exists and is not a zombie. pid 1 in these containers reaps late,
# so a daemon that has exited can linger as a zombie (state Z) for a while: that is dead.
running() { [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# pid_of NAME: print the pid in $RUN/NAME.pid if that process is running and named NAME
pid_of() {
    local f=$RUN/$1.pid pid
    [ -s "$f" ] || return 1
    pid=$(<"$f")
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && running "$pid" && echo "$pid"
}

stop_one() {
    local name=$1 pid _
    if ! pid=$(pid_of "$name"); then
        if [ -e "$RUN/$name.pid" ]; then log "$name: not running (stale pid file removed)"; fi
        rm -f "$RUN/$name.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do # up to 30 s
        running "$pid" || break
        sleep 0.1
    done
    if running "$pid"; then
        log "$name (pid $pid) ignored SIGTERM for 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            running "$pid" || break
            sleep 0.1
        done
    fi
    rm -f "$RUN/$name.pid"
    log "$name stopped (pid $pid)"
}

if [ ! -d "$RUN" ]; then
    log "nothing to stop ($RUN absent)"
    exit 0
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=("${ORDER[@]}"); fi
for t in "${targets[@]}"; do
    [[ " ${ORDER[*]} " == *" $t "* ]] || {
        log "unknown daemon '$t' (known: ${ORDER[*]})"
        exit 2
    }
done

# Cancel jobs first, while slurmctld and slurmd still run, so that no slurmstepd or job
# process outlives the cluster.
if [ "$CANCEL" = 1 ] && pid_of slurmctld >/dev/null && [[ " ${targets[*]} " == *" slurmctld "* || " ${targets[*]} " == *" slurmd "* ]]; then
    mapfile -t ids < <(squeue -h -o %A 2>/dev/null | sort -u)
    if [ ${#ids[@]} -gt 0 ]; then
        log "cancelling jobs: ${ids[*]}"
        scancel "${ids[@]}" 2>/dev/null || true
        for _ in $(seq 75); do # up to 15 s for them to leave the node
            [ -z "$(squeue -h -t R,CG,S 2>/dev/null || true)" ] && break
            sleep 0.2
        done
    fi
fi

for name in "${ORDER[@]}"; do
    if [[ " ${targets[*]} " == *" $name "* ]]; then stop_one "$name"; fi
done
exit 0
