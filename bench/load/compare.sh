#!/usr/bin/env bash
# One-run comparison of the Antigravity worker with nginx (and HAProxy) on loopback: the figures
# of the performance issue, from one invocation. Same job for everyone: 10,000 API keys, a rate
# limit that never triggers, keep-alive to one nginx upstream that answers "ok\n". The worker runs
# with its access log on (to a file in the work dir) and the risk engine on (shadow mode).
#   1. throughput: per round nginx and HAProxy (../shared/bench/peers/run-peers.sh), then the
#      worker (1 thread) loaded twice: API key on / and an ES256 service token on /bench/up/;
#      wrk -t1; req/s, p50, p99, CPU-us/request, ratios per round; medians over the rounds
#   2. fixed rate: F req/s in total offered by h2load (--rps per connection, not a closed loop)
#      to nginx and to the worker (key); p50/p99/p99.9 computed from h2load's per-request log
#   3. threads: wrk -t2 against nginx with worker_processes 1 and 2 and the worker with
#      --threads 1 and 2 (all four measured again in this phase, back to back)
#   4. (-I) user-space instructions per request under valgrind's callgrind: (Ir(N) - Ir(0)) / N
#   5. (-p 5) an https:// upstream: the same nginx upstream behind TLS (a certificate from a CA
#      made here with openssl), nginx proxying with proxy_ssl_verify and the worker with
#      WORKER_UPSTREAM_CA_FILE, keep-alive on both; wrk -t1 in alternating rounds
#   6. (-p 6) the floor: bench/load/floor_proxy.c, a byte forwarder with no parsing, auth, limits
#      or logs (edge-triggered epoll, and io_uring), in alternating rounds with nginx and the
#      worker on the same upstream: what a proxy that does no work at all reaches here
#   the worker's idle RSS (10,000-key config, before any load) and its RSS after phases 1-2
# Ends with a summary block. Everything binds 127.0.0.1; every run is bounded in time; only the
# processes this script started are stopped (also on Ctrl-C and on failure).
#
# Usage: bench/load/compare.sh [-c CONNS] [-d SECONDS] [-r ROUNDS] [-F RPS] [-D SECONDS] [-P PROCS]
#                              [-I] [-N REQUESTS] [-k NKEYS] [-p PHASES]
#   -c: connections, for wrk and h2load (default 64)
#   -d: seconds per wrk run, phases 1, 3, 5 and 6 (default 8)
#   -r: rounds of phases 1, 2, 5 and 6 (default 3)
#   -F: the fixed offered rate of phase 2, req/s in total (default 20000)
#   -D: seconds measured at the fixed rate, after 1 s of warm-up (default 5)
#   -P: h2load processes sharing the -c connections at the fixed rate (default 8; see docs)
#   -I: also phase 4, instructions per request (slow: four runs under valgrind)
#   -N: requests per instruction-count run (default 20000)
#   -k: API keys (default 10000)
#   -p: the phases to run, digits of 123456 (default 123, or 1234 with -I); RSS is always reported
# Env: PEERS_DIR (default ../shared/bench/peers beside the repo), AG_BIN, PORT_BASE (18080: the
#      upstream; +1 nginx, +2 HAProxy, +3 worker, +4 worker admin, +5 the TLS upstream, +6 and +7
#      the floor proxies, +10 the peers' own upstream), or UPSTREAM_PORT, NGINX_PORT, HAPROXY_PORT,
#      WORKER_PORT, ADMIN_PORT, TLS_UPSTREAM_PORT, FLOOR_EPOLL_PORT, FLOOR_URING_PORT,
#      PEER_UPSTREAM_PORT one by one; KEEP_WORKDIR=1 keeps the work dir (logs, wrk/h2load output, callgrind files)
set -euo pipefail
CONNS=64 DUR=8 ROUNDS=3 FRATE=20000 FDUR=5 FPROCS=8 INSTR=0 NREQ=20000 NKEYS=10000 PHASES=""
usage() { sed -n '2,40p' "$0"; exit 2; }
while getopts "c:d:r:F:D:P:IN:k:p:h" o; do
  case "$o" in
    c) CONNS="$OPTARG" ;; d) DUR="$OPTARG" ;; r) ROUNDS="$OPTARG" ;; F) FRATE="$OPTARG" ;;
    D) FDUR="$OPTARG" ;; P) FPROCS="$OPTARG" ;; I) INSTR=1 ;; N) NREQ="$OPTARG" ;;
    k) NKEYS="$OPTARG" ;; p) PHASES="$OPTARG" ;; *) usage ;;
  esac
