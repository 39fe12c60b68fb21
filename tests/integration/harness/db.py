"""The application's database as the tests see it: fresh PostgreSQL databases (created and dropped
through `psql` on AG_TEST_PG_URL), and schema-agnostic inspection of a SQLite file or a
PostgreSQL database (all its bytes, one SQL statement, row counts)."""

import os
import sqlite3
import string
import subprocess
import unittest
import urllib.parse

from .common import random_string


def pg_required():
    """Returns the PostgreSQL admin URL, or skips (fails when AG_TEST_REQUIRE_PG=1)."""
    url = os.environ.get("AG_TEST_PG_URL", "").strip()
    if url:
        return url
    if os.environ.get("AG_TEST_REQUIRE_PG") == "1":
        raise AssertionError("AG_TEST_REQUIRE_PG=1 but AG_TEST_PG_URL is not set")
    raise unittest.SkipTest("AG_TEST_PG_URL is not set; PostgreSQL tests skipped")


def pg_url_with_db(admin_url, dbname):
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
    return name, pg_url_with_db(admin_url, name)


def drop_pg_database(admin_url, name):
    try:
        psql(admin_url, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name, check=False)
    except Exception:  # best effort
        pass


def database_bytes(db, db_path, db_url):
    """Everything the database holds, as bytes: the SQLite files, or a pg_dump of the DB."""
    if db == "sqlite":
        chunks = []
        for suffix in ("", "-wal", "-journal", "-shm"):
            path = db_path + suffix
            if os.path.exists(path):
                with open(path, "rb") as f:
                    chunks.append(f.read())
        return b"\n".join(chunks)
    proc = subprocess.run(["pg_dump", "--no-owner", db_url], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError("pg_dump failed: " + proc.stderr.decode("utf-8", "replace"))
    return proc.stdout


def execute(db, db_path, db_url, sql):
    """Runs one SQL statement on the database (SQLite or PostgreSQL)."""
    if db == "sqlite":
        conn = sqlite3.connect(db_path, timeout=10)
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
    else:
        psql(db_url, sql)


def query(db, db_path, db_url, sql):
    """Rows of one SELECT, as tuples of strings (None for NULL on SQLite; '' on PostgreSQL)."""
    if db == "sqlite":
        conn = sqlite3.connect(db_path, timeout=10)
        try:
            return [tuple(None if v is None else str(v) for v in row) for row in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    out = psql(db_url, sql)
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def table_counts(db, db_path, db_url):
    """{table: row count} for every table of the database."""
    if db == "sqlite":
        conn = sqlite3.connect(db_path, timeout=10)
        try:
            names = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
            return {n: conn.execute('SELECT count(*) FROM "%s"' % n.replace('"', '""')).fetchone()[0]
                    for n in names}
        finally:
            conn.close()
    out = psql(db_url,
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
