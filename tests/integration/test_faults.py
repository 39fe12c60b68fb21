"""Fault injection with the real binaries on loopback, under steady client load.

- The control plane is SIGKILLed and restarted on the same port and database while clients keep
  sending requests through a worker: no request fails, the worker serves its last config during
  the outage and picks up changes made after the restart (docs/worker.md "Config updates").
- Redis is killed and restarted under load (REDIS_URL): no 5xx and no connection errors, limits
  still enforced locally during the outage, and once Redis is back the worker stops falling back
  (`ag_ratelimit_fallback_total` stops increasing, docs/metrics.md).
- The upstream is killed (fast 502), hangs (504 after WORKER_UPSTREAM_TIMEOUT_SEC, nothing else
  slowed down), stalls or resets in the middle of a body (the client sees a truncated response and
  a closed connection, never a hang), then comes back (200 again).
- Two workers share one port (SO_REUSEPORT) and are restarted one after the other (SIGTERM,
  wait, start again) under load: no request fails.
- The disk fills up when the worker saves its config snapshot: the previous file stays intact and
  the worker keeps serving (docs/config-stream.md).

Every figure measured is printed with "[measured]".

Run: /usr/bin/python3 tests/integration/test_faults.py
Environment: see the harness (AG_BIN, AG_TEST_KEEP). The Redis test needs redis-server on PATH;
the disk-full test mounts a 64 KiB tmpfs (root) or, when not root, makes the snapshot directory
read-only. AG_TEST_STRICT_REUSEPORT=1 also counts, in the rolling-restart test, the connection
resets Linux sends for connections still queued on a closing SO_REUSEPORT listener (tolerated when
net.ipv4.tcp_migrate_req is 0, since no worker can prevent them without it or a BPF program).
"""

import errno
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
import harness as wh  # noqa: E402
import harness as rh  # noqa: E402
from harness import report  # noqa: E402

NO_LIMIT = rh.NO_LIMIT
STREAM_ENV = {"WORKER_CONFIG_POLL_SEC": "30", "WORKER_SNAPSHOT_INTERVAL_SEC": "1"}


def key_hash(api_key):
    return hashlib.sha256(api_key.encode("ascii")).hexdigest()


def status_of(worker, api_key, path="/probe", timeout=5.0):
    try:
        return worker.request("GET", path, key=api_key, timeout=timeout).status
    except (OSError, http.client.HTTPException):
        return None


def poll_until(fn, ok, timeout, interval=0.02):
    return wh.poll_until(fn, ok, timeout, interval)


def ready_version(worker):
    try:
        resp = worker.admin("/ready", timeout=2)
        return resp.json().get("config_version") if resp.status == 200 else None
    except (OSError, ValueError):
        return None


def config_version(ctl):
    resp = ctl.worker_config()
    if resp.status != 200:
        raise AssertionError("worker config: %r" % resp)
    return resp.json()["version"]


class FaultTestCase(unittest.TestCase):
    def assertNoFailures(self, load, events, what):
        bad = rh.LoadGenerator.failures(events)
        report("%s: %s", what, rh.LoadGenerator.describe(events))
        self.assertGreater(len(events), 20, "%s: too few requests to mean anything" % what)
        bodies = sorted({(d[1], d[2]) for d in load.details})
        if bad:
            report("%s: distinct non-2xx answers: %r", what, bodies[:10])
        self.assertEqual(bad[:20], [], "%s: %d of %d requests failed (first 20 as (start, end, outcome)); "
                         "non-2xx bodies: %r" % (what, len(bad), len(events), bodies[:5]))


# =============================================================================================
# Control plane SIGKILL + restart


