#!/usr/bin/env bash
# Side-by-side load benchmark: the Antigravity worker against nginx and HAProxy doing the same job
# (10,000 API keys, a rate limit that never triggers, keep-alive to one nginx upstream that answers
# "ok\n"), one worker process/thread each, wrk on loopback. Prints one line per gateway:
#     NAME req_per_s p50_ms p99_ms
# then the worker's ratios to nginx. Everything binds 127.0.0.1 and is stopped at the end.
#
# Usage: bench/load/gateway.sh [-c CONNECTIONS] [-d SECONDS] [-k NKEYS] [-l on|off]
#   -l: the worker's access log (to a file in the work dir); default on
# Env: PEERS_DIR (default ../shared/bench/peers beside the repo), AG_BIN, UPSTREAM_PORT (18080),
#      WORKER_PORT (18083)
set -euo pipefail
CONNS=64 DUR=10 NKEYS=10000 LOG=on
while getopts "c:d:k:l:h" o; do
  case "$o" in c) CONNS="$OPTARG" ;; d) DUR="$OPTARG" ;; k) NKEYS="$OPTARG" ;; l) LOG="$OPTARG" ;; *) sed -n '2,12p' "$0"; exit 2 ;; esac
done
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/bench/peers}"
BIN="${AG_BIN:-$ROOT/build/antigravity}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18080}"
WORKER_PORT="${WORKER_PORT:-18083}"
[[ -x "$PEERS_DIR/run-peers.sh" ]] || { echo "peers not found in $PEERS_DIR (set PEERS_DIR)" >&2; exit 1; }
[[ -x "$BIN" ]] || { echo "build the binary first (scripts/build.sh)" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"
for tool in wrk nginx haproxy; do command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install wrk nginx-light haproxy" >&2; exit 1; }; done

WORK="$(mktemp -d)"; chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
wait_listen() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
to_ms() { awk -v v="$1" 'BEGIN{ n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
  f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : -1; if (f < 0) { print "NaN"; exit } printf "%.3f", n * f }'; }

results=()
# Peers first (each starts and stops its own upstream).
for peer in nginx haproxy; do
  line="$("$PEERS_DIR/run-peers.sh" -c "$CONNS" -d "$DUR" -k "$NKEYS" "$peer" 2>"$WORK/$peer.err")" || { cat "$WORK/$peer.err" >&2; exit 1; }
  results+=("$line")
  echo "$line"
done

# The worker, with the same upstream configuration.
sed -e "s#@RUNDIR@#$WORK#g; s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" "$PEERS_DIR/nginx-upstream.conf" >"$WORK/upstream.conf"
nginx -e "$WORK/upstream.err" -c "$WORK/upstream.conf" -g 'daemon off;' >/dev/null 2>&1 &
PIDS+=($!)
wait_listen "$UPSTREAM_PORT" || { echo "upstream did not start" >&2; exit 1; }
python3 "$ROOT/bench/load/gen_worker_config.py" "$NKEYS" "http://127.0.0.1:$UPSTREAM_PORT" "$WORK/config.json" "$WORK/keys.txt"
KEY="$(sed -n "$(( (NKEYS + 1) / 2 ))p" "$WORK/keys.txt")"
ACCESS_LOG=off; [[ $LOG == on ]] && ACCESS_LOG="$WORK/access.log"
WORKER_ACCESS_LOG="$ACCESS_LOG" "$BIN" --log-level warn worker --listen "127.0.0.1:$WORKER_PORT" --admin-listen 127.0.0.1:0 \
  --threads 1 --config "$WORK/config.json" >"$WORK/worker.out" 2>"$WORK/worker.err" &
WPID=$!; PIDS=("$WPID" "${PIDS[@]}")
wait_listen "$WORKER_PORT" || { cat "$WORK/worker.err" >&2; exit 1; }
for _ in $(seq 1 50); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $KEY" "http://127.0.0.1:$WORKER_PORT/")"
  [[ $code == 200 ]] && break; sleep 0.1
done
[[ $code == 200 ]] || { echo "worker: valid key -> $code" >&2; cat "$WORK/worker.err" >&2; exit 1; }
bad="$(curl -s -o /dev/null -w '%{http_code}' -H 'X-API-Key: k_not_a_valid_key' "http://127.0.0.1:$WORKER_PORT/")"
[[ $bad == 401 ]] || { echo "worker: invalid key -> $bad" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
t0="$(ticks "$WPID")"
out="$(timeout $((DUR + 30)) wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -H "X-API-Key: $KEY" "http://127.0.0.1:$WORKER_PORT/")"
t1="$(ticks "$WPID")"
rps="$(echo "$out" | awk '/^Requests\/sec:/{print $2}')"
p50="$(to_ms "$(echo "$out" | awk '$1=="50%"{print $2}')")"
p99="$(to_ms "$(echo "$out" | awk '$1=="99%"{print $2}')")"
reqs="$(echo "$out" | awk '/requests in/{print $1}')"
if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then echo "$out" | grep -E 'Non-2xx|Socket errors' >&2; fi
echo "antigravity $rps $p50 $p99"
awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" \
  'BEGIN{printf "antigravity: %.2f CPU-us/request\n", (b-a)*1e6/hz/n}' >&2
rss="$(awk '/VmRSS/{print $2}' "/proc/$WPID/status")"
echo "antigravity RSS after run: ${rss} kB (access log: $LOG)" >&2
nginx_rps="$(echo "${results[0]}" | awk '{print $2}')"
haproxy_rps="$(echo "${results[1]}" | awk '{print $2}')"
nginx_p99="$(echo "${results[0]}" | awk '{print $4}')"
awk -v w="$rps" -v n="$nginx_rps" -v h="$haproxy_rps" -v wp="$p99" -v np="$nginx_p99" \
  'BEGIN{printf "ratio req/s: %.2fx nginx, %.2fx haproxy; p99: %.2fx nginx\n", w/n, w/h, wp/np}'
