#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the sweep tests (tests/test_sweep_slurm.py).
#
#   .ci/slurm.sh start   install slurm-wlm + munge when missing (Debian), write a slurm.conf for
#                        this host under $QMRI_SLURM_DIR, start munged, slurmctld and slurmd, wait
#                        until the node is idle; prints the `export SLURM_CONF=...` line to use
#   .ci/slurm.sh stop    stop the three daemons started by `start`
#
# Needs root (the daemons, apt-get). No cgroups: proctrack/linuxproc, task/none, so it also runs in
# containers. No accounting database: squeue/scontrol work, sacct does not (qmri_jax.sweep does not
# need it).
set -euo pipefail
DIR="${QMRI_SLURM_DIR:-/tmp/qmri_slurm}"
CONF="$DIR/slurm.conf"

start() {
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        echo "installing slurm-wlm and munge (Debian packages)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || {
            apt-get update -q >/dev/null 2>&1 && apt-get install -y -q slurm-wlm munge >/dev/null; }
    fi
    mkdir -p "$DIR"/{state,spool,log} /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || runuser -u munge -- munged --force || munged --force
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    cat > "$CONF" <<EOF
ClusterName=qmri
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
ReturnToService=2
KillWait=30
MinJobAge=600
SchedulerParameters=batch_sched_delay=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    export SLURM_CONF="$CONF"
    pgrep -x slurmctld >/dev/null || slurmctld -f "$CONF"
    pgrep -x slurmd >/dev/null || slurmd -f "$CONF"
    for _ in $(seq 60); do
        if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        sleep 1
    done
    echo "slurm did not come up; logs in $DIR/log" >&2
    sinfo >&2 || true
    return 1
}

stop() {
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