class ControlPlaneKillTest(FaultTestCase):
    def test_sigkill_and_restart_under_load(self):
        upstream = rh.QuietUpstream()
        self.addCleanup(upstream.stop)
        workdir = tempfile.mkdtemp(prefix="ag-faults-cp-")
        self.addCleanup(shutil.rmtree, workdir, True)
        db_url = "sqlite:///" + os.path.join(workdir, "ag.db")
        port = wh.free_port()
        ctl = rh.start_control_at(port, workdir, db_url)
        self.addCleanup(ctl.stop, False)
        secrets_env = {"JWT_SECRET_KEY": ctl.jwt_secret, "WORKER_SECRET_KEY": ctl.worker_secret}
        user = h.register_user(ctl)
        project = h.create_project(ctl, user.token, upstream=upstream.url + "/api",
                                   key_policy="multiple", rate_limit=NO_LIMIT)
        steady = h.create_key(ctl, user.token, project["id"])
        doomed = h.create_key(ctl, user.token, project["id"])
        w = rh.start_worker_at(0, control_url=ctl.base_url, secret=ctl.worker_secret,
                               env_extra=dict(STREAM_ENV, WORKER_SNAPSHOT_PATH=os.path.join(workdir, "snap.json")))
        self.addCleanup(w.stop)
        rh.wait_ready(w)
        version = config_version(ctl)
        v, _, ok = poll_until(lambda: ready_version(w), lambda v: v == version, 5)
        self.assertTrue(ok, "worker at version %r, expected %r" % (v, version))
        self.assertEqual(status_of(w, doomed["api_key"]), 200)

        load = rh.LoadGenerator(w.host, w.port, "/load", {"X-API-Key": steady["api_key"]},
                                threads=3, keepalive=True).start()
        try:
            time.sleep(1.0)
            t_kill = time.monotonic()
            ctl.proc.kill()
            ctl.proc.wait(5)
            ctl.stop(drop_database=False)
            # the worker keeps serving its last config, ready, same version
            time.sleep(1.0)
            self.assertEqual(ready_version(w), version, "worker not ready at its last version "
                             "while the control plane is down")
            self.assertEqual(status_of(w, doomed["api_key"]), 200,
                             "a key of the last config refused while the control plane is down")
            self.assertEqual(status_of(w, wh.make_key()[0]), 401)
            time.sleep(1.0)
            ctl2 = None
            deadline = time.monotonic() + 15
            while ctl2 is None:
                try:
                    ctl2 = rh.start_control_at(port, workdir, db_url, env_extra=secrets_env, timeout=5)
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            self.addCleanup(ctl2.stop, False)
            t_up = time.monotonic()
            report("control plane down for %.2f s (SIGKILL -> listening again on the same port)",
                   t_up - t_kill)
            # changes made after the restart reach the worker
            resp = ctl2.request("DELETE", "/projects/%s/keys/%s" % (project["id"], doomed["id"]),
                                token=user.token)
            self.assertEqual(resp.status, 204, repr(resp))
            t_change = time.monotonic()
            _, revoke_s, ok = poll_until(lambda: status_of(w, doomed["api_key"]), lambda s: s == 401, 20)
            report("revocation made %.2f s after the restart reached the worker in %.2f s",
                   t_change - t_up, revoke_s)
            self.assertTrue(ok, "a revocation made after the restart never reached the worker "
                            "(20 s)\n%s" % w.stderr[-2000:])
            added = h.create_key(ctl2, user.token, project["id"])
            _, add_s, ok = poll_until(lambda: status_of(w, added["api_key"]), lambda s: s == 200, 5)
            report("key created after the restart accepted by the worker in %.3f s", add_s)
            self.assertTrue(ok, "a key created after the restart never reached the worker")
            self.assertLess(revoke_s, 10.0, "the worker took %.1f s to follow the restarted control "
                            "plane (backoff after a %.1f s outage)" % (revoke_s, t_up - t_kill))
            time.sleep(0.5)
        finally:
            load.stop()
        self.assertNoFailures(load, load.window(), "valid-key traffic across the control-plane kill")
        outage = load.window(t_kill, t_up)
        report("during the outage alone: %s", rh.LoadGenerator.describe(outage))
        self.assertGreater(len(outage), 20)
        self.assertTrue(w.alive())


# =============================================================================================
# Redis outage


