"""Hostile and abusive clients against the real worker (docs/worker.md "Per request").

- Slowloris: many connections sending their headers one byte every 100 ms get 408 or are closed
  within WORKER_HEADER_TIMEOUT_SEC, while a normal client keeps getting prompt 200s.
- Oversized headers (64 KiB and more, up to a 1 MiB header stream): 431, bounded memory.
- Bodies over the project's max_body_bytes: 413 (declared, streamed, chunked), the upstream never
  gets the whole body; a 200 MB chunked upload within the limit streams through with bounded RSS.
- Many idle connections (up to 10,000, as far as RLIMIT_NOFILE allows): normal clients still get
  prompt 200s; the memory each idle connection costs is measured.
- Pipelined requests with garbage in the middle: the valid ones before it are answered in order,
  then 400 and the connection is closed; nothing after the garbage reaches the upstream.
- Overload (docs/worker.md): past WORKER_MAX_CONNECTIONS, new connections get an immediate
  `503 {"detail":"Server overloaded"}` with `Retry-After: 1` and `Connection: close` while the
  existing connections keep working; past WORKER_MAX_MEMORY_MB (resident memory, driven up with
  idle connections) new connections are shed the same way, and shedding stops once the memory's
  users are gone.

The worker's RSS (VmRSS) before and after each scenario is printed with "[measured]".

Run: /usr/bin/python3 tests/integration/test_hostile_clients.py
Environment: see the harness (AG_BIN, AG_TEST_KEEP).
"""

import errno
import http.client
import json
import os
import random
import resource
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as wh  # noqa: E402
import harness as rh  # noqa: E402
from harness import report, MB  # noqa: E402

HEADER_TIMEOUT_SEC = 2
SMALL_BODY_LIMIT = 1 * MB
BIG_BODY_LIMIT = 512 * MB
UPLOAD_BYTES = 200 * MB
RSS_GROWTH_LIMIT_KB = 64 * 1024
IDLE_TARGET = 10000
MAX_CONNECTIONS = 50
OVERLOADED = "Server overloaded"


def marker(prefix="m"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def linger_rst(sock):
    """Close with RST (no TIME_WAIT on our side: thousands of connections per run)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def read_until_closed(sock, timeout):
    """Reads until EOF/RST; returns ("eof"|"rst"|"timeout", bytes)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", data
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return "timeout", data
        except ConnectionResetError:
            return "rst", data
        if not chunk:
            return "eof", data
        data += chunk


class NormalClient(threading.Thread):
    """A well-behaved client on one keep-alive connection, requesting continuously."""

    def __init__(self, worker, key, path="/normal", interval=0.01):
        super().__init__(daemon=True)
        self.worker, self.key, self.path, self.interval = worker, key, path, interval
        self.results = []  # (status or error, latency seconds)
        self._halt = threading.Event()

    def run(self):
        conn = None
        n = 0
        while not self._halt.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=10)
            t0 = time.monotonic()
            try:
                n += 1
                conn.request("GET", "%s?n=%d" % (self.path, n), headers={"X-API-Key": self.key})
                resp = conn.getresponse()
                resp.read()
                outcome = resp.status
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001
                outcome = "E:" + type(exc).__name__
                conn.close()
                conn = None
            self.results.append((outcome, time.monotonic() - t0))
            self._halt.wait(self.interval)
        if conn is not None:
            conn.close()

    def finish(self):
        self._halt.set()
        self.join(15)
        lat = [r[1] * 1000 for r in self.results]
        return {"n": len(self.results), "bad": [r for r in self.results if r[0] != 200],
                "p50": rh.percentile(lat, 50), "p99": rh.percentile(lat, 99),
                "max": max(lat) if lat else float("nan")}


class HostileTestCase(unittest.TestCase):
    def rss(self):
        return rh.rss_kb(self.worker.pid)

    def report_rss(self, what, before, after, peak=None):
        report("%s: worker RSS before %d kB, after %d kB%s", what, before, after,
               (", peak %d kB" % peak) if peak is not None else "")

    def assertNormalStillServed(self, stats, what, max_ms=500):
        report("%s: normal client %d requests, p50 %.2f ms, p99 %.2f ms, max %.2f ms, failures %d",
               what, stats["n"], stats["p50"], stats["p99"], stats["max"], len(stats["bad"]))
        self.assertGreater(stats["n"], 10, "%s: the normal client barely ran" % what)
        self.assertEqual(stats["bad"][:10], [], "%s: the normal client got failures" % what)
        self.assertLess(stats["max"], max_ms, "%s: a normal request took %.0f ms" % (what, stats["max"]))

    def assertWorkerFine(self):
        self.assertTrue(self.worker.alive(), "the worker died:\n" + self.worker.stderr[-2000:])
        resp = self.worker.request("GET", "/after", key=self.key, timeout=5)
        self.assertEqual(resp.status, 200, repr(resp))


