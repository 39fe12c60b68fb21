#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/<name>_fuzz.cpp) with clang 14 into build-fuzz/ and runs
# each one for SECONDS seconds on a copy of its seed corpus (fuzz/corpus/<name>/): the seeds in
# the repository are never written to. Fails when any target crashes, leaks, hangs or runs out of
# memory, printing the input that did it (docs/testing.md).
#
#   ./scripts/fuzz.sh [SECONDS [NAME...]]    default: 30 seconds each, every target
#
# Environment:
#   FUZZ_WORK_DIR   where working corpora, logs and crash inputs go (default: a new temporary
#                   directory, removed after a clean run and kept when a target fails). An
#                   existing directory is reused, so long runs can continue a grown corpus.
#   FUZZ_BUILD_DIR  the build directory (default build-fuzz)
#   FUZZ_ARGS       extra libFuzzer flags for every target, e.g. "-jobs=2 -workers=2"
#   JOBS            build parallelism (default: ninja's)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

SECS="${1:-30}"
if (($#)); then shift; fi
if ! [[ $SECS =~ ^[0-9]+$ ]] || ((SECS < 1)); then
  echo "usage: $0 [SECONDS_PER_TARGET [NAME...]]" >&2
  exit 2
fi
TARGETS=("$@")
if ((${#TARGETS[@]} == 0)); then
  for f in fuzz/*_fuzz.cpp; do
    n="${f#fuzz/}"
    TARGETS+=("${n%_fuzz.cpp}")
  done
fi
for t in "${TARGETS[@]}"; do
  [[ -f fuzz/${t}_fuzz.cpp && -d fuzz/corpus/$t ]] || { echo "fuzz: no target '$t' (fuzz/${t}_fuzz.cpp and fuzz/corpus/$t/)" >&2; exit 2; }
done

./scripts/setup.sh
BUILD_DIR="${FUZZ_BUILD_DIR:-build-fuzz}"
if [[ ! -f $BUILD_DIR/build.ninja ]]; then
  # -O1 -g without NDEBUG: optimised enough for fuzzing speed, with assertions on.
  CC=clang-14 CXX=clang++-14 cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DAG_BUILD_FUZZ=ON -DAG_BUILD_TESTS=OFF -DAG_BUILD_BENCH=OFF
fi
ninja -C "$BUILD_DIR" ${JOBS:+-j "$JOBS"} "${TARGETS[@]/%/_fuzz}"
BIN="$(cd "$BUILD_DIR/fuzz" && pwd)"

if [[ -n ${FUZZ_WORK_DIR:-} ]]; then
  WORK="$FUZZ_WORK_DIR"
  KEEP=1
else
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/antigravity-fuzz.XXXXXX")"
  KEEP=0
fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

# Each target: its corpus grows in $WORK/<name>/corpus; crash inputs land in $WORK/<name>/.
run_target() {
  local name="$1" dir="$WORK/$1"
  mkdir -p "$dir/corpus"
  cp -n "$ROOT/fuzz/corpus/$name/"* "$dir/corpus/" 2>/dev/null || true
  local args=(-max_total_time="$SECS" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1
              -artifact_prefix="$dir/")
  if [[ -f $ROOT/fuzz/$name.dict ]]; then args+=(-dict="$ROOT/fuzz/$name.dict"); fi
  # In the target's directory: with -jobs, libFuzzer writes its per-job logs to the current one.
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  (cd "$dir" && "$BIN/${name}_fuzz" "${args[@]}" ${FUZZ_ARGS:-} "$dir/corpus" >"$dir/log" 2>&1)
}

summary() {
  local log="$1" execs rate cov
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1 || true)"
  echo "${execs:-?} executions (${rate:-?}/s), ${cov:-no coverage line}"
}

failed=()
for t in "${TARGETS[@]}"; do
  echo "fuzz: $t for ${SECS}s ..."
  if run_target "$t"; then
    echo "fuzz: $t: ok, $(summary "$WORK/$t/log")"
  else
    failed+=("$t")
    echo "fuzz: $t: FAILED, $(summary "$WORK/$t/log")" >&2
    tail -n 80 "$WORK/$t/log" >&2
    for a in "$WORK/$t"/crash-* "$WORK/$t"/leak-* "$WORK/$t"/timeout-* "$WORK/$t"/oom-* "$WORK/$t"/slow-unit-*; do
      [[ -f $a ]] || continue
      echo "fuzz: $t: input kept at $a ($(wc -c <"$a") bytes); reproduce with: $BIN/${t}_fuzz $a" >&2
      if (($(wc -c <"$a") <= 4096)); then
        echo "fuzz: base64 of the input:" >&2
        base64 "$a" >&2
      fi
    done
  fi
done

if ((${#failed[@]})); then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]} (logs and inputs in $WORK)" >&2
  exit 1
fi
if ((KEEP)); then
  echo "fuzz: all ${#TARGETS[@]} targets clean (corpora and logs in $WORK)"
else
  rm -rf "$WORK"
  echo "fuzz: all ${#TARGETS[@]} targets clean"
fi
