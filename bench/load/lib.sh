# shellcheck shell=bash
# Helpers shared by the load benchmarks (bench/load/gateway.sh, bench/load/compare.sh); sourced,
# not run. Everything here is loopback-only and side-effect free.

# wait_listen PORT [PID] [TRIES]: waits until 127.0.0.1:PORT accepts a connection, TRIES x 0.1 s
# (default 100); fails at once when PID is given and that process has exited.
wait_listen() {
  local i
  for ((i = 0; i < ${3:-100}; i++)); do
    if [[ -n "${2:-}" ]] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# port_free PORT: nothing accepts connections on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# to_ms VALUE: wrk's latency ("850.00us", "1.23ms", "2.01s", "1.00m") in milliseconds, 3 decimals.
to_ms() { awk -v v="$1" 'BEGIN{ n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
  f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1;
  if (f < 0) { print "NaN"; exit } printf "%.3f", n * f }'; }

# ticks PID...: user + system CPU time of the processes (all their threads), in clock ticks.
ticks() {
  local p sum=0 t
  for p in "$@"; do
    t="$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)"
    sum=$((sum + t))
  done
  echo "$sum"
}

# median_of: the median of the numbers on stdin, one a line.
median_of() { sort -g | awk '{a[NR]=$1} END{if (NR == 0) print "NaN"; else print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
