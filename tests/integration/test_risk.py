"""Integration tests of the risk engine (docs/risk.md) with the real worker, a real upstream and
the real control plane: IP lists, failed-authentication blocking, shadow and enforce modes,
throttling, and the project's risk policy through the control API.

Standard library only; run with the binary in AG_BIN (see README.md in this directory)."""

import os
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
import mmdb_writer  # noqa: E402
import harness as wh  # noqa: E402


def risky_project(upstream, key_entry, risk):
    p = wh.project_entry(upstream, [key_entry], requests_per_minute=600000, burst=100000)
    p["risk"] = risk
    return p


class RiskWorkerTest(unittest.TestCase):
    """One worker (file mode) with projects in different risk configurations."""

    @classmethod
    def setUpClass(cls):
        cls.upstream = wh.Upstream()
        cls.workdir = tempfile.mkdtemp(prefix="ag-risk-")
        cls.config_path = os.path.join(cls.workdir, "config.json")
        up = cls.upstream.url
        cls.key_shadow, _ = wh.make_key()
        cls.key_enforce, _ = wh.make_key()
        cls.key_throttle, _ = wh.make_key()
        cls.key_denied, _ = wh.make_key()
        cls.key_default, _ = wh.make_key()
        cls.key_scan, _ = wh.make_key()
        strict = {"burst_per_sec": 2, "velocity_per_min": 3,
                  "weights": {"velocity": 0.5, "burst": 0.5}, "thresholds": {"throttle": 0.6, "block": 0.9}}
        projects = [
            risky_project(up, wh.key_entry(cls.key_shadow), dict(strict, mode="shadow")),
            risky_project(up, wh.key_entry(cls.key_enforce), dict(strict, mode="enforce")),
            risky_project(up, wh.key_entry(cls.key_throttle),
                          {"mode": "enforce", "burst_per_sec": 1, "weights": {"burst": 0.7, "velocity": 0},
                           "thresholds": {"throttle": 0.5, "block": 1.0},
                           "throttle": {"action": "delay", "delay_ms": 400}}),
            risky_project(up, wh.key_entry(cls.key_denied), {"ip_deny": ["127.0.0.0/8"]}),
            wh.project_entry(up, [wh.key_entry(cls.key_default)], requests_per_minute=600000, burst=100000),
            risky_project(up, wh.key_entry(cls.key_scan),
                          {"mode": "enforce", "drift_endpoints": 3, "weights": {"drift": 1.0},
                           "thresholds": {"throttle": 0.95, "block": 0.99}}),
        ]
        wh.write_config(cls.config_path, projects)
        cls.worker = wh.start_worker(cls.config_path, env_extra={
            "WORKER_AUTH_FAILURE_LIMIT": "5", "WORKER_AUTH_FAILURE_WINDOW_SEC": "2"})
        ready = cls.worker.wait_ready()
        if ready is None or ready.status != 200:
            raise AssertionError("worker not ready: %r\n%s" % (ready, cls.worker.stderr))

    @classmethod
    def tearDownClass(cls):
        cls.worker.stop()
        cls.upstream.stop()

    def get(self, path, key, headers=None):
        hdrs = {"User-Agent": "risk-test/1.0"}
        hdrs.update(headers or {})
        return self.worker.request("GET", path, key=key, headers=hdrs)

    def log_for(self, marker):
        entry = self.worker.wait_for_log(lambda e: marker in e.get("path", ""), timeout=5)
        self.assertIsNotNone(entry, "no access-log line for %s" % marker)
        return entry

    def test_default_policy_scores_normal_traffic_zero(self):
        m = "default-%s" % h.random_string(8)
        for i in range(5):
            resp = self.get("/%s/%d" % (m, i), self.key_default)
            self.assertEqual(resp.status, 200, resp)
        entry = self.log_for(m)
        self.assertEqual(entry["risk_score"], 0.0)
        self.assertEqual(entry["risk_decision"], "allow")
        self.assertEqual(entry["rules"], [])
        self.assertEqual(entry["decision"], "allow")

    def test_shadow_mode_logs_a_block_but_proxies(self):
        m = "shadow-%s" % h.random_string(8)
        for i in range(8):
            resp = self.get("/%s?i=%d" % (m, i), self.key_shadow)
            self.assertEqual(resp.status, 200, "shadow mode must never block: %r" % resp)
        self.assertEqual(len(self.upstream.matching(m)), 8)
        blocked = self.worker.wait_for_log(
            lambda e: m in e.get("path", "") and e.get("risk_decision") == "block", timeout=5)
        self.assertIsNotNone(blocked, "a shadow block decision should be logged")
        self.assertTrue(blocked["shadow"])
        self.assertEqual(blocked["decision"], "allow")
        self.assertEqual(blocked["status"], 200)
        self.assertGreaterEqual(blocked["risk_score"], 0.9)
        self.assertIn("burst", blocked["rules"])
        self.assertIn("velocity", blocked["rules"])
        self.assertIn('ag_risk_shadowed_total', self.worker.metrics())

    def test_enforce_mode_blocks_with_429_and_the_upstream_never_sees_it(self):
        m = "enforce-%s" % h.random_string(8)
        statuses = [self.get("/%s?i=%d" % (m, i), self.key_enforce).status for i in range(8)]
        self.assertEqual(statuses[0], 200)
        self.assertIn(429, statuses)
        blocked = self.get("/%s?last" % m, self.key_enforce)
        self.assertEqual(blocked.status, 429)
        self.assertEqual(blocked.json()["detail"], "Request blocked by risk policy")
        self.assertEqual(len(self.upstream.matching(m)), statuses.count(200))
        entry = self.worker.wait_for_log(lambda e: m in e.get("path", "") and e.get("status") == 429, timeout=5)
        self.assertIsNotNone(entry)
        self.assertEqual(entry["reason"], "risk_blocked")
        self.assertEqual(entry["decision"], "block")
        self.assertNotIn("shadow", entry)

    def test_throttle_delays_then_proxies(self):
        m = "throttle-%s" % h.random_string(8)
        self.assertEqual(self.get("/%s?i=0" % m, self.key_throttle).status, 200)
        slow = None
        for i in range(1, 6):
            start = time.monotonic()
            resp = self.get("/%s?i=%d" % (m, i), self.key_throttle)
            took = time.monotonic() - start
            self.assertEqual(resp.status, 200, resp)
            if took >= 0.35:
                slow = took
        self.assertIsNotNone(slow, "throttled requests should be delayed by ~400 ms")
        entry = self.worker.wait_for_log(lambda e: m in e.get("path", "") and e.get("decision") == "throttle", timeout=5)
        self.assertIsNotNone(entry)
        self.assertIn("burst", entry["rules"])
        self.assertGreaterEqual(entry["latency_ms"], 350)

    def test_endpoint_scanning_raises_the_score_and_blocks(self):
        m = "scan-%s" % h.random_string(8)
        statuses = [self.get("/%s/%s" % (m, h.random_string(10)), self.key_scan).status for _ in range(25)]
        self.assertEqual(statuses[0], 200)
        self.assertIn(429, statuses, "scanning many distinct endpoints should be blocked")
        entry = self.worker.wait_for_log(lambda e: m in e.get("path", "") and e.get("status") == 429, timeout=5)
        self.assertIn("drift", entry["rules"])

    def test_project_ip_deny_list_refuses_with_403(self):
        m = "denied-%s" % h.random_string(8)
        resp = self.get("/%s" % m, self.key_denied)
        self.assertEqual(resp.status, 403)
        self.assertEqual(resp.json()["detail"], "Forbidden by IP policy")
        self.assertEqual(self.upstream.matching(m), [])
        self.assertEqual(self.log_for(m)["reason"], "ip_denied")

    def test_failed_authentications_block_the_ip_then_release(self):
        # Runs last among this class's users of 127.0.0.1 failures: wait out any earlier ones.
        time.sleep(4.5)
        m = "brute-%s" % h.random_string(8)
        for i in range(5):
            bad, _ = wh.make_key()
            self.assertEqual(self.get("/%s?i=%d" % (m, i), bad).status, 401)
        blocked = self.get("/%s?valid" % m, self.key_default)
        self.assertEqual(blocked.status, 429, "the address is blocked even with a valid key")
        self.assertEqual(blocked.json()["detail"], "Too many failed authentication attempts")
        self.assertEqual(blocked.headers.get("Retry-After"), "2")
        self.assertEqual(self.upstream.matching(m + "?valid"), [])
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            if self.get("/%s?after" % m, self.key_default).status == 200:
                break
            time.sleep(0.5)
        else:
            self.fail("the address was not released after the window")
        self.assertIn('ag_risk_rules_total{rule="auth_failures"}', self.worker.metrics())


