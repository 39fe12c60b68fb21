#!/usr/bin/env python3
"""Traffic rollups (docs/metrics.md, "Traffic rollups"): a real worker, following a real control
plane, proxies a load run to a real upstream and reports each project's traffic per hour; the
control plane's hourly series agree with the worker's access log. Batches count once however
often they are sent, also across a control-plane restart; bad batches are refused; the
rollups are kept METRICS_RETENTION_DAYS; one organisation cannot read another's.
SQLite by default; AG_DB=postgres for PostgreSQL."""

import http.client
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
import harness.worker as wh  # noqa: E402
from harness.upstream import Upstream  # noqa: E402

HOUR = 3600


def hour_start(epoch):
    return h.rfc3339(int(epoch) // HOUR * HOUR)


def batch(project_id, hour, requests=10, errors=1, throttled=2, blocked=3, batch_id=None, worker="test-worker"):
    buckets = [0] * 16
    buckets[5] = requests
    return {"worker_id": worker, "batch_id": batch_id or h.random_string(12),
            "hours": [{"project_id": project_id, "hour": hour, "requests": requests, "errors": errors,
                       "throttled": throttled, "blocked": blocked, "latency_buckets": buckets}]}


class TrafficRollupsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = h.start_control()
        cls.upstream = Upstream()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.upstream.stop()

    def ok(self, resp, status=200):
        self.assertEqual(resp.status, status, resp)
        return resp.json() if resp.body else None

    def report(self, body, secret=None):
        return self.server.request("POST", "/internal/worker/traffic", body,
                                   headers={"x-worker-secret": secret or self.server.worker_secret})

    def org_project(self, user, **fields):
        org = self.ok(self.server.request("POST", "/organizations", {"name": "T " + h.random_string(5)}, token=user.token), 201)["id"]
        body = dict({"name": "p-" + h.random_string(6), "upstream_base_url": self.upstream.url, "organization_id": org}, **fields)
        project = self.ok(self.server.request("POST", "/projects", body, token=user.token), 201)
        return org, project

    def metrics(self, path, user):
        return self.ok(self.server.request("GET", path, token=user.token))

    def test_rollups_agree_with_the_access_log_after_a_load_run(self):
        user = h.register_user(self.server)
        org, fast = self.org_project(user, rate_limit={"requests_per_minute": 600000, "burst": 10000})
        slow = self.ok(self.server.request("POST", "/projects", {"name": "slow-" + h.random_string(4), "upstream_base_url": self.upstream.url,
                                                                 "organization_id": org, "rate_limit": {"requests_per_minute": 60, "burst": 5}},
                                           token=user.token), 201)
        fast_key = h.create_key(self.server, user.token, fast["id"])["api_key"]
        slow_key = h.create_key(self.server, user.token, slow["id"])["api_key"]
        started = time.time()
        worker = wh.start_worker(control_url=self.server.base_url, secret=self.server.worker_secret,
                                 env_extra={"WORKER_TRAFFIC_REPORT_SEC": "1"})
        try:
            wh.wait_ready(worker)
            h.poll_until(lambda: worker.request("GET", "/x", key=slow_key).status, lambda s: s == 200, 10)
            # Load: keep-alive clients on the fast project (some answers 500 from the upstream),
            # and the rate-limited project past its limit (429s).
            sent = {"fast": 0, "slow": 0}
            lock = threading.Lock()

            def client(key, paths, name, n):
                conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
                for i in range(n):
                    conn.request("GET", paths[i % len(paths)], headers={"X-API-Key": key})
                    r = conn.getresponse()
                    r.read()
                    if r.getheader("connection", "").lower() == "close":
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
                    with lock:
                        sent[name] += 1
                conn.close()

            threads = [threading.Thread(target=client, args=(fast_key, ["/a", "/b", "/status/500"], "fast", 700)) for _ in range(3)]
            threads.append(threading.Thread(target=client, args=(slow_key, ["/s"], "slow", 60)))
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            self.assertEqual(sent, {"fast": 2100, "slow": 60})
        finally:
            worker.stop()  # the last counts are sent on the way out
        ended = time.time()
        log = [e for e in worker.access_log() if e.get("project_id") in (fast["id"], slow["id"])]
        for project, name in ((fast, "fast"), (slow, "slow")):
            entries = [e for e in log if e["project_id"] == project["id"]]
            got = self.metrics("/projects/%s/metrics" % project["id"], user)
            totals = got["totals"]
            h.report("rollup %s: %d requests in the access log, %d in the rollup", name, len(entries), totals["requests"])
            self.assertGreater(len(entries), 0)
            self.assertLessEqual(abs(totals["requests"] - len(entries)), len(entries) * 0.01, (totals, len(entries)))
            self.assertLessEqual(abs(totals["errors"] - sum(1 for e in entries if e["status"] >= 500)), len(entries) * 0.01)
            self.assertLessEqual(abs(totals["throttled"] - sum(1 for e in entries if e["status"] == 429)), len(entries) * 0.01)
            self.assertEqual(sum(p["requests"] for p in got["series"]), totals["requests"])
            # Counted under the hour they were served in: the run's hour, or the next one when the
            # run crossed the hour.
            hours = [p["hour"] for p in got["series"]]
            self.assertEqual(hours, sorted(set(hours)))
            self.assertLessEqual(set(hours), {hour_start(started), hour_start(ended)}, (hours, started, ended))
            self.assertIsNotNone(totals["p50_ms"])
            self.assertLessEqual(totals["p50_ms"], totals["p99_ms"])
        slow_totals = self.metrics("/projects/%s/metrics" % slow["id"], user)["totals"]
        self.assertGreater(slow_totals["throttled"], 0)
        fast_totals = self.metrics("/projects/%s/metrics" % fast["id"], user)["totals"]
        self.assertAlmostEqual(fast_totals["errors"], 700, delta=7)
        # The organisation's view: both projects, and their sum.
        org_view = self.metrics("/organizations/%s/metrics" % org, user)
        self.assertEqual(org_view["totals"]["requests"], fast_totals["requests"] + slow_totals["requests"])
        self.assertEqual({p["project_id"]: p["requests"] for p in org_view["projects"]},
                         {fast["id"]: fast_totals["requests"], slow["id"]: slow_totals["requests"]})

    def test_a_batch_counts_once_also_across_a_restart(self):
        user = h.register_user(self.server)
        _, project = self.org_project(user)
        hour = hour_start(time.time())
        b = batch(project["id"], hour, requests=10, batch_id="fixed-1")
        first = self.ok(self.report(b))
        self.assertEqual(first["duplicate"], False)
        self.assertEqual(self.ok(self.report(b))["duplicate"], True)
        got = self.metrics("/projects/%s/metrics" % project["id"], user)["totals"]
        self.assertEqual((got["requests"], got["errors"], got["throttled"], got["blocked"]), (10, 1, 2, 3))
        # Same batch id from another worker is another batch.
        self.ok(self.report(batch(project["id"], hour, requests=5, errors=0, throttled=0, blocked=0, batch_id="fixed-1", worker="other")))
        self.assertEqual(self.metrics("/projects/%s/metrics" % project["id"], user)["totals"]["requests"], 15)

    def test_restart_keeps_batches_counted(self):
        workdir = tempfile.mkdtemp(prefix="ag-traffic-")
        self.addCleanup(shutil.rmtree, workdir, True)
        server = h.start_control(workdir=workdir)
        secrets = {"WORKER_SECRET_KEY": server.worker_secret, "JWT_SECRET_KEY": server.jwt_secret}
        try:
            user = h.register_user(server)
            org = server.request("POST", "/organizations", {"name": "R"}, token=user.token).json()["id"]
            project = server.request("POST", "/projects", {"name": "r", "upstream_base_url": "http://127.0.0.1:9/", "organization_id": org},
                                     token=user.token).json()
            b = batch(project["id"], hour_start(time.time()), requests=7, errors=0, throttled=0, blocked=0, batch_id="r-1")
            hdr = {"x-worker-secret": server.worker_secret}
            self.assertFalse(server.request("POST", "/internal/worker/traffic", b, headers=hdr).json()["duplicate"])
            server.stop(drop_database=False)
            server = h.start_control(workdir=workdir, db_url=server.db_url, env_extra=secrets)
            # The worker sends the batch again (it never heard the answer): not counted twice.
            self.assertTrue(server.request("POST", "/internal/worker/traffic", b, headers=hdr).json()["duplicate"])
            token = h.login(server, user.email, user.password)["access_token"]
            got = server.request("GET", "/projects/%s/metrics" % project["id"], token=token).json()
            self.assertEqual(got["totals"]["requests"], 7)
        finally:
            server.stop()

    def test_bad_batches_are_refused(self):
        user = h.register_user(self.server)
        _, project = self.org_project(user)
        hour = hour_start(time.time())
        good = batch(project["id"], hour)
        self.assertEqual(self.report(good, secret="wrong-secret-" + h.random_string(20)).status, 401)
        cases = []
        b = batch(project["id"], hour)
        b["hours"][0]["latency_buckets"][0] += 1  # buckets no longer add up to requests
        cases.append(b)
        b = batch(project["id"], h.rfc3339(int(time.time()) // HOUR * HOUR + 60))  # not on the hour
        cases.append(b)
        b = batch(project["id"], hour)
        b["hours"][0]["latency_buckets"] = [1] * 3
        cases.append(b)
        b = batch(project["id"], hour)
        b["hours"][0]["requests"] = -1
        cases.append(b)
        b = batch(project["id"], hour, errors=8, throttled=8)
        cases.append(b)
        b = batch(project["id"], hour)
        b["extra"] = 1
        cases.append(b)
        b = batch(project["id"], hour)
        del b["batch_id"]
        cases.append(b)
        for body in cases:
            resp = self.report(body)
            self.assertEqual(resp.status, 422, (body, resp))
            self.assertEqual(resp.json()["request_id"], resp.headers["X-Request-Id"])
        # Nothing of them was counted.
        self.assertEqual(self.metrics("/projects/%s/metrics" % project["id"], user)["totals"]["requests"], 0)
        # A deleted project's counts are dropped, not an error.
        self.ok(self.report(batch("0c8f6a52-0000-4000-8000-000000000000", hour)))

    def test_queries_and_isolation(self):
        user, stranger = h.register_user(self.server), h.register_user(self.server)
        org, project = self.org_project(user)
        now = time.time()
        self.ok(self.report(batch(project["id"], hour_start(now - 5 * HOUR), requests=4, errors=0, throttled=0, blocked=0)))
        self.ok(self.report(batch(project["id"], hour_start(now), requests=6, errors=0, throttled=0, blocked=0)))
        day = self.metrics("/projects/%s/metrics" % project["id"], user)
        self.assertEqual([p["requests"] for p in day["series"]], [4, 6])
        recent = self.metrics("/projects/%s/metrics?from=%s" % (project["id"], hour_start(now - 2 * HOUR)), user)
        self.assertEqual([p["requests"] for p in recent["series"]], [6])
        older = self.metrics("/projects/%s/metrics?from=%s&to=%s" % (project["id"], hour_start(now - 6 * HOUR), hour_start(now - 4 * HOUR)), user)
        self.assertEqual([p["requests"] for p in older["series"]], [4])
        for query in ("from=yesterday", "from=%s&to=%s" % (hour_start(now), hour_start(now - HOUR)),
                      "from=%s" % hour_start(now - 200 * 24 * HOUR)):
            self.assertEqual(self.server.request("GET", "/projects/%s/metrics?%s" % (project["id"], query), token=user.token).status, 422, query)
        for path in ("/projects/%s/metrics" % project["id"], "/organizations/%s/metrics" % org):
            resp = self.server.request("GET", path, token=stranger.token)
            self.assertEqual(resp.status, 404, resp)

    def test_rollups_past_retention_are_dropped(self):
        server = h.start_control(env_extra={"METRICS_RETENTION_DAYS": "1"})
        try:
            user = h.register_user(server)
            org = server.request("POST", "/organizations", {"name": "Old"}, token=user.token).json()["id"]
            project = server.request("POST", "/projects", {"name": "o", "upstream_base_url": "http://127.0.0.1:9/", "organization_id": org},
                                     token=user.token).json()
            hdr = {"x-worker-secret": server.worker_secret}
            now = time.time()
            old = batch(project["id"], hour_start(now - 3 * 24 * HOUR), requests=9, errors=0, throttled=0, blocked=0)
            fresh = batch(project["id"], hour_start(now), requests=2, errors=0, throttled=0, blocked=0)
            for b in (old, fresh):
                self.assertEqual(server.request("POST", "/internal/worker/traffic", b, headers=hdr).status, 200)
            rows = h.db_query(server.db, server.db_path, server.db_url,
                              "SELECT SUM(requests) FROM traffic_hourly WHERE project_id = '%s'" % project["id"])
            self.assertEqual(int(rows[0][0]), 2)
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
