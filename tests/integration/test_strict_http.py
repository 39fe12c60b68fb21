"""Strict HTTP at the worker (docs/worker.md, "Strict HTTP"), against the real binary with raw
sockets: ambiguous framing, hosts and credentials are refused and the connection closed; paths are
normalised before routing, credentials and forwarding; header names with '_' and client-address
headers are not passed through.

Each refusal must be a JSON {"detail"} with X-Request-Id, and, for framing, followed by the
connection closing: a request pipelined behind it is never answered (no request smuggling).

Run: python3 tests/integration/test_strict_http.py
Environment: see the harness (AG_BIN).
"""

import hashlib
import os
import shutil
import socket
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import harness as wh  # noqa: E402


def new_key():
    k = wh.make_key()
    return k[0] if isinstance(k, tuple) else k


class Conn:
    """A raw client connection: send bytes, read whole responses, see whether it closed."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.f = self.sock.makefile("rb")

    def send(self, data):
        self.sock.sendall(data)

    def response(self, method="GET"):
        """(status, Headers, body) of the next response; status None when the connection closed."""
        try:
            return wh.read_http_response(self.f, method)
        except (OSError, ValueError):
            return None, None, b""

    def closed(self, timeout=2.0):
        """True when the server closes the connection (EOF) within `timeout`, sending nothing more."""
        self.sock.settimeout(timeout)
        try:
            rest = self.f.read(1)
        except (socket.timeout, OSError):
            return False
        return rest == b""

    def close(self):
        self.f.close()
        self.sock.close()


class StrictHttpCase(wh.WorkerTestCase):
    env_extra = None

    @classmethod
    def setUpClass(cls):
        cls.upstream = wh.Upstream()
        cls.key = new_key()
        cls.other_key = new_key()
        cls.tmp = tempfile.mkdtemp(prefix="ag-strict-")
        cls.config = os.path.join(cls.tmp, "config.json")
        base = cls.upstream.url
        alpha = wh.project_entry(base + "/baseA", keys=[wh.key_entry(cls.key)])
        alpha["slug"] = "alpha"
        alpha["services"] = [{"name": "svc", "targets": [base + "/svc-base"]},
                             {"name": "svcb", "targets": [base + "/svcb-base"]}]
        beta = wh.project_entry(base + "/baseB", keys=[wh.key_entry(cls.other_key)])
        beta["slug"] = "beta"
        beta["services"] = [{"name": "svc", "targets": [base + "/beta-svc"]}]
        wh.write_config(cls.config, [alpha, beta])
        cls.worker = wh.start_worker(cls.config, env_extra=cls.env_extra)
        got, _, ok = wh.poll_until(lambda: cls.status_of("/ready-probe"), lambda s: s == 200, 10.0)
        if not ok:
            raise RuntimeError("worker not serving: %r\n%s" % (got, cls.worker.stderr[-2000:]))

    @classmethod
    def tearDownClass(cls):
        cls.worker.stop()
        cls.upstream.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def status_of(cls, path):
        try:
            return cls.worker.request("GET", path, key=cls.key, timeout=5).status
        except OSError:
            return None

    def conn(self):
        c = Conn(self.worker.port)
        self.addCleanup(c.close)
        return c

    def marker(self):
        return "m" + harness.random_string(12)

    def head(self, first_line, *fields, key=True):
        lines = [first_line] + list(fields)
        if key:
            lines.append("X-API-Key: " + self.key)
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def assertRawError(self, status, headers, body, expected):
        self.assertEqual(status, expected, "status %r, body %r" % (status, body[:200]))
        self.assertTrue(headers.get("X-Request-Id"), headers)
        self.assertIn("application/json", headers.get("Content-Type", ""))
        self.assertIsNone(headers.get("X-Upstream"), "answered by the upstream")
        import json
        detail = json.loads(body).get("detail")
        self.assertIsInstance(detail, str)
        self.assertTrue(detail)
        return detail

    def assertRefusedAndClosed(self, data, expected=400, marker=None):
        """One error answer to `data` (with a keyed GET pipelined behind it), then the close."""
        c = self.conn()
        smuggled = self.marker()
        c.send(data + self.head("GET /%s HTTP/1.1" % smuggled, "Host: a"))
        status, headers, body = c.response()
        detail = self.assertRawError(status, headers, body, expected)
        self.assertEqual(headers.get("Connection", "").lower(), "close", headers)
        self.assertTrue(c.closed(), "the connection stayed open after a refused head")
        self.assertEqual(self.upstream.matching(smuggled), [], "the pipelined request reached the upstream")
        if marker is not None:
            self.assertEqual(self.upstream.matching(marker), [], "the refused request reached the upstream")
        return detail

    def proxied_path(self, target, **kw):
        """The path the upstream saw for GET `target` with the key (expects a 200)."""
        m = self.marker()
        sep = "&" if "?" in target else "?"
        resp = self.worker.request("GET", target + sep + m, key=kw.get("key", self.key), timeout=5,
                                   headers=kw.get("headers"))
        self.assertProxied(resp)
        seen = self.upstream.matching(m)
        self.assertEqual(len(seen), 1, seen)
        return seen[0]["path"][:-(len(m) + 1)]


class FramingTest(StrictHttpCase):

    def test_transfer_encoding_not_ending_in_chunked(self):
        for te in ("cow", "chunked, identity", "xchunked", "identity"):
            for with_cl, order in ((False, 0), (True, 0), (True, 1)):
                m = self.marker()
                fields = ["Host: a", "Transfer-Encoding: " + te]
                if with_cl:
                    fields.insert(1 + order, "Content-Length: 5")
                data = self.head("POST /%s HTTP/1.1" % m, *fields) + b"hello"
                with self.subTest(te=te, content_length=with_cl, order=order):
                    self.assertRefusedAndClosed(data, 400, m)

    def test_te_cow_then_pipelined_get_is_never_served(self):
        """The reported desync: POST with TE: cow and no key, then a keyed GET on the same
        connection. Before: 401, then 200 for the smuggled GET."""
        c = self.conn()
        m = self.marker()
        c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: cow\r\n\r\n"
               + self.head("GET /%s HTTP/1.1" % m, "Host: a"))
        status, headers, body = c.response()
        self.assertRawError(status, headers, body, 400)
        self.assertTrue(c.closed())
        self.assertEqual(self.upstream.matching(m), [])

    def test_chunked_with_content_length(self):
        m = self.marker()
        data = self.head("POST /%s HTTP/1.1" % m, "Host: a", "Transfer-Encoding: chunked", "Content-Length: 5")
        self.assertRefusedAndClosed(data + b"5\r\nhello\r\n0\r\n\r\n", 400, m)

    def test_transfer_encoding_in_http10(self):
        m = self.marker()
        data = self.head("POST /%s HTTP/1.0" % m, "Host: a", "Transfer-Encoding: chunked")
        self.assertRefusedAndClosed(data + b"5\r\nhello\r\n0\r\n\r\n", 400, m)

    def test_other_coding_before_chunked_is_not_implemented(self):
        m = self.marker()
        data = self.head("POST /%s HTTP/1.1" % m, "Host: a", "Transfer-Encoding: gzip, chunked")
        self.assertRefusedAndClosed(data + b"0\r\n\r\n", 501, m)

    def test_two_content_lengths(self):
        m = self.marker()
        data = self.head("POST /%s HTTP/1.1" % m, "Host: a", "Content-Length: 1", "Content-Length: 1")
        self.assertRefusedAndClosed(data + b"x", 400, m)

    def test_malformed_chunked_bodies_get_400_and_no_complete_request(self):
        cases = {
            "size overflow": b"ffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
            "0x prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
            "negative": b"-5\r\nhello\r\n0\r\n\r\n",
            "bad terminator": b"5\r\nhelloXX0\r\n\r\n",
            "LF-only lines": b"5\nhello\n0\n\n",
            "TE in trailer": b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "CL in trailer": b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",
        }
        for name, body in cases.items():
            with self.subTest(name):
                m = self.marker()
                c = self.conn()
                c.send(self.head("POST /%s HTTP/1.1" % m, "Host: a", "Transfer-Encoding: chunked") + body)
                status, headers, rbody = c.response()
                self.assertRawError(status, headers, rbody, 400)
                self.assertTrue(c.closed())
                time.sleep(0.1)
                done = [r for r in self.upstream.matching(m) if r["complete"]]
                self.assertEqual(done, [], "the upstream received a complete request")

    def test_wellformed_chunked_body_with_trailer_is_proxied(self):
        m = self.marker()
        c = self.conn()
        c.send(self.head("POST /%s HTTP/1.1" % m, "Host: a", "Transfer-Encoding: chunked")
               + b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n")
        status, headers, body = c.response("POST")
        self.assertEqual(status, 200, body[:200])
        self.assertEqual(headers.get("X-Upstream"), "yes")
        seen = self.upstream.matching(m)
        self.assertEqual(len(seen), 1)
        self.assertTrue(seen[0]["complete"])
        self.assertEqual(seen[0]["sha256"], hashlib.sha256(b"hello world").hexdigest())

    def test_host_missing_repeated_or_invalid(self):
        for name, fields in (("missing", []), ("two", ["Host: a", "Host: b"]),
                             ("space", ["Host: exa mple.com"]), ("slash", ["Host: a/b"]),
                             ("port word", ["Host: h:port"]), ("port junk", ["Host: h:99999x"])):
            with self.subTest(name):
                m = self.marker()
                self.assertRefusedAndClosed(self.head("GET /%s HTTP/1.1" % m, *fields), 400, m)

    def test_http10_without_host_is_served(self):
        c = self.conn()
        m = self.marker()
        c.send(self.head("GET /%s HTTP/1.0" % m))
        status, headers, _ = c.response()
        self.assertEqual(status, 200)
        self.assertEqual(len(self.upstream.matching(m)), 1)

    def test_two_credentials_of_one_kind(self):
        for name, fields in (("two keys", ["X-API-Key: " + self.key]),
                             ("two keys, one other", ["X-API-Key: " + self.other_key]),
                             ("two authorization", ["Authorization: Bearer a", "Authorization: Bearer b"])):
            with self.subTest(name):
                m = self.marker()
                detail = self.assertRefusedAndClosed(self.head("GET /%s HTTP/1.1" % m, "Host: a", *fields), 400, m)
                self.assertIn("Ambiguous credentials", detail)

    def test_every_connection_token_is_hop_by_hop(self):
        m = self.marker()
        c = self.conn()
        c.send(self.head("GET /%s HTTP/1.1" % m, "Host: a", "Connection: keep-alive", "Connection: X-Secret-Hop",
                         "X-Secret-Hop: 1", "X-Kept: 2"))
        status, _, _ = c.response()
        self.assertEqual(status, 200)
        seen = self.upstream.matching(m)[0]["header_dict"]
        self.assertNotIn("x-secret-hop", seen)
        self.assertEqual(seen.get("x-kept"), "2")


class PathTest(StrictHttpCase):

    def test_dot_segments_are_removed(self):
        self.assertEqual(self.proxied_path("/a/./b/../c?x=1"), "/baseA/a/c?x=1")
        self.assertEqual(self.proxied_path("/a//b"), "/baseA/a/b")
        self.assertEqual(self.proxied_path("/a/%2e%2e/b"), "/baseA/b")
        self.assertEqual(self.proxied_path("/a/%2E%2e/b"), "/baseA/b")
        self.assertEqual(self.proxied_path("/a%2Fb/../c"), "/baseA/c")
        self.assertEqual(self.proxied_path("/a/b%2Fc"), "/baseA/a/b%2Fc")
        self.assertEqual(self.proxied_path("/q?p=/../x"), "/baseA/q?p=/../x")  # the query is not a path

    def test_climbing_above_the_root_is_refused(self):
        for target in ("/../baseB/x", "/a/../../baseB/x", "/%2e%2e/baseB/x", "/..", "/a/./../.."):
            with self.subTest(target):
                m = self.marker()
                resp = self.worker.request("GET", target + "?" + m, key=self.key, timeout=5)
                self.assertError(resp, 400)
                self.assertEqual(self.upstream.matching(m), [])

    def test_dot_segments_cannot_leave_a_service(self):
        # Routed as /alpha/svcb/orders: svcb's target, never svc's with the dots forwarded.
        path = self.proxied_path("/alpha/svc/../svcb/orders")
        self.assertEqual(path, "/svcb-base/orders")
        # Another project's key cannot reach alpha through beta's prefix.
        m = self.marker()
        resp = self.worker.request("GET", "/beta/svc/../../alpha/svc/x?" + m, key=self.other_key, timeout=5)
        self.assertError(resp, 403)
        self.assertEqual(self.upstream.matching(m), [])
        m = self.marker()
        resp = self.worker.request("GET", "/beta/svc/%2e%2e/%2e%2e/alpha/svc/x?" + m, key=self.other_key, timeout=5)
        self.assertError(resp, 403)
        self.assertEqual(self.upstream.matching(m), [])


class RawPathTest(StrictHttpCase):
    env_extra = {"WORKER_PATH_NORMALIZATION": "off"}

    def test_raw_path_is_forwarded(self):
        self.assertEqual(self.proxied_path("/a/./b/../c"), "/baseA/a/./b/../c")


class KeepSlashesTest(StrictHttpCase):
    env_extra = {"WORKER_MERGE_SLASHES": "off"}

    def test_slashes_kept_dots_removed(self):
        self.assertEqual(self.proxied_path("/a//b/./c/../d"), "/baseA/a//b/d")


class HeaderTest(StrictHttpCase):

    def test_underscore_names_are_dropped(self):
        m = self.marker()
        resp = self.worker.request("GET", "/u?" + m, key=self.key, timeout=5,
                                   headers={"X_Gateway_Project": "evil", "X_API_KEY": "x", "X-Fine": "1"})
        self.assertProxied(resp)
        seen = self.upstream.matching(m)[0]["header_dict"]
        self.assertNotIn("x_gateway_project", seen)
        self.assertNotIn("x_api_key", seen)
        self.assertEqual(seen.get("x-fine"), "1")
        self.assertNotEqual(seen.get("x-gateway-project"), "evil")

    def test_client_ip_headers_belong_to_the_worker(self):
        m = self.marker()
        c = self.conn()
        c.send(self.head("GET /%s HTTP/1.1" % m, "Host: a", "X-Real-IP: 6.6.6.6", "Forwarded: for=6.6.6.6",
                         "True-Client-IP: 6.6.6.6", "X-Client-IP: 6.6.6.6", "X-Forwarded-For: 1.1.1.1",
                         "X-Forwarded-For: 2.2.2.2"))
        status, _, _ = c.response()
        self.assertEqual(status, 200)
        seen = self.upstream.matching(m)[0]["header_dict"]
        self.assertEqual(seen.get("x-real-ip"), "127.0.0.1")
        for name in ("forwarded", "true-client-ip", "x-client-ip"):
            self.assertNotIn(name, seen)
        self.assertEqual(seen.get("x-forwarded-for"), "1.1.1.1, 2.2.2.2, 127.0.0.1")


class AllowUnderscoreTest(StrictHttpCase):
    env_extra = {"WORKER_UNDERSCORE_HEADERS": "allow"}

    def test_underscore_names_are_forwarded(self):
        m = self.marker()
        resp = self.worker.request("GET", "/u?" + m, key=self.key, timeout=5, headers={"X_Custom": "1"})
        self.assertProxied(resp)
        self.assertEqual(self.upstream.matching(m)[0]["header_dict"].get("x_custom"), "1")


class RejectUnderscoreTest(StrictHttpCase):
    env_extra = {"WORKER_UNDERSCORE_HEADERS": "reject"}

    def test_underscore_names_are_refused(self):
        m = self.marker()
        resp = self.worker.request("GET", "/u?" + m, key=self.key, timeout=5, headers={"X_Custom": "1"})
        self.assertError(resp, 400)
        self.assertEqual(self.upstream.matching(m), [])


class TrustedProxyTest(StrictHttpCase):
    env_extra = {"WORKER_TRUSTED_PROXIES": "127.0.0.1/32"}

    def test_real_ip_from_a_trusted_proxy(self):
        m = self.marker()
        resp = self.worker.request("GET", "/t?" + m, key=self.key, timeout=5,
                                   headers={"X-Forwarded-For": "9.9.9.9", "Forwarded": "for=9.9.9.9"})
        self.assertProxied(resp)
        seen = self.upstream.matching(m)[0]["header_dict"]
        self.assertEqual(seen.get("x-real-ip"), "9.9.9.9")
        self.assertEqual(seen.get("forwarded"), "for=9.9.9.9")


if __name__ == "__main__":
    unittest.main()
