#!/usr/bin/env bash
# Side-by-side load benchmark: the Antigravity worker against nginx and HAProxy doing the same job
# (10,000 API keys, a rate limit that never triggers, keep-alive to one nginx upstream that answers
# "ok\n"), one worker process/thread each, wrk on loopback. Prints one line per gateway:
#     NAME req_per_s p50_ms p99_ms
# then the worker's ratios to nginx. Everything binds 127.0.0.1 and is stopped at the end.
#
# Usage: bench/load/gateway.sh [-R on|off] [-a key|jwt] [-c CONNECTIONS] [-d SECONDS] [-k NKEYS] [-l on|off] [-r ROUNDS]
#   -R: the worker's risk engine (default on: the default policy, in shadow mode)
#   -a: how the worker is called: an API key (default), or an ES256 service token on a service
#       route (/bench/up/, verified once and then served from the worker's token cache); the
#       peers always do their API-key job
#   -l: the worker's access log (to a file in the work dir); default on
#   -r: rounds; each round runs nginx, haproxy and the worker back to back, and the ratios are
#       computed per round (the machine is shared: compare within a round, report the median)
# Env: PEERS_DIR (default ../shared/bench/peers beside the repo), AG_BIN, UPSTREAM_PORT (18080),
#      WORKER_PORT (18083)
set -euo pipefail
CONNS=64 DUR=10 NKEYS=10000 LOG=on ROUNDS=1 AUTH=key RISK=on
while getopts "R:a:c:d:k:l:r:h" o; do
  case "$o" in R) RISK="$OPTARG" ;; a) AUTH="$OPTARG" ;; c) CONNS="$OPTARG" ;; d) DUR="$OPTARG" ;; k) NKEYS="$OPTARG" ;; l) LOG="$OPTARG" ;; r) ROUNDS="$OPTARG" ;; *) sed -n '2,21p' "$0"; exit 2 ;; esac
done
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/bench/peers}"
BIN="${AG_BIN:-$ROOT/build/antigravity}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18080}"
WORKER_PORT="${WORKER_PORT:-18083}"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/bench/load/lib.sh"   # wait_listen, to_ms, ticks, median_of
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

run_peer() {  # nginx|haproxy -> "NAME rps p50 p99"
  "$PEERS_DIR/run-peers.sh" -c "$CONNS" -d "$DUR" -k "$NKEYS" "$1" 2>"$WORK/$1.err" || { cat "$WORK/$1.err" >&2; exit 1; }
}

# The worker, with the same upstream configuration, started once and loaded once per round.
sed -e "s#@RUNDIR@#$WORK#g; s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" "$PEERS_DIR/nginx-upstream.conf" >"$WORK/upstream.conf"
nginx -e "$WORK/upstream.err" -c "$WORK/upstream.conf" -g 'daemon off;' >/dev/null 2>&1 &
PIDS+=($!)
wait_listen "$UPSTREAM_PORT" || { echo "upstream did not start" >&2; exit 1; }
JWT_ARGS=(); [[ $AUTH == jwt ]] && JWT_ARGS=(--jwt "$WORK/token.txt")
[[ $RISK == off ]] && JWT_ARGS+=(--risk-off)
/usr/bin/python3 "$ROOT/bench/load/gen_worker_config.py" "$NKEYS" "http://127.0.0.1:$UPSTREAM_PORT" "$WORK/config.json" "$WORK/keys.txt" "${JWT_ARGS[@]}"
KEY="$(sed -n "$(( (NKEYS + 1) / 2 ))p" "$WORK/keys.txt")"
# The credential header and path the worker is loaded with.
AUTH_HEADER="X-API-Key: $KEY"; WPATH=/
[[ $AUTH == jwt ]] && { AUTH_HEADER="Authorization: Bearer $(cat "$WORK/token.txt")"; WPATH=/bench/up/; }
ACCESS_LOG=off; [[ $LOG == on ]] && ACCESS_LOG="$WORK/access.log"
WORKER_ACCESS_LOG="$ACCESS_LOG" "$BIN" --log-level warn worker --listen "127.0.0.1:$WORKER_PORT" --admin-listen 127.0.0.1:0 \
  --threads 1 --config "$WORK/config.json" >"$WORK/worker.out" 2>"$WORK/worker.err" &
WPID=$!; PIDS=("$WPID" "${PIDS[@]}")
wait_listen "$WORKER_PORT" || { cat "$WORK/worker.err" >&2; exit 1; }
for _ in $(seq 1 50); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH_HEADER" "http://127.0.0.1:$WORKER_PORT$WPATH")"
  [[ $code == 200 ]] && break; sleep 0.1
done
[[ $code == 200 ]] || { echo "worker: valid key -> $code" >&2; cat "$WORK/worker.err" >&2; exit 1; }
bad="$(curl -s -o /dev/null -w '%{http_code}' -H 'X-API-Key: k_not_a_valid_key' "http://127.0.0.1:$WORKER_PORT/")"
[[ $bad == 401 ]] || { echo "worker: invalid key -> $bad" >&2; exit 1; }
run_worker() {
t0="$(ticks "$WPID")"
out="$(timeout $((DUR + 30)) wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -H "$AUTH_HEADER" "http://127.0.0.1:$WORKER_PORT$WPATH")"
t1="$(ticks "$WPID")"
rps="$(echo "$out" | awk '/^Requests\/sec:/{print $2}')"
p50="$(to_ms "$(echo "$out" | awk '$1=="50%"{print $2}')")"
p99="$(to_ms "$(echo "$out" | awk '$1=="99%"{print $2}')")"
reqs="$(echo "$out" | awk '/requests in/{print $1}')"
if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then echo "$out" | grep -E 'Non-2xx|Socket errors' >&2; fi
echo "antigravity $rps $p50 $p99"
awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" \
  'BEGIN{printf "antigravity: %.2f CPU-us/request\n", (b-a)*1e6/hz/n}' >&2
}

# The worker keeps running between rounds, so stop its upstream only at the end; the peers bring
# their own upstream on the same port, so ours is paused (SIGSTOP would keep the port): instead the
# peers run on a different upstream port.
ratios=()
for round in $(seq 1 "$ROUNDS"); do
  n="$(UPSTREAM_PORT=$((UPSTREAM_PORT + 10)) run_peer nginx)"; echo "$n"
  grep -h 'measured process' "$WORK/nginx.err" | sed 's/^run-peers: measured process:/nginx:/' >&2
  h="$(UPSTREAM_PORT=$((UPSTREAM_PORT + 10)) run_peer haproxy)"; echo "$h"
  w="$(run_worker)"; echo "$w"
  r="$(awk -v w="$(echo "$w" | awk '{print $2}')" -v n="$(echo "$n" | awk '{print $2}')" -v h="$(echo "$h" | awk '{print $2}')" \
        -v wp="$(echo "$w" | awk '{print $4}')" -v np="$(echo "$n" | awk '{print $4}')" \
        'BEGIN{printf "%.2f %.2f %.2f", w/n, w/h, wp/np}')"
  # shellcheck disable=SC2086  # split on purpose: three ratios
  set -- $r
  echo "round $round: req/s $1x nginx, $2x haproxy; p99 $3x nginx"
  ratios+=("$1")
done
rss="$(awk '/VmRSS/{print $2}' "/proc/$WPID/status")"
echo "antigravity RSS after the runs: ${rss} kB (access log: $LOG, auth: $AUTH, risk engine: $RISK)" >&2
median="$(printf '%s\n' "${ratios[@]}" | median_of)"
echo "median ratio req/s over $ROUNDS round(s): ${median}x nginx"

