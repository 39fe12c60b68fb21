"""Integration tests of the config stream (docs/config-stream.md) against the real binary.

- The control plane's side: `GET /internal/worker/config?since=V&wait=S` (full documents, deltas,
  long polls, validation), on SQLite and, when AG_TEST_PG_URL is set, on PostgreSQL, including
  two control-plane processes sharing one PostgreSQL database.
- The worker's side: two workers following one control plane (revocations, new keys, project
  changes and rotations reach them within a second), the saved snapshot (written, served when the
  control plane is down, refused when older than WORKER_SNAPSHOT_MAX_AGE_SEC, ignored when
  corrupt, replaced when the database was restored, kept up to date), catching up after a
  restart, a control-plane restart under traffic, and a scripted control plane serving deltas the
  worker must apply or drop and full documents in answer to a `since` request.

Run: python3 tests/integration/test_config_stream.py
Environment: see the harness (AG_BIN, AG_TEST_PG_URL, AG_TEST_REQUIRE_PG, AG_TEST_KEEP).
"""

import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import signal
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
from harness import start_control_at  # noqa: E402

CONFIG_PATH = "/internal/worker/config"
PROJECT_FIELDS = ("id", "name", "upstream_url", "upstream_base_url", "domains", "rate_limit",
                  "key_policy", "max_body_bytes")
KEY_FIELDS = ("id", "public_id", "hash", "expires_at")
# Every worker in this file: a long refresh interval, so that only the stream (not periodic
# polling) can deliver a change within a second; snapshots saved every second.
STREAM_WORKER_ENV = {"WORKER_CONFIG_POLL_SEC": "30", "WORKER_SNAPSHOT_INTERVAL_SEC": "1"}
# Big enough never to be hit by the tests' own traffic.
NO_LIMIT = {"requests_per_minute": 1000000, "burst": 100000}
WARN_SNAPSHOT_RE = re.compile(r"(warning|error|critical)\b.*snapshot", re.I)
WARN_RE = re.compile(r"^\S+ (warning|error|critical) ")


def report(fmt, *args):
    sys.stderr.write(("\n    [measured] " + fmt + "\n") % args)
    sys.stderr.flush()


def key_hash(api_key):
    return hashlib.sha256(api_key.encode("ascii")).hexdigest()


def stream_get(server, since=None, wait=None, secret=None, timeout=h.REQUEST_TIMEOUT_SEC):
    """GET /internal/worker/config with optional since/wait (sent as given: ints or strings).
    secret: None = the server's worker secret, False = no secret header."""
    params = []
    if since is not None:
        params.append(("since", str(since)))
    if wait is not None:
        params.append(("wait", str(wait)))
    path = CONFIG_PATH + ("?" + urllib.parse.urlencode(params) if params else "")
    headers = {}
    if secret is not False:
        headers["x-worker-secret"] = server.worker_secret if secret is None else secret
    return server.request("GET", path, headers=headers, timeout=timeout)


def current_version(server):
    resp = stream_get(server)
    if resp.status != 200:
        raise AssertionError("full document: %r" % (resp,))
    return resp.json()["version"]


def poll_until(fn, ok, timeout, interval=0.01):
    return wh.poll_until(fn, ok, timeout, interval)


def key_status(worker, api_key, path="/cs", timeout=5.0):
    """Status of one proxied request with `api_key`; None when the request itself failed."""
    try:
        return worker.request("GET", path, key=api_key, timeout=timeout).status
    except (OSError, http.client.HTTPException):
        return None


def ready_version(worker):
    try:
        resp = worker.admin("/ready", timeout=2)
        return resp.json().get("config_version") if resp.status == 200 else None
    except (OSError, ValueError):
        return None


