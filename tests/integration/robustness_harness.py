"""Helpers for the robustness suites (test_faults.py, test_hostile_clients.py,
test_secret_hygiene.py, test_authz_matrix.py).

- `LoadGenerator`: client threads issuing requests continuously (keep-alive or one connection per
  request), recording every outcome (status or connection error) with its time and latency.
- `QuietUpstream`: worker_harness.Upstream on an optional fixed port (to bring it back on the port
  the worker knows) that does not record the load's requests (memory stays flat under load).
- `RawUpstream`: a raw TCP backend that misbehaves on purpose: never reads, never answers, sends a
  head and part of a body then resets or stalls.
- `RedisServer`: redis-server on a fixed loopback port that can be killed and started again.
- `start_worker_at`: `antigravity worker` on a given public port (two workers can share one with
  SO_REUSEPORT); `start_control_at`: the control plane on a given port and database.
- Metrics parsing, RSS sampling, `report` (prints measured figures to stderr).

Standard library only.
"""

import atexit
import hashlib
import http.client
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import harness as h
import worker_harness as wh

# Variables the worker or control plane read that worker_harness.WORKER_VARS does not clear.
EXTRA_VARS = ("WORKER_SNAPSHOT_PATH", "WORKER_SNAPSHOT_INTERVAL_SEC", "WORKER_SNAPSHOT_MAX_AGE_SEC",
              "WORKER_ID", "WORKER_CONFIG_DIR", "WORKER_USAGE_REPORT_SEC", "WORKER_MAX_CONNECTIONS",
              "GATEWAY_JWT_ALG", "GATEWAY_JWT_SECRET", "GATEWAY_JWT_AUDIENCE", "GATEWAY_JWT_ISSUER",
              "GATEWAY_JWT_LEEWAY_SEC")
NO_LIMIT = {"requests_per_minute": 1000000, "burst": 100000}
MB = 1024 * 1024


def report(fmt, *args):
    """Prints a measured figure (kept in ctest's output)."""
    sys.stderr.write(("\n    [measured] " + fmt + "\n") % args)
    sys.stderr.flush()


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


# ---------------------------------------------------------------------------------------------
# Processes


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found")


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


class RssSampler:
    """Samples a process's VmRSS (kB) every 20 ms in a thread; .peak is the maximum seen."""

    def __init__(self, pid):
        self.pid = pid
        self.start = self.peak = rss_kb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss_kb(self.pid))
            except (OSError, RuntimeError):
                return

    def stop(self):
        self._stop.set()
        self._thread.join(2)
        try:
            self.peak = max(self.peak, rss_kb(self.pid))
        except (OSError, RuntimeError):
            pass
        return self.peak


def metric_sum(text, name, label_filter=None):
    """Sum of every sample of metric `name` (optionally only samples whose label set contains
    `label_filter`); None when the metric is absent."""
    total = None
    rx = re.compile(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(name))
    for line in text.splitlines():
        m = rx.match(line)
        if not m:
            continue
        if label_filter and label_filter not in (m.group(1) or ""):
            continue
        total = (total or 0.0) + float(m.group(2))
    return total


def worker_metric(worker, name, label_filter=None):
    return metric_sum(worker.metrics(), name, label_filter)


_worker_dirs = []


def _cleanup_workers():
    """At exit: stop the workers started here and remove their working directories."""
    for worker in list(wh._live_workers):
        try:
            worker.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    if os.environ.get("AG_TEST_KEEP") != "1":
        for d in _worker_dirs:
            shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup_workers)


