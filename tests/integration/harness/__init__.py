"""The integration tests' harness: runs the real `antigravity` binary (control plane, worker) and
what it talks to (upstreams, Redis, PostgreSQL) on 127.0.0.1, and talks to them over HTTP.
Standard library only.

The tests use it as one namespace (`import harness as h`; `h.start_worker(...)`); the code lives
in one module per topic:

  common         AG_BIN, AG_DB, timeouts, random strings, times, poll_until, report
  processes      every process: environment, output capture, readiness waits, stop/kill, cleanup
  http           HTTP client (Response, Headers), streamed bodies, raw response parsing
  websocket      WebSocket frames and an echo session through a worker
  db             fresh PostgreSQL databases; SQLite/PostgreSQL inspection
  control        `antigravity control` (ControlServer), one-shot runs of the binary
  api            control API calls that set up a test: users, projects, keys
  jwt_tools      HS256/384/512 JWT forging and unverified decoding
  worker_config  API keys and worker config documents/files
  worker         `antigravity worker` (Worker), its access log, WorkerTestCase
  upstream       recording in-process upstream (Upstream, QuietUpstream)
  raw_upstream   misbehaving raw TCP upstream (RawUpstream)
  redis_server   restartable redis-server (RedisServer)
  load           LoadGenerator, generated request bodies
  metrics        Prometheus metrics of a worker, RSS sampling
  browser        headless Chromium over the DevTools protocol, WebAuthn virtual authenticators
  soft_authenticator  a software WebAuthn authenticator (ES256, attestation none)

Environment: AG_BIN, AG_DB, AG_TEST_PG_URL, AG_TEST_REQUIRE_PG, AG_TEST_KEEP (see common.py).
"""

from .api import (ControlApiTestCase, User, create_key, create_project, find_project, login, new_token,  # noqa: F401
                  register_user, unique_email)
from .browser import Browser, BrowserError  # noqa: F401
from .common import (AG_BIN, AG_DB, ALNUM, API_KEY_RE, BASE62, MB, REFRESH_RE,  # noqa: F401
                     REPO_ROOT, REQUEST_TIMEOUT_SEC, RFC3339_RE, SHA256_HEX_RE, START_TIMEOUT_SEC,
                     STOP_TIMEOUT_SEC, UUID4_RE, keep_files, parse_time, percentile, poll_until,
                     random_string, report, rfc3339, sha256_hex)
from .control import (CONFIG_VARS, CONTROL_LISTEN_RE, ControlServer, base_env,  # noqa: F401
                      run_binary, start_control, start_control_at)
from .db import (create_pg_database, drop_pg_database, pg_required, pg_url_with_db,  # noqa: F401
                 psql, execute as db_execute, query as db_query)
from .http import (Headers, Response, error_detail, http_request, read_http_head,  # noqa: F401
                   read_http_response, stream_request)
from .jwt_tools import b64url_decode, b64url_encode, jwt_decode_unverified, jwt_encode  # noqa: F401
from .load import NO_LIMIT, LoadGenerator, sha256_stream  # noqa: F401
from .metrics import RssSampler, metric_sum, worker_metric  # noqa: F401
from .processes import (Output, Process, build_env, fd_count, free_port, port_open,  # noqa: F401
                        remove_at_exit, rss_kb, stop_at_exit, wait_for_http, wait_for_port,
                        wait_until)
from .raw_upstream import RawUpstream  # noqa: F401
from .soft_authenticator import SoftAuthenticator, cbor  # noqa: F401
from .redis_server import RedisServer, redis_command  # noqa: F401
from .upstream import (QuietUpstream, Upstream, UpstreamHandler, UpstreamServer,  # noqa: F401
                       big_pattern, reset_connection)
from .websocket import (WS_GUID, SockReader, websocket_echo, ws_accept, ws_frame,  # noqa: F401
                        ws_read_frame)
from .worker import (ADMIN_LISTEN_RE, REQUEST_ID_RE, WORKER_LISTEN_RE, WORKER_VARS,  # noqa: F401
                     Worker, WorkerTestCase, start_worker, start_worker_at, wait_ready, worker_env)
from .worker_config import (base62_fixed, config_document, key_entry, key_with_checksum,  # noqa: F401
                            make_key, next_version, project_entry, write_config, write_raw)