@unittest.skipUnless(shutil.which("redis-server"), "redis-server not on PATH")
class RedisOutageTest(FaultTestCase):
    def test_redis_killed_and_restarted_under_load(self):
        upstream = rh.QuietUpstream()
        self.addCleanup(upstream.stop)
        redis = rh.RedisServer()
        self.addCleanup(redis.stop)
        workdir = tempfile.mkdtemp(prefix="ag-faults-redis-")
        self.addCleanup(shutil.rmtree, workdir, True)
        config = os.path.join(workdir, "worker-config.json")
        load_key = wh.make_key()[0]
        low_keys = [wh.make_key()[0] for _ in range(4)]
        keys = [wh.key_entry(load_key, rate_limit=(1000000, 100000))] + [wh.key_entry(k) for k in low_keys]
        # the project's limit: 60/min, burst 2 -> 3 requests at once, then 429
        wh.write_config(config, [wh.project_entry(upstream.url, keys, requests_per_minute=60, burst=2)])
        w = rh.start_worker_at(0, config_path=config, env_extra={"REDIS_URL": redis.url,
                                                                 "WORKER_SNAPSHOT_PATH": "off"})
        self.addCleanup(w.stop)
        rh.wait_ready(w)

        def burst(key, n=6):
            out = []
            for _ in range(n):
                try:
                    out.append(w.request("GET", "/limited", key=key, timeout=5).status)
                except (OSError, http.client.HTTPException) as exc:
                    out.append("E:" + type(exc).__name__)
            return out

        before = burst(low_keys[0], 4)
        self.assertEqual(before, [200, 200, 200, 429], "limit with Redis up")
        self.assertTrue(redis.keys("ag:rl:*"), "no ag:rl:* keys in Redis: the worker does not use it")
        fb0 = rh.worker_metric(w, "ag_ratelimit_fallback_total")
        self.assertIsNotNone(fb0, "ag_ratelimit_fallback_total missing from /metrics")

        load = rh.LoadGenerator(w.host, w.port, "/load", {"X-API-Key": load_key}, threads=3).start()
        try:
            time.sleep(1.0)
            t_down = time.monotonic()
            redis.kill()
            time.sleep(0.5)
            during = burst(low_keys[1])
            report("low-limit key (burst 2) during the Redis outage: %r", during)
            time.sleep(1.5)
            fb_outage = rh.worker_metric(w, "ag_ratelimit_fallback_total")
            redis.start()
            t_up = time.monotonic()
            report("Redis down for %.2f s; fallback decisions during the outage: %d",
                   t_up - t_down, fb_outage - fb0)
            # wait until the fallback counter stops moving while traffic flows
            samples = [(time.monotonic(), rh.worker_metric(w, "ag_ratelimit_fallback_total"))]
            stable_at = None
            while time.monotonic() - t_up < 15:
                time.sleep(0.5)
                samples.append((time.monotonic(), rh.worker_metric(w, "ag_ratelimit_fallback_total")))
                if samples[-1][1] == samples[-2][1]:
                    stable_at = samples[-2][0]
                    break
            recovery = (stable_at - t_up) if stable_at else None
            report("fallback counter stopped increasing %s after Redis came back",
                   "%.2f s" % recovery if recovery is not None else "NEVER (15 s)")
            # then it must stay flat over 2 s of traffic
            fb_a = rh.worker_metric(w, "ag_ratelimit_fallback_total")
            n_a = len(load.window())
            time.sleep(2.0)
            fb_b = rh.worker_metric(w, "ag_ratelimit_fallback_total")
            n_b = len(load.window())
            after = burst(low_keys[2], 4)
            redis_keys = redis.keys("ag:rl:*")
        finally:
            load.stop()
        outage = load.window(t_down, t_up)
        report("load during the Redis outage: %s", rh.LoadGenerator.describe(outage))
        report("load over the whole run: %s", rh.LoadGenerator.describe(load.window()))
        report("low-limit key after Redis returned: %r; ag:rl:* keys in the new Redis: %d",
               after, len(redis_keys))
        every = load.window()
        five = [e for e in every if isinstance(e[2], int) and e[2] >= 500]
        errors = [e for e in every if isinstance(e[2], str)]
        self.assertEqual(five[:10], [], "%d 5xx answers with Redis down" % len(five))
        self.assertEqual(errors[:10], [], "%d connection errors with Redis down" % len(errors))
        self.assertGreater(len(outage), 20)
        self.assertNoFailures(load, every, "high-limit key across the Redis outage")
        self.assertTrue(all(s in (200, 429) for s in during), during)
        self.assertIn(429, during, "limit not enforced during the Redis outage (failed open): %r" % during)
        self.assertLessEqual(during.count(200), 4, during)
        self.assertGreater(fb_outage, fb0, "ag_ratelimit_fallback_total did not count the outage")
        self.assertIsNotNone(recovery, "ag_ratelimit_fallback_total kept increasing for 15 s after "
                             "Redis came back: %r" % [(round(t - t_up, 1), v) for t, v in samples])
        self.assertGreater(n_b - n_a, 50, "too little traffic in the stability window")
        self.assertEqual(fb_b, fb_a, "ag_ratelimit_fallback_total still increasing with Redis back "
                         "(%d -> %d over 2 s)" % (fb_a, fb_b))
        self.assertTrue(redis_keys, "the worker did not write rate-limit state to the restarted Redis")
        self.assertEqual(after, [200, 200, 200, 429], "limit with Redis back")
        self.assertTrue(w.alive())


# =============================================================================================
# Upstream failures


