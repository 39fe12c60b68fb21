#!/usr/bin/env bash
# Configures and builds into build/ (or $BUILD_DIR). Extra arguments go to cmake.
# BUILD_TYPE sets CMAKE_BUILD_TYPE at configure time (default RelWithDebInfo); JOBS=N limits the
# number of parallel compile jobs (default: ninja's).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" "$@"
elif (($#)); then
  cmake "$BUILD_DIR" "$@"
fi
ninja -C "$BUILD_DIR" ${JOBS:+-j "$JOBS"}
