#!/usr/bin/env bash
# Stop the throwaway PostgreSQL server started by scripts/postgres/start.sh (through pg_ctl on its
# own data folder: any other server on the machine is left alone).
#
#   scripts/postgres/stop.sh           # stop; the cluster is kept for the next start
#   scripts/postgres/stop.sh --purge   # stop and delete $PG_STATE_DIR (default /tmp/platform-postgres)
set -euo pipefail

STATE=${PG_STATE_DIR:-/tmp/platform-postgres}
DATA=$STATE/data
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
as_owner() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [[ -n $BIN && -s $DATA/PG_VERSION ]] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null
    echo "[postgres-stop] stopped the server of $DATA"
fi
if [[ ${1:-} == --purge ]]; then
    rm -rf "$STATE"
    echo "[postgres-stop] removed $STATE"
fi