def raw_get(port, path, key, timeout=5.0):
    """GET on a fresh raw connection; reads the whole response the way a careful client does.
    Returns a dict: status, headers, body_len, declared (Content-Length or None), chunked,
    terminated (a chunked body ended with its last chunk), end ("complete", "eof", "rst",
    "timeout"), elapsed."""
    t0 = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = {"status": None, "headers": None, "body_len": 0, "declared": None, "chunked": False,
           "terminated": False, "end": None, "elapsed": None, "body": b""}
    try:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n\r\n" % (path.encode(), key.encode()))
        status, headers, rest = wh.read_http_head(sock, timeout)
        out["status"], out["headers"] = status, headers
        if status is None:
            out["end"] = "eof" if rest == b"" else "partial-head"
            return out
        deadline = t0 + timeout
        buf = rest
        if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
            out["chunked"] = True
        elif headers.get("Content-Length") is not None:
            out["declared"] = int(headers["Content-Length"])

        def body_done():
            if out["chunked"]:
                return b"\r\n0\r\n\r\n" in b"\r\n" + buf or buf.startswith(b"0\r\n\r\n")
            if out["declared"] is not None:
                return len(buf) >= out["declared"]
            return False

        while not body_done():
            left = deadline - time.monotonic()
            if left <= 0:
                out["end"] = "timeout"
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                out["end"] = "timeout"
                break
            except ConnectionResetError:
                out["end"] = "rst"
                break
            if not chunk:
                out["end"] = "eof"
                break
            buf += chunk
        else:
            out["end"] = "complete"
        if out["chunked"]:
            # decode what arrived
            body, data = b"", buf
            while True:
                line, sep, tail = data.partition(b"\r\n")
                if not sep:
                    break
                try:
                    size = int(line.split(b";")[0] or b"x", 16)
                except ValueError:
                    break
                if size == 0:
                    out["terminated"] = True
                    break
                body += tail[:size]
                data = tail[size + 2:]
                if len(tail) < size:
                    break
            out["body_len"] = len(body)
        else:
            out["body_len"] = len(buf)
            out["body"] = buf[:2000]
        if out["status"] and out["end"] == "complete" and out["declared"] is not None:
            out["body"] = buf
        return out
    finally:
        out["elapsed"] = time.monotonic() - t0
        sock.close()


