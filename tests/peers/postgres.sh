#!/bin/bash
# postgres.sh [ROOT] -- prints a PostgreSQL URL for the tests (GATEWAYD_TEST_PG_URL).
#
# When a server answers on 127.0.0.1:5432 (trust auth, database "test", as on the project's
# machines) it prints that one. Otherwise it starts a private cluster from Debian's postgresql
# package under ROOT (default /tmp/gatewayd-pg) on 127.0.0.1:55432, trust auth, database "test",
# owned by the "postgres" system user, and prints its URL. Stop it with:
#   su postgres -s /bin/sh -c 'pg_ctl -D ROOT/data stop'
set -euo pipefail
R=${1:-/tmp/gatewayd-pg}
PORT=55432

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if answers 5432; then
  echo "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
  exit 0
fi

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ]; then
  echo "postgres.sh: no PostgreSQL server: run 'sh tests/peers/install.sh' as root" >&2
  exit 1
fi
as_pg() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}
if ! answers $PORT; then
  mkdir -p "$R"
  [ "$(id -u)" != 0 ] || chown postgres:postgres "$R"
  if [ ! -s "$R/data/PG_VERSION" ]; then
    as_pg "'$bin/initdb' -D '$R/data' -U postgres --auth=trust -E UTF8 --locale=C.UTF-8" >"$R/initdb.log" 2>&1 \
      || { cat "$R/initdb.log" >&2; exit 1; }
  fi
  as_pg "'$bin/pg_ctl' -D '$R/data' -l '$R/server.log' -w -t 60 \
    -o \"-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories='$R'\" start" >/dev/null \
    || { tail -n 20 "$R/server.log" >&2; exit 1; }
fi
if ! psql -h 127.0.0.1 -p $PORT -U postgres -Atc "select 1 from pg_database where datname='test'" postgres | grep -q 1; then
  psql -q -h 127.0.0.1 -p $PORT -U postgres -c "create database test" postgres
fi
echo "postgresql+asyncpg://postgres@127.0.0.1:$PORT/test"
