#!/usr/bin/env bash
# Installs what is missing, builds, starts a throwaway PostgreSQL server on loopback, and runs
# the whole test suite (unit tests + integration tests against SQLite and PostgreSQL) with ctest.
#
#   ./scripts/test.sh [CTEST_ARGS...]             the normal build, in build/ ($BUILD_DIR)
#   ./scripts/test.sh --sanitize [CTEST_ARGS...]  the same suite built with AddressSanitizer and
#                                                 UndefinedBehaviorSanitizer, in build-asan/
#                                                 (also ./scripts/test-sanitize.sh)
#
# Under --sanitize every instrumented process (the unit tests and each antigravity process the
# integration suites start) writes any sanitizer report to a file; the run fails when one exists,
# whatever the test that started the process concluded (docs/testing.md).
# JOBS=N limits the build's parallelism (default: ninja's).
set -euo pipefail
cd "$(dirname "$0")/.."

SANITIZE=0
if [[ ${1:-} == --sanitize ]]; then
  SANITIZE=1
  shift
fi

build() {
  ./scripts/setup.sh
  if ((SANITIZE)); then
    # clang 14 at -O0 -g1, with the libFuzzer targets (AG_BUILD_FUZZ implies the sanitizers): one
    # build serves this suite and CI's fuzz phase (FUZZ_BUILD_DIR=build-asan ./scripts/fuzz.sh).
    # The build is the larger part of this suite's time; -O0 compiles in half the time of -O1,
    # line tables (-g1) are all a report's stack needs, and the suite is I/O bound either way.
    BUILD_DIR="${BUILD_DIR:-build-asan}"
    if [[ -f $BUILD_DIR/CMakeCache.txt ]] && ! grep -q '^AG_BUILD_FUZZ:BOOL=ON' "$BUILD_DIR/CMakeCache.txt"; then
      echo "test: $BUILD_DIR was configured without clang's fuzz build; configuring it afresh"
      rm -rf "$BUILD_DIR"
    fi
    CC=clang-14 CXX=clang++-14 BUILD_DIR="$BUILD_DIR" BUILD_TYPE="${BUILD_TYPE:-Debug}" ./scripts/build.sh \
      -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g1" -DAG_BUILD_TESTS=ON -DAG_BUILD_FUZZ=ON -DAG_BUILD_BENCH=OFF
  else
    BUILD_DIR="${BUILD_DIR:-build}"
    BUILD_DIR="$BUILD_DIR" ./scripts/build.sh -DAG_BUILD_TESTS=ON
  fi
}

WORK=""
PIDS=()
# shellcheck disable=SC2317 # runs through the EXIT trap
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A throwaway PostgreSQL server on a free loopback port; exports AG_TEST_PG_URL for the suites.
start_postgres() {
  # PostgreSQL refuses to run as root: run it as the postgres user when we are root.
  local pgbin pgport
  pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  pgport="$(free_port)"
  as_pg() { if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi; }
  mkdir -p "$WORK/pg"
  if ((EUID == 0)); then chown postgres "$WORK/pg"; fi
  as_pg "$pgbin/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 >"$WORK/initdb.log" 2>&1 ||
    { cat "$WORK/initdb.log"; exit 1; }
  # Started directly (not through the as_pg function, which would put a subshell between us and
  # the server), so the PID we stop at the end is the server's own (or runuser's, which forwards).
  local pgargs=(-D "$WORK/pg/data" -k "$WORK/pg" -h 127.0.0.1 -p "$pgport" -c fsync=off -c synchronous_commit=off -c full_page_writes=off)
  if ((EUID == 0)); then
    runuser -u postgres -- "$pgbin/postgres" "${pgargs[@]}" >"$WORK/pg.log" 2>&1 &
  else
    "$pgbin/postgres" "${pgargs[@]}" >"$WORK/pg.log" 2>&1 &
  fi
  PIDS+=($!)
  for _ in $(seq 1 100); do
    psql -h 127.0.0.1 -p "$pgport" -U postgres -c 'select 1' >/dev/null 2>&1 && break
    sleep 0.2
  done
  psql -h 127.0.0.1 -p "$pgport" -U postgres -c 'select 1' >/dev/null || { cat "$WORK/pg.log"; exit 1; }
  echo "test: PostgreSQL on 127.0.0.1:$pgport"
  export AG_TEST_PG_URL="postgresql://postgres@127.0.0.1:$pgport/postgres"
  export AG_TEST_REQUIRE_PG=1
}

# Sanitizer settings for every process the suite starts (they inherit the environment). Reports
# go to files under $WORK/sanitizer: the integration harness stops the binary with SIGTERM and
# does not look at its exit status or stderr, so the files are what makes a report fail the run.
sanitizer_env() {
  mkdir -p "$WORK/sanitizer"
  local log="$WORK/sanitizer/report"
  export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=0:log_path=$log"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:report_error_type=1:log_path=$log"
  # Tests whose assertions cannot hold under the sanitizers (RSS-based limits) skip themselves.
  export AG_TEST_SANITIZER=1
}

# Fails (printing them) when any sanitizer report was written.
check_sanitizer_reports() {
  local reports=("$WORK"/sanitizer/report*)
  if [[ -e ${reports[0]} ]]; then
    echo "test: ${#reports[@]} sanitizer report(s):" >&2
    for r in "${reports[@]}"; do
      echo "===== $r" >&2
      cat "$r" >&2
    done
    return 1
  fi
  echo "test: no sanitizer reports"
}

build
WORK="$(mktemp -d "${TMPDIR:-/tmp}/antigravity-test.XXXXXX")"
chmod 755 "$WORK"
start_postgres
if ((SANITIZE)); then sanitizer_env; fi

cd "$BUILD_DIR"
status=0
ctest --output-on-failure -j2 "$@" || status=$?
if ((SANITIZE)); then check_sanitizer_reports || status=1; fi
exit "$status"
