"""Integration tests of the command line: `migrate`, `--help`, and start-up secret checks.

Run: python3 tests/integration/test_migrate.py
"""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402

# Quick failure: a misconfigured production server must exit, not start serving.
EXIT_TIMEOUT_SEC = 15


def sqlite_tables(path):
    conn = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"))
    finally:
        conn.close()


class TempDirTestCase(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ag-migrate-")
        self.addCleanup(shutil.rmtree, self.tmp, True)


class MigrateTests(TempDirTestCase):

    def test_migrate_creates_the_sqlite_schema(self):
        path = os.path.join(self.tmp, "fresh.db")
        env = {"DATABASE_URL": "sqlite:///" + path}
        code, out = h.run_binary(["migrate"], env, cwd=self.tmp)
        self.assertEqual(code, 0, out)
        self.assertTrue(os.path.exists(path), "migrate did not create %s" % path)
        tables = sqlite_tables(path)
        self.assertTrue(tables, "migrate created no tables")
        # Idempotent: a second run succeeds and changes nothing.
        code, out = h.run_binary(["migrate"], env, cwd=self.tmp)
        self.assertEqual(code, 0, out)
        self.assertEqual(sqlite_tables(path), tables)

    def test_server_runs_on_a_migrated_database(self):
        path = os.path.join(self.tmp, "migrated.db")
        code, out = h.run_binary(["migrate"], {"DATABASE_URL": "sqlite:///" + path}, cwd=self.tmp)
        self.assertEqual(code, 0, out)
        server = h.start_control("sqlite", workdir=self.tmp, db_url="sqlite:///" + path)
        try:
            resp = server.request("GET", "/health")
            self.assertEqual(resp.status, 200, repr(resp))
            self.assertEqual(resp.json()["database"], "sqlite")
            user = h.register_user(server)
            h.create_project(server, user.token)
        finally:
            server.stop()
        # Migrating a database that is in use keeps its data.
        code, out = h.run_binary(["migrate"], {"DATABASE_URL": "sqlite:///" + path}, cwd=self.tmp)
        self.assertEqual(code, 0, out)
        counts = {}
        conn = sqlite3.connect(path)
        try:
            for table in sqlite_tables(path):
                counts[table] = conn.execute('SELECT count(*) FROM "%s"' % table).fetchone()[0]
        finally:
            conn.close()
        self.assertGreater(sum(counts.values()), 0, "data lost after a second migrate: %r" % counts)

    def upgrade_from_schema_6(self, db, url, execute, query):
        """A database made by the release before operators (schema 6) is upgraded: its first user
        becomes the operator, the others stay ordinary users, and tokens get the creator label.
        execute(sql) runs statements on the database; query(sql) returns its rows as tuples of
        strings."""
        code, out = h.run_binary(["migrate"], {"DATABASE_URL": url}, cwd=self.tmp)
        self.assertEqual(code, 0, out)
        server = h.start_control(db, workdir=self.tmp, db_url=url)
        try:
            first = h.register_user(server)
            second = h.register_user(server)
            third = h.register_user(server)
            h.create_project(server, first.token)
        finally:
            server.stop()
        # Back to schema 6, as the previous release left it.
        execute("DROP TABLE agents; DROP TABLE traffic_hourly; DROP TABLE traffic_latency; DROP TABLE traffic_batches;"
                "DROP INDEX audit_log_org; ALTER TABLE audit_log DROP COLUMN actor_type;"
                "ALTER TABLE audit_log DROP COLUMN org_id; ALTER TABLE audit_log DROP COLUMN project_id;"
                "DROP INDEX projects_org_name; DROP INDEX projects_org; ALTER TABLE projects DROP COLUMN org_id;"
                "ALTER TABLE users DROP COLUMN active_org_id; DROP TABLE invites; DROP TABLE memberships;"
                "DROP TABLE organizations;"
                "DROP TABLE external_identities; DROP TABLE device_access_tokens; DROP TABLE device_codes; DROP TABLE webauthn_challenges;"
                "DROP TABLE passkeys; ALTER TABLE sessions DROP COLUMN kind;"
                "ALTER TABLE sessions DROP COLUMN client_id; ALTER TABLE refresh_tokens DROP COLUMN kind;"
                "ALTER TABLE users DROP COLUMN is_operator;"
                "ALTER TABLE gateway_tokens DROP COLUMN created_by_label;"
                "DELETE FROM schema_migrations WHERE version >= 7;")
        code, out = h.run_binary(["migrate"], {"DATABASE_URL": url}, cwd=self.tmp)
        self.assertEqual(code, 0, out)
        self.assertEqual(dict(query("SELECT email, is_operator FROM users")),
                         {first.email: "1", second.email: "0", third.email: "0"})
        self.assertEqual(query("SELECT version, name FROM schema_migrations WHERE version = 7"),
                         [("7", "operators and token creator labels")])
        # Migration 10: every user owns a personal organisation (its id the user's) with their projects.
        self.assertEqual(query("SELECT COUNT(*) FROM organizations WHERE personal = 1"), [("3",)])
        self.assertEqual(query("SELECT COUNT(*) FROM memberships m JOIN users u ON u.id = m.user_id "
                               "WHERE m.org_id = u.id AND m.role = 'owner' AND u.active_org_id = u.id"), [("3",)])
        self.assertEqual(query("SELECT COUNT(*) FROM projects WHERE org_id IS NULL OR org_id <> owner_id"), [("0",)])
        self.assertEqual(query("SELECT org_id FROM projects"), [(first.id,)])
        # Migration 12: earlier audit records name their actor's kind, and their project and its
        # organisation where the target is a project.
        self.assertEqual(query("SELECT actor_type, org_id, project_id FROM audit_log WHERE action = 'project.create'"),
                         [("user", first.id, query("SELECT id FROM projects")[0][0])])
        self.assertEqual(query("SELECT COUNT(*) FROM agents"), [("0",)])
        # Migration 8: the sessions made before it are browser sessions.
        self.assertEqual(query("SELECT DISTINCT kind FROM sessions"), [("web",)])
        self.assertEqual(query("SELECT DISTINCT kind FROM refresh_tokens"), [("web",)])
        # The label column is there: selecting it fails otherwise.
        self.assertEqual(query("SELECT count(created_by_label) FROM gateway_tokens"), [("0",)])
        server = h.start_control(db, workdir=self.tmp, db_url=url)
        try:
            for user, status in ((first, 200), (second, 403), (third, 403)):
                token = h.login(server, user.email, user.password)["access_token"]
                for path in ("/gateways", "/gateways/propagation"):
                    self.assertEqual(server.request("GET", path, token=token).status, status,
                                     "%s %s" % (path, user.email))
        finally:
            server.stop()

    def test_upgrade_makes_the_first_user_the_operator(self):
        path = os.path.join(self.tmp, "previous.db")

        def execute(sql):
            conn = sqlite3.connect(path)
            try:
                conn.executescript(sql)
                conn.commit()
            finally:
                conn.close()

        def query(sql):
            conn = sqlite3.connect(path)
            try:
                return [tuple(str(v) for v in row) for row in conn.execute(sql).fetchall()]
            finally:
                conn.close()

        self.upgrade_from_schema_6("sqlite", "sqlite:///" + path, execute, query)

    def test_upgrade_makes_the_first_user_the_operator_postgres(self):
        admin = h.pg_required()
        name, url = h.create_pg_database(admin)
        self.addCleanup(h.drop_pg_database, admin, name)

        def query(sql):
            return [tuple(line.split("|")) for line in h.psql(url, sql).splitlines() if line]

        self.upgrade_from_schema_6("postgres", url, lambda sql: h.psql(url, sql), query)

    def test_migrate_postgres(self):
        admin = h.pg_required()
        name, url = h.create_pg_database(admin)
        self.addCleanup(h.drop_pg_database, admin, name)
        for _ in range(2):
            code, out = h.run_binary(["migrate"], {"DATABASE_URL": url}, cwd=self.tmp)
            self.assertEqual(code, 0, out)
        tables = h.psql(url, "SELECT count(*) FROM information_schema.tables "
                             "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")
        self.assertGreater(int(tables.strip()), 0, "migrate created no tables")

    def test_migrate_with_a_bad_database_url_fails(self):
        for url in ("nosuchdb://x", "postgresql://postgres@127.0.0.1:1/nothing"):
            with self.subTest(url=url):
                code, out = h.run_binary(["migrate"], {"DATABASE_URL": url}, cwd=self.tmp)
                self.assertNotEqual(code, 0, out)
                self.assertTrue(out.strip(), "failure without a message")


class HelpTests(unittest.TestCase):

    def test_top_level_help(self):
        code, out = h.run_binary(["--help"])
        self.assertEqual(code, 0, out)
        self.assertIn("control", out)
        self.assertIn("migrate", out)

    def test_control_help(self):
        code, out = h.run_binary(["control", "--help"])
        self.assertEqual(code, 0, out)
        self.assertIn("--listen", out)

    def test_migrate_help(self):
        code, out = h.run_binary(["migrate", "--help"])
        self.assertEqual(code, 0, out)
        self.assertIn("migrat", out.lower())
        self.assertIn("--status", out)

    def test_unknown_command_fails(self):
        code, out = h.run_binary(["no-such-command"])
        self.assertNotEqual(code, 0, out)
        self.assertTrue(out.strip(), "failure without a message")

    def test_unknown_option_fails(self):
        code, out = h.run_binary(["control", "--no-such-option"], timeout=EXIT_TIMEOUT_SEC)
        self.assertNotEqual(code, 0, out)


class StartupSecretTests(TempDirTestCase):

    def run_control(self, env_extra):
        env = dict({"DATABASE_URL": "sqlite:///" + os.path.join(self.tmp, "ag.db")}, **env_extra)
        start = time.monotonic()
        try:
            code, out = h.run_binary(["control", "--listen", "127.0.0.1:0"], env, cwd=self.tmp,
                                     timeout=EXIT_TIMEOUT_SEC)
        except subprocess.TimeoutExpired as e:
            output = (e.output or b"").decode("utf-8", "replace")
            self.fail("control kept running with %r:\n%s" % (env_extra, output))
        return code, out, time.monotonic() - start

    def test_production_requires_jwt_secret(self):
        good_worker = h.random_string(48)
        for jwt in (None, "", "secret"):
            with self.subTest(jwt=jwt):
                code, out, _ = self.run_control({"ENV": "production", "JWT_SECRET_KEY": jwt,
                                                 "WORKER_SECRET_KEY": good_worker})
                self.assertNotEqual(code, 0, out)
                self.assertIn("JWT_SECRET_KEY", out)

    def test_production_requires_worker_secret(self):
        good_jwt = h.random_string(48)
        for worker in (None, "", "secret"):
            with self.subTest(worker=worker):
                code, out, _ = self.run_control({"ENV": "production", "JWT_SECRET_KEY": good_jwt,
                                                 "WORKER_SECRET_KEY": worker})
                self.assertNotEqual(code, 0, out)
                self.assertIn("WORKER_SECRET_KEY", out)

    def test_production_starts_with_strong_secrets(self):
        server = h.start_control("sqlite", env_extra={"ENV": "production"}, workdir=self.tmp)
        try:
            resp = server.request("GET", "/health")
            self.assertEqual(resp.status, 200, repr(resp))
        finally:
            server.stop()

    def test_invalid_jwt_algorithm_is_refused(self):
        code, out, _ = self.run_control({"JWT_ALGORITHM": "RS256"})
        self.assertNotEqual(code, 0, out)
        self.assertIn("JWT_ALGORITHM", out)


class DevelopmentSecretTests(TempDirTestCase):

    def test_generated_secrets_are_saved(self):
        db_url = "sqlite:///" + os.path.join(self.tmp, "ag.db")
        no_secrets = {"ENV": "development", "JWT_SECRET_KEY": None, "WORKER_SECRET_KEY": None}
        server = h.start_control("sqlite", env_extra=no_secrets, workdir=self.tmp, db_url=db_url)
        try:
            warnings = [line for line in server.logs.splitlines() if "generated" in line.lower()]
            self.assertTrue(warnings, "no warning about generated secrets:\n" + server.logs)
            user = h.register_user(server)
            self.assertEqual(server.request("GET", "/projects", token=user.token).status, 200)
        finally:
            server.stop(drop_database=False)
        # A restart in the same place reuses the saved secrets: the old token still works.
        server = h.start_control("sqlite", env_extra=no_secrets, workdir=self.tmp, db_url=db_url)
        try:
            resp = server.request("GET", "/auth/session", token=user.token)
            self.assertEqual(resp.status, 200, repr(resp))
            self.assertIs(resp.json()["authenticated"], True)
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
