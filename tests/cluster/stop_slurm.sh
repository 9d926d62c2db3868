#!/usr/bin/env bash
# Stop the daemons that tests/cluster/start_slurm.sh started (listed in /run/slurm-test/started),
# each by its pid file: slurmd, slurmctld, slurmdbd, mariadb, munged. Daemons that were already
# running before start_slurm.sh (e.g. a site's own munged or mariadb) are left alone.
# Packages, configuration and the accounting database stay, so the next start is fast.
set -uo pipefail

RUN=/run/slurm-test
STARTED=$RUN/started
log() { printf '[stop_slurm] %s\n' "$*" >&2; }

[[ -f $STARTED ]] || { log "nothing recorded in $STARTED; nothing to stop"; exit 0; }
exec 9>"$RUN/lock"
flock -w 600 9 || { log "could not take $RUN/lock"; exit 1; }

stop_pidfile() { # stop_pidfile NAME PIDFILE
    local name=$1 pidfile=$2 pid
    [[ -f $pidfile ]] || { log "$name: no pid file $pidfile"; return 0; }
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill "$pid"
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
        log "$name (pid $pid) did not stop within 15 s"
        return 1
    fi
}

status=0
for daemon in slurmd slurmctld slurmdbd mariadb munged; do
    grep -qx "$daemon" "$STARTED" || continue
    case $daemon in
    mariadb)
        log "stopping mariadb"
        mysqladmin --connect-timeout=5 shutdown || status=1
        ;;
    munged) stop_pidfile munged /run/munge/munged.pid || status=1 ;;
    *) stop_pidfile "$daemon" "$RUN/$daemon.pid" || status=1 ;;
    esac
done
rm -f "$STARTED"
exit $status
