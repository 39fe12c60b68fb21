#!/usr/bin/env bash
# Soak run: the worker under steady load for a long time (default 10 minutes), sampling its RSS
# every 10 s, then the RSS growth from the first minute to the end and the error count.
# Target: RSS growth < 5 %, 0 errors (non-2xx answers or socket errors).
#
# Usage: bench/load/soak.sh [-d SECONDS] [-c CONNECTIONS] [-t WORKER_THREADS]
# Needs wrk and nginx (the upstream); everything binds 127.0.0.1 and is stopped at the end.
# Mix: API-key requests on the default route (access log and risk engine on) plus, on a second
# wrk, service-token requests on a service route.
set -euo pipefail
DUR=600 CONNS=32 THREADS=1
while getopts "d:c:t:h" o; do
  case "$o" in d) DUR="$OPTARG" ;; c) CONNS="$OPTARG" ;; t) THREADS="$OPTARG" ;; *) sed -n '2,10p' "$0"; exit 2 ;; esac
done
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/bench/peers}"
BIN="${AG_BIN:-$ROOT/build/antigravity}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18090}" WORKER_PORT="${WORKER_PORT:-18093}"
export PATH="$PATH:/usr/sbin:/sbin"
WORK="$(mktemp -d)"; chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5; for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
wait_listen() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

sed -e "s#@RUNDIR@#$WORK#g; s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" "$PEERS_DIR/nginx-upstream.conf" >"$WORK/upstream.conf"
nginx -e "$WORK/upstream.err" -c "$WORK/upstream.conf" -g 'daemon off;' >/dev/null 2>&1 &
PIDS+=($!)
wait_listen "$UPSTREAM_PORT"
/usr/bin/python3 "$ROOT/bench/load/gen_worker_config.py" 10000 "http://127.0.0.1:$UPSTREAM_PORT" "$WORK/config.json" \
  "$WORK/keys.txt" --jwt "$WORK/token.txt"
KEY="$(sed -n 5000p "$WORK/keys.txt")"
TOKEN="$(cat "$WORK/token.txt")"
WORKER_ACCESS_LOG="$WORK/access.log" WORKER_SNAPSHOT_PATH=off "$BIN" --log-level warn worker \
  --listen "127.0.0.1:$WORKER_PORT" --admin-listen 127.0.0.1:0 --threads "$THREADS" --config "$WORK/config.json" \
  >"$WORK/worker.out" 2>"$WORK/worker.err" &
WPID=$!; PIDS=("$WPID" "${PIDS[@]}")
wait_listen "$WORKER_PORT"
sleep 1
rss() { awk '/VmRSS/{print $2}' "/proc/$WPID/status"; }
echo "start: RSS $(rss) kB; $DUR s at $CONNS + $((CONNS / 4)) connections"
timeout $((DUR + 60)) wrk -t1 -c"$CONNS" -d"${DUR}s" -H "X-API-Key: $KEY" "http://127.0.0.1:$WORKER_PORT/" >"$WORK/wrk-key.txt" &
W1=$!
timeout $((DUR + 60)) wrk -t1 -c"$((CONNS / 4))" -d"${DUR}s" -H "Authorization: Bearer $TOKEN" \
  "http://127.0.0.1:$WORKER_PORT/bench/up/soak" >"$WORK/wrk-jwt.txt" &
W2=$!
samples=()
for ((t = 10; t <= DUR; t += 10)); do
  sleep 10
  kill -0 "$WPID" 2>/dev/null || { echo "worker died" >&2; exit 1; }
  r="$(rss)"; samples+=("$r")
  # Keep the access log from filling the disk during long runs.
  : >"$WORK/access.log"
  printf 't=%4ds RSS %s kB\n' "$t" "$r"
done
wait "$W1" "$W2" || true
errors=0
for f in "$WORK/wrk-key.txt" "$WORK/wrk-jwt.txt"; do
  grep -E "Requests/sec|requests in" "$f"
  n="$(awk '/Non-2xx or 3xx responses:/{print $NF}' "$f")"; errors=$((errors + ${n:-0}))
  s="$(awk '/Socket errors:/{gsub(",","");print $4+$6+$8+$10}' "$f")"; errors=$((errors + ${s:-0}))
done
first="${samples[5]:-${samples[0]}}"   # after the first minute (warm-up: pools, caches, arenas)
last="${samples[${#samples[@]}-1]}"
awk -v a="$first" -v b="$last" -v e="$errors" 'BEGIN{printf "RSS at 1 min %d kB, at end %d kB: growth %.2f %%; errors %d\n", a, b, (b-a)*100/a, e}'
