"""No secret at rest or in any log (README "Security", docs/api.md, docs/worker.md,
docs/services-and-tokens.md).

A full scenario with the real binaries: register, log in (JSON and form, plus a wrong password),
refresh (and a refresh-token reuse), log out, create a project, create / rotate (with and without
grace) / revoke API keys, set a slug and a service, issue and revoke service tokens (HS256, so
GATEWAY_JWT_SECRET is in use), worker traffic with keys and tokens (valid, revoked, mistyped),
a worker following the control plane with the worker secret (config stream and token-usage
reports), its snapshot saved to disk.

Then every raw secret used is searched for, in several encodings, in: the database (the SQLite
files including -wal/-shm/-journal, while running and after shutdown; or a pg_dump), every log
(control plane stdout/stderr, worker stdout/stderr, the access-log file), the worker's snapshot
file, and every other file the processes left in their directories. Zero hits required. Positive
controls (a key's SHA-256 is in the database and the snapshot, the access log names the key ids)
make sure the right places were searched.

Run: /usr/bin/python3 tests/integration/test_secret_hygiene.py                    (SQLite)
     AG_DB=postgres AG_TEST_PG_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
         /usr/bin/python3 tests/integration/test_secret_hygiene.py               (PostgreSQL)
"""

import base64
import hashlib
import json
import os
import shutil
import string
import sys
import tempfile
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
import harness as rh  # noqa: E402
from harness import report  # noqa: E402

PROPAGATION_SEC = 5.0


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def poll_status(fn, want, timeout=PROPAGATION_SEC):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        try:
            got = fn()
        except OSError:
            got = None
        if got == want:
            return got
        time.sleep(0.05)
    return got


class Secrets:
    """name -> raw secret, and the forms searched for each."""

    def __init__(self):
        self.items = []  # (name, kind, value)

    def add(self, name, kind, value):
        assert value and len(value) >= 16, (name, value)
        self.items.append((name, kind, value))

    def forms(self):
        """[(secret name, form name, bytes)]"""
        out = []
        for name, kind, value in self.items:
            raw = value.encode()
            out.append((name, "raw", raw))
            if kind == "api_key":
                out.append((name, "secret part", value[13:56].encode()))
            elif kind == "refresh":
                out.append((name, "secret part", value[4:].encode()))
            elif kind == "jwt":
                out.append((name, "signature", value.rsplit(".", 1)[1].encode()))
            elif kind == "env":
                out.append((name, "base64", base64.b64encode(raw).rstrip(b"=")))
                out.append((name, "base64url", base64.urlsafe_b64encode(raw).rstrip(b"=")))
                out.append((name, "hex", raw.hex().encode()))
                out.append((name, "HEX", raw.hex().upper().encode()))
            if kind in ("password",):
                q = urllib.parse.quote_plus(value).encode()
                if q != raw:
                    out.append((name, "form-encoded", q))
        return out


