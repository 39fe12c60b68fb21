"""Integration tests of https:// upstreams (docs/worker.md, "HTTPS upstreams"; docs/services-and-tokens.md).

The worker connects to an https:// upstream or service target with TLS 1.2 or later, sends SNI
(not for an IP literal), verifies the chain against the system trust store plus the PEM bundle
named by WORKER_UPSTREAM_CA_FILE, and verifies the host name (the IP address SAN for an IP
literal). A handshake or verification failure answers 502 with a detail naming TLS, and the
upstream application never sees the request.

Certificates are made at start-up with the `openssl` command line (EC P-256) in a temporary
directory: a test CA, an unrelated CA (padding the bundle), an intermediate CA, leaf certificates
for `localhost` / 127.0.0.1 (from the CA and from the intermediate), one for `other.example` only,
and a self-signed one. The upstreams are the recording harness.Upstream behind TLS
(`TlsUpstream` below), which also records, per connection, the SNI name and the TLS version, and
counts accepted TCP connections and failed handshakes.

Run: python3 tests/integration/test_tls_upstream.py   (AG_BIN: the binary; AG_TEST_KEEP=1 keeps
the certificate directory)
"""

import atexit
import hashlib
import http.client
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
import harness as wh  # noqa: E402

MB = 1024 * 1024
UNREACHABLE = "Upstream service unreachable"
HEALTH_PATH = "/healthz"
# A failed handshake must be answered quickly (no hang until a request timeout).
FAIL_FAST_SEC = 5.0
HANDSHAKE_TIMEOUT_SEC = 10.0
# Health checks run every second here; a change of a target's health shows within this bound.
HEALTH_BOUND_SEC = 4.0

# Variables that decide which certificates the worker trusts: cleared from every worker we start
# unless a test sets them, so that the developer's shell cannot change the outcome.
TRUST_ENV_CLEARED = {"WORKER_UPSTREAM_CA_FILE": None, "SSL_CERT_FILE": None, "SSL_CERT_DIR": None}