class UpstreamFailureTest(FaultTestCase):
    @classmethod
    def setUpClass(cls):
        cls.upstream = rh.QuietUpstream(wh.free_port())
        cls.addClassCleanup(lambda: cls.upstream.stop())  # test_a replaces it
        cls.up_port = cls.upstream.port
        cls.raw = rh.RawUpstream("routes")
        cls.addClassCleanup(cls.raw.stop)
        cls.blackhole = rh.RawUpstream("blackhole")
        cls.addClassCleanup(cls.blackhole.stop)
        cls.workdir = tempfile.mkdtemp(prefix="ag-faults-up-")
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)
        cls.config = os.path.join(cls.workdir, "worker-config.json")
        cls.key = wh.make_key()[0]
        cls.raw_key = wh.make_key()[0]
        cls.black_key = wh.make_key()[0]
        wh.write_config(cls.config, [
            wh.project_entry(cls.upstream.url, [wh.key_entry(cls.key)], 1000000, 100000),
            wh.project_entry(cls.raw.url, [wh.key_entry(cls.raw_key)], 1000000, 100000),
            wh.project_entry(cls.blackhole.url, [wh.key_entry(cls.black_key)], 1000000, 100000),
        ])
        cls.worker = rh.start_worker_at(0, config_path=cls.config, env_extra={
            "WORKER_UPSTREAM_TIMEOUT_SEC": "1", "WORKER_SNAPSHOT_PATH": "off"})
        cls.addClassCleanup(cls.worker.stop)
        rh.wait_ready(cls.worker)

    def test_a_upstream_killed_fast_502_then_recovers(self):
        w = self.worker
        load = rh.LoadGenerator(w.host, w.port, "/load", {"X-API-Key": self.key}, threads=2,
                                interval=0.01).start()
        posts = []
        try:
            time.sleep(1.0)
            t_kill = time.monotonic()
            self.upstream.stop()  # closes the listener, then cuts the connections it was serving
            t_killed = time.monotonic()
            time.sleep(0.3)
            for i in range(3):  # non-idempotent requests too
                t0 = time.monotonic()
                resp = w.request("POST", "/post-down", key=self.key, raw_body=b'{"a":1}', timeout=10)
                posts.append((resp.status, time.monotonic() - t0, resp.json().get("detail")))
            time.sleep(1.7)
            t_up = time.monotonic()
            type(self).upstream = rh.QuietUpstream(self.up_port)
            _, back_s, ok = poll_until(lambda: status_of(w, self.key), lambda s: s == 200, 5)
            report("first 200 %.3f s after the upstream came back on its port", back_s)
            time.sleep(1.5)
        finally:
            load.stop()
        outage = load.window(t_kill + 0.05, t_up)
        report("upstream killed: %s", rh.LoadGenerator.describe(outage))
        report("POSTs during the outage: %r", [(s, "%.1f ms" % (e * 1000), d) for s, e, d in posts])
        self.assertTrue(ok, "no 200 within 5 s of the upstream coming back")
        # A response the upstream was sending while it was being killed is cut off, and the
        # client's connection is closed (its head already said 200): correct, and not a
        # connection error. Requests that started after the kill completed must all be answered.
        errors = [e for e in load.window() if isinstance(e[2], str)
                  and not (e[0] <= t_killed and e[1] <= t_killed + 0.5 and e[2] == "E:IncompleteRead")]
        self.assertEqual(errors[:10], [], "connection errors instead of 502s")
        codes = {e[2] for e in outage}
        self.assertTrue(codes <= {200, 502}, "unexpected answers with the upstream dead: %r" % codes)
        five02 = [e for e in outage if e[2] == 502]
        self.assertGreater(len(five02), 10, "too few 502s measured")
        slowest = max(e[1] - e[0] for e in five02)
        self.assertLess(slowest, 1.0, "a 502 took %.3f s (must be under 1 s)" % slowest)
        for status, elapsed, detail in posts:
            self.assertEqual(status, 502)
            self.assertEqual(detail, "Upstream service unreachable")
            self.assertLess(elapsed, 1.0)
        recovered = load.window(t_up + back_s + 0.2)
        self.assertGreater(len(recovered), 10)
        self.assertEqual(rh.LoadGenerator.failures(recovered)[:10], [], "non-200 after the upstream returned")
        self.assertTrue(w.alive())

    def test_b_upstream_hanging_504_nothing_else_waits(self):
        w = self.worker
        results = {}

        def hang(name, key, path):
            t0 = time.monotonic()
            try:
                resp = w.request("GET", path, key=key, timeout=10)
                results[name] = (resp.status, time.monotonic() - t0, resp.text[:200])
            except Exception as exc:  # noqa: BLE001
                results[name] = ("E:" + type(exc).__name__, time.monotonic() - t0, "")

        threads = [threading.Thread(target=hang, args=("hang%d" % i, self.raw_key, "/hang?i=%d" % i))
                   for i in range(5)]
        threads += [threading.Thread(target=hang, args=("blackhole%d" % i, self.black_key, "/bh?i=%d" % i))
                    for i in range(3)]
        load = rh.LoadGenerator(w.host, w.port, "/load", {"X-API-Key": self.key}, threads=2,
                                interval=0.01).start()
        try:
            time.sleep(0.3)
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(15)
            t1 = time.monotonic()
            time.sleep(0.2)
        finally:
            load.stop()
        report("hanging upstreams: %s", ", ".join("%s %s in %.3f s" % (k, v[0], v[1])
                                                    for k, v in sorted(results.items())))
        normal = load.window(t0, t1)
        report("normal traffic meanwhile: %s", rh.LoadGenerator.describe(normal))
        self.assertEqual(len(results), 8, "some requests never returned: %r" % results)
        for name, (status, elapsed, body) in sorted(results.items()):
            self.assertEqual(status, 504, "%s: %r" % (name, (status, elapsed, body)))
            self.assertIn("Upstream timed out", body)
            self.assertGreater(elapsed, 0.8, "%s: 504 before the timeout" % name)
            self.assertLess(elapsed, 2.5, "%s: 504 took %.2f s with WORKER_UPSTREAM_TIMEOUT_SEC=1"
                            % (name, elapsed))
        self.assertEqual(rh.LoadGenerator.failures(normal), [])
        self.assertGreater(len(normal), 10)
        self.assertLess(rh.LoadGenerator.summary(normal)["max_ms"], 500,
                        "normal requests slowed down by hanging upstreams")
        self.assertEqual(status_of(w, self.raw_key, "/ok"), 200)
        self.assertTrue(w.alive())

    def test_c_upstream_stalls_mid_body(self):
        r = raw_get(self.worker.port, "/stall-cl", self.raw_key, timeout=6)
        report("upstream stalls after 64 KiB of a 1,000,000-byte body: status %r, %d bytes, end %s, "
               "%.2f s", r["status"], r["body_len"], r["end"], r["elapsed"])
        self.assertNotEqual(r["end"], "timeout", "the client was left hanging: %r" % r)
        if r["status"] == 200:
            self.assertLess(r["body_len"], rh.RawUpstream.BODY_TOTAL)
            self.assertIn(r["end"], ("eof", "rst"), r)
        else:
            self.assertEqual(r["status"], 504, r)
        self.assertLess(r["elapsed"], 3.5)
        self.assertEqual(status_of(self.worker, self.raw_key, "/ok"), 200)
        self.assertTrue(self.worker.alive())

    def test_d_upstream_resets_mid_body(self):
        for path in ("/reset-cl", "/reset-chunked"):
            r = raw_get(self.worker.port, path, self.raw_key, timeout=5)
            report("%s: status %r, %d body bytes received, chunked %s, last chunk %s, end %s, %.3f s",
                   path, r["status"], r["body_len"], r["chunked"], r["terminated"], r["end"], r["elapsed"])
            self.assertNotEqual(r["end"], "timeout", "%s: the client was left hanging: %r" % (path, r))
            if r["status"] == 200:
                # the head went out before the reset: the truncation must be visible
                self.assertIn(r["end"], ("eof", "rst"), "%s: %r" % (path, r))
                self.assertFalse(r["terminated"], "%s: a truncated chunked body was terminated "
                                 "with a last chunk (looks complete to the client)" % path)
                if r["declared"] is not None:
                    self.assertLess(r["body_len"], r["declared"])
                if path == "/reset-cl" and r["declared"] is not None:
                    self.assertEqual(r["declared"], rh.RawUpstream.BODY_TOTAL)
            else:
                self.assertEqual(r["status"], 502, "%s: %r" % (path, r))
            self.assertTrue(self.worker.alive(), "the worker died")
            # the same upstream, next request: 200
            self.assertEqual(status_of(self.worker, self.raw_key, "/ok"), 200)
        self.assertEqual(status_of(self.worker, self.key, "/load-after-reset"), 200)


