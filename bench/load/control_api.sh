#!/usr/bin/env bash
# Control API throughput: starts `antigravity control` on a throwaway database, then loads it with
# wrk on loopback and prints one line per scenario:
#     DB SCENARIO req_per_s p50_ms p99_ms cpu_us_per_request
# Scenarios: user-read (GET /projects/{id} with a user's Bearer access token), agent-read (the
# same with X-Agent-Token of an admin agent of the projects' organisation), list (GET /projects,
# 20 projects), config (GET /internal/worker/config), write (PATCH /projects/{id}).
# Usage: bench/load/control_api.sh [-d SECONDS] [-c CONNECTIONS] [sqlite|postgres]
#   postgres needs AG_BENCH_PG_URL=postgresql://user@host:port/db (an empty database).
# Loopback only; stops what it started.
set -euo pipefail
DUR=5 CONNS=16
while getopts "d:c:h" o; do
  case "$o" in d) DUR="$OPTARG" ;; c) CONNS="$OPTARG" ;; *) sed -n '2,11p' "$0"; exit 2 ;; esac
done
shift $((OPTIND - 1))
DB="${1:-sqlite}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${AG_BIN:-$ROOT/build/antigravity}"
command -v wrk >/dev/null || { echo "wrk is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
WORK="$(mktemp -d)"
PID=""
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

export ENV=development JWT_SECRET_KEY="$(head -c 48 /dev/urandom | base64 | tr -d '/+=' | head -c 48)"
export WORKER_SECRET_KEY="$(head -c 48 /dev/urandom | base64 | tr -d '/+=' | head -c 48)"
# The agent-read scenario sends one agent's calls as fast as wrk can; the default limit
# (20 calls per 60 s per agent) would answer nearly all of them 429.
export AGENT_RATE_LIMIT=1000000000
if [[ $DB == postgres ]]; then
  : "${AG_BENCH_PG_URL:?set AG_BENCH_PG_URL}"
  export DATABASE_URL="$AG_BENCH_PG_URL"
else
  export DATABASE_URL="sqlite://$WORK/bench.db"
fi
(cd "$WORK" && exec "$BIN" --log-level warn control --listen 127.0.0.1:0 2>"$WORK/log" & echo $! >"$WORK/pid")
sleep 0.2; PID="$(cat "$WORK/pid")"
# --log-level warn hides the listening line; find the port from /proc instead.
PORT=""
for _ in $(seq 1 50); do
  PORT="$(ss -ltnpH 2>/dev/null | awk -v pid="pid=$PID," '$0 ~ pid {split($4,a,":"); print a[length(a)]; exit}')"
  [[ -n $PORT ]] && break; sleep 0.1
done
[[ -n $PORT ]] || { echo "control plane did not start:" >&2; cat "$WORK/log" >&2; exit 1; }
B="http://127.0.0.1:$PORT"

TOKEN="$(curl -sf -X POST "$B/auth/register" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"bench-password-1"}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["access_token"])')"
# A personal organisation has no agents, so the projects go in a shared one.
ORG="$(curl -sf -X POST "$B/organizations" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"name":"bench"}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["id"])')"
for i in $(seq 1 20); do
  PROJECT="$(curl -sf -X POST "$B/projects" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"name\":\"p$i\",\"upstream_base_url\":\"http://127.0.0.1:9/\",\"organization_id\":\"$ORG\"}" | python3 -c 'import sys,json;print(json.load(sys.stdin)["id"])')"
  curl -sf -X POST "$B/projects/$PROJECT/keys" -H "authorization: Bearer $TOKEN" >/dev/null
done
AGENT="$(curl -sf -X POST "$B/organizations/$ORG/agents" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"name":"bench","role":"admin"}' | python3 -c 'import sys,json;print(json.load(sys.stdin)["token"])')"
# One call first: each control-plane process runs the slow hash once per agent token (~50 ms of
# CPU, control/service/agent_tokens.hpp) and then checks it from memory; the scenario measures the
# steady state, not 16 connections all paying that first check at once.
curl -sf -H "X-Agent-Token: $AGENT" "$B/agents/me" >/dev/null

cat >"$WORK/patch.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  return wrk.format("PATCH", "/projects/$PROJECT", {["Authorization"]="Bearer $TOKEN", ["Content-Type"]="application/json"},
    '{"rate_limit":{"requests_per_minute":' .. (100 + n % 1000) .. '}}')
end
LUA
cat >"$WORK/report.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.1f %.2f %.2f %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status))
end
LUA
# The control plane's CPU (utime + stime from /proc, in clock ticks) so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
run() {  # name, extra wrk args...
  local name="$1"; shift
  local out before after
  before="$(cpu_ticks)"
  out="$(wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s "$WORK/report.lua" "$@" 2>&1 | grep '^RESULT')" || true
  after="$(cpu_ticks)"
  set -- $out
  # CPU µs per request: the control plane's own, whatever the load generator's share of the cores.
  local cpu
  cpu="$(awk -v t=$((after - before)) -v us="$TICK_US" -v rps="${2:-0}" -v d="$DUR" \
    'BEGIN { n = rps * d; printf "%.0f", (n > 0 ? t * us / n : 0) }')"
  echo "$DB $name ${2:-0} ${3:-0} ${4:-0} ${cpu}$([[ ${5:-0} != 0 ]] && echo " (non-2xx: $5)")"
}
run user-read -H "Authorization: Bearer $TOKEN" "$B/projects/$PROJECT"
run agent-read -H "X-Agent-Token: $AGENT" "$B/projects/$PROJECT"
run list -H "Authorization: Bearer $TOKEN" "$B/projects"
run config -H "x-worker-secret: $WORKER_SECRET_KEY" "$B/internal/worker/config"
# The write scenario needs its own script for the body; wrk accepts one -s, so merge them.
cat "$WORK/report.lua" >>"$WORK/patch.lua"
out="$(wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s "$WORK/patch.lua" "$B" 2>&1 | grep '^RESULT')" || true
set -- $out
echo "$DB write ${2:-0} ${3:-0} ${4:-0} -$([[ ${5:-0} != 0 ]] && echo " (non-2xx: $5)")"
