#!/usr/bin/env bash
# .ci/slurm/start.sh - a real one-node Slurm cluster on 127.0.0.1, for the Slurm backend's tests.
#
# Run as root on Debian 12 (Slurm 22.05 from Debian's apt); needs no systemd. Idempotent:
# installs the missing packages, (re)writes the config files it owns, starts only the daemons
# that are not running, and waits until the node is idle. When everything is already up and
# the config is unchanged it only checks, in well under a second, and changes nothing.
#
# Knobs (environment):
#   SLURM_CI_ACCOUNTING=1   1: mariadb + slurmdbd, so `sacct` works.
#                           0: AccountingStorageType=accounting_storage/none, no slurmdbd;
#                              `sacct` then prints "Slurm accounting storage is disabled".
#                           Changing it on a running cluster restarts slurmctld and slurmd with the
#                           new config (jobs survive: their state is in StateSaveLocation and
#                           their processes under slurmstepd), and stops/starts slurmdbd+mariadb.
#   SLURM_CI_MEMKILL=0      1: JobAcctGatherParams=OverMemoryKill: a job whose RSS (sampled every
#                           10 s) exceeds its --mem is killed (state FAILED, ExitCode 0:9). 0: memory
#                           is not enforced at all (task/none, no cgroups). Never OUT_OF_MEMORY here.
#   SLURM_CI_TIMEOUT=60     seconds to wait for each daemon and for the idle node
#   SLURM_CI_FORCE=0        1: overwrite an /etc/slurm/slurm.conf this script did not write
#
# Stop with .ci/slurm/stop.sh: it stops only what this script started (pid files in $RUN).
# Adapted from the reference scripts the project was given (start-local-slurm.sh), without REST.
set -euo pipefail
trap '' PIPE # a closed log pipe (start.sh | head) must not kill us half-way

ACCOUNTING=${SLURM_CI_ACCOUNTING:-1}
TIMEOUT=${SLURM_CI_TIMEOUT:-60}
FORCE=${SLURM_CI_FORCE:-0}
MEMKILL=${SLURM_CI_MEMKILL:-0}
for knob in "SLURM_CI_ACCOUNTING=$ACCOUNTING" "SLURM_CI_MEMKILL=$MEMKILL"; do
    case "${knob#*=}" in 0 | 1) ;; *)
        echo "${knob%%=*} must be 0 or 1, not '${knob#*=}'" >&2
        exit 2
        ;;
    esac
done

RUN=/run/orchestrator-slurm # our pid files: what stop.sh may stop
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
MARK="# managed-by: orchestrator .ci/slurm/start.sh"
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGDIR=/var/log/slurm
DB_SOCK=/run/mysqld/mysqld.sock
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T0=$EPOCHREALTIME

