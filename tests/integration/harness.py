"""Helpers for the control-plane integration tests.

Starts the real `antigravity control` binary on 127.0.0.1 with port 0 against a fresh SQLite file
or a fresh PostgreSQL database, and talks to it over plain HTTP (never following redirects, never
raising on 4xx/5xx). Standard library only.

Environment:
  AG_BIN              path to the binary (default: <repo>/build/antigravity)
  AG_DB               "sqlite" (default) or "postgres": the database the API tests run against
  AG_TEST_PG_URL      admin URL of a PostgreSQL server, e.g. postgresql://postgres@127.0.0.1:5432/postgres
  AG_TEST_REQUIRE_PG  "1": a missing AG_TEST_PG_URL fails instead of skipping
  AG_TEST_KEEP        "1": keep temporary directories and databases for inspection
"""

import atexit
import base64
import calendar
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import string
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AG_BIN = os.environ.get("AG_BIN", os.path.join(REPO_ROOT, "build", "antigravity"))
AG_DB = os.environ.get("AG_DB", "sqlite").strip().lower() or "sqlite"
if AG_DB in ("pg", "postgresql"):
    AG_DB = "postgres"

START_TIMEOUT_SEC = 20.0
STOP_TIMEOUT_SEC = 10.0
REQUEST_TIMEOUT_SEC = 30.0

LISTEN_RE = re.compile(r"control plane listening on https?://127\.0\.0\.1:(\d+)")

# Variables the binary reads; cleared from the inherited environment so the developer's shell
# cannot leak configuration into a test.
CONFIG_VARS = (
    "ENV", "DATABASE_URL", "JWT_SECRET_KEY", "JWT_ALGORITHM", "WORKER_SECRET_KEY",
    "CONTROL_WORKER_SHARED_SECRET", "ACCESS_TTL_SEC", "REFRESH_TTL_SEC", "DATABASE_PATH",
    "CONTROL_LISTEN", "CONTROL_THREADS", "CORS_ORIGINS",
)

ALNUM = string.ascii_letters + string.digits

UUID4_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
API_KEY_RE = re.compile(r"^agk_[0-9A-Za-z]{8}_[0-9A-Za-z]{49}$")
REFRESH_RE = re.compile(r"^agr_[0-9A-Za-z]{43}$")
SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


def random_string(n, alphabet=ALNUM):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def sha256_hex(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_time(value):
    """Parses an RFC 3339 UTC timestamp with second precision into epoch seconds."""
    return calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))


def pg_required():
    """Returns the PostgreSQL admin URL, or skips (fails when AG_TEST_REQUIRE_PG=1)."""
    url = os.environ.get("AG_TEST_PG_URL", "").strip()
    if url:
        return url
    if os.environ.get("AG_TEST_REQUIRE_PG") == "1":
        raise AssertionError("AG_TEST_REQUIRE_PG=1 but AG_TEST_PG_URL is not set")
    raise unittest.SkipTest("AG_TEST_PG_URL is not set; PostgreSQL tests skipped")


# ---------------------------------------------------------------------------------------------
# HTTP


class Headers:
    """Case-insensitive, read-only view of response headers (repeated headers joined by ', ')."""

    def __init__(self, pairs):
        self._items = {}
        for name, value in pairs:
            key = name.lower()
            if key in self._items:
                self._items[key] = (self._items[key][0], self._items[key][1] + ", " + value)
            else:
                self._items[key] = (name, value)

    def get(self, name, default=None):
        item = self._items.get(name.lower())
        return item[1] if item else default

    def __getitem__(self, name):
        item = self._items.get(name.lower())
        if item is None:
            raise KeyError(name)
        return item[1]

    def __contains__(self, name):
        return name.lower() in self._items

    def items(self):
        return [(n, v) for n, v in self._items.values()]

    def __repr__(self):
        return "Headers(%r)" % dict(self.items())


class Response:
    def __init__(self, status, headers, body, method, path):
        self.status = status
        self.headers = headers
        self.body = body
        self.method = method
        self.path = path

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        body = self.text
        if len(body) > 600:
            body = body[:600] + "..."
        return "<%s %s -> %d %r %s>" % (self.method, self.path, self.status, self.headers, body)


