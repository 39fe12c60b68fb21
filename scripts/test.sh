#!/usr/bin/env bash
# Installs what is missing, builds, starts a throwaway PostgreSQL server on loopback, and runs
# the whole test suite (unit tests + integration tests against SQLite and PostgreSQL) with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
./scripts/setup.sh
BUILD_DIR="${BUILD_DIR:-build}" ./scripts/build.sh -DAG_BUILD_TESTS=ON
BUILD_DIR="${BUILD_DIR:-build}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/antigravity-test.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# PostgreSQL refuses to run as root: run it as the postgres user when we are root.
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
PGPORT="$(free_port)"
chmod 755 "$WORK"
as_pg() { if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$WORK/pg"
if ((EUID == 0)); then chown postgres "$WORK/pg"; fi
as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 >"$WORK/initdb.log" 2>&1 ||
  { cat "$WORK/initdb.log"; exit 1; }
# Started directly (not through the as_pg function, which would put a subshell between us and
# the server), so the PID we stop at the end is the server's own (or runuser's, which forwards).
PGARGS=(-D "$WORK/pg/data" -k "$WORK/pg" -h 127.0.0.1 -p "$PGPORT" -c fsync=off -c synchronous_commit=off -c full_page_writes=off)
if ((EUID == 0)); then
  runuser -u postgres -- "$PGBIN/postgres" "${PGARGS[@]}" >"$WORK/pg.log" 2>&1 &
else
  "$PGBIN/postgres" "${PGARGS[@]}" >"$WORK/pg.log" 2>&1 &
fi
PIDS+=($!)
for _ in $(seq 1 100); do
  psql -h 127.0.0.1 -p "$PGPORT" -U postgres -c 'select 1' >/dev/null 2>&1 && break
  sleep 0.2
done
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -c 'select 1' >/dev/null || { cat "$WORK/pg.log"; exit 1; }
echo "test: PostgreSQL on 127.0.0.1:$PGPORT"

export AG_TEST_PG_URL="postgresql://postgres@127.0.0.1:$PGPORT/postgres"
export AG_TEST_REQUIRE_PG=1
cd "$BUILD_DIR"
ctest --output-on-failure -j2 "$@"