# =============================================================================================
# Two workers on one port, rolling restart


class ReusePortRestartTest(FaultTestCase):
    """docs/worker.md "Shutdown": SIGTERM closes the listeners at once, closes idle keep-alive
    connections and lets in-flight requests finish (with Connection: close). With SO_REUSEPORT the
    other worker keeps accepting. Requirement: 0 failed requests."""

    ROUNDS = 2

    def setUp(self):
        self.upstream = rh.QuietUpstream()
        self.addCleanup(self.upstream.stop)
        self.workdir = tempfile.mkdtemp(prefix="ag-faults-rp-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.config = os.path.join(self.workdir, "worker-config.json")
        self.key = wh.make_key()[0]
        wh.write_config(self.config, [wh.project_entry(self.upstream.url, [wh.key_entry(self.key)],
                                                       1000000, 100000)])
        self.port = wh.free_port()
        self.workers = [self.start(), self.start()]

    def start(self):
        w = rh.start_worker_at(self.port, config_path=self.config,
                               env_extra={"WORKER_SNAPSHOT_PATH": "off", "WORKER_ACCESS_LOG": "off"})
        self.addCleanup(w.stop)
        rh.wait_ready(w)
        return w

    def rolling_restart(self, load):
        """Restarts each worker in turn, ROUNDS times; returns [(t_sigterm, t_exit, t_start,
        t_ready)] (monotonic)."""
        restarts = []
        time.sleep(1.0)
        for rnd in range(self.ROUNDS):
            for i in range(2):
                old = self.workers[i]
                t0 = time.monotonic()
                old.signal(signal.SIGTERM)
                code = old.wait_exit(20)
                t_exit = time.monotonic()
                self.assertEqual(code, 0, "worker exit code after SIGTERM (None: still running)")
                old.stop()
                t_start = time.monotonic()
                new = self.start()
                t_ready = time.monotonic()
                self.workers[i] = new
                restarts.append((t0, t_exit, t_start, t_ready))
                time.sleep(0.8)
        load.stop()
        for n, (t0, t_exit, t_start, t_ready) in enumerate(restarts):
            report("restart %d: exited %.3f s after SIGTERM, replacement listening+ready %.3f s later",
                   n + 1, t_exit - t0, t_ready - t_start)
        return restarts

    def assertNoRestartFailures(self, load, restarts, what):
        """0 failed requests. On failure, says which kind:
        - 503 "not ready" from a replacement worker that accepted connections on the shared port
          before its config was loaded;
        - EOF without an answer: a connection the stopping worker had accepted was closed without
          its (first) request being served;
        - connection reset at a SIGTERM: the connection was still in the accept queue of a listener
          the stopping worker closed; Linux resets those unless net.ipv4.tcp_migrate_req=1 (or a
          reuseport BPF program migrates them). With tcp_migrate_req=0 these are reported but not
          counted as failures of the worker, unless AG_TEST_STRICT_REUSEPORT=1."""
        events = load.window()
        bad = rh.LoadGenerator.failures(events)
        report("%s: %s", what, rh.LoadGenerator.describe(events))
        not_ready = [d for d in load.details if b"not ready" in d[2]]
        other_http = [d for d in load.details if b"not ready" not in d[2]]
        conn_errors = [e for e in bad if isinstance(e[2], str)]
        resets = [e for e in conn_errors if e[2] in ("E:ConnectionResetError", "E:BrokenPipeError",
                                                     "E:ConnectionAbortedError")]
        eofs = [e for e in conn_errors if e[2] == "E:RemoteDisconnected"]
        other_conn = [e for e in conn_errors if e not in resets and e not in eofs]
        try:
            with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
                migrate = f.read().strip()
        except OSError:
            migrate = "unknown"

        def nearest(t, idx):
            return min(restarts, key=lambda r: abs(r[idx] - t))

        # resets tolerated: at a SIGTERM (within 50 ms) when the kernel cannot migrate the queue
        tolerated = []
        if migrate != "1" and os.environ.get("AG_TEST_STRICT_REUSEPORT") != "1":
            tolerated = [e for e in resets if abs(e[0] - nearest(e[0], 0)[0]) < 0.05]
        lines = []
        for t0, t1, outcome in conn_errors:
            r = nearest(t0, 0)
            lines.append("  %s, request started %+.3f s from a SIGTERM%s" % (
                outcome, t0 - r[0], " (tolerated: tcp_migrate_req=%s)" % migrate
                if (t0, t1, outcome) in tolerated else ""))
        for t, status, body in other_http:
            lines.append("  %d %r" % (status, body))
        for t, status, body in not_ready:
            r = nearest(t, 2)
            lines.append("  %d %s, %.3f s after a replacement worker was started (it reported ready "
                         "%.3f s after start)" % (status, body.decode("utf-8", "replace"), t - r[2], r[3] - r[2]))
        if bad:
            report("%s: %d failures: %d not-ready 503s, %d EOF without an answer, %d resets (%d of them "
                   "at a SIGTERM with net.ipv4.tcp_migrate_req=%s), %d other connection errors, %d other "
                   "HTTP\n%s", what, len(bad), len(not_ready), len(eofs), len(resets), len(tolerated),
                   migrate, len(other_conn), len(other_http), "\n".join(lines[:30]))
        self.assertGreater(len(events), 100)
        counted = len(bad) - len(tolerated)
        self.assertEqual(counted, 0,
                         "%s: %d of %d requests failed: %d answered 503 'not ready' by a replacement "
                         "worker that accepted connections on the shared port before its config was "
                         "loaded; %d got EOF without an answer (an accepted connection closed by the "
                         "drain before its first request was served); %d connection resets not "
                         "explained by the kernel's accept-queue drop; %d other connection errors; "
                         "%d other HTTP failures.\n%s"
                         % (what, counted, len(events), len(not_ready), len(eofs),
                            len(resets) - len(tolerated), len(other_conn), len(other_http),
                            "\n".join(lines[:30])))

    def test_rolling_restart_new_connection_per_request(self):
        load = rh.LoadGenerator("127.0.0.1", self.port, "/load", {"X-API-Key": self.key}, threads=4,
                                keepalive=False, interval=0.001).start()
        try:
            restarts = self.rolling_restart(load)
        finally:
            load.stop()
        self.assertNoRestartFailures(load, restarts, "one connection per request, %d rolling restarts"
                                     % (2 * self.ROUNDS))

    def test_rolling_restart_keep_alive_clients(self):
        # Keep-alive clients: an idle connection closed by SIGTERM can race with the client's next
        # request; like every HTTP client, ours retries an idempotent request once on a fresh
        # connection when a reused connection fails before any response byte (counted, reported).
        load = rh.LoadGenerator("127.0.0.1", self.port, "/load", {"X-API-Key": self.key}, threads=4,
                                keepalive=True, interval=0.002, retry_stale=True).start()
        try:
            restarts = self.rolling_restart(load)
        finally:
            load.stop()
        report("keep-alive clients: %d stale-connection retries", load.retries)
        self.assertNoRestartFailures(load, restarts, "keep-alive clients (stale-connection retry), %d "
                                     "rolling restarts" % (2 * self.ROUNDS))


# =============================================================================================
# Disk full while saving the snapshot


class SnapshotDiskFullTest(FaultTestCase):
    def setUp(self):
        self.mnt = tempfile.mkdtemp(prefix="ag-faults-tmpfs-")
        self.addCleanup(shutil.rmtree, self.mnt, True)
        self.method = None
        if os.geteuid() == 0 and shutil.which("mount"):
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", self.mnt],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if proc.returncode == 0:
                self.method = "tmpfs"
                self.addCleanup(self._umount)
        if self.method is None and os.geteuid() != 0:
            self.method = "readonly"
            self.addCleanup(os.chmod, self.mnt, 0o755)
        if self.method is None:
            self.skipTest("cannot mount a tmpfs and running as root (a read-only directory would not stop root)")

    def _umount(self):
        for _ in range(20):
            if subprocess.run(["umount", self.mnt], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0:
                return
            time.sleep(0.25)
        subprocess.run(["umount", "-l", self.mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def fill(self):
        """Fills the tmpfs (or makes the directory read-only); returns a description."""
        if self.method == "readonly":
            os.chmod(self.mnt, 0o555)
            return "directory made read-only"
        filler = os.path.join(self.mnt, "filler")
        written = 0
        with open(filler, "wb", buffering=0) as f:
            while True:
                try:
                    written += f.write(b"\0" * 1024)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        st = os.statvfs(self.mnt)
        return "filler of %d bytes, %d bytes left" % (written, st.f_bavail * st.f_frsize)

    def unfill(self):
        if self.method == "readonly":
            os.chmod(self.mnt, 0o755)
        else:
            os.unlink(os.path.join(self.mnt, "filler"))

    def snapshot(self, path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def wait_snapshot(self, path, present, absent=(), timeout=10.0):
        deadline = time.monotonic() + timeout
        data = None
        while time.monotonic() < deadline:
            data = self.snapshot(path)
            if data is not None:
                text = data.decode("utf-8", "replace")
                try:
                    json.loads(text)
                except ValueError:
                    text = None
                if text and all(p in text for p in present) and not any(a in text for a in absent):
                    return data
            time.sleep(0.1)
        return None

    def test_disk_full_keeps_previous_snapshot(self):
        ctl = h.start_control("sqlite")
        self.addCleanup(ctl.stop)
        upstream = rh.QuietUpstream()
        self.addCleanup(upstream.stop)
        user = h.register_user(ctl)
        project = h.create_project(ctl, user.token, upstream=upstream.url + "/api",
                                   key_policy="multiple", rate_limit=NO_LIMIT)
        k1 = h.create_key(ctl, user.token, project["id"])
        path = os.path.join(self.mnt, "snap.json")
        w = rh.start_worker_at(0, control_url=ctl.base_url, secret=ctl.worker_secret,
                               env_extra=dict(STREAM_ENV, WORKER_SNAPSHOT_PATH=path))
        self.addCleanup(w.stop)
        rh.wait_ready(w)
        saved = self.wait_snapshot(path, [key_hash(k1["api_key"])])
        self.assertIsNotNone(saved, "first snapshot never written:\n" + w.stderr[-2000:])
        report("snapshot %d bytes on a %s", len(saved), "64 KiB tmpfs" if self.method == "tmpfs" else "directory")
        errors0 = rh.worker_metric(w, "ag_config_errors_total") or 0
        mark = w.stderr_count()
        how = self.fill()
        report("disk full: %s", how)

        load = rh.LoadGenerator(w.host, w.port, "/load", {"X-API-Key": k1["api_key"]}, threads=2,
                                interval=0.01).start()
        try:
            k2 = h.create_key(ctl, user.token, project["id"])
            _, took, ok = poll_until(lambda: status_of(w, k2["api_key"]), lambda s: s == 200, 5)
            self.assertTrue(ok, "a key created with the disk full never reached the worker")
            k3 = h.create_key(ctl, user.token, project["id"])
            resp = ctl.request("PATCH", "/projects/%s" % project["id"], {"max_body_bytes": 123456},
                               token=user.token)
            self.assertEqual(resp.status, 200, repr(resp))
            time.sleep(3.5)  # several save intervals
            during = self.snapshot(path)
            listing = sorted(os.listdir(self.mnt))
            errors1 = rh.worker_metric(w, "ag_config_errors_total") or 0
            statuses = [status_of(w, k["api_key"]) for k in (k1, k2, k3)]
            ready = w.admin("/ready")
            warned = w.wait_for_stderr(r"(?i)snapshot", timeout=0.1, start=mark)
        finally:
            load.stop()
        report("directory while full: %r; ag_config_errors_total %d -> %d; warning logged: %s",
               listing, errors0, errors1, warned.string if warned else None)
        self.assertNoFailures(load, load.window(), "traffic with the disk full")
        self.assertEqual(statuses, [200, 200, 200], "the worker stopped serving its config")
        self.assertEqual(ready.status, 200)
        self.assertIsNotNone(during, "the snapshot file disappeared when the disk filled up")
        self.assertEqual(during, saved, "the snapshot file changed although the disk was full "
                         "(%d bytes before, %d now)" % (len(saved), len(during)))
        doc = json.loads(during.decode("utf-8"))
        self.assertIn(key_hash(k1["api_key"]), during.decode())
        self.assertIsInstance(doc, dict)
        self.assertGreater(errors1, errors0, "failed saves not counted in ag_config_errors_total "
                           "(docs/metrics.md)")
        self.assertIsNotNone(warned, "no log line about the failed snapshot save")

        # space again: the next save succeeds and holds everything
        self.unfill()
        k4 = h.create_key(ctl, user.token, project["id"])
        t0 = time.monotonic()
        data = self.wait_snapshot(path, [key_hash(k["api_key"]) for k in (k1, k2, k3, k4)], timeout=10)
        report("after space was freed: snapshot up to date in %.2f s", time.monotonic() - t0)
        self.assertIsNotNone(data, "snapshot not saved again after space was freed:\n" + w.stderr[-2000:])
        self.assertTrue(w.alive())


if __name__ == "__main__":
    unittest.main(verbosity=2)