class SecretHygieneTest(unittest.TestCase):
    def test_no_secret_at_rest_or_in_logs(self):
        keep = os.environ.get("AG_TEST_KEEP") == "1"
        secrets_ = Secrets()
        gateway_secret = h.random_string(48)
        tmp = tempfile.mkdtemp(prefix="ag-hygiene-")
        if not keep:
            self.addCleanup(shutil.rmtree, tmp, True)
        upstream = rh.QuietUpstream()
        self.addCleanup(upstream.stop)
        ctl = h.start_control(h.AG_DB, env_extra={"GATEWAY_JWT_ALG": "HS256",
                                                   "GATEWAY_JWT_SECRET": gateway_secret})

        def cleanup_control():
            ctl.stop(drop_database=False)
            if keep:
                return
            if ctl.pg_dbname:
                h.drop_pg_database(ctl.pg_admin_url, ctl.pg_dbname)
            shutil.rmtree(ctl.workdir, ignore_errors=True)

        self.addCleanup(cleanup_control)
        secrets_.add("JWT_SECRET_KEY", "env", ctl.jwt_secret)
        secrets_.add("WORKER_SECRET_KEY", "env", ctl.worker_secret)
        secrets_.add("GATEWAY_JWT_SECRET", "env", gateway_secret)

        # -- accounts ---------------------------------------------------------------------------
        pw_a = "pw-" + h.random_string(24)
        pw_b = "pw+" + h.random_string(20) + "&=%"  # characters that change under form encoding
        wrong_pw = "wrong-" + h.random_string(24)
        user = h.register_user(ctl, password=pw_a)
        other = h.register_user(ctl, password=pw_b)
        secrets_.add("password A", "password", pw_a)
        secrets_.add("password B", "password", pw_b)
        secrets_.add("wrong password attempt", "password", wrong_pw)
        tokens = [user.tokens, other.tokens]
        tokens.append(h.login(ctl, user.email, pw_a))
        resp = ctl.request("POST", "/auth/login", raw_body=urllib.parse.urlencode(
            {"username": other.email, "password": pw_b}).encode(),
            content_type="application/x-www-form-urlencoded")
        self.assertEqual(resp.status, 200, repr(resp))
        tokens.append(resp.json())
        resp = ctl.request("POST", "/auth/login", {"email": user.email, "password": wrong_pw})
        self.assertEqual(resp.status, 401)
        resp = ctl.request("POST", "/auth/refresh", {"refresh_token": tokens[2]["refresh_token"]})
        self.assertEqual(resp.status, 200, repr(resp))
        tokens.append(resp.json())
        # a refresh-token reuse (revokes that session) on another session
        sess = h.login(ctl, user.email, pw_a)
        tokens.append(sess)
        resp = ctl.request("POST", "/auth/refresh", {"refreshToken": sess["refresh_token"]})
        self.assertEqual(resp.status, 200, repr(resp))
        tokens.append(resp.json())
        resp = ctl.request("POST", "/auth/refresh", {"refresh_token": sess["refresh_token"]})
        self.assertEqual(resp.status, 401, "refresh-token reuse: %r" % resp)
        # log out a session
        out = h.login(ctl, other.email, pw_b)
        tokens.append(out)
        self.assertEqual(ctl.request("POST", "/auth/logout", token=out["access_token"]).status, 204)
        self.assertEqual(ctl.request("GET", "/auth/session", token=out["access_token"]).status, 401)
        token = tokens[4]["access_token"]  # the refreshed session of user A
        self.assertEqual(ctl.request("GET", "/auth/session", token=token).status, 200)
        for i, t in enumerate(tokens):
            secrets_.add("access token #%d" % i, "jwt", t["access_token"])
            secrets_.add("refresh token #%d" % i, "refresh", t["refresh_token"])

        # -- the worker -------------------------------------------------------------------------
        snapshot = os.path.join(tmp, "worker-snapshot.json")
        access_log = os.path.join(tmp, "access.log")
        w = rh.start_worker_at(0, control_url=ctl.base_url, secret=ctl.worker_secret, env_extra={
            "WORKER_CONFIG_POLL_SEC": "30", "WORKER_SNAPSHOT_PATH": snapshot,
            "WORKER_SNAPSHOT_INTERVAL_SEC": "1", "WORKER_ACCESS_LOG": access_log,
            "WORKER_USAGE_REPORT_SEC": "1", "GATEWAY_JWT_SECRET": gateway_secret})
        self.addCleanup(w.stop)
        rh.wait_ready(w)

        def key_status(k, path="/hygiene"):
            return w.request("GET", path, key=k, timeout=5).status

        # -- projects and keys ------------------------------------------------------------------
        project = h.create_project(ctl, token, upstream=upstream.url + "/api", rate_limit=rh.NO_LIMIT)
        k1 = h.create_key(ctl, token, project["id"], label="first")
        self.assertEqual(poll_status(lambda: key_status(k1["api_key"]), 200), 200)
        k2 = h.create_key(ctl, token, project["id"], grace_period_seconds=3600)  # k1 expiring
        self.assertEqual(poll_status(lambda: key_status(k2["api_key"]), 200), 200)
        self.assertEqual(key_status(k1["api_key"]), 200, "k1 inside its grace period")
        k3 = h.create_key(ctl, token, project["id"], rate_limit={"requests_per_minute": 600, "burst": 50})
        self.assertEqual(poll_status(lambda: key_status(k3["api_key"]), 200), 200)
        self.assertEqual(poll_status(lambda: key_status(k2["api_key"]), 401), 401, "k2 rotated out")
        resp = ctl.request("DELETE", "/projects/%s/keys/%s" % (project["id"], k3["id"]), token=token)
        self.assertEqual(resp.status, 204)
        self.assertEqual(poll_status(lambda: key_status(k3["api_key"]), 401), 401, "k3 revoked")
        k4 = h.create_key(ctl, token, project["id"])
        self.assertEqual(poll_status(lambda: key_status(k4["api_key"]), 200), 200)
        other_project = h.create_project(ctl, other.token, upstream=upstream.url, key_policy="multiple")
        k5 = h.create_key(ctl, other.token, other_project["id"])
        keys = [k1, k2, k3, k4, k5]
        for i, k in enumerate(keys):
            secrets_.add("API key k%d" % (i + 1), "api_key", k["api_key"])
        mistyped = k4["api_key"][:-1] + ("A" if k4["api_key"][-1] != "A" else "B")
        secrets_.add("mistyped API key", "api_key", mistyped)
        self.assertEqual(key_status(mistyped), 401)
        for i in range(20):
            self.assertEqual(key_status(k4["api_key"], "/traffic/%d?q=1" % i), 200)

        # -- slug, service, service tokens ------------------------------------------------------
        slug = "hyg-" + h.random_string(8, string.ascii_lowercase + string.digits)
        resp = ctl.request("PATCH", "/projects/%s" % project["id"], {"slug": slug}, token=token)
        self.assertEqual(resp.status, 200, repr(resp))
        resp = ctl.request("PUT", "/projects/%s/services/echo" % project["id"],
                           {"targets": [upstream.url + "/svc"]}, token=token)
        self.assertIn(resp.status, (200, 201), repr(resp))
        issued = []
        for desc in ("revoked one", "live one"):
            resp = ctl.request("POST", "/projects/%s/tokens" % project["id"],
                               {"service": "echo", "description": desc, "expiresInDays": 30}, token=token)
            self.assertEqual(resp.status, 201, repr(resp))
            issued.append(resp.json())
        self.assertEqual(issued[0].get("alg"), "HS256", issued[0])
        t_revoked, t_live = issued
        secrets_.add("service token (revoked)", "jwt", t_revoked["token"])
        secrets_.add("service token (live)", "jwt", t_live["token"])
        path = "/%s/echo/orders?x=1" % slug

        def tok_status(t):
            return w.request("GET", path, headers={"Authorization": "Bearer " + t}, timeout=5).status

        self.assertEqual(poll_status(lambda: tok_status(t_revoked["token"]), 200), 200)
        resp = ctl.request("POST", "/projects/%s/tokens/%s/revoke" % (project["id"], t_revoked["jti"]),
                           {"reason": "hygiene test"}, token=token)
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertEqual(poll_status(lambda: tok_status(t_revoked["token"]), 401), 401)
        for _ in range(10):
            self.assertEqual(tok_status(t_live["token"]), 200)
        # the key on a service route, and a tampered token
        self.assertEqual(w.request("GET", path, key=k4["api_key"], timeout=5).status, 200)
        self.assertEqual(tok_status(t_live["token"][:-2] + "AA"), 401)
        # token usage reported by the worker (worker secret on POST /internal/worker/token-usage)
        deadline = time.monotonic() + 10
        used = None
        while time.monotonic() < deadline and not used:
            rec = ctl.request("GET", "/projects/%s/tokens/%s" % (project["id"], t_live["jti"]), token=token)
            used = rec.json().get("last_used_at") if rec.status == 200 else None
            time.sleep(0.3)
        self.assertTrue(used, "the worker never reported token usage (worker secret in use)")
        # the worker secret on the plain config route too
        self.assertEqual(ctl.worker_config().status, 200)
        time.sleep(2.5)  # a snapshot save interval, access-log flush

        # -- collect --------------------------------------------------------------------------
        artifacts = {}  # name -> bytes

        def add_file(name, path):
            try:
                with open(path, "rb") as f:
                    artifacts[name] = f.read()
            except OSError:
                pass

        if ctl.db == "sqlite":
            for suffix in ("", "-wal", "-shm", "-journal"):
                add_file("sqlite%s (running)" % (suffix or " main"), ctl.db_path + suffix)
        else:
            artifacts["pg_dump (running)"] = ctl.database_bytes()
        with open(snapshot, "rb") as f:
            snap_doc = json.loads(f.read())
        self.assertIsInstance(snap_doc, dict)
        self.assertEqual(w.stop(), 0)
        ctl.stop(drop_database=False)
        if ctl.db == "sqlite":
            for suffix in ("", "-wal", "-shm", "-journal"):
                add_file("sqlite%s (after shutdown)" % (suffix or " main"), ctl.db_path + suffix)
        artifacts["control plane stdout+stderr"] = ctl.logs.encode()
        artifacts["worker stdout"] = w.stdout.encode()
        artifacts["worker stderr"] = w.stderr.encode()
        add_file("worker access log (%s)" % os.path.basename(access_log), access_log)
        add_file("worker snapshot file", snapshot)
        listed = {ctl.db_path + s for s in ("", "-wal", "-shm", "-journal")} if ctl.db_path else set()
        listed |= {access_log, snapshot}
        for root in (ctl.workdir, w.workdir, tmp):
            for dirpath, _, files in os.walk(root):
                for fn in files:
                    p = os.path.join(dirpath, fn)
                    if p not in listed:
                        add_file("file %s" % p, p)

        # -- positive controls: we are looking at the right bytes ---------------------------
        db_blob = b"\n".join(v for k, v in artifacts.items() if k.startswith(("sqlite", "pg_dump")))
        self.assertIn(sha(k4["api_key"]).encode(), db_blob, "the database bytes do not hold k4's hash")
        self.assertIn(user.email.encode(), db_blob)
        self.assertIn(sha(k4["api_key"]).encode(), artifacts["worker snapshot file"])
        alog = artifacts.get("worker access log (%s)" % os.path.basename(access_log), b"")
        self.assertIn(k4["id"].encode(), alog, "the access log does not name k4")
        self.assertIn(t_live["jti"].encode(), alog, "the access log does not name the live token's jti")
        self.assertGreater(len(artifacts["control plane stdout+stderr"]), 0)

        # -- search ---------------------------------------------------------------------------
        forms = secrets_.forms()
        hits = []
        for art, data in artifacts.items():
            for name, form, needle in forms:
                if needle in data:
                    i = data.index(needle)
                    hits.append((name, form, art, data[max(0, i - 80):i + len(needle) + 40]))
        report("searched %d secrets (%d forms) in %d places (database: %s):\n%s\nsecrets: %s",
               len(secrets_.items), len(forms), len(artifacts), ctl.db,
               "\n".join("      %-55s %9d bytes" % (k, len(v)) for k, v in artifacts.items()),
               ", ".join(sorted({n for n, _, _ in secrets_.items})))
        if hits:
            report("HITS:\n%s", "\n".join("      %s (%s) in %s: ...%r..." % hit for hit in hits))
        self.assertEqual([(n, f, a) for n, f, a, _ in hits], [],
                         "secrets found at rest or in logs (secret, form, place)")



