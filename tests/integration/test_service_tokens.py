"""Integration tests of services and service tokens (docs/services-and-tokens.md).

End to end with the real binaries: `antigravity control` on SQLite, `antigravity worker` following
its change stream (CONTROL_API_BASE_URL + worker secret) or reading a directory of YAML files
(`--config-dir`), the `antigravity token ...` command line on the control plane's database, and
real recording upstreams on loopback (harness.Upstream and a tunable variant defined here:
slow targets, failing health checks, 503 answers, fixed ports).

Covers: project slugs; the services API; issuing, listing, reading and revoking tokens (error
codes, audit log, nothing secret at rest); the JWKS document; the worker's service routes, token
and API-key checks, revocation (API and CLI), usage reports; interoperability with a standard JWT
library (python3-jwt / python3-cryptography: HS256, imported ES256 and EdDSA keys, rotation and
retirement); load balancing, health checks, passive ejection and fail-closed 503; file mode with
YAML reloads.

Run with Debian's python (python3-jwt and python3-cryptography):
    /usr/bin/python3 tests/integration/test_service_tokens.py
Environment: see the harness (AG_BIN, AG_TEST_KEEP).

Assumptions where docs/services-and-tokens.md leaves a detail open are marked "ASSUMPTION:".
"""

import hashlib
import http.client
import json
import os
import re
import shutil
import string
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

import jwt  # noqa: E402  (python3-jwt)
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Constants

DAY = 86400
NO_LIMIT = {"requests_per_minute": 1000000, "burst": 100000}
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ISSUE_FIELDS = {"token", "jti", "expiresAt", "project", "service", "alg", "kid"}
RECORD_FIELDS = {"jti", "project", "service", "backend", "description", "created_by", "created_by_label",
                 "created_at", "expires_at", "last_used_at", "is_active", "revoked_at", "revoked_by",
                 "revocation_reason", "metadata", "alg", "kid"}
SERVICE_FIELDS = {"name", "targets", "balancer", "health_check", "ejection", "created_at",
                  "updated_at"}

# Variables of this feature; cleared from every process we start unless a test sets them.
JWT_VARS = ("GATEWAY_JWT_ALG", "GATEWAY_JWT_SECRET", "GATEWAY_JWT_AUDIENCE", "GATEWAY_JWT_ISSUER",
            "GATEWAY_JWT_LEEWAY_SEC")
WORKER_EXTRA_VARS = ("WORKER_USAGE_REPORT_SEC", "WORKER_CONFIG_DIR", "WORKER_SNAPSHOT_PATH",
                     "WORKER_SNAPSHOT_INTERVAL_SEC", "WORKER_SNAPSHOT_MAX_AGE_SEC", "WORKER_ID")
# Workers following a control plane: a long refresh interval, so that only the change stream can
# deliver a change quickly (as in test_config_stream.py); no snapshot file.
STREAM_WORKER_ENV = {"WORKER_CONFIG_POLL_SEC": "30", "WORKER_SNAPSHOT_PATH": "off"}

# Bounds. API changes reach a worker through the change stream in well under a second; we allow
# PROPAGATION_SEC for "the new route/service works". A revocation must be enforced within 1 s
# (the bound of a revoked API key); a CLI revocation within 3 s.
PROPAGATION_SEC = 3.0
REVOKE_BOUND_SEC = 1.0
CLI_REVOKE_BOUND_SEC = 3.0
# ASSUMPTION: keys imported / rotated / retired through the CLI reach workers within 5 s (the doc
# only says "after the change reaches it").
CLI_KEY_BOUND_SEC = 5.0
HEALTH_PATH = "/healthz"

INVALID_TOKEN = "Invalid token"
NOT_FOR_ROUTE = "Token not valid for this route"
KEY_NOT_FOR_ROUTE = "API key not valid for this route"
CREDENTIALS_MISSING = "Credentials missing"
NO_HEALTHY = "No healthy upstream target"


# ---------------------------------------------------------------------------------------------
# Small helpers


def marker(prefix="m"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def new_slug(prefix="p"):
    return "%s-%s" % (prefix, h.random_string(10, string.ascii_lowercase + string.digits))


def poll_until(fn, ok, timeout, interval=0.05):
    return wh.poll_until(fn, ok, timeout, interval)


def rfc3339(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


def start_control_plane(env_extra=None):
    """`antigravity control` on a fresh SQLite database, none of this feature's variables set
    unless given."""
    env = {v: None for v in JWT_VARS}
    env.update(env_extra or {})
    return h.start_control("sqlite", env_extra=env)


def start_stream_worker(control, env_extra=None, threads=2, ready_timeout=10.0):
    """A worker following `control`'s change stream; returns once it has a config."""
    env = {v: None for v in JWT_VARS + WORKER_EXTRA_VARS}
    env.update(STREAM_WORKER_ENV)
    env.update(env_extra or {})
    w = wh.start_worker(control_url=control.base_url, secret=control.worker_secret, env_extra=env,
                        threads=threads)
    ready = w.wait_ready(ready_timeout)
    if ready is None or ready.status != 200:
        w.stop()
        raise AssertionError("worker never ready: %r\n%s" % (ready, w.stderr[-3000:]))
    return w


def start_file_worker(config_dir, env_extra=None, threads=2):
    """A worker in file mode: `antigravity worker --config-dir DIR`."""
    env = {v: None for v in JWT_VARS + WORKER_EXTRA_VARS}
    env["WORKER_SNAPSHOT_PATH"] = "off"
    env.update(env_extra or {})
    return wh.start_worker(env_extra=env, threads=threads, args=["--config-dir", config_dir])


def cli_env(control, extra=None):
    """Environment for `antigravity token ...` on `control`'s database. JWT_SECRET_KEY must be the
    control plane's: the signing keys' private halves are sealed under a key derived from it."""
    env = {v: None for v in JWT_VARS}
    for name in ("DATABASE_URL", "JWT_SECRET_KEY", "WORKER_SECRET_KEY", "ENV") + JWT_VARS:
        if name in control.env:
            env[name] = control.env[name]
    env.update(extra or {})
    return env


def run_cli(args, env_extra, timeout=60):
    """Runs the binary to completion; returns (returncode, stdout, stderr) separately (the
    machine-readable output formats must be clean on stdout)."""
    cwd = tempfile.mkdtemp(prefix="ag-cli-")
    try:
        proc = subprocess.run([h.AG_BIN] + list(args), cwd=cwd, env=h.base_env(env_extra),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)
        return (proc.returncode, proc.stdout.decode("utf-8", "replace"),
                proc.stderr.decode("utf-8", "replace"))
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


def control_cli(control, args, extra=None, timeout=60):
    return run_cli(args, cli_env(control, extra), timeout=timeout)


# -- keys and tokens (python3-jwt / python3-cryptography) -------------------------------------


def ec_private_key():
    return ec.generate_private_key(ec.SECP256R1())


def ed_private_key():
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(private_key):
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk_public_pem(jwk):
    """PEM (SubjectPublicKeyInfo) of an EC JWK."""
    key = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(jwk))
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def token_claims(slug, svc, lifetime=3600, **over):
    """{jti, project, service, iat, exp} (+ overrides, which may name any claim, "project" and
    "service" included; a None value removes the claim)."""
    now = int(time.time())
    claims = {"jti": str(uuid.uuid4()), "project": slug, "service": svc, "iat": now,
              "exp": now + lifetime}
    for k, v in over.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


def mint(private_key, alg, kid, claims):
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, private_key, algorithm=alg, headers=headers)


