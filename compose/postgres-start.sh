#!/bin/sh
# First start: a cluster whose only superuser is pbx_admin, password-authenticated (scram) over TCP,
# with the control plane's database. Then the server itself, in the foreground.
set -eu
: "${PBX_DB_ADMIN_PASSWORD:?set PBX_DB_ADMIN_PASSWORD}"
port="${PBX_DB_PORT:-5432}"
bin=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$PBX_DB_ADMIN_PASSWORD" > "$pwfile"
  "$bin/initdb" -D "$PGDATA" -U pbx_admin --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/tmp" -w start >/dev/null
  PGPASSWORD="$PBX_DB_ADMIN_PASSWORD" "$bin/psql" -h /tmp -U pbx_admin -d postgres -qc 'CREATE DATABASE pbx'
  "$bin/pg_ctl" -D "$PGDATA" -w stop >/dev/null
fi
exec "$bin/postgres" -D "$PGDATA" -p "$port" -c listen_addresses="${PBX_DB_LISTEN:-127.0.0.1}" \
  -c unix_socket_directories=/tmp
