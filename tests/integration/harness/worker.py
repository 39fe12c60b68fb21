"""The worker (data plane): `antigravity worker` on 127.0.0.1 (public listener on port 0 or a
fixed port, admin listener on port 0), its access log (JSON lines on stdout) and logs (stderr),
and the assertions the worker suites share."""

import json
import re
import socket
import tempfile
import unittest

from .common import AG_BIN, REQUEST_TIMEOUT_SEC, START_TIMEOUT_SEC, poll_until
from .control import CONFIG_VARS
from .http import error_detail, http_request
from .processes import (Process, Server, build_env, remove_at_exit, rss_kb, stop_at_exit,
                        wait_for_http)

WORKER_LISTEN_RE = re.compile(r"worker listening on http://127\.0\.0\.1:(\d+)")
ADMIN_LISTEN_RE = re.compile(r"worker admin listening on http://127\.0\.0\.1:(\d+)")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # what the worker accepts and generates

# Variables the worker reads; cleared from the inherited environment so the developer's shell
# cannot leak configuration into a test.
WORKER_VARS = (
    "WORKER_LISTEN", "WORKER_ADMIN_LISTEN", "WORKER_THREADS", "CONTROL_API_BASE_URL",
    "CONTROL_WORKER_SHARED_SECRET", "WORKER_SECRET_KEY", "WORKER_CONFIG_FILE",
    "WORKER_CONFIG_POLL_SEC", "REDIS_URL", "WORKER_TRUSTED_PROXIES", "WORKER_HEADER_TIMEOUT_SEC",
    "WORKER_IDLE_TIMEOUT_SEC", "WORKER_UPSTREAM_CONNECT_TIMEOUT_MS", "WORKER_UPSTREAM_TIMEOUT_SEC",
    "WORKER_DRAIN_SEC", "WORKER_MAX_HEADER_BYTES", "WORKER_ACCESS_LOG",
    "WORKER_SNAPSHOT_PATH", "WORKER_SNAPSHOT_INTERVAL_SEC", "WORKER_SNAPSHOT_MAX_AGE_SEC",
    "WORKER_ID", "WORKER_CONFIG_DIR", "WORKER_USAGE_REPORT_SEC", "WORKER_TRAFFIC_REPORT_SEC", "WORKER_MAX_CONNECTIONS",
    "GATEWAY_JWT_ALG", "GATEWAY_JWT_SECRET", "GATEWAY_JWT_AUDIENCE", "GATEWAY_JWT_ISSUER",
    "GATEWAY_JWT_LEEWAY_SEC",
)


def worker_env(env_extra=None):
    """The worker's environment: config polled every second, plus `env_extra` (None removes)."""
    return build_env(env_extra, clear=CONFIG_VARS + WORKER_VARS,
                     defaults={"WORKER_CONFIG_POLL_SEC": "1"})


def _access_log_entry(line):
    """An access-log line (a JSON object on stdout) as a dict, else None."""
    s = line.strip()
    if not s.startswith("{"):
        return None
    try:
        obj = json.loads(s)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


class Worker(Server):
    def __init__(self, process, env, workdir):
        super().__init__(env, workdir)
        self.process = process
        self._out = process.output
        self.admin_port = None

    # -- output ----------------------------------------------------------------------------

    def access_log(self):
        with self._out.cond:
            return list(self._out.records)

    def wait_for_log(self, predicate, timeout=5.0):
        """First access-log entry satisfying `predicate`, or None after `timeout` seconds."""
        def check():
            for entry in self._out.records:
                if predicate(entry):
                    return entry
            return None
        return self._out.wait(check, timeout)

    def wait_for_stderr(self, regex, timeout=5.0, start=0):
        """First match of `regex` in stderr lines from index `start` on, or None."""
        if isinstance(regex, str):
            regex = re.compile(regex)
        return self._out.wait_for(regex, timeout, self._out.stderr_lines, start)

    def stderr_count(self):
        with self._out.cond:
            return len(self._out.stderr_lines)

    @property
    def stdout(self):
        with self._out.cond:
            return "\n".join(self._out.stdout_lines)

    @property
    def stderr(self):
        with self._out.cond:
            return "\n".join(self._out.stderr_lines)

    @property
    def logs(self):
        return self.stderr

    # -- HTTP ------------------------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, raw_body=None, content_type=None,
                key=None, timeout=REQUEST_TIMEOUT_SEC):
        """One request on a fresh connection to the public port; never raises on 4xx/5xx.
        `key` is sent as X-API-Key; `body` as JSON; `raw_body` as is (bytes or an iterable)."""
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["X-API-Key"] = key
        return http_request(self.host, self.port, method, path, body=body, headers=hdrs,
                            raw_body=raw_body, content_type=content_type, timeout=timeout)

    def admin(self, path, method="GET", timeout=REQUEST_TIMEOUT_SEC):
        return http_request(self.host, self.admin_port, method, path, timeout=timeout)

    def metrics(self):
        resp = self.admin("/metrics")
        if resp.status != 200:
            raise AssertionError("GET /metrics on the admin port: %r" % resp)
        return resp.text

    def wait_ready(self, timeout=10.0):
        """Polls /ready until 200; returns the last response."""
        return wait_for_http(self.host, self.admin_port, "/ready", timeout, process=self.process)

    def connect(self, timeout=10.0):
        """A raw TCP socket to the public port."""
        return socket.create_connection((self.host, self.port), timeout=timeout)

    # -- process ---------------------------------------------------------------------------

    def rss_kb(self):
        return rss_kb(self.pid)

    def signal(self, sig):
        self.process.signal(sig)

    def wait_exit(self, timeout):
        """Exit code, or None if the process is still running after `timeout` seconds."""
        return self.process.wait_exit(timeout)