def error_detail(test, resp, detail=None):
    """Checks that `resp`'s body is the error shape {"detail": non-empty str} (and, when given, that
    detail is exactly `detail`) with `test`'s assertions; returns the parsed body."""
    try:
        data = resp.json()
    except ValueError:
        test.fail("error body is not JSON: %r" % (resp,))
    test.assertIsInstance(data, dict, repr(resp))
    test.assertIsInstance(data.get("detail"), str, repr(resp))
    test.assertTrue(data["detail"], repr(resp))
    if detail is not None:
        test.assertEqual(data["detail"], detail, repr(resp))
    return data


def http_request(host, port, method, path, body=None, headers=None, raw_body=None,
                 content_type=None, token=None, timeout=REQUEST_TIMEOUT_SEC):
    """One request on a fresh connection. `body` (not None) is sent as JSON; `raw_body` as is."""
    hdrs = {}
    data = None
    if raw_body is not None:
        data = raw_body
        if content_type is not None:
            hdrs["Content-Type"] = content_type
    elif body is not None:
        data = json.dumps(body).encode("utf-8")
        hdrs["Content-Type"] = content_type or "application/json"
    elif content_type is not None:
        hdrs["Content-Type"] = content_type
    if token is not None:
        hdrs["Authorization"] = "Bearer " + token
    if headers:
        hdrs.update(headers)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        try:
            conn.request(method, path, body=data, headers=hdrs)
        except (BrokenPipeError, ConnectionResetError):
            # The server may answer (413, 431) and close before reading the whole request.
            pass
        resp = conn.getresponse()
        payload = resp.read()
        return Response(resp.status, Headers(resp.getheaders()), payload, method, path)
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# JWT (HS256/384/512) for forging and inspecting tokens


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    pad = "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text + pad)


def jwt_decode_unverified(token):
    header_b64, payload_b64, _sig = token.split(".")
    return json.loads(b64url_decode(header_b64)), json.loads(b64url_decode(payload_b64))


_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def jwt_encode(payload, secret, alg="HS256", header=None):
    hdr = {"alg": alg, "typ": "JWT"}
    if header:
        hdr.update(header)
    signing_input = (b64url_encode(json.dumps(hdr, separators=(",", ":")).encode()) + "." +
                     b64url_encode(json.dumps(payload, separators=(",", ":")).encode()))
    if alg == "none":
        return signing_input + "."
    key = secret.encode() if isinstance(secret, str) else secret
    sig = hmac.new(key, signing_input.encode("ascii"), _HASHES[alg]).digest()
    return signing_input + "." + b64url_encode(sig)


# ---------------------------------------------------------------------------------------------
# PostgreSQL helpers


def _pg_url_with_db(admin_url, dbname):
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))


def psql(url, sql, check=True):
    proc = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError("psql failed (%d): %s\n%s" % (proc.returncode, sql, proc.stderr))
    return proc.stdout


def create_pg_database(admin_url):
    name = "ag_test_" + random_string(12, string.ascii_lowercase + string.digits)
    psql(admin_url, 'CREATE DATABASE "%s"' % name)
    return name, _pg_url_with_db(admin_url, name)


def drop_pg_database(admin_url, name):
    try:
        psql(admin_url, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name, check=False)
    except Exception:  # best effort
        pass


# ---------------------------------------------------------------------------------------------
# The server


_live_servers = []


def _stop_all():
    for server in list(_live_servers):
        try:
            server.stop()
        except Exception:
            pass


atexit.register(_stop_all)


