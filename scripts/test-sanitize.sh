#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer, in build-asan/:
# ./scripts/test.sh --sanitize (see there and docs/testing.md). Arguments go to ctest.
set -euo pipefail
exec "$(dirname "$0")/test.sh" --sanitize "$@"