def read_snapshot(path):
    """(parsed JSON, text) of the snapshot file, or (None, None) when absent or not JSON."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        return json.loads(text), text
    except (OSError, ValueError):
        return None, None


def wait_snapshot(path, hashes, timeout=10.0, absent=()):
    """Waits until the snapshot file parses as JSON, contains every hash in `hashes` and none in
    `absent`; returns (doc, text) or (None, last text)."""
    deadline = time.monotonic() + timeout
    text = None
    while True:
        doc, text = read_snapshot(path)
        if doc is not None and all(x in text for x in hashes) and not any(x in text for x in absent):
            return doc, text
        if time.monotonic() > deadline:
            return None, text
        time.sleep(0.1)


class LongPoll(threading.Thread):
    """One GET /internal/worker/config?since=&wait= in a thread, timed."""

    def __init__(self, server, since, wait, secret=None):
        super().__init__(daemon=True)
        self.server, self.since, self.wait, self.secret = server, since, wait, secret
        self.resp = self.error = None
        self.started_at = self.finished_at = None

    def run(self):
        self.started_at = time.monotonic()
        try:
            self.resp = stream_get(self.server, self.since, self.wait, secret=self.secret,
                                   timeout=self.wait + 20)
        except Exception as exc:  # reported by the test
            self.error = exc
        self.finished_at = time.monotonic()


# =============================================================================================
# The control plane's side


class ConfigStreamApiTest(unittest.TestCase):
    """GET /internal/worker/config?since=&wait= on SQLite."""

    DB = "sqlite"

    @classmethod
    def setUpClass(cls):
        cls.control = h.start_control(cls.DB)
        cls.user = h.register_user(cls.control)

    @classmethod
    def tearDownClass(cls):
        cls.control.stop()

    # -- helpers -------------------------------------------------------------------------

    def project(self, **fields):
        fields.setdefault("key_policy", "multiple")
        return h.create_project(self.control, self.user.token, **fields)

    def key(self, project, **body):
        return h.create_key(self.control, self.user.token, project["id"], **body)

    def revoke(self, project, key, server=None):
        resp = (server or self.control).request(
            "DELETE", "/projects/%s/keys/%s" % (project["id"], key["id"]), token=self.user.token)
        self.assertEqual(resp.status, 204, repr(resp))

    def assertDelta(self, resp, since):
        """A 200 delta document for `since`; checks the envelope and the ordering of changes."""
        self.assertEqual(resp.status, 200, repr(resp))
        doc = resp.json()
        self.assertEqual(doc.get("schema"), 1, repr(resp))
        self.assertIs(doc.get("full"), False, repr(resp))
        self.assertEqual(doc.get("since"), since, repr(resp))
        self.assertIsInstance(doc.get("version"), int, repr(resp))
        self.assertRegex(doc.get("generated_at") or "", h.RFC3339_RE)
        changes = doc.get("changes")
        self.assertIsInstance(changes, list, repr(resp))
        if not changes:
            self.assertEqual(doc["version"], since, "an empty delta must keep the version")
            return doc
        versions = [c.get("version") for c in changes]
        for v in versions:
            self.assertIsInstance(v, int, repr(changes))
            self.assertGreater(v, since, "a change at or before `since` was sent: %r" % (changes,))
        self.assertEqual(versions, sorted(versions), "changes not in version order: %r" % (changes,))
        self.assertEqual(versions[-1], doc["version"], "the document's version is not its last change's")
        return doc

    def delta(self, since, wait=0):
        return self.assertDelta(stream_get(self.control, since, wait), since)

    def assertKeyUpsert(self, change, project, key, expires=None):
        self.assertEqual(change.get("op"), "key.upsert", repr(change))
        self.assertEqual(change.get("project_id"), project["id"], repr(change))
        body = change.get("key")
        self.assertIsInstance(body, dict, repr(change))
        for f in KEY_FIELDS:
            self.assertIn(f, body, repr(change))
        self.assertEqual(body["id"], key["id"], repr(change))
        self.assertEqual(body["public_id"], key["public_id"], repr(change))
        self.assertEqual(body["hash"], key_hash(key["api_key"]), repr(change))
        self.assertRegex(body["hash"], h.SHA256_HEX_RE)
        self.assertNotIn(key["api_key"], json.dumps(change), "the raw key is in the stream")
        self.assertEqual(body["expires_at"], expires, repr(change))

    def assertKeyDelete(self, change, project, key):
        self.assertEqual(change.get("op"), "key.delete", repr(change))
        self.assertEqual(change.get("project_id"), project["id"], repr(change))
        self.assertEqual(change.get("key_id"), key["id"], repr(change))
        self.assertEqual(change.get("hash"), key_hash(key["api_key"]), repr(change))

    # -- tests ----------------------------------------------------------------------------

    def test_full_document_without_since(self):
        before = current_version(self.control)
        project = self.project()
        key = self.key(project)
        resp = stream_get(self.control)
        self.assertEqual(resp.status, 200, repr(resp))
        doc = resp.json()
        self.assertIs(doc.get("full"), True, repr(resp))
        self.assertEqual(doc.get("schema"), 1)
        self.assertIsInstance(doc.get("version"), int)
        self.assertGreater(doc["version"], before, "version did not move with two changes")
        self.assertRegex(doc.get("generated_at") or "", h.RFC3339_RE)
        self.assertIsInstance(doc.get("projects"), list)
        entry = h.find_project(doc, project["id"])
        self.assertIsNotNone(entry, "new project missing from the full document")
        self.assertIn(key_hash(key["api_key"]), entry["api_keys"])
        self.assertEqual([k["id"] for k in entry["keys"]], [key["id"]])
        self.assertEqual(resp.headers.get("ETag"), '"%d"' % doc["version"], repr(resp))

    def test_since_current_returns_no_changes(self):
        self.key(self.project())
        version = current_version(self.control)
        for wait in (0, None):
            t0 = time.monotonic()
            doc = self.delta(version, wait)
            elapsed = time.monotonic() - t0
            self.assertEqual(doc["changes"], [])
            self.assertEqual(doc["version"], version)
            self.assertLess(elapsed, 1.0, "wait=%r held the request %.2fs" % (wait, elapsed))
        # changes pending: answered at once even with a long wait
        t0 = time.monotonic()
        doc = self.delta(version - 1, 10)
        elapsed = time.monotonic() - t0
        self.assertLess(elapsed, 1.0, "pending changes held for %.2fs" % elapsed)
        self.assertEqual(doc["version"], version)
        self.assertEqual([c["version"] for c in doc["changes"]][-1:], [version])

    def test_create_project_and_key_delta(self):
        since = current_version(self.control)
        project = self.project(key_policy="single", rate_limit={"requests_per_minute": 120, "burst": 7},
                               max_body_bytes=12345, upstream="http://127.0.0.1:9000/base")
        key = self.key(project)
        doc = self.delta(since)
        changes = doc["changes"]
        self.assertEqual([c.get("op") for c in changes], ["project.upsert", "key.upsert"], repr(changes))
        self.assertLess(changes[0]["version"], changes[1]["version"],
                        "two transactions share a version: %r" % (changes,))
        body = changes[0].get("project")
        self.assertIsInstance(body, dict, repr(changes[0]))
        for f in PROJECT_FIELDS:
            self.assertIn(f, body, repr(body))
        self.assertEqual(body["id"], project["id"])
        self.assertEqual(body["name"], project["name"])
        self.assertEqual(body["upstream_base_url"], "http://127.0.0.1:9000/base")
        self.assertEqual(body["upstream_url"], "http://127.0.0.1:9000/base")
        self.assertEqual(body["domains"], [])
        self.assertEqual(body["rate_limit"], {"requests_per_minute": 120, "burst": 7})
        self.assertEqual(body["key_policy"], "single")
        self.assertEqual(body["max_body_bytes"], 12345)
        self.assertKeyUpsert(changes[1], project, key)
        self.assertIsNone(changes[1]["key"].get("rate_limit"), repr(changes[1]))
        self.assertEqual(doc["version"], current_version(self.control))
        # from the project's version: only the key
        doc2 = self.delta(changes[0]["version"])
        self.assertEqual([c.get("op") for c in doc2["changes"]], ["key.upsert"])
        self.assertEqual(doc2["changes"][0]["key"]["id"], key["id"])

    def test_key_with_own_rate_limit_and_project_update(self):
        project = self.project()
        since = current_version(self.control)
        key = self.key(project, rate_limit={"requests_per_minute": 30, "burst": 2})
        resp = self.control.request("PATCH", "/projects/%s" % project["id"],
                                    {"rate_limit": {"burst": 9}, "max_body_bytes": 0},
                                    token=self.user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        changes = self.delta(since)["changes"]
        self.assertEqual([c.get("op") for c in changes], ["key.upsert", "project.upsert"], repr(changes))
        self.assertKeyUpsert(changes[0], project, key)
        self.assertEqual(changes[0]["key"].get("rate_limit"), {"requests_per_minute": 30, "burst": 2})
        body = changes[1]["project"]
        self.assertEqual(body["id"], project["id"])
        self.assertEqual(body["rate_limit"], {"requests_per_minute": project["rate_limit"]["requests_per_minute"],
                                              "burst": 9})
        self.assertEqual(body["max_body_bytes"], 0)

    def test_revoke_key_and_delete_project(self):
        project = self.project()
        k1, k2, k3 = self.key(project), self.key(project), self.key(project)
        since = current_version(self.control)
        self.revoke(project, k1)
        doc = self.delta(since)
        self.assertEqual(len(doc["changes"]), 1, repr(doc["changes"]))
        self.assertKeyDelete(doc["changes"][0], project, k1)

        since = doc["version"]
        resp = self.control.request("DELETE", "/projects/%s" % project["id"], token=self.user.token)
        self.assertEqual(resp.status, 204, repr(resp))
        changes = self.delta(since)["changes"]
        ops = [c.get("op") for c in changes]
        self.assertEqual(ops.count("project.delete"), 1, repr(changes))
        self.assertEqual(ops[-1], "project.delete", "project.delete must follow its keys' deletes: %r" % (changes,))
        self.assertEqual(changes[-1].get("project_id"), project["id"])
        self.assertEqual(set(ops[:-1]), {"key.delete"}, repr(changes))
        deleted = {c.get("key_id"): c for c in changes[:-1]}
        self.assertEqual(len(deleted), len(changes) - 1, "a key deleted twice: %r" % (changes,))
        # every live key gets a key.delete (the already revoked one may or may not)
        self.assertLessEqual({k2["id"], k3["id"]}, set(deleted), repr(changes))
        self.assertLessEqual(set(deleted), {k1["id"], k2["id"], k3["id"]}, repr(changes))
        by_id = {k["id"]: k for k in (k1, k2, k3)}
        for key_id, change in deleted.items():
            self.assertKeyDelete(change, project, by_id[key_id])
        self.assertIsNone(h.find_project(stream_get(self.control).json(), project["id"]))

    def test_rotation_single_policy(self):
        # grace period: the old key is re-sent with its expiry, in the same version as the new key
        project = self.project(key_policy="single")
        old = self.key(project)
        since = current_version(self.control)
        new = self.key(project, grace_period_seconds=120)
        self.assertEqual([r["id"] for r in new["rotated"]], [old["id"]], repr(new))
        expires = new["rotated"][0]["expires_at"]
        self.assertIsNotNone(expires)
        changes = self.delta(since)["changes"]
        self.assertEqual(len(changes), 2, repr(changes))
        self.assertEqual(changes[0]["version"], changes[1]["version"],
                         "rotation split over two versions: %r" % (changes,))
        by_key = {c.get("key", {}).get("id"): c for c in changes}
        self.assertEqual(set(by_key), {old["id"], new["id"]}, repr(changes))
        self.assertKeyUpsert(by_key[new["id"]], project, new, expires=None)
        self.assertKeyUpsert(by_key[old["id"]], project, old, expires=expires)
        self.assertAlmostEqual(h.parse_time(expires), time.time() + 120, delta=10)

        # no grace period: the old key is deleted, in the same version as the new key
        project = self.project(key_policy="single")
        old = self.key(project)
        since = current_version(self.control)
        new = self.key(project)
        changes = self.delta(since)["changes"]
        self.assertEqual(sorted(c.get("op") for c in changes), ["key.delete", "key.upsert"], repr(changes))
        self.assertEqual(changes[0]["version"], changes[1]["version"],
                         "rotation split over two versions: %r" % (changes,))
        upsert = [c for c in changes if c["op"] == "key.upsert"][0]
        delete = [c for c in changes if c["op"] == "key.delete"][0]
        self.assertKeyUpsert(upsert, project, new)
        self.assertKeyDelete(delete, project, old)

    def test_long_poll_wakes_on_revocation(self):
        project = self.project()
        key = self.key(project)
        since = current_version(self.control)
        poll = LongPoll(self.control, since, 10)
        poll.start()
        time.sleep(0.5)
        self.assertTrue(poll.is_alive(), "since=current&wait=10 returned at once: %r %r"
                        % (poll.resp, poll.error))
        sent_at = time.monotonic()
        self.revoke(project, key)
        poll.join(15)
        self.assertFalse(poll.is_alive(), "long poll never returned")
        self.assertIsNone(poll.error, repr(poll.error))
        latency = poll.finished_at - sent_at
        report("%s: long poll returned %.1f ms after the DELETE was sent", self.DB, latency * 1000)
        self.assertLess(latency, 1.0, "long poll woke %.2fs after the change" % latency)
        self.assertLess(poll.finished_at - poll.started_at, 5.0)
        doc = self.assertDelta(poll.resp, since)
        self.assertEqual(len(doc["changes"]), 1, repr(doc))
        self.assertKeyDelete(doc["changes"][0], project, key)

    def test_long_poll_times_out_empty(self):
        since = current_version(self.control)
        t0 = time.monotonic()
        doc = self.delta(since, 1)
        elapsed = time.monotonic() - t0
        report("%s: wait=1 with no change returned after %.2fs", self.DB, elapsed)
        self.assertGreaterEqual(elapsed, 0.8, "wait=1 returned after %.2fs" % elapsed)
        self.assertLess(elapsed, 3.0, "wait=1 returned after %.2fs" % elapsed)
        self.assertEqual(doc["changes"], [])
        self.assertEqual(doc["version"], since)

    def test_since_ahead_of_current_gets_full_document(self):
        project = self.project()
        self.key(project)
        version = current_version(self.control)
        for wait in (0, 5):
            t0 = time.monotonic()
            resp = stream_get(self.control, version + 1000, wait)
            elapsed = time.monotonic() - t0
            self.assertEqual(resp.status, 200, repr(resp))
            doc = resp.json()
            self.assertIs(doc.get("full"), True, repr(resp))
            self.assertEqual(doc.get("version"), version)
            self.assertIsInstance(doc.get("projects"), list)
            self.assertIsNotNone(h.find_project(doc, project["id"]))
            self.assertLess(elapsed, 2.0, "since ahead held for %.2fs (wait=%d)" % (elapsed, wait))

    def test_since_zero_is_valid(self):
        self.key(self.project())
        version = current_version(self.control)
        resp = stream_get(self.control, 0, 0)
        self.assertEqual(resp.status, 200, repr(resp))
        doc = resp.json()
        self.assertEqual(doc.get("version"), version)
        if doc.get("full") is not True:
            doc = self.assertDelta(resp, 0)
            self.assertTrue(doc["changes"])
        for wait in (0, 60):  # both ends of the range (changes pending: answered at once)
            resp = stream_get(self.control, version - 1, wait, timeout=10)
            self.assertEqual(resp.status, 200, "wait=%d: %r" % (wait, resp))

    def test_invalid_parameters(self):
        version = current_version(self.control)
        for since in ("abc", "-1", "1.5", "1e3"):
            resp = stream_get(self.control, since, 0)
            self.assertEqual(resp.status, 422, "since=%s: %r" % (since, resp))
            self.assertIsInstance(resp.json().get("detail"), str, repr(resp))
        for wait in ("61", "x", "-1"):
            resp = stream_get(self.control, version, wait)
            self.assertEqual(resp.status, 422, "wait=%s: %r" % (wait, resp))
            self.assertIsInstance(resp.json().get("detail"), str, repr(resp))

    def test_secret_required(self):
        version = current_version(self.control)
        for secret in (False, "wrong-" + h.random_string(40)):
            t0 = time.monotonic()
            resp = stream_get(self.control, version, 5, secret=secret)
            self.assertEqual(resp.status, 401, repr(resp))
            self.assertLess(time.monotonic() - t0, 2.0, "an unauthorised long poll was held")
            self.assertNotIn("changes", resp.text)
            resp = stream_get(self.control, 0, 0, secret=secret)
            self.assertEqual(resp.status, 401, repr(resp))


class ConfigStreamApiPostgresTest(ConfigStreamApiTest):
    """The same on PostgreSQL, plus two control-plane processes sharing one database."""

    DB = "postgres"

    @classmethod
    def setUpClass(cls):
        h.pg_required()
        super().setUpClass()

    def test_notification_reaches_other_process(self):
        a = self.control
        b = h.start_control("postgres", db_url=a.db_url,
                            env_extra={"JWT_SECRET_KEY": a.jwt_secret, "WORKER_SECRET_KEY": a.worker_secret})
        try:
            project = self.project()
            key = self.key(project)
            since = current_version(a)
            self.assertEqual(current_version(b), since, "the two processes disagree on the version")
            poll = LongPoll(b, since, 10)
            poll.start()
            time.sleep(0.5)
            self.assertTrue(poll.is_alive(), "long poll on B returned at once: %r" % (poll.resp,))
            sent_at = time.monotonic()
            self.revoke(project, key, server=a)
            poll.join(15)
            self.assertFalse(poll.is_alive(), "long poll on B never returned")
            self.assertIsNone(poll.error, repr(poll.error))
            latency = poll.finished_at - sent_at
            report("postgres: long poll on process B returned %.1f ms after a DELETE sent to A",
                   latency * 1000)
            self.assertLess(latency, 1.0, "B woke %.2fs after the change committed through A" % latency)
            doc = self.assertDelta(poll.resp, since)
            self.assertEqual(len(doc["changes"]), 1, repr(doc))
            self.assertKeyDelete(doc["changes"][0], project, key)
            self.assertEqual(current_version(b), doc["version"])
        finally:
            b.stop(drop_database=False)


# =============================================================================================
# The worker's side


class StreamWorkerTestCase(unittest.TestCase):
    """Helpers: a recording upstream, control planes and workers with snapshot files."""

    @classmethod
    def setUpClass(cls):
        cls.upstream = wh.Upstream()
        cls.tmp = tempfile.mkdtemp(prefix="ag-stream-")

    @classmethod
    def tearDownClass(cls):
        cls.upstream.stop()
        if os.environ.get("AG_TEST_KEEP") != "1":
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def snapshot_path(self):
        return os.path.join(self.tmp, "snap-%s.json" % uuid.uuid4().hex[:10])

    def start_worker(self, control_url, secret, snapshot, env_extra=None):
        env = dict(STREAM_WORKER_ENV, WORKER_SNAPSHOT_MAX_AGE_SEC=None)
        if snapshot is not None:
            env["WORKER_SNAPSHOT_PATH"] = snapshot
        env.update(env_extra or {})
        w = wh.start_worker(control_url=control_url, secret=secret, env_extra=env)
        self.addCleanup(w.stop)
        return w

    def start_control(self):
        ctl = h.start_control("sqlite")
        self.addCleanup(ctl.stop)
        return ctl

    def new_project(self, ctl, token, **fields):
        fields.setdefault("key_policy", "multiple")
        fields.setdefault("rate_limit", NO_LIMIT)
        return h.create_project(ctl, token, upstream=self.upstream.url + "/api", **fields)

    def revoke(self, ctl, token, project, key):
        resp = ctl.request("DELETE", "/projects/%s/keys/%s" % (project["id"], key["id"]), token=token)
        self.assertEqual(resp.status, 204, repr(resp))

    def assertReady(self, worker, version=None, timeout=5.0):
        resp = worker.wait_ready(timeout)
        self.assertEqual(resp.status if resp else None, 200,
                         "worker not ready: %r\n%s" % (resp, worker.stderr[-3000:]))
        if version is not None:
            v, _, ok = poll_until(lambda: ready_version(worker), lambda v: v == version, timeout, 0.05)
            self.assertTrue(ok, "worker at version %r, expected %r\n%s" % (v, version, worker.stderr[-3000:]))

    def assertKeyStatus(self, worker, api_key, status, timeout, what):
        got, elapsed, ok = poll_until(lambda: key_status(worker, api_key), lambda s: s == status, timeout)
        self.assertTrue(ok, "%s: status %r after %.2fs, expected %d\n%s"
                        % (what, got, elapsed, status, worker.stderr[-3000:]))
        return elapsed

    def assertProxied(self, worker, api_key):
        m = "m-" + uuid.uuid4().hex[:12]
        resp = worker.request("GET", "/p?" + m, key=api_key, timeout=5)
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertEqual(resp.headers.get("X-Upstream"), "yes", repr(resp))
        self.assertEqual(len(self.upstream.matching(m)), 1)


class PropagationTest(StreamWorkerTestCase):
    """Two workers following one control plane."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.control = h.start_control("sqlite")
        cls.user = h.register_user(cls.control)

    @classmethod
    def tearDownClass(cls):
        cls.control.stop()
        super().tearDownClass()

    def two_workers(self):
        ws = [self.start_worker(self.control.base_url, self.control.worker_secret, self.snapshot_path())
              for _ in range(2)]
        return ws

    def in_sync(self, workers):
        version = current_version(self.control)
        for w in workers:
            self.assertReady(w, version)
        time.sleep(0.2)  # both are back in their long poll

    def measure(self, workers, api_key, status, timeout):
        """From now, polls every worker (one thread each, every 10 ms) until `status`."""
        t0 = time.monotonic()
        results = [None] * len(workers)

        def run(i, w):
            while True:
                s = key_status(w, api_key, timeout=2)
                now = time.monotonic()
                if s == status:
                    results[i] = now - t0
                    return
                if now - t0 > timeout:
                    return
                time.sleep(0.01)

        threads = [threading.Thread(target=run, args=(i, w), daemon=True) for i, w in enumerate(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 10)
        return results

    def test_revocation_reaches_both_workers(self):
        ctl, token = self.control, self.user.token
        project = self.new_project(ctl, token)
        key, other = h.create_key(ctl, token, project["id"]), h.create_key(ctl, token, project["id"])
        workers = self.two_workers()
        self.in_sync(workers)
        for w in workers:
            self.assertProxied(w, key["api_key"])
        self.revoke(ctl, token, project, key)
        results = self.measure(workers, key["api_key"], 401, 5.0)
        report("revocation -> first 401: worker 1 %s, worker 2 %s",
               *["%.1f ms" % (r * 1000) if r is not None else "never" for r in results])
        for i, r in enumerate(results):
            self.assertIsNotNone(r, "worker %d still accepts the revoked key after 5 s" % (i + 1))
            self.assertLess(r, 1.0, "worker %d took %.3fs to refuse the revoked key" % (i + 1, r))
        for w in workers:
            self.assertProxied(w, other["api_key"])
            self.assertEqual(key_status(w, key["api_key"]), 401)

    def test_new_key_and_project_changes_reach_running_worker(self):
        ctl, token = self.control, self.user.token
        project = self.new_project(ctl, token)
        first = h.create_key(ctl, token, project["id"])
        workers = self.two_workers()
        self.in_sync(workers)
        key = h.create_key(ctl, token, project["id"])
        results = self.measure(workers, key["api_key"], 200, 5.0)
        report("new key -> first 200: worker 1 %s, worker 2 %s",
               *["%.1f ms" % (r * 1000) if r is not None else "never" for r in results])
        for i, r in enumerate(results):
            self.assertIsNotNone(r, "worker %d never accepted the new key" % (i + 1))
            self.assertLess(r, 1.0, "worker %d took %.3fs to accept the new key" % (i + 1, r))

        # a project change (new upstream path) is applied too
        self.in_sync(workers)
        resp = ctl.request("PATCH", "/projects/%s" % project["id"],
                           {"upstream_base_url": self.upstream.url + "/v2"}, token=token)
        self.assertEqual(resp.status, 200, repr(resp))
        t0 = time.monotonic()
        for w in workers:
            def moved():
                m = "u-" + uuid.uuid4().hex[:12]
                if w.request("GET", "/q?" + m, key=first["api_key"], timeout=2).status != 200:
                    return False
                rec = self.upstream.matching(m)
                return bool(rec) and rec[0]["path"] == "/v2/q?" + m
            _, _, ok = poll_until(moved, bool, 1.0 - (time.monotonic() - t0))
            self.assertTrue(ok, "project.upsert (new upstream) not applied within 1 s")

        # a deleted project's keys stop working
        self.in_sync(workers)
        resp = ctl.request("DELETE", "/projects/%s" % project["id"], token=token)
        self.assertEqual(resp.status, 204, repr(resp))
        results = self.measure(workers, key["api_key"], 401, 5.0)
        for i, r in enumerate(results):
            self.assertIsNotNone(r, "worker %d still accepts a deleted project's key" % (i + 1))
            self.assertLess(r, 1.0, "worker %d took %.3fs to drop a deleted project" % (i + 1, r))
        for w in workers:
            self.assertEqual(key_status(w, first["api_key"]), 401)

    def test_rotation_grace_reaches_worker(self):
        ctl, token = self.control, self.user.token
        project = self.new_project(ctl, token, key_policy="single")
        old = h.create_key(ctl, token, project["id"])
        workers = self.two_workers()
        self.in_sync(workers)
        new = h.create_key(ctl, token, project["id"], grace_period_seconds=3)
        expires = h.parse_time(new["rotated"][0]["expires_at"])
        for w in workers:
            self.assertKeyStatus(w, new["api_key"], 200, 1.0, "rotated-in key")
        self.assertLess(time.time(), expires - 1, "too slow to check the grace period")
        for w in workers:
            self.assertEqual(key_status(w, old["api_key"]), 200, "old key refused inside its grace period")
        time.sleep(max(0.0, expires + 1.0 - time.time()))
        for w in workers:
            self.assertEqual(key_status(w, old["api_key"]), 401, "old key accepted after its expires_at")
            self.assertEqual(key_status(w, new["api_key"]), 200)


class SnapshotTest(StreamWorkerTestCase):
    """WORKER_SNAPSHOT_PATH: saved, served when the control plane is down, aged out, repaired."""

    def setup_control(self):
        """A control plane with a project, a valid key and a revoked key."""
        ctl = self.start_control()
        user = h.register_user(ctl)
        project = self.new_project(ctl, user.token)
        valid = h.create_key(ctl, user.token, project["id"])
        revoked = h.create_key(ctl, user.token, project["id"])
        self.revoke(ctl, user.token, project, revoked)
        return ctl, user, project, valid, revoked

    def save_snapshot(self, ctl, valid, revoked, path):
        """Runs a worker until its snapshot holds the config, stops it; returns the version."""
        version = current_version(ctl)
        w = self.start_worker(ctl.base_url, ctl.worker_secret, path)
        self.assertReady(w, version)
        self.assertProxied(w, valid["api_key"])
        doc, text = wait_snapshot(path, [key_hash(valid["api_key"])], timeout=10)
        self.assertIsNotNone(doc, "snapshot %s never held the valid key's hash; content: %r\n%s"
                             % (path, (text or "")[:500], w.stderr[-2000:]))
        self.assertNotIn(key_hash(revoked["api_key"]), text, "a revoked key is in the snapshot")
        self.assertNotIn(valid["api_key"], text, "a raw key is in the snapshot")
        self.assertEqual(w.stop(), 0)
        return version

    def kill(self, ctl):
        ctl.proc.kill()
        ctl.proc.wait(5)

    def test_snapshot_served_when_control_plane_is_dead(self):
        ctl, user, project, valid, revoked = self.setup_control()
        path = self.snapshot_path()
        version = self.save_snapshot(ctl, valid, revoked, path)
        self.kill(ctl)
        w = self.start_worker(ctl.base_url, ctl.worker_secret, path)
        self.assertReady(w, version, timeout=3.0)
        self.assertProxied(w, valid["api_key"])
        self.assertEqual(key_status(w, revoked["api_key"]), 401)
        self.assertEqual(key_status(w, wh.make_key()[0]), 401)
        time.sleep(1.0)  # still serving while the control plane stays down
        self.assertProxied(w, valid["api_key"])
        self.assertEqual(w.admin("/ready").status, 200)

    def test_snapshot_older_than_max_age_is_refused(self):
        ctl, user, project, valid, revoked = self.setup_control()
        path = self.snapshot_path()
        self.save_snapshot(ctl, valid, revoked, path)
        self.kill(ctl)
        time.sleep(2.0)
        self.assertLess(os.path.getmtime(path), time.time() - 1.5, "snapshot was rewritten")
        w = self.start_worker(ctl.base_url, ctl.worker_secret, path,
                              env_extra={"WORKER_SNAPSHOT_MAX_AGE_SEC": "1"})
        for _ in range(2):
            time.sleep(0.5)
            resp = w.request("GET", "/old", key=valid["api_key"], timeout=5)
            self.assertEqual(resp.status, 503, "served from a snapshot older than the maximum age: %r" % (resp,))
            self.assertEqual(len(self.upstream.matching("/old")), 0)
            self.assertEqual(w.admin("/ready").status, 503)
        self.assertTrue(w.alive())

    def test_fails_closed_when_control_plane_stays_down_past_max_age(self):
        ctl, user, project, valid, revoked = self.setup_control()
        path = self.snapshot_path()
        self.save_snapshot(ctl, valid, revoked, path)
        saved_at = os.path.getmtime(path)
        self.kill(ctl)
        max_age = 5
        w = self.start_worker(ctl.base_url, ctl.worker_secret, path,
                              env_extra={"WORKER_SNAPSHOT_MAX_AGE_SEC": str(max_age)})
        self.assertLess(time.time(), saved_at + max_age - 1.5, "setup too slow")
        self.assertReady(w, timeout=2.0)
        self.assertProxied(w, valid["api_key"])
        # The contract gives no precision; allow for a retry interval (backoff) of a few seconds.
        deadline = saved_at + max_age + 10.0
        status, _, ok = poll_until(lambda: key_status(w, valid["api_key"]), lambda s: s == 503,
                                   max(0.0, deadline - time.time()), 0.05)
        report("fail closed %.2fs after the snapshot was saved (maximum age %ds)",
               time.time() - saved_at, max_age)
        self.assertTrue(ok, "still serving (%r) %.1fs after the snapshot was saved with max age %ds"
                        % (status, time.time() - saved_at, max_age))
        self.assertEqual(w.admin("/ready").status, 503)
        self.assertTrue(w.alive())

    def test_far_behind_worker_catches_up(self):
        ctl, user, project, valid, revoked = self.setup_control()
        path = self.snapshot_path()
        old_version = self.save_snapshot(ctl, valid, revoked, path)
        # changes while no worker runs
        added = h.create_key(ctl, user.token, project["id"])
        self.revoke(ctl, user.token, project, valid)
        other = self.new_project(ctl, user.token)
        other_key = h.create_key(ctl, user.token, other["id"])
        for _ in range(5):
            resp = ctl.request("PATCH", "/projects/%s" % project["id"], {"max_body_bytes": 1000},
                               token=user.token)
            self.assertEqual(resp.status, 200, repr(resp))
        version = current_version(ctl)
        self.assertGreater(version, old_version)
        w = self.start_worker(ctl.base_url, ctl.worker_secret, path)
        self.assertReady(w, version)
        self.assertProxied(w, added["api_key"])
        self.assertProxied(w, other_key["api_key"])
        self.assertEqual(key_status(w, valid["api_key"]), 401, "key revoked while the worker was down")
        doc, text = wait_snapshot(path, [key_hash(added["api_key"]), key_hash(other_key["api_key"])],
                                  timeout=10, absent=[key_hash(valid["api_key"])])
        self.assertIsNotNone(doc, "snapshot not updated after catching up: %r" % ((text or "")[:500],))
        # and it keeps following
        later = h.create_key(ctl, user.token, other["id"])
        self.assertKeyStatus(w, later["api_key"], 200, 1.0, "key created after catching up")

    def test_far_behind_after_compaction_resyncs_with_a_full_document(self):
        """The changes after the worker's version are gone from the log (compacted): the control
        plane answers with the full document and the worker takes it."""
        ctl, user, project, valid, revoked = self.setup_control()
        if not ctl.db_path:
            self.skipTest("compaction is simulated on the SQLite file")
        path = self.snapshot_path()
        old_version = self.save_snapshot(ctl, valid, revoked, path)
        added = h.create_key(ctl, user.token, project["id"])
        self.revoke(ctl, user.token, project, valid)
        version = current_version(ctl)
        # What compaction does to a log: the oldest changes are deleted.
        import sqlite3
        con = sqlite3.connect(ctl.db_path, timeout=10)
        con.execute("DELETE FROM config_changes WHERE version <= ?", (old_version + 1,))
        con.commit()
        con.close()
        resp = ctl.request("GET", "/internal/worker/config?since=%d" % old_version,
                           headers={"x-worker-secret": ctl.worker_secret})
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertIs(resp.json()["full"], True, "a compacted log must answer with the full document")
        w = self.start_worker(ctl.base_url, ctl.worker_secret, path)
        self.assertReady(w, version)
        self.assertProxied(w, added["api_key"])
        self.assertEqual(key_status(w, valid["api_key"]), 401, "key revoked while the worker was down")
        self.assertTrue(any("(full," in line for line in w.stderr.splitlines()),
                        "the worker should have loaded a full document:\n" + w.stderr)

    def test_snapshot_ahead_of_a_restored_database(self):
        """The saved version is ahead of the control plane's (a restored database): the worker
        takes the full document it gets and drops what the snapshot had."""
        ctl, user, project, valid, revoked = self.setup_control()
        for _ in range(5):
            resp = ctl.request("PATCH", "/projects/%s" % project["id"], {"max_body_bytes": 1000},
                               token=user.token)
            self.assertEqual(resp.status, 200, repr(resp))
        path = self.snapshot_path()
        old_version = self.save_snapshot(ctl, valid, revoked, path)
        self.kill(ctl)
        restored = self.start_control()
        user2 = h.register_user(restored)
        project2 = self.new_project(restored, user2.token)
        key2 = h.create_key(restored, user2.token, project2["id"])
        version = current_version(restored)
        self.assertLess(version, old_version, "test setup: the new database must be behind")
        w = self.start_worker(restored.base_url, restored.worker_secret, path)
        self.assertReady(w, version)
        self.assertProxied(w, key2["api_key"])
        self.assertKeyStatus(w, valid["api_key"], 401, 1.0, "key known only to the snapshot")
        later = h.create_key(restored, user2.token, project2["id"])
        self.assertKeyStatus(w, later["api_key"], 200, 1.0, "key created after the full document")

    def test_snapshot_keeps_expiry_and_key_limits(self):
        """A key in its rotation grace period and a key with its own rate limit, served from the
        snapshot with the control plane down: the expiry and the limit still apply."""
        ctl = self.start_control()
        user = h.register_user(ctl)
        project = self.new_project(ctl, user.token, key_policy="single")
        old = h.create_key(ctl, user.token, project["id"])
        new = h.create_key(ctl, user.token, project["id"], grace_period_seconds=5,
                           rate_limit={"requests_per_minute": 60, "burst": 0})
        expires = h.parse_time(new["rotated"][0]["expires_at"])
        path = self.snapshot_path()
        w = self.start_worker(ctl.base_url, ctl.worker_secret, path)
        self.assertReady(w, current_version(ctl))
        doc, text = wait_snapshot(path, [key_hash(old["api_key"]), key_hash(new["api_key"])], timeout=10)
        self.assertIsNotNone(doc, "snapshot never held both keys: %r" % ((text or "")[:500],))
        self.assertEqual(w.stop(), 0)
        self.kill(ctl)
        w = self.start_worker(ctl.base_url, ctl.worker_secret, path)
        self.assertReady(w, timeout=3.0)
        self.assertLess(time.time(), expires - 1, "too slow to check the grace period")
        self.assertProxied(w, old["api_key"])
        self.assertProxied(w, new["api_key"])
        self.assertEqual(key_status(w, new["api_key"]), 429, "the key's own limit (burst 0) was lost")
        time.sleep(max(0.0, expires + 1.0 - time.time()))
        self.assertEqual(key_status(w, old["api_key"]), 401, "expired key accepted from the snapshot")

    def test_snapshot_follows_changes(self):
        """Changes that arrive in quick succession are all saved (the interval delays a save, it
        does not drop it): a worker killed afterwards and restarted from the file with the control
        plane down does not accept a key revoked before it died."""
        ctl, user, project, valid, revoked = self.setup_control()
        path = self.snapshot_path()
        w = self.start_worker(ctl.base_url, ctl.worker_secret, path)
        self.assertReady(w, current_version(ctl))
        doc, _ = wait_snapshot(path, [key_hash(valid["api_key"])], timeout=10)
        self.assertIsNotNone(doc)
        time.sleep(1.2)  # past the save interval
        added = h.create_key(ctl, user.token, project["id"])
        time.sleep(0.2)
        self.revoke(ctl, user.token, project, valid)
        self.assertKeyStatus(w, valid["api_key"], 401, 1.0, "revoked key")
        interval = int(STREAM_WORKER_ENV["WORKER_SNAPSHOT_INTERVAL_SEC"])
        doc, text = wait_snapshot(path, [key_hash(added["api_key"])], timeout=interval + 4,
                                  absent=[key_hash(valid["api_key"])])
        self.assertIsNotNone(doc, "snapshot still not up to date %ds after the last change (interval %ds)"
                             % (interval + 4, interval))
        w.signal(signal.SIGKILL)
        w.wait_exit(5)
        self.kill(ctl)
        w2 = self.start_worker(ctl.base_url, ctl.worker_secret, path)
        self.assertReady(w2, timeout=3.0)
        self.assertProxied(w2, added["api_key"])
        self.assertEqual(key_status(w2, valid["api_key"]), 401, "key revoked before the crash accepted again")

    def test_corrupt_snapshot_is_ignored(self):
        ctl, user, project, valid, revoked = self.setup_control()
        path = self.snapshot_path()
        with open(path, "wb") as f:
            f.write(b"\x00\xffnot json {" + os.urandom(2048))
        version = current_version(ctl)
        w = self.start_worker(ctl.base_url, ctl.worker_secret, path)
        self.assertTrue(w.alive())
        self.assertIsNotNone(w.wait_for_stderr(WARN_SNAPSHOT_RE, timeout=5),
                             "no warning/error about the corrupt snapshot:\n" + w.stderr[-3000:])
        self.assertReady(w, version)
        self.assertProxied(w, valid["api_key"])
        self.assertEqual(key_status(w, revoked["api_key"]), 401)
        doc, text = wait_snapshot(path, [key_hash(valid["api_key"])], timeout=10)
        self.assertIsNotNone(doc, "the corrupt snapshot was never replaced")

    def test_snapshot_default_path_and_off(self):
        ctl, user, project, valid, revoked = self.setup_control()
        version = current_version(ctl)
        default = self.start_worker(ctl.base_url, ctl.worker_secret, None,
                                    env_extra={"WORKER_SNAPSHOT_PATH": None})
        off = self.start_worker(ctl.base_url, ctl.worker_secret, "off")
        for w in (default, off):
            self.assertReady(w, version)
            self.assertProxied(w, valid["api_key"])
        path = os.path.join(default.workdir, "worker-snapshot.json")
        doc, _ = wait_snapshot(path, [key_hash(valid["api_key"])], timeout=10)
        self.assertIsNotNone(doc, "no worker-snapshot.json in the working directory")
        time.sleep(1.5)
        self.assertEqual(os.listdir(off.workdir), [], "WORKER_SNAPSHOT_PATH=off wrote files")


class ControlPlaneRestartTest(StreamWorkerTestCase):
    """The control plane restarts (same SQLite file, same port) while a worker long-polls."""

    def test_restart_under_traffic(self):
        workdir = tempfile.mkdtemp(prefix="ag-restart-")
        self.addCleanup(shutil.rmtree, workdir, True)
        db_url = "sqlite:///" + os.path.join(workdir, "ag.db")
        port = wh.free_port()
        ctl = start_control_at(port, workdir, db_url)
        self.addCleanup(ctl.stop, False)
        secrets_env = {"JWT_SECRET_KEY": ctl.jwt_secret, "WORKER_SECRET_KEY": ctl.worker_secret}
        user = h.register_user(ctl)
        project = self.new_project(ctl, user.token)
        steady = h.create_key(ctl, user.token, project["id"])
        doomed = h.create_key(ctl, user.token, project["id"])
        w = self.start_worker(ctl.base_url, ctl.worker_secret, self.snapshot_path())
        self.assertReady(w, current_version(ctl))
        self.assertProxied(w, doomed["api_key"])

        statuses = []
        stop = threading.Event()

        def traffic():
            while not stop.is_set():
                statuses.append(key_status(w, steady["api_key"], "/steady", timeout=5))
                time.sleep(0.02)

        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        try:
            time.sleep(0.5)
            t_kill = time.monotonic()
            ctl.proc.send_signal(signal.SIGTERM)
            try:
                ctl.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.fail("control plane still running 15 s after SIGTERM (held long polls?)")
            report("control plane exited %.0f ms after SIGTERM with a worker long-polling",
                   (time.monotonic() - t_kill) * 1000)
            ctl.stop(drop_database=False)
            time.sleep(0.3)
            ctl2 = None
            deadline = time.monotonic() + 10
            while ctl2 is None:
                try:
                    ctl2 = start_control_at(port, workdir, db_url, env_extra=secrets_env, timeout=5)
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            self.addCleanup(ctl2.stop, False)
            report("control plane back on the same port %.0f ms after SIGTERM",
                   (time.monotonic() - t_kill) * 1000)
            self.revoke(ctl2, user.token, project, doomed)
            r = self.measure_one(w, doomed["api_key"], 401, 5.0)
            report("revocation through the restarted control plane -> first 401: %s",
                   "%.1f ms" % (r * 1000) if r is not None else "never")
            self.assertIsNotNone(r, "revocation after the restart never reached the worker")
            self.assertLess(r, 2.0, "revocation after the restart took %.2fs" % r)
            added = h.create_key(ctl2, user.token, project["id"])
            self.assertKeyStatus(w, added["api_key"], 200, 1.0, "key created after the restart")
            time.sleep(0.3)
        finally:
            stop.set()
            t.join(10)
        bad = [s for s in statuses if s != 200]
        report("%d requests with a valid key during the restart, %d not 200", len(statuses), len(bad))
        self.assertGreater(len(statuses), 20)
        self.assertEqual(bad, [], "valid key got non-200 answers during the restart")

    def measure_one(self, worker, api_key, status, timeout):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if key_status(worker, api_key, timeout=2) == status:
                return time.monotonic() - t0
            time.sleep(0.01)
        return None


# =============================================================================================
# Deltas the worker must drop (a scripted control plane)


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        status, body = self.server.script.answer(parts.path, query, self.headers)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the worker went away (stopped while long-polling)
            self.close_connection = True


class ScriptedControlPlane:
    """Answers GET /internal/worker/config: the current full document without `since`; for a
    `since` with a scripted answer, that answer (once; it may also switch the full document);
    otherwise an empty delta after a short hold."""

    def __init__(self, secret):
        self.secret = secret
        self.lock = threading.Lock()
        self.requests = []  # `since` of each request (None = full)
        self.waits = []  # `wait` of each request with a `since`
        self.full = None
        self.scripted = {}
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedHandler)
        self.server.daemon_threads = True
        self.server.script = self
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def answer(self, path, query, headers):
        if path != CONFIG_PATH:
            return 404, b'{"detail":"Not Found"}'
        if headers.get("x-worker-secret") != self.secret:
            return 401, b'{"detail":"Invalid worker secret"}'
        since = query.get("since")
        with self.lock:
            self.requests.append(None if since is None else int(since))
            if since is not None:
                self.waits.append(query.get("wait"))
            if since is None:
                return 200, json.dumps(self.full, separators=(",", ":")).encode()
            step = self.scripted.pop(int(since), None)
            if step is not None:
                body, next_full = step
                if next_full is not None:
                    self.full = next_full
                return 200, body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        time.sleep(min(float(query.get("wait", 0) or 0), 0.3))
        return 200, json.dumps({"schema": 1, "full": False, "since": int(since), "version": int(since),
                                "generated_at": wh.rfc3339(time.time()), "changes": []}).encode()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class DeltaValidationTest(StreamWorkerTestCase):
    """The worker against a scripted control plane: deltas it must apply, deltas it must drop,
    and full documents sent in answer to a `since` request."""

    def setUp(self):
        self.secret = h.random_string(48)
        self.fake = ScriptedControlPlane(self.secret)
        self.addCleanup(self.fake.stop)
        self.keys = {n: wh.make_key() for n in "ABCDEXY"}  # name -> (key, hash)
        self.pid = str(uuid.uuid4())
        self.entries = {n: wh.key_entry(k, kh) for n, (k, kh) in self.keys.items()}

    def full(self, version, names):
        p = wh.project_entry(self.upstream.url + "/api", [self.entries[n] for n in names],
                             requests_per_minute=1000000, burst=100000, project_id=self.pid, name="scripted")
        doc = wh.config_document([p], version)
        doc["full"] = True
        return doc

    def key_change(self, version, name, bad_hash=False):
        e = {k: v for k, v in self.entries[name].items() if k != "key"}
        if bad_hash:
            e["hash"] = "not-a-sha256"
        return {"version": version, "op": "key.upsert", "project_id": self.pid, "key": e}

    @staticmethod
    def delta(since, version, changes, claimed_since=None):
        return {"schema": 1, "full": False, "since": since if claimed_since is None else claimed_since,
                "version": version, "generated_at": wh.rfc3339(time.time()), "changes": changes}

    def sequence(self):
        with self.fake.lock:
            return list(self.fake.requests), list(self.fake.waits)

    def assertNextRequest(self, seq, after, expected, why, worker):
        self.assertIn(after, seq, "no request with since=%r; sequence %r" % (after, seq))
        i = seq.index(after)
        got = seq[i + 1] if i + 1 < len(seq) else "nothing"
        self.assertEqual(got, expected, "%s: after since=%r the worker asked since=%r, expected %r; "
                         "sequence %r; worker log:\n%s" % (why, after, got, expected, seq, worker.stderr[-2000:]))

    def test_bad_deltas_are_dropped_and_full_document_fetched(self):
        fake = self.fake
        fake.full = self.full(10, "A")
        fake.scripted = {
            # a valid delta: B added
            10: (self.delta(10, 11, [self.key_change(11, "B")]), None),
            # `since` is not the worker's version: dropped, then a full document (with C)
            11: (self.delta(11, 12, [self.key_change(12, "X")], claimed_since=8), self.full(13, "ABC")),
            # not JSON: dropped, then a full document (with D)
            13: (b'{"schema":1,"full":false,"since":13,"version":14,"changes":[{"version":14,"op"',
                 self.full(15, "ABCD")),
            # fails validation (bad hash): dropped, then a full document (with E)
            15: (self.delta(15, 16, [self.key_change(16, "Y", bad_hash=True)]), self.full(17, "ABCDE")),
            # a valid delta: A deleted
            17: (self.delta(17, 18, [{"version": 18, "op": "key.delete", "project_id": self.pid,
                                      "key_id": self.entries["A"]["id"], "hash": self.keys["A"][1]}]), None),
        }
        w = self.start_worker(fake.url, self.secret, self.snapshot_path())
        self.assertReady(w, 18, timeout=10)
        for n in "BCDE":
            self.assertEqual(key_status(w, self.keys[n][0]), 200, "key %s" % n)
        for n in "AXY":
            self.assertEqual(key_status(w, self.keys[n][0]), 401, "key %s" % n)
        seq, waits = self.sequence()
        self.assertEqual(seq[0], None, "first request was not for the full document: %r" % (seq,))
        self.assertNextRequest(seq, 10, 11, "valid delta", w)
        self.assertNextRequest(seq, 11, None, "delta with the wrong since", w)
        self.assertNextRequest(seq, 13, None, "delta that is not JSON", w)
        self.assertNextRequest(seq, 15, None, "delta with an invalid key hash", w)
        self.assertNextRequest(seq, 17, 18, "valid delta", w)
        # wait=25 normally; shorter (>= 1 s) while a snapshot save is deferred by the save interval
        self.assertIn("25", waits, "long polls should ask wait=25: %r" % (waits,))
        self.assertTrue(all(1 <= int(w) <= 25 for w in waits), "wait out of range: %r" % (waits,))
        self.assertGreaterEqual(sum(1 for line in w.stderr.splitlines() if WARN_RE.search(line)), 3,
                                "dropped deltas not logged:\n" + w.stderr[-3000:])

    def test_full_document_answer_to_a_since_request(self):
        """Compacted log or restored database: a `since` request gets {"full": true, ...}; the
        worker replaces its config with it (whatever the JSON spacing) and follows from there."""
        fake = self.fake
        fake.full = self.full(10, "A")
        compact = json.dumps(self.full(30, "B"), separators=(",", ":")).encode()
        spaced = json.dumps(self.full(40, "C"), indent=1).encode()  # '"full": true' with a space
        # (should the worker ask for a full document instead, it gets the same version 40)
        fake.scripted = {10: (compact, None), 30: (spaced, self.full(40, "C"))}
        w = self.start_worker(fake.url, self.secret, self.snapshot_path())
        v, _, _ = poll_until(lambda: ready_version(w), lambda v: v == 40, 5.0, 0.05)
        # The request after since=30 is sent just after version 40 is in force: give it a moment.
        deadline = time.monotonic() + 5.0
        seq, _ = self.sequence()
        while 30 in seq and seq.index(30) + 1 >= len(seq) and time.monotonic() < deadline:
            time.sleep(0.02)
            seq, _ = self.sequence()
        self.assertNextRequest(seq, 10, 30, "compact full document", w)
        self.assertNextRequest(seq, 30, 40, "full document with spaces", w)
        self.assertEqual(v, 40)
        self.assertEqual(key_status(w, self.keys["C"][0]), 200)
        for n in "AB":
            self.assertEqual(key_status(w, self.keys[n][0]), 401, "key %s" % n)
        errors = [line for line in w.stderr.splitlines() if re.search(r"^\S+ error ", line)]
        self.assertEqual(errors, [], "a valid full document was rejected")


if __name__ == "__main__":
    unittest.main(verbosity=2)
