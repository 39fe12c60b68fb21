"""Settings read from the environment, and small helpers every other module of the harness uses.

Environment:
  AG_BIN              path to the binary (default: <repo>/build/antigravity)
  AG_DB               "sqlite" (default) or "postgres": the database the API tests run against
  AG_TEST_PG_URL      admin URL of a PostgreSQL server, e.g. postgresql://postgres@127.0.0.1:5432/postgres
  AG_TEST_REQUIRE_PG  "1": a missing AG_TEST_PG_URL fails instead of skipping
  AG_TEST_KEEP        "1": keep temporary directories and databases for inspection
"""

import calendar
import hashlib
import os
import re
import secrets
import string
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))
AG_BIN = os.environ.get("AG_BIN", os.path.join(REPO_ROOT, "build", "antigravity"))
AG_DB = os.environ.get("AG_DB", "sqlite").strip().lower() or "sqlite"
if AG_DB in ("pg", "postgresql"):
    AG_DB = "postgres"

START_TIMEOUT_SEC = 20.0
STOP_TIMEOUT_SEC = 10.0
REQUEST_TIMEOUT_SEC = 30.0
MB = 1024 * 1024

ALNUM = string.ascii_letters + string.digits
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase

UUID4_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
API_KEY_RE = re.compile(r"^agk_[0-9A-Za-z]{8}_[0-9A-Za-z]{49}$")
REFRESH_RE = re.compile(r"^agr_[0-9A-Za-z]{43}$")
SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


def keep_files():
    """True when AG_TEST_KEEP=1: temporary directories and databases are left for inspection."""
    return os.environ.get("AG_TEST_KEEP") == "1"


def random_string(n, alphabet=ALNUM):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def sha256_hex(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_time(value):
    """Parses an RFC 3339 UTC timestamp with second precision into epoch seconds."""
    return calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))


def rfc3339(epoch_seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch_seconds)))


def poll_until(fn, ok, timeout, interval=0.05):
    """Calls fn() until ok(result) or `timeout` seconds pass; returns (result, elapsed, ok)."""
    start = time.monotonic()
    while True:
        result = fn()
        elapsed = time.monotonic() - start
        if ok(result):
            return result, elapsed, True
        if elapsed > timeout:
            return result, elapsed, False
        time.sleep(interval)


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


def report(fmt, *args):
    """Prints a measured figure (kept in ctest's output)."""
    sys.stderr.write(("\n    [measured] " + fmt + "\n") % args)
    sys.stderr.flush()