def start_worker_at(port, config_path=None, control_url=None, secret=None, env_extra=None,
                    threads=2, timeout=wh.START_TIMEOUT_SEC):
    """Like worker_harness.start_worker, but the public listener is 127.0.0.1:`port` (0 = any).
    The admin listener is on a free port. Returns a worker_harness.Worker (stopped at exit)."""
    extra = {v: None for v in EXTRA_VARS}
    if control_url is not None:
        extra["CONTROL_API_BASE_URL"] = control_url
    if secret is not None:
        extra["CONTROL_WORKER_SHARED_SECRET"] = secret
    extra.update(env_extra or {})
    env = wh.worker_env(extra)
    cmd = [wh.AG_BIN, "worker", "--listen", "127.0.0.1:%d" % port, "--admin-listen", "127.0.0.1:0",
           "--threads", str(threads)]
    if config_path is not None:
        cmd += ["--config", config_path]
    workdir = tempfile.mkdtemp(prefix="ag-rworker-")
    _worker_dirs.append(workdir)
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = wh._Output(proc)
    worker = wh.Worker(proc, out, env, workdir)
    wh._live_workers.append(worker)

    def check():
        public = admin = None
        for line in out.stderr_lines:
            public = public or wh.LISTEN_RE.search(line)
            admin = admin or wh.ADMIN_LISTEN_RE.search(line)
        return (public, admin) if public and admin else None

    deadline = time.monotonic() + timeout
    found = None
    while time.monotonic() < deadline:
        found = out.wait(check, 0.2)
        if found or proc.poll() is not None:
            break
    if not found:
        found = check()
    if not found:
        exited = proc.poll()
        worker.stop()
        raise RuntimeError("worker on port %d did not report both listeners within %.0fs (exit %r); "
                           "stderr:\n%s" % (port, timeout, exited, worker.stderr[-3000:]))
    worker.port = int(found[0].group(1))
    worker.admin_port = int(found[1].group(1))
    return worker


def wait_ready(worker, timeout=10.0):
    ready = worker.wait_ready(timeout)
    if ready is None or ready.status != 200:
        raise AssertionError("worker not ready: %r\n%s" % (ready, worker.stderr[-3000:]))


def start_control_at(port, workdir, db_url, env_extra=None, timeout=h.START_TIMEOUT_SEC):
    """`antigravity control` on 127.0.0.1:`port` against `db_url` (SQLite), for restarts on the
    same address and database. The caller owns `workdir` and the database."""
    env = h.base_env(dict({"DATABASE_URL": db_url}, **(env_extra or {})))
    cmd = [h.AG_BIN, "control", "--listen", "127.0.0.1:%d" % port]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    collector = h.OutputCollector(proc)
    db_path = db_url[len("sqlite:///"):] if db_url.startswith("sqlite:///") else None
    server = h.ControlServer(proc, collector, workdir, False, port, env, "sqlite", db_url, db_path,
                             None, None)
    h._live_servers.append(server)
    deadline = time.monotonic() + timeout
    found = None
    while found is None and time.monotonic() < deadline:
        found = collector.wait_for(h.LISTEN_RE, 0.2)
        if found is None and proc.poll() is not None:
            collector.join()
            found = collector.wait_for(h.LISTEN_RE, 0)
            break
    if found is None:
        exited = proc.poll()
        server.stop(drop_database=False)
        raise RuntimeError("control plane did not listen on port %d within %.0fs (exit %r):\n%s"
                           % (port, timeout, exited, collector.text))
    return server


# ---------------------------------------------------------------------------------------------
# Upstreams


class _NoDelayHandler(wh._UpstreamHandler):
    # The base handler writes the head and the body in two send()s: with Nagle on, the body
    # waits for the worker's delayed ACK (~40 ms per request). Load tests want the real rate.
    disable_nagle_algorithm = True


class QuietUpstream(wh.Upstream):
    """worker_harness.Upstream (same routes) on an optional fixed port; requests whose path
    contains "/load" are counted, not recorded."""

    def __init__(self, port=0):
        self._lock = threading.Lock()
        self._requests = []
        self._conns = set()
        self._stop = threading.Event()
        self._ws_sessions = 0
        self.load_count = 0
        self._server = wh._UpstreamServer(("127.0.0.1", port), _NoDelayHandler)
        self._server.upstream = self
        self.port = self._server.server_address[1]
        self.host = "127.0.0.1"
        self.url = "http://127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _record(self, record):
        with self._lock:
            if "/load" in record["path"]:
                self.load_count += 1
            else:
                self._requests.append(record)


