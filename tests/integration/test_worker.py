"""Integration tests of the worker (docs/worker.md) against the real binary.

Every test class starts its own `antigravity worker` on 127.0.0.1 with port 0 in front of a real
recording upstream (harness.Upstream), configured from a file or from a real control plane.
The Redis tests run only when `redis-server` is on PATH.

Run: python3 tests/integration/test_worker.py
"""

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
import harness as wh  # noqa: E402
from harness import RedisServer, RssSampler  # noqa: E402

REQUEST_ID_RE = wh.REQUEST_ID_RE
ACCESS_LOG_FIELDS = ("ts", "request_id", "project_id", "key_id", "method", "path", "endpoint", "ip",
                     "user_agent", "decision", "reason", "risk_score", "status", "latency_ms",
                     "upstream_latency_ms", "bytes_in", "bytes_out")
HOP_BY_HOP_SENT = ("x-custom-hop", "keep-alive", "proxy-authorization", "proxy-connection", "te",
                   "trailer")
MB = 1024 * 1024
NOT_READY = "Gateway not ready: configuration not loaded"


def marker(prefix="m"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def malformed_variants(valid_key):
    """Keys that fail the format or checksum check."""
    last = valid_key[-1]
    flipped = valid_key[:-1] + ("A" if last != "A" else "B")
    return [
        "agk_short",
        "not-a-key-at-all",
        flipped,                                   # checksum mismatch
        valid_key.replace("agk_", "agx_", 1),      # wrong prefix
        valid_key + "0",                           # too long
    ]


WorkerTestCase = wh.WorkerTestCase


def raw_exchange(worker, data, timeout=5.0):
    """Sends raw bytes on a fresh connection and reads one response head (status, headers, rest)."""
    sock = worker.connect()
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return wh.read_http_head(sock, timeout)
    finally:
        sock.close()


def data_chunks(total, chunk=MB, seed=b"ag"):
    """Deterministic pseudo-random chunks of `total` bytes; returns (generator, sha256 hex)."""
    block = hashlib.sha256(seed).digest() * (chunk // 32 + 1)
    block = block[:chunk]
    pieces = []
    left = total
    i = 0
    digest = hashlib.sha256()
    while left > 0:
        n = min(left, chunk)
        piece = bytes([i % 251]) + block[1:n] if n > 1 else bytes([i % 251])
        digest.update(piece)
        pieces.append(n)
        left -= n
        i += 1

    def gen():
        for j, n in enumerate(pieces):
            yield bytes([j % 251]) + block[1:n] if n > 1 else bytes([j % 251])

    return gen(), digest.hexdigest()


# =============================================================================================
# File mode: one worker in front of one upstream, several projects


class FileModeTest(WorkerTestCase):
    VERSION = 7

    @classmethod
    def setUpClass(cls):
        cls.upstream = wh.Upstream()
        cls.workdir = tempfile.mkdtemp(prefix="ag-wtest-")
        cls.config_path = os.path.join(cls.workdir, "worker-config.json")
        up = cls.upstream.url
        now = time.time()
        cls.key_a, _ = wh.make_key()
        cls.key_a_expired, _ = wh.make_key()
        cls.key_a_future, _ = wh.make_key()
        cls.key_b = [wh.make_key()[0] for _ in range(4)]
        cls.key_c, _ = wh.make_key()
        cls.key_d, _ = wh.make_key()
        cls.key_e, _ = wh.make_key()
        cls.unknown_key, _ = wh.make_key()
        cls.ka = wh.key_entry(cls.key_a)
        cls.ka_future = wh.key_entry(cls.key_a_future, expires_at=now + 86400)
        cls.key_a_limited, _ = wh.make_key()
        cls.ka_limited = wh.key_entry(cls.key_a_limited, rate_limit=(60, 1))
        cls.key_https, _ = wh.make_key()
        cls.kb = [wh.key_entry(k) for k in cls.key_b]
        cls.proj_a = wh.project_entry(up + "/base", [cls.ka, wh.key_entry(cls.key_a_expired, expires_at=now - 3600),
                                                     cls.ka_future, cls.ka_limited],
                                      requests_per_minute=600000, burst=100000)
        cls.proj_b = wh.project_entry(up, cls.kb, requests_per_minute=60, burst=2)
        cls.proj_c = wh.project_entry(up, [wh.key_entry(cls.key_c)], max_body_bytes=1000)
        cls.down_port = wh.free_port()
        cls.proj_d = wh.project_entry("http://127.0.0.1:%d" % cls.down_port, [wh.key_entry(cls.key_d)])
        cls.proj_e = wh.project_entry(up, [wh.key_entry(cls.key_e)], max_body_bytes=200 * MB)
        cls.proj_https = wh.project_entry("https://127.0.0.1:%d/x" % cls.down_port, [wh.key_entry(cls.key_https)])
        wh.write_config(cls.config_path, [cls.proj_a, cls.proj_b, cls.proj_c, cls.proj_d, cls.proj_e,
                                          cls.proj_https], version=cls.VERSION)
        cls.all_keys = [cls.key_a, cls.key_a_expired, cls.key_a_future, cls.key_a_limited, cls.key_c,
                        cls.key_d, cls.key_e, cls.key_https, cls.unknown_key] + cls.key_b + malformed_variants(cls.key_a)
        cls.worker = wh.start_worker(cls.config_path)
        ready = cls.worker.wait_ready()
        if ready is None or ready.status != 200:
            raise AssertionError("worker not ready: %r\n%s" % (ready, cls.worker.stderr))

    @classmethod
    def tearDownClass(cls):
        cls.worker.stop()
        cls.upstream.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def setUp(self):
        self.assertTrue(self.worker.alive(), "worker died:\n" + self.worker.stderr[-3000:])

    def get(self, path, key=None, **kw):
        return self.worker.request("GET", path, key=key, **kw)

    # -- proxying --------------------------------------------------------------------------

    def test_proxy_headers_and_path(self):
        m = marker("hdr")
        headers = {
            "Connection": "keep-alive, X-Custom-Hop",
            "X-Custom-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Proxy-Connection": "keep-alive",
            "X-Custom-E2E": "kept",
            "X-Gateway-Project": "spoofed",
            "X-Gateway-Key-Id": "spoofed",
            "X-Request-Id": "client.req-" + m,
            "User-Agent": "ag-test/1.0",
        }
        resp = self.get("/x/y?q=1&m=" + m, key=self.key_a, headers=headers)
        echo = self.assertProxied(resp)
        self.assertEqual(resp.headers.get("X-Request-Id"), "client.req-" + m, repr(resp))
        self.assertIn("RateLimit-Limit", resp.headers, repr(resp))
        self.assertIn("RateLimit-Remaining", resp.headers, repr(resp))
        seen = self.upstream.matching(m)
        self.assertEqual(len(seen), 1, seen)
        rec = seen[0]
        hd = rec["header_dict"]
        self.assertEqual(rec["method"], "GET")
        self.assertEqual(rec["path"], "/base/x/y?q=1&m=" + m)
        self.assertEqual(echo["path"], "/base/x/y?q=1&m=" + m)
        self.assertEqual(hd.get("host"), "127.0.0.1:%d" % self.upstream.port, hd)
        self.assertEqual(hd.get("x-gateway-project"), self.proj_a["id"], hd)
        self.assertEqual(hd.get("x-gateway-key-id"), self.ka["id"], hd)
        self.assertEqual(hd.get("x-request-id"), "client.req-" + m, hd)
        self.assertEqual(hd.get("x-forwarded-for"), "127.0.0.1", hd)
        self.assertEqual(hd.get("x-forwarded-proto"), "http", hd)
        self.assertEqual(hd.get("x-forwarded-host"), "127.0.0.1:%d" % self.worker.port, hd)
        self.assertEqual(hd.get("x-custom-e2e"), "kept", hd)
        self.assertEqual(hd.get("user-agent"), "ag-test/1.0", hd)
        self.assertNotIn("x-api-key", hd)
        for name in HOP_BY_HOP_SENT:
            self.assertNotIn(name, hd, "hop-by-hop header %s forwarded: %r" % (name, hd))
        self.assertNotIn("x-custom-hop", hd.get("connection", "").lower(), hd)
        self.assertNotIn("transfer-encoding", hd, hd)
        self.assertNotIn(self.key_a, json.dumps(rec["headers"]))

    def test_proxy_path_variants(self):
        m = marker("pv")
        cases = (("/?" + m, "/base/?" + m),
                 ("/only?" + m, "/base/only?" + m),
                 ("/a/%20b/c?x=%2F&y=" + m, "/base/a/%20b/c?x=%2F&y=" + m))
        for sent, _ in cases:
            self.assertProxied(self.get(sent, key=self.key_a))
        paths = [r["path"] for r in self.upstream.matching(m)]
        for _, expected in cases:
            self.assertIn(expected, paths)

    def test_x_forwarded_for_appended_untrusted_peer(self):
        m = marker("xff")
        resp = self.get("/xff?" + m, key=self.key_a, headers={"X-Forwarded-For": "198.51.100.7"})
        self.assertProxied(resp)
        rec = self.upstream.matching(m)[0]
        xff = [p.strip() for p in rec["header_dict"].get("x-forwarded-for", "").split(",")]
        self.assertEqual(xff, ["198.51.100.7", "127.0.0.1"], rec["header_dict"])
        rid = resp.headers["X-Request-Id"]
        entry = self.assertLogged(self.worker, lambda e: e.get("request_id") == rid, "xff request")
        self.assertEqual(entry.get("ip"), "127.0.0.1", "untrusted X-Forwarded-For believed: %r" % entry)

    def test_request_id_generated_when_missing_or_invalid(self):
        for sent in (None, "bad id!", "x" * 129, "a/b"):
            m = marker("rid")
            headers = {} if sent is None else {"X-Request-Id": sent}
            resp = self.get("/rid?" + m, key=self.key_a, headers=headers)
            self.assertProxied(resp)
            rid = resp.headers["X-Request-Id"]
            self.assertNotEqual(rid, sent)
            self.assertEqual(self.upstream.matching(m)[0]["header_dict"].get("x-request-id"), rid)
        # and on worker-made errors
        resp = self.get("/rid-err", headers={"X-Request-Id": "keep.me_1-2"})
        self.assertError(resp, 401)
        self.assertEqual(resp.headers.get("X-Request-Id"), "keep.me_1-2")

    def test_methods_and_bodies_forwarded(self):
        for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            m = marker(method.lower())
            body = ("payload-%s-" % method).encode() * 37
            resp = self.worker.request(method, "/m?" + m, raw_body=body, key=self.key_a,
                                       content_type="application/octet-stream")
            echo = self.assertProxied(resp)
            self.assertEqual(echo["method"], method)
            rec = self.upstream.matching(m)
            self.assertEqual(len(rec), 1, rec)
            self.assertEqual(rec[0]["method"], method)
            self.assertEqual(rec[0]["body_len"], len(body))
            self.assertEqual(rec[0]["sha256"], hashlib.sha256(body).hexdigest())
        m = marker("head")
        resp = self.worker.request("HEAD", "/m?" + m, key=self.key_a)
        self.assertStatus(resp, 200)
        self.assertEqual(resp.body, b"")
        self.assertEqual([r["method"] for r in self.upstream.matching(m)], ["HEAD"])

    def test_upstream_status_passed_through(self):
        for code in (201, 404, 418, 500, 503):
            resp = self.get("/status/%d" % code, key=self.key_a)
            self.assertProxied(resp, code)
            self.assertEqual(resp.json()["path"], "/base/status/%d" % code)

    def test_future_expiry_key_accepted(self):
        m = marker("fut")
        self.assertProxied(self.get("/fut?" + m, key=self.key_a_future))
        rec = self.upstream.matching(m)[0]
        self.assertEqual(rec["header_dict"].get("x-gateway-key-id"), self.ka_future["id"])

    # -- identification -------------------------------------------------------------------

    def test_missing_key_401(self):
        m = marker("nokey")
        resp = self.get("/p?" + m)
        self.assertError(resp, 401, "API key missing")
        self.assertEqual(self.upstream.matching(m), [])

    def test_malformed_keys_401(self):
        m = marker("badkey")
        for bad in malformed_variants(self.key_a):
            resp = self.get("/p?" + m, key=bad)
            self.assertError(resp, 401, "Invalid API key")
        self.assertEqual(self.upstream.matching(m), [])

    def test_unknown_key_401(self):
        m = marker("unknown")
        resp = self.get("/p?" + m, key=self.unknown_key)
        self.assertError(resp, 401, "Invalid API key")
        self.assertEqual(self.upstream.matching(m), [])

    def test_expired_key_401(self):
        m = marker("expired")
        resp = self.get("/p?" + m, key=self.key_a_expired)
        self.assertError(resp, 401, "Invalid API key")
        self.assertEqual(self.upstream.matching(m), [])

    def test_public_port_does_not_serve_admin_paths(self):
        for path in ("/metrics", "/ready", "/ping"):
            resp = self.get(path)
            self.assertError(resp, 401, "API key missing")
        m = marker("adm")
        # with a key, they are ordinary proxied paths
        resp = self.get("/metrics?" + m, key=self.key_a)
        self.assertProxied(resp)
        self.assertEqual(self.upstream.matching(m)[0]["path"], "/base/metrics?" + m)

    # -- rate limit -------------------------------------------------------------------------

    def test_rate_limit_burst(self):
        m = marker("rl")
        key = self.key_b[0]
        results = [self.get("/rl?%s&n=%d" % (m, i), key=key) for i in range(4)]
        self.assertEqual([r.status for r in results], [200, 200, 200, 429], results)
        for r in results[:3]:
            self.assertProxied(r)
            self.assertRegex(r.headers.get("RateLimit-Limit", ""), r"^\d+$", repr(r))
            self.assertRegex(r.headers.get("RateLimit-Remaining", ""), r"^\d+$", repr(r))
        # RateLimit-Limit = burst + 1; Remaining = what is left of it now
        self.assertEqual([r.headers["RateLimit-Limit"] for r in results[:3]], ["3", "3", "3"])
        self.assertEqual([r.headers["RateLimit-Remaining"] for r in results[:3]], ["2", "1", "0"])
        limited = results[3]
        self.assertError(limited, 429)
        retry = limited.headers.get("Retry-After", "")
        self.assertRegex(retry, r"^\d+$", repr(limited))
        self.assertTrue(1 <= int(retry) <= 2, "60/min: one request is earned back within a second: %r" % limited)
        self.assertEqual(limited.headers.get("RateLimit-Limit"), "3", repr(limited))
        self.assertEqual(limited.headers.get("RateLimit-Remaining"), "0", repr(limited))
        reset = limited.headers.get("RateLimit-Reset", "")
        self.assertRegex(reset, r"^\d+$", repr(limited))
        self.assertTrue(2 <= int(reset) <= 4, "the bucket is full again after ~3 s: %r" % limited)
        self.assertEqual(len(self.upstream.matching(m)), 3)
        # per key: another key of the same project is not limited
        self.assertProxied(self.get("/rl-other?" + m, key=self.key_b[2]))
        # 60/min: one request is earned back after a second
        time.sleep(1.3)
        self.assertProxied(self.get("/rl-again?" + m, key=key))

    def test_key_rate_limit_overrides_project(self):
        # project A allows 100000 at once; this key's own limit is 60/min, burst 1
        m = marker("keyrl")
        results = [self.get("/keyrl?%s&n=%d" % (m, i), key=self.key_a_limited) for i in range(3)]
        self.assertEqual([r.status for r in results], [200, 200, 429], results)
        self.assertEqual(results[0].headers.get("RateLimit-Limit"), "2", repr(results[0]))
        self.assertError(results[2], 429)
        self.assertEqual(len(self.upstream.matching(m)), 2)
        # the project's other keys keep the project's limit
        self.assertEqual(self.get("/keyrl-a?" + m, key=self.key_a).headers.get("RateLimit-Limit"), "100001")

    # -- bodies -----------------------------------------------------------------------------

    def test_body_limit_content_length(self):
        m = marker("cl")
        resp = self.worker.request("POST", "/upload?" + m, raw_body=b"x" * 2000, key=self.key_c)
        self.assertError(resp, 413)
        self.assertEqual(self.upstream.matching(m), [])
        rid = resp.headers["X-Request-Id"]
        entry = self.assertLogged(self.worker, lambda e: e.get("request_id") == rid, "413")
        self.assertEqual((entry.get("decision"), entry.get("reason"), entry.get("status")),
                         ("block", "body_too_large", 413), entry)
        # at the limit: allowed
        body = os.urandom(1000)
        resp = self.worker.request("POST", "/upload-ok?" + m, raw_body=body, key=self.key_c)
        echo = self.assertProxied(resp)
        self.assertEqual(echo["sha256"], hashlib.sha256(body).hexdigest())

    def test_body_limit_chunked(self):
        m = marker("chunked")
        gen = (b"y" * 500 for _ in range(6))
        resp = wh.stream_request(self.worker, "POST", "/upload?" + m, gen, key=self.key_c)
        self.assertError(resp, 413)
        complete = [r for r in self.upstream.matching(m) if r["complete"] and r["body_len"] >= 3000]
        self.assertEqual(complete, [], "an over-limit chunked body reached the upstream whole")
        # a chunked body under the limit goes through
        gen = (b"z" * 300 for _ in range(3))
        resp = wh.stream_request(self.worker, "POST", "/upload-ok?" + m, gen, key=self.key_c)
        echo = self.assertProxied(resp)
        self.assertEqual(echo["body_len"], 900)
        self.assertEqual(echo["sha256"], hashlib.sha256(b"z" * 900).hexdigest())

    def _upload(self, content_length, total=50 * MB, route="/upload"):
        m = marker("up")
        gen, digest = data_chunks(total, seed=m.encode())
        before = self.worker.rss_kb()
        sampler = RssSampler(self.worker)
        try:
            resp = wh.stream_request(self.worker, "POST", route + ("&" if "?" in route else "?") + m, gen, key=self.key_e,
                                  content_length=total if content_length else None)
        finally:
            peak = sampler.stop()
        echo = self.assertProxied(resp)
        self.assertEqual(echo["body_len"], total)
        self.assertEqual(echo["sha256"], digest)
        rec = self.upstream.matching(m)
        self.assertEqual(len(rec), 1)
        self.assertEqual(rec[0]["sha256"], digest)
        self.assertLess(peak - before, 64 * 1024,
                        "worker RSS grew by %d kB during a %d MB upload" % (peak - before, total // MB))

    def test_large_upload_content_length(self):
        self._upload(True)

    def test_large_upload_chunked(self):
        self._upload(False)

    def test_large_upload_slow_upstream(self):
        # the upstream waits 1.5 s before reading: the worker must not buffer the client's body
        self._upload(True, total=100 * MB, route="/slowread?ms=1500")

    def test_large_download(self):
        total = 50000000
        expected = wh.big_pattern(total)
        before = self.worker.rss_kb()
        sampler = RssSampler(self.worker)
        conn = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=60)
        try:
            conn.request("GET", "/big?bytes=%d" % total, headers={"X-API-Key": self.key_a})
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            digest = hashlib.sha256()
            n = 0
            while True:
                chunk = resp.read(MB)
                if not chunk:
                    break
                digest.update(chunk)
                n += len(chunk)
        finally:
            conn.close()
            peak = sampler.stop()
        self.assertEqual(n, total)
        self.assertEqual(digest.hexdigest(), expected)
        self.assertLess(peak - before, 64 * 1024,
                        "worker RSS grew by %d kB during a 50 MB download" % (peak - before))

    # -- protocol errors --------------------------------------------------------------------

    def test_headers_too_large_431(self):
        m = marker("big-hdr")
        headers = {"X-Big-%d" % i: "a" * 5000 for i in range(4)}
        resp = self.get("/h?" + m, key=self.key_a, headers=headers)
        self.assertError(resp, 431)
        self.assertEqual(self.upstream.matching(m), [])
        self.assertLogged(self.worker, lambda e: e.get("status") == 431 and e.get("reason") == "headers_too_large",
                          "431")
        # 10 KB of headers is under the 16 KiB default
        headers = {"X-Mid-%d" % i: "b" * 2500 for i in range(4)}
        self.assertProxied(self.get("/h-ok?" + m, key=self.key_a, headers=headers))

    def test_malformed_request_400(self):
        bad_requests = [
            b"this is not http\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        ]
        for data in bad_requests:
            status, headers, _ = raw_exchange(self.worker, data)
            self.assertEqual(status, 400, "for %r" % data)
            self.assertRegex(headers.get("X-Request-Id", ""), REQUEST_ID_RE, "400 without X-Request-Id")
            self.assertTrue(self.worker.alive())
        self.assertLogged(self.worker, lambda e: e.get("status") == 400 and e.get("reason") == "bad_request",
                          "400")
        self.assertProxied(self.get("/after-400", key=self.key_a))

    def test_pipelined_requests(self):
        m = marker("pipe")
        data = b"".join(b"GET /pipe?%s&i=%d HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n\r\n"
                        % (m.encode(), i, self.key_a.encode()) for i in range(3))
        sock = self.worker.connect()
        try:
            sock.sendall(data)
            sock.settimeout(10)
            f = sock.makefile("rb")
            for i in range(3):
                status, headers, body = wh.read_http_response(f)
                self.assertEqual(status, 200, "pipelined response %d: %r %r" % (i, headers, body[:300]))
                self.assertEqual(json.loads(body)["path"], "/base/pipe?%s&i=%d" % (m, i))
            f.close()
        finally:
            sock.close()

    def test_expect_100_continue(self):
        m = marker("expect")
        body = os.urandom(5000)
        sock = self.worker.connect()
        try:
            sock.sendall(b"POST /expect?%s HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Length: 5000\r\n"
                         b"Expect: 100-continue\r\n\r\n" % (m.encode(), self.key_a.encode()))
            sock.settimeout(3)
            f = sock.makefile("rb")
            try:
                status, _, _ = wh.read_http_response(f)
            except socket.timeout:
                status = "timeout"
            self.assertEqual(status, 100, "no 100 Continue within 3 s")
            sock.sendall(body)
            sock.settimeout(10)
            status, headers, payload = wh.read_http_response(f)
            self.assertEqual(status, 200, "%r %r" % (headers, payload[:300]))
            echo = json.loads(payload)
            self.assertEqual(echo["sha256"], hashlib.sha256(body).hexdigest())
            f.close()
        finally:
            sock.close()
        # over the limit: 413 at once, without waiting for the body
        sock = self.worker.connect()
        try:
            sock.sendall(b"POST /expect-big?%s HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Length: 2000\r\n"
                         b"Expect: 100-continue\r\n\r\n" % (m.encode(), self.key_c.encode()))
            status, _, _ = wh.read_http_head(sock, 3)
            self.assertEqual(status, 413)
        finally:
            sock.close()
        self.assertEqual([r["path"] for r in self.upstream.matching(m)], ["/base/expect?" + m])

    def test_conflicting_length_headers_not_smuggled(self):
        # Content-Length and Transfer-Encoding together: the body is the chunked one (empty), and
        # the bytes after it are the client's next request (without a key: never forwarded).
        m = marker("smug")
        smuggle = (b"POST /smug?%s HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Length: 4\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled-%s HTTP/1.1\r\nHost: x\r\n\r\n"
                   % (m.encode(), self.key_a.encode(), m.encode()))
        first = None
        sock = self.worker.connect()
        try:
            sock.sendall(smuggle)
            sock.settimeout(3)
            f = sock.makefile("rb")
            try:
                first, _, _ = wh.read_http_response(f)
                wh.read_http_response(f)
            except (socket.timeout, ValueError, OSError):
                pass
            f.close()
        finally:
            sock.close()
        self.assertIn(first, (200, 400))
        time.sleep(0.3)
        seen = self.upstream.matching(m)
        self.assertEqual([r["path"] for r in seen if "smuggled" in r["path"]], [],
                         "a request hidden in a body reached the upstream")
        for rec in seen:
            self.assertEqual(rec["body_len"], 0, rec)
            self.assertFalse("content-length" in rec["header_dict"] and "transfer-encoding" in rec["header_dict"],
                             "both framing headers forwarded: %r" % rec["header_dict"])
        # two different Content-Length values: 400, nothing forwarded
        m2 = marker("dupcl")
        status, _, _ = raw_exchange(self.worker, b"POST /dup?%s HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n"
                                    b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef"
                                    % (m2.encode(), self.key_a.encode()))
        self.assertEqual(status, 400)
        self.assertEqual(self.upstream.matching(m2), [])

    def test_absolute_form_target_stays_on_upstream(self):
        m = marker("abs")
        other = wh.free_port()
        status, _, rest = raw_exchange(
            self.worker, b"GET http://127.0.0.2:%d/abs?%s HTTP/1.1\r\nHost: 127.0.0.2:%d\r\nX-API-Key: %s\r\n"
            b"Connection: close\r\n\r\n" % (other, m.encode(), other, self.key_a.encode()))
        self.assertIn(status, (200, 400), "absolute-form target: %r %r" % (status, rest[:300]))
        if status == 200:
            self.assertEqual([r["path"] for r in self.upstream.matching(m)], ["/base/abs?" + m])

    def test_response_hop_by_hop_removed(self):
        resp = self.get("/hop", key=self.key_a)
        self.assertProxied(resp)
        self.assertEqual(resp.headers.get("X-Resp-E2E"), "kept", repr(resp))
        self.assertNotIn("X-Resp-Hop", resp.headers, repr(resp))
        self.assertNotIn("timeout=99", resp.headers.get("Keep-Alive", ""), repr(resp))
        self.assertNotIn("x-resp-hop", resp.headers.get("Connection", "").lower(), repr(resp))

    def test_retry_when_upstream_closed_pooled_connection(self):
        m = marker("pool")
        for i in range(6):
            self.assertProxied(self.get("/warm?%s&i=%d" % (m, i), key=self.key_a))
            self.upstream.drop_connections()
            method = "GET" if i % 2 == 0 else "POST"
            resp = self.worker.request(method, "/after-drop?%s&i=%d" % (m, i), key=self.key_a,
                                       raw_body=b"abc" if method == "POST" else None)
            self.assertProxied(resp)
            self.assertEqual(resp.json()["method"], method)

    def test_large_download_slow_reader(self):
        total = 100 * MB
        before = self.worker.rss_kb()
        sampler = RssSampler(self.worker)
        conn = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=60)
        try:
            conn.request("GET", "/big?bytes=%d" % total, headers={"X-API-Key": self.key_a})
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            n = len(resp.read(MB))
            time.sleep(2.0)  # the upstream keeps sending; the worker must not buffer it all
            stalled_peak = sampler.peak
            while True:
                chunk = resp.read(4 * MB)
                if not chunk:
                    break
                n += len(chunk)
        finally:
            conn.close()
            peak = sampler.stop()
        self.assertEqual(n, total)
        self.assertLess(stalled_peak - before, 64 * 1024,
                        "worker RSS grew by %d kB while the client did not read" % (stalled_peak - before))
        self.assertLess(peak - before, 64 * 1024)

    # -- upstream failures -------------------------------------------------------------------

    def test_upstream_unreachable_502(self):
        for method in ("GET", "POST"):
            start = time.monotonic()
            resp = self.worker.request(method, "/down", key=self.key_d, raw_body=b"{}" if method == "POST" else None)
            self.assertError(resp, 502, "Upstream service unreachable")
            self.assertLess(time.monotonic() - start, 5.0)
            rid = resp.headers["X-Request-Id"]
            entry = self.assertLogged(self.worker, lambda e: e.get("request_id") == rid, "502")
            self.assertEqual((entry.get("reason"), entry.get("status")), ("upstream_unreachable", 502), entry)
            self.assertIn(entry.get("decision"), ("allow", "block"), entry)
        self.assertTrue(self.worker.alive())
        self.assertProxied(self.get("/after-502", key=self.key_a))

    def test_https_upstream_refused_502(self):
        # https:// is proxied over TLS (test_tls_upstream.py); nothing listens here.
        resp = self.get("/tls", key=self.key_https)
        self.assertError(resp, 502, "Upstream service unreachable")
        self.assertTrue(self.worker.alive())

    def test_upstream_reset_502(self):
        m = marker("reset")
        resp = self.get("/reset?" + m, key=self.key_a)
        self.assertError(resp, 502)
        self.assertGreaterEqual(len(self.upstream.matching(m)), 1, "the request never reached the upstream")
        self.assertTrue(self.worker.alive())
        self.assertProxied(self.get("/after-reset", key=self.key_a))

    # -- connections ------------------------------------------------------------------------

    def test_keep_alive_200_requests(self):
        m = marker("ka")
        conn = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=10)
        conn.auto_open = 0
        conn.connect()
        sock = conn.sock
        try:
            for i in range(200):
                conn.request("GET", "/ka?%s&i=%d" % (m, i), headers={"X-API-Key": self.key_a})
                resp = conn.getresponse()
                body = resp.read()
                self.assertEqual(resp.status, 200, "request %d: %r" % (i, body[:300]))
                self.assertFalse(resp.will_close, "request %d: the worker closed the connection" % i)
                self.assertIs(conn.sock, sock, "request %d: new connection" % i)
        finally:
            conn.close()
        self.assertEqual(len(self.upstream.matching(m)), 200)

    def test_each_response_exactly_once(self):
        # Byte-exact on one keep-alive connection: every response is this request's own, nothing
        # follows it. Small bodies go out in one buffer with the head, larger ones behind it.
        m = marker("once")
        sock = self.worker.connect()
        try:
            for i, size in enumerate((0, 1, 3, 2047, 2048, 2049, 70000, 5, 0)):
                sock.sendall(b"GET /sized?bytes=%d&%s&i=%d HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n\r\n"
                             % (size, m.encode(), i, self.key_a.encode()))
                status, headers, rest = wh.read_http_head(sock, 10)
                self.assertEqual(status, 200, "request %d (%d bytes): %r" % (i, size, rest[:300]))
                self.assertEqual(headers.get("Content-Length"), str(size))
                body = rest
                while len(body) < size:
                    chunk = sock.recv(65536)
                    self.assertTrue(chunk, "closed after %d of %d body bytes" % (len(body), size))
                    body += chunk
                self.assertEqual(len(body), size, "request %d: bytes after the body" % i)
                self.assertEqual(hashlib.sha256(body).hexdigest(), wh.big_pattern(size), "request %d" % i)
                sock.settimeout(0.2)
                with self.assertRaises(socket.timeout, msg="request %d: bytes after the response" % i):
                    sock.recv(65536)
        finally:
            sock.close()
        self.assertEqual(len(self.upstream.matching(m)), 9)

    def test_websocket_echo(self):
        tag = h.random_string(16)
        head = wh.websocket_echo(self, self.worker, self.key_a, ("hello through the gateway " + tag, "second frame", "x" * 300))
        rec = [r for r in self.upstream.requests if r["route"] == "/base/ws"]
        self.assertTrue(rec, "upstream never saw the upgrade")
        self.assertNotIn("x-api-key", rec[-1]["header_dict"])
        # without a key: 401, no upgrade
        sock = self.worker.connect()
        try:
            sock.sendall(head.replace("X-API-Key: %s\r\n" % self.key_a, "").encode())
            status, _, _ = wh.read_http_head(sock, 5)
            self.assertEqual(status, 401)
        finally:
            sock.close()

    # -- access log and metrics -------------------------------------------------------------

    def test_access_log_one_line_per_request(self):
        tag = marker("alog")
        plan = []  # (request id, expected decision, reason, status, key index or None)

        def send(n, path, key, method="GET", body=None):
            rid = "%s-%d" % (tag, n)
            resp = self.worker.request(method, path, key=key, raw_body=body,
                                       headers={"X-Request-Id": rid, "User-Agent": "ag-log-test/2"})
            self.assertEqual(resp.headers.get("X-Request-Id"), rid)
            return rid, resp

        path = "/alog/users/12345/items/550e8400-e29b-41d4-a716-446655440000"
        rid, resp = send(0, path + "?x=1", self.key_a, "POST", b"q" * 123)
        self.assertProxied(resp)
        plan.append((rid, "allow", "", 200))
        rid, resp = send(1, "/alog/none", None)
        plan.append((rid, "block", "key_missing", 401))
        rid, resp = send(2, "/alog/bad", "agk_short")
        plan.append((rid, "block", "key_invalid", 401))
        rid, resp = send(3, "/alog/unknown", self.unknown_key)
        plan.append((rid, "block", "key_invalid", 401))
        for i in range(4):
            rid, resp = send(10 + i, "/alog/rl", self.key_b[1])
            plan.append((rid, "allow", "", 200) if i < 3 else (rid, "block", "rate_limited", 429))
            self.assertEqual(resp.status, plan[-1][3], repr(resp))

        ids = [p[0] for p in plan]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            seen = {e.get("request_id") for e in self.worker.access_log()}
            if all(i in seen for i in ids):
                break
            time.sleep(0.05)
        time.sleep(1.0)  # anything duplicated would show up by now
        log = self.worker.access_log()
        for rid, decision, reason, status in plan:
            entries = [e for e in log if e.get("request_id") == rid]
            self.assertEqual(len(entries), 1, "request %s has %d access-log lines: %r" % (rid, len(entries), entries))
            e = entries[0]
            for field in ACCESS_LOG_FIELDS:
                self.assertIn(field, e, "field %s missing: %r" % (field, e))
            self.assertEqual(e["decision"], decision, e)
            self.assertEqual(e["reason"], reason, e)
            self.assertEqual(e["status"], status, e)
            self.assertEqual(e["ip"], "127.0.0.1", e)
            self.assertEqual(e["user_agent"], "ag-log-test/2", e)
            self.assertEqual(e["risk_score"], 0, e)
            self.assertIsInstance(e["latency_ms"], (int, float), e)
            self.assertGreaterEqual(e["latency_ms"], 0, e)
            self.assertIsInstance(e["bytes_out"], int, e)
            self.assertGreater(e["bytes_out"], 0, e)
            self.assertTrue(e["ts"], e)
        first = [e for e in log if e.get("request_id") == plan[0][0]][0]
        self.assertEqual(first["project_id"], self.proj_a["id"], first)
        self.assertEqual(first["key_id"], self.ka["id"], first)
        self.assertEqual(first["method"], "POST", first)
        self.assertTrue(first["path"].startswith(path), first)
        self.assertEqual(first["endpoint"], "/alog/users/:id/items/:id", first)
        self.assertGreaterEqual(first["bytes_in"], 123, first)
        self.assertIsInstance(first["upstream_latency_ms"], (int, float), first)
        limited = [e for e in log if e.get("request_id") == plan[-1][0]][0]
        self.assertEqual(limited["project_id"], self.proj_b["id"], limited)
        self.assertEqual(limited["key_id"], self.kb[1]["id"], limited)
        missing = [e for e in log if e.get("request_id") == plan[1][0]][0]
        self.assertIn(missing["key_id"], ("", None), missing)

    def test_metrics(self):
        self.assertProxied(self.get("/metrics-probe", key=self.key_a))
        self.assertError(self.get("/metrics-probe"), 401)
        resp = self.worker.admin("/metrics")
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertIn("text/plain", resp.headers.get("Content-Type", ""), repr(resp))
        text = resp.text
        lines = [l for l in text.splitlines() if l.startswith("ag_requests_total{")]
        self.assertTrue(lines, "no ag_requests_total samples:\n" + text[:2000])
        proj = 'project="%s"' % self.proj_a["id"]
        allow = [l for l in lines if proj in l and 'decision="allow"' in l and 'status="2xx"' in l]
        self.assertTrue(allow, "no allow/2xx sample for project A:\n" + "\n".join(lines))
        self.assertGreaterEqual(float(allow[0].rsplit(" ", 1)[1]), 1)
        blocked = [l for l in lines if 'project=""' in l and 'decision="block"' in l and 'status="4xx"' in l]
        self.assertTrue(blocked, "no block/4xx sample for unidentified callers:\n" + "\n".join(lines))
        self.assertRegex(text, r"(?m)^# TYPE ag_requests_total counter$")
        self.assertRegex(text, r"(?m)^# TYPE ag_config_version gauge$")
        m = re.search(r"(?m)^ag_config_version(?:\{[^}]*\})? (\S+)$", text)
        self.assertIsNotNone(m, text[:2000])
        self.assertEqual(float(m.group(1)), self.VERSION)

    def test_admin_ready_and_ping(self):
        for path in ("/ready", "/ping"):
            resp = self.worker.admin(path)
            self.assertEqual(resp.status, 200, repr(resp))
            data = resp.json()
            self.assertEqual(data.get("status"), "ok", data)
            self.assertIs(data.get("ready"), True, data)
            self.assertEqual(data.get("config_version"), self.VERSION, data)

    def test_zz_key_never_in_output(self):
        # runs last (alphabetical order): every key used by this class, valid or not
        for key in self.all_keys:
            self.get("/secret-probe", key=key)
        time.sleep(1.0)
        out = self.worker.stdout + "\n" + self.worker.stderr
        self.assertGreater(len(self.worker.access_log()), 10)
        for key in self.all_keys:
            self.assertNotIn(key, out, "an API key appears in the worker's output")
            if len(key) >= 62:
                self.assertNotIn(key[13:55], out, "an API key's secret part appears in the output")


# =============================================================================================
# Timeouts and trusted proxies


class TimeoutTest(WorkerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = wh.Upstream()
        cls.workdir = tempfile.mkdtemp(prefix="ag-wtest-")
        cls.config_path = os.path.join(cls.workdir, "worker-config.json")
        cls.key, _ = wh.make_key()
        cls.project = wh.project_entry(cls.upstream.url, [wh.key_entry(cls.key)])
        wh.write_config(cls.config_path, [cls.project])
        cls.worker = wh.start_worker(cls.config_path, env_extra={
            "WORKER_UPSTREAM_TIMEOUT_SEC": "1", "WORKER_HEADER_TIMEOUT_SEC": "1",
            "WORKER_TRUSTED_PROXIES": "127.0.0.0/8", "WORKER_IDLE_TIMEOUT_SEC": "2"})
        ready = cls.worker.wait_ready()
        if ready is None or ready.status != 200:
            raise AssertionError("worker not ready: %r\n%s" % (ready, cls.worker.stderr))

    @classmethod
    def tearDownClass(cls):
        cls.worker.stop()
        cls.upstream.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def test_upstream_hang_504(self):
        m = marker("hang")
        start = time.monotonic()
        resp = self.worker.request("GET", "/hang?" + m, key=self.key, timeout=10)
        elapsed = time.monotonic() - start
        self.assertError(resp, 504, "Upstream timed out")
        self.assertGreater(elapsed, 0.8, "504 before the timeout")
        self.assertLess(elapsed, 3.0, "504 took %.1fs with WORKER_UPSTREAM_TIMEOUT_SEC=1" % elapsed)
        self.assertGreaterEqual(len(self.upstream.matching(m)), 1)
        rid = resp.headers["X-Request-Id"]
        entry = self.assertLogged(self.worker, lambda e: e.get("request_id") == rid, "504")
        self.assertEqual((entry.get("reason"), entry.get("status")), ("upstream_timeout", 504), entry)
        self.assertProxied(self.worker.request("GET", "/after-504", key=self.key))

    def test_slow_upstream_within_timeout(self):
        resp = self.worker.request("GET", "/slow?ms=400", key=self.key)
        self.assertProxied(resp)

    def _expect_408(self, first, trickle=None):
        sock = self.worker.connect()
        try:
            start = time.monotonic()
            sock.sendall(first)
            if trickle:
                # keep sending a header line every 0.3 s: the deadline must not move
                sock.settimeout(0.3)
                data = b""
                n = 0
                while time.monotonic() - start < 4 and b"\r\n\r\n" not in data:
                    try:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                        continue
                    except socket.timeout:
                        pass
                    try:
                        sock.sendall(b"X-Slow-%d: %s\r\n" % (n, trickle))
                    except OSError:
                        break
                    n += 1
                elapsed = time.monotonic() - start
                status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else None
            else:
                status, headers, _ = wh.read_http_head(sock, 5)
                elapsed = time.monotonic() - start
                if status is not None:
                    self.assertRegex(headers.get("X-Request-Id", ""), REQUEST_ID_RE, "408 without X-Request-Id")
            self.assertEqual(status, 408, "no 408 after %.1fs" % elapsed)
            self.assertGreater(elapsed, 0.7, "408 before the header timeout")
            self.assertLess(elapsed, 3.0, "408 took %.1fs with WORKER_HEADER_TIMEOUT_SEC=1" % elapsed)
            # and the connection is closed afterwards
            sock.settimeout(3)
            try:
                while sock.recv(65536):
                    pass
                closed = True
            except socket.timeout:
                closed = False
            except ConnectionResetError:
                closed = True
            self.assertTrue(closed, "connection left open after 408")
        finally:
            sock.close()

    def test_header_timeout_partial_request_line(self):
        self._expect_408(b"GET /partial-li")
        self.assertLogged(self.worker, lambda e: e.get("status") == 408 and e.get("reason") == "header_timeout",
                          "408")

    def test_header_timeout_partial_headers(self):
        self._expect_408(b"GET /x HTTP/1.1\r\nHost: a\r\nX-API-Key: " + self.key.encode() + b"\r\n")

    def test_header_timeout_slow_trickle(self):
        self._expect_408(b"GET /x HTTP/1.1\r\nHost: a\r\n", trickle=b"drip")

    def test_idle_keep_alive_closed(self):
        conn = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=10)
        try:
            conn.request("GET", "/idle", headers={"X-API-Key": self.key})
            resp = conn.getresponse()
            resp.read()
            self.assertEqual(resp.status, 200)
            self.assertFalse(resp.will_close)
            start = time.monotonic()
            conn.sock.settimeout(5)
            try:
                data = conn.sock.recv(65536)
                while data:
                    data = conn.sock.recv(65536)
                closed = True
            except socket.timeout:
                closed = False
            except ConnectionResetError:
                closed = True
            elapsed = time.monotonic() - start
            self.assertTrue(closed, "idle connection still open after 5 s (WORKER_IDLE_TIMEOUT_SEC=2)")
            self.assertGreater(elapsed, 0.5)
        finally:
            conn.close()

    def test_trusted_proxy_client_ip(self):
        m = marker("tp")
        resp = self.worker.request("GET", "/tp?" + m, key=self.key,
                                   headers={"X-Forwarded-For": "198.51.100.7, 127.0.0.5"})
        self.assertProxied(resp)
        rid = resp.headers["X-Request-Id"]
        entry = self.assertLogged(self.worker, lambda e: e.get("request_id") == rid, "trusted proxy")
        self.assertEqual(entry.get("ip"), "198.51.100.7", entry)
        xff = [p.strip() for p in self.upstream.matching(m)[0]["header_dict"].get("x-forwarded-for", "").split(",")]
        self.assertEqual(xff, ["198.51.100.7", "127.0.0.5", "127.0.0.1"])


# =============================================================================================
# Config reload from a file


class ReloadTest(WorkerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = wh.Upstream()
        cls.workdir = tempfile.mkdtemp(prefix="ag-wtest-")
        cls.config_path = os.path.join(cls.workdir, "worker-config.json")
        cls.project_id = str(uuid.uuid4())
        cls.key1, _ = wh.make_key()
        wh.write_config(cls.config_path, [cls.project([cls.key1])], version=100)
        cls.worker = wh.start_worker(cls.config_path)
        ready = cls.worker.wait_ready()
        if ready is None or ready.status != 200:
            raise AssertionError("worker not ready: %r\n%s" % (ready, cls.worker.stderr))

    @classmethod
    def tearDownClass(cls):
        cls.worker.stop()
        cls.upstream.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    @classmethod
    def project(cls, keys, expiring=()):
        entries = [wh.key_entry(k) for k in keys] + [wh.key_entry(k, expires_at=t) for k, t in expiring]
        return wh.project_entry(cls.upstream.url, entries, project_id=cls.project_id, name="reload")

    def status(self, key):
        return self.worker.request("GET", "/r", key=key).status

    def version(self):
        return self.worker.admin("/ready").json().get("config_version")

    def test_reload_corrupt_and_expiry(self):
        self.assertEqual(self.status(self.key1), 200)
        self.assertEqual(self.version(), 100)
        # new key in, old key out
        key2, _ = wh.make_key()
        wh.write_config(self.config_path, [self.project([key2])], version=101)
        (s2, s1), elapsed = self.poll(lambda: (self.status(key2), self.status(self.key1)),
                                      lambda r: r == (200, 401), 3.0)
        self.assertEqual((s2, s1), (200, 401), "reload not applied within 3 s")
        self.assertEqual(self.version(), 101)

        # a document that does not parse: ignored, logged
        mark = self.worker.stderr_count()
        wh.write_raw(self.config_path, b"{ this is not json")
        failure = self.worker.wait_for_stderr(r"(?i)(config|json|pars).*(fail|error|invalid|ignor)|"
                                              r"(fail|error|invalid|ignor).*(config|json|pars)",
                                              timeout=4.0, start=mark)
        self.assertIsNotNone(failure, "no log line about the corrupt config:\n" + self.worker.stderr[-2000:])
        self.assertEqual(self.status(key2), 200)
        self.assertEqual(self.status(self.key1), 401)
        self.assertEqual(self.version(), 101)
        self.assertTrue(self.worker.alive())

        # valid JSON that fails validation: ignored too
        mark = self.worker.stderr_count()
        key_bad, _ = wh.make_key()
        wh.write_raw(self.config_path, json.dumps({"schema": 1, "version": 102, "projects": [
            {"id": 5, "keys": [{"hash": hashlib.sha256(key_bad.encode()).hexdigest()}]}]}))
        time.sleep(2.5)
        self.assertEqual(self.status(key2), 200)
        self.assertEqual(self.status(key_bad), 401)
        self.assertEqual(self.version(), 101)
        errors = re.search(r"(?m)^ag_config_errors_total(?:\{[^}]*\})? (\S+)$", self.worker.metrics())

        # a valid document again, with a key that expires in a few seconds
        key3, _ = wh.make_key()
        key4, _ = wh.make_key()
        expires = int(time.time()) + 6
        wh.write_config(self.config_path, [self.project([key3], expiring=[(key4, expires)])], version=103)
        s3, _ = self.poll(lambda: self.status(key3), lambda s: s == 200, 3.0)
        self.assertEqual(s3, 200, "valid config after a bad one not loaded within 3 s")
        self.assertEqual(self.version(), 103)
        self.assertLess(time.time(), expires - 0.5, "test too slow to check the expiring key")
        self.assertEqual(self.status(key4), 200)
        self.assertEqual(self.status(key2), 401)
        time.sleep(max(0.0, expires + 1.2 - time.time()))
        self.assertEqual(self.status(key4), 401, "key accepted after its expires_at")
        self.assertEqual(self.status(key3), 200)
        # checked last so that the behaviour above is checked whatever the counter says
        self.assertIsNotNone(errors, "ag_config_errors_total missing")
        self.assertGreaterEqual(float(errors.group(1)), 2, "ag_config_errors_total after two rejected documents")


# =============================================================================================
# Not ready


class NotReadyTest(WorkerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.worker = wh.start_worker(control_url="http://127.0.0.1:%d" % wh.free_port(),
                                     secret="s" * 48)

    @classmethod
    def tearDownClass(cls):
        cls.worker.stop()

    def test_not_ready(self):
        time.sleep(1.5)  # a few refresh attempts fail
        key, _ = wh.make_key()
        resp = self.worker.request("GET", "/anything", key=key)
        self.assertError(resp, 503, NOT_READY)
        resp = self.worker.request("GET", "/anything")
        self.assertError(resp, 503)
        for path in ("/ready", "/ping"):
            resp = self.worker.admin(path)
            self.assertEqual(resp.status, 503, repr(resp))
            self.assertIs(resp.json().get("ready"), False, repr(resp))
        rid = "nr-" + uuid.uuid4().hex
        self.worker.request("GET", "/nr", key=key, headers={"X-Request-Id": rid})
        entry = self.assertLogged(self.worker, lambda e: e.get("request_id") == rid, "not ready")
        self.assertEqual((entry.get("decision"), entry.get("reason"), entry.get("status")),
                         ("block", "not_ready", 503), entry)
        m = re.search(r"(?m)^ag_config_version(?:\{[^}]*\})? (\S+)$", self.worker.metrics())
        self.assertIsNotNone(m)
        self.assertEqual(float(m.group(1)), -1)
        self.assertTrue(self.worker.alive())


# =============================================================================================
# Control-plane mode, end to end


class ControlPlaneModeTest(WorkerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = wh.Upstream()
        cls.control = h.start_control("sqlite")
        cls.workers = []

    @classmethod
    def tearDownClass(cls):
        for w in cls.workers:
            w.stop()
        cls.control.stop()
        cls.upstream.stop()

    def start(self, secret):
        w = wh.start_worker(control_url=self.control.base_url, secret=secret)
        self.workers.append(w)
        return w

    def test_a_wrong_secret_never_ready(self):
        w = self.start("wrong-" + h.random_string(40))
        time.sleep(2.5)
        self.assertEqual(w.admin("/ready").status, 503)
        key, _ = wh.make_key()
        self.assertError(w.request("GET", "/x", key=key), 503, NOT_READY)
        self.assertTrue(w.alive())

    def test_b_end_to_end(self):
        ctl = self.control
        user = h.register_user(ctl)
        project = h.create_project(ctl, user.token, upstream=self.upstream.url + "/api",
                                   key_policy="multiple",
                                   rate_limit={"requests_per_minute": 100000, "burst": 1000})
        k1 = h.create_key(ctl, user.token, project["id"])
        k2 = h.create_key(ctl, user.token, project["id"])
        w = self.start(ctl.worker_secret)
        ready = w.wait_ready(10)
        self.assertEqual(ready.status if ready else None, 200, "worker never ready:\n" + w.stderr[-2000:])
        m = marker("cp")
        resp = w.request("GET", "/hello?" + m, key=k1["api_key"])
        self.assertProxied(resp)
        rec = self.upstream.matching(m)
        self.assertEqual(len(rec), 1)
        self.assertEqual(rec[0]["path"], "/api/hello?" + m)
        self.assertEqual(rec[0]["header_dict"].get("x-gateway-project"), project["id"])
        self.assertEqual(rec[0]["header_dict"].get("x-gateway-key-id"), k1["id"])

        # revoke k1 through the API: 401 within 3 s, k2 unaffected
        resp = ctl.request("DELETE", "/projects/%s/keys/%s" % (project["id"], k1["id"]), token=user.token)
        self.assertEqual(resp.status, 204, repr(resp))
        status, elapsed = self.poll(lambda: w.request("GET", "/r", key=k1["api_key"]).status,
                                    lambda s: s == 401, 3.0)
        self.assertEqual(status, 401, "revoked key still accepted after %.1fs" % elapsed)
        self.assertProxied(w.request("GET", "/r2", key=k2["api_key"]))

        # a key created now is picked up, then the control plane dies: traffic keeps flowing
        k3 = h.create_key(ctl, user.token, project["id"])
        status, _ = self.poll(lambda: w.request("GET", "/r3", key=k3["api_key"]).status,
                              lambda s: s == 200, 3.0)
        self.assertEqual(status, 200, "new key not picked up within 3 s")
        # a key with its own rate limit (60/min, burst 0): one request, then 429
        k4 = h.create_key(ctl, user.token, project["id"], rate_limit={"requests_per_minute": 60, "burst": 0})
        status, _ = self.poll(lambda: w.request("GET", "/r4", key=k4["api_key"]).status,
                              lambda s: s != 401, 3.0)
        self.assertEqual(status, 200, "key with its own limit not picked up within 3 s")
        resp = w.request("GET", "/r4", key=k4["api_key"])
        self.assertError(resp, 429)
        self.assertEqual(resp.headers.get("RateLimit-Limit"), "1", repr(resp))
        version = ctl.worker_config().json()["version"]
        status, _ = self.poll(lambda: w.admin("/ready").json().get("config_version"),
                              lambda v: v == version, 3.0)
        self.assertEqual(status, version)
        ctl.proc.kill()
        ctl.proc.wait(5)
        deadline = time.monotonic() + 3.5
        n = 0
        while time.monotonic() < deadline:
            for key in (k2["api_key"], k3["api_key"]):
                resp = w.request("GET", "/after-kill", key=key, timeout=5)
                self.assertProxied(resp)
                n += 1
            self.assertError(w.request("GET", "/after-kill", key=k1["api_key"]), 401)
            time.sleep(0.2)
        self.assertGreater(n, 10)
        ready = w.admin("/ready")
        self.assertEqual(ready.status, 200)
        self.assertEqual(ready.json().get("config_version"), version)
        self.assertTrue(w.alive())


# =============================================================================================
# Graceful shutdown


class DrainTest(WorkerTestCase):
    def test_sigterm_drains_in_flight(self):
        upstream = wh.Upstream()
        workdir = tempfile.mkdtemp(prefix="ag-wtest-")
        try:
            config_path = os.path.join(workdir, "worker-config.json")
            key, _ = wh.make_key()
            wh.write_config(config_path, [wh.project_entry(upstream.url, [wh.key_entry(key)])])
            w = wh.start_worker(config_path)
            try:
                self.assertEqual(w.wait_ready().status, 200)
                # an idle keep-alive connection
                idle = http.client.HTTPConnection(w.host, w.port, timeout=10)
                idle.request("GET", "/idle", headers={"X-API-Key": key})
                r = idle.getresponse()
                r.read()
                self.assertEqual(r.status, 200)

                m = marker("drain")
                results = [None] * 5

                def run(i):
                    try:
                        results[i] = w.request("GET", "/slow?ms=1500&%s&i=%d" % (m, i), key=key, timeout=10)
                    except Exception as exc:  # noqa: BLE001
                        results[i] = exc

                threads = [threading.Thread(target=run, args=(i,)) for i in range(5)]
                for t in threads:
                    t.start()
                upstream.wait_for(lambda r: m in r["path"], count=5, timeout=3)
                time.sleep(0.1)
                t0 = time.monotonic()
                w.signal(signal.SIGTERM)
                time.sleep(0.3)

                # a new connection is refused or answered, never left hanging
                outcome = None
                try:
                    resp = w.request("GET", "/late", key=key, timeout=3)
                    outcome = resp.status
                except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected,
                        BrokenPipeError):
                    outcome = "refused"
                except socket.timeout:
                    outcome = "hung"
                self.assertNotEqual(outcome, "hung", "a connection after SIGTERM hung")

                # the idle keep-alive connection is closed
                idle.sock.settimeout(3)
                try:
                    data = idle.sock.recv(1)
                except socket.timeout:
                    data = None
                except ConnectionResetError:
                    data = b""
                self.assertEqual(data, b"", "idle keep-alive connection not closed on SIGTERM")
                idle.close()

                for t in threads:
                    t.join(10)
                for i, r in enumerate(results):
                    self.assertIsInstance(r, h.Response, "in-flight request %d: %r" % (i, r))
                    self.assertEqual(r.status, 200, repr(r))
                    self.assertEqual(r.headers.get("Connection", "").lower(), "close", repr(r))
                code = w.wait_exit(max(0.1, 5.0 - (time.monotonic() - t0)))
                self.assertEqual(code, 0, "exit code after SIGTERM (None = still running after 5 s)")
            finally:
                w.stop()
        finally:
            upstream.stop()
            shutil.rmtree(workdir, ignore_errors=True)


    def test_sigint_exits_zero(self):
        workdir = tempfile.mkdtemp(prefix="ag-wtest-")
        try:
            config_path = os.path.join(workdir, "worker-config.json")
            wh.write_config(config_path, [wh.project_entry("http://127.0.0.1:9", [])])
            w = wh.start_worker(config_path)
            try:
                self.assertEqual(w.wait_ready().status, 200)
                w.signal(signal.SIGINT)
                self.assertEqual(w.wait_exit(5), 0)
                with self.assertRaises(ConnectionRefusedError):
                    socket.create_connection((w.host, w.port), timeout=2).close()
            finally:
                w.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


# =============================================================================================
# Redis-backed rate limits


@unittest.skipUnless(shutil.which("redis-server"), "redis-server not on PATH")
class RedisRateLimitTest(WorkerTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = wh.Upstream()
        cls.redis = RedisServer()
        cls.workdir = tempfile.mkdtemp(prefix="ag-wtest-")
        cls.config_path = os.path.join(cls.workdir, "worker-config.json")
        cls.keys = [wh.make_key()[0] for _ in range(4)]
        cls.project = wh.project_entry(cls.upstream.url, [wh.key_entry(k) for k in cls.keys],
                                       requests_per_minute=60, burst=2)
        wh.write_config(cls.config_path, [cls.project])
        env = {"REDIS_URL": cls.redis.url}
        cls.w1 = wh.start_worker(cls.config_path, env_extra=env)
        cls.w2 = wh.start_worker(cls.config_path, env_extra=env)
        for w in (cls.w1, cls.w2):
            ready = w.wait_ready()
            if ready is None or ready.status != 200:
                raise AssertionError("worker not ready: %r\n%s" % (ready, w.stderr))

    @classmethod
    def tearDownClass(cls):
        cls.w1.stop()
        cls.w2.stop()
        cls.redis.stop()
        cls.upstream.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    def test_a_limit_enforced(self):
        statuses = [self.w1.request("GET", "/r", key=self.keys[0]).status for _ in range(4)]
        self.assertEqual(statuses, [200, 200, 200, 429])

    def test_b_limit_shared_between_workers(self):
        order = [self.w1, self.w2, self.w1, self.w2, self.w1, self.w2]
        statuses = [w.request("GET", "/shared", key=self.keys[1]).status for w in order]
        self.assertEqual(statuses.count(200), 3, statuses)
        self.assertEqual(statuses.count(429), 3, statuses)
        self.assertEqual(statuses[:3], [200, 200, 200], statuses)

    def test_c_redis_down_falls_back(self):
        mark = self.w1.stderr_count()
        self.redis.kill()
        statuses = []
        for _ in range(8):
            start = time.monotonic()
            resp = self.w1.request("GET", "/fallback", key=self.keys[2], timeout=10)
            self.assertLess(time.monotonic() - start, 2.0, "decision took too long with Redis down")
            statuses.append(resp.status)
        self.assertTrue(all(s in (200, 429) for s in statuses), statuses)
        self.assertIn(429, statuses, "failed open with Redis down: %r" % statuses)
        self.assertLessEqual(statuses.count(200), 4, statuses)
        text = self.w1.metrics()
        values = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                  if re.match(r"^ag_ratelimit_fallback_total(\{[^}]*\})? ", l)]
        self.assertTrue(values, "ag_ratelimit_fallback_total missing:\n" + text[:2000])
        self.assertGreater(sum(values), 0)
        self.assertIsNotNone(self.w1.wait_for_stderr(r"(?i)redis", timeout=3, start=mark),
                             "fallback not logged")
        self.assertTrue(self.w1.alive())


if __name__ == "__main__":
    unittest.main(verbosity=2)
