#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm/start.sh, daemon by daemon, through
# their pidfiles (never by process name: other clusters or databases on the machine are left alone).
#
#   scripts/slurm/stop.sh           # stop; state (queue, accounting database) is kept for the next start
#   scripts/slurm/stop.sh --purge   # stop and delete $SLURM_STATE_DIR (default /tmp/platform-slurm)
set -euo pipefail

STATE=${SLURM_STATE_DIR:-/tmp/platform-slurm}
RUN=$STATE/run
PURGE=0
[[ ${1:-} == --purge ]] && PURGE=1

stop_pidfile() {  # stop_pidfile NAME: SIGTERM, wait up to 15 s, then SIGKILL
    local name=$1 pidfile=$RUN/$1.pid pid
    [[ -s $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "[slurm-stop] $name ($pid) ignored SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "[slurm-stop] stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

# jobs first die with slurmd (its job steps are its children); the database goes last but one,
# munge last because every other daemon talks through it
for daemon in slurmd slurmctld slurmdbd mariadb munged; do
    stop_pidfile "$daemon"
done

if ((PURGE)); then
    if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$STATE"/* ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
    rm -rf "$STATE"
    echo "[slurm-stop] removed $STATE"
fi
