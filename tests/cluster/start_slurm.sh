#!/usr/bin/env bash
# Start a real one-node SLURM cluster on 127.0.0.1 for tests/cluster (run as root).
#
# Installs Debian's slurm-wlm (slurmctld, slurmd, client), slurmdbd, munge and mariadb-server
# when they are missing, writes a one-node configuration with fake GPUs (GRES gpu backed by
# plain files, so SLURM sets CUDA_VISIBLE_DEVICES without a real GPU), starts munged,
# mariadb, slurmdbd, slurmctld and slurmd, creates the account and partitions, and waits
# until `sinfo` shows the node idle and `sacct` answers. Snakemake's SLURM executor polls
# `sacct`, so accounting (slurmdbd + database) is not optional: without it runs hang.
#
# Idempotent: a second call with the cluster up returns in about a second. Daemons it starts
# are recorded in /run/slurm-test/started (stop_slurm.sh stops those, by pid).
#
# Environment (defaults in brackets):
#   SLURM_TEST_ACCOUNT     account to create and associate with the current user [my_account]
#   SLURM_TEST_PARTITIONS  space-separated partition names, all on the one node [cpu gpu]
#                          (the first is the default partition)
#   SLURM_TEST_GPUS        number of fake GPUs on the node [2]
#
# Exit status: 0 cluster ready; 100 the packages could not be installed (no apt, no network
# or no root), so callers may skip; anything else is a real failure (see the logs in
# /var/log/slurm-test/).
set -euo pipefail

ACCOUNT=${SLURM_TEST_ACCOUNT:-my_account}
read -r -a PARTITIONS <<<"${SLURM_TEST_PARTITIONS:-cpu gpu}"
GPUS=${SLURM_TEST_GPUS:-2}
CLUSTER=snaketest
STATE=/var/lib/slurm-test
LOGS=/var/log/slurm-test
RUN=/run/slurm-test
CONF=/etc/slurm
DB_PASS=slurmtest
USER_NAME=$(id -un)

log() { printf '[start_slurm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; for f in "$LOGS"/*.log; do [[ -f $f ]] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done; exit 1; }

cluster_usable() { # up, with our account for this user and our partitions (any user may ask)
    command -v sinfo >/dev/null 2>&1 || return 1
    sinfo -h -N -n "$(hostname -s)" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)' || return 1
    sacct -n -X --starttime now-1minutes >/dev/null 2>&1 || return 1
    sacctmgr -n -P list assoc user="$USER_NAME" account="$ACCOUNT" format=Account 2>/dev/null |
        grep -qx "$ACCOUNT" || return 1
    local p
    for p in "${PARTITIONS[@]}"; do [[ -n "$(sinfo -h -p "$p" -o %P 2>/dev/null)" ]] || return 1; done
}
if [[ $(id -u) -ne 0 ]]; then
    if cluster_usable; then
        log "not root, but SLURM is up with account $ACCOUNT and partitions ${PARTITIONS[*]}: using it"
        exit 0
    fi
    log "must run as root (installs packages, starts daemons)"; exit 100
fi
mkdir -p "$RUN" "$LOGS" "$STATE"
# One caller at a time (parallel test sessions share the one cluster).
exec 9>"$RUN/lock"
flock -w 600 9 || die "could not take $RUN/lock"