class WorkerIpDenyTest(unittest.TestCase):
    def test_worker_deny_list_refuses_before_any_other_work(self):
        upstream = wh.Upstream()
        workdir = tempfile.mkdtemp(prefix="ag-risk-")
        config_path = os.path.join(workdir, "config.json")
        key, _ = wh.make_key()
        wh.write_config(config_path, [wh.project_entry(upstream.url, [wh.key_entry(key)])])
        worker = wh.start_worker(config_path, env_extra={"WORKER_IP_DENY": "10.0.0.0/8, 127.0.0.0/8"})
        try:
            worker.wait_ready()
            m = "wdeny-%s" % h.random_string(8)
            for k in (key, "agk_not_a_key", None):
                resp = worker.request("GET", "/%s" % m, key=k)
                self.assertEqual(resp.status, 403, "denied before the key is even looked at (%r)" % k)
                self.assertEqual(resp.json()["detail"], "Forbidden")
            self.assertEqual(upstream.matching(m), [])
        finally:
            worker.stop()
            upstream.stop()


class CountryRuleTest(unittest.TestCase):
    """Country lists with a MaxMind-format database (written by mmdb_writer: 127.0.0.0/8 -> XX)."""

    def run_worker(self, with_db):
        upstream = wh.Upstream()
        self.addCleanup(upstream.stop)
        workdir = tempfile.mkdtemp(prefix="ag-geo-")
        keys = {name: wh.make_key()[0] for name in ("deny_xx", "allow_de", "allow_xx", "deny_de")}
        policies = {"deny_xx": {"country_deny": ["xx"]}, "allow_de": {"country_allow": ["DE"]},
                    "allow_xx": {"country_allow": ["XX", "DE"]}, "deny_de": {"country_deny": ["DE"]}}
        projects = [risky_project(upstream.url, wh.key_entry(keys[n]), policies[n]) for n in keys]
        config_path = os.path.join(workdir, "config.json")
        wh.write_config(config_path, projects)
        env = {}
        if with_db:
            db = os.path.join(workdir, "country.mmdb")
            mmdb_writer.write_country_db(db, [("127.0.0.0/8", "XX"), ("10.0.0.0/8", "DE")])
            env["WORKER_GEOIP_DB"] = db
        worker = wh.start_worker(config_path, env_extra=env)
        self.addCleanup(worker.stop)
        worker.wait_ready()
        return worker, upstream, keys

    def test_country_lists_with_a_database(self):
        worker, upstream, keys = self.run_worker(with_db=True)
        expect = {"deny_xx": 403, "allow_de": 403, "allow_xx": 200, "deny_de": 200}
        for name, status in expect.items():
            m = "geo-%s-%s" % (name, h.random_string(6))
            resp = worker.request("GET", "/" + m, key=keys[name], headers={"User-Agent": "t"})
            self.assertEqual(resp.status, status, "%s: %r" % (name, resp))
            if status == 403:
                self.assertEqual(resp.json()["detail"], "Forbidden by country policy")
                self.assertEqual(upstream.matching(m), [])
                entry = worker.wait_for_log(lambda e, m=m: m in e.get("path", ""), timeout=5)
                self.assertEqual(entry["reason"], "country_denied")

    def test_allow_list_without_a_database_fails_closed(self):
        worker, upstream, keys = self.run_worker(with_db=False)
        self.assertEqual(worker.request("GET", "/geo-a", key=keys["allow_xx"]).status, 403)
        entry = worker.wait_for_log(lambda e: e.get("path") == "/geo-a", timeout=5)
        self.assertEqual(entry["reason"], "country_unknown")
        # A deny list cannot be checked without the database: skipped.
        self.assertEqual(worker.request("GET", "/geo-b", key=keys["deny_xx"]).status, 200)


