#!/usr/bin/env bash
# A single-node Slurm cluster (munged, slurmctld, slurmd from the Debian packages) for tests
# and for trying slurm/train.sbatch on one machine. Needs root (the daemons and the Epilog run
# as root).
#
#   slurm/cluster.sh start    install the packages if missing, write the config, start the
#                             daemons; exits 0 at once if this cluster already answers
#   slurm/cluster.sh stop     cancel this cluster's jobs, stop the daemons it started
#   slurm/cluster.sh status   say what runs; exit 0 only if this cluster answers
#   slurm/cluster.sh env      print `export SLURM_CONF=...` (eval it before sbatch/srun)
#
# Everything lives under one base directory: TIERPOINT_SLURM_BASE, default
# ${TMPDIR:-/tmp}/tierpoint-slurm. The config is $BASE/slurm.conf, not /etc/slurm/slurm.conf:
# clients find it through SLURM_CONF, so a cluster some other tool configured in /etc/slurm
# keeps its config. The daemons listen on their own ports (TIERPOINT_SLURM_PORT, default 6917,
# and the next one for slurmd) so that they do not collide with a cluster on Slurm's default
# ports. `stop` only signals the processes whose ids this script recorded in $BASE/run; a
# munged that was already running is used, never stopped.
#
# Other settings: TIERPOINT_SLURM_CPUS, the CPUs the node declares (default: the larger of 4
# and the real count, so that a 4-rank job fits on a 2-core machine without --overcommit; the
# extra CPUs are virtual). Slurm's Epilog= runs $BASE/epilog, a wrapper that reads
# $BASE/epilog.env (shell assignments, if the file exists) and then runs slurm/epilogue.sh
# from this checkout; set TIERPOINT_LOCAL_ROOT, TIERPOINT_PERSISTENT, TIERPOINT_BIN,
# TIERPOINT_PYTHON and TIERPOINT_EPILOG_LOG there (see slurm/epilogue.sh).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=${TIERPOINT_SLURM_BASE:-${TMPDIR:-/tmp}/tierpoint-slurm}
CONF=$BASE/slurm.conf
RUN=$BASE/run
PORT=${TIERPOINT_SLURM_PORT:-6917}
NODE=$(hostname -s)
REAL_CPUS=$(nproc)
CPUS=${TIERPOINT_SLURM_CPUS:-$(( REAL_CPUS > 4 ? REAL_CPUS : 4 ))}
export SLURM_CONF=$CONF   # every Slurm command below talks to this cluster only

say() { echo "cluster.sh: $*"; }
starting=0
die() {
    echo "cluster.sh: $*" >&2
    # A start that failed half-way stops what it started: nothing is left running for
    # nobody to stop.
    if [[ $starting == 1 ]]; then starting=0; stop_ours >&2; fi
    exit 1
}

# A pid file names one of our processes only if that process still runs the program we
# started (a recycled pid must never be signalled).
our_pid() {  # our_pid NAME -> prints the pid if $RUN/NAME.pid names a live NAME process
    local file=$RUN/$1.pid pid
    [[ -s $file ]] || return 1
    pid=$(cat "$file")
    [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] || return 1
    echo "$pid"
}

cluster_answers() {
    our_pid slurmctld >/dev/null && our_pid slurmd >/dev/null || return 1
    scontrol ping 2>/dev/null | grep -q 'is UP' || return 1
    sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}

munge_answers() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# Slurm daemons running on this machine that this script did not start (another cluster):
# reported, left alone.
foreign_daemons() {
    local mine=" $(our_pid slurmctld || true) $(our_pid slurmd || true) " pid
    local dir comm state
    # From /proc, not ps: a bare image may lack procps. Zombies (a daemon's exited first
    # fork, not yet reaped) run nothing and are skipped.
    for dir in /proc/[0-9]*; do
        comm=$(cat "$dir/comm" 2>/dev/null) || continue
        [[ $comm == slurmctld || $comm == slurmd ]] || continue
        pid=${dir#/proc/}
        state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "$dir/status" 2>/dev/null)
        [[ $state == Z || $mine == *" $pid "* ]] || echo "$pid ($comm)"
    done
}

stop_ours() {
    if our_pid slurmctld >/dev/null; then
        # Jobs of this cluster would otherwise outlive slurmd (slurmstepd runs on its own);
        # completing ones are let finish their Epilog.
        local jobs
        jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED -o %A 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            say "cancelling this cluster's jobs: $(echo $jobs)"
            scancel --full $jobs 2>/dev/null || true
        fi
        for _ in $(seq 300); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.1; done
    fi
    local name pid
    for name in slurmd slurmctld munged; do
        if pid=$(our_pid "$name"); then
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                say "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
                kill -9 "$pid" 2>/dev/null || true
            fi
            say "stopped $name (pid $pid)"
        fi
        rm -f "$RUN/$name.pid"
    done
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them (this script knows Debian/Ubuntu packages only)"
    say "installing ${missing[*]} with apt-get"
    # An image without package lists cannot install anything: fetch them once.
    if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -print -quit 2>/dev/null) ]]; then
        apt-get update -qq || die "apt-get update failed"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null || die "apt-get install ${missing[*]} failed"
}

