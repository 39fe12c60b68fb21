#!/usr/bin/env bash
# Relay benchmark (docs/benchmarks.md, "Relay"): starts `antigravity control` on a throwaway SQLite
# database, signs a user and a device in, then with build/bench/relay/ag_relay_bench:
#   1. holds N idle client sockets (default 10000) and reports the control plane's RSS growth
#      per socket and its CPU while they sit idle;
#   2. fans one anchor's messages out to F subscribers of one thread (default 1000, 50 messages);
#   3. runs client → anchor → client round trips, one at a time, for S seconds (default 5).
#   4. with -p POSTGRES_URL (an empty database): two control planes on it, the fan-out again with
#      the anchor on one and the subscribers on the other (the cross-replica hop).
# Usage: bench/relay/run.sh [-n SOCKETS] [-f SUBSCRIBERS] [-m MESSAGES] [-s SECONDS] [-p POSTGRES_URL]
# Loopback only; stops what it started. Needs ulimit -n above SOCKETS and SUBSCRIBERS + 1000 (it
# raises it if it can).
set -euo pipefail
N=10000 F=1000 M=50 S=5 PG=""
while getopts "n:f:m:s:p:h" o; do
  case "$o" in n) N="$OPTARG" ;; f) F="$OPTARG" ;; m) M="$OPTARG" ;; s) S="$OPTARG" ;; p) PG="$OPTARG" ;; *) sed -n '2,13p' "$0"; exit 2 ;; esac
done
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${AG_BIN:-$ROOT/build/antigravity}"
LOAD="${AG_RELAY_BENCH:-$ROOT/build/bench/relay/ag_relay_bench}"
[[ -x $LOAD ]] || { echo "build it first: ninja -C build ag_relay_bench" >&2; exit 1; }
# Descriptors for the larger of the idle sockets and the followers, on both ends, and some spare.
want=$(( (N > F ? N : F) + 1000 ))
ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) >= want )) || echo "warning: ulimit -n is $(ulimit -n), below the $want this run needs" >&2
WORK="$(mktemp -d)"
PID="" PID2=""
cleanup() { for p in $PID $PID2; do kill "$p" 2>/dev/null; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

export ENV=development DATABASE_URL="${PG:-sqlite://$WORK/bench.db}"
export JWT_SECRET_KEY="$(head -c 48 /dev/urandom | base64 | tr -d '/+=' | head -c 48)"
export WORKER_SECRET_KEY="$(head -c 48 /dev/urandom | base64 | tr -d '/+=' | head -c 48)"
# The round-trip and fan-out runs send faster than the default per-socket rate (100/s).
export RELAY_MAX_MESSAGES_PER_SEC=1000000 RELAY_MESSAGE_BURST=1000000
start_control() {  # prints "PID PORT"
  (cd "$WORK" && exec "$BIN" --log-level warn control --listen 127.0.0.1:0 2>>"$WORK/log" & echo $! >"$WORK/pid")
  sleep 0.3
  local pid port=""
  pid="$(cat "$WORK/pid")"
  for _ in $(seq 1 50); do
    port="$(ss -ltnpH 2>/dev/null | awk -v pid="pid=$pid," '$0 ~ pid {split($4,a,":"); print a[length(a)]; exit}')"
    [[ -n $port ]] && break; sleep 0.1
  done
  [[ -n $port ]] || { echo "control plane did not start:" >&2; cat "$WORK/log" >&2; exit 1; }
  echo "$pid $port"
}
read -r PID PORT < <(start_control)
B="http://127.0.0.1:$PORT"
json() { python3 -c "import sys,json;print(json.load(sys.stdin)$1)"; }
TOKEN="$(curl -sf -X POST "$B/auth/register" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"bench-password-1"}' | json '["access_token"]')"
CODE="$(curl -sf -X POST "$B/auth/device/code" -H 'content-type: application/json' -d '{}')"
curl -sf -X POST "$B/auth/device/authorise" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d "{\"userCode\":\"$(echo "$CODE" | json '["userCode"]')\"}" >/dev/null
DEVICE="$(curl -sf -X POST "$B/auth/device/token" -H 'content-type: application/json' \
  -d "{\"deviceCode\":\"$(echo "$CODE" | json '["deviceCode"]')\"}" | json '["anchorAccessToken"]')"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
TICK=$(getconf CLK_TCK)

# 1. Idle sockets.
before="$(rss_kb)"
coproc HOLD { "$LOAD" "$PORT" "$TOKEN" "$DEVICE" idle "$N"; }
read -r line <&"${HOLD[0]}"
echo "idle: $line"
sleep 2
after="$(rss_kb)"
c0="$(cpu_ticks)"; sleep 10; c1="$(cpu_ticks)"
awk -v b="$before" -v a="$after" -v n="$N" -v c=$((c1 - c0)) -v t="$TICK" 'BEGIN {
  printf "idle: %d sockets, control-plane RSS %.1f MB -> %.1f MB: %.0f bytes per socket; CPU while idle %.1f%% of a core\n",
    n, b / 1024, a / 1024, (a - b) * 1024 / n, 100 * c / t / 10 }'
echo >&"${HOLD[1]}"
wait "$HOLD_PID" 2>/dev/null || true
sleep 1

# 2. Fan-out. The generator reads the control planes' CPU time (utime + stime in /proc) while the
# messages go out (RELAY_PIDS) and reports it per delivery beside its own.
fanout() { RELAY_PIDS="$PID $PID2" "$LOAD" "$1" "$TOKEN" "$DEVICE" fanout "$F" "$M"; }
fanout "$PORT"
# 3. Round trips.
"$LOAD" "$PORT" "$TOKEN" "$DEVICE" rtt "$S"
# 4. Across two replicas.
if [[ -n $PG ]]; then
  read -r PID2 PORT2 < <(start_control)
  sleep 6  # a heartbeat: each replica knows the other's anchors
  echo "same replica:"
  fanout "$PORT"
  echo "anchor on one replica, subscribers on the other:"
  fanout "$PORT,$PORT2"
fi