def start_worker(config_path=None, control_url=None, secret=None, env_extra=None, threads=2,
                 args=None, timeout=START_TIMEOUT_SEC, port=0):
    """Starts `antigravity worker` on 127.0.0.1:`port` (public; 0 = any) and 127.0.0.1:0 (admin)
    and waits for both "listening" lines. Config from `config_path` (--config) or the control
    plane at `control_url` with `secret`. `env_extra`: variables to add (None removes one). Its
    working directory is removed at exit (unless AG_TEST_KEEP=1)."""
    extra = {}
    if control_url is not None:
        extra["CONTROL_API_BASE_URL"] = control_url
    if secret is not None:
        extra["CONTROL_WORKER_SHARED_SECRET"] = secret
    extra.update(env_extra or {})
    env = worker_env(extra)
    cmd = [AG_BIN, "worker", "--listen", "127.0.0.1:%d" % port, "--admin-listen", "127.0.0.1:0",
           "--threads", str(threads)]
    if config_path is not None:
        cmd += ["--config", config_path]
    cmd += list(args or [])
    workdir = remove_at_exit(tempfile.mkdtemp(prefix="ag-worker-"))
    process = Process(cmd, env=env, cwd=workdir, parse_stdout=_access_log_entry)
    worker = stop_at_exit(Worker(process, env, workdir))
    out = process.output

    def check():
        public = out.first_match(WORKER_LISTEN_RE, out.stderr_lines)
        admin = out.first_match(ADMIN_LISTEN_RE, out.stderr_lines)
        return (public, admin) if public and admin else None

    found = process.wait_output(check, timeout)
    if not found:
        exited = process.proc.poll()
        worker.stop()
        raise RuntimeError("worker on 127.0.0.1:%d did not report both listeners within %.0fs "
                           "(exit code %r); stderr:\n%s\nstdout:\n%s"
                           % (port, timeout, exited, worker.stderr[-3000:], worker.stdout[-3000:]))
    worker.port = int(found[0].group(1))
    worker.admin_port = int(found[1].group(1))
    return worker


def start_worker_at(port, config_path=None, control_url=None, secret=None, env_extra=None,
                    threads=2, timeout=START_TIMEOUT_SEC):
    """start_worker with the public listener on 127.0.0.1:`port` (two workers can share one
    with SO_REUSEPORT)."""
    return start_worker(config_path, control_url, secret, env_extra, threads, timeout=timeout,
                        port=port)


def wait_ready(worker, timeout=10.0):
    """Waits until `worker` is ready; fails with its stderr otherwise."""
    ready = worker.wait_ready(timeout)
    if ready is None or ready.status != 200:
        raise AssertionError("worker not ready: %r\n%s" % (ready, worker.stderr[-3000:]))


class WorkerTestCase(unittest.TestCase):
    """Assertions shared by the worker suites."""

    def assertRequestId(self, resp):
        rid = resp.headers.get("X-Request-Id")
        self.assertTrue(rid, "missing X-Request-Id: %r" % (resp,))
        self.assertRegex(rid, REQUEST_ID_RE, repr(resp))
        return rid

    def assertStatus(self, resp, status):
        self.assertEqual(resp.status, status, "unexpected status: %r" % (resp,))
        self.assertRequestId(resp)

    def assertError(self, resp, status, detail=None):
        """A worker-made error: status, JSON {"detail": str}, X-Request-Id."""
        self.assertStatus(resp, status)
        self.assertIn("application/json", resp.headers.get("Content-Type", ""), repr(resp))
        self.assertNotIn("X-Upstream", resp.headers, "error answered by the upstream: %r" % (resp,))
        return error_detail(self, resp, detail)

    def assertProxied(self, resp, status=200):
        """A response that came from the Upstream (it sets X-Upstream: yes)."""
        self.assertStatus(resp, status)
        self.assertEqual(resp.headers.get("X-Upstream"), "yes", "not answered by the upstream: %r" % (resp,))
        return resp.json()

    def assertLogged(self, worker, predicate, what, timeout=5.0):
        entry = worker.wait_for_log(predicate, timeout)
        self.assertIsNotNone(entry, "no access-log line for %s; access log tail: %r"
                             % (what, worker.access_log()[-5:]))
        return entry

    def poll(self, fn, ok, timeout, interval=0.1):
        """Calls fn() until ok(result) or timeout; returns (result, elapsed)."""
        result, elapsed, _ = poll_until(fn, ok, timeout, interval)
        return result, elapsed