# =============================================================================================


class HostileClientsTest(HostileTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = rh.QuietUpstream()
        cls.addClassCleanup(cls.upstream.stop)
        cls.workdir = tempfile.mkdtemp(prefix="ag-hostile-")
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)
        cls.config = os.path.join(cls.workdir, "worker-config.json")
        cls.key = wh.make_key()[0]
        cls.small_key = wh.make_key()[0]
        cls.big_key = wh.make_key()[0]
        wh.write_config(cls.config, [
            wh.project_entry(cls.upstream.url, [wh.key_entry(cls.key)], 1000000, 100000),
            wh.project_entry(cls.upstream.url, [wh.key_entry(cls.small_key)], 1000000, 100000,
                             max_body_bytes=SMALL_BODY_LIMIT),
            wh.project_entry(cls.upstream.url, [wh.key_entry(cls.big_key)], 1000000, 100000,
                             max_body_bytes=BIG_BODY_LIMIT),
        ])
        cls.worker = rh.start_worker_at(0, config_path=cls.config, env_extra={
            "WORKER_HEADER_TIMEOUT_SEC": str(HEADER_TIMEOUT_SEC), "WORKER_SNAPSHOT_PATH": "off"})
        cls.addClassCleanup(cls.worker.stop)
        rh.wait_ready(cls.worker)

    # -- slowloris --------------------------------------------------------------------------

    def test_slowloris(self):
        n_slow = 50
        m = marker("slowloris")
        payload = (b"GET /slowloris?%s HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nX-Pad: %s"
                   % (m.encode(), self.key.encode(), b"p" * 200))
        before = self.rss()
        normal = NormalClient(self.worker, self.key)
        normal.start()
        time.sleep(0.3)
        socks = []
        for _ in range(n_slow):
            s = self.worker.connect()
            s.setblocking(False)
            socks.append({"sock": s, "t0": time.monotonic(), "sent": 0, "end": None, "data": b"",
                          "how": None})
        open_ = list(socks)
        deadline = time.monotonic() + HEADER_TIMEOUT_SEC + 5
        while open_ and time.monotonic() < deadline:
            for c in list(open_):
                s = c["sock"]
                closed = None
                try:
                    chunk = s.recv(65536)
                    if chunk:
                        c["data"] += chunk
                    else:
                        closed = "eof"
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    closed = "rst"
                if closed is None:
                    try:
                        if c["sent"] < len(payload):
                            s.send(payload[c["sent"]:c["sent"] + 1])
                            c["sent"] += 1
                    except (BrokenPipeError, ConnectionResetError):
                        closed = "send-failed"
                    except BlockingIOError:
                        pass
                if closed is not None:
                    c["end"] = time.monotonic() - c["t0"]
                    c["how"] = closed
                    open_.remove(c)
                    linger_rst(s)
            time.sleep(0.1)
        for c in open_:
            linger_rst(c["sock"])
        stats = normal.finish()
        after = self.rss()
        ends = [c["end"] for c in socks if c["end"] is not None]
        statuses = {}
        for c in socks:
            st = c["data"].split(b" ", 2)[1].decode() if c["data"].startswith(b"HTTP/1.") else None
            c["status"] = st
            statuses[(st, c["how"])] = statuses.get((st, c["how"]), 0) + 1
        report("slowloris: %d connections, %d closed by the worker, after %.2f-%.2f s (bytes sent each "
               "<= %d); outcomes %r", n_slow, len(ends), min(ends) if ends else -1,
               max(ends) if ends else -1, max(c["sent"] for c in socks), statuses)
        self.report_rss("slowloris", before, after)
        self.assertEqual(len(open_), 0, "%d slowloris connections still open %.0f s after they started"
                         % (len(open_), HEADER_TIMEOUT_SEC + 5))
        for c in socks:
            self.assertIn(c["status"], ("408", None), "slowloris connection answered %r" % c["data"][:200])
            self.assertLessEqual(c["end"], HEADER_TIMEOUT_SEC + 1.5,
                                 "a slowloris connection lasted %.2f s with WORKER_HEADER_TIMEOUT_SEC=%d"
                                 % (c["end"], HEADER_TIMEOUT_SEC))
            self.assertGreaterEqual(c["end"], HEADER_TIMEOUT_SEC - 0.5,
                                    "a slowloris connection was cut after %.2f s, before the header "
                                    "timeout" % c["end"])
        self.assertEqual(self.upstream.matching(m), [], "a slowloris request reached the upstream")
        self.assertNormalStillServed(stats, "during slowloris")
        self.assertWorkerFine()

    # -- oversized headers ------------------------------------------------------------------

    def _send_headers(self, head_parts, timeout=5.0):
        """Sends the parts (bytes) in order on a fresh connection, ignoring send errors; then
        reads the answer. Returns (status, headers, end of connection, bytes sent)."""
        s = self.worker.connect()
        sent = 0
        try:
            for part in head_parts:
                try:
                    s.sendall(part)
                    sent += len(part)
                except (BrokenPipeError, ConnectionResetError):
                    break
            status, headers, rest = wh.read_http_head(s, timeout)
            end = None
            if status is not None:
                end, _ = read_until_closed(s, 3)
            return status, headers, end, sent
        finally:
            s.close()

    def test_headers_over_64k_431(self):
        m = marker("bighdr")
        start = b"GET /big-headers?%s HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n" % (m.encode(), self.key.encode())
        cases = {
            "one 70 KiB header": [start + b"X-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"],
            "20 headers of 4 KiB (80 KiB)": [start + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 4096)
                                                              for i in range(20)) + b"\r\n"],
            "a 1 MiB header stream": [start + b"X-Endless: "] + [b"c" * 65536] * 16 + [b"\r\n\r\n"],
        }
        before = self.rss()
        sampler = rh.RssSampler(self.worker.pid)
        outcomes = {}
        try:
            for name, parts in cases.items():
                t0 = time.monotonic()
                status, headers, end, sent = self._send_headers(parts)
                outcomes[name] = (status, end, sent, time.monotonic() - t0)
        finally:
            peak = sampler.stop()
        after = self.rss()
        for name, (status, end, sent, took) in outcomes.items():
            report("%s: status %r, connection then %s, %d bytes accepted by the socket, %.3f s",
                   name, status, end, sent, took)
        self.report_rss("oversized headers", before, after, peak)
        for name, (status, end, sent, took) in outcomes.items():
            self.assertEqual(status, 431, "%s: expected 431, got %r (connection %s)" % (name, status, end))
            self.assertLess(took, 5.0)
        self.assertEqual(self.upstream.matching(m), [])
        self.assertLess(peak - before, 16 * 1024, "RSS grew by %d kB on oversized headers" % (peak - before))
        self.assertWorkerFine()

    # -- bodies -----------------------------------------------------------------------------

    def test_body_over_max_body_bytes_413(self):
        m = marker("413")
        before = self.rss()
        sampler = rh.RssSampler(self.worker.pid)
        results = {}
        try:
            # 1. declared 10 GiB, nothing sent: 413 at once
            s = self.worker.connect()
            try:
                t0 = time.monotonic()
                s.sendall(b"POST /upload?%s&c=declared HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n"
                          b"Content-Length: %d\r\n\r\n" % (m.encode(), self.small_key.encode(), 10 * 1024 ** 3))
                status, headers, rest = wh.read_http_head(s, 5)
                results["declared 10 GiB, no body sent"] = (status, time.monotonic() - t0, rest[:200])
            finally:
                s.close()
            # 2. 20 MiB Content-Length body, sent while the answer is read
            for mode in ("content-length", "chunked"):
                s = self.worker.connect()
                total = 20 * MB
                sent = [0]
                te = b"Transfer-Encoding: chunked" if mode == "chunked" else b"Content-Length: %d" % total

                def pump(sock=s, mode=mode):
                    block = b"z" * 65536
                    try:
                        while sent[0] < total:
                            data = block if mode != "chunked" else b"10000\r\n" + block + b"\r\n"
                            sock.sendall(data)
                            sent[0] += len(block)
                        if mode == "chunked":
                            sock.sendall(b"0\r\n\r\n")
                    except OSError:
                        pass

                try:
                    t0 = time.monotonic()
                    s.sendall(b"POST /upload?%s&c=%s HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n%s\r\n\r\n"
                              % (m.encode(), mode.encode(), self.small_key.encode(), te))
                    t = threading.Thread(target=pump, daemon=True)
                    t.start()
                    status, headers, rest = wh.read_http_head(s, 10)
                    results["20 MiB body, " + mode] = (status, time.monotonic() - t0,
                                                       "%d bytes sent before the answer" % sent[0])
                finally:
                    linger_rst(s)
                    t.join(5)
        finally:
            peak = sampler.stop()
        after = self.rss()
        for name, (status, took, extra) in results.items():
            report("%s (limit %d bytes): status %r in %.3f s; %s", name, SMALL_BODY_LIMIT, status, took, extra)
        self.report_rss("bodies over max_body_bytes", before, after, peak)
        for name, (status, took, extra) in results.items():
            self.assertEqual(status, 413, "%s: expected 413, got %r" % (name, status))
            self.assertLess(took, 2.0, "%s: 413 took %.2f s" % (name, took))
        complete = [r for r in self.upstream.matching(m) if r["complete"]]
        self.assertEqual(complete, [], "an over-limit body reached the upstream whole")
        self.assertLess(peak - before, RSS_GROWTH_LIMIT_KB)
        self.assertWorkerFine()

    def test_large_streamed_upload_bounded_rss(self):
        m = marker("upload")
        gen, result = rh.sha256_stream(UPLOAD_BYTES, seed=m.encode())
        before = self.rss()
        sampler = rh.RssSampler(self.worker.pid)
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=120)
        try:
            conn.request("POST", "/upload?" + m, body=gen, encode_chunked=True,
                         headers={"X-API-Key": self.big_key, "Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            body = resp.read()
            status = resp.status
        finally:
            conn.close()
            peak = sampler.stop()
        took = time.monotonic() - t0
        after = self.rss()
        sent, digest = result()
        report("200 MB chunked upload: status %d in %.2f s (%.0f MB/s)", status, took, UPLOAD_BYTES / MB / took)
        self.report_rss("200 MB chunked upload", before, after, peak)
        self.assertEqual(status, 200, body[:300])
        echo = json.loads(body)
        self.assertEqual(sent, UPLOAD_BYTES)
        self.assertEqual(echo["body_len"], UPLOAD_BYTES)
        self.assertEqual(echo["sha256"], digest)
        self.assertLess(peak - before, RSS_GROWTH_LIMIT_KB,
                        "worker RSS grew by %d kB during a 200 MB upload" % (peak - before))
        self.assertWorkerFine()

    # -- pipelining -------------------------------------------------------------------------

    def test_pipelined_garbage(self):
        m = marker("pipe")
        key = self.key.encode()
        reqs = [
            b"GET /pipe?%s&i=0 HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n\r\n" % (m.encode(), key),
            b"GET /pipe?%s&i=1 HTTP/1.1\r\nHost: x\r\n\r\n" % m.encode(),  # no key: 401, stays open
            b"POST /pipe?%s&i=2 HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Length: 5\r\n\r\nhello"
            % (m.encode(), key),
            b"\x16\x03\x01 this is not http at all\r\n\r\n",
            b"GET /pipe?%s&i=4 HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n\r\n" % (m.encode(), key),
        ]
        before = self.rss()
        s = self.worker.connect()
        got = []
        try:
            s.sendall(b"".join(reqs))
            s.settimeout(5)
            f = s.makefile("rb")
            for _ in range(4):
                try:
                    status, headers, body = wh.read_http_response(f)
                except (socket.timeout, ConnectionResetError, ValueError) as exc:
                    got.append(("E:" + type(exc).__name__, None, b""))
                    break
                if status is None:
                    break
                got.append((status, headers, body))
            try:
                extra = f.read(1)
                end = "eof" if extra == b"" else "more data: %r" % extra
            except socket.timeout:
                end = "timeout (connection left open)"
            except ConnectionResetError:
                end = "rst"
            f.close()
        finally:
            s.close()
        after = self.rss()
        report("pipelined valid/401/valid/garbage/valid: answers %r, then %s; Connection header on the "
               "last answer: %r", [g[0] for g in got], end, got[-1][1].get("Connection") if got and got[-1][1] else None)
        self.report_rss("pipelined garbage", before, after)
        self.assertEqual([g[0] for g in got], [200, 401, 200, 400], "answers in order, then 400")
        self.assertEqual(json.loads(got[0][2])["path"], "/pipe?%s&i=0" % m)
        echo = json.loads(got[2][2])
        self.assertEqual((echo["path"], echo["body_len"]), ("/pipe?%s&i=2" % m, 5))
        self.assertIn(end, ("eof", "rst"), "the connection was not closed after the 400")
        seen = [r["path"] for r in self.upstream.matching(m)]
        self.assertEqual(seen, ["/pipe?%s&i=0" % m, "/pipe?%s&i=2" % m],
                         "the upstream saw the wrong requests (or the one after the garbage)")
        self.assertWorkerFine()


# =============================================================================================


def restore_nofile(limits):
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    except (ValueError, OSError):
        pass


def raise_nofile():
    """Raises our RLIMIT_NOFILE soft limit to the hard limit (inherited by the worker)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class ManyIdleConnectionsTest(HostileTestCase):
    @classmethod
    def setUpClass(cls):
        cls.limits_before = resource.getrlimit(resource.RLIMIT_NOFILE)
        cls.limits = raise_nofile()
        cls.addClassCleanup(restore_nofile, cls.limits_before)
        cls.upstream = rh.QuietUpstream()
        cls.addClassCleanup(cls.upstream.stop)
        cls.workdir = tempfile.mkdtemp(prefix="ag-hostile-idle-")
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)
        cls.config = os.path.join(cls.workdir, "worker-config.json")
        cls.key = wh.make_key()[0]
        wh.write_config(cls.config, [wh.project_entry(cls.upstream.url, [wh.key_entry(cls.key)],
                                                      1000000, 100000)])
        # idle connections must outlive the test: long header and idle timeouts; a connection
        # limit above the number we open (the default is half the open-file limit, less 64)
        cls.conn_limit = min(IDLE_TARGET, cls.limits[0] - 300) + 200
        cls.worker = rh.start_worker_at(0, config_path=cls.config, env_extra={
            "WORKER_HEADER_TIMEOUT_SEC": "300", "WORKER_IDLE_TIMEOUT_SEC": "300",
            "WORKER_MAX_CONNECTIONS": str(cls.conn_limit), "WORKER_MAX_MEMORY_MB": None,
            "WORKER_SNAPSHOT_PATH": "off", "WORKER_ACCESS_LOG": "off"})
        cls.addClassCleanup(cls.worker.stop)
        rh.wait_ready(cls.worker)

    def normal_requests(self, n=100):
        lat, bad = [], []
        conn = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=10)
        try:
            for i in range(n):
                t0 = time.monotonic()
                try:
                    if i % 2:  # every other request on a fresh connection
                        resp = self.worker.request("GET", "/fresh?i=%d" % i, key=self.key, timeout=10)
                        status = resp.status
                    else:
                        conn.request("GET", "/ka?i=%d" % i, headers={"X-API-Key": self.key})
                        r = conn.getresponse()
                        r.read()
                        status = r.status
                except Exception as exc:  # noqa: BLE001
                    status = "E:" + type(exc).__name__
                    conn.close()
                    conn = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=10)
                lat.append((time.monotonic() - t0) * 1000)
                if status != 200:
                    bad.append(status)
        finally:
            conn.close()
        return {"n": n, "bad": bad, "p50": rh.percentile(lat, 50), "p99": rh.percentile(lat, 99),
                "max": max(lat)}

    def active(self):
        return rh.worker_metric(self.worker, "ag_connections_active")

    def test_many_idle_connections(self):
        soft, hard = self.limits
        worker_limit = None
        with open("/proc/%d/limits" % self.worker.pid) as f:
            for line in f:
                if line.startswith("Max open files"):
                    worker_limit = int(line.split()[3])
        target = min(IDLE_TARGET, soft - 300, (worker_limit or soft) - 300)
        report("RLIMIT_NOFILE: ours %d (was %d), hard %d, worker's %r; WORKER_MAX_CONNECTIONS=%d; "
               "opening %d idle connections", soft, self.limits_before[0], hard, worker_limit,
               self.conn_limit, target)
        if target < 1000:
            self.skipTest("RLIMIT_NOFILE too low (%d) for 1,000 idle connections" % soft)
        base_active = self.active()
        before = self.rss()
        socks = []
        errors = {}
        t0 = time.monotonic()
        try:
            for _ in range(target):
                try:
                    s = socket.create_connection((self.worker.host, self.worker.port), timeout=5)
                    socks.append(s)
                except OSError as exc:
                    name = errno.errorcode.get(exc.errno, type(exc).__name__)
                    errors[name] = errors.get(name, 0) + 1
                    if sum(errors.values()) > 50:
                        break
            opened = time.monotonic() - t0
            # wait until the worker has accepted them all
            deadline = time.monotonic() + 15
            act = self.active()
            while act is not None and act < base_active + len(socks) and time.monotonic() < deadline:
                time.sleep(0.2)
                act = self.active()
            held = self.rss()
            fds = rh.fd_count(self.worker.pid)
            stats = self.normal_requests()
            # the idle connections are still open (no data, no EOF)
            sample = random.sample(socks, min(200, len(socks)))
            closed = 0
            for s in sample:
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        closed += 1
                except BlockingIOError:
                    pass
                except OSError:
                    closed += 1
            alive = self.worker.alive()
        finally:
            for s in socks:
                linger_rst(s)
        deadline = time.monotonic() + 10
        act_after = self.active()
        while act_after is not None and act_after > base_active + 5 and time.monotonic() < deadline:
            time.sleep(0.2)
            act_after = self.active()
        after = self.rss()
        per_conn = (held - before) * 1024.0 / max(1, len(socks))
        report("idle connections: %d opened in %.2f s (errors %r); ag_connections_active %r with them, "
               "%r after closing; worker fds %d", len(socks), opened, errors, act, act_after, fds)
        report("idle connections: worker RSS before %d kB, with %d idle connections %d kB (%.0f bytes "
               "per connection), after closing them %d kB", before, len(socks), held, per_conn, after)
        report("idle connections: %d of %d sampled still open", len(sample) - closed, len(sample))
        self.assertTrue(alive, "the worker died holding idle connections:\n" + self.worker.stderr[-2000:])
        self.assertEqual(errors, {}, "connections refused or failed while opening %d" % target)
        self.assertEqual(len(socks), target)
        self.assertIsNotNone(act, "ag_connections_active missing")
        self.assertGreaterEqual(act, base_active + len(socks), "the worker did not accept every connection")
        self.assertEqual(closed, 0, "idle connections closed before any timeout")
        self.assertNormalStillServed(stats, "with %d idle connections" % len(socks), max_ms=1000)
        self.assertLessEqual(act_after, base_active + 5, "connections not released after the clients left")
        self.assertWorkerFine()


# =============================================================================================


class OverloadTest(HostileTestCase):
    """docs/worker.md: WORKER_MAX_CONNECTIONS=N. At most N client connections are open at once; a
    connection beyond the limit is answered at once with `503 {"detail":"Server overloaded"}`,
    `Retry-After: 1`, `Connection: close` (the request is never proxied) and closed, counted in
    ag_connections_shed_total; the N existing connections keep working; once some close, new ones
    are served again."""

    @classmethod
    def setUpClass(cls):
        cls.upstream = rh.QuietUpstream()
        cls.addClassCleanup(cls.upstream.stop)
        cls.workdir = tempfile.mkdtemp(prefix="ag-hostile-overload-")
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)
        cls.config = os.path.join(cls.workdir, "worker-config.json")
        cls.key = wh.make_key()[0]
        wh.write_config(cls.config, [wh.project_entry(cls.upstream.url, [wh.key_entry(cls.key)],
                                                      1000000, 100000)])
        cls.worker = rh.start_worker_at(0, config_path=cls.config, env_extra={
            "WORKER_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "WORKER_HEADER_TIMEOUT_SEC": "60",
            "WORKER_SNAPSHOT_PATH": "off"})
        cls.addClassCleanup(cls.worker.stop)
        rh.wait_ready(cls.worker)

    def get(self, conn, path):
        conn.request("GET", path, headers={"X-API-Key": self.key})
        r = conn.getresponse()
        r.read()
        return r.status

    def beyond(self, path):
        """One request on a new connection; returns (status, headers, body, end, seconds)."""
        t0 = time.monotonic()
        s = self.worker.connect()
        try:
            try:
                s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n\r\n" % (path.encode(), self.key.encode()))
            except (BrokenPipeError, ConnectionResetError):
                pass
            f = s.makefile("rb")
            try:
                status, headers, body = wh.read_http_response(f)
            except (socket.timeout, ConnectionResetError, ValueError):
                status, headers, body = None, None, b""
            took = time.monotonic() - t0
            end, _ = read_until_closed(s, 2)
            f.close()
            return status, headers, body, end, took
        finally:
            s.close()

    def test_connections_beyond_limit_get_503(self):
        m = marker("over")
        before = self.rss()
        shed0 = rh.worker_metric(self.worker, "ag_connections_shed_total")
        conns = []
        try:
            for i in range(MAX_CONNECTIONS):
                c = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=10)
                conns.append(c)
                self.assertEqual(self.get(c, "/hold?i=%d" % i), 200, "connection %d under the limit" % i)
            held = self.rss()
            extra = [self.beyond("/beyond?%s&j=%d" % (m, j)) for j in range(5)]
            still = [self.get(c, "/again?i=%d" % i) for i, c in enumerate(conns)]
            for c in conns[:10]:
                c.close()
            time.sleep(0.5)
            resp = self.worker.request("GET", "/after-release", key=self.key, timeout=5)
            after_release = resp.status
        finally:
            for c in conns:
                c.close()
        after = self.rss()
        shed1 = rh.worker_metric(self.worker, "ag_connections_shed_total")
        report("ag_connections_shed_total %r -> %r", shed0, shed1)
        report("WORKER_MAX_CONNECTIONS=%d: connections beyond the limit got %r", MAX_CONNECTIONS,
               [(e[0], e[2][:60], (e[1].get("Connection") if e[1] else None), e[3], "%.1f ms" % (e[4] * 1000))
                for e in extra])
        self.report_rss("overload (%d held connections)" % MAX_CONNECTIONS, before, after, held)
        for j, (status, headers, body, end, took) in enumerate(extra):
            self.assertEqual(status, 503, "connection %d beyond WORKER_MAX_CONNECTIONS=%d got %r %r: the "
                             "limit is not enforced (not implemented?)" % (MAX_CONNECTIONS + 1 + j,
                                                                          MAX_CONNECTIONS, status, body[:100]))
            self.assertEqual(json.loads(body), {"detail": OVERLOADED})
            self.assertEqual((headers.get("Connection") or "").lower(), "close")
            self.assertEqual(headers.get("Retry-After"), "1")
            self.assertIn(end, ("eof", "rst"), "the overloaded connection was not closed")
            self.assertLess(took, 1.0, "the 503 took %.2f s" % took)
        self.assertEqual(self.upstream.matching(m), [], "a shed request reached the upstream")
        self.assertIsNotNone(shed1, "ag_connections_shed_total missing from /metrics")
        self.assertGreaterEqual(shed1 - (shed0 or 0), 5, "shed connections not counted")
        self.assertEqual(still, [200] * MAX_CONNECTIONS, "existing connections stopped working")
        self.assertEqual(after_release, 200, "no capacity after connections closed")
        self.assertWorkerFine()


class MemoryShedTest(HostileTestCase):
    """docs/worker.md: WORKER_MAX_MEMORY_MB=M. When the worker's resident memory passes M (checked
    every 250 ms), new connections are shed like past WORKER_MAX_CONNECTIONS (503 "Server
    overloaded", Retry-After: 1, closed) while open connections keep working. Memory is driven up
    with idle connections (about 10 KB each). Shedding is a temporary state: once the connections
    that used the memory are gone, new connections must be served again (a worker that sheds
    forever after one spike has fallen over in another way)."""

    HEADROOM_MB = 40

    @classmethod
    def setUpClass(cls):
        cls.limits_before = resource.getrlimit(resource.RLIMIT_NOFILE)
        cls.limits = raise_nofile()
        cls.addClassCleanup(restore_nofile, cls.limits_before)
        cls.upstream = rh.QuietUpstream()
        cls.addClassCleanup(cls.upstream.stop)
        cls.workdir = tempfile.mkdtemp(prefix="ag-hostile-mem-")
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)
        cls.config = os.path.join(cls.workdir, "worker-config.json")
        cls.key = wh.make_key()[0]
        wh.write_config(cls.config, [wh.project_entry(cls.upstream.url, [wh.key_entry(cls.key)],
                                                      1000000, 100000)])
        # start once to learn the baseline RSS, then for real with the limit above it
        probe = rh.start_worker_at(0, config_path=cls.config, env_extra={"WORKER_SNAPSHOT_PATH": "off"})
        rh.wait_ready(probe)
        time.sleep(0.3)
        cls.baseline_mb = rh.rss_kb(probe.pid) // 1024
        probe.stop()
        cls.limit_mb = cls.baseline_mb + cls.HEADROOM_MB
        cls.worker = rh.start_worker_at(0, config_path=cls.config, env_extra={
            "WORKER_MAX_MEMORY_MB": str(cls.limit_mb), "WORKER_MAX_CONNECTIONS": "19000",
            "WORKER_HEADER_TIMEOUT_SEC": "300", "WORKER_IDLE_TIMEOUT_SEC": "300",
            "WORKER_SNAPSHOT_PATH": "off", "WORKER_ACCESS_LOG": "off"})
        cls.addClassCleanup(cls.worker.stop)
        rh.wait_ready(cls.worker)

    def probe(self):
        """One request on a new connection: (status, headers, body)."""
        s = self.worker.connect()
        try:
            try:
                s.sendall(b"GET /mem-probe HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n\r\n" % self.key.encode())
            except (BrokenPipeError, ConnectionResetError):
                pass
            f = s.makefile("rb")
            try:
                return wh.read_http_response(f)
            except (socket.timeout, ConnectionResetError, ValueError):
                return None, None, b""
            finally:
                f.close()
        finally:
            s.close()

    def test_memory_limit_sheds_then_recovers(self):
        if os.environ.get("AG_TEST_SANITIZER") == "1":
            self.skipTest("RSS-based limit: AddressSanitizer keeps freed memory in quarantine, so RSS does not fall")
        if self.limits[0] < 8000:
            self.skipTest("RLIMIT_NOFILE too low (%d) to drive memory up with idle connections" % self.limits[0])
        before = self.rss()
        report("WORKER_MAX_MEMORY_MB=%d (baseline RSS %d MB + %d)", self.limit_mb, self.baseline_mb,
               self.HEADROOM_MB)
        keepers = []
        idle = []
        shed = None
        try:
            for i in range(10):
                c = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=10)
                keepers.append(c)
                self.assertEqual(OverloadTest.get(self, c, "/keep?i=%d" % i), 200)
            cap = min(15000, self.limits[0] - 500)
            while len(idle) < cap:
                for _ in range(500):
                    idle.append(socket.create_connection((self.worker.host, self.worker.port), timeout=5))
                time.sleep(0.35)  # a sweep
                status, headers, body = self.probe()
                if status != 200:
                    shed = (status, headers, body, len(idle), self.rss())
                    break
            still = [OverloadTest.get(self, c, "/keep-again?i=%d" % i) for i, c in enumerate(keepers)]
        finally:
            for s in idle:
                linger_rst(s)
        # the memory's users are gone: shedding must stop
        t0 = time.monotonic()
        recovered = None
        last = None
        while time.monotonic() - t0 < 5:
            last = self.probe()
            if last[0] == 200:
                recovered = time.monotonic() - t0
                break
            time.sleep(0.25)
        after = self.rss()
        for c in keepers:
            c.close()
        if shed:
            report("memory shedding: first refused connection after %d idle connections, worker RSS %d kB "
                   "(limit %d MB): %r %r", shed[3], shed[4], self.limit_mb, shed[0], shed[2][:80])
        report("memory shedding: after closing the idle connections, RSS %d kB; new connections %s",
               after, "served again after %.2f s" % recovered if recovered is not None
               else "still refused after 5 s (%r)" % (last[0],))
        self.report_rss("memory shedding", before, after, shed[4] if shed else None)
        self.assertIsNotNone(shed, "no connection shed although RSS passed WORKER_MAX_MEMORY_MB=%d "
                             "(RSS now %d kB)" % (self.limit_mb, after))
        status, headers, body = shed[:3]
        self.assertEqual(status, 503, repr(body[:200]))
        self.assertEqual(json.loads(body), {"detail": OVERLOADED})
        self.assertEqual(headers.get("Retry-After"), "1")
        self.assertEqual((headers.get("Connection") or "").lower(), "close")
        self.assertGreaterEqual(shed[4], self.limit_mb * 1024 * 0.95, "shed below the memory limit")
        self.assertEqual(still, [200] * len(keepers), "open connections stopped working")
        self.assertTrue(self.worker.alive())
        self.assertIsNotNone(recovered, "the worker still sheds every new connection 5 s after the "
                             "connections that used the memory closed (RSS %d kB > %d MB: freed memory "
                             "is not returned to the OS, so an RSS-based limit never clears)"
                             % (after, self.limit_mb))


if __name__ == "__main__":
    unittest.main(verbosity=2)