def unverified(token):
    """(header, claims) without checking anything."""
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def write_file(path, data, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    wh.write_raw(path, data)
    if mode is not None:
        os.chmod(path, mode)


# -- control API ------------------------------------------------------------------------------


def api_project(ctl, token, slug=None, upstream="http://127.0.0.1:9/unused", **fields):
    """Creates a project (no rate limit to speak of, several keys allowed), with `slug` if given."""
    fields.setdefault("rate_limit", NO_LIMIT)
    fields.setdefault("key_policy", "multiple")
    if slug is not None:
        fields["slug"] = slug
    return h.create_project(ctl, token, upstream=upstream, **fields)


def services_path(pid, name=None):
    return "/projects/%s/services" % pid + ("/%s" % name if name is not None else "")


def tokens_path(pid, jti=None, suffix=""):
    return "/projects/%s/tokens" % pid + ("/%s" % jti if jti is not None else "") + suffix


def put_service(ctl, token, pid, name, targets, **more):
    body = {"targets": list(targets)}
    body.update(more)
    resp = ctl.request("PUT", services_path(pid, name), body, token=token)
    if resp.status not in (200, 201):
        raise AssertionError("PUT service %s failed: %r" % (name, resp))
    return resp.json()


def issue(ctl, token, pid, service, **more):
    body = {"service": service}
    body.update(more)
    resp = ctl.request("POST", tokens_path(pid), body, token=token)
    if resp.status != 201:
        raise AssertionError("token issue failed: %r" % resp)
    return resp.json()


def token_record(ctl, token, pid, jti):
    resp = ctl.request("GET", tokens_path(pid, jti), token=token)
    if resp.status != 200:
        raise AssertionError("GET token record failed: %r" % resp)
    return resp.json()


def jwks(ctl):
    resp = ctl.request("GET", "/.well-known/jwks.json")
    if resp.status != 200:
        raise AssertionError("GET /.well-known/jwks.json: %r" % resp)
    return resp.json()


# ---------------------------------------------------------------------------------------------
# A tunable upstream: slow, failing health checks, fixed status, fixed port


class _TunableHandler(wh.UpstreamHandler):
    def _handle(self):
        up = self.server.upstream
        route = urllib.parse.urlsplit(self.path).path
        if route == HEALTH_PATH:
            self._read_body()
            with up._lock:
                up.health_requests.append({"method": self.command, "path": self.path,
                                           "time": time.monotonic()})
            if up.health_delay and up._stop.wait(up.health_delay):
                self.close_connection = True
                return
            self._send_json(up.health_status, {"health": up.health_status})
            return
        if up.delay and up._stop.wait(up.delay):
            self.close_connection = True
            return
        if up.status_override:
            length, digest, complete = self._read_body()
            header_dict = {k.lower(): v for k, v in self.headers.items()}
            up._record({"method": self.command, "path": self.path, "route": route,
                        "headers": list(self.headers.items()), "header_dict": header_dict,
                        "body_len": length, "sha256": digest, "complete": complete,
                        "time": time.monotonic()})
            self._send_json(up.status_override, {"detail": "forced"}, [("X-Upstream", "yes")])
            return
        super()._handle()

    # the base class bound its own _handle to these names
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class TunableUpstream(wh.Upstream):
    """wh.Upstream (same recording and routes) plus knobs:
    delay (seconds before answering any non-health request), status_override (answer every
    non-health request with this status), health_status / health_delay (GET HEALTH_PATH), and a
    fixed `port` (to bring a target back on the port the worker knows)."""

    def __init__(self, port=0):
        # Same fields as wh.Upstream.__init__, with our handler and an optional fixed port.
        self._lock = threading.Lock()
        self._requests = []
        self._conns = set()
        self._stop = threading.Event()
        self._ws_sessions = 0
        self.delay = 0.0
        self.status_override = 0
        self.health_status = 200
        self.health_delay = 0.0
        self.health_requests = []
        self._server = wh.UpstreamServer(("127.0.0.1", port), _TunableHandler)
        self._server.upstream = self
        self.port = self._server.server_address[1]
        self.host = "127.0.0.1"
        self.url = "http://127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def health_count(self):
        with self._lock:
            return len(self.health_requests)


# ---------------------------------------------------------------------------------------------
# Shared assertions


class GatewayTestCase(unittest.TestCase):
    """Assertions and request helpers shared by every class."""

    maxDiff = 4000

    # -- control plane ---------------------------------------------------------------------

    def assertApiError(self, resp, status, detail=None):
        self.assertEqual(resp.status, status, repr(resp))
        return h.error_detail(self, resp, detail)

    def assertIssueError(self, resp, code):
        """422 {"detail": "...", "code": code}."""
        data = self.assertApiError(resp, 422)
        self.assertEqual(data.get("code"), code, repr(resp))
        return data

    def assertRfc3339(self, value, what=""):
        self.assertIsInstance(value, str, what)
        self.assertRegex(value, h.RFC3339_RE, what)

    # -- worker ----------------------------------------------------------------------------

    def call(self, worker, path, token=None, key=None, headers=None, rid=None, method="GET",
             timeout=10):
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = "Bearer " + token
        if rid is not None:
            hdrs["X-Request-Id"] = rid
        return worker.request(method, path, key=key, headers=hdrs, timeout=timeout)

    def status_of(self, worker, path, token=None, key=None, timeout=5):
        try:
            return self.call(worker, path, token=token, key=key, timeout=timeout).status
        except (OSError, http.client.HTTPException):
            return None

    def assertWorkerError(self, resp, status, detail=None):
        """A worker-made error: status, JSON {"detail"}, not answered by an upstream."""
        self.assertEqual(resp.status, status, "unexpected status: %r" % (resp,))
        self.assertNotIn("X-Upstream", resp.headers, "answered by the upstream: %r" % (resp,))
        self.assertIn("application/json", resp.headers.get("Content-Type", ""), repr(resp))
        return self.assertApiError(resp, status, detail)

    def assertProxied(self, resp, status=200):
        self.assertEqual(resp.status, status, "unexpected status: %r" % (resp,))
        self.assertEqual(resp.headers.get("X-Upstream"), "yes", "not from the upstream: %r" % (resp,))
        return resp

    def assertLogged(self, worker, rid, what, timeout=5.0):
        entry = worker.wait_for_log(lambda e: e.get("request_id") == rid, timeout)
        self.assertIsNotNone(entry, "no access-log line for %s (request id %s); tail: %r"
                             % (what, rid, worker.access_log()[-5:]))
        return entry

    def assertNotLogged(self, worker, *secrets):
        out, err = worker.stdout, worker.stderr
        for s in secrets:
            if s and len(s) >= 16:
                self.assertNotIn(s, out, "a token/secret appears in the worker's access log")
                self.assertNotIn(s, err, "a token/secret appears in the worker's log")

    def assertInvalidToken(self, worker, upstreams, path, tok, reason=None, what=""):
        """401 Invalid token + WWW-Authenticate, nothing forwarded, reason in the access log."""
        rid = marker("bad")
        sep = "&" if "?" in path else "?"
        resp = self.call(worker, path + sep + rid, token=tok, rid=rid)
        self.assertWorkerError(resp, 401, INVALID_TOKEN)
        www = resp.headers.get("WWW-Authenticate") or ""
        self.assertTrue(www.startswith("Bearer"), "%s: WWW-Authenticate %r" % (what, www))
        self.assertIn('error="invalid_token"', www, what)
        for up in upstreams:
            self.assertEqual(up.matching(rid), [], "%s: forwarded to the upstream" % what)
        entry = self.assertLogged(worker, rid, what)
        self.assertEqual(entry.get("status"), 401, entry)
        self.assertEqual(entry.get("decision"), "block", entry)
        got = entry.get("reason") or ""
        if isinstance(reason, tuple):
            self.assertIn(got, reason, "%s: access-log reason %r" % (what, entry))
        elif reason is not None:
            self.assertEqual(got, reason, "%s: access-log reason %r" % (what, entry))
        else:
            # ASSUMPTION: every token failure's reason starts with "token_" (the doc lists
            # token_expired, token_signature, token_revoked, token_unknown_key, token_algorithm).
            self.assertTrue(got.startswith("token_"), "%s: access-log reason %r" % (what, entry))
        self.assertNotIn(tok, json.dumps(entry), "%s: token in the access log" % what)
        return entry

    def wait_status(self, fn, status, timeout, what):
        """Polls fn() -> Response until its status is `status`; returns (resp, elapsed)."""
        def safe():
            try:
                return fn()
            except (OSError, http.client.HTTPException):
                return None
        resp, elapsed, ok = poll_until(safe, lambda r: r is not None and r.status == status,
                                       timeout, 0.05)
        self.assertTrue(ok, "%s: %r after %.1fs, expected %d" % (what, resp, elapsed, status))
        return resp, elapsed


# =============================================================================================
# 1. Project slug


class ProjectSlugTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.control = start_control_plane()
        cls.addClassCleanup(cls.control.stop)
        cls.user = h.register_user(cls.control)
        cls.other = h.register_user(cls.control)

    def post_project(self, user, **fields):
        body = {"name": "proj-" + h.random_string(8), "upstream_base_url": "http://127.0.0.1:9000/api"}
        body.update(fields)
        return self.control.request("POST", "/projects", body, token=user.token)

    def test_slug_set_on_create_and_patch(self):
        slug = new_slug()
        resp = self.post_project(self.user, slug=slug)
        self.assertEqual(resp.status, 201, repr(resp))
        project = resp.json()
        self.assertEqual(project.get("slug"), slug)
        got = self.control.request("GET", "/projects/%s" % project["id"], token=self.user.token)
        self.assertEqual(got.status, 200, repr(got))
        self.assertEqual(got.json().get("slug"), slug)

        # ASSUMPTION: a project without a slug has "slug": null in the project object.
        resp = self.post_project(self.user)
        self.assertEqual(resp.status, 201, repr(resp))
        plain = resp.json()
        self.assertIn("slug", plain, "project object has no slug field: %r" % plain)
        self.assertIsNone(plain["slug"])
        slug2 = new_slug()
        resp = self.control.request("PATCH", "/projects/%s" % plain["id"], {"slug": slug2},
                                    token=self.user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertEqual(resp.json().get("slug"), slug2)
        # patching a project to the slug it already has is not a conflict
        resp = self.control.request("PATCH", "/projects/%s" % plain["id"], {"slug": slug2},
                                    token=self.user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        # limits of the pattern: 63 characters, digits only, '_' and '-'
        tail = h.random_string(6, string.ascii_lowercase)
        for ok in ("a" * 57 + tail, h.random_string(8, string.digits), "x_y-" + tail, "-" + tail):
            resp = self.post_project(self.user, slug=ok)
            self.assertEqual(resp.status, 201, "slug %r refused: %r" % (ok, resp))
            self.assertEqual(resp.json().get("slug"), ok)

    def test_bad_slugs_are_422(self):
        plain = api_project(self.control, self.user.token)
        before = self.control.request("GET", "/projects", token=self.user.token).json()
        for bad in ("Bad", "has space", "", "a" * 64, "dot.ted", "\u00fcmlaut", "sl/ash", 5, ["x"],
                    {"a": 1}, True):
            with self.subTest(slug=bad):
                resp = self.post_project(self.user, slug=bad)
                self.assertApiError(resp, 422)
                resp = self.control.request("PATCH", "/projects/%s" % plain["id"], {"slug": bad},
                                            token=self.user.token)
                self.assertApiError(resp, 422)
        after = self.control.request("GET", "/projects", token=self.user.token).json()
        self.assertEqual(len(after), len(before), "a refused create wrote a project")
        got = self.control.request("GET", "/projects/%s" % plain["id"], token=self.user.token).json()
        self.assertIsNone(got.get("slug"), "a refused PATCH changed the slug")

    def test_slug_is_unique_across_users(self):
        slug = new_slug()
        self.assertEqual(self.post_project(self.user, slug=slug).status, 201)
        # another owner, same slug
        resp = self.post_project(self.other, slug=slug)
        self.assertApiError(resp, 409, "Project slug already in use")
        # the same owner
        resp = self.post_project(self.user, slug=slug)
        self.assertApiError(resp, 409, "Project slug already in use")
        # PATCH to a taken slug
        mine = api_project(self.control, self.other.token)
        resp = self.control.request("PATCH", "/projects/%s" % mine["id"], {"slug": slug},
                                    token=self.other.token)
        self.assertApiError(resp, 409, "Project slug already in use")
        # after the holder moves to another slug, the old one is free again
        holder = api_project(self.control, self.user.token, slug=new_slug())
        freed = holder["slug"]
        resp = self.control.request("PATCH", "/projects/%s" % holder["id"], {"slug": new_slug()},
                                    token=self.user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        resp = self.control.request("PATCH", "/projects/%s" % mine["id"], {"slug": freed},
                                    token=self.other.token)
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertEqual(resp.json().get("slug"), freed)


# =============================================================================================
# 2. Services API


class ServicesApiTest(GatewayTestCase):
    T = "http://127.0.0.1:4200"

    @classmethod
    def setUpClass(cls):
        cls.control = start_control_plane()
        cls.addClassCleanup(cls.control.stop)
        cls.user = h.register_user(cls.control)
        cls.other = h.register_user(cls.control)

    def setUp(self):
        self.project = api_project(self.control, self.user.token, slug=new_slug())
        self.pid = self.project["id"]

    def put(self, name, body, token=None, pid=None):
        return self.control.request("PUT", services_path(pid or self.pid, name), body,
                                    token=self.user.token if token is None else token)

    def assertService(self, record, name):
        self.assertIsInstance(record, dict)
        self.assertEqual(set(record), SERVICE_FIELDS, record)
        self.assertEqual(record["name"], name)
        self.assertRfc3339(record["created_at"])
        self.assertRfc3339(record["updated_at"])

    def test_create_replace_get_list_delete(self):
        body = {"targets": ["http://10.0.0.5:4200", "http://10.0.0.6:4200/base"],
                "balancer": "least_request",
                "health_check": {"path": "/api/health", "interval_sec": 10, "timeout_ms": 2000},
                "ejection": {"failures": 5, "cooldown_sec": 30}}
        resp = self.put("prefect", body)
        self.assertEqual(resp.status, 201, repr(resp))
        rec = resp.json()
        self.assertService(rec, "prefect")
        self.assertEqual(rec["targets"], body["targets"])
        self.assertEqual(rec["balancer"], "least_request")
        self.assertEqual(rec["health_check"], body["health_check"])
        self.assertEqual(rec["ejection"], body["ejection"])

        got = self.control.request("GET", services_path(self.pid, "prefect"), token=self.user.token)
        self.assertEqual(got.status, 200, repr(got))
        self.assertEqual(got.json(), rec)

        # replace: 200, the new content, created_at kept
        time.sleep(1.05)  # second-precision timestamps: updated_at must move
        resp = self.put("prefect", {"targets": [self.T]})
        self.assertEqual(resp.status, 200, repr(resp))
        rep = resp.json()
        self.assertService(rep, "prefect")
        self.assertEqual(rep["targets"], [self.T])
        self.assertEqual(rep["balancer"], "round_robin")
        self.assertIsNone(rep["health_check"])
        self.assertEqual(rep["created_at"], rec["created_at"])
        self.assertGreater(h.parse_time(rep["updated_at"]), h.parse_time(rec["updated_at"]))

        # list, by name
        for name in ("zeta", "alpha", "mid_1"):
            self.assertEqual(self.put(name, {"targets": [self.T]}).status, 201)
        resp = self.control.request("GET", services_path(self.pid), token=self.user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        services = resp.json().get("services")
        self.assertIsInstance(services, list, repr(resp))
        self.assertEqual([s["name"] for s in services], ["alpha", "mid_1", "prefect", "zeta"])
        for s in services:
            self.assertService(s, s["name"])

        # delete
        resp = self.control.request("DELETE", services_path(self.pid, "zeta"), token=self.user.token)
        self.assertEqual(resp.status, 204, repr(resp))
        self.assertEqual(resp.body, b"")
        resp = self.control.request("GET", services_path(self.pid, "zeta"), token=self.user.token)
        self.assertApiError(resp, 404, "Service not found")
        resp = self.control.request("DELETE", services_path(self.pid, "zeta"), token=self.user.token)
        self.assertApiError(resp, 404)
        names = [s["name"] for s in self.control.request("GET", services_path(self.pid),
                                                         token=self.user.token).json()["services"]]
        self.assertEqual(names, ["alpha", "mid_1", "prefect"])

    def test_defaults(self):
        resp = self.put("plain", {"targets": [self.T]})
        self.assertEqual(resp.status, 201, repr(resp))
        rec = resp.json()
        self.assertEqual(rec["balancer"], "round_robin")
        self.assertIsNone(rec["health_check"])
        self.assertEqual(rec["ejection"], {"failures": 5, "cooldown_sec": 30})
        resp = self.put("checked", {"targets": [self.T], "health_check": {"path": "/h"}})
        self.assertEqual(resp.status, 201, repr(resp))
        self.assertEqual(resp.json()["health_check"], {"path": "/h", "interval_sec": 10, "timeout_ms": 2000})
        resp = self.put("ej", {"targets": [self.T], "ejection": {"failures": 2}})
        self.assertEqual(resp.status, 201, repr(resp))
        self.assertEqual(resp.json()["ejection"], {"failures": 2, "cooldown_sec": 30})

    def test_boundaries_accepted(self):
        cases = {
            "sixteen": {"targets": ["http://127.0.0.1:%d" % (4000 + i) for i in range(16)]},
            "lows": {"targets": [self.T], "health_check": {"path": "/h", "interval_sec": 1, "timeout_ms": 100},
                     "ejection": {"failures": 1, "cooldown_sec": 1}},
            "highs": {"targets": [self.T], "health_check": {"path": "/h", "interval_sec": 3600, "timeout_ms": 60000},
                      "ejection": {"failures": 100, "cooldown_sec": 3600}},
            "a" * 63: {"targets": [self.T]},
            "x_y-0": {"targets": [self.T + "/with/base"]},
            "tls": {"targets": ["https://api.example.com", "https://127.0.0.1:8443/v1", self.T]},
        }
        for name, body in cases.items():
            with self.subTest(name=name):
                resp = self.put(name, body)
                self.assertEqual(resp.status, 201, repr(resp))
                rec = resp.json()
                for k, v in body.items():
                    self.assertEqual(rec[k], v)

    def test_validation(self):
        T = self.T

        def hc(**kw):
            d = {"path": "/h"}
            d.update(kw)
            return {"targets": [T], "health_check": d}

        def ej(**kw):
            return {"targets": [T], "ejection": kw}

        bad_bodies = [
            ("no targets", {}),
            ("empty targets", {"targets": []}),
            ("17 targets", {"targets": ["http://127.0.0.1:%d" % (4000 + i) for i in range(17)]}),
            ("https target without host", {"targets": ["https:///x"]}),
            ("ftp target", {"targets": ["ftp://127.0.0.1:4200"]}),
            ("no scheme", {"targets": ["127.0.0.1:4200"]}),
            ("not a url", {"targets": ["not a url"]}),
            ("targets a string", {"targets": T}),
            ("target a number", {"targets": [5]}),
            ("balancer", {"targets": [T], "balancer": "random"}),
            ("balancer type", {"targets": [T], "balancer": 1}),
            ("health_check type", {"targets": [T], "health_check": "yes"}),
            ("interval 0", hc(interval_sec=0)),
            ("interval 3601", hc(interval_sec=3601)),
            ("interval string", hc(interval_sec="10")),
            ("timeout 99", hc(timeout_ms=99)),
            ("timeout 60001", hc(timeout_ms=60001)),
            ("ejection type", {"targets": [T], "ejection": 5}),
            ("failures 0", ej(failures=0)),
            ("failures 101", ej(failures=101)),
            ("cooldown 0", ej(cooldown_sec=0)),
            ("cooldown 3601", ej(cooldown_sec=3601)),
            ("unknown field", {"targets": [T], "weight": 3}),
            ("unknown field 2", {"targets": [T], "name": "other"}),
        ]
        name = "v-" + h.random_string(6, string.ascii_lowercase)
        for what, body in bad_bodies:
            with self.subTest(what):
                self.assertApiError(self.put(name, body), 422)
        for bad_name in ("Bad", "a" * 64, "dot.ted", "sp%20ace", "%C3%BC"):
            with self.subTest(name=bad_name):
                self.assertApiError(self.put(bad_name, {"targets": [T]}), 422)
        # nothing was written
        resp = self.control.request("GET", services_path(self.pid, name), token=self.user.token)
        self.assertApiError(resp, 404, "Service not found")
        resp = self.control.request("GET", services_path(self.pid), token=self.user.token)
        self.assertEqual(resp.json().get("services"), [], repr(resp))

    def test_project_without_slug(self):
        plain = api_project(self.control, self.user.token)
        self.assertApiError(self.put("svc", {"targets": [self.T]}, pid=plain["id"]), 422)

    def test_other_users_project_and_no_auth(self):
        self.assertEqual(self.put("mine", {"targets": [self.T]}).status, 201)
        other = self.other.token
        for method, path, body in (("GET", services_path(self.pid), None),
                                   ("GET", services_path(self.pid, "mine"), None),
                                   ("PUT", services_path(self.pid, "mine"), {"targets": [self.T]}),
                                   ("PUT", services_path(self.pid, "new"), {"targets": [self.T]}),
                                   ("DELETE", services_path(self.pid, "mine"), None)):
            with self.subTest(method=method, path=path):
                self.assertApiError(self.control.request(method, path, body, token=other), 404)
                resp = self.control.request(method, path, body)
                self.assertApiError(resp, 401)
                self.assertIn("Bearer", resp.headers.get("WWW-Authenticate", ""), repr(resp))
        # unknown project
        resp = self.control.request("GET", services_path(str(uuid.uuid4())), token=self.user.token)
        self.assertApiError(resp, 404)
        # still there, unchanged
        resp = self.control.request("GET", services_path(self.pid, "mine"), token=self.user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertEqual(resp.json()["targets"], [self.T])


# =============================================================================================
# 3. Token issue / list / revoke API


class TokenApiTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.control = start_control_plane()
        cls.addClassCleanup(cls.control.stop)
        cls.user = h.register_user(cls.control)
        cls.other = h.register_user(cls.control)

    def setUp(self):
        self.slug = new_slug()
        self.project = api_project(self.control, self.user.token, slug=self.slug)
        self.pid = self.project["id"]
        put_service(self.control, self.user.token, self.pid, "api", ["http://127.0.0.1:4200"])
        put_service(self.control, self.user.token, self.pid, "jobs", ["http://127.0.0.1:4201"])

    def post(self, body, pid=None, token=None):
        return self.control.request("POST", tokens_path(pid or self.pid), body,
                                    token=self.user.token if token is None else token)

    def list_tokens(self, query=""):
        resp = self.control.request("GET", tokens_path(self.pid) + query, token=self.user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        tokens = resp.json().get("tokens")
        self.assertIsInstance(tokens, list, repr(resp))
        return tokens

    def assertRecord(self, rec):
        # every field the doc lists (ASSUMPTION: extra fields, e.g. project_id, are allowed)
        self.assertLessEqual(RECORD_FIELDS, set(rec), rec)
        self.assertRegex(rec["jti"], UUID_RE)
        self.assertRfc3339(rec["created_at"])
        self.assertRfc3339(rec["expires_at"])

    def test_issue_shape_and_claims(self):
        before = int(time.time())
        resp = self.post({"service": "api", "description": "ci deploys", "backend": "b1",
                          "createdBy": "ops@example.com", "metadata": {"team": "x", "n": 1}})
        after = int(time.time())
        self.assertEqual(resp.status, 201, repr(resp))
        body = resp.json()
        self.assertEqual(set(body), ISSUE_FIELDS, body)
        self.assertEqual(body["project"], self.slug)
        self.assertEqual(body["service"], "api")
        self.assertEqual(body["alg"], "ES256")  # the default GATEWAY_JWT_ALG
        self.assertIsInstance(body["kid"], str)
        self.assertTrue(body["kid"])
        self.assertRegex(body["jti"], UUID_RE)
        self.assertRfc3339(body["expiresAt"])

        header, claims = unverified(body["token"])
        self.assertEqual(header.get("alg"), "ES256", header)
        self.assertEqual(header.get("typ"), "JWT", header)
        self.assertEqual(header.get("kid"), body["kid"], header)
        # no GATEWAY_JWT_AUDIENCE / GATEWAY_JWT_ISSUER here: exactly the five claims
        self.assertEqual(set(claims), {"jti", "project", "service", "iat", "exp"}, claims)
        self.assertEqual(claims["jti"], body["jti"])
        self.assertEqual(claims["project"], self.slug)
        self.assertEqual(claims["service"], "api")
        self.assertIsInstance(claims["iat"], int)
        self.assertIsInstance(claims["exp"], int)
        self.assertTrue(before - 2 <= claims["iat"] <= after + 2, claims)
        self.assertEqual(claims["exp"] - claims["iat"], 90 * DAY, "default lifetime is 90 days")
        self.assertEqual(h.parse_time(body["expiresAt"]), claims["exp"])

        rec = token_record(self.control, self.user.token, self.pid, body["jti"])
        self.assertRecord(rec)
        self.assertEqual(rec["jti"], body["jti"])
        self.assertEqual(rec["project"], self.slug)
        self.assertEqual(rec["service"], "api")
        self.assertEqual(rec["backend"], "b1")
        self.assertEqual(rec["description"], "ci deploys")
        # created_by is the authenticated issuer, whatever the body says; the body's createdBy is
        # kept apart as a label.
        self.assertEqual(rec["created_by"], self.user.email)
        self.assertEqual(rec["created_by_label"], "ops@example.com")
        self.assertEqual(rec["metadata"], {"team": "x", "n": 1})
        self.assertEqual(rec["alg"], "ES256")
        self.assertEqual(rec["kid"], body["kid"])
        self.assertEqual(rec["expires_at"], body["expiresAt"])
        self.assertIsNone(rec["last_used_at"])
        self.assertIs(rec["is_active"], True)
        self.assertIsNone(rec["revoked_at"])
        self.assertIsNone(rec["revoked_by"])
        self.assertIsNone(rec["revocation_reason"])
        self.assertNotIn(body["token"], json.dumps(rec), "the token is shown again")

    def test_expiry_values(self):
        for days in (1, 30, 365):
            with self.subTest(days=days):
                body = issue(self.control, self.user.token, self.pid, "api", expiresInDays=days)
                _, claims = unverified(body["token"])
                self.assertEqual(claims["exp"] - claims["iat"], days * DAY)
                self.assertEqual(h.parse_time(body["expiresAt"]), claims["exp"])

    def test_project_field(self):
        body = issue(self.control, self.user.token, self.pid, "jobs", project=self.slug)
        self.assertEqual(body["project"], self.slug)
        self.assertEqual(body["service"], "jobs")
        self.assertIssueError(self.post({"service": "api", "project": "someone-else"}), "INVALID_PROJECT")
        self.assertIssueError(self.post({"service": "api", "project": self.slug.upper()}), "INVALID_PROJECT")

    def test_error_codes(self):
        start = len(self.list_tokens())
        cases = [
            ("unknown field", {"service": "api", "scope": "all"}, "VALIDATION_ERROR"),
            ("description wrong type", {"service": "api", "description": 5}, "VALIDATION_ERROR"),
            ("metadata wrong type", {"service": "api", "metadata": "x"}, "VALIDATION_ERROR"),
            ("backend wrong type", {"service": "api", "backend": ["b"]}, "VALIDATION_ERROR"),
            ("project mismatch", {"service": "api", "project": "nope"}, "INVALID_PROJECT"),
            ("undeclared service", {"service": "nosuch"}, "INVALID_SERVICE"),
            ("bad service format", {"service": "Bad Name!"}, "INVALID_SERVICE"),
            ("expiry 0", {"service": "api", "expiresInDays": 0}, "INVALID_EXPIRY"),
            ("expiry 366", {"service": "api", "expiresInDays": 366}, "INVALID_EXPIRY"),
            ("expiry negative", {"service": "api", "expiresInDays": -1}, "INVALID_EXPIRY"),
            ("expiry string", {"service": "api", "expiresInDays": "x"}, "INVALID_EXPIRY"),
            ("expiry fraction", {"service": "api", "expiresInDays": 1.5}, "INVALID_EXPIRY"),
        ]
        for what, body, code in cases:
            with self.subTest(what):
                self.assertIssueError(self.post(body), code)
        # ASSUMPTION: a missing or non-string "service" is either a VALIDATION_ERROR (required
        # field / wrong type) or an INVALID_SERVICE ("not a declared service"); the doc does not
        # say which.
        for body in ({}, {"service": 5}, {"service": None}):
            data = self.assertApiError(self.post(body), 422)
            self.assertIn(data.get("code"), ("VALIDATION_ERROR", "INVALID_SERVICE"), data)
        # a project without a slug
        plain = api_project(self.control, self.user.token)
        self.assertIssueError(self.post({"service": "api"}, pid=plain["id"]), "INVALID_PROJECT")
        # nothing was issued
        self.assertEqual(len(self.list_tokens()), start)

    def test_other_user_and_unauthenticated(self):
        body = issue(self.control, self.user.token, self.pid, "api")
        other = self.other.token
        for method, path, payload in (("POST", tokens_path(self.pid), {"service": "api"}),
                                      ("GET", tokens_path(self.pid), None),
                                      ("GET", tokens_path(self.pid, body["jti"]), None),
                                      ("POST", tokens_path(self.pid, body["jti"], "/revoke"), {})):
            with self.subTest(method=method, path=path):
                self.assertApiError(self.control.request(method, path, payload, token=other), 404)
                self.assertApiError(self.control.request(method, path, payload), 401)
        rec = token_record(self.control, self.user.token, self.pid, body["jti"])
        self.assertIs(rec["is_active"], True, "someone else revoked the token")

    def test_list_get_revoke(self):
        t1 = issue(self.control, self.user.token, self.pid, "api", description="first")
        time.sleep(1.05)  # created_at has second precision: make "newest first" observable
        t2 = issue(self.control, self.user.token, self.pid, "jobs", description="second")
        t3 = issue(self.control, self.user.token, self.pid, "api", description="third")
        tokens = self.list_tokens()
        jtis = [t["jti"] for t in tokens]
        self.assertEqual(sorted(jtis), sorted([t1["jti"], t2["jti"], t3["jti"]]))
        self.assertEqual(jtis[-1], t1["jti"], "not newest first: %r" % tokens)
        created = [h.parse_time(t["created_at"]) for t in tokens]
        self.assertEqual(created, sorted(created, reverse=True), "not newest first: %r" % tokens)
        for t in tokens:
            self.assertRecord(t)
            for issued in (t1, t2, t3):
                self.assertNotIn(issued["token"], json.dumps(t))

        # one
        rec = token_record(self.control, self.user.token, self.pid, t2["jti"])
        self.assertEqual(rec["service"], "jobs")
        self.assertEqual(rec["description"], "second")
        resp = self.control.request("GET", tokens_path(self.pid, str(uuid.uuid4())), token=self.user.token)
        self.assertApiError(resp, 404, "Token not found")
        # a token of another project of the same owner is not found under this one
        other_project = api_project(self.control, self.user.token, slug=new_slug())
        resp = self.control.request("GET", tokens_path(other_project["id"], t1["jti"]), token=self.user.token)
        self.assertApiError(resp, 404, "Token not found")

        # revoke
        resp = self.control.request("POST", tokens_path(self.pid, t1["jti"], "/revoke"),
                                    {"reason": "leaked in CI logs"}, token=self.user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        rec = resp.json()
        self.assertRecord(rec)
        self.assertEqual(rec["jti"], t1["jti"])
        self.assertIs(rec["is_active"], False)
        self.assertRfc3339(rec["revoked_at"])
        self.assertLessEqual(abs(h.parse_time(rec["revoked_at"]) - time.time()), 60)
        self.assertEqual(rec["revocation_reason"], "leaked in CI logs")
        self.assertTrue(rec["revoked_by"], "revoked_by not set: %r" % rec)
        self.assertEqual(token_record(self.control, self.user.token, self.pid, t1["jti"]), rec)
        resp = self.control.request("POST", tokens_path(self.pid, t1["jti"], "/revoke"),
                                    {"reason": "again"}, token=self.user.token)
        self.assertApiError(resp, 404, "Token not found or not active")
        resp = self.control.request("POST", tokens_path(self.pid, str(uuid.uuid4()), "/revoke"), {},
                                    token=self.user.token)
        self.assertApiError(resp, 404, "Token not found or not active")
        # revoke without a body / without a reason
        resp = self.control.request("POST", tokens_path(self.pid, t3["jti"], "/revoke"), {},
                                    token=self.user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertIs(resp.json()["is_active"], False)

        active = [t["jti"] for t in self.list_tokens("?active=true")]
        self.assertEqual(active, [t2["jti"]])
        everything = {t["jti"]: t for t in self.list_tokens()}
        self.assertEqual(len(everything), 3)
        self.assertIs(everything[t1["jti"]]["is_active"], False)
        self.assertEqual(everything[t1["jti"]]["revocation_reason"], "leaked in CI logs")

    def test_audit_log(self):
        body = issue(self.control, self.user.token, self.pid, "api")
        resp = self.control.request("POST", tokens_path(self.pid, body["jti"], "/revoke"),
                                    {"reason": "rotation"}, token=self.user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        resp = self.control.request("GET", "/audit?limit=50", token=self.user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        events = resp.json()
        mine = [e for e in events if body["jti"] in json.dumps(e)]
        actions = [e.get("action") for e in mine]
        # ASSUMPTION: the actions are "token.issue" (or "token.create") and "token.revoke", and
        # the event names the jti (target_id or detail).
        self.assertTrue(any(a in ("token.issue", "token.create") for a in actions),
                        "no issue event for %s: %r" % (body["jti"], events[:6]))
        self.assertIn("token.revoke", actions, "no revoke event for %s: %r" % (body["jti"], events[:6]))
        self.assertEqual(len(mine), 2, mine)
        self.assertNotIn(body["token"], resp.text, "the token is in the audit log")
        # newest first: the revocation before the issue
        self.assertEqual(mine[0]["action"], "token.revoke", mine)

    def test_raw_token_not_stored(self):
        bodies = [issue(self.control, self.user.token, self.pid, "api") for _ in range(3)]
        data = self.control.database_bytes()
        for body in bodies:
            tok = body["token"]
            self.assertNotIn(tok.encode(), data, "the raw token is in the database")
            self.assertNotIn(tok.split(".")[2].encode(), data, "the token's signature is in the database")
            digest = hashlib.sha256(tok.encode()).digest()
            # ASSUMPTION: "only its SHA-256 is stored" -- as lower-case hex or as raw bytes
            self.assertTrue(digest.hex().encode() in data or digest in data,
                            "the token's SHA-256 is not in the database")

    def test_usage_report_endpoint(self):
        body = issue(self.control, self.user.token, self.pid, "api")
        report = {"tokens": [{"jti": body["jti"], "last_used_at": rfc3339(time.time() - 5)}]}
        resp = self.control.request("POST", "/internal/worker/token-usage", report)
        self.assertApiError(resp, 401)
        resp = self.control.request("POST", "/internal/worker/token-usage", report,
                                    headers={"x-worker-secret": "wrong-" + h.random_string(30)})
        self.assertApiError(resp, 401)
        self.assertIsNone(token_record(self.control, self.user.token, self.pid, body["jti"])["last_used_at"])
        resp = self.control.request("POST", "/internal/worker/token-usage", report,
                                    headers={"x-worker-secret": self.control.worker_secret})
        self.assertEqual(resp.status, 204, repr(resp))
        rec = token_record(self.control, self.user.token, self.pid, body["jti"])
        self.assertEqual(rec["last_used_at"], report["tokens"][0]["last_used_at"])


# =============================================================================================
# 4. JWKS


class JwksTest(GatewayTestCase):
    def setUp(self):
        self.control = start_control_plane()
        self.addCleanup(self.control.stop)
        self.user = h.register_user(self.control)
        self.project = api_project(self.control, self.user.token, slug=new_slug())
        put_service(self.control, self.user.token, self.project["id"], "api", ["http://127.0.0.1:4200"])

    def test_jwks_lists_the_signing_key(self):
        resp = self.control.request("GET", "/.well-known/jwks.json")  # no Authorization
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertIn("json", resp.headers.get("Content-Type", ""))
        self.assertIn("max-age=300", resp.headers.get("Cache-Control", ""), repr(resp))
        # the first key is created when the first token is issued
        self.assertEqual(resp.json(), {"keys": []})

        body = issue(self.control, self.user.token, self.project["id"], "api")
        resp = self.control.request("GET", "/.well-known/jwks.json")
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertIn("max-age=300", resp.headers.get("Cache-Control", ""), repr(resp))
        keys = resp.json()["keys"]
        self.assertEqual(len(keys), 1, keys)
        k = keys[0]
        self.assertEqual(k.get("kty"), "EC", k)
        self.assertEqual(k.get("crv"), "P-256", k)
        self.assertEqual(k.get("kid"), body["kid"], k)
        self.assertEqual(k.get("alg"), "ES256", k)
        self.assertEqual(k.get("use"), "sig", k)
        self.assertTrue(k.get("x") and k.get("y"), k)
        self.assertNotIn("d", k, "the private key is published")
        # a second token: same key
        issue(self.control, self.user.token, self.project["id"], "api")
        self.assertEqual([x["kid"] for x in jwks(self.control)["keys"]], [body["kid"]])

    def test_token_verifies_with_the_jwk(self):
        body = issue(self.control, self.user.token, self.project["id"], "api", expiresInDays=3)
        keys = {k["kid"]: k for k in jwks(self.control)["keys"]}
        self.assertIn(body["kid"], keys)
        jwk = keys[body["kid"]]
        claims = jwt.decode(body["token"], jwt.PyJWK(jwk).key, algorithms=["ES256"])
        self.assertEqual(claims["jti"], body["jti"])
        self.assertEqual(claims["service"], "api")
        claims = jwt.decode(body["token"], jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(jwk)),
                            algorithms=["ES256"])
        self.assertEqual(claims["project"], self.project["slug"])
        # and the check is real: a tampered token does not verify
        header_b64, _payload, sig = body["token"].split(".")
        forged = h.b64url_encode(json.dumps(dict(claims, service="admin")).encode())
        with self.assertRaises(jwt.InvalidSignatureError):
            jwt.decode(header_b64 + "." + forged + "." + sig, jwt.PyJWK(jwk).key, algorithms=["ES256"])


# =============================================================================================
# 5, 6, 10. The worker: routes, credentials, revocation, usage reports


class ServiceRoutingTest(GatewayTestCase):
    """One control plane and one worker following it, both with GATEWAY_JWT_AUDIENCE/ISSUER set
    (so aud/iss are issued and checked), WORKER_USAGE_REPORT_SEC=1, and an imported ES256 key
    (kid cls.kid) to mint tokens in python."""

    AUD = "ag-services-test"
    ISS = "ag-test-issuer"

    @classmethod
    def setUpClass(cls):
        cls.upstream = wh.Upstream()
        cls.addClassCleanup(cls.upstream.stop)
        cls.upstream2 = wh.Upstream()
        cls.addClassCleanup(cls.upstream2.stop)
        cls.jwt_env = {"GATEWAY_JWT_AUDIENCE": cls.AUD, "GATEWAY_JWT_ISSUER": cls.ISS}
        cls.control = start_control_plane(cls.jwt_env)
        cls.addClassCleanup(cls.control.stop)
        cls.user = h.register_user(cls.control)
        tok = cls.user.token
        up = cls.upstream.url
        cls.pa = api_project(cls.control, tok, slug=new_slug("a"), upstream=up + "/default")
        cls.pb = api_project(cls.control, tok, slug=new_slug("b"), upstream=up + "/default-b")
        cls.sa, cls.sb = cls.pa["slug"], cls.pb["slug"]
        put_service(cls.control, tok, cls.pa["id"], "api", [up])
        put_service(cls.control, tok, cls.pa["id"], "other", [up + "/otherbase"])
        put_service(cls.control, tok, cls.pb["id"], "api", [up])
        cls.ka = h.create_key(cls.control, tok, cls.pa["id"])
        cls.kb = h.create_key(cls.control, tok, cls.pb["id"])
        cls.ta = issue(cls.control, tok, cls.pa["id"], "api")
        cls.ta_other = issue(cls.control, tok, cls.pa["id"], "other")
        cls.tb = issue(cls.control, tok, cls.pb["id"], "api")
        cls.signing_kid = cls.ta["kid"]
        # an imported verify-only key for tokens minted here
        cls.tmp = tempfile.mkdtemp(prefix="ag-svc-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.py_key = ec_private_key()
        cls.kid = "py-es-" + h.random_string(8, string.ascii_lowercase)
        pem_path = os.path.join(cls.tmp, "py.pub.pem")
        write_file(pem_path, public_pem(cls.py_key))
        code, out, err = control_cli(cls.control, ["token", "keys", "import", "--kid", cls.kid,
                                                   "--alg", "ES256", "--public-key", pem_path])
        if code != 0:
            raise AssertionError("token keys import failed (%d):\n%s\n%s" % (code, out, err))
        cls.worker = start_stream_worker(cls.control, dict(cls.jwt_env, WORKER_USAGE_REPORT_SEC="1"))
        cls.addClassCleanup(cls.worker.stop)
        # the worker has the services, the signing key and the imported key
        for tok_, what in ((cls.ta["token"], "API-issued token"),
                           (cls.mint_ok(cls.sa, "api"), "python-minted token (imported key)")):
            _, elapsed, ok = poll_until(
                lambda: cls._status(cls.worker, "/%s/api/ready" % cls.sa, tok_), lambda s: s == 200,
                max(PROPAGATION_SEC, CLI_KEY_BOUND_SEC))
            if not ok:
                raise AssertionError("%s never accepted on its service route:\n%s"
                                     % (what, cls.worker.stderr[-3000:]))

    @staticmethod
    def _status(worker, path, tok):
        try:
            return worker.request("GET", path, headers={"Authorization": "Bearer " + tok}, timeout=5).status
        except (OSError, http.client.HTTPException):
            return None

    @classmethod
    def claims(cls, slug, svc, lifetime=3600, **over):
        base = {"aud": cls.AUD, "iss": cls.ISS}
        base.update(over)
        return token_claims(slug, svc, lifetime, **base)

    @classmethod
    def mint_ok(cls, slug, svc, **over):
        return mint(cls.py_key, "ES256", cls.kid, cls.claims(slug, svc, **over))

    def setUp(self):
        self.assertTrue(self.worker.alive(), "worker died:\n" + self.worker.stderr[-3000:])

    def tearDown(self):
        self.assertNotLogged(self.worker, self.ta["token"], self.ta_other["token"], self.tb["token"])

    # -- routing ---------------------------------------------------------------------------

    def test_prefix_is_stripped_and_gateway_headers_set(self):
        m = marker("pfx")
        rid = marker("rid")
        resp = self.call(self.worker, "/%s/api/rest/of/path?q=1&m=%s" % (self.sa, m), token=self.ta["token"],
                         rid=rid, headers={"User-Agent": "ag-test"})
        self.assertProxied(resp)
        seen = self.upstream.matching(m)
        self.assertEqual(len(seen), 1, seen)
        rec = seen[0]
        hd = rec["header_dict"]
        self.assertEqual(rec["path"], "/rest/of/path?q=1&m=" + m)
        self.assertEqual(hd.get("x-gateway-project"), self.pa["id"], hd)
        self.assertEqual(hd.get("x-gateway-service"), "api", hd)
        self.assertEqual(hd.get("x-gateway-jti"), self.ta["jti"], hd)
        self.assertNotIn("authorization", hd, "the gateway credential was forwarded")
        self.assertNotIn("x-gateway-key-id", hd, hd)
        self.assertNotIn(self.ta["token"], json.dumps(rec["headers"]))
        entry = self.assertLogged(self.worker, rid, "token request")
        self.assertEqual(entry.get("auth"), "jwt", entry)
        self.assertEqual(entry.get("jti"), self.ta["jti"], entry)
        self.assertEqual(entry.get("service"), "api", entry)
        self.assertEqual(entry.get("project_id"), self.pa["id"], entry)
        self.assertEqual(entry.get("decision"), "allow", entry)
        self.assertEqual(entry.get("status"), 200, entry)
        # the API-issued token carries aud/iss when they are configured
        _, claims = unverified(self.ta["token"])
        self.assertEqual(claims.get("aud"), self.AUD, claims)
        self.assertEqual(claims.get("iss"), self.ISS, claims)

    def test_service_root_and_base_path(self):
        m = marker("root")
        cases = (("/%s/api?%s" % (self.sa, m), "/?" + m, self.ta),
                 ("/%s/api/?%s" % (self.sa, m), "/?" + m, self.ta),
                 ("/%s/api/x/%%20y?z=%s" % (self.sa, m), "/x/%20y?z=" + m, self.ta),
                 ("/%s/other/flows?%s" % (self.sa, m), "/otherbase/flows?" + m, self.ta_other),
                 ("/%s/other?%s" % (self.sa, m), "/otherbase/?" + m, self.ta_other))
        for sent, _expected, t in cases:
            self.assertProxied(self.call(self.worker, sent, token=t["token"]))
        paths = [r["path"] for r in self.upstream.matching(m)]
        for _sent, expected, _t in cases[:4]:
            self.assertIn(expected, paths)
        # ASSUMPTION: the root of a service with a base path is the base path plus "/" (or the
        # bare base path).
        self.assertTrue("/otherbase/?" + m in paths or "/otherbase?" + m in paths, paths)
        m2 = marker("bare")
        self.assertProxied(self.call(self.worker, "/%s/api" % self.sa, token=self.ta["token"],
                                     headers={"X-Mark": m2}))
        bare = [r for r in self.upstream.requests if r["header_dict"].get("x-mark") == m2]
        self.assertEqual([r["path"] for r in bare], ["/"])

    def test_missing_credentials(self):
        m = marker("nocred")
        resp = self.call(self.worker, "/%s/api/x?%s" % (self.sa, m))
        self.assertWorkerError(resp, 401, CREDENTIALS_MISSING)
        self.assertEqual(self.upstream.matching(m), [])

    def test_invalid_tokens_are_refused(self):
        now = int(time.time())
        route = "/%s/api/x" % self.sa
        good = self.ta["token"]
        _, good_claims = unverified(good)
        other_ec = ec_private_key()
        jwk = {k["kid"]: k for k in jwks(self.control)["keys"]}[self.signing_kid]
        pem = jwk_public_pem(jwk)
        hdr_b64, payload_b64, sig = good.split(".")
        tampered_payload = h.b64url_encode(json.dumps(dict(good_claims, service="other")).encode())
        big = self.claims(self.sa, "api", pad="")
        base_len = len(mint(self.py_key, "ES256", self.kid, big))
        big["pad"] = "x" * int((5000 - base_len) * 3 / 4)
        cases = [
            ("garbage", "garbage-" + h.random_string(30), None),
            ("three garbage segments", "abc.def.ghi", None),
            ("truncated signature", good[:-12], None),
            ("two segments", hdr_b64 + "." + payload_b64, None),
            ("payload tampered", hdr_b64 + "." + tampered_payload + "." + sig, "token_signature"),
            ("re-signed with another key, same kid", mint(other_ec, "ES256", self.signing_kid, good_claims),
             "token_signature"),
            ("alg none", h.jwt_encode(good_claims, None, "none", header={"kid": self.signing_kid}),
             "token_algorithm"),
            ("alg None", h.jwt_encode(good_claims, None, "none", header={"alg": "None", "kid": self.signing_kid}),
             "token_algorithm"),
            # ASSUMPTION: an HS256 header on a worker without GATEWAY_JWT_SECRET is refused as
            # token_algorithm (the kid names an ES256 key) or token_unknown_key (no HMAC key).
            ("HS256 with the public PEM as secret", h.jwt_encode(good_claims, pem, "HS256",
                                                                 header={"kid": self.signing_kid}),
             ("token_algorithm", "token_unknown_key")),
            ("HS256 with the stripped PEM as secret", h.jwt_encode(good_claims, pem.strip(), "HS256",
                                                                   header={"kid": self.signing_kid}),
             ("token_algorithm", "token_unknown_key")),
            ("ES384 header", h.jwt_encode(good_claims, "x" * 32, "HS384", header={"alg": "ES384",
                                                                                  "kid": self.signing_kid}),
             "token_algorithm"),
            ("expired (imported key)", self.mint_ok(self.sa, "api", iat=now - 7200, exp=now - 120),
             "token_expired"),
            ("future iat", self.mint_ok(self.sa, "api", iat=now + 600, exp=now + 4000), None),
            ("future nbf", self.mint_ok(self.sa, "api", nbf=now + 600), None),
            ("wrong aud", self.mint_ok(self.sa, "api", aud="someone-else"), None),
            # ASSUMPTION: with GATEWAY_JWT_AUDIENCE / GATEWAY_JWT_ISSUER set, the claim is
            # required ("checked as configured"), as standard JWT libraries do.
            ("missing aud", self.mint_ok(self.sa, "api", aud=None), None),
            ("wrong iss", self.mint_ok(self.sa, "api", iss="evil"), None),
            ("missing iss", self.mint_ok(self.sa, "api", iss=None), None),
            ("unknown kid", mint(self.py_key, "ES256", "no-such-kid", self.claims(self.sa, "api")),
             "token_unknown_key"),
            ("no kid", mint(self.py_key, "ES256", None, self.claims(self.sa, "api")), None),
            ("missing jti", self.mint_ok(self.sa, "api", jti=None), None),
            ("missing service", self.mint_ok(self.sa, "api", service=None), None),
            ("missing exp", self.mint_ok(self.sa, "api", exp=None), None),
            ("missing iat", self.mint_ok(self.sa, "api", iat=None), None),
            ("oversized (5000 bytes)", mint(self.py_key, "ES256", self.kid, big), None),
        ]
        self.assertTrue(4990 <= len(cases[-1][1]) <= 5010, len(cases[-1][1]))
        for what, tok, reason in cases:
            with self.subTest(what):
                self.assertInvalidToken(self.worker, [self.upstream, self.upstream2], route, tok, reason, what)
                self.assertNotLogged(self.worker, tok)

    def test_leeway_and_size_limit(self):
        now = int(time.time())
        # expired 10 s ago: inside the 30 s leeway
        tok = self.mint_ok(self.sa, "api", iat=now - 3600, exp=now - 10)
        self.assertProxied(self.call(self.worker, "/%s/api/leeway" % self.sa, token=tok))
        # issued 10 s "in the future" (clock skew): inside the leeway
        tok = self.mint_ok(self.sa, "api", iat=now + 10)
        self.assertProxied(self.call(self.worker, "/%s/api/skew" % self.sa, token=tok))
        # a large but allowed token (<= 4096 bytes)
        claims = self.claims(self.sa, "api", pad="")
        base_len = len(mint(self.py_key, "ES256", self.kid, claims))
        claims["pad"] = "x" * int((4000 - base_len) * 3 / 4)
        tok = mint(self.py_key, "ES256", self.kid, claims)
        self.assertLessEqual(len(tok), 4096)
        self.assertGreater(len(tok), 3800)
        self.assertProxied(self.call(self.worker, "/%s/api/big-token" % self.sa, token=tok))

    def test_python_minted_token_accepted(self):
        claims = self.claims(self.sa, "other")
        tok = mint(self.py_key, "ES256", self.kid, claims)
        m = marker("py")
        self.assertProxied(self.call(self.worker, "/%s/other/p?%s" % (self.sa, m), token=tok))
        rec = self.upstream.matching(m)
        self.assertEqual(len(rec), 1)
        self.assertEqual(rec[0]["path"], "/otherbase/p?" + m)
        self.assertEqual(rec[0]["header_dict"].get("x-gateway-jti"), claims["jti"])
        self.assertEqual(rec[0]["header_dict"].get("x-gateway-service"), "other")
        self.assertEqual(rec[0]["header_dict"].get("x-gateway-project"), self.pa["id"])
        self.assertNotLogged(self.worker, tok)

    def test_token_for_another_route_is_forbidden(self):
        cases = (("another service", "/%s/other/x" % self.sa, self.ta["token"]),
                 ("another service 2", "/%s/api/x" % self.sa, self.ta_other["token"]),
                 ("another project", "/%s/api/x" % self.sa, self.tb["token"]),
                 ("another project 2", "/%s/api/x" % self.sb, self.ta["token"]),
                 ("python token for another project", "/%s/api/x" % self.sb, self.mint_ok(self.sa, "api")))
        for what, path, tok in cases:
            with self.subTest(what):
                m = marker("fb")
                rid = marker("rid")
                resp = self.call(self.worker, path + "?" + m, token=tok, rid=rid)
                self.assertWorkerError(resp, 403, NOT_FOR_ROUTE)
                self.assertEqual(self.upstream.matching(m), [])
                entry = self.assertLogged(self.worker, rid, what)
                self.assertEqual(entry.get("status"), 403, entry)
                self.assertEqual(entry.get("decision"), "block", entry)

    def test_token_on_non_service_path_is_forbidden(self):
        for path in ("/plain/path", "/%s/nosuch/x" % self.sa, "/%s/apix/y" % self.sa, "/%s" % self.sa,
                     "/api/%s/x" % self.sa):
            with self.subTest(path=path):
                m = marker("ns")
                resp = self.call(self.worker, path + "?" + m, token=self.ta["token"])
                self.assertWorkerError(resp, 403, NOT_FOR_ROUTE)
                self.assertEqual(self.upstream.matching(m), [])

    def test_api_key_on_service_route(self):
        m = marker("key")
        rid = marker("rid")
        resp = self.call(self.worker, "/%s/api/k/1?%s" % (self.sa, m), key=self.ka["api_key"], rid=rid)
        self.assertProxied(resp)
        rec = self.upstream.matching(m)
        self.assertEqual(len(rec), 1)
        hd = rec[0]["header_dict"]
        self.assertEqual(rec[0]["path"], "/k/1?" + m)
        self.assertEqual(hd.get("x-gateway-project"), self.pa["id"])
        self.assertEqual(hd.get("x-gateway-service"), "api")
        self.assertEqual(hd.get("x-gateway-key-id"), self.ka["id"])
        self.assertNotIn("x-gateway-jti", hd)
        self.assertNotIn("x-api-key", hd)
        entry = self.assertLogged(self.worker, rid, "api-key request")
        self.assertEqual(entry.get("auth"), "api_key", entry)
        self.assertEqual(entry.get("service"), "api", entry)
        self.assertEqual(entry.get("key_id"), self.ka["id"], entry)
        self.assertNotLogged(self.worker, self.ka["api_key"])
        # the same key on the project's default upstream, as before
        m = marker("dflt")
        self.assertProxied(self.call(self.worker, "/%s/nosuch/z?%s" % (self.sa, m), key=self.ka["api_key"]))
        self.assertEqual([r["path"] for r in self.upstream.matching(m)],
                         ["/default/%s/nosuch/z?%s" % (self.sa, m)])

    def test_api_key_of_another_project_is_forbidden(self):
        m = marker("xkey")
        resp = self.call(self.worker, "/%s/api/x?%s" % (self.sa, m), key=self.kb["api_key"])
        self.assertWorkerError(resp, 403, KEY_NOT_FOR_ROUTE)
        self.assertEqual(self.upstream.matching(m), [])
        # an unknown key is still 401
        unknown, _ = wh.make_key()
        resp = self.call(self.worker, "/%s/api/x?%s" % (self.sa, m), key=unknown)
        self.assertWorkerError(resp, 401)
        self.assertEqual(self.upstream.matching(m), [])

    def test_api_key_wins_and_authorization_is_forwarded(self):
        backend_auth = "Bearer backend-" + h.random_string(24)
        # a normal (non-service) route: the Authorization header is the backend's business
        m = marker("fwd")
        resp = self.call(self.worker, "/plain/x?" + m, key=self.ka["api_key"],
                         headers={"Authorization": backend_auth})
        self.assertProxied(resp)
        rec = self.upstream.matching(m)
        self.assertEqual(len(rec), 1)
        self.assertEqual(rec[0]["path"], "/default/plain/x?" + m)
        self.assertEqual(rec[0]["header_dict"].get("authorization"), backend_auth)
        self.assertNotIn("x-api-key", rec[0]["header_dict"])
        # a service route with a key: the key authenticates, Authorization is forwarded unchanged
        # (even when it holds something that is not a valid token)
        m = marker("fwd2")
        resp = self.call(self.worker, "/%s/api/x?%s" % (self.sa, m), key=self.ka["api_key"],
                         headers={"Authorization": backend_auth})
        self.assertProxied(resp)
        rec = self.upstream.matching(m)
        self.assertEqual(len(rec), 1)
        self.assertEqual(rec[0]["header_dict"].get("authorization"), backend_auth)
        self.assertEqual(rec[0]["header_dict"].get("x-gateway-key-id"), self.ka["id"])
        # ASSUMPTION: "X-API-Key wins when present": an invalid key next to a valid token is an
        # API-key failure (401), the token is not tried.
        bad_key, _ = wh.make_key()
        m = marker("fwd3")
        resp = self.call(self.worker, "/%s/api/x?%s" % (self.sa, m), key=bad_key, token=self.ta["token"])
        self.assertWorkerError(resp, 401)
        self.assertEqual(self.upstream.matching(m), [])

    def test_spoofed_gateway_headers_are_replaced(self):
        spoof = {"X-Gateway-Project": "spoofed", "X-Gateway-Service": "spoofed",
                 "X-Gateway-JTI": "spoofed", "X-Gateway-Key-Id": "spoofed"}
        m = marker("spf")
        self.assertProxied(self.call(self.worker, "/%s/api/s?%s" % (self.sa, m), token=self.ta["token"],
                                     headers=spoof))
        m2 = marker("spf2")
        self.assertProxied(self.call(self.worker, "/%s/api/s?%s" % (self.sa, m2), key=self.ka["api_key"],
                                     headers=spoof))
        a = self.upstream.matching(m)[0]["header_dict"]
        b = self.upstream.matching(m2)[0]["header_dict"]
        self.assertEqual(a.get("x-gateway-project"), self.pa["id"], a)
        self.assertEqual(a.get("x-gateway-service"), "api", a)
        self.assertEqual(a.get("x-gateway-jti"), self.ta["jti"], a)
        self.assertNotIn("spoofed", a.get("x-gateway-key-id", ""), a)
        self.assertEqual(b.get("x-gateway-key-id"), self.ka["id"], b)
        self.assertEqual(b.get("x-gateway-service"), "api", b)
        self.assertNotIn("spoofed", b.get("x-gateway-jti", ""), b)

    def test_rate_limit_per_token(self):
        tok = self.user.token
        p = api_project(self.control, tok, slug=new_slug("rl"), upstream=self.upstream.url + "/d",
                        rate_limit={"requests_per_minute": 60, "burst": 1})
        put_service(self.control, tok, p["id"], "api", [self.upstream.url])
        t1 = issue(self.control, tok, p["id"], "api")
        t2 = issue(self.control, tok, p["id"], "api")
        path = "/%s/api/rl" % p["slug"]
        # wait for the service with a third token (python-minted): its budget is its own
        probe = self.mint_ok(p["slug"], "api")
        self.wait_status(lambda: self.call(self.worker, path, token=probe), 200, PROPAGATION_SEC,
                         "new project's service")
        statuses = [self.call(self.worker, path, token=t1["token"]).status for _ in range(3)]
        self.assertEqual(statuses[:2], [200, 200], statuses)
        resp = self.call(self.worker, path, token=t1["token"])
        self.assertWorkerError(resp, 429)
        self.assertIn("Retry-After", resp.headers, repr(resp))
        # another token of the same project has its own budget
        self.assertProxied(self.call(self.worker, path, token=t2["token"]))

    def test_service_changes_reach_the_worker(self):
        tok = self.user.token
        name = "mv" + h.random_string(6, string.ascii_lowercase)
        put_service(self.control, tok, self.pa["id"], name, [self.upstream.url + "/v1"])
        t = issue(self.control, tok, self.pa["id"], name)
        path = "/%s/%s/x" % (self.sa, name)
        self.wait_status(lambda: self.call(self.worker, path, token=t["token"]), 200, PROPAGATION_SEC,
                         "new service")
        # replaced: traffic moves to the new target
        resp = self.control.request("PUT", services_path(self.pa["id"], name),
                                    {"targets": [self.upstream2.url + "/v2"]}, token=tok)
        self.assertEqual(resp.status, 200, repr(resp))

        def moved():
            m = marker("mv")
            self.call(self.worker, path + "?" + m, token=t["token"])
            return [r["path"] for r in self.upstream2.matching(m)]
        got, _, ok = poll_until(moved, lambda p: bool(p), PROPAGATION_SEC)
        self.assertTrue(ok, "replaced service still goes to the old target")
        self.assertEqual(got[0].split("?")[0], "/v2/x")
        # deleted: the route stops ("at once": within the change stream's bound)
        resp = self.control.request("DELETE", services_path(self.pa["id"], name), token=tok)
        self.assertEqual(resp.status, 204, repr(resp))
        resp, elapsed = self.wait_status(lambda: self.call(self.worker, path, token=t["token"]), 403,
                                         PROPAGATION_SEC, "deleted service")
        self.assertLess(elapsed, REVOKE_BOUND_SEC + 0.5, "deleted service still routed after %.2fs" % elapsed)
        self.assertWorkerError(resp, 403, NOT_FOR_ROUTE)
        m = marker("gone")
        self.assertEqual(self.call(self.worker, path + "?" + m, token=t["token"]).status, 403)
        self.assertEqual(self.upstream.matching(m) + self.upstream2.matching(m), [])

    # -- revocation ------------------------------------------------------------------------

    def test_revocation_through_the_api(self):
        tok = self.user.token
        t = issue(self.control, tok, self.pa["id"], "api")
        keep = issue(self.control, tok, self.pa["id"], "api")
        path = "/%s/api/rv" % self.sa
        self.wait_status(lambda: self.call(self.worker, path, token=t["token"]), 200, PROPAGATION_SEC, "token")
        for _ in range(6):  # in the verified-token caches of both threads, most likely
            self.assertProxied(self.call(self.worker, path, token=t["token"]))
        resp = self.control.request("POST", tokens_path(self.pa["id"], t["jti"], "/revoke"),
                                    {"reason": "test"}, token=tok)
        self.assertEqual(resp.status, 200, repr(resp))
        t0 = time.monotonic()
        got, elapsed, ok = poll_until(lambda: self.status_of(self.worker, path, token=t["token"]),
                                      lambda s: s == 401, 5.0, 0.01)
        self.assertTrue(ok, "revoked token still accepted after %.2fs (status %r)" % (elapsed, got))
        sys.stderr.write("\n    [measured] API revocation -> first 401: %.1f ms\n"
                         % ((time.monotonic() - t0) * 1000))
        self.assertLess(elapsed, REVOKE_BOUND_SEC, "revocation took %.2fs" % elapsed)
        for _ in range(4):  # never accepted again, whichever thread answers
            self.assertInvalidToken(self.worker, [self.upstream], path, t["token"], "token_revoked", "revoked")
        self.assertProxied(self.call(self.worker, path, token=keep["token"]))
        # a worker started now gets the revocation in its first document
        w2 = start_stream_worker(self.control, dict(self.jwt_env))
        self.addCleanup(w2.stop)
        self.wait_status(lambda: self.call(w2, path, token=keep["token"]), 200, PROPAGATION_SEC,
                         "fresh worker, other token")
        self.assertInvalidToken(w2, [self.upstream], path, t["token"], "token_revoked", "fresh worker")

    def test_revocation_through_the_cli(self):
        t = issue(self.control, self.user.token, self.pa["id"], "api")
        path = "/%s/api/cli" % self.sa
        self.wait_status(lambda: self.call(self.worker, path, token=t["token"]), 200, PROPAGATION_SEC, "token")
        for _ in range(4):
            self.assertProxied(self.call(self.worker, path, token=t["token"]))
        code, out, err = control_cli(self.control, ["token", "revoke", t["jti"], "--reason", "r"])
        self.assertEqual(code, 0, out + err)
        got, elapsed, ok = poll_until(lambda: self.status_of(self.worker, path, token=t["token"]),
                                      lambda s: s == 401, CLI_REVOKE_BOUND_SEC + 5, 0.02)
        self.assertTrue(ok, "CLI-revoked token still accepted after %.2fs (status %r)" % (elapsed, got))
        self.assertLess(elapsed, CLI_REVOKE_BOUND_SEC, "CLI revocation took %.2fs" % elapsed)
        self.assertInvalidToken(self.worker, [self.upstream], path, t["token"], "token_revoked", "CLI-revoked")
        rec = token_record(self.control, self.user.token, self.pa["id"], t["jti"])
        self.assertIs(rec["is_active"], False)
        self.assertEqual(rec["revocation_reason"], "r")

    def test_cached_token_still_expires(self):
        # A worker with a 1 s leeway; a token that expires in 2 s, used (and cached) first.
        w = start_stream_worker(self.control, dict(self.jwt_env, GATEWAY_JWT_LEEWAY_SEC="1"))
        self.addCleanup(w.stop)
        now = int(time.time())
        exp = now + 2
        tok = self.mint_ok(self.sa, "api", iat=now, exp=exp)
        path = "/%s/api/exp" % self.sa
        for _ in range(4):
            self.assertProxied(self.call(w, path, token=tok))
        time.sleep(max(0.0, exp + 1 + 0.6 - time.time()))
        self.assertInvalidToken(w, [], path, tok, "token_expired", "cached, then expired")

    # -- usage ------------------------------------------------------------------------------

    def test_last_used_at_reported(self):
        used = issue(self.control, self.user.token, self.pa["id"], "api")
        unused = issue(self.control, self.user.token, self.pa["id"], "api")
        self.assertIsNone(token_record(self.control, self.user.token, self.pa["id"], used["jti"])["last_used_at"])
        path = "/%s/api/use" % self.sa
        self.wait_status(lambda: self.call(self.worker, path, token=used["token"]), 200, PROPAGATION_SEC, "token")
        t_use = time.time()
        for _ in range(3):
            self.assertProxied(self.call(self.worker, path, token=used["token"]))
        rec, elapsed, ok = poll_until(
            lambda: token_record(self.control, self.user.token, self.pa["id"], used["jti"]),
            lambda r: r.get("last_used_at") is not None, 6.0, 0.2)
        self.assertTrue(ok, "last_used_at still null after %.1fs (WORKER_USAGE_REPORT_SEC=1)" % elapsed)
        self.assertRfc3339(rec["last_used_at"])
        self.assertLessEqual(abs(h.parse_time(rec["last_used_at"]) - t_use), 10, rec)
        self.assertIsNone(token_record(self.control, self.user.token, self.pa["id"], unused["jti"])["last_used_at"])


# =============================================================================================
# 7. Interoperability: HS256 with a shared secret


class Hs256InteropTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.secret = "hs-" + h.random_string(45)
        cls.jwt_env = {"GATEWAY_JWT_ALG": "HS256", "GATEWAY_JWT_SECRET": cls.secret}
        cls.upstream = wh.Upstream()
        cls.addClassCleanup(cls.upstream.stop)
        cls.control = start_control_plane(cls.jwt_env)
        cls.addClassCleanup(cls.control.stop)
        cls.user = h.register_user(cls.control)
        cls.project = api_project(cls.control, cls.user.token, slug=new_slug("hs"))
        cls.slug = cls.project["slug"]
        put_service(cls.control, cls.user.token, cls.project["id"], "api", [cls.upstream.url])
        cls.worker = start_stream_worker(cls.control, dict(cls.jwt_env))
        cls.addClassCleanup(cls.worker.stop)
        cls.path = "/%s/api/hs" % cls.slug

    def tearDown(self):
        self.assertNotLogged(self.worker, self.secret)

    def test_api_token_verifies_with_pyjwt_and_worker(self):
        body = issue(self.control, self.user.token, self.project["id"], "api")
        self.assertEqual(body["alg"], "HS256")
        self.assertIsNone(body.get("kid"), "HS256 tokens have no kid: %r" % body)
        header, _ = unverified(body["token"])
        self.assertEqual(header.get("alg"), "HS256")
        self.assertNotIn("kid", header)
        claims = jwt.decode(body["token"], self.secret, algorithms=["HS256"])
        self.assertEqual(claims["jti"], body["jti"])
        self.assertEqual(claims["project"], self.slug)
        self.assertEqual(claims["service"], "api")
        self.assertEqual(claims["exp"] - claims["iat"], 90 * DAY)
        with self.assertRaises(jwt.InvalidSignatureError):
            jwt.decode(body["token"], "x" + self.secret, algorithms=["HS256"])
        rec = token_record(self.control, self.user.token, self.project["id"], body["jti"])
        self.assertEqual(rec["alg"], "HS256")
        self.assertIsNone(rec["kid"])
        m = marker("hs")
        self.wait_status(lambda: self.call(self.worker, self.path, token=body["token"]), 200,
                         PROPAGATION_SEC, "API-issued HS256 token")
        self.assertProxied(self.call(self.worker, self.path + "?" + m, token=body["token"]))
        self.assertEqual(self.upstream.matching(m)[0]["header_dict"].get("x-gateway-jti"), body["jti"])

    def test_pyjwt_token_accepted(self):
        claims = token_claims(self.slug, "api")
        tok = jwt.encode(claims, self.secret, algorithm="HS256")
        m = marker("pyhs")
        resp, _ = self.wait_status(lambda: self.call(self.worker, self.path + "?" + m, token=tok), 200,
                                   PROPAGATION_SEC, "python HS256 token")
        self.assertProxied(resp)
        rec = self.upstream.matching(m)
        self.assertTrue(rec)
        self.assertEqual(rec[-1]["header_dict"].get("x-gateway-jti"), claims["jti"])
        self.assertEqual(rec[-1]["header_dict"].get("x-gateway-project"), self.project["id"])

    def test_wrong_secret_and_other_algorithms_refused(self):
        good = jwt.encode(token_claims(self.slug, "api"), self.secret, algorithm="HS256")
        self.wait_status(lambda: self.call(self.worker, self.path, token=good), 200, PROPAGATION_SEC,
                         "python HS256 token")
        claims = token_claims(self.slug, "api")
        self.assertInvalidToken(self.worker, [self.upstream], self.path,
                                jwt.encode(claims, "other-" + h.random_string(40), algorithm="HS256"),
                                "token_signature", "wrong secret")
        self.assertInvalidToken(self.worker, [self.upstream], self.path,
                                h.jwt_encode(claims, self.secret, "HS512"), "token_algorithm", "HS512")
        self.assertInvalidToken(self.worker, [self.upstream], self.path,
                                h.jwt_encode(claims, None, "none"), "token_algorithm", "alg none")

    def test_secret_never_published(self):
        issue(self.control, self.user.token, self.project["id"], "api")
        doc = jwks(self.control)
        self.assertEqual(doc, {"keys": []}, "HS256: no public keys to publish")
        self.assertNotIn(self.secret, json.dumps(doc))
        cfg = self.control.worker_config()
        self.assertEqual(cfg.status, 200, repr(cfg))
        self.assertNotIn(self.secret, cfg.text, "the HMAC secret travels over the change stream")
        self.assertNotIn(self.secret, self.control.logs)

    def test_worker_without_the_secret_refuses(self):
        w = start_stream_worker(self.control, {"GATEWAY_JWT_ALG": "HS256"})
        self.addCleanup(w.stop)
        key = h.create_key(self.control, self.user.token, self.project["id"])
        # the worker has the config (the key works on the service route) ...
        self.wait_status(lambda: self.call(w, self.path, key=key["api_key"]), 200, PROPAGATION_SEC,
                         "API key on the service route")
        # ... but cannot verify HS256 tokens
        tok = jwt.encode(token_claims(self.slug, "api"), self.secret, algorithm="HS256")
        self.assertInvalidToken(w, [self.upstream], self.path, tok, None, "HS256 without the secret")

    def test_short_secret_refused_in_production(self):
        tmp = tempfile.mkdtemp(prefix="ag-hs-")
        self.addCleanup(shutil.rmtree, tmp, True)
        env = {"ENV": "production", "DATABASE_URL": "sqlite:///" + os.path.join(tmp, "ag.db"),
               "GATEWAY_JWT_ALG": "HS256", "GATEWAY_JWT_SECRET": h.random_string(31),
               "GATEWAY_JWT_AUDIENCE": None, "GATEWAY_JWT_ISSUER": None}
        try:
            code, out = h.run_binary(["control", "--listen", "127.0.0.1:0"], env, cwd=tmp, timeout=8)
        except subprocess.TimeoutExpired:
            self.fail("control started in production with a 31-character GATEWAY_JWT_SECRET")
        self.assertNotEqual(code, 0, out)
        self.assertIn("GATEWAY_JWT_SECRET", out)


# =============================================================================================
# 7. Interoperability: imported keys, rotation, retirement


class KeyImportRotationTest(GatewayTestCase):
    # control-plane environment per test (default: none of the GATEWAY_JWT_* variables)
    CONTROL_ENV = {"test_eddsa_signing_and_rotation": {"GATEWAY_JWT_ALG": "EdDSA"}}

    def setUp(self):
        self.upstream = wh.Upstream()
        self.addCleanup(self.upstream.stop)
        self.tmp = tempfile.mkdtemp(prefix="ag-keys-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.control = start_control_plane(self.CONTROL_ENV.get(self._testMethodName))
        self.addCleanup(self.control.stop)
        self.user = h.register_user(self.control)
        self.project = api_project(self.control, self.user.token, slug=new_slug("k"))
        self.slug = self.project["slug"]
        put_service(self.control, self.user.token, self.project["id"], "api", [self.upstream.url])
        self.worker = start_stream_worker(self.control)
        self.addCleanup(self.worker.stop)
        self.path = "/%s/api/k" % self.slug

    def cli(self, *args):
        code, out, err = control_cli(self.control, list(args))
        self.assertEqual(code, 0, "%r failed (%d):\n%s\n%s" % (args, code, out, err))
        return out + err

    def import_key(self, kid, alg, private_key):
        path = os.path.join(self.tmp, kid + ".pub.pem")
        write_file(path, public_pem(private_key))
        return self.cli("token", "keys", "import", "--kid", kid, "--alg", alg, "--public-key", path)

    def wait_accepted(self, tok, what, timeout=CLI_KEY_BOUND_SEC):
        resp, _ = self.wait_status(lambda: self.call(self.worker, self.path, token=tok), 200, timeout, what)
        self.assertProxied(resp)

    def test_imported_es256_and_eddsa_keys(self):
        ec_key, ed_key = ec_private_key(), ed_private_key()
        k1 = "imp-es-" + h.random_string(6, string.ascii_lowercase)
        k2 = "imp-ed-" + h.random_string(6, string.ascii_lowercase)
        self.import_key(k1, "ES256", ec_key)
        self.import_key(k2, "EdDSA", ed_key)
        es_claims = token_claims(self.slug, "api")
        es_tok = mint(ec_key, "ES256", k1, es_claims)
        ed_tok = mint(ed_key, "EdDSA", k2, token_claims(self.slug, "api"))
        self.wait_accepted(es_tok, "python ES256 token (imported key)")
        self.wait_accepted(ed_tok, "python EdDSA token (imported key)")
        m = marker("imp")
        self.assertProxied(self.call(self.worker, self.path + "?" + m, token=es_tok))
        self.assertEqual(self.upstream.matching(m)[0]["header_dict"].get("x-gateway-jti"), es_claims["jti"])
        # the header's alg must be the key's
        self.assertInvalidToken(self.worker, [self.upstream], self.path,
                                mint(ec_key, "ES256", k2, token_claims(self.slug, "api")),
                                "token_algorithm", "ES256 header, EdDSA key")
        self.assertInvalidToken(self.worker, [self.upstream], self.path,
                                mint(ed_key, "EdDSA", k1, token_claims(self.slug, "api")),
                                "token_algorithm", "EdDSA header, ES256 key")
        # signed by another key under an imported kid
        self.assertInvalidToken(self.worker, [self.upstream], self.path,
                                mint(ed_private_key(), "EdDSA", k2, token_claims(self.slug, "api")),
                                "token_signature", "EdDSA, wrong key")
        # listed by the CLI and (ASSUMPTION: imported keys are "keys not retired") in the JWKS
        out = self.cli("token", "keys", "list")
        self.assertIn(k1, out)
        self.assertIn(k2, out)
        keys = {k["kid"]: k for k in jwks(self.control)["keys"]}
        self.assertIn(k1, keys)
        self.assertIn(k2, keys)
        self.assertEqual((keys[k1]["kty"], keys[k1]["crv"], keys[k1]["alg"]), ("EC", "P-256", "ES256"))
        self.assertEqual((keys[k2]["kty"], keys[k2]["crv"], keys[k2]["alg"]), ("OKP", "Ed25519", "EdDSA"))
        self.assertEqual(keys[k2].get("use"), "sig")
        # the published JWKs are the imported public keys
        jwt.decode(ed_tok, jwt.PyJWK(keys[k2]).key, algorithms=["EdDSA"])
        jwt.decode(es_tok, jwt.PyJWK(keys[k1]).key, algorithms=["ES256"])

    def test_import_rejects_bad_input(self):
        bad = os.path.join(self.tmp, "bad.pem")
        write_file(bad, b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
        code, out, err = control_cli(self.control, ["token", "keys", "import", "--kid", "bad1",
                                                    "--alg", "ES256", "--public-key", bad])
        self.assertNotEqual(code, 0, out + err)
        ed = os.path.join(self.tmp, "ed.pem")
        write_file(ed, public_pem(ed_private_key()))
        code, out, err = control_cli(self.control, ["token", "keys", "import", "--kid", "bad2",
                                                    "--alg", "ES256", "--public-key", ed])
        self.assertNotEqual(code, 0, "an Ed25519 key imported as ES256: " + out + err)
        code, out, err = control_cli(self.control, ["token", "keys", "import", "--kid", "bad3",
                                                    "--alg", "RS256", "--public-key", ed])
        self.assertNotEqual(code, 0, out + err)
        kids = [k["kid"] for k in jwks(self.control)["keys"]]
        for kid in ("bad1", "bad2", "bad3"):
            self.assertNotIn(kid, kids)

    def test_rotate_then_retire(self):
        t1 = issue(self.control, self.user.token, self.project["id"], "api")
        old = t1["kid"]
        self.wait_accepted(t1["token"], "first token", PROPAGATION_SEC)
        self.cli("token", "keys", "rotate", "--alg", "ES256")
        t2, _, ok = poll_until(lambda: issue(self.control, self.user.token, self.project["id"], "api"),
                               lambda b: b["kid"] != old, 3.0, 0.2)
        self.assertTrue(ok, "tokens still signed with %s after rotate" % old)
        new = t2["kid"]
        self.assertEqual(t2["alg"], "ES256")
        self.assertEqual(unverified(t2["token"])[0].get("kid"), new)
        self.wait_accepted(t2["token"], "token of the new key")
        self.assertProxied(self.call(self.worker, self.path, token=t1["token"]))  # old keeps verifying
        kids = [k["kid"] for k in jwks(self.control)["keys"]]
        self.assertIn(old, kids)
        self.assertIn(new, kids)
        out = self.cli("token", "keys", "list")
        self.assertIn(old, out)
        self.assertIn(new, out)

        self.cli("token", "keys", "retire", old)
        _, elapsed, ok = poll_until(lambda: self.status_of(self.worker, self.path, token=t1["token"]),
                                    lambda s: s == 401, CLI_KEY_BOUND_SEC, 0.05)
        self.assertTrue(ok, "token of the retired key still accepted after %.1fs" % elapsed)
        self.assertInvalidToken(self.worker, [self.upstream], self.path, t1["token"], "token_unknown_key",
                                "retired key")
        self.assertProxied(self.call(self.worker, self.path, token=t2["token"]))
        kids = [k["kid"] for k in jwks(self.control)["keys"]]
        self.assertNotIn(old, kids)
        self.assertIn(new, kids)

    def test_eddsa_signing_and_rotation(self):
        # GATEWAY_JWT_ALG=EdDSA. ASSUMPTION (doc ambiguous): the control plane signs with the
        # current key of GATEWAY_JWT_ALG's algorithm, so `rotate --alg EdDSA` on an ES256 control
        # plane need not switch its tokens to EdDSA; here both readings agree.
        first = issue(self.control, self.user.token, self.project["id"], "api")
        self.assertEqual(first["alg"], "EdDSA")
        header, _ = unverified(first["token"])
        self.assertEqual((header.get("alg"), header.get("kid")), ("EdDSA", first["kid"]))
        keys = {k["kid"]: k for k in jwks(self.control)["keys"]}
        self.assertIn(first["kid"], keys)
        k = keys[first["kid"]]
        self.assertEqual((k.get("kty"), k.get("crv"), k.get("alg"), k.get("use")), ("OKP", "Ed25519", "EdDSA", "sig"))
        self.assertTrue(k.get("x"), k)
        self.assertNotIn("d", k, "the private key is published")
        claims = jwt.decode(first["token"], jwt.PyJWK(k).key, algorithms=["EdDSA"])
        self.assertEqual(claims["jti"], first["jti"])
        self.wait_accepted(first["token"], "EdDSA token", PROPAGATION_SEC)

        self.cli("token", "keys", "rotate", "--alg", "EdDSA")
        body, _, ok = poll_until(lambda: issue(self.control, self.user.token, self.project["id"], "api"),
                                 lambda b: b["kid"] != first["kid"], 3.0, 0.2)
        self.assertTrue(ok, "tokens still signed with %s after rotate: %r" % (first["kid"], body))
        self.assertEqual(body["alg"], "EdDSA")
        keys = {k["kid"]: k for k in jwks(self.control)["keys"]}
        self.assertIn(body["kid"], keys)
        self.assertIn(first["kid"], keys)
        jwt.decode(body["token"], jwt.PyJWK(keys[body["kid"]]).key, algorithms=["EdDSA"])
        self.wait_accepted(body["token"], "token of the rotated-in EdDSA key")
        self.assertProxied(self.call(self.worker, self.path, token=first["token"]))

    def test_rotate_to_another_algorithm_keeps_verifying(self):
        # An ES256 control plane: a key rotated in with --alg EdDSA is published and verifies,
        # and the ES256 tokens keep working whatever signs next.
        t1 = issue(self.control, self.user.token, self.project["id"], "api")
        self.wait_accepted(t1["token"], "ES256 token", PROPAGATION_SEC)
        self.cli("token", "keys", "rotate", "--alg", "EdDSA")
        okp = [k for k in jwks(self.control)["keys"] if k.get("kty") == "OKP"]
        self.assertEqual(len(okp), 1, "rotate --alg EdDSA published no Ed25519 key")
        self.assertEqual((okp[0].get("crv"), okp[0].get("alg")), ("Ed25519", "EdDSA"))
        t2 = issue(self.control, self.user.token, self.project["id"], "api")
        self.assertIn(t2["alg"], ("ES256", "EdDSA"))
        self.wait_accepted(t2["token"], "token issued after the rotation")
        self.assertProxied(self.call(self.worker, self.path, token=t1["token"]))

    def test_retire_imported_key(self):
        key = ec_private_key()
        kid = "imp-" + h.random_string(8, string.ascii_lowercase)
        self.import_key(kid, "ES256", key)
        tok = mint(key, "ES256", kid, token_claims(self.slug, "api"))
        self.wait_accepted(tok, "imported key")
        self.cli("token", "keys", "retire", kid)
        _, elapsed, ok = poll_until(lambda: self.status_of(self.worker, self.path, token=tok),
                                    lambda s: s == 401, CLI_KEY_BOUND_SEC, 0.05)
        self.assertTrue(ok, "token of a retired imported key accepted after %.1fs" % elapsed)
        self.assertInvalidToken(self.worker, [self.upstream], self.path, tok, "token_unknown_key", "retired import")


# =============================================================================================
# 8. The command line


class TokenCliTest(GatewayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.control = start_control_plane()
        cls.addClassCleanup(cls.control.stop)
        cls.user = h.register_user(cls.control)
        cls.project = api_project(cls.control, cls.user.token, slug=new_slug("cli"))
        cls.slug = cls.project["slug"]
        put_service(cls.control, cls.user.token, cls.project["id"], "api", ["http://127.0.0.1:4200"])
        cls.plain = api_project(cls.control, cls.user.token)
        # the signing key exists before the CLI runs
        cls.first = issue(cls.control, cls.user.token, cls.project["id"], "api")

    def cli(self, *args, extra=None):
        return control_cli(self.control, list(args), extra)

    def verify(self, tok):
        header, _ = unverified(tok)
        keys = {k["kid"]: k for k in jwks(self.control)["keys"]}
        self.assertIn(header.get("kid"), keys)
        return jwt.decode(tok, jwt.PyJWK(keys[header["kid"]]).key, algorithms=[header["alg"]])

    def test_create_json(self):
        code, out, err = self.cli("token", "create", "--project", self.slug, "--service", "api",
                                  "--output-format", "json")
        self.assertEqual(code, 0, out + err)
        try:
            body = json.loads(out)
        except ValueError:
            self.fail("--output-format json: stdout is not one JSON document:\n%s" % out)
        # ASSUMPTION: the same fields as the API's 201 answer
        self.assertEqual(set(body), ISSUE_FIELDS, body)
        self.assertEqual(body["project"], self.slug)
        self.assertEqual(body["service"], "api")
        self.assertEqual(body["alg"], "ES256")
        claims = self.verify(body["token"])
        self.assertEqual(claims["jti"], body["jti"])
        self.assertEqual(claims["exp"] - claims["iat"], 90 * DAY)
        self.assertEqual(h.parse_time(body["expiresAt"]), claims["exp"])
        rec = token_record(self.control, self.user.token, self.project["id"], body["jti"])
        self.assertIs(rec["is_active"], True)

    def test_create_text(self):
        code, out, err = self.cli("token", "create", "--project", self.slug, "--service", "api",
                                  "--output-format", "text")
        self.assertEqual(code, 0, out + err)
        toks = re.findall(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", out)
        self.assertEqual(len(set(toks)), 1, "text output should show the token once:\n" + out)
        claims = self.verify(toks[0])
        self.assertIn(claims["jti"], out, "text output lacks the jti")
        token_record(self.control, self.user.token, self.project["id"], claims["jti"])

    def test_create_env(self):
        code, out, err = self.cli("token", "create", "--project", self.slug, "--service", "api",
                                  "--output-format", "env")
        self.assertEqual(code, 0, out + err)
        values = {}
        for line in out.splitlines():
            if not line.strip():
                continue
            self.assertRegex(line, r"^[A-Z][A-Z0-9_]*=", "not a KEY=VALUE line in env output: %r" % line)
            k, v = line.split("=", 1)
            values[k] = v.strip().strip("'\"")
        self.assertIn("GATEWAY_TOKEN", values, out)
        self.assertIn("GATEWAY_TOKEN_JTI", values, out)
        claims = self.verify(values["GATEWAY_TOKEN"])
        self.assertEqual(claims["jti"], values["GATEWAY_TOKEN_JTI"])

    def test_create_by_id_with_options(self):
        code, out, err = self.cli("token", "create", "--project", self.project["id"], "--service", "api",
                                  "--description", "nightly", "--expires-in-days", "7", "--backend", "b2",
                                  "--created-by", "ops", "--output-format", "json")
        self.assertEqual(code, 0, out + err)
        body = json.loads(out)
        claims = self.verify(body["token"])
        self.assertEqual(claims["exp"] - claims["iat"], 7 * DAY)
        self.assertEqual(claims["project"], self.slug)
        rec = token_record(self.control, self.user.token, self.project["id"], body["jti"])
        self.assertEqual((rec["description"], rec["backend"], rec["created_by"], rec["created_by_label"]),
                         ("nightly", "b2", "cli", "ops"))

    def test_validation_errors_exit_2(self):
        cases = (("undeclared service", ["--project", self.slug, "--service", "nosuch"], "INVALID_SERVICE"),
                 ("bad service", ["--project", self.slug, "--service", "Bad!"], "INVALID_SERVICE"),
                 ("expiry 0", ["--project", self.slug, "--service", "api", "--expires-in-days", "0"],
                  "INVALID_EXPIRY"),
                 ("expiry 366", ["--project", self.slug, "--service", "api", "--expires-in-days", "366"],
                  "INVALID_EXPIRY"),
                 ("project without slug", ["--project", self.plain["id"], "--service", "api"],
                  "INVALID_PROJECT"))
        before = len(self.control.request("GET", tokens_path(self.project["id"]),
                                          token=self.user.token).json()["tokens"])
        for what, args, code_name in cases:
            with self.subTest(what):
                code, out, err = self.cli("token", "create", *args)
                self.assertEqual(code, 2, "%s: exit %d\n%s%s" % (what, code, out, err))
                self.assertIn(code_name, out + err)
                self.assertNotRegex(out, r"eyJ[A-Za-z0-9_-]+\.", "a token was printed")
        after = len(self.control.request("GET", tokens_path(self.project["id"]),
                                         token=self.user.token).json()["tokens"])
        self.assertEqual(after, before, "a failed CLI create issued a token")
        # an unknown project is an error too (any non-zero exit)
        code, out, err = self.cli("token", "create", "--project", "no-such-" + new_slug(), "--service", "api")
        self.assertNotEqual(code, 0, out + err)

    def create(self):
        code, out, err = self.cli("token", "create", "--project", self.slug, "--service", "api",
                                  "--output-format", "json")
        self.assertEqual(code, 0, out + err)
        return json.loads(out)

    def test_list_and_revoke(self):
        a, b = self.create(), self.create()
        code, out, err = self.cli("token", "revoke", a["jti"], "--reason", "r1", "--by", "ops")
        self.assertEqual(code, 0, out + err)
        rec = token_record(self.control, self.user.token, self.project["id"], a["jti"])
        self.assertIs(rec["is_active"], False)
        self.assertEqual(rec["revocation_reason"], "r1")
        self.assertEqual(rec["revoked_by"], "ops")
        code, out, err = self.cli("token", "revoke", a["jti"])
        self.assertNotEqual(code, 0, "revoking twice succeeded: " + out + err)
        code, out, err = self.cli("token", "revoke", str(uuid.uuid4()))
        self.assertNotEqual(code, 0, "revoking an unknown jti succeeded: " + out + err)

        code, out, err = self.cli("token", "list", "--project", self.slug)
        self.assertEqual(code, 0, out + err)
        self.assertIn(b["jti"], out)
        self.assertIn(self.first["jti"], out)
        self.assertNotIn(a["jti"], out, "a revoked token listed without --all")
        code, out, err = self.cli("token", "list", "--project", self.project["id"], "--all")
        self.assertEqual(code, 0, out + err)
        self.assertIn(a["jti"], out)
        self.assertIn(b["jti"], out)
        for t in (a, b, self.first):
            self.assertNotIn(t["token"], out + err, "token list shows a token")

    def test_database_path_variable(self):
        self.assertTrue(self.control.db_path)
        code, out, err = self.cli("token", "list", "--project", self.slug,
                                  extra={"DATABASE_URL": None, "DATABASE_PATH": self.control.db_path})
        self.assertEqual(code, 0, out + err)
        self.assertIn(self.first["jti"], out)

    def test_keys_list_and_cleanup(self):
        code, out, err = self.cli("token", "keys", "list")
        self.assertEqual(code, 0, out + err)
        self.assertIn(self.first["kid"], out)
        self.assertIn("ES256", out)
        code, out, err = self.cli("token", "cleanup")
        self.assertEqual(code, 0, out + err)
        # live tokens survive a cleanup
        rec = token_record(self.control, self.user.token, self.project["id"], self.first["jti"])
        self.assertEqual(rec["jti"], self.first["jti"])


# =============================================================================================
# 9. Load balancing, health checks, passive ejection


class LoadBalancingTest(GatewayTestCase):
    """ASSUMPTION: the worker runs with one thread here, so that the balancer's rotation, the
    in-flight counts and the ejection state are observably per worker (the doc says "from that
    worker"; with several threads they might be kept per thread)."""

    @classmethod
    def setUpClass(cls):
        cls.default = wh.Upstream()  # the project's default upstream: where an unknown route goes
        cls.addClassCleanup(cls.default.stop)
        cls.control = start_control_plane()
        cls.addClassCleanup(cls.control.stop)
        cls.user = h.register_user(cls.control)
        cls.project = api_project(cls.control, cls.user.token, slug=new_slug("lb"),
                                  upstream=cls.default.url + "/default")
        cls.slug = cls.project["slug"]
        cls.key = h.create_key(cls.control, cls.user.token, cls.project["id"])["api_key"]
        cls.worker = start_stream_worker(cls.control, threads=1)
        cls.addClassCleanup(cls.worker.stop)

    def upstream(self, port=0):
        up = TunableUpstream(port)
        self.addCleanup(up.stop)
        return up

    def service(self, targets, **more):
        name = "s" + h.random_string(8, string.ascii_lowercase)
        put_service(self.control, self.user.token, self.project["id"], name, targets, **more)
        prefix = "/%s/%s" % (self.slug, name)

        def known():  # the worker routes the service (the request did not go to the default upstream)
            m = marker("rdy")
            status = self.status_of(self.worker, "%s/ready?%s" % (prefix, m), key=self.key)
            return status is not None and not self.default.matching(m)
        _, elapsed, ok = poll_until(known, bool, PROPAGATION_SEC, 0.05)
        self.assertTrue(ok, "service %s not routed by the worker after %.1fs" % (name, elapsed))
        return prefix

    def get(self, prefix, m, timeout=10):
        return self.call(self.worker, "%s/work?%s" % (prefix, m), key=self.key, timeout=timeout)

    def counts(self, m, *ups):
        return [len(u.matching(m)) for u in ups]

    def test_round_robin_splits_evenly(self):
        a, b = self.upstream(), self.upstream()
        prefix = self.service([a.url, b.url], balancer="round_robin")
        m = marker("rr")
        for _ in range(10):
            self.assertProxied(self.get(prefix, m))
        self.assertEqual(self.counts(m, a, b), [5, 5])

    def test_least_request_prefers_the_idle_target(self):
        slow, fast = self.upstream(), self.upstream()
        prefix = self.service([slow.url, fast.url], balancer="least_request")
        # no concurrency: ties, so round robin
        m = marker("tie")
        for _ in range(10):
            self.assertProxied(self.get(prefix, m))
        self.assertEqual(self.counts(m, slow, fast), [5, 5], "ties should go round robin")
        # one slow target: requests in flight pile up there, the others go to the idle one
        slow.delay = 1.0
        m = marker("lr")
        statuses = []
        lock = threading.Lock()

        def one():
            try:
                st = self.get(prefix, m).status
            except (OSError, http.client.HTTPException) as e:
                st = repr(e)
            with lock:
                statuses.append(st)
        threads = []
        for _ in range(10):
            t = threading.Thread(target=one, daemon=True)
            t.start()
            threads.append(t)
            time.sleep(0.05)
        for t in threads:
            t.join(15)
        self.assertEqual(statuses, [200] * 10)
        n_slow, n_fast = self.counts(m, slow, fast)
        self.assertEqual(n_slow + n_fast, 10)
        self.assertLessEqual(n_slow, 2, "least_request sent %d of 10 to the busy target" % n_slow)

    def test_health_check_removes_and_restores_a_target(self):
        a, b = self.upstream(), self.upstream()
        b.health_status = 503
        prefix = self.service([a.url, b.url], health_check={"path": HEALTH_PATH, "interval_sec": 1,
                                                            "timeout_ms": 500})

        def only_a():
            m = marker("hc")
            ok = all(self.get(prefix, m).status == 200 for _ in range(4))
            return ok and self.counts(m, a, b) == [4, 0]
        _, elapsed, ok = poll_until(only_a, bool, 3.5, 0.1)
        self.assertTrue(ok, "traffic still reaches the unhealthy target after %.1fs" % elapsed)
        m = marker("hc2")
        for _ in range(10):
            self.assertProxied(self.get(prefix, m))
        self.assertEqual(self.counts(m, a, b), [10, 0])
        self.assertGreater(b.health_count(), 0, "the health path was never requested")
        with b._lock:
            checks = list(b.health_requests)
        self.assertTrue(all(c["method"] == "GET" and c["path"] == HEALTH_PATH for c in checks), checks)
        # it recovers
        b.health_status = 200

        def b_back():
            m = marker("hc3")
            for _ in range(4):
                self.get(prefix, m)
            return self.counts(m, b)[0] > 0
        _, elapsed, ok = poll_until(b_back, bool, 3.5, 0.1)
        self.assertTrue(ok, "the recovered target gets no traffic after %.1fs" % elapsed)
        # a health check answering slower than timeout_ms marks the target unhealthy too
        b.health_delay = 1.5
        _, elapsed, ok = poll_until(only_a, bool, 5.0, 0.1)
        self.assertTrue(ok, "a target whose health check times out still gets traffic after %.1fs" % elapsed)

    def test_all_targets_unhealthy_fail_closed(self):
        a, b = self.upstream(), self.upstream()
        prefix = self.service([a.url, b.url], health_check={"path": HEALTH_PATH, "interval_sec": 1,
                                                            "timeout_ms": 500})
        a.health_status = b.health_status = 503
        resp, _ = self.wait_status(lambda: self.get(prefix, marker("down")), 503, 3.5, "all targets unhealthy")
        m = marker("down2")
        resp = self.get(prefix, m)
        self.assertWorkerError(resp, 503, NO_HEALTHY)
        self.assertEqual(self.counts(m, a, b), [0, 0], "forwarded although every target is unhealthy")
        a.health_status = 200
        resp, _ = self.wait_status(lambda: self.get(prefix, marker("up")), 200, 3.5, "a target recovered")
        self.assertProxied(resp)

    def test_passive_ejection_of_a_stopped_target(self):
        a = self.upstream()
        port = wh.free_port()  # nothing listens there: connections are refused
        cooldown = 4
        prefix = self.service([a.url, "http://127.0.0.1:%d" % port], ejection={"failures": 2, "cooldown_sec": cooldown})
        m = marker("ej")
        statuses = [self.get(prefix, m).status for _ in range(10)]
        # at most `failures` exchanges fail (and GETs may be retried on the other target)
        self.assertLessEqual(sum(1 for s in statuses if s != 200), 2, statuses)
        self.assertTrue(all(s in (200, 502) for s in statuses), statuses)
        self.assertEqual(statuses[-6:], [200] * 6, statuses)
        # bring the target back on its port: while ejected it gets nothing
        b = self.upstream(port)
        t_back = time.monotonic()
        m = marker("ej2")
        for _ in range(6):
            self.assertProxied(self.get(prefix, m))
            time.sleep(0.1)
        self.assertEqual(self.counts(m, b), [0], "an ejected target got traffic during its cooldown")

        def b_gets_traffic():
            mm = marker("ej3")
            self.get(prefix, mm)
            return self.counts(mm, b)[0] > 0
        _, _, ok = poll_until(b_gets_traffic, bool, cooldown + 3, 0.1)
        waited = time.monotonic() - t_back
        self.assertTrue(ok, "the target is not tried again %.1fs after the cooldown" % waited)
        self.assertGreater(waited, cooldown - 2.0, "tried again after %.1fs, before the cooldown" % waited)

    def test_passive_ejection_on_503_answers(self):
        a, c = self.upstream(), self.upstream()
        c.status_override = 503
        prefix = self.service([a.url, c.url], ejection={"failures": 3, "cooldown_sec": 60})
        m = marker("e503")
        statuses = [self.get(prefix, m).status for _ in range(16)]
        self.assertLessEqual(sum(1 for s in statuses if s != 200), 3, statuses)
        self.assertEqual(len(c.requests), 3, "a target answering 503 should get exactly `failures` "
                         "requests before its ejection, got %d" % len(c.requests))

    def test_single_ejected_target_fail_closed(self):
        port = wh.free_port()
        prefix = self.service(["http://127.0.0.1:%d" % port], ejection={"failures": 1, "cooldown_sec": 60})
        # ASSUMPTION: the exchange that fails is answered 502 (Upstream service unreachable) as
        # before; once ejected, the worker does not even try: 503 No healthy upstream target.
        resp, _ = self.wait_status(lambda: self.get(prefix, marker("one")), 503, 2.0, "ejected single target")
        self.assertWorkerError(resp, 503, NO_HEALTHY)
        self.assertWorkerError(self.get(prefix, marker("one2")), 503, NO_HEALTHY)


# =============================================================================================
# 11. File mode: a directory of YAML files


def fm_yaml(slug, upstream, services, key_hash, kid, pem_rel, revoked=()):
    """A config file in the doc's layout. services: {name: [targets]}; revoked: [(jti, exp)]."""
    lines = ["# written by test_service_tokens.py",
             "projects:",
             "  - slug: %s                 # id defaults to the slug" % slug,
             "    upstream: %s" % upstream,
             "    rate_limit: {requests_per_minute: 600000, burst: 100000}",
             "    max_body_bytes: 10485760",
             "    services:"]
    for name, targets in services.items():
        lines += ["      %s:" % name,
                  "        targets: [%s]" % ", ".join(targets),
                  "        balancer: round_robin",
                  "        ejection: {failures: 5, cooldown_sec: 30}"]
    lines += ["    api_keys:",
              "      - {id: ci, hash: %s}" % key_hash,
              "jwt_keys:",
              "  - {kid: %s, alg: ES256, public_key_file: %s}" % (kid, pem_rel)]
    if revoked:
        lines.append("revoked_tokens:")
        for jti, exp in revoked:
            lines.append("  - {jti: %s, expires_at: %s}" % (jti, rfc3339(exp)))
    return "\n".join(lines) + "\n"


class FileModeTest(GatewayTestCase):
    def setUp(self):
        self.upstream = wh.Upstream()
        self.addCleanup(self.upstream.stop)
        self.dir = tempfile.mkdtemp(prefix="ag-yaml-")
        if os.environ.get("AG_TEST_KEEP") != "1":
            self.addCleanup(shutil.rmtree, self.dir, True)
        self.slug = new_slug("fm")
        while True:
            self.key, self.key_hash = wh.make_key()
            if not re.fullmatch(r"[0-9e]+", self.key_hash):  # would read as a YAML number
                break
        self.ec = ec_private_key()
        self.kid = "fm-" + h.random_string(8, string.ascii_lowercase)
        write_file(os.path.join(self.dir, "keys", "main.pub.pem"), public_pem(self.ec))
        self.main = os.path.join(self.dir, "gateway.yml")
        self.services = {"prefect": [self.upstream.url]}
        self.revoked = []
        self.write()
        self.worker = start_file_worker(self.dir)
        self.addCleanup(self.worker.stop)
        ready = self.worker.wait_ready(10)
        self.assertEqual(ready.status if ready else None, 200, "worker not ready:\n" + self.worker.stderr[-3000:])

    def write(self, text=None, path=None):
        text = text if text is not None else fm_yaml(self.slug, self.upstream.url + "/default", self.services,
                                                     self.key_hash, self.kid, "keys/main.pub.pem", self.revoked)
        write_file(path or self.main, text)
        self.last_write = time.monotonic()

    def settle(self):
        # ASSUMPTION: change detection may use one-second modification times; keep edits at least
        # a second apart (the doc promises a check every second, not sub-second detection).
        time.sleep(max(0.0, self.last_write + 1.1 - time.monotonic()))

    def token(self, svc="prefect", **over):
        claims = token_claims(self.slug, svc, **over)
        return claims, mint(self.ec, "ES256", self.kid, claims)

    def test_api_key_and_token_reach_the_service(self):
        m = marker("fk")
        resp = self.call(self.worker, "/%s/prefect/api/flows?%s" % (self.slug, m), key=self.key)
        self.assertProxied(resp)
        rec = self.upstream.matching(m)
        self.assertEqual(len(rec), 1)
        self.assertEqual(rec[0]["path"], "/api/flows?" + m)
        hd = rec[0]["header_dict"]
        self.assertEqual(hd.get("x-gateway-project"), self.slug, "id defaults to the slug")
        self.assertEqual(hd.get("x-gateway-service"), "prefect")
        self.assertEqual(hd.get("x-gateway-key-id"), "ci")
        self.assertNotIn("x-api-key", hd)

        claims, tok = self.token()
        m = marker("ft")
        self.assertProxied(self.call(self.worker, "/%s/prefect/api/runs?%s" % (self.slug, m), token=tok))
        rec = self.upstream.matching(m)
        self.assertEqual(len(rec), 1)
        self.assertEqual(rec[0]["path"], "/api/runs?" + m)
        self.assertEqual(rec[0]["header_dict"].get("x-gateway-jti"), claims["jti"])
        self.assertNotIn("authorization", rec[0]["header_dict"])
        # API-key traffic to the default upstream
        m = marker("fd")
        self.assertProxied(self.call(self.worker, "/other/path?" + m, key=self.key))
        self.assertEqual([r["path"] for r in self.upstream.matching(m)], ["/default/other/path?" + m])
        # refusals as in control-plane mode
        self.assertWorkerError(self.call(self.worker, "/%s/prefect/x" % self.slug), 401, CREDENTIALS_MISSING)
        _, other = self.token(svc="nosuch")
        self.assertWorkerError(self.call(self.worker, "/%s/prefect/x" % self.slug, token=other), 403, NOT_FOR_ROUTE)
        _, forged = self.token()
        forged = mint(ec_private_key(), "ES256", self.kid, unverified(forged)[1])
        self.assertInvalidToken(self.worker, [self.upstream], "/%s/prefect/x" % self.slug, forged,
                                "token_signature", "file mode, wrong key")
        self.assertNotLogged(self.worker, tok, self.key)

    def test_reload_without_dropping_the_connection(self):
        claims1, tok1 = self.token()
        _, tok2 = self.token(svc="second")
        conn = http.client.HTTPConnection(self.worker.host, self.worker.port, timeout=10)
        self.addCleanup(conn.close)
        local = [None]

        def ka_get(path, headers):
            """One request on the shared keep-alive connection; fails if it was replaced."""
            if local[0] is not None:
                self.assertIsNotNone(conn.sock, "the worker closed the keep-alive connection")
                self.assertEqual(conn.sock.getsockname(), local[0], "a new connection was opened")
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as e:
                self.fail("the keep-alive connection broke across the reload: %r" % (e,))
            if local[0] is None:
                local[0] = conn.sock.getsockname()
            return resp.status

        key_hdr = {"X-API-Key": self.key}
        self.assertEqual(ka_get("/%s/prefect/a" % self.slug, {"Authorization": "Bearer " + tok1}), 200)
        m0 = marker("pre")
        # before the edit /slug/second/... is no service: the key takes it to the default upstream
        self.assertEqual(ka_get("/%s/second/a?%s" % (self.slug, m0), key_hdr), 200)
        self.assertEqual([r["path"] for r in self.upstream.matching(m0)],
                         ["/default/%s/second/a?%s" % (self.slug, m0)])
        self.settle()
        self.services["second"] = [self.upstream.url + "/second"]
        self.revoked.append((claims1["jti"], claims1["exp"]))
        self.write()

        # every request on the same connection answers 200 until the new service shows up
        def second_served():
            m = marker("sec")
            self.assertEqual(ka_get("/%s/second/b?%s" % (self.slug, m), key_hdr), 200)
            return [r["path"] for r in self.upstream.matching(m)] == ["/second/b?" + m]
        _, elapsed, ok = poll_until(second_served, bool, 3.5, 0.1)
        self.assertTrue(ok, "added service not served %.1fs after the edit" % elapsed)
        # the revocation from the same file, on the same connection
        _, elapsed, ok = poll_until(
            lambda: ka_get("/%s/prefect/b" % self.slug, {"Authorization": "Bearer " + tok1}),
            lambda s: s == 401, 3.5, 0.1)
        self.assertTrue(ok, "revoked_tokens entry not enforced %.1fs after the edit" % elapsed)
        # fresh connections agree
        self.assertProxied(self.call(self.worker, "/%s/second/c" % self.slug, token=tok2))
        self.assertInvalidToken(self.worker, [self.upstream], "/%s/prefect/x" % self.slug, tok1,
                                "token_revoked", "revoked in the file")

    def test_broken_yaml_keeps_the_previous_config(self):
        _, tok = self.token()
        path = "/%s/prefect/x" % self.slug
        self.assertProxied(self.call(self.worker, path, token=tok))
        self.settle()
        start = self.worker.stderr_count()
        self.write("projects:\n  - slug: [unclosed\n    services: {\n")
        m = self.worker.wait_for_stderr(
            r"(?i)(ya?ml|gateway\.yml|config).*(error|fail|invalid)|(error|fail|invalid|warn).*(ya?ml|config)",
            timeout=4.0, start=start)
        self.assertIsNotNone(m, "no log line about the broken file:\n" + self.worker.stderr[-2000:])
        for _ in range(5):
            self.assertProxied(self.call(self.worker, path, token=tok))
            self.assertProxied(self.call(self.worker, path, key=self.key))
            time.sleep(0.2)
        # fixed again: reloaded (a new service appears)
        self.settle()
        self.services["third"] = [self.upstream.url]
        self.write()
        _, tok3 = self.token(svc="third")
        self.wait_status(lambda: self.call(self.worker, "/%s/third/x" % self.slug, token=tok3), 200, 3.5,
                         "service added after the file was repaired")

    def test_duplicate_slug_keeps_the_previous_config(self):
        _, tok = self.token()
        path = "/%s/prefect/x" % self.slug
        self.assertProxied(self.call(self.worker, path, token=tok))
        self.settle()
        start = self.worker.stderr_count()
        dup = ("projects:\n  - slug: %s\n    services:\n      dupsvc:\n        targets: [%s]\n"
               % (self.slug, self.upstream.url))
        self.write(dup, os.path.join(self.dir, "dup.yaml"))
        self.assertIsNotNone(self.worker.wait_for_stderr(r"(?i)(error|fail|invalid|duplicate|twice)",
                                                         timeout=4.0, start=start),
                             "no log line about the duplicate slug:\n" + self.worker.stderr[-2000:])
        _, dtok = self.token(svc="dupsvc")
        for _ in range(3):
            self.assertProxied(self.call(self.worker, path, token=tok))
            self.assertNotEqual(self.call(self.worker, "/%s/dupsvc/x" % self.slug, token=dtok).status, 200)
            time.sleep(0.2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
