"""The control plane: `antigravity control` on 127.0.0.1 (port 0, or a fixed port for restarts
on the same address) against a fresh SQLite file or PostgreSQL database, talked to over plain
HTTP; and one-shot runs of the binary's other commands."""

import os
import re
import shutil
import subprocess
import tempfile

from . import db as database
from .common import AG_BIN, AG_DB, REQUEST_TIMEOUT_SEC, START_TIMEOUT_SEC, keep_files, random_string
from .http import http_request
from .processes import Process, Server, build_env, stop_at_exit

CONTROL_LISTEN_RE = re.compile(r"control plane listening on https?://127\.0\.0\.1:(\d+)")

# Variables the binary reads; cleared from the inherited environment so the developer's shell
# cannot leak configuration into a test.
CONFIG_VARS = (
    "ENV", "DATABASE_URL", "JWT_SECRET_KEY", "JWT_ALGORITHM", "WORKER_SECRET_KEY",
    "CONTROL_WORKER_SHARED_SECRET", "ACCESS_TTL_SEC", "REFRESH_TTL_SEC", "DATABASE_PATH",
    "CONTROL_LISTEN", "CONTROL_THREADS", "CORS_ORIGINS", "CONTROL_PUBLIC_URL", "AUTH_MODE",
    "PASSKEY_ORIGIN", "PASSKEY_RP_ID", "PASSKEY_RP_NAME", "CHALLENGE_TTL_SEC", "DEVICE_VERIFICATION_URL",
    "DEVICE_CODE_TTL_SEC", "DEVICE_CODE_POLL_INTERVAL_SEC", "ANCHOR_ACCESS_TTL_SEC",
    "ANCHOR_REFRESH_TTL_SEC", "AUTH_FAILURE_WINDOW_SEC", "AUTH_MAX_FAILURES_PER_IP",
    "AUTH_MAX_FAILURES_PER_ACCOUNT", "DEVICE_MAX_POLLS_PER_IP_PER_MIN",
    "INVITE_DELIVERY", "AGENT_RATE_LIMIT", "AGENT_RATE_WINDOW_SEC", "METRICS_RETENTION_DAYS", "OIDC_ISSUER", "OIDC_AUDIENCE", "OIDC_EMAIL_CLAIM", "OIDC_NAME_CLAIM", "OIDC_JWKS_CACHE_SEC",
)


def base_env(env_extra=None):
    """A development environment with fresh JWT and worker secrets, plus `env_extra` (a value of
    None removes the variable)."""
    return build_env(env_extra, clear=CONFIG_VARS, defaults={
        "ENV": "development", "JWT_SECRET_KEY": random_string(48),
        "WORKER_SECRET_KEY": random_string(48)})


class ControlServer(Server):
    def __init__(self, workdir, own_workdir, env, db, db_url, db_path, pg_admin_url, pg_dbname):
        super().__init__(env, workdir)
        self._own_workdir = own_workdir
        self.base_url = None
        self.db = db
        self.db_url = db_url
        self.db_path = db_path
        self.pg_admin_url = pg_admin_url
        self.pg_dbname = pg_dbname
        self.jwt_secret = env.get("JWT_SECRET_KEY")
        self.worker_secret = env.get("WORKER_SECRET_KEY")

    @property
    def logs(self):
        return self.process.logs

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

    def stop(self, drop_database=True):
        """SIGTERM, wait, then SIGKILL; removes the temporary directory and database this server
        created (not those it was given)."""
        first = not self._stopped
        returncode = super().stop()
        if first and drop_database and not keep_files():
            if self.pg_dbname:
                database.drop_pg_database(self.pg_admin_url, self.pg_dbname)
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return returncode

    # -- database inspection (schema-agnostic) ---------------------------------------------

    def database_bytes(self):
        """Everything the database holds, as bytes: the SQLite files, or a pg_dump of the DB."""
        return database.database_bytes(self.db, self.db_path, self.db_url)

    def execute(self, sql):
        """Runs one SQL statement on the application's database (SQLite or PostgreSQL), e.g. the
        operator grant that docs/configuration.md describes."""
        database.execute(self.db, self.db_path, self.db_url, sql)

    def table_counts(self):
        """{table: row count} for every table of the application's database."""
        return database.table_counts(self.db, self.db_path, self.db_url)


def _launch(server, port, args, timeout):
    """Starts the process of `server` on 127.0.0.1:`port` and waits until it listens."""
    cmd = [AG_BIN, "control", "--listen", "127.0.0.1:%d" % port] + list(args or [])
    try:
        server.process = Process(cmd, env=server.env, cwd=server.workdir)
    except OSError:
        server.stop()
        raise
    stop_at_exit(server)
    match = server.process.wait_output(
        lambda: server.process.output.first_match(CONTROL_LISTEN_RE), timeout)
    if match is None:
        exited = server.process.proc.poll()
        server.stop()
        raise RuntimeError("control plane did not report listening on 127.0.0.1:%d within %.0fs "
                           "(exit code %r); output:\n%s" % (port, timeout, exited, server.logs))
    server.port = int(match.group(1))
    server.base_url = "http://127.0.0.1:%d" % server.port
    return server


def start_control(db=None, env_extra=None, workdir=None, db_url=None, sqlite_path=None,
                  args=None, timeout=START_TIMEOUT_SEC, port=0):
    """Starts `antigravity control --listen 127.0.0.1:<port>` (default 0: any free port) and
    waits until it listens.

    db: "sqlite" or "postgres" (default: AG_DB). env_extra: variables to add; a value of None
    removes the variable. workdir/db_url/sqlite_path: reuse an existing directory or database
    (for restart tests); by default everything is fresh.
    """
    db = db or AG_DB
    if db not in ("sqlite", "postgres"):
        raise ValueError("unknown database kind %r" % db)
    pg_admin_url = pg_dbname = db_path = None
    if db_url is None and db == "postgres":
        pg_admin_url = database.pg_required()
        pg_dbname, db_url = database.create_pg_database(pg_admin_url)
    own_workdir = workdir is None
    if own_workdir:
        workdir = tempfile.mkdtemp(prefix="ag-control-")
    if db_url is None:
        db_path = sqlite_path or os.path.join(workdir, "ag.db")
        db_url = "sqlite:///" + db_path
    elif db == "sqlite":
        db_path = db_url[len("sqlite:///"):] if db_url.startswith("sqlite:///") else None
    env = base_env(dict({"DATABASE_URL": db_url}, **(env_extra or {})))
    server = ControlServer(workdir, own_workdir, env, db, db_url, db_path, pg_admin_url, pg_dbname)
    return _launch(server, port, args, timeout)


def start_control_at(port, workdir, db_url, env_extra=None, timeout=START_TIMEOUT_SEC):
    """`antigravity control` on 127.0.0.1:`port` against `db_url` (SQLite), for restarts on the
    same address and database. The caller owns `workdir` and the database."""
    env = base_env(dict({"DATABASE_URL": db_url}, **(env_extra or {})))
    db_path = db_url[len("sqlite:///"):] if db_url.startswith("sqlite:///") else None
    server = ControlServer(workdir, False, env, "sqlite", db_url, db_path, None, None)
    return _launch(server, port, None, timeout)


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
