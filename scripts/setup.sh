#!/usr/bin/env bash
# Installs every Debian 12 package the build, the tests and the local servers need.
# Idempotent: installs only what is missing. Package services (postgresql, redis, nginx, haproxy)
# are not started system-wide; tests start their own throwaway servers on loopback.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config git
  # fuzzing (scripts/fuzz.sh): clang 14; libclang-rt-14-dev has the libFuzzer and sanitizer
  # runtimes behind -fsanitize=fuzzer,address,undefined
  clang-14 libclang-rt-14-dev
  # libraries
  libboost-dev libboost-system-dev libssl-dev libsodium-dev libsqlite3-dev libpq-dev
  nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev libhiredis-dev libsimdjson-dev zlib1g-dev libyaml-cpp-dev libmaxminddb-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev python3 python3-jwt python3-cryptography curl wrk openssl
  # accounts: WebAuthn's CBOR; an OAuth 2.0 device-flow client, a browser with a virtual
  # authenticator and a WebSocket client for its DevTools protocol (tests/integration/test_passkeys.py)
  libcbor-dev python3-oauthlib chromium python3-websockets
  # the system trust store https:// upstreams are verified against
  ca-certificates
  # servers used by tests
  postgresql redis-server
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if ((EUID != 0)); then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
# Keep package post-install scripts from starting system services.
POLICY=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $POLICY ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  made_policy=1
fi
cleanup() { if ((made_policy)); then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