class RawUpstream:
    """A raw TCP backend on 127.0.0.1 (thread per connection).

    mode "blackhole": accepts and never reads nor answers.
    mode "routes" (default): reads the request head, then by path:
      /ok               200 JSON, keep-alive
      /hang             never answers (until the peer closes)
      /reset-cl         200 with Content-Length: 1000000, 64 KiB of it, then RST
      /reset-chunked    200 chunked, 4 chunks of 16 KiB, then RST (no last chunk)
      /stall-cl         200 with Content-Length: 1000000, 64 KiB of it, then silence
    Every request head seen is appended to .seen (path strings)."""

    BODY_TOTAL = 1000000
    PARTIAL = 65536

    def __init__(self, mode="routes", port=0):
        self.mode = mode
        self.seen = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _wait_peer_close(self, conn):
        conn.settimeout(0.1)
        while not self._stop.is_set():
            try:
                if conn.recv(65536) == b"":
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    @staticmethod
    def _rst(conn):
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        except OSError:
            pass

    def _serve(self, conn):
        try:
            if self.mode == "blackhole":
                self._stop.wait()
                return
            buf = b""
            conn.settimeout(30)
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = line.split(" ")
                path = parts[1] if len(parts) > 1 else ""
                with self._lock:
                    self.seen.append(path)
                # bodies are not expected on these routes (GET)
                if path.startswith("/hang") or "/hang" in path:
                    self._wait_peer_close(conn)
                    return
                if "/reset-cl" in path or "/stall-cl" in path:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Content-Length: %d\r\nX-Upstream: raw\r\n\r\n" % self.BODY_TOTAL)
                    conn.sendall(b"r" * self.PARTIAL)
                    time.sleep(0.05)
                    if "/reset-cl" in path:
                        self._rst(conn)
                    else:
                        self._wait_peer_close(conn)
                    return
                if "/reset-chunked" in path:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\nX-Upstream: raw\r\n\r\n")
                    for _ in range(4):
                        conn.sendall(b"4000\r\n" + b"c" * 0x4000 + b"\r\n")
                    time.sleep(0.05)
                    self._rst(conn)
                    return
                body = b'{"ok":true}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Upstream: raw\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def matching(self, fragment):
        with self._lock:
            return [p for p in self.seen if fragment in p]

    def stop(self):
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# Redis


def redis_command(port, *args, timeout=2.0):
    """Sends one RESP command; returns the raw reply bytes (None when unreachable)."""
    payload = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        payload += b"$%d\r\n%s\r\n" % (len(a), a)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(payload)
            data = b""
            s.settimeout(timeout)
            while True:
                chunk = s.recv(65536)
                data += chunk
                if not chunk or data.endswith(b"\r\n"):
                    # good enough for the small replies we ask for
                    if data.startswith(b"*") or data.startswith(b"$"):
                        time.sleep(0.02)
                        try:
                            s.settimeout(0.05)
                            more = s.recv(65536)
                            data += more
                        except (socket.timeout, OSError):
                            pass
                    return data
    except OSError:
        return None