def base_env(env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    env["ENV"] = "development"
    env["JWT_SECRET_KEY"] = random_string(48)
    env["WORKER_SECRET_KEY"] = random_string(48)
    for key, value in (env_extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


class OutputCollector:
    """Drains a process's stdout and stderr in background threads so the pipes never fill."""

    def __init__(self, proc):
        self.lines = []
        self._cond = threading.Condition()
        self._threads = []
        for stream in (proc.stdout, proc.stderr):
            t = threading.Thread(target=self._drain, args=(stream,), daemon=True)
            t.start()
            self._threads.append(t)

    def _drain(self, stream):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        stream.close()

    def wait_for(self, regex, timeout):
        """Returns the first match of `regex` in any line, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                while seen < len(self.lines):
                    m = regex.search(self.lines[seen])
                    seen += 1
                    if m:
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.1))

    def join(self, timeout=2.0):
        for t in self._threads:
            t.join(timeout)

    @property
    def text(self):
        with self._cond:
            return "\n".join(self.lines)


class ControlServer:
    def __init__(self, proc, collector, workdir, own_workdir, port, env, db, db_url, db_path,
                 pg_admin_url, pg_dbname):
        self.proc = proc
        self._collector = collector
        self.workdir = workdir
        self._own_workdir = own_workdir
        self.port = port
        self.host = "127.0.0.1"
        self.base_url = "http://127.0.0.1:%d" % port
        self.env = env
        self.db = db
        self.db_url = db_url
        self.db_path = db_path
        self.pg_admin_url = pg_admin_url
        self.pg_dbname = pg_dbname
        self.jwt_secret = env.get("JWT_SECRET_KEY")
        self.worker_secret = env.get("WORKER_SECRET_KEY")
        self.returncode = None
        self._stopped = False

    @property
    def logs(self):
        return self._collector.text

    def request(self, method, path, body=None, headers=None, raw_body=None, content_type=None,
                token=None, timeout=REQUEST_TIMEOUT_SEC):
        return http_request(self.host, self.port, method, path, body=body, headers=headers,
                            raw_body=raw_body, content_type=content_type, token=token,
                            timeout=timeout)

    def worker_config(self, secret=None, header="x-worker-secret", extra_headers=None):
        headers = {header: self.worker_secret if secret is None else secret}
        if extra_headers:
            headers.update(extra_headers)
        return self.request("GET", "/internal/worker/config", headers=headers)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, drop_database=True):
        """SIGTERM, wait, then SIGKILL; removes the temporary directory and database."""
        if self._stopped:
            return self.returncode
        self._stopped = True
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(STOP_TIMEOUT_SEC)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.returncode = self.proc.returncode
        self._collector.join()
        if self in _live_servers:
            _live_servers.remove(self)
        keep = os.environ.get("AG_TEST_KEEP") == "1"
        if drop_database and self.pg_dbname and not keep:
            drop_pg_database(self.pg_admin_url, self.pg_dbname)
        if self._own_workdir and drop_database and not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.returncode

    # -- database inspection (schema-agnostic) ---------------------------------------------

    def database_bytes(self):
        """Everything the database holds, as bytes: the SQLite files, or a pg_dump of the DB."""
        if self.db == "sqlite":
            chunks = []
            for suffix in ("", "-wal", "-journal", "-shm"):
                path = self.db_path + suffix
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        chunks.append(f.read())
            return b"\n".join(chunks)
        proc = subprocess.run(["pg_dump", "--no-owner", self.db_url], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError("pg_dump failed: " + proc.stderr.decode("utf-8", "replace"))
        return proc.stdout

    def execute(self, sql):
        """Runs one SQL statement on the application's database (SQLite or PostgreSQL), e.g. the
        operator grant that docs/configuration.md describes."""
        if self.db == "sqlite":
            conn = sqlite3.connect(self.db_path, timeout=10)
            try:
                conn.execute(sql)
                conn.commit()
            finally:
                conn.close()
        else:
            psql(self.db_url, sql)

    def table_counts(self):
        """{table: row count} for every table of the application's database."""
        if self.db == "sqlite":
            conn = sqlite3.connect(self.db_path, timeout=10)
            try:
                names = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
                return {n: conn.execute('SELECT count(*) FROM "%s"' % n.replace('"', '""')).fetchone()[0]
                        for n in names}
            finally:
                conn.close()
        out = psql(self.db_url,
                   "SELECT table_schema || '.' || table_name, "
                   "(xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', "
                   "table_schema, table_name), false, true, '')))[1]::text "
                   "FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                   "AND table_schema NOT IN ('pg_catalog', 'information_schema')")
        counts = {}
        for line in out.splitlines():
            if "|" in line:
                name, count = line.rsplit("|", 1)
                counts[name] = int(count)
        return counts


def start_control(db=None, env_extra=None, workdir=None, db_url=None, sqlite_path=None,
                  args=None, timeout=START_TIMEOUT_SEC):
    """Starts `antigravity control --listen 127.0.0.1:0` and waits until it listens.

    db: "sqlite" or "postgres" (default: AG_DB). env_extra: variables to add; a value of None
    removes the variable. workdir/db_url/sqlite_path: reuse an existing directory or database
    (for restart tests); by default everything is fresh.
    """
    db = db or AG_DB
    if db not in ("sqlite", "postgres"):
        raise ValueError("unknown database kind %r" % db)
    pg_admin_url = pg_dbname = db_path = None
    if db_url is None and db == "postgres":
        pg_admin_url = pg_required()
        pg_dbname, db_url = create_pg_database(pg_admin_url)
    own_workdir = workdir is None
    if own_workdir:
        workdir = tempfile.mkdtemp(prefix="ag-control-")
    if db_url is None:
        db_path = sqlite_path or os.path.join(workdir, "ag.db")
        db_url = "sqlite:///" + db_path
    elif db == "sqlite":
        db_path = db_url[len("sqlite:///"):] if db_url.startswith("sqlite:///") else None
    env = base_env(dict({"DATABASE_URL": db_url}, **(env_extra or {})))
    cmd = [AG_BIN, "control", "--listen", "127.0.0.1:0"] + list(args or [])
    try:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError:
        if pg_dbname:
            drop_pg_database(pg_admin_url, pg_dbname)
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    collector = OutputCollector(proc)
    server = ControlServer(proc, collector, workdir, own_workdir, 0, env, db, db_url, db_path,
                           pg_admin_url, pg_dbname)
    _live_servers.append(server)
    match = collector.wait_for(LISTEN_RE, timeout)
    if match is None:
        exited = proc.poll()
        server.stop()
        raise RuntimeError("control plane did not report listening within %.0fs (exit code %r); "
                           "output:\n%s" % (timeout, exited, collector.text))
    server.port = int(match.group(1))
    server.base_url = "http://127.0.0.1:%d" % server.port
    return server


def run_binary(args, env_extra=None, cwd=None, timeout=30):
    """Runs the binary to completion; returns (returncode, combined output)."""
    own = cwd is None
    if own:
        cwd = tempfile.mkdtemp(prefix="ag-cli-")
    try:
        proc = subprocess.run([AG_BIN] + list(args), cwd=cwd, env=base_env(env_extra),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
        return proc.returncode, proc.stdout.decode("utf-8", "replace")
    finally:
        if own:
            shutil.rmtree(cwd, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# API helpers


def unique_email(prefix="user"):
    return "%s.%s@example.com" % (prefix, random_string(10, string.ascii_lowercase + string.digits))


class User:
    def __init__(self, email, password, tokens):
        self.email = email
        self.password = password
        self.tokens = tokens

    @property
    def token(self):
        return self.tokens["access_token"]

    @property
    def refresh_token(self):
        return self.tokens["refresh_token"]

    @property
    def id(self):
        return self.tokens["user"]["id"]


def register_user(server, email=None, password=None, name=None):
    """Registers a fresh user (registration also logs in) and returns a User."""
    email = email or unique_email()
    password = password or ("pw-" + random_string(20))
    body = {"email": email, "password": password}
    if name is not None:
        body["name"] = name
    resp = server.request("POST", "/auth/register", body)
    if resp.status != 201:
        raise AssertionError("register failed: %r" % resp)
    return User(email, password, resp.json())


def login(server, email, password):
    resp = server.request("POST", "/auth/login", {"email": email, "password": password})
    if resp.status != 200:
        raise AssertionError("login failed: %r" % resp)
    return resp.json()


def new_token(server):
    """Registers a fresh user, logs it in, and returns the login's access token."""
    user = register_user(server)
    return login(server, user.email, user.password)["access_token"]


def create_project(server, token, name=None, upstream="http://127.0.0.1:9000/api", **fields):
    body = {"name": name or ("proj-" + random_string(8)), "upstream_base_url": upstream}
    body.update(fields)
    resp = server.request("POST", "/projects", body, token=token)
    if resp.status != 201:
        raise AssertionError("project create failed: %r" % resp)
    return resp.json()


def create_key(server, token, project_id, **body):
    resp = server.request("POST", "/projects/%s/keys" % project_id, body, token=token)
    if resp.status != 201:
        raise AssertionError("key create failed: %r" % resp)
    return resp.json()


def find_project(config, project_id):
    for project in config["projects"]:
        if project["id"] == project_id:
            return project
    return None
