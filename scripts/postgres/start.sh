#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on this (Debian) machine for the multi-driver tests.
#
#   scripts/postgres/start.sh            # install if needed, start, print the URL to use
#   scripts/postgres/stop.sh [--purge]   # stop the server (and delete its cluster)
#
# For CI and for trying several sweep drivers on one study (README "Several drivers on one
# study"). Idempotent: a server already running (by its pidfile) is left alone. The cluster lives
# in $PG_STATE_DIR (default /tmp/platform-postgres), listens on 127.0.0.1:$PG_PORT only (default
# 6822) and on a socket in that folder, and trusts every local connection: it is for tests, never
# for data anyone keeps (fsync is off). Debian's postgresql package provides the binaries; as root
# the server runs as the `postgres` user (PostgreSQL refuses to run as root).
#
# The URL of the database `platform` is printed and written to $PG_STATE_DIR/url:
#   export PLATFORM_TEST_POSTGRES=$(cat /tmp/platform-postgres/url)
set -euo pipefail

STATE=${PG_STATE_DIR:-/tmp/platform-postgres}
PORT=${PG_PORT:-6822}
DATA=$STATE/data LOG=$STATE/postgres.log

say() { printf '[postgres-start] %s\n' "$*"; }
die() { printf '[postgres-start] error: %s\n' "$*" >&2; exit 1; }
T0=$(date +%s.%N)

bindir() {  # the newest installed server's bin folder
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    [[ -n $d && -x $d/postgres ]] && echo "$d"
}
BIN=$(bindir || true)
if [[ -z $BIN ]]; then
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed (apt-get install postgresql, as root)"
    say "installing postgresql (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    # no default cluster on 5432: the package would create and start one we do not use
    mkdir -p /etc/postgresql-common
    [[ -e /etc/postgresql-common/createcluster.conf ]] || echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold postgresql >/dev/null
    BIN=$(bindir) || die "no /usr/lib/postgresql/*/bin/postgres after installing postgresql"
fi

as_owner() {  # run a command as the cluster's owner: `postgres` when we are root, else ourselves
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
PSQL=(as_owner "$BIN/psql" -h "$STATE" -p "$PORT" -U postgres -d postgres -qAtX)

mkdir -p "$STATE"
[[ $(id -u) -eq 0 ]] && chown postgres:postgres "$STATE"
if [[ ! -s $DATA/PG_VERSION ]]; then
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$STATE/initdb.log" 2>&1 \
        || die "initdb failed (see $STATE/initdb.log)"
fi

if as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    say "already running"
else
    # -l: pg_ctl detaches the server (setsid) so it outlives this shell and the CI step
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 30 start -o \
        "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$STATE \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB \
         -c max_connections=200" >/dev/null || die "the server did not start (see $LOG)"
fi
"${PSQL[@]}" -c "select 1" >/dev/null || die "the server does not answer on $STATE:$PORT (see $LOG)"
if [[ -z $("${PSQL[@]}" -c "select 1 from pg_database where datname = 'platform'") ]]; then
    "${PSQL[@]}" -c "create database platform" >/dev/null
fi

URL="postgresql://postgres@127.0.0.1:$PORT/platform"
echo "$URL" >"$STATE/url"
chmod 644 "$STATE/url"
awk -v a="$T0" -v b="$(date +%s.%N)" -v v="$("$BIN/postgres" --version)" \
    'BEGIN { printf "[postgres-start] %s up in %.1fs\n", v, b - a }'
cat <<EOM
[postgres-start] url:   $URL   (also in $STATE/url; log: $LOG)
Use it:
  export PLATFORM_TEST_POSTGRES=$URL
  .venv/bin/python -m pytest -m postgres tests/platform                 # the multi-driver test
  python -m platform.sweep experiment=<name> sweep.storage=$URL         # several drivers, one study
Stop it:
  scripts/postgres/stop.sh            # add --purge to delete $STATE
EOM