done
shift $((OPTIND - 1))
(( $# == 0 )) || usage
[[ -n $PHASES ]] || { PHASES=123; (( INSTR )) && PHASES=1234; }
int_in() { if ! [[ $2 =~ ^[0-9]+$ ]] || (( $2 < $3 || $2 > $4 )); then echo "$1 must be $3..$4" >&2; exit 2; fi; }
int_in -c "$CONNS" 1 10000; int_in -d "$DUR" 1 300; int_in -r "$ROUNDS" 1 50; int_in -F "$FRATE" 1 10000000
int_in -D "$FDUR" 1 300; int_in -P "$FPROCS" 1 "$CONNS"; int_in -N "$NREQ" 1 100000000; int_in -k "$NKEYS" 1 10000000
[[ $PHASES =~ ^[1-6]+$ ]] || { echo "-p takes digits of 123456" >&2; exit 2; }
has_phase() { [[ $PHASES == *"$1"* ]]; }
(( CONNS >= 2 )) || ! has_phase 3 || { echo "phase 3 needs -c >= 2 (wrk -t2)" >&2; exit 2; }

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/bench/load/lib.sh"   # wait_listen, port_free, to_ms, ticks, median_of
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/bench/peers}"
BIN="${AG_BIN:-$ROOT/build/antigravity}"
PORT_BASE="${PORT_BASE:-18080}"
UPSTREAM_PORT="${UPSTREAM_PORT:-$PORT_BASE}"
NGINX_PORT="${NGINX_PORT:-$((PORT_BASE + 1))}"
HAPROXY_PORT="${HAPROXY_PORT:-$((PORT_BASE + 2))}"
WORKER_PORT="${WORKER_PORT:-$((PORT_BASE + 3))}"
ADMIN_PORT="${ADMIN_PORT:-$((PORT_BASE + 4))}"
TLS_UPSTREAM_PORT="${TLS_UPSTREAM_PORT:-$((PORT_BASE + 5))}"
FLOOR_EPOLL_PORT="${FLOOR_EPOLL_PORT:-$((PORT_BASE + 6))}"
FLOOR_URING_PORT="${FLOOR_URING_PORT:-$((PORT_BASE + 7))}"
PEER_UPSTREAM_PORT="${PEER_UPSTREAM_PORT:-$((UPSTREAM_PORT + 10))}"
export PATH="$PATH:/usr/sbin:/sbin"
log() { echo "compare: $*" >&2; }
die() { log "$*"; exit 1; }

[[ -x "$PEERS_DIR/run-peers.sh" ]] || die "peers not found in $PEERS_DIR (set PEERS_DIR)"
[[ -x "$BIN" ]] || die "build the binary first (scripts/build.sh)"
! has_phase 5 || command -v openssl >/dev/null || die "phase 5 needs openssl: apt-get install openssl"
for tool in wrk nginx haproxy curl; do command -v "$tool" >/dev/null || die "$tool missing: apt-get install wrk nginx-light haproxy curl"; done
/usr/bin/python3 -c 'import jwt, cryptography' 2>/dev/null || die "the token needs python3-jwt and python3-cryptography (apt-get install python3-jwt)"
# h2load (fixed rate, fixed request counts) and valgrind (-I) come from Debian; installed when missing.
need=()
if has_phase 2 || has_phase 4; then command -v h2load >/dev/null || need+=(nghttp2-client); fi
if has_phase 4; then command -v valgrind >/dev/null || need+=(valgrind); fi
if has_phase 6; then
  [[ -f /usr/include/liburing.h ]] || need+=(liburing-dev)
  command -v cc >/dev/null || need+=(gcc)
fi
if (( ${#need[@]} )); then
  SUDO=(); (( EUID == 0 )) || SUDO=(sudo)
  log "installing: ${need[*]}"
  { timeout 300 "${SUDO[@]}" apt-get update -qq &&
    timeout 600 "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2; } ||
    die "apt-get install ${need[*]} failed"
fi
for p in "$UPSTREAM_PORT" "$NGINX_PORT" "$HAPROXY_PORT" "$WORKER_PORT" "$ADMIN_PORT" "$TLS_UPSTREAM_PORT" \
         "$FLOOR_EPOLL_PORT" "$FLOOR_URING_PORT" "$PEER_UPSTREAM_PORT"; do
  port_free "$p" || die "127.0.0.1:$p is already in use (set PORT_BASE)"
done

# ---------------------------------------------------------------- processes, cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/compare.XXXXXX")"; chmod 755 "$WORK"   # nginx workers may run as nobody
PIDS=()   # everything this script started and has not stopped yet, newest first
track() { PIDS=("$1" "${PIDS[@]}"); }
untrack() { local p keep=(); for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; PIDS=("${keep[@]}"); }
cleanup() {
  local p
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && { log "PID $p did not stop; sending KILL"; kill -KILL "$p" 2>/dev/null || true; }
    wait "$p" 2>/dev/null || true
  done
  if [[ "${KEEP_WORKDIR:-0}" == 1 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# stop_pid PID [SECONDS]: TERM, then KILL after SECONDS (default 10); returns the process's status.
stop_pid() {
  local p="$1" i rc=0
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < ${2:-10} * 10; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then log "PID $p did not stop in ${2:-10}s; sending KILL"; kill -KILL "$p" 2>/dev/null || true; fi
  wait "$p" 2>/dev/null || rc=$?
  untrack "$p"
  return "$rc"
}
# run_wait OUT ERR CMD...: runs CMD in the background (so that a signal to this script is handled
# at once) and waits for it; returns its status.
run_wait() {
  local out="$1" err="$2" p rc=0
  shift 2
  "$@" >"$out" 2>"$err" &
  p=$!; track "$p"
  wait "$p" || rc=$?
  untrack "$p"
  return "$rc"
}
http_code() { curl -s -m 5 -o /dev/null -w '%{http_code}' "$@" || true; }
children() { cat "/proc/$1/task/$1/children" 2>/dev/null || true; }   # direct children, space-separated
rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
fmt() { awk -v v="$1" -v d="${2:-2}" 'BEGIN{ if (v == "" || v == "NaN") print "n/a"; else printf "%.*f", d, v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "" || a == "NaN" || b == "NaN" || b + 0 == 0) print "NaN"; else printf "%.2f", a / b }'; }
med() { printf '%s\n' "$@" | median_of; }

# ---------------------------------------------------------------- configs
render() {  # render TEMPLATE OUT PORT
  sed -e "s#@RUNDIR@#$WORK#g; s#@KEYDIR@#$WORK/keys#g; s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g; s#@PORT@#$3#g" "$1" >"$2"
}
render "$PEERS_DIR/nginx-upstream.conf" "$WORK/upstream.conf" "$UPSTREAM_PORT"
render "$PEERS_DIR/nginx-proxy.conf" "$WORK/nginx-proxy-1.conf" "$NGINX_PORT"
sed 's/^worker_processes 1;/worker_processes 2;/' "$WORK/nginx-proxy-1.conf" >"$WORK/nginx-proxy-2.conf"
grep -q '^worker_processes 2;' "$WORK/nginx-proxy-2.conf" || die "nginx-proxy.conf: no 'worker_processes 1;' line to change"
"$PEERS_DIR/gen-keys.sh" "$NKEYS" "$WORK/keys" 2>/dev/null   # the peers' keys (nginx map), as run-peers.sh does
NGINX_KEY="$(sed -n "$(( (NKEYS + 1) / 2 ))p" "$WORK/keys/keys.txt")"
/usr/bin/python3 "$ROOT/bench/load/gen_worker_config.py" "$NKEYS" "http://127.0.0.1:$UPSTREAM_PORT" \
  "$WORK/config.json" "$WORK/worker-keys.txt" --jwt "$WORK/token.txt"
WORKER_KEY="$(sed -n "$(( (NKEYS + 1) / 2 ))p" "$WORK/worker-keys.txt")"
KEY_HEADER="X-API-Key: $WORKER_KEY"
JWT_HEADER="Authorization: Bearer $(cat "$WORK/token.txt")"
NGINX_HEADER="X-API-Key: $NGINX_KEY"
WORKER_URL="http://127.0.0.1:$WORKER_PORT/"
JWT_URL="http://127.0.0.1:$WORKER_PORT/bench/up/"
NGINX_URL="http://127.0.0.1:$NGINX_PORT/"

# ---------------------------------------------------------------- servers
# The upstream of the worker and of the nginx started here (the peers of run-peers.sh bring their
# own on PEER_UPSTREAM_PORT). Native, one worker process, for the whole run.
nginx -e "$WORK/upstream.stderr.log" -c "$WORK/upstream.conf" -g 'daemon off;' >"$WORK/upstream.out" 2>&1 &
UPS_PID=$!; track "$UPS_PID"
wait_listen "$UPSTREAM_PORT" "$UPS_PID" || { cat "$WORK/upstream.out" "$WORK/upstream.stderr.log" >&2; die "upstream did not start"; }

WPID="" IDLE_RSS="" IDLE_RSS2=""
WCONFIG="$WORK/config.json"   # phase 5 switches it to the https:// upstream's config
# start_worker THREADS [WRAPPER...]: starts the worker (access log to $WORK/access.log, risk
# engine on), waits until it listens and is ready, records its idle RSS in IDLE_RSS, checks it.
start_worker() {
  local threads="$1" tries=100 code i
  shift
  (( $# )) && tries=1200   # under valgrind: slow start
  WORKER_ACCESS_LOG="$WORK/access.log" "$@" "$BIN" --log-level warn worker --listen "127.0.0.1:$WORKER_PORT" \
    --admin-listen "127.0.0.1:$ADMIN_PORT" --threads "$threads" --config "$WCONFIG" \
    >"$WORK/worker.out" 2>"$WORK/worker.err" &
  WPID=$!; track "$WPID"
  wait_listen "$WORKER_PORT" "$WPID" "$tries" || { cat "$WORK/worker.err" >&2; die "the worker did not start"; }
  for ((i = 0; i < tries; i++)); do
    [[ "$(http_code "http://127.0.0.1:$ADMIN_PORT/ready")" == 200 ]] && break; sleep 0.1
  done
  IDLE_RSS="$(rss_kb "$WPID")"   # config loaded, no request served yet
  code="$(http_code -H "$KEY_HEADER" "$WORKER_URL")"; [[ $code == 200 ]] || die "worker: valid key -> $code"
  code="$(http_code -H "$JWT_HEADER" "$JWT_URL")"; [[ $code == 200 ]] || die "worker: service token on /bench/up/ -> $code"
  code="$(http_code -H 'X-API-Key: k_not_a_valid_key' "$WORKER_URL")"; [[ $code == 401 ]] || die "worker: invalid key -> $code"
}
NPID=""
# start_nginx CONF [WRAPPER...]: the proxy nginx from a rendered copy of nginx-proxy.conf; checks it.
# With a wrapper (valgrind) it runs without a master process, so that the wrapped process serves.
start_nginx() {
  local conf="$1" tries=100 code g='daemon off;'
  shift
  (( $# )) && { tries=1200; g='master_process off; daemon off;'; }
  "$@" nginx -e "$WORK/nginx-proxy.stderr.log" -c "$conf" -g "$g" >"$WORK/nginx-proxy.out" 2>&1 &
  NPID=$!; track "$NPID"
  wait_listen "$NGINX_PORT" "$NPID" "$tries" || { cat "$WORK/nginx-proxy.out" "$WORK/nginx-proxy.stderr.log" >&2; die "nginx did not start"; }
  code="$(http_code -H "$NGINX_HEADER" "$NGINX_URL")"; [[ $code == 200 ]] || die "nginx: valid key -> $code"
  code="$(http_code -H 'X-API-Key: k_not_a_valid_key' "$NGINX_URL")"; [[ $code == 401 ]] || die "nginx: invalid key -> $code"
}
nginx_workers() {  # the worker processes of the proxy nginx (children of the master)
  local kids=""
  for _ in $(seq 1 50); do kids="$(children "$NPID")"; [[ -n $kids ]] && break; sleep 0.1; done
  [[ -n $kids ]] || die "nginx: no worker process"
  echo "$kids"
}

# ---------------------------------------------------------------- load generators
# load_wrk NAME THREADS URL HEADER PID...: one wrk run; sets L_RPS L_P50 L_P99 (ms) L_CPU
# (CPU-us per request of the PIDs together, from /proc). wrk's output: $WORK/wrk.NAME.out.
L_RPS="" L_P50="" L_P99="" L_CPU=""
load_wrk() {
  local name="$1" threads="$2" url="$3" hdr="$4" out="$WORK/wrk.$1.out" t0 t1 reqs
  shift 4
  t0="$(ticks "$@")"
  run_wait "$out" "$WORK/wrk.$name.err" timeout $((DUR + 30)) wrk -t"$threads" -c"$CONNS" -d"${DUR}s" --latency -H "$hdr" "$url" ||
    { cat "$out" "$WORK/wrk.$name.err" >&2; die "wrk failed ($name)"; }
  t1="$(ticks "$@")"
  L_RPS="$(awk '/^Requests\/sec:/{print $2}' "$out")"
  L_P50="$(to_ms "$(awk '$1=="50%"{print $2}' "$out")")"
  L_P99="$(to_ms "$(awk '$1=="99%"{print $2}' "$out")")"
  reqs="$(awk '/requests in/{print $1}' "$out")"
  L_CPU="$(awk -v a="$t0" -v b="$t1" -v n="${reqs:-0}" -v hz="$(getconf CLK_TCK)" 'BEGIN{ if (n > 0) printf "%.2f", (b-a)*1e6/hz/n; else print "NaN" }')"
  if grep -qE 'Non-2xx|Socket errors' "$out"; then log "WARNING ($name): $(grep -E 'Non-2xx|Socket errors' "$out" | tr -s ' ' | paste -sd';')"; fi
  if [[ $name == key.* || $name == jwt.* || $name == worker.* ]] && [[ ! -s "$WORK/access.log" ]]; then
    log "WARNING ($name): the worker's access log is empty"
  fi
  if [[ -f "$WORK/access.log" ]]; then : >"$WORK/access.log"; fi   # O_APPEND: truncating keeps the disk bounded
}

# load_nginx NAME CONF THREADS: one wrk run (load_wrk, wrk -tTHREADS) against a proxy nginx
# started from CONF for it and stopped after; sets load_wrk's L_* figures.
load_nginx() {
  start_nginx "$2"
  NW="$(nginx_workers)"
  # shellcheck disable=SC2086  # one PID a word
  load_wrk "$1" "$3" "$NGINX_URL" "$NGINX_HEADER" $NW
  stop_pid "$NPID" || true
}

# fixed_rate NAME URL HEADER: FRATE req/s in total for FDUR s (after 1 s of warm-up), spread over
# CONNS connections of FPROCS h2load processes (h2load --rps is per connection; its timers of one
# process fire together, so one process would send bursts of all its connections at once).
# Sets F_N (requests logged), F_BAD (not 200), F_RATE (achieved, req/s), F_P50 F_P99 F_P999 (ms).
F_N="" F_BAD="" F_RATE="" F_P50="" F_P99="" F_P999=""
fixed_rate() {
  local name="$1" url="$2" hdr="$3" rate i c p rc=0 pids=()
  rate="$(awk -v f="$FRATE" -v c="$CONNS" 'BEGIN{printf "%.4f", f / c}')"
  rm -f "$WORK/fr.$name".*
  for ((i = 0; i < FPROCS; i++)); do
    c=$(( CONNS / FPROCS + (i < CONNS % FPROCS ? 1 : 0) ))
    timeout $((FDUR + 31)) h2load --h1 -c "$c" --rps "$rate" -D "$FDUR" --warm-up-time 1 \
      --log-file "$WORK/fr.$name.$i.tsv" -H "$hdr" "$url" >"$WORK/fr.$name.$i.out" 2>&1 &
    pids+=("$!"); track "$!"
  done
  for p in "${pids[@]}"; do wait "$p" || rc=$?; untrack "$p"; done
  (( rc == 0 )) || { tail -n 5 "$WORK/fr.$name".*.out >&2; die "h2load failed ($name)"; }
  if [[ -f "$WORK/access.log" ]]; then : >"$WORK/access.log"; fi
  # The log's columns: start time (us since the epoch), status (-1: failed), us to the end of the
  # response. Percentiles by nearest rank over the 200 responses.
  read -r F_N F_BAD F_P50 F_P99 F_P999 < <(cat "$WORK/fr.$name".*.tsv |
    awk -F'\t' '{ n++; if ($2 == 200) print $3; else bad++ } END{ print "#", n + 0, bad + 0 }' | sort -g |
    awk '$1 == "#" { n = $2; bad = $3; next } { v[++k] = $1 }
         function pct(p,  i) { i = int(p * k); if (i < p * k) i++; if (i < 1) i = 1; return (k ? v[i] / 1000 : "NaN") }
         END{ printf "%d %d %.3f %.3f %.3f\n", n, bad, pct(0.5), pct(0.99), pct(0.999) }')
  F_RATE="$(awk -v n="$F_N" -v b="$F_BAD" -v d="$FDUR" 'BEGIN{printf "%.0f", (n - b) / d}')"
  awk -v a="$F_RATE" -v f="$FRATE" 'BEGIN{exit !(a < 0.95 * f)}' &&
    log "WARNING ($name): achieved $F_RATE req/s of the $FRATE offered: the latencies are not at the offered rate"
  (( F_BAD == 0 )) || log "WARNING ($name): $F_BAD of $F_N requests failed or were not 200"
}

# count_requests N URL HEADER: exactly N requests, 8 connections (h2load -n); fails unless all 2xx.
count_requests() {
  local out="$WORK/count.out"
  run_wait "$out" "$WORK/count.err" timeout 900 h2load --h1 -n "$1" -c 8 -H "$3" "$2" ||
    { tail -n 5 "$out" "$WORK/count.err" >&2; die "h2load -n $1 failed"; }
  grep -q "^status codes: $1 2xx" "$out" || { grep -E '^(requests|status codes):' "$out" >&2; die "h2load -n $1: not all 2xx"; }
}

# ================================================================ run
hr() { printf '%s\n' "---- $*"; }
row() { printf '  %-14s %10s %8s %8s %11s\n' "$@"; }
log "work dir $WORK; ports: upstream $UPSTREAM_PORT, nginx $NGINX_PORT, haproxy $HAPROXY_PORT, worker $WORKER_PORT (admin $ADMIN_PORT)"
start_worker 1
IDLE_RSS1="$IDLE_RSS"
echo "worker idle RSS (1 thread, $NKEYS keys, config loaded, before any request): $IDLE_RSS1 kB"

# ---------------------------------------------------------------- 1. throughput
NG_RPS=() HA_RPS=() WK_RPS=() WJ_RPS=() NG_P50=() HA_P50=() WK_P50=() WJ_P50=() NG_P99=() HA_P99=() WK_P99=() WJ_P99=()
NG_CPU=() HA_CPU=() WK_CPU=() WJ_CPU=() R_KN=() R_KH=() R_JN=() R_P99=()
P_RPS="" P_P50="" P_P99="" P_CPU=""
run_peer() {  # nginx|haproxy -> P_RPS P_P50 P_P99 P_CPU
  local peer="$1" out="$WORK/peer.$1.out" err="$WORK/peer.$1.err" rc=0 line
  run_wait "$out" "$err" env UPSTREAM_PORT="$PEER_UPSTREAM_PORT" NGINX_PORT="$NGINX_PORT" HAPROXY_PORT="$HAPROXY_PORT" \
    "$PEERS_DIR/run-peers.sh" -c "$CONNS" -d "$DUR" -k "$NKEYS" "$peer" || rc=$?
  line="$(grep "^$peer " "$out" || true)"
  if [[ -z $line ]] || (( rc != 0 && rc != 3 )); then grep -v '^wrk: ' "$err" >&2 || true; die "run-peers.sh $peer failed ($rc)"; fi
  (( rc == 3 )) && log "WARNING ($peer): $(grep WARNING "$err" || true)"
  read -r _ P_RPS P_P50 P_P99 <<<"$line"
  P_CPU="$(sed -n 's/^run-peers: measured process: \([0-9.]*\) CPU-us\/request.*/\1/p' "$err")"
  P_CPU="${P_CPU:-NaN}"
}
if has_phase 1; then
  hr "1. throughput: wrk -t1 -c$CONNS -d${DUR}s, one process / one thread each, $ROUNDS round(s)"
  for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS"
    row "" "req/s" "p50 ms" "p99 ms" "CPU-us/req"
    run_peer nginx
    NG_RPS+=("$P_RPS"); NG_P50+=("$P_P50"); NG_P99+=("$P_P99"); NG_CPU+=("$P_CPU")
    row nginx "$P_RPS" "$P_P50" "$P_P99" "$P_CPU"
    run_peer haproxy
    HA_RPS+=("$P_RPS"); HA_P50+=("$P_P50"); HA_P99+=("$P_P99"); HA_CPU+=("$P_CPU")
    row haproxy "$P_RPS" "$P_P50" "$P_P99" "$P_CPU"
    load_wrk "key.$round" 1 "$WORKER_URL" "$KEY_HEADER" "$WPID"
    WK_RPS+=("$L_RPS"); WK_P50+=("$L_P50"); WK_P99+=("$L_P99"); WK_CPU+=("$L_CPU")
    row "worker key" "$L_RPS" "$L_P50" "$L_P99" "$L_CPU"
    load_wrk "jwt.$round" 1 "$JWT_URL" "$JWT_HEADER" "$WPID"
    WJ_RPS+=("$L_RPS"); WJ_P50+=("$L_P50"); WJ_P99+=("$L_P99"); WJ_CPU+=("$L_CPU")
    row "worker jwt" "$L_RPS" "$L_P50" "$L_P99" "$L_CPU"
    R_KN+=("$(ratio "${WK_RPS[-1]}" "${NG_RPS[-1]}")"); R_KH+=("$(ratio "${WK_RPS[-1]}" "${HA_RPS[-1]}")")
    R_JN+=("$(ratio "${WJ_RPS[-1]}" "${NG_RPS[-1]}")"); R_P99+=("$(ratio "${WK_P99[-1]}" "${NG_P99[-1]}")")
    echo "  req/s: worker-key/nginx ${R_KN[-1]}x, worker-key/haproxy ${R_KH[-1]}x, worker-jwt/nginx ${R_JN[-1]}x; p99 worker-key/nginx ${R_P99[-1]}x"
  done
  echo "median over $ROUNDS round(s)"
  row "" "req/s" "p50 ms" "p99 ms" "CPU-us/req"
  row nginx "$(med "${NG_RPS[@]}")" "$(med "${NG_P50[@]}")" "$(med "${NG_P99[@]}")" "$(med "${NG_CPU[@]}")"
  row haproxy "$(med "${HA_RPS[@]}")" "$(med "${HA_P50[@]}")" "$(med "${HA_P99[@]}")" "$(med "${HA_CPU[@]}")"
  row "worker key" "$(med "${WK_RPS[@]}")" "$(med "${WK_P50[@]}")" "$(med "${WK_P99[@]}")" "$(med "${WK_CPU[@]}")"
  row "worker jwt" "$(med "${WJ_RPS[@]}")" "$(med "${WJ_P50[@]}")" "$(med "${WJ_P99[@]}")" "$(med "${WJ_CPU[@]}")"
  M_KN="$(med "${R_KN[@]}")" M_KH="$(med "${R_KH[@]}")" M_JN="$(med "${R_JN[@]}")" M_P99="$(med "${R_P99[@]}")"
  echo "  median of the per-round ratios: worker-key/nginx ${M_KN}x, worker-key/haproxy ${M_KH}x, worker-jwt/nginx ${M_JN}x; p99 worker-key/nginx ${M_P99}x"
  S_THROUGHPUT="throughput (median of $ROUNDS round(s), 1 thread, wrk -t1 -c$CONNS -d${DUR}s): worker key $(fmt "$(med "${WK_RPS[@]}")" 0) req/s = ${M_KN}x nginx, ${M_KH}x haproxy; worker jwt $(fmt "$(med "${WJ_RPS[@]}")" 0) req/s = ${M_JN}x nginx"
  S_CPU="CPU-us/request (median): worker key $(med "${WK_CPU[@]}"), worker jwt $(med "${WJ_CPU[@]}"), nginx $(med "${NG_CPU[@]}"), haproxy $(med "${HA_CPU[@]}")"
fi

# ---------------------------------------------------------------- 2. fixed rate
if has_phase 2; then
  # Rounds alternate nginx and the worker (as phase 1): one window of a few seconds says little on
  # a shared machine; the summary gives the medians over the rounds and the median per-round ratio.
  hr "2. fixed rate: $FRATE req/s offered for ${FDUR}s (+1 s warm-up), h2load --h1, $CONNS connections in $FPROCS processes, $ROUNDS round(s)"
  printf '  %-5s %-12s %9s %9s %8s %8s %8s\n' round "" "requests" "req/s" "p50 ms" "p99 ms" "p99.9 ms"
  FN50=() FN99=() FN999=() FW50=() FW99=() FW999=() FR99=() FNR=() FWR=()
  for ((round = 1; round <= ROUNDS; round++)); do
    start_nginx "$WORK/nginx-proxy-1.conf"
    fixed_rate nginx "$NGINX_URL" "$NGINX_HEADER"
    stop_pid "$NPID" || true
    printf '  %-5s %-12s %9s %9s %8s %8s %8s\n' "$round" nginx "$F_N" "$F_RATE" "$F_P50" "$F_P99" "$F_P999"
    FN50+=("$F_P50"); FN99+=("$F_P99"); FN999+=("$F_P999"); FNR+=("$F_RATE")
    fixed_rate worker "$WORKER_URL" "$KEY_HEADER"
    printf '  %-5s %-12s %9s %9s %8s %8s %8s\n' "$round" "worker key" "$F_N" "$F_RATE" "$F_P50" "$F_P99" "$F_P999"
    FW50+=("$F_P50"); FW99+=("$F_P99"); FW999+=("$F_P999"); FWR+=("$F_RATE")
    FR99+=("$(ratio "$F_P99" "${FN99[-1]}")")
  done
  echo "  medians: p50 worker $(med "${FW50[@]}") / nginx $(med "${FN50[@]}") ms, p99 $(med "${FW99[@]}") / $(med "${FN99[@]}") ms, p99.9 $(med "${FW999[@]}") / $(med "${FN999[@]}") ms; median per-round p99 ratio $(med "${FR99[@]}")"
  S_FIXED="fixed rate $FRATE req/s (h2load, ${FDUR}s x $ROUNDS rounds, medians): p99 worker $(med "${FW99[@]}") ms, nginx $(med "${FN99[@]}") ms, per-round ratio $(med "${FR99[@]}") (p50 $(med "${FW50[@]}") / $(med "${FN50[@]}") ms, p99.9 $(med "${FW999[@]}") / $(med "${FN999[@]}") ms; achieved $(med "${FWR[@]}") / $(med "${FNR[@]}") req/s)"
fi

AFTER_RSS="$(rss_kb "$WPID")"
AFTER_WHAT="the runs of phases 1-2"; has_phase 1 || has_phase 2 || AFTER_WHAT="start, no load"
echo "worker RSS after $AFTER_WHAT (1 thread): $AFTER_RSS kB"

# ---------------------------------------------------------------- 3. threads
if has_phase 3; then
  hr "3. threads: wrk -t2 -c$CONNS -d${DUR}s, all four measured here, back to back (upstream: one nginx process)"
  row "" "req/s" "p50 ms" "p99 ms" "CPU-us/req"
  declare -A T_RPS=()
  for n in 1 2; do
    load_nginx "nginx.t$n" "$WORK/nginx-proxy-$n.conf" 2
    T_RPS[nginx$n]="$L_RPS"
    row "nginx $n proc" "$L_RPS" "$L_P50" "$L_P99" "$L_CPU"
  done
  load_wrk "worker.t1" 2 "$WORKER_URL" "$KEY_HEADER" "$WPID"
  T_RPS[worker1]="$L_RPS"
  row "worker 1 thr" "$L_RPS" "$L_P50" "$L_P99" "$L_CPU"
  stop_pid "$WPID" 30 || log "WARNING: the worker exited with status $?"
  start_worker 2
  IDLE_RSS2="$IDLE_RSS"
  load_wrk "worker.t2" 2 "$WORKER_URL" "$KEY_HEADER" "$WPID"
  T_RPS[worker2]="$L_RPS"
  row "worker 2 thr" "$L_RPS" "$L_P50" "$L_P99" "$L_CPU"
  echo "  worker idle RSS with 2 threads: $IDLE_RSS2 kB"
  S_THREADS="threads (wrk -t2, measured in phase 3): worker 1->2: $(fmt "${T_RPS[worker1]}" 0) -> $(fmt "${T_RPS[worker2]}" 0) req/s ($(ratio "${T_RPS[worker2]}" "${T_RPS[worker1]}")x); nginx 1->2: $(fmt "${T_RPS[nginx1]}" 0) -> $(fmt "${T_RPS[nginx2]}" 0) req/s ($(ratio "${T_RPS[nginx2]}" "${T_RPS[nginx1]}")x)"
fi
stop_pid "$WPID" 30 || log "WARNING: the worker exited with status $?"

# ---------------------------------------------------------------- 4. instructions per request
# callgrind: Ir, instructions executed in user space by the process (kernel work not counted);
# deterministic, so one run each. Ir(0) = start, one check request per credential, stop.
cg_total() { awk '/^totals:/{print $2; f=1} END{exit !f}' "$1" 2>/dev/null || awk '/^summary:/{print $2}' "$1"; }
CG_IR=""
cg_run() {  # cg_run worker|nginx N -> CG_IR
  local who="$1" n="$2" out="$WORK/callgrind.$1.$2.out" vg pid
  vg=(valgrind --tool=callgrind --callgrind-out-file="$out")
  if [[ $who == worker ]]; then
    start_worker 1 "${vg[@]}"; pid="$WPID"
    (( n == 0 )) || count_requests "$n" "$WORKER_URL" "$KEY_HEADER"
  else
    start_nginx "$WORK/nginx-proxy-1.conf" "${vg[@]}"; pid="$NPID"
    (( n == 0 )) || count_requests "$n" "$NGINX_URL" "$NGINX_HEADER"
  fi
  stop_pid "$pid" 120 || die "$who under valgrind exited with status $? (callgrind output not reliable)"
  CG_IR="$(cg_total "$out")" || true
  [[ -n $CG_IR ]] || die "no callgrind totals in $out"
  if [[ -f "$WORK/access.log" ]]; then : >"$WORK/access.log"; fi
}
# perf, when the hardware counter works (not in most VMs): user and kernel instructions of the
# native process while it serves N requests.
PERF_EVENTS="${PERF_EVENTS:-instructions:u,instructions:k}"
perf_ok() {
  local out
  command -v perf >/dev/null || return 1
  out="$(perf stat -x, -e "$PERF_EVENTS" true 2>&1 >/dev/null)" || return 1
  ! grep -qE '<not (supported|counted)>' <<<"$out"
}
PERF_PER_REQ=""
perf_run() {  # perf_run N URL HEADER PID... -> PERF_PER_REQ ("event=count/N ...")
  local n="$1" url="$2" hdr="$3" pp pids
  shift 3
  pids="$(tr ' ' ',' <<<"$*")"
  perf stat -x, -e "$PERF_EVENTS" -p "$pids" -o "$WORK/perf.out" >/dev/null 2>"$WORK/perf.err" &
  pp=$!; track "$pp"; sleep 0.5
  count_requests "$n" "$url" "$hdr"
  kill -INT "$pp" 2>/dev/null || true
  wait "$pp" 2>/dev/null || true; untrack "$pp"
  PERF_PER_REQ="$(awk -F, -v n="$n" '$1 ~ /^[0-9.]+$/ { v = $1 / n; printf (v < 100 ? "%s%s %.3f" : "%s%s %.0f"), sep, $3, v; sep = ", " }' "$WORK/perf.out")"
}
if has_phase 4; then
  hr "4. instructions per request: callgrind (user space only), $NREQ requests with h2load -n $NREQ -c 8, minus a run with none"
  declare -A IR=()
  for who in worker nginx; do
    for n in 0 "$NREQ"; do
      cg_run "$who" "$n"; IR[$who.$n]="$CG_IR"
      echo "  $who: Ir($n) = $CG_IR"
    done
  done
  IPR_W="$(awk -v a="${IR[worker.$NREQ]}" -v b="${IR[worker.0]}" -v n="$NREQ" 'BEGIN{printf "%.0f", (a - b) / n}')"
  IPR_N="$(awk -v a="${IR[nginx.$NREQ]}" -v b="${IR[nginx.0]}" -v n="$NREQ" 'BEGIN{printf "%.0f", (a - b) / n}')"
  echo "  user-space instructions/request: worker $IPR_W, nginx $IPR_N (ratio $(ratio "$IPR_W" "$IPR_N")x)"
  S_INSTR="instructions/request (callgrind, user space only): worker $IPR_W, nginx $IPR_N, ratio $(ratio "$IPR_W" "$IPR_N")"
  if perf_ok; then
    start_worker 1
    perf_run "$NREQ" "$WORKER_URL" "$KEY_HEADER" "$WPID"; PW="$PERF_PER_REQ"
    stop_pid "$WPID" 30 || true
    start_nginx "$WORK/nginx-proxy-1.conf"
    NW="$(nginx_workers)"
    # shellcheck disable=SC2086  # one PID a word
    perf_run "$NREQ" "$NGINX_URL" "$NGINX_HEADER" $NW; PN="$PERF_PER_REQ"
    stop_pid "$NPID" || true
    echo "  perf stat per request: worker $PW; nginx $PN"
    S_INSTR+=$'\n'"  perf stat per request (native): worker $PW; nginx $PN"
  else
    echo "  perf: $PERF_EVENTS not supported here (VM without hardware counters): callgrind only"
  fi
fi

# ---------------------------------------------------------------- 5. https upstream
if has_phase 5; then
  hr "5. https:// upstream: wrk -t1 -c$CONNS -d${DUR}s, one process / one thread each, keep-alive to a TLS nginx upstream, $ROUNDS round(s)"
  T="$WORK/tls"; mkdir -p "$T"
  { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=compare CA" \
      -keyout "$T/ca.key" -out "$T/ca.pem" &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" -keyout "$T/up.key" -out "$T/up.csr" &&
    printf 'subjectAltName=IP:127.0.0.1\n' >"$T/ext.cnf" &&
    openssl x509 -req -in "$T/up.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial -days 2 \
      -extfile "$T/ext.cnf" -out "$T/up.pem"; } >"$T/openssl.log" 2>&1 || { cat "$T/openssl.log" >&2; die "openssl failed"; }
  # The upstream of phase 1 with TLS on its listener (own pid and log files).
  sed -e "s#listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;#listen 127.0.0.1:$TLS_UPSTREAM_PORT ssl backlog=4096; ssl_certificate $T/up.pem; ssl_certificate_key $T/up.key;#" \
      -e "s#nginx-upstream\.pid#nginx-upstream-tls.pid#; s#nginx-upstream\.error\.log#nginx-upstream-tls.error.log#" \
      "$WORK/upstream.conf" >"$WORK/upstream-tls.conf"
  grep -q " ssl backlog" "$WORK/upstream-tls.conf" || die "upstream.conf: no listen line to change"
  nginx -e "$WORK/upstream-tls.stderr.log" -c "$WORK/upstream-tls.conf" -g 'daemon off;' >"$WORK/upstream-tls.out" 2>&1 &
  TUPS_PID=$!; track "$TUPS_PID"
  wait_listen "$TLS_UPSTREAM_PORT" "$TUPS_PID" || { cat "$WORK/upstream-tls.out" "$WORK/upstream-tls.stderr.log" >&2; die "TLS upstream did not start"; }
  # nginx: the proxy config of phase 1 pointed at it, verifying its certificate, sessions reused.
  sed -e "s#server 127.0.0.1:$UPSTREAM_PORT;#server 127.0.0.1:$TLS_UPSTREAM_PORT;#" \
      -e "s#proxy_pass http://backend;#proxy_pass https://backend; proxy_ssl_verify on; proxy_ssl_trusted_certificate $T/ca.pem; proxy_ssl_name 127.0.0.1; proxy_ssl_session_reuse on;#" \
      "$WORK/nginx-proxy-1.conf" >"$WORK/nginx-proxy-tls.conf"
  grep -q "proxy_pass https" "$WORK/nginx-proxy-tls.conf" || die "nginx-proxy.conf: no proxy_pass line to change"
  /usr/bin/python3 "$ROOT/bench/load/gen_worker_config.py" "$NKEYS" "https://127.0.0.1:$TLS_UPSTREAM_PORT" \
    "$WORK/config-tls.json" "$WORK/worker-keys-tls.txt" --jwt "$WORK/token-tls.txt" >/dev/null
  PLAIN=("$WCONFIG" "$KEY_HEADER" "$JWT_HEADER")
  WCONFIG="$WORK/config-tls.json"
  WORKER_KEY="$(sed -n "$(( (NKEYS + 1) / 2 ))p" "$WORK/worker-keys-tls.txt")"
  KEY_HEADER="X-API-Key: $WORKER_KEY"; JWT_HEADER="Authorization: Bearer $(cat "$WORK/token-tls.txt")"
  export WORKER_UPSTREAM_CA_FILE="$T/ca.pem"
  start_worker 1
  row "" "req/s" "p50 ms" "p99 ms" "CPU-us/req"
  TN_RPS=() TW_RPS=() TN_CPU=() TW_CPU=() TR=()
  for round in $(seq 1 "$ROUNDS"); do
    load_nginx "nginx.tls.$round" "$WORK/nginx-proxy-tls.conf" 1
    TN_RPS+=("$L_RPS"); TN_CPU+=("$L_CPU")
    row "nginx https" "$L_RPS" "$L_P50" "$L_P99" "$L_CPU"
    load_wrk "worker.tls.$round" 1 "$WORKER_URL" "$KEY_HEADER" "$WPID"
    TW_RPS+=("$L_RPS"); TW_CPU+=("$L_CPU")
    row "worker https" "$L_RPS" "$L_P50" "$L_P99" "$L_CPU"
    TR+=("$(ratio "${TW_RPS[-1]}" "${TN_RPS[-1]}")")
    echo "  round $round: worker/nginx ${TR[-1]}x"
  done
  stop_pid "$WPID" 30 || log "WARNING: the worker exited with status $?"
  unset WORKER_UPSTREAM_CA_FILE
  WCONFIG="${PLAIN[0]}" KEY_HEADER="${PLAIN[1]}" JWT_HEADER="${PLAIN[2]}"
  S_TLS="https:// upstream (median of $ROUNDS round(s), wrk -t1): worker $(fmt "$(med "${TW_RPS[@]}")" 0) req/s, nginx $(fmt "$(med "${TN_RPS[@]}")" 0) req/s, per-round ratio $(med "${TR[@]}")x; CPU-us/request worker $(med "${TW_CPU[@]}"), nginx $(med "${TN_CPU[@]}")"
fi

# ---------------------------------------------------------------- 6. the floor
if has_phase 6; then
  hr "6. the floor: wrk -t1 -c$CONNS -d${DUR}s, one thread each, the same upstream, $ROUNDS round(s): nginx, floor_proxy (epoll, io_uring), worker key"
  cc -O2 -o "$WORK/floor_proxy" "$ROOT/bench/load/floor_proxy.c" -luring 2>"$WORK/floor_proxy.cc.log" ||
    { cat "$WORK/floor_proxy.cc.log" >&2; die "floor_proxy.c did not compile"; }
  declare -A FL_PID=()
  FL_MODES=()
  for mode in epoll uring; do
    port="$FLOOR_EPOLL_PORT"; [[ $mode == uring ]] && port="$FLOOR_URING_PORT"
    "$WORK/floor_proxy" "$mode" "$port" "$UPSTREAM_PORT" >"$WORK/floor.$mode.out" 2>&1 &
    FL_PID[$mode]=$!; track "$!"
    if ! wait_listen "$port" "${FL_PID[$mode]}"; then
      cat "$WORK/floor.$mode.out" >&2
      [[ $mode == uring ]] || die "floor_proxy $mode did not start"
      log "WARNING: floor_proxy uring did not start (io_uring not available here?): epoll only"
      stop_pid "${FL_PID[$mode]}" || true; unset "FL_PID[$mode]"; continue
    fi
    code="$(http_code "http://127.0.0.1:$port/")"; [[ $code == 200 ]] || die "floor_proxy $mode: GET / -> $code"
    FL_MODES+=("$mode")
  done
  start_worker 1
  row "" "req/s" "p50 ms" "p99 ms" "CPU-us/req"
  FE=() FU=() FW=() FN=() RFE=() RFU=() RFW=() RWF=() CFE=() CFU=() CFW=() CFN=()
  for round in $(seq 1 "$ROUNDS"); do
    load_nginx "nginx.floor.$round" "$WORK/nginx-proxy-1.conf" 1
    FN+=("$L_RPS"); CFN+=("$L_CPU"); row nginx "$L_RPS" "$L_P50" "$L_P99" "$L_CPU"
    load_wrk "floor.epoll.$round" 1 "http://127.0.0.1:$FLOOR_EPOLL_PORT/" "$NGINX_HEADER" "${FL_PID[epoll]}"
    FE+=("$L_RPS"); CFE+=("$L_CPU"); row "floor epoll" "$L_RPS" "$L_P50" "$L_P99" "$L_CPU"
    if [[ -n ${FL_PID[uring]:-} ]]; then
      load_wrk "floor.uring.$round" 1 "http://127.0.0.1:$FLOOR_URING_PORT/" "$NGINX_HEADER" "${FL_PID[uring]}"
      FU+=("$L_RPS"); CFU+=("$L_CPU"); row "floor io_uring" "$L_RPS" "$L_P50" "$L_P99" "$L_CPU"
    fi
    load_wrk "worker.floor.$round" 1 "$WORKER_URL" "$KEY_HEADER" "$WPID"
    FW+=("$L_RPS"); CFW+=("$L_CPU"); row "worker key" "$L_RPS" "$L_P50" "$L_P99" "$L_CPU"
    RFE+=("$(ratio "${FE[-1]}" "${FN[-1]}")"); RFU+=("$(ratio "${FU[-1]:-}" "${FN[-1]}")")
    RFW+=("$(ratio "${FW[-1]}" "${FN[-1]}")"); RWF+=("$(ratio "${FW[-1]}" "${FE[-1]}")")
    echo "  round $round: x nginx: floor epoll ${RFE[-1]}, floor io_uring ${RFU[-1]}, worker ${RFW[-1]}; worker/floor epoll ${RWF[-1]}"
  done
  stop_pid "$WPID" 30 || log "WARNING: the worker exited with status $?"
  for mode in "${FL_MODES[@]}"; do stop_pid "${FL_PID[$mode]}" || true; done
  S_FLOOR="the floor (median per-round ratios to nginx, $ROUNDS round(s), wrk -t1): floor_proxy epoll $(med "${RFE[@]}")x, io_uring $(med "${RFU[@]}")x, worker key $(med "${RFW[@]}")x (worker/floor epoll $(med "${RWF[@]}")x); CPU-us/request nginx $(med "${CFN[@]}"), floor epoll $(med "${CFE[@]}"), io_uring $(med "${CFU[@]}"), worker $(med "${CFW[@]}")"
fi

# ---------------------------------------------------------------- summary
echo
echo "==== summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $NKEYS keys, worker: access log on, risk engine on) ===="
echo "${S_THROUGHPUT:-throughput: not run (-p)}"
[[ -n ${S_CPU:-} ]] && echo "  $S_CPU"
echo "${S_FIXED:-fixed rate: not run (-p)}"
echo "${S_THREADS:-threads: not run (-p)}"
echo "${S_INSTR:-instructions/request: not run (-I)}"
[[ -n ${S_TLS:-} ]] && echo "$S_TLS"
[[ -n ${S_FLOOR:-} ]] && echo "$S_FLOOR"
echo "idle RSS: worker $IDLE_RSS1 kB (1 thread; after $AFTER_WHAT: $AFTER_RSS kB${IDLE_RSS2:+; idle with 2 threads: $IDLE_RSS2 kB})"
