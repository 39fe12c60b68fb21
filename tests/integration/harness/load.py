"""Client load: threads sending requests continuously and recording every outcome, and large
generated request bodies."""

import hashlib
import http.client
import threading
import time

from .common import MB, percentile

# A project rate limit no load test reaches.
NO_LIMIT = {"requests_per_minute": 1000000, "burst": 100000}


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