class RiskPolicyApiTest(unittest.TestCase):
    def test_risk_policy_is_validated_stored_and_delivered(self):
        server = h.start_control()
        try:
            token = h.new_token(server)
            project = h.create_project(server, token)
            auth = {"Authorization": "Bearer " + token}
            self.assertIsNone(project["risk"])
            policy = {"mode": "enforce", "weights": {"velocity": 0.5}, "thresholds": {"throttle": 0.5, "block": 0.8},
                      "allowed_methods": ["get", "POST"], "ip_deny": ["192.0.2.0/24"],
                      "throttle": {"action": "limit", "limit_factor": 0.2}}
            resp = server.request("PATCH", "/projects/%s" % project["id"], body={"risk": policy}, headers=auth)
            self.assertEqual(resp.status, 200, resp)
            self.assertEqual(resp.json()["risk"]["mode"], "enforce")
            for bad, field in (({"mode": "off"}, "risk.mode"), ({"weights": {"velocity": 2}}, "risk.weights.velocity"),
                               ({"thresholds": {"throttle": 0.9, "block": 0.5}}, "risk.thresholds"),
                               ({"ip_deny": ["not-an-ip"]}, "risk.ip_deny"), ({"unknown": 1}, "risk.unknown"),
                               ({"throttle": {"action": "explode"}}, "risk.throttle.action"), ("strict", "risk")):
                resp = server.request("PATCH", "/projects/%s" % project["id"], body={"risk": bad}, headers=auth)
                self.assertEqual(resp.status, 422, "%r -> %r" % (bad, resp))
                self.assertIn(field, resp.json()["detail"])
            stored = server.request("GET", "/projects/%s" % project["id"], headers=auth).json()
            self.assertEqual(stored["risk"]["ip_deny"], ["192.0.2.0/24"])
            doc = server.worker_config().json()
            delivered = [p for p in doc["projects"] if p["id"] == project["id"]][0]
            self.assertEqual(delivered["risk"]["mode"], "enforce")
            resp = server.request("PATCH", "/projects/%s" % project["id"], body={"risk": None}, headers=auth)
            self.assertIsNone(resp.json()["risk"])
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