def marker(prefix="m"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def pattern_bytes(n):
    """The deterministic bytes the upstream's /big, /bigcl and /closedelim routes send."""
    block = bytes(range(256)) * 256
    out = bytearray()
    while len(out) < n:
        out += block[:min(n - len(out), len(block))]
    return bytes(out)


def data_chunks(total, chunk=64 * 1024, seed=b"tls"):
    """Deterministic pseudo-random body of `total` bytes in chunks: (generator, sha256 hex)."""
    block = (hashlib.sha256(seed).digest() * (chunk // 32 + 1))[:chunk]
    sizes = []
    left = total
    while left > 0:
        sizes.append(min(left, chunk))
        left -= sizes[-1]
    digest = hashlib.sha256()
    for i, n in enumerate(sizes):
        digest.update(bytes([i % 251]) + block[1:n])

    def gen():
        for i, n in enumerate(sizes):
            yield bytes([i % 251]) + block[1:n]

    return gen(), digest.hexdigest()


def poll_until(fn, ok, timeout, interval=0.1):
    return wh.poll_until(fn, ok, timeout, interval)


# ---------------------------------------------------------------------------------------------
# Certificates


_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_intermediate]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_other]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:other.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_self]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
"""


class Certs:
    """Every certificate and key the suite uses, as file paths in a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ag-tls-certs-")
        self.cnf = self._path("openssl.cnf")
        with open(self.cnf, "w") as f:
            f.write(_CNF)
        self.ca, self.ca_key = self._root("ca", "Antigravity Test CA")
        self.unrelated_ca, _ = self._root("unrelated-ca", "Antigravity Unrelated CA")
        # leaf for localhost / 127.0.0.1 from the CA
        self.leaf, self.leaf_key = self._signed("leaf", "localhost", "v3_leaf", self.ca, self.ca_key)
        # leaf for other.example only, from the CA (host name mismatch)
        self.other, self.other_key = self._signed("other", "other.example", "v3_other", self.ca, self.ca_key)
        # intermediate CA under the CA, and a leaf under it
        self.inter, self.inter_key = self._signed("inter", "Antigravity Test Intermediate", "v3_intermediate",
                                                  self.ca, self.ca_key)
        self.inter_leaf, self.inter_leaf_key = self._signed("inter-leaf", "localhost", "v3_leaf",
                                                            self.inter, self.inter_key)
        self.inter_chain = self._path("inter-leaf-chain.pem")
        self._concat(self.inter_chain, [self.inter_leaf, self.inter])
        # self-signed, not from any CA the worker is given
        self.self_signed, self.self_signed_key = self._self_signed("self", "localhost")
        # the bundle the worker is given: an unrelated CA first, then the test CA
        self.bundle = self._path("bundle.pem")
        self._concat(self.bundle, [self.unrelated_ca, self.ca])

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _openssl(self, *args):
        proc = subprocess.run(["openssl"] + list(args), cwd=self.dir, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError("openssl %s failed (%d):\n%s" % (" ".join(args), proc.returncode,
                                                                proc.stderr.decode("utf-8", "replace")))

    def _key(self, name):
        path = self._path(name + ".key")
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        return path

    def _root(self, name, cn):
        key = self._key(name)
        cert = self._path(name + ".pem")
        self._openssl("req", "-x509", "-new", "-config", self.cnf, "-extensions", "v3_ca", "-key", key,
                      "-subj", "/CN=" + cn, "-days", "3", "-sha256", "-out", cert)
        return cert, key

    def _self_signed(self, name, cn):
        key = self._key(name)
        cert = self._path(name + ".pem")
        self._openssl("req", "-x509", "-new", "-config", self.cnf, "-extensions", "v3_self", "-key", key,
                      "-subj", "/CN=" + cn, "-days", "3", "-sha256", "-out", cert)
        return cert, key

    def _signed(self, name, cn, extensions, ca, ca_key):
        key = self._key(name)
        csr = self._path(name + ".csr")
        cert = self._path(name + ".pem")
        self._openssl("req", "-new", "-config", self.cnf, "-key", key, "-subj", "/CN=" + cn, "-out", csr)
        self._openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                      "-set_serial", "0x" + uuid.uuid4().hex, "-days", "3", "-sha256",
                      "-extfile", self.cnf, "-extensions", extensions, "-out", cert)
        return cert, key

    @staticmethod
    def _concat(dest, sources):
        with open(dest, "wb") as out:
            for src in sources:
                with open(src, "rb") as f:
                    data = f.read()
                out.write(data if data.endswith(b"\n") else data + b"\n")

    def cleanup(self):
        if os.environ.get("AG_TEST_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


_certs = []


def certs():
    """The suite's certificates, made once per process."""
    if not _certs:
        _certs.append(Certs())
    return _certs[0]


atexit.register(lambda: [c.cleanup() for c in _certs])


# ---------------------------------------------------------------------------------------------
# A recording HTTPS/1.1 upstream


def _remember_sni(sock, server_name, context):
    sock.ag_sni = server_name  # None when the client sent no SNI
    return None


class _TlsServer(wh.UpstreamServer):
    """Accepts TCP connections (counted) and hands them on wrapped in TLS; the handshake itself
    runs in the connection's thread (_TlsHandler.setup), so a stalled client blocks no one."""

    def get_request(self):
        sock, addr = self.socket.accept()
        self.upstream._accepted()
        return self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        self.upstream._error(sys.exc_info()[1])


class _TlsHandler(wh.UpstreamHandler):
    def setup(self):
        up = self.server.upstream
        conn = self.request
        conn.settimeout(HANDSHAKE_TIMEOUT_SEC)
        try:
            conn.do_handshake()
        except (ssl.SSLError, OSError) as e:
            up._handshake_failed(e)
            raise
        conn.settimeout(None)
        info = {"peer_port": self.client_address[1], "sni": getattr(conn, "ag_sni", None),
                "tls_version": conn.version()}
        up._local.info = info
        up._handshake_ok(info)
        super().setup()

    def _route_record(self, route):
        length, digest, complete = self._read_body()
        header_dict = {}
        for name, value in self.headers.items():
            k = name.lower()
            header_dict[k] = header_dict[k] + ", " + value if k in header_dict else value
        return {"method": self.command, "path": self.path, "route": route,
                "headers": list(self.headers.items()), "header_dict": header_dict,
                "body_len": length, "sha256": digest, "complete": complete, "time": time.monotonic()}

    def _handle(self):
        up = self.server.upstream
        parsed = urllib.parse.urlsplit(self.path)
        route = parsed.path
        query = urllib.parse.parse_qs(parsed.query)
        if route.endswith(HEALTH_PATH):
            rec = self._route_record(route)
            rec.update(getattr(up._local, "info", {}))
            with up._lock:
                up.health_requests.append(rec)
            self._send_json(up.health_status, {"health": up.health_status})
            return
        if route.endswith("/bigcl"):  # the /big pattern with a Content-Length
            rec = self._route_record(route)
            up._record(rec)
            n = int((query.get("bytes") or ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.send_header("X-Upstream", "yes")
            self.end_headers()
            self._write_pattern(n)
            return
        if route.endswith("/closedelim"):  # no Content-Length, no chunking: the close ends the body
            rec = self._route_record(route)
            up._record(rec)
            n = int((query.get("bytes") or ["0"])[0])
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"X-Upstream: yes\r\nConnection: close\r\n\r\n")
            self._write_pattern(n)
            self.wfile.flush()
            # close_notify, then the TCP close
            try:
                self.request.settimeout(2.0)
                self.request.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass
            return
        super()._handle()

    def _write_pattern(self, n):
        block = bytes(range(256)) * 256
        left = n
        while left > 0:
            piece = block[:min(left, len(block))]
            self.wfile.write(piece)
            left -= len(piece)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class TlsUpstream(wh.Upstream):
    """wh.Upstream (same routes and request records) served over TLS 1.2+ with `cert`/`key`
    (`cert` may hold a chain). Also: `accepted` (TCP connections accepted), `handshakes` (one
    {"peer_port", "sni", "tls_version"} per completed handshake), `handshake_errors`, health
    checks on */healthz answered with `health_status` and kept in `health_requests` (not in
    `requests`). Each request record gains the connection's peer_port, sni and tls_version."""

    def __init__(self, cert, key, max_version=None):
        # The fields of wh.Upstream.__init__, with a TLS server.
        self._lock = threading.Lock()
        self._requests = []
        self._conns = set()
        self._stop = threading.Event()
        self._ws_sessions = 0
        self._local = threading.local()
        self.accepted = 0
        self.handshakes = []
        self.handshake_errors = []
        self.errors = []
        self.health_status = 200
        self.health_requests = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if max_version is not None:
            ctx.maximum_version = max_version
        ctx.load_cert_chain(cert, key)
        ctx.sni_callback = _remember_sni
        self._server = _TlsServer(("127.0.0.1", 0), _TlsHandler)
        self._server.ssl_context = ctx
        self._server.upstream = self
        self.port = self._server.server_address[1]
        self.host = "127.0.0.1"
        self.url = "https://127.0.0.1:%d" % self.port
        self.url_localhost = "https://localhost:%d" % self.port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()

    # -- called by the server and handler threads ------------------------------------------

    def _record(self, record):
        record.update(getattr(self._local, "info", {}))
        super()._record(record)

    def _accepted(self):
        with self._lock:
            self.accepted += 1

    def _handshake_ok(self, info):
        with self._lock:
            self.handshakes.append(info)

    def _handshake_failed(self, exc):
        with self._lock:
            self.handshake_errors.append(repr(exc))

    def _error(self, exc):
        with self._lock:
            self.errors.append(repr(exc))

    # -- for the tests ---------------------------------------------------------------------

    def counts(self):
        """(accepted TCP connections, completed handshakes, failed handshakes)."""
        with self._lock:
            return self.accepted, len(self.handshakes), len(self.handshake_errors)

    def health(self):
        with self._lock:
            return list(self.health_requests)


# ---------------------------------------------------------------------------------------------
# Worker helpers


def tls_env(ca_file=None, extra=None):
    env = dict(TRUST_ENV_CLEARED)
    if ca_file is not None:
        env["WORKER_UPSTREAM_CA_FILE"] = ca_file
    env["WORKER_SNAPSHOT_PATH"] = "off"
    env.update(extra or {})
    return env


def start_tls_worker(config_path, ca_file=None, threads=2):
    w = wh.start_worker(config_path, env_extra=tls_env(ca_file), threads=threads)
    ready = w.wait_ready()
    if ready is None or ready.status != 200:
        w.stop()
        raise AssertionError("worker not ready: %r\n%s" % (ready, w.stderr[-3000:]))
    return w


def stop_worker(w):
    w.stop()
    shutil.rmtree(w.workdir, ignore_errors=True)


def download(worker, path, key, timeout=60):
    """GET `path`, reading the body in pieces: (status, headers, length, sha256 hex, body prefix)."""
    conn = http.client.HTTPConnection(worker.host, worker.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"X-API-Key": key})
        resp = conn.getresponse()
        digest = hashlib.sha256()
        n = 0
        prefix = b""
        while True:
            chunk = resp.read(MB)
            if not chunk:
                break
            if len(prefix) < 600:
                prefix += chunk[:600]
            digest.update(chunk)
            n += len(chunk)
        return resp.status, h.Headers(resp.getheaders()), n, digest.hexdigest(), prefix
    finally:
        conn.close()


class TlsTestCase(wh.WorkerTestCase):
    maxDiff = 4000
    worker = None

    def setUp(self):
        if self.worker is not None:
            self.assertTrue(self.worker.alive(), "worker died:\n" + self.worker.stderr[-3000:])

    def assertTlsFailure(self, worker, upstreams, path, key, what):
        """GET and POST `path`: 502 within FAIL_FAST_SEC with a detail naming TLS, one access-log
        line each, and no upstream in `upstreams` received the request."""
        for method in ("GET", "POST"):
            m = marker("tlsfail")
            sep = "&" if "?" in path else "?"
            start = time.monotonic()
            resp = worker.request(method, path + sep + m, key=key,
                                  raw_body=b'{"x": 1}' if method == "POST" else None,
                                  content_type="application/json" if method == "POST" else None,
                                  timeout=30)
            elapsed = time.monotonic() - start
            data = self.assertError(resp, 502)
            self.assertIn("TLS", data["detail"], "%s (%s): %r" % (what, method, resp))
            self.assertLess(elapsed, FAIL_FAST_SEC, "%s (%s): answered after %.1fs" % (what, method, elapsed))
            rid = resp.headers["X-Request-Id"]
            entry = worker.wait_for_log(lambda e: e.get("request_id") == rid, 5.0)
            self.assertIsNotNone(entry, "%s: no access-log line for %s" % (what, rid))
            self.assertEqual(entry.get("status"), 502, entry)
            self.assertEqual(entry.get("reason"), "upstream_tls", entry)
            for up in upstreams:
                self.assertEqual(up.matching(m), [], "%s: the upstream application received the request" % what)
        self.assertTrue(worker.alive(), "%s: the worker died:\n%s" % (what, worker.stderr[-3000:]))


# =============================================================================================
# Project upstreams over https, one worker given the CA bundle


class TlsProxyTest(TlsTestCase):
    @classmethod
    def setUpClass(cls):
        c = certs()
        cls.certs = c
        cls.workdir = tempfile.mkdtemp(prefix="ag-tls-")
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)
        cls.ups = {}

        def up(name, factory):
            u = factory()
            cls.addClassCleanup(u.stop)
            cls.ups[name] = u
            return u

        cls.good = up("good", lambda: TlsUpstream(c.leaf, c.leaf_key))
        cls.pool = up("pool", lambda: TlsUpstream(c.leaf, c.leaf_key))
        cls.drop = up("drop", lambda: TlsUpstream(c.leaf, c.leaf_key))
        cls.tls12 = up("tls12", lambda: TlsUpstream(c.leaf, c.leaf_key, max_version=ssl.TLSVersion.TLSv1_2))
        cls.chain = up("chain", lambda: TlsUpstream(c.inter_chain, c.inter_leaf_key))
        cls.nochain = up("nochain", lambda: TlsUpstream(c.inter_leaf, c.inter_leaf_key))
        cls.untrusted = up("untrusted", lambda: TlsUpstream(c.self_signed, c.self_signed_key))
        cls.mismatch = up("mismatch", lambda: TlsUpstream(c.other, c.other_key))
        cls.plain = up("plain", wh.Upstream)
        cls.refused_port = wh.free_port()

        targets = {
            "ip": cls.good.url + "/base",
            "name": cls.good.url_localhost + "/named",
            "pool": cls.pool.url + "/pool",
            "drop": cls.drop.url_localhost + "/drop",
            "tls12": cls.tls12.url + "/t12",
            "chain": cls.chain.url_localhost + "/chain",
            "nochain": cls.nochain.url_localhost + "/nochain",
            "untrusted_ip": cls.untrusted.url,
            "untrusted_name": cls.untrusted.url_localhost,
            "mismatch_name": cls.mismatch.url_localhost,
            "mismatch_ip": cls.mismatch.url,
            "plain_behind_https": "https://127.0.0.1:%d/p" % cls.plain.port,
            "refused": "https://127.0.0.1:%d/r" % cls.refused_port,
            "http": cls.plain.url + "/plainbase",
        }
        cls.keys = {}
        cls.projects = {}
        for name, url in targets.items():
            key, _ = wh.make_key()
            cls.keys[name] = key
            cls.projects[name] = wh.project_entry(url, [wh.key_entry(key)], requests_per_minute=600000,
                                                  burst=100000, max_body_bytes=64 * MB)
        cls.config_path = os.path.join(cls.workdir, "worker-config.json")
        wh.write_config(cls.config_path, list(cls.projects.values()))
        cls.worker = start_tls_worker(cls.config_path, ca_file=c.bundle)
        cls.addClassCleanup(stop_worker, cls.worker)

    def get(self, project, path, **kw):
        return self.worker.request("GET", path, key=self.keys[project], **kw)

    def assertStillServing(self):
        m = marker("after")
        self.assertProxied(self.get("ip", "/after?" + m))
        self.assertEqual(len(self.good.matching(m)), 1)

    # -- proxying ---------------------------------------------------------------------------

    def test_get_via_ip_literal(self):
        m = marker("ip")
        resp = self.get("ip", "/x/y?q=1&m=" + m, headers={"X-Custom-E2E": "kept"})
        self.assertProxied(resp)
        echo = resp.json()
        self.assertEqual(echo["path"], "/base/x/y?q=1&m=" + m)
        seen = self.good.matching(m)
        self.assertEqual(len(seen), 1, seen)
        rec = seen[0]
        hd = rec["header_dict"]
        self.assertEqual(rec["method"], "GET")
        self.assertEqual(rec["path"], "/base/x/y?q=1&m=" + m)
        self.assertEqual(hd.get("host"), "127.0.0.1:%d" % self.good.port, hd)
        self.assertEqual(hd.get("x-custom-e2e"), "kept", hd)
        self.assertEqual(hd.get("x-gateway-project"), self.projects["ip"]["id"], hd)
        self.assertEqual(hd.get("x-request-id"), resp.headers["X-Request-Id"], hd)
        self.assertNotIn("x-api-key", hd)
        self.assertIsNone(rec.get("sni"), "SNI sent for an IP literal: %r" % rec.get("sni"))
        self.assertIn(rec.get("tls_version"), ("TLSv1.2", "TLSv1.3"), rec)

    def test_get_via_host_name(self):
        m = marker("name")
        resp = self.get("name", "/a/b?m=" + m)
        self.assertProxied(resp)
        self.assertEqual(resp.json()["path"], "/named/a/b?m=" + m)
        seen = self.good.matching(m)
        self.assertEqual(len(seen), 1, seen)
        rec = seen[0]
        self.assertEqual(rec["header_dict"].get("host"), "localhost:%d" % self.good.port, rec["header_dict"])
        self.assertEqual(rec.get("sni"), "localhost", "SNI the upstream saw: %r" % rec.get("sni"))
        self.assertIn(rec.get("tls_version"), ("TLSv1.2", "TLSv1.3"), rec)

    def test_websocket_over_tls(self):
        # The upgrade goes out on a new TLS connection; frames then flow both ways through it
        # (one larger than a TLS record).
        wh.websocket_echo(self, self.worker, self.keys["ip"], ("over tls " + marker("ws"), "y" * 70000))
        rec = [r for r in self.good.requests if r["route"] == "/base/ws"]
        self.assertTrue(rec, "the upstream never saw the upgrade")
        self.assertNotIn("x-api-key", rec[-1]["header_dict"])

    def test_status_and_methods_pass_through(self):
        for code in (201, 404, 503):
            resp = self.get("ip", "/status/%d" % code)
            self.assertProxied(resp, code)
            self.assertEqual(resp.json()["path"], "/base/status/%d" % code)
        for method in ("PUT", "PATCH", "DELETE", "OPTIONS"):
            m = marker(method.lower())
            body = ("payload-%s-" % method).encode() * 41
            resp = self.worker.request(method, "/m?" + m, raw_body=body, key=self.keys["ip"],
                                       content_type="application/octet-stream")
            self.assertProxied(resp)
            rec = self.good.matching(m)
            self.assertEqual(len(rec), 1, rec)
            self.assertEqual(rec[0]["method"], method)
            self.assertEqual(rec[0]["body_len"], len(body))
            self.assertEqual(rec[0]["sha256"], hashlib.sha256(body).hexdigest())
        m = marker("head")
        resp = self.worker.request("HEAD", "/h?" + m, key=self.keys["ip"])
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertEqual(resp.body, b"")
        self.assertEqual([r["method"] for r in self.good.matching(m)], ["HEAD"])

    def _upload(self, content_length, total):
        m = marker("up")
        gen, digest = data_chunks(total, seed=m.encode())
        resp = wh.stream_request(self.worker, "POST", "/upload?" + m, gen, key=self.keys["ip"],
                              content_length=total if content_length else None)
        self.assertProxied(resp)
        echo = resp.json()
        self.assertEqual(echo["body_len"], total, echo)
        self.assertEqual(echo["sha256"], digest)
        self.assertTrue(echo["complete"], echo)
        rec = self.good.matching(m)
        self.assertEqual(len(rec), 1, rec)
        self.assertEqual(rec[0]["path"], "/base/upload?" + m)
        self.assertEqual((rec[0]["body_len"], rec[0]["sha256"]), (total, digest))

    def test_post_1mib_content_length(self):
        self._upload(True, MB)

    def test_post_chunked_upload(self):
        self._upload(False, MB + 12345)

    def test_download_8mib_chunked(self):
        total = 8 * MB
        status, headers, n, digest, prefix = download(self.worker, "/big?bytes=%d" % total, self.keys["ip"])
        self.assertEqual(status, 200, "%r %r" % (headers, prefix))
        self.assertEqual(n, total)
        self.assertEqual(digest, wh.big_pattern(total))

    def test_download_8mib_content_length(self):
        total = 8 * MB + 3
        status, headers, n, digest, prefix = download(self.worker, "/bigcl?bytes=%d" % total, self.keys["ip"])
        self.assertEqual(status, 200, "%r %r" % (headers, prefix))
        self.assertEqual(headers.get("X-Upstream"), "yes", repr(headers))
        self.assertEqual(n, total)
        self.assertEqual(digest, wh.big_pattern(total))

    def test_close_delimited_response(self):
        for total in (1, 70000, 3 * MB + 7):
            m = marker("cd")
            status, headers, n, digest, prefix = download(
                self.worker, "/closedelim?bytes=%d&m=%s" % (total, m), self.keys["ip"])
            self.assertEqual(status, 200, "%d bytes: %r %r" % (total, headers, prefix))
            self.assertEqual(headers.get("X-Upstream"), "yes", repr(headers))
            self.assertEqual(n, total, "close-delimited body of %d bytes arrived with %d" % (total, n))
            self.assertEqual(digest, hashlib.sha256(pattern_bytes(total)).hexdigest())
            self.assertEqual(len(self.good.matching(m)), 1)
        # the closed connection was not put back in the pool
        for _ in range(3):
            self.assertStillServing()

    def test_keep_alive_pool_reuses_the_tls_connection(self):
        m = marker("pool")
        accepted0, handshakes0, _ = self.pool.counts()
        conn = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=10)
        conn.auto_open = 0
        conn.connect()
        sock = conn.sock
        try:
            for i in range(10):
                conn.request("GET", "/ka?%s&i=%d" % (m, i), headers={"X-API-Key": self.keys["pool"]})
                resp = conn.getresponse()
                body = resp.read()
                self.assertEqual(resp.status, 200, "request %d: %r" % (i, body[:300]))
                self.assertIs(conn.sock, sock, "request %d: the worker closed the client connection" % i)
        finally:
            conn.close()
        recs = self.pool.matching(m)
        self.assertEqual(sorted(r["path"] for r in recs),
                         sorted("/pool/ka?%s&i=%d" % (m, i) for i in range(10)))
        accepted, handshakes, _ = self.pool.counts()
        self.assertLessEqual(accepted - accepted0, 2,
                             "10 sequential requests opened %d TCP connections to the upstream"
                             % (accepted - accepted0))
        self.assertLessEqual(handshakes - handshakes0, 2, "%d TLS handshakes" % (handshakes - handshakes0))
        ports = {r["peer_port"] for r in recs}
        self.assertLessEqual(len(ports), 2, "requests came on %d upstream connections" % len(ports))

    def test_pooled_connection_closed_by_upstream(self):
        # One pooled connection, closed by the upstream just before the next request: the
        # request is retried on a new connection (GET and POST alike).
        m = marker("drop")
        for i in range(4):
            self.assertProxied(self.get("drop", "/warm?%s&i=%d" % (m, i)))
            self.drop.drop_connections()
            method = "GET" if i % 2 == 0 else "POST"
            resp = self.worker.request(method, "/after-drop?%s&i=%d" % (m, i), key=self.keys["drop"],
                                       raw_body=b"abc" if method == "POST" else None)
            self.assertProxied(resp)
            self.assertEqual(resp.json()["method"], method)
        # Several pooled connections closed by the upstream while idle leave the pool.
        results = []
        lock = threading.Lock()

        def slow():
            st = self.get("drop", "/slow?ms=300&" + m, timeout=20).status
            with lock:
                results.append(st)
        threads = [threading.Thread(target=slow, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(results, [200] * 6)
        self.assertGreater(self.drop.drop_connections(), 1)
        time.sleep(0.5)
        for i in range(4):
            self.assertProxied(self.get("drop", "/after-idle-drop?%s&i=%d" % (m, i)))

    def test_concurrent_requests(self):
        m = marker("conc")
        results = []
        lock = threading.Lock()

        def client(t):
            for i in range(5):
                try:
                    st = self.get("ip", "/c?%s&t=%d&i=%d" % (m, t, i), timeout=20).status
                except (OSError, http.client.HTTPException) as e:
                    st = repr(e)
                with lock:
                    results.append(st)
        threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(results, [200] * 40)
        self.assertEqual(len(self.good.matching(m)), 40)

    def test_tls12_only_upstream(self):
        m = marker("t12")
        self.assertProxied(self.get("tls12", "/v?" + m))
        rec = self.tls12.matching(m)
        self.assertEqual(len(rec), 1, rec)
        self.assertEqual(rec[0]["path"], "/t12/v?" + m)
        self.assertEqual(rec[0].get("tls_version"), "TLSv1.2")

    def test_chain_with_intermediate(self):
        m = marker("chain")
        self.assertProxied(self.get("chain", "/c?" + m))
        self.assertEqual([r["path"] for r in self.chain.matching(m)], ["/chain/c?" + m])

    # -- failures ---------------------------------------------------------------------------

    def test_missing_intermediate_502(self):
        self.assertTlsFailure(self.worker, [self.nochain], "/nochain", self.keys["nochain"],
                              "leaf sent without its intermediate")
        self.assertStillServing()

    def tls_errors(self):
        m = re.search(r"(?m)^ag_upstream_tls_errors_total (\S+)$", self.worker.metrics())
        self.assertIsNotNone(m, "no ag_upstream_tls_errors_total in /metrics")
        return float(m.group(1))

    def test_untrusted_certificate_502(self):
        before = self.tls_errors()
        for project in ("untrusted_ip", "untrusted_name"):
            self.assertTlsFailure(self.worker, [self.untrusted], "/u", self.keys[project],
                                  "self-signed certificate (%s)" % project)
        # 2 projects x (GET: first try + its retry, POST: no retry) = 6 failed handshakes
        self.assertEqual(self.tls_errors() - before, 6)
        _, handshakes, _ = self.untrusted.counts()
        self.assertEqual(handshakes, 0, "a handshake with the untrusted upstream completed")
        self.assertEqual(self.untrusted.requests, [])
        self.assertStillServing()

    def test_hostname_mismatch_502(self):
        for project in ("mismatch_name", "mismatch_ip"):
            self.assertTlsFailure(self.worker, [self.mismatch], "/mm", self.keys[project],
                                  "certificate for other.example (%s)" % project)
        self.assertEqual(self.mismatch.requests, [])
        self.assertStillServing()

    def test_plain_http_server_behind_https_url_502(self):
        self.assertTlsFailure(self.worker, [self.plain], "/plain", self.keys["plain_behind_https"],
                              "plain HTTP server behind an https:// URL")
        self.assertStillServing()

    def test_connection_refused_is_unreachable_502(self):
        start = time.monotonic()
        resp = self.get("refused", "/down")
        data = self.assertError(resp, 502)
        self.assertEqual(data["detail"], UNREACHABLE, repr(resp))
        self.assertLess(time.monotonic() - start, FAIL_FAST_SEC)
        rid = resp.headers["X-Request-Id"]
        entry = self.worker.wait_for_log(lambda e: e.get("request_id") == rid, 5.0)
        self.assertIsNotNone(entry)
        self.assertEqual((entry.get("reason"), entry.get("status")), ("upstream_unreachable", 502), entry)

    def test_plain_http_project_beside_https(self):
        m = marker("http")
        self.assertProxied(self.get("http", "/p?" + m))
        rec = self.plain.matching(m)
        self.assertEqual(len(rec), 1, rec)
        self.assertEqual(rec[0]["path"], "/plainbase/p?" + m)
        self.assertEqual(rec[0]["header_dict"].get("host"), "127.0.0.1:%d" % self.plain.port)

    def test_zz_upstreams_saw_no_errors(self):
        # The handlers of the good upstreams never failed (a failed handshake of theirs would be
        # the worker aborting a connection it should have accepted).
        for name in ("good", "pool", "tls12", "chain"):
            _, _, failed = self.ups[name].counts()
            self.assertEqual(failed, 0, "%s: failed handshakes: %r" % (name, self.ups[name].handshake_errors))


# =============================================================================================
# Without WORKER_UPSTREAM_CA_FILE the test CA is not trusted


class NoCaFileTest(TlsTestCase):
    @classmethod
    def setUpClass(cls):
        c = certs()
        cls.workdir = tempfile.mkdtemp(prefix="ag-tls-noca-")
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)
        cls.good = TlsUpstream(c.leaf, c.leaf_key)
        cls.addClassCleanup(cls.good.stop)
        cls.plain = wh.Upstream()
        cls.addClassCleanup(cls.plain.stop)
        cls.key_ip, _ = wh.make_key()
        cls.key_name, _ = wh.make_key()
        cls.key_http, _ = wh.make_key()
        cls.config_path = os.path.join(cls.workdir, "worker-config.json")
        wh.write_config(cls.config_path, [
            wh.project_entry(cls.good.url + "/a", [wh.key_entry(cls.key_ip)]),
            wh.project_entry(cls.good.url_localhost + "/b", [wh.key_entry(cls.key_name)]),
            wh.project_entry(cls.plain.url, [wh.key_entry(cls.key_http)]),
        ])
        cls.worker = start_tls_worker(cls.config_path, ca_file=None)
        cls.addClassCleanup(stop_worker, cls.worker)

    def test_ca_signed_upstream_refused_without_the_ca(self):
        self.assertIsNone(self.worker.env.get("WORKER_UPSTREAM_CA_FILE"))
        self.assertTlsFailure(self.worker, [self.good], "/x", self.key_ip, "test CA not trusted (IP)")
        self.assertTlsFailure(self.worker, [self.good], "/x", self.key_name, "test CA not trusted (name)")
        self.assertEqual(self.good.requests, [])
        # the worker itself is fine
        m = marker("http")
        self.assertProxied(self.worker.request("GET", "/ok?" + m, key=self.key_http))
        self.assertEqual(len(self.plain.matching(m)), 1)


# =============================================================================================
# A WORKER_UPSTREAM_CA_FILE the worker cannot use: it refuses to start


class BadCaFileTest(TlsTestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="ag-tls-badca-")
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)
        key, _ = wh.make_key()
        cls.config_path = os.path.join(cls.workdir, "worker-config.json")
        wh.write_config(cls.config_path, [wh.project_entry("http://127.0.0.1:9/x", [wh.key_entry(key)])])

    def run_worker(self, ca_file, timeout=20):
        """Runs the worker with `ca_file`; returns (exit code, output), or fails if it keeps
        running for `timeout` seconds."""
        env = wh.worker_env(tls_env(ca_file))
        cmd = [wh.AG_BIN, "worker", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
               "--threads", "1", "--config", self.config_path]
        try:
            proc = subprocess.run(cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.output or b"").decode("utf-8", "replace")
            self.fail("the worker started with WORKER_UPSTREAM_CA_FILE=%s and was still running after %ds:\n%s"
                      % (ca_file, timeout, out[-3000:]))
        return proc.returncode, proc.stdout.decode("utf-8", "replace")

    def assertRefuses(self, ca_file, what):
        code, out = self.run_worker(ca_file)
        self.assertNotEqual(code, 0, "%s: exit code 0; output:\n%s" % (what, out[-3000:]))
        self.assertIn("WORKER_UPSTREAM_CA_FILE", out, "%s: the message does not name the variable:\n%s"
                      % (what, out[-3000:]))

    def test_missing_file(self):
        self.assertRefuses(os.path.join(self.workdir, "no-such-ca.pem"), "missing file")

    def test_text_file_that_is_not_pem(self):
        path = os.path.join(self.workdir, "not-pem.txt")
        with open(path, "w") as f:
            f.write("this is not a certificate\nnor a bundle of them\n")
        self.assertRefuses(path, "text file")

    def test_binary_garbage(self):
        path = os.path.join(self.workdir, "garbage.bin")
        with open(path, "wb") as f:
            f.write(bytes(range(256)) * 8)
        self.assertRefuses(path, "binary garbage")

    def test_good_bundle_starts(self):
        # the same command with the real bundle keeps running (the refusals above are about the file)
        w = wh.start_worker(self.config_path, env_extra=tls_env(certs().bundle), threads=1)
        try:
            self.assertTrue(w.alive())
            ready = w.wait_ready()
            self.assertEqual(ready.status if ready else None, 200, w.stderr[-3000:])
        finally:
            stop_worker(w)