# ---------------------------------------------------------------- packages
PACKAGES=(slurm-wlm slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
have_binaries() {
    local b
    for b in slurmctld slurmd slurmdbd sinfo sacct sacctmgr sbatch munged mungekey mysqld_safe mysqladmin; do
        command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || return 1
    done
    [[ -f /usr/lib/x86_64-linux-gnu/slurm-wlm/accounting_storage_mysql.so ]] ||
        compgen -G "/usr/lib/*/slurm-wlm/accounting_storage_mysql.so" >/dev/null
}
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
if ! have_binaries; then
    command -v apt-get >/dev/null || { log "apt-get not found: cannot install ${PACKAGES[*]}"; exit 100; }
    log "installing ${PACKAGES[*]} (about 30 s)"
    # Keep the packages' init scripts from starting daemons during installation.
    policy_created=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        policy_created=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_ok=1
    apt-get update -q >"$LOGS/apt.log" 2>&1 || apt_ok=0
    if [[ $apt_ok == 1 ]]; then
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$LOGS/apt.log" 2>&1 || apt_ok=0
    fi
    [[ $policy_created == 1 ]] && rm -f /usr/sbin/policy-rc.d
    if [[ $apt_ok == 0 ]]; then
        log "apt-get could not install ${PACKAGES[*]}:"; tail -n 20 "$LOGS/apt.log" >&2; exit 100
    fi
    have_binaries || { log "packages installed but binaries missing"; exit 100; }
fi

# ---------------------------------------------------------------- configuration
HOST=$(hostname -s)
CPUS=$(nproc)
# Memory is not a consumable resource here (CR_CPU) and config_overrides keeps slurmd from
# draining the node when it has less memory than declared, so a profile's mem_mb requests
# are accepted on small machines too.
MEM_MB=65536
GPU_DIR=$STATE/fake-gpu
mkdir -p "$STATE/slurmctld" "$STATE/slurmd" "$GPU_DIR" "$CONF"
# Fake GPU device files: character devices with NVIDIA's major number 195, outside /dev.
# slurmd only stats them (there is no device cgroup with task/none) but ignores plain files
# ("not a valid character or block device") and then sets no CUDA_VISIBLE_DEVICES.
devices_changed=0
for ((i = 0; i < GPUS; i++)); do
    if [[ ! -c $GPU_DIR/nvidia$i ]]; then
        rm -f "$GPU_DIR/nvidia$i"
        mknod -m 0666 "$GPU_DIR/nvidia$i" c 195 "$i" || die "mknod $GPU_DIR/nvidia$i failed"
        devices_changed=1
    fi
done

# TaskProlog: records the GPU environment SLURM gives each task (batch script and job steps),
# one file per step in $LOGS/task-env/, so that tests can check CUDA_VISIBLE_DEVICES.
TASK_ENV=$LOGS/task-env
mkdir -p "$TASK_ENV"
cat >"$STATE/task_prolog.sh.new" <<PROLOG
#!/bin/sh
step=\${SLURM_STEP_ID:-batch}
{
    echo "SLURM_JOB_ID=\$SLURM_JOB_ID"
    echo "SLURM_STEP_ID=\$step"
    echo "CUDA_VISIBLE_DEVICES=\${CUDA_VISIBLE_DEVICES-<unset>}"
    echo "SLURM_JOB_GPUS=\${SLURM_JOB_GPUS-<unset>}"
} >"$TASK_ENV/\$SLURM_JOB_ID.\$step.env"
PROLOG
chmod 0755 "$STATE/task_prolog.sh.new"
mv "$STATE/task_prolog.sh.new" "$STATE/task_prolog.sh"

new_conf=$(mktemp)
{
    cat <<EOF
# Written by tests/cluster/start_slurm.sh: one-node test cluster on 127.0.0.1.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
TaskProlog=$STATE/task_prolog.sh
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
NodeName=$HOST NodeAddr=127.0.0.1 NodeHostname=$HOST CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPUS State=UNKNOWN
EOF
    default=YES
    for p in "${PARTITIONS[@]}"; do
        echo "PartitionName=$p Nodes=ALL Default=$default MaxTime=INFINITE State=UP"
        default=NO
    done
} >"$new_conf"
if [[ $GPUS -gt 0 ]]; then
    gres_line="NodeName=$HOST Name=gpu File=$GPU_DIR/nvidia[0-$((GPUS - 1))]"
else
    gres_line="# no GPUs"
fi

conf_changed=$devices_changed
if ! cmp -s "$new_conf" "$CONF/slurm.conf"; then
    [[ -f $CONF/slurm.conf && ! -f $CONF/slurm.conf.before-slurm-test ]] &&
        ! grep -q start_slurm.sh "$CONF/slurm.conf" && cp "$CONF/slurm.conf" "$CONF/slurm.conf.before-slurm-test"
    install -m 0644 "$new_conf" "$CONF/slurm.conf"
    conf_changed=1
fi
rm -f "$new_conf"
if [[ "$(cat "$CONF/gres.conf" 2>/dev/null)" != "$gres_line" ]]; then
    echo "$gres_line" >"$CONF/gres.conf"
    conf_changed=1
fi
DBD_CONF="AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db"
if [[ "$(cat "$CONF/slurmdbd.conf" 2>/dev/null)" != "$DBD_CONF" ]]; then
    (umask 077 && echo "$DBD_CONF" >"$CONF/slurmdbd.conf")
fi
chmod 0600 "$CONF/slurmdbd.conf"

# ---------------------------------------------------------------- daemons
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2 t0=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS - t0 < limit)) || die "$what did not come up within ${limit}s"
        sleep 0.5
    done
}
pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
record() { echo "$1" >>"$RUN/started"; }

# munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create --keyfile /etc/munge/munge.key
    log "starting munged"
    runuser -u munge -- munged 9>&- </dev/null >>"$LOGS/munged.out" 2>&1 || die "munged failed to start"
    wait_for 20 munged bash -c 'munge -n </dev/null | unmunge'
    record munged
fi

# mariadb (slurmdbd's storage)
if ! mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; then
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    [[ -f $LOGS/mariadb.log ]] || install -o mysql -g mysql -m 0640 /dev/null "$LOGS/mariadb.log"
    log "starting mariadb"
    setsid mysqld_safe --bind-address=127.0.0.1 --skip-syslog --log-error="$LOGS/mariadb.log" \
        9>&- </dev/null >>"$LOGS/mysqld_safe.out" 2>&1 &
    wait_for 60 mariadb mysqladmin --connect-timeout=2 ping
    record mariadb
fi
mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" ||
    die "could not create the database user"

# slurmdbd
if ! pid_alive "$RUN/slurmdbd.pid"; then
    log "starting slurmdbd"
    slurmdbd 9>&- </dev/null >>"$LOGS/slurmdbd.out" 2>&1 || die "slurmdbd failed to start"
    wait_for 60 slurmdbd sacctmgr -n list cluster
    record slurmdbd
fi
if [[ -z "$(sacctmgr -n -P list cluster "$CLUSTER" format=Cluster)" ]]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed"
fi
if [[ -z "$(sacctmgr -n -P list account "$ACCOUNT" format=Account)" ]]; then
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="snakemake tests" \
        Organization=tests >/dev/null || die "sacctmgr add account failed"
fi
if ! sacctmgr -n -P list assoc user="$USER_NAME" account="$ACCOUNT" format=Account | grep -qx "$ACCOUNT"; then
    sacctmgr -i add user "$USER_NAME" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" \
        Cluster="$CLUSTER" >/dev/null || die "sacctmgr add user failed"
fi

# slurmctld and slurmd (restarted when the configuration changed)
if [[ $conf_changed == 1 ]]; then
    for daemon in slurmd slurmctld; do
        if pid_alive "$RUN/$daemon.pid"; then
            log "configuration changed: restarting $daemon"
            pid=$(cat "$RUN/$daemon.pid")
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
fi
if ! pid_alive "$RUN/slurmctld.pid"; then
    log "starting slurmctld"
    slurmctld 9>&- </dev/null >>"$LOGS/slurmctld.out" 2>&1 || die "slurmctld failed to start"
    wait_for 30 slurmctld scontrol ping
    record slurmctld
fi
if ! pid_alive "$RUN/slurmd.pid"; then
    log "starting slurmd"
    slurmd 9>&- </dev/null >>"$LOGS/slurmd.out" 2>&1 || die "slurmd failed to start"
    record slurmd
fi

node_ready() {
    local state
    state=$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1)
    case $state in
    idle | mixed | allocated | completing) return 0 ;;
    down* | drain* | *fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true; return 1 ;;
    *) return 1 ;;
    esac
}
wait_for 60 "node $HOST (sinfo)" node_ready
wait_for 30 sacct sacct -n -X --starttime now-1minutes
log "SLURM ready: cluster $CLUSTER, node $HOST ($CPUS CPUs, $GPUS fake GPUs), partitions ${PARTITIONS[*]}, account $ACCOUNT"
