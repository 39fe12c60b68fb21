"""The control plane's HTTP server (docs/configuration.md, "HTTP server"): blocking handlers on
their own threads, and HTTPS on the control plane's listener.

  SlowDatabaseTests  SQLite held locked by another process: the control plane's every handler
                     thread waits on it (CONTROL_THREADS=2, CONTROL_IO_THREADS=1), and still the
                     documents, unknown routes and malformed requests are answered at once; the
                     waiting writes complete when the lock goes.
  TlsTests           CONTROL_TLS_CERT_FILE / CONTROL_TLS_KEY_FILE: HTTPS with a certificate made
                     by `openssl` at start, verified by Python's ssl module; plain HTTP on that
                     port gets no answer and harms nothing; TLS 1.1 is refused; a half
                     configuration or an unreadable file stops the start with a clear message.

Run: /usr/bin/python3 tests/integration/test_control_server.py
Environment: see the harness (AG_BIN).
"""

import http.client
import json
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
import harness as wh  # noqa: E402


class SlowDatabaseTests(unittest.TestCase):
    def setUp(self):
        self.server = h.start_control(db="sqlite", env_extra={"CONTROL_THREADS": "2",
                                                              "CONTROL_IO_THREADS": "1"})
        self.addCleanup(self.server.stop)
        self.user = h.register_user(self.server)

    def raw(self, data, timeout=3):
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=timeout) as s:
            s.sendall(data)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk

    def test_answers_that_need_no_database_do_not_wait_for_a_locked_one(self):
        lock = sqlite3.connect(self.server.db_path, timeout=0, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        results = []

        def create(i):
            resp = self.server.request("POST", "/projects", body={
                "name": "held-%d" % i, "upstream_base_url": "http://127.0.0.1:9/x"},
                token=self.user.token, timeout=30)
            results.append(resp.status)

        writers = [threading.Thread(target=create, args=(i,)) for i in range(2)]
        try:
            for t in writers:
                t.start()
            time.sleep(0.5)  # both handler threads are now waiting on the lock
            start = time.monotonic()
            doc = self.server.request("GET", "/openapi.json", timeout=3)
            self.assertEqual(doc.status, 200)
            self.assertIn("paths", doc.json())
            missing = self.server.request("GET", "/no-such-route", timeout=3)
            self.assertEqual(missing.status, 404)
            self.assertTrue(missing.headers.get("X-Request-Id"))
            garbage = self.raw(b"NOT HTTP\r\n\r\n")
            self.assertTrue(garbage.startswith(b"HTTP/1.1 400"), garbage[:80])
            waited = time.monotonic() - start
            self.assertEqual(results, [], "the writes were to be still waiting on the lock")
            self.assertTrue(all(t.is_alive() for t in writers))
            sys.stderr.write("\n    [measured] three answers in %.3f s while both handler threads "
                             "waited on the database\n" % waited)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
            for t in writers:
                t.join(30)
        self.assertEqual(sorted(results), [201, 201])
        listed = self.server.request("GET", "/projects", token=self.user.token).json()
        self.assertEqual(sorted(p["name"] for p in listed if p["name"].startswith("held-")),
                         ["held-0", "held-1"])


def make_certificate(directory):
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost", "-days", "2",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", key, "-out", cert],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return cert, key


@unittest.skipIf(shutil.which("openssl") is None, "needs the openssl command")
class DescriptorExhaustionTests(unittest.TestCase):
    """Out of file descriptors, the control plane pauses accepting instead of retrying in a busy
    loop, and accepts again once descriptors are free."""

    @unittest.skipIf(shutil.which("prlimit") is None, "needs prlimit (util-linux)")
    @unittest.skipIf("ASAN_OPTIONS" in os.environ,
                     "under the sanitizers: UBSan's dynamic-type check needs file descriptors of its "
                     "own and reports a false error when the process has none left")
    def test_out_of_descriptors_does_not_spin(self):
        workdir = tempfile.mkdtemp(prefix="ag-control-fds-")
        self.addCleanup(shutil.rmtree, workdir, True)
        env = h.base_env({"DATABASE_URL": "sqlite:///" + os.path.join(workdir, "ag.db")})
        proc = subprocess.Popen(["prlimit", "--nofile=64:64", h.AG_BIN, "control", "--listen", "127.0.0.1:0"],
                                cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.addCleanup(proc.stderr.close)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        port = None
        lines = []
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "listening on http://127.0.0.1:" in line:
                port = int(line.split("listening on http://127.0.0.1:", 1)[1].split()[0])
        self.assertIsNotNone(port, "".join(lines))
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep draining
        socks = []
        for _ in range(120):  # past the 64 descriptors: the rest wait in the listen backlog
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)

        def ticks():
            with open("/proc/%d/stat" % proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])

        t0 = ticks()
        time.sleep(2)
        used = (ticks() - t0) / os.sysconf("SC_CLK_TCK") / 2
        h.report("control plane out of descriptors: %.1f%% of a core", used * 100)
        self.assertLess(used, 0.2, "the accept loop spins when out of descriptors")
        for sk in socks:
            sk.close()
        # Descriptors free again: it accepts and answers (the API document needs no database).
        def answer():
            try:
                return h.http_request("127.0.0.1", port, "GET", "/openapi.json", timeout=5).status
            except (OSError, http.client.HTTPException):
                return None
        status, _, ok = h.poll_until(answer, lambda s: s == 200, 30)
        self.assertTrue(ok, status)


class TlsTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="ag-control-tls-")
        cls.cert, cls.key = make_certificate(cls.dir)
        cls.server = h.start_control(db="sqlite", env_extra={"CONTROL_TLS_CERT_FILE": cls.cert,
                                                             "CONTROL_TLS_KEY_FILE": cls.key})
        cls.context = ssl.create_default_context(cafile=cls.cert)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def https(self, method, path, body=None, headers=None, context=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, timeout=10,
                                           context=context or self.context)
        try:
            hdrs = dict(headers or {})
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def test_start_up_line_says_https(self):
        self.assertIn("control plane listening on https://127.0.0.1:%d" % self.server.port,
                      self.server.logs)

    def test_health_and_a_signed_in_request_over_https(self):
        status, headers, body = self.https("GET", "/health")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["status"], "ok")
        self.assertTrue(headers.get("X-Request-Id"))
        email = h.unique_email("tls")
        status, _, body = self.https("POST", "/auth/register",
                                     {"email": email, "password": "correct horse battery"})
        self.assertEqual(status, 201, body)
        token = json.loads(body)["access_token"]
        status, _, body = self.https("GET", "/projects", headers={"Authorization": "Bearer " + token})
        self.assertEqual((status, json.loads(body)), (200, []))

    def test_a_worker_follows_the_control_plane_over_https(self):
        upstream = wh.Upstream()
        self.addCleanup(upstream.stop)
        email = h.unique_email("tlsw")
        status, _, body = self.https("POST", "/auth/register",
                                     {"email": email, "password": "correct horse battery"})
        auth = {"Authorization": "Bearer " + json.loads(body)["access_token"]}
        status, _, body = self.https("POST", "/projects", {"name": "over-tls",
                                                           "upstream_base_url": upstream.url + "/api"},
                                     headers=auth)
        self.assertEqual(status, 201, body)
        pid = json.loads(body)["id"]
        status, _, body = self.https("POST", "/projects/%s/keys" % pid, {}, headers=auth)
        self.assertEqual(status, 201, body)
        key = json.loads(body)["api_key"]
        worker = wh.start_worker(control_url="https://127.0.0.1:%d" % self.server.port,
                                 secret=self.server.worker_secret,
                                 env_extra={"WORKER_UPSTREAM_CA_FILE": self.cert})
        self.addCleanup(worker.stop)
        resp, _, ok = wh.poll_until(lambda: worker.request("GET", "/hello", key=key),
                                    lambda r: r.status == 200, timeout=15)
        self.assertTrue(ok, resp)
        self.assertEqual(upstream.requests[-1]["path"], "/api/hello")

    def test_keep_alive_over_one_tls_connection(self):
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, timeout=10,
                                           context=self.context)
        try:
            for _ in range(3):
                conn.request("GET", "/health")
                resp = conn.getresponse()
                self.assertEqual(resp.status, 200)
                resp.read()
        finally:
            conn.close()

    def test_plain_http_on_the_tls_port_gets_no_answer(self):
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
        self.assertFalse(data.startswith(b"HTTP/"), data[:60])
        self.assertEqual(self.https("GET", "/health")[0], 200)  # and the server goes on

    def test_an_untrusted_certificate_is_refused_by_the_client(self):
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.https("GET", "/health", context=ssl.create_default_context())

    def test_tls_1_1_is_refused(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.cert)
        try:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ValueError, AttributeError):
            self.skipTest("this Python cannot offer TLS 1.1")
        with self.assertRaises((ssl.SSLError, ConnectionResetError)):
            self.https("GET", "/health", context=ctx)

    def test_half_a_configuration_stops_the_start(self):
        code, out = h.run_binary(["control", "--listen", "127.0.0.1:0"],
                                 env_extra={"CONTROL_TLS_CERT_FILE": self.cert,
                                            "CONTROL_TLS_KEY_FILE": None}, timeout=30)
        self.assertNotEqual(code, 0)
        self.assertIn("CONTROL_TLS_CERT_FILE and CONTROL_TLS_KEY_FILE must be set together", out)

    def test_an_unreadable_certificate_stops_the_start(self):
        missing = os.path.join(self.dir, "missing.pem")
        code, out = h.run_binary(["control", "--listen", "127.0.0.1:0"],
                                 env_extra={"CONTROL_TLS_CERT_FILE": missing,
                                            "CONTROL_TLS_KEY_FILE": self.key}, timeout=30)
        self.assertNotEqual(code, 0)
        self.assertIn("cannot load the TLS certificate chain", out)
        self.assertIn(missing, out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