# =============================================================================================
# Service targets over https, with active health checks


class ServiceTargetTest(TlsTestCase):
    """One worker thread, so that round robin is observable per worker."""

    @classmethod
    def setUpClass(cls):
        c = certs()
        cls.workdir = tempfile.mkdtemp(prefix="ag-tls-svc-")
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)
        cls.default = wh.Upstream()
        cls.addClassCleanup(cls.default.stop)
        cls.a = TlsUpstream(c.leaf, c.leaf_key)
        cls.b = TlsUpstream(c.leaf, c.leaf_key)
        cls.c = TlsUpstream(c.leaf, c.leaf_key)
        cls.u = TlsUpstream(c.self_signed, c.self_signed_key)
        for up in (cls.a, cls.b, cls.c, cls.u):
            cls.addClassCleanup(up.stop)
        cls.slug = "tls-" + h.random_string(8, "abcdefghijklmnopqrstuvwxyz0123456789")
        cls.key, _ = wh.make_key()
        hc = {"path": HEALTH_PATH, "interval_sec": 1, "timeout_ms": 1000}
        proj = wh.project_entry(cls.default.url + "/default", [wh.key_entry(cls.key)],
                                requests_per_minute=600000, burst=100000)
        proj["slug"] = cls.slug
        proj["services"] = [
            {"name": "plainhc", "targets": [cls.c.url + "/sc"], "balancer": "round_robin"},
            {"name": "checked", "targets": [cls.a.url + "/sa", cls.b.url_localhost + "/sb"],
             "balancer": "round_robin", "health_check": hc,
             "ejection": {"failures": 100, "cooldown_sec": 1}},
            {"name": "mixed", "targets": [cls.c.url + "/mc", cls.u.url + "/mu"],
             "balancer": "round_robin", "health_check": hc,
             "ejection": {"failures": 100, "cooldown_sec": 1}},
        ]
        cls.config_path = os.path.join(cls.workdir, "worker-config.json")
        wh.write_config(cls.config_path, [proj])
        cls.worker = start_tls_worker(cls.config_path, ca_file=c.bundle, threads=1)
        cls.addClassCleanup(stop_worker, cls.worker)

    def get(self, service, rest, timeout=10):
        return self.worker.request("GET", "/%s/%s%s" % (self.slug, service, rest), key=self.key, timeout=timeout)

    def test_a_service_target_over_https(self):
        m = marker("svc")
        resp = self.get("plainhc", "/api/flows?" + m)
        self.assertProxied(resp)
        rec = self.c.matching(m)
        self.assertEqual(len(rec), 1, "requests at the target: %r; at the default upstream: %r"
                         % (rec, self.default.matching(m)))
        self.assertEqual(rec[0]["path"], "/sc/api/flows?" + m)
        hd = rec[0]["header_dict"]
        self.assertEqual(hd.get("x-gateway-service"), "plainhc", hd)
        self.assertEqual(hd.get("host"), "127.0.0.1:%d" % self.c.port, hd)
        self.assertIsNone(rec[0].get("sni"))
        self.assertEqual(self.default.matching(m), [])

    def test_b_round_robin_over_https_targets(self):
        m = marker("rr")
        for i in range(10):
            self.assertProxied(self.get("checked", "/work?%s&i=%d" % (m, i)))
        ra, rb = self.a.matching(m), self.b.matching(m)
        self.assertEqual(len(ra) + len(rb), 10)
        self.assertGreater(len(ra), 0, "no request reached the first target")
        self.assertGreater(len(rb), 0, "no request reached the second target")
        self.assertTrue(all(r["path"].startswith("/sa/work?") for r in ra), ra)
        self.assertTrue(all(r["path"].startswith("/sb/work?") for r in rb), rb)
        self.assertTrue(all(r["header_dict"].get("host") == "localhost:%d" % self.b.port for r in rb), rb)
        self.assertTrue(all(r.get("sni") == "localhost" for r in rb), [r.get("sni") for r in rb])

    def test_c_health_checks_over_https(self):
        # checks reach both targets, through TLS, under each target's base path
        def checked_both():
            return (any(r["path"] == "/sa" + HEALTH_PATH for r in self.a.health())
                    and any(r["path"] == "/sb" + HEALTH_PATH for r in self.b.health()))
        _, elapsed, ok = poll_until(checked_both, bool, HEALTH_BOUND_SEC)
        self.assertTrue(ok, "no https health check at both targets after %.1fs: %r / %r"
                        % (elapsed, self.a.health()[-3:], self.b.health()[-3:]))
        for r in self.a.health() + self.b.health():
            self.assertEqual(r["method"], "GET", r)
            self.assertIn(r.get("tls_version"), ("TLSv1.2", "TLSv1.3"), r)
        self.assertTrue(all(r.get("sni") == "localhost" for r in self.b.health()),
                        [r.get("sni") for r in self.b.health()])

        # a failing check takes the target out
        self.b.health_status = 503
        try:
            def only_a():
                m = marker("hc")
                ok = all(self.get("checked", "/work?" + m).status == 200 for _ in range(4))
                return ok and (len(self.a.matching(m)), len(self.b.matching(m))) == (4, 0)
            _, elapsed, ok = poll_until(only_a, bool, HEALTH_BOUND_SEC)
            self.assertTrue(ok, "traffic still reaches the unhealthy https target after %.1fs" % elapsed)
        finally:
            self.b.health_status = 200

        # and a passing one brings it back
        def b_back():
            m = marker("hc2")
            for _ in range(4):
                self.get("checked", "/work?" + m)
            return len(self.b.matching(m)) > 0
        _, elapsed, ok = poll_until(b_back, bool, HEALTH_BOUND_SEC)
        self.assertTrue(ok, "the recovered https target gets no traffic after %.1fs" % elapsed)

    def test_d_health_check_fails_on_untrusted_target(self):
        # the self-signed target fails its checks (TLS) and is taken out: traffic goes to c only
        def only_c():
            m = marker("mx")
            statuses = [self.get("mixed", "/work?" + m).status for _ in range(4)]
            return statuses == [200] * 4 and len(self.c.matching(m)) == 4
        _, elapsed, ok = poll_until(only_c, bool, HEALTH_BOUND_SEC)
        self.assertTrue(ok, "the untrusted target is still chosen after %.1fs" % elapsed)
        m = marker("mx2")
        for _ in range(6):
            self.assertProxied(self.get("mixed", "/work?" + m))
        self.assertEqual(len(self.c.matching(m)), 6)
        # the untrusted target never got a request, health check or otherwise
        self.assertEqual(self.u.requests, [])
        self.assertEqual(self.u.health(), [])
        accepted, handshakes, failed = self.u.counts()
        self.assertEqual(handshakes, 0)
        self.assertGreater(accepted, 0, "the worker never tried the untrusted target")
        # c was health-checked over https too
        self.assertTrue(any(r["path"] == "/mc" + HEALTH_PATH for r in self.c.health()), self.c.health()[-3:])


if __name__ == "__main__":
    unittest.main(verbosity=2)