write_config() {
    mkdir -p "$BASE" "$BASE/state" "$BASE/spool" "$BASE/log" "$RUN"
    chmod 755 "$BASE" "$BASE/state" "$BASE/spool" "$BASE/log" "$RUN"
    local mem
    mem=$(( $(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    # The Epilog wrapper: slurmd runs it as root with a bare environment (no PATH, none of
    # the job's variables), so it sets PATH and reads the tierpoint settings from a file that
    # tests and users can rewrite between jobs.
    cat > "$BASE/epilog" <<EOF
#!/bin/bash
# Written by $HERE/cluster.sh; Slurm runs it after every job (Epilog=).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export TIERPOINT_EPILOG_LOG=$BASE/log/tierpoint-epilog.log
if [ -f "$BASE/epilog.env" ]; then
    set -a
    . "$BASE/epilog.env"
    set +a
fi
exec /bin/bash "$HERE/epilogue.sh"
EOF
    chmod 755 "$BASE/epilog"
    local overrides=""
    (( CPUS > REAL_CPUS )) && overrides="SlurmdParameters=config_overrides"
    cat > "$CONF" <<EOF
# Written by $HERE/cluster.sh start; rewritten on every start.
ClusterName=tierpoint
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups on a test machine: track processes by parentage, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# srun --mpi=pmi2 is what the mpich wheel's mpi4py speaks.
MpiDefault=pmi2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Reject a request the node can never satisfy at submit time instead of pending forever.
EnforcePartLimits=ALL
# The node declares $CPUS CPUs on $REAL_CPUS real ones (virtual when more): trust the config.
$overrides
# Schedule quickly; finished jobs stay visible to scontrol for MinJobAge s (no accounting).
SchedulerParameters=sched_interval=1,bf_interval=1
MessageTimeout=10
KillWait=5
InactiveLimit=0
MailProg=/bin/true
MinJobAge=600
Epilog=$BASE/epilog
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if munge_answers; then
        # Another service's munged (or the system's): use it, and leave it alone at stop.
        our_pid munged >/dev/null || say "using the munged that already runs (not started here; stop leaves it alone)"
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        mungekey --create
        chown munge:munge /etc/munge/munge.key
        chmod 600 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    rm -f /run/munge/munged.pid
    # --force: start even when a stale socket of a dead munged is left in /run/munge.
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
    [[ -s /run/munge/munged.pid ]] || die "munged did not write /run/munge/munged.pid"
    cp /run/munge/munged.pid "$RUN/munged.pid"
    munge_answers || die "munged (pid $(cat "$RUN/munged.pid")) started but does not answer"
    say "started munged (pid $(cat "$RUN/munged.pid"))"
}

log_tail() { tail -n 15 "$BASE/log/$1.log" 2>/dev/null | sed 's/^/  | /' >&2 || true; }

start() {
    [[ $(id -u) -eq 0 ]] || die "needs root (the Slurm daemons and the Epilog run as root)"
    if cluster_answers; then
        say "already up (slurmctld pid $(our_pid slurmctld), slurmd pid $(our_pid slurmd)); config $CONF"
        return 0
    fi
    local others
    others=$(foreign_daemons)
    if [[ -n $others ]]; then
        say "note: Slurm daemons not started by this script run here: $(echo $others);" \
            "left alone. This cluster uses its own config ($CONF) and ports $PORT/$((PORT + 1))."
    fi
    stop_ours   # a half-started or crashed earlier start of this cluster
    starting=1
    install_packages
    write_config
    start_munge
    # -c: forget the jobs of an earlier run of this cluster; -i: ignore state it cannot read.
    slurmctld -f "$CONF" -c -i || { log_tail slurmctld; die "slurmctld failed to start"; }
    for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
    scontrol ping 2>/dev/null | grep -q 'is UP' || { log_tail slurmctld; die "slurmctld does not answer on port $PORT"; }
    slurmd -f "$CONF" || { log_tail slurmd; die "slurmd failed to start"; }
    for _ in $(seq 200); do
        sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
        sleep 0.1
    done
    if ! sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        sinfo -N -l >&2 || true
        log_tail slurmd
        die "node $NODE did not become idle within 20 s"
    fi
    starting=0
    say "up: slurmctld pid $(our_pid slurmctld), slurmd pid $(our_pid slurmd), node $NODE with $CPUS CPUs ($REAL_CPUS real), config $CONF"
    say "clients need: export SLURM_CONF=$CONF"
}

status() {
    local name pid rc=0
    for name in munged slurmctld slurmd; do
        if pid=$(our_pid "$name"); then say "$name: running, pid $pid"
        else say "$name: not running from this script"; fi
    done
    local others
    others=$(foreign_daemons)
    [[ -z $others ]] || say "other Slurm daemons (not started here): $(echo $others)"
    if cluster_answers; then say "cluster answers (SLURM_CONF=$CONF)"; sinfo -N
    else say "cluster does not answer"; rc=1; fi
    return $rc
}

case ${1:-} in
    start) start ;;
    stop) stop_ours; say "stopped what this script started under $BASE" ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