class RedisServer:
    """redis-server on a fixed loopback port, no persistence; kill() and start() again."""

    def __init__(self, port=None):
        self.port = port or wh.free_port()
        self.dir = tempfile.mkdtemp(prefix="ag-redis-")
        self.url = "redis://127.0.0.1:%d" % self.port
        self.proc = None
        self.start()

    def start(self, timeout=10.0):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            reply = redis_command(self.port, "PING", timeout=1)
            if reply and reply.startswith(b"+PONG"):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError("redis-server did not start on port %d" % self.port)
            time.sleep(0.05)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def keys(self, pattern):
        reply = redis_command(self.port, "KEYS", pattern) or b""
        return re.findall(rb"\$\d+\r\n([^\r\n]*)\r\n", reply)

    def stop(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Load


class LoadGenerator:
    """`threads` client threads sending GET `path` to host:port continuously.

    keepalive=True: one persistent connection per thread (reopened after any error or a
    `Connection: close` answer); False: a new connection per request (`Connection: close`).
    retry_stale=True: a request on a reused keep-alive connection that fails before any response
    byte is retried once on a new connection (what HTTP clients do for idempotent requests); the
    retry is counted in .retries and only the retried outcome is recorded.
    Every outcome is recorded as (t_start, t_end, status or "E:<exception name>")."""

    def __init__(self, host, port, path, headers=None, threads=3, keepalive=True, interval=0.003,
                 timeout=10.0, retry_stale=False, name="load"):
        self.host, self.port, self.path = host, port, path
        self.headers = dict(headers or {})
        self.keepalive = keepalive
        self.interval = interval
        self.timeout = timeout
        self.retry_stale = retry_stale
        self.name = name
        self.events = []
        self.details = []  # (time, status, first 200 bytes of the body) of every non-2xx answer
        self.retries = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        self._counter = 0

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self

    def _path(self, i):
        with self._lock:
            self._counter += 1
            n = self._counter
        sep = "&" if "?" in self.path else "?"
        return "%s%st=%d&n=%d" % (self.path, sep, i, n)

    def _one(self, conn, i):
        """One exchange on `conn`; returns the status (raises on connection errors)."""
        hdrs = dict(self.headers)
        if not self.keepalive:
            hdrs["Connection"] = "close"
        conn.request("GET", self._path(i), headers=hdrs)
        resp = conn.getresponse()
        body = resp.read()
        if not 200 <= resp.status < 300:
            with self._lock:
                self.details.append((time.monotonic(), resp.status, body[:200]))
        return resp.status, resp.will_close

    def _run(self, i):
        conn = None
        reused = False
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                reused = False
            t0 = time.monotonic()
            try:
                try:
                    status, will_close = self._one(conn, i)
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                        ConnectionAbortedError):
                    if not (self.retry_stale and reused):
                        raise
                    # stale keep-alive connection: no response byte was received; retry once
                    with self._lock:
                        self.retries += 1
                    conn.close()
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                    reused = False
                    status, will_close = self._one(conn, i)
                outcome = status
                if will_close or not self.keepalive:
                    conn.close()
                    conn = None
                else:
                    reused = True
            except Exception as exc:  # noqa: BLE001 - every failure is an outcome
                outcome = "E:" + type(exc).__name__
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
                conn = None
            t1 = time.monotonic()
            with self._lock:
                self.events.append((t0, t1, outcome))
            if isinstance(outcome, str):
                self._stop.wait(0.01)
            elif self.interval:
                self._stop.wait(self.interval)
        if conn is not None:
            conn.close()

    # -- results ---------------------------------------------------------------------------

    def window(self, t_from=None, t_to=None):
        """Events that started in [t_from, t_to)."""
        with self._lock:
            ev = list(self.events)
        return [e for e in ev if (t_from is None or e[0] >= t_from) and (t_to is None or e[0] < t_to)]

    @staticmethod
    def failures(events):
        return [e for e in events if not (isinstance(e[2], int) and 200 <= e[2] < 300)]

    @staticmethod
    def summary(events):
        counts = {}
        for e in events:
            counts[e[2]] = counts.get(e[2], 0) + 1
        lat = [(e[1] - e[0]) * 1000 for e in events]
        return {"n": len(events), "counts": counts,
                "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
                "max_ms": max(lat) if lat else float("nan")}

    @staticmethod
    def describe(events):
        s = LoadGenerator.summary(events)
        return "%d requests, outcomes %r, latency p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (
            s["n"], s["counts"], s["p50_ms"], s["p99_ms"], s["max_ms"])


def sha256_stream(total, chunk=MB, seed=b"ag"):
    """A generator of `total` pseudo-random bytes in `chunk`-sized pieces, and a function that
    returns the SHA-256 of what was generated (call after the generator is exhausted)."""
    block = hashlib.sha256(seed).digest() * (chunk // 32 + 1)
    block = block[:chunk]
    digest = hashlib.sha256()
    state = {"sent": 0}

    def gen():
        left = total
        i = 0
        while left > 0:
            n = min(left, chunk)
            piece = bytes([i % 251]) + block[1:n]
            digest.update(piece)
            state["sent"] += n
            left -= n
            i += 1
            yield piece

    return gen(), lambda: (state["sent"], digest.hexdigest())
