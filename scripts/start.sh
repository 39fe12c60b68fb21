#!/usr/bin/env bash
# Quick start: installs what is missing, builds, and runs the whole system on embedded defaults
# (SQLite file in ./data, generated development secrets) on http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh -DAG_BUILD_TESTS=OFF -DAG_BUILD_BENCH=OFF
exec ./build/antigravity up "$@"
