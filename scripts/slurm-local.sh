#!/usr/bin/env bash
# A one-node Slurm cluster on 127.0.0.1 for tests and for trying `tyr run --executor slurm`
# on one machine, without systemd: munged, slurmctld and slurmd are started by hand, as root,
# with a configuration and state in a folder this script owns.
#
#   scripts/slurm-local.sh up      # start (idempotent); prints the SLURM_CONF to export
#   scripts/slurm-local.sh down    # stop the daemons this script started, by their PIDs
#   scripts/slurm-local.sh status  # sinfo against the local cluster
#
# TYR_SLURM_DIR (default /tmp/tyr-slurm) holds slurm.conf, state, logs and the PIDs. Slurm's
# commands find the cluster through SLURM_CONF=$TYR_SLURM_DIR/slurm.conf.
#
# Needs the Debian packages slurmctld, slurmd, slurm-client and munge (22.05). The settings the
# tests rely on: ProctrackType=proctrack/linuxproc and TaskPlugin=task/none (no cgroups or
# systemd needed), cons_tres with CR_Core_Memory and DefMemPerCPU so that small jobs run side by
# side, and no accounting database (sacct is then unavailable; tyr falls back to its own exit
# records and scontrol).
set -euo pipefail

DIR=${TYR_SLURM_DIR:-/tmp/tyr-slurm}
CONF=$DIR/slurm.conf
NODE=tyrnode

log() { echo "slurm-local: $*" >&2; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
    local cpus mem_mib real def
    cpus=$(nproc)
    mem_mib=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    # Leave room for the OS and the coordinator; jobs share the rest.
    real=$((mem_mib * 3 / 4))
    def=$((real / cpus / 2))
    mkdir -p "$DIR/ctld" "$DIR/spool" "$DIR/log"
    cat >"$CONF" <<EOF
ClusterName=tyrlocal
SlurmctldHost=$(hostname -s)(127.0.0.1)
MailProg=/bin/true
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=600
KillWait=10
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$(hostname -s) CPUs=$cpus RealMemory=$real State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if pgrep -x munged >/dev/null 2>&1; then
        log "munged already running; using it"
        return
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
        fi
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 0700 /etc/munge
    chmod 0600 /etc/munge/munge.key
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged
    else
        munged --force
    fi
    # munged forks; its pid file is its own.
    for _ in $(seq 50); do
        [ -S /run/munge/munge.socket.2 ] && break
        sleep 0.1
    done
    cp /run/munge/munged.pid "$DIR/munged.pid"
    log "munged started (pid $(cat "$DIR/munged.pid"))"
}

up() {
    command -v slurmctld >/dev/null || { log "slurmctld not installed"; exit 1; }
    mkdir -p "$DIR"
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
        log "already up"
    else
        write_conf
        start_munge
        export SLURM_CONF=$CONF
        alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
        alive "$DIR/slurmd.pid" || slurmd -f "$CONF" -N "$NODE"
    fi
    export SLURM_CONF=$CONF
    # Wait until the node takes jobs.
    for _ in $(seq 60); do
        state=$(timeout 5 sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)
        case "$state" in
        idle* | mixed* | allocated*) break ;;
        down* | drain*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    state=$(timeout 5 sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)
    case "$state" in
    idle* | mixed* | allocated*) ;;
    *)
        log "node is not up (state '${state:-none}'); logs in $DIR/log"
        tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
        exit 1
        ;;
    esac
    log "up: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
    echo "export SLURM_CONF=$CONF"
}

stop_pid() {
    local name=$1 file=$2
    if alive "$file"; then
        local pid
        pid=$(cat "$file")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        log "stopped $name (pid $pid)"
    fi
    rm -f "$file"
}

down() {
    # Jobs first, so no step outlives its slurmd.
    if [ -f "$CONF" ] && alive "$DIR/slurmctld.pid"; then
        SLURM_CONF=$CONF scancel --user=root 2>/dev/null || true
    fi
    stop_pid slurmd "$DIR/slurmd.pid"
    stop_pid slurmctld "$DIR/slurmctld.pid"
    # Only the munged this script started.
    stop_pid munged "$DIR/munged.pid"
}

case "${1:-}" in
up) up ;;
down) down ;;
status) SLURM_CONF=$CONF sinfo ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
