#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the tests: `start` runs initdb in a new temp dir
# (as the `postgres` system user: initdb refuses root), starts it on a free loopback port
# and writes /tmp/quicflow-postgres.json ({"dsn": ...}); `stop` stops it and removes the
# directory. Installs postgresql-15 when its binaries are missing. Like docker_env.sh it
# never fails the caller: when PostgreSQL cannot start, the state file says why and the
# PostgreSQL variants of the tests fail or skip with that reason.
set -uo pipefail

STATE=/tmp/quicflow-postgres.json
LOG=/tmp/quicflow-postgres-env.log
BIN=/usr/lib/postgresql/15/bin

fail() {
  printf '{"available": false, "reason": "%s"}\n' "$1" >"$STATE"
  echo "postgres_env: $1 (see $LOG)" >&2
  exit 0
}

stop() {
  if [ -f "$STATE" ]; then
    dir=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("dir",""))' "$STATE")
    if [ -n "$dir" ] && [ -d "$dir" ]; then
      runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -m immediate stop >>"$LOG" 2>&1 || true
      rm -rf "$dir"
    fi
    rm -f "$STATE"
  fi
}

start() {
  : >"$LOG"
  stop
  if [ ! -x "$BIN/initdb" ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15; } \
      >>"$LOG" 2>&1 || fail "apt-get install postgresql-15 failed"
  fi
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres >>"$LOG" 2>&1 \
    || fail "no postgres user to run initdb as"
  dir=$(mktemp -d /tmp/quicflow-postgres.XXXXXX)
  chown postgres "$dir"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  runuser -u postgres -- "$BIN/initdb" -D "$dir/data" -U quicflow --auth=trust -E UTF8 >>"$LOG" 2>&1 \
    || fail "initdb failed"
  runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off" \
    start >>"$LOG" 2>&1 || fail "pg_ctl start failed"
  dsn="postgresql://quicflow@127.0.0.1:$port/postgres"
  printf '{"available": true, "dsn": "%s", "dir": "%s"}\n' "$dsn" "$dir" >"$STATE"
  echo "postgres_env: PostgreSQL 15 on 127.0.0.1:$port (details in $STATE)"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