class DevSecretsFileTest(unittest.TestCase):
    """Development mode generates the missing server secrets into <data dir>/dev-secrets.env
    (README quick start): owner-only from its creation, even under a permissive umask; tightened
    when found readable by others; a file that cannot be written stops the start with a message."""

    ENV = {"JWT_SECRET_KEY": None, "WORKER_SECRET_KEY": None}

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ag-devsecrets-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.file = os.path.join(self.dir, "dev-secrets.env")
        self.env = dict(self.ENV, DATABASE_URL="sqlite:///" + os.path.join(self.dir, "ag.db"))
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)

    def start(self):
        ctl = h.start_control("sqlite", env_extra=self.ENV, workdir=self.dir)
        ctl.stop(drop_database=False)

    def saved(self):
        with open(self.file) as f:
            return dict(line.strip().split("=", 1) for line in f if "=" in line and not line.startswith("#"))

    def test_owner_only_and_kept_across_restarts(self):
        self.start()
        self.assertEqual(os.stat(self.file).st_mode & 0o777, 0o600)
        first = self.saved()
        self.assertEqual(sorted(first), ["JWT_SECRET_KEY", "WORKER_SECRET_KEY"])
        self.assertTrue(all(len(v) >= 32 for v in first.values()), first.keys())
        self.assertEqual([n for n in os.listdir(self.dir) if n.endswith(".tmp")], [], "a temporary left behind")
        os.chmod(self.file, 0o644)
        self.start()
        self.assertEqual(os.stat(self.file).st_mode & 0o777, 0o600, "a readable file is tightened")
        self.assertEqual(self.saved(), first, "the same secrets after a restart")

    def test_unwritable_file_stops_the_start(self):
        os.mkdir(self.file + ".tmp")  # the temporary cannot be created (this holds for root too)
        code, out = h.run_binary(["control", "--listen", "127.0.0.1:0"], env_extra=self.env, cwd=self.dir, timeout=20)
        self.assertNotEqual(code, 0, out)
        self.assertIn("cannot write", out)
        self.assertIn("dev-secrets.env", out)
        self.assertFalse(os.path.exists(self.file))


if __name__ == "__main__":
    unittest.main(verbosity=2)