log() { printf '[ci-slurm +%5.2fs] %s\n' "$(bc_sub "$EPOCHREALTIME" "$T0")" "$*" >&2; }
bc_sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }
die() {
    log "ERROR: $*"
    exit 1
}
# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds
wait_for() {
    local limit=$1 what=$2 end
    shift 2
    end=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || die "timed out after ${limit}s waiting for $what"
        sleep 0.2
    done
}
# alive NAME: $RUN/NAME.pid names a live process whose comm is NAME. A dead daemon can stay
# a zombie for a while (pid 1 here reaps late), so state Z counts as dead.
alive() {
    local f=$RUN/$1.pid pid
    [ -s "$f" ] || return 1
    pid=$(<"$f")
    [ -r "/proc/$pid/comm" ] && [ "$(<"/proc/$pid/comm")" = "$1" ] &&
        [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
pkg_installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

[ "$(id -u)" = 0 ] || die "run as root"

# ---------------------------------------------------------------- install
pkgs=(munge slurm-client slurmctld slurmd)
if [ "$ACCOUNTING" = 1 ]; then pkgs+=(slurmdbd mariadb-server); fi
missing=()
for p in "${pkgs[@]}"; do pkg_installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    # Keep the packages' init scripts from starting daemons during the install: we start
    # them ourselves, with our config, and record their pids.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "installed"
fi

# ---------------------------------------------------------------- layout
install -d -m 0755 -o slurm -g slurm "$RUN" "$STATE" "$LOGDIR"
install -d -m 0755 "$SPOOL" /etc/slurm
install -d -m 0755 -o munge -g munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi

# ---------------------------------------------------------------- config
NODE=$(hostname -s)
# What slurmd itself detects, e.g. "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"
detected=$(slurmd -C | head -1)
CPUS=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$detected")
MEM=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
if [ -z "$CPUS" ] || [ -z "$MEM" ]; then die "could not parse 'slurmd -C': $detected"; fi
# Declare less than detected, or a small fluctuation drains the node as "Low RealMemory".
MEM=$((MEM * 90 / 100))
# Without DefMemPerCPU a job asks for the whole node's memory by default, and with
# CR_Core_Memory that runs jobs one at a time.
DEFMEM=$((MEM / CPUS < 1024 ? MEM / CPUS : 1024))

if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF" && [ "$FORCE" != 1 ]; then
    die "$CONF exists and was not written by this script (set SLURM_CI_FORCE=1 to overwrite)"
fi

new=$(mktemp)
{
    echo "$MARK (rewritten on every start; edits are lost)"
    cat <<CONF
ClusterName=local
# The node name is the short hostname, reached at 127.0.0.1 whether or not the name resolves.
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
# No cgroups and no systemd here: plain /proc process tracking, no CPU or memory confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEFMEM
SchedulerType=sched/backfill
# The default batch_sched_delay=3 launches queued batch jobs in 3 s waves; tests want them at once.
SchedulerParameters=batch_sched_delay=0
# Finished jobs stay visible to scontrol for 10 minutes.
MinJobAge=600
ReturnToService=2
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
CONF
    if [ "$ACCOUNTING" = 1 ]; then
        cat <<CONF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
CONF
    else
        echo "AccountingStorageType=accounting_storage/none"
    fi
    # Sampling the jobs' processes feeds sacct's MaxRSS etc., and is what OverMemoryKill uses.
    if [ "$ACCOUNTING" = 1 ] || [ "$MEMKILL" = 1 ]; then
        echo "JobAcctGatherType=jobacct_gather/linux"
        echo "JobAcctGatherFrequency=10"
    else
        echo "JobAcctGatherType=jobacct_gather/none"
    fi
    if [ "$MEMKILL" = 1 ]; then echo "JobAcctGatherParams=OverMemoryKill"; fi
    cat <<CONF
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
} >"$new"

changed=0
if ! cmp -s "$new" "$CONF"; then
    changed=1
    install -m 0644 "$new" "$CONF"
fi
rm -f "$new"

if [ "$ACCOUNTING" = 1 ]; then
    new=$(mktemp)
    {
        echo "$MARK"
        cat <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=slurm_acct_db
CONF
    } >"$new"
    if ! cmp -s "$new" "$DBDCONF"; then
        changed=1
        install -m 0600 -o slurm -g slurm "$new" "$DBDCONF"
    fi
    rm -f "$new"
fi

# A running daemon keeps the config it read at start: restart what runs so that the new
# config (e.g. accounting switched on or off) takes effect. Jobs are not cancelled.
if [ "$changed" = 1 ]; then
    restart=()
    for d in slurmd slurmctld slurmdbd; do
        if alive "$d"; then restart+=("$d"); fi
    done
    # Without accounting, slurmdbd and its database have no reason to run.
    if [ "$ACCOUNTING" = 0 ] && alive mariadbd; then restart+=(mariadbd); fi
    if [ ${#restart[@]} -gt 0 ]; then
        log "config changed: stopping ${restart[*]} to restart with it"
        SLURM_CI_CANCEL_JOBS=0 "$HERE/stop.sh" "${restart[@]}"
    fi
fi

# ---------------------------------------------------------------- munged
munge_ok() { munge -n | unmunge; }
if munge_ok >/dev/null 2>&1; then
    log "munged already answering"
else
    # --force: take over a stale socket left by a munged that died
    runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid
    wait_for "$TIMEOUT" munged munge_ok
    cp /run/munge/munged.pid "$RUN/munged.pid" # marks it as ours for stop.sh
    log "munged started (pid $(<"$RUN/munged.pid"))"
fi

# ---------------------------------------------------------------- mariadb + slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
    db_ok() { mariadb-admin --socket="$DB_SOCK" ping; }
    # Checked even when slurmdbd runs (a 12 ms ping): slurmdbd without its database is no use.
    if db_ok >/dev/null 2>&1; then
        log "mariadb already answering"
    else
        install -d -m 0755 -o mysql -g mysql /run/mysqld
        if [ ! -d /var/lib/mysql/mysql ]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql \
                --auth-root-authentication-method=socket >/dev/null
        fi
        # No networking: slurmdbd talks to it over the unix socket.
        nohup /usr/sbin/mariadbd --user=mysql --skip-networking --socket="$DB_SOCK" \
            --pid-file=/run/mysqld/mysqld.pid --innodb-lock-wait-timeout=900 \
            >>"$LOGDIR/mariadb.log" 2>&1 </dev/null &
        echo $! >"$RUN/mariadbd.pid"
        wait_for "$TIMEOUT" mariadb db_ok
        log "mariadb started (pid $(<"$RUN/mariadbd.pid"))"
    fi
    if alive slurmdbd; then
        # A running slurmdbd means an earlier run set up its database and user.
        log "slurmdbd already running"
    else
        # slurmdbd runs as SlurmUser=slurm and logs in by unix socket as that user.
        mariadb --socket="$DB_SOCK" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
        slurmdbd # daemonizes and writes $RUN/slurmdbd.pid
        wait_for "$TIMEOUT" slurmdbd sacctmgr -n list cluster
        # slurmctld registers the cluster itself on first contact; this makes it explicit.
        if [[ " $(sacctmgr -n -P list cluster format=cluster) " != *" local "* ]]; then
            sacctmgr -i add cluster local >/dev/null
        fi
        log "slurmdbd started (pid $(<"$RUN/slurmdbd.pid"))"
    fi
fi

# ---------------------------------------------------------------- slurmctld + slurmd
if alive slurmctld; then
    log "slurmctld already running"
else
    slurmctld # daemonizes; the pid file is SlurmctldPidFile
    wait_for "$TIMEOUT" slurmctld scontrol ping
    log "slurmctld started (pid $(<"$RUN/slurmctld.pid"))"
fi
if alive slurmd; then
    log "slurmd already running"
else
    slurmd -N "$NODE"
    wait_for "$TIMEOUT" slurmd alive slurmd
    log "slurmd started (pid $(<"$RUN/slurmd.pid"))"
fi

node_state() { sinfo -h -n "$NODE" -o %T; }
node_ready() { case "$(node_state)" in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac }
end=$(($(date +%s) + TIMEOUT))
resumed=0
until node_ready 2>/dev/null; do
    st=$(node_state 2>/dev/null || true)
    # A node left down/drained by an earlier run (e.g. killed slurmd) is resumed once.
    if [ "$resumed" = 0 ] && [[ "$st" == drain* || "$st" == down* ]]; then
        scontrol update nodename="$NODE" state=resume || true
        resumed=1
    fi
    [ "$(date +%s)" -lt "$end" ] || die "node $NODE not idle after ${TIMEOUT}s (state: ${st:-?}); see $LOGDIR"
    sleep 0.2
done
log "ready: partition debug, node $NODE is $(node_state) ($CPUS CPUs, $MEM MB), accounting=$ACCOUNTING, memkill=$MEMKILL"
