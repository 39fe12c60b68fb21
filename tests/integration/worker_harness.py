"""Helpers for the worker (data plane) integration tests.

- `Upstream`: a real HTTP/1.1 keep-alive backend on 127.0.0.1 that records every request it gets
  (method, target, headers, body length and SHA-256, hashed while streaming) and answers JSON.
- `start_worker`: runs `antigravity worker` on 127.0.0.1 with port 0 for both listeners, drains
  its output in background threads, and parses the access log (JSON lines on stdout).
- `poll_until`, `stream_request`: waiting for a condition; a request with a streamed body.
- `WorkerTestCase`: assertions on the worker's answers (request ids, errors, proxied responses).
- `make_key`, `key_entry`, `project_entry`, `write_config`: valid API keys and worker config
  documents (docs/api.md, "API keys" and "Worker config").

Standard library only. Uses `harness.py` for the binary path, the HTTP client and the environment.
"""

import base64
import hashlib
import http.client
import http.server
import json
import os
import re
import secrets
import select
import signal
import socket
import socketserver
import string
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid
import zlib

import harness

AG_BIN = harness.AG_BIN
START_TIMEOUT_SEC = 20.0
STOP_TIMEOUT_SEC = 10.0
REQUEST_TIMEOUT_SEC = 30.0

LISTEN_RE = re.compile(r"worker listening on http://127\.0\.0\.1:(\d+)")
ADMIN_LISTEN_RE = re.compile(r"worker admin listening on http://127\.0\.0\.1:(\d+)")

# Variables the worker reads; cleared from the inherited environment so the developer's shell
# cannot leak configuration into a test.
WORKER_VARS = (
    "WORKER_LISTEN", "WORKER_ADMIN_LISTEN", "WORKER_THREADS", "CONTROL_API_BASE_URL",
    "CONTROL_WORKER_SHARED_SECRET", "WORKER_SECRET_KEY", "WORKER_CONFIG_FILE",
    "WORKER_CONFIG_POLL_SEC", "REDIS_URL", "WORKER_TRUSTED_PROXIES", "WORKER_HEADER_TIMEOUT_SEC",
    "WORKER_IDLE_TIMEOUT_SEC", "WORKER_UPSTREAM_CONNECT_TIMEOUT_MS", "WORKER_UPSTREAM_TIMEOUT_SEC",
    "WORKER_DRAIN_SEC", "WORKER_MAX_HEADER_BYTES", "WORKER_ACCESS_LOG",
)

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11D65"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # what the worker accepts and generates

Response = harness.Response
Headers = harness.Headers


# ---------------------------------------------------------------------------------------------
# Keys and config documents


def base62_fixed(value, width):
    """Fixed-width base62 (alphabet 0-9A-Za-z), most significant digit first."""
    out = []
    for _ in range(width):
        out.append(BASE62[value % 62])
        value //= 62
    if value:
        raise ValueError("value does not fit in %d base62 digits" % width)
    return "".join(reversed(out))


def key_with_checksum(body):
    """Appends the 6-character base62 CRC-32 of `body`."""
    return body + base62_fixed(zlib.crc32(body.encode("ascii")), 6)


def make_key():
    """A valid API key in our format; returns (key, sha256 hex of the key)."""
    body = "agk_" + harness.random_string(8, BASE62) + "_" + harness.random_string(43, BASE62)
    key = key_with_checksum(body)
    return key, hashlib.sha256(key.encode("ascii")).hexdigest()


def rfc3339(epoch_seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch_seconds)))


def key_entry(key, key_hash=None, expires_at=None, key_id=None, rate_limit=None):
    """One `keys[]` element. `expires_at`: None, an RFC 3339 string or epoch seconds.
    `rate_limit`: the key's own (requests_per_minute, burst), replacing the project's."""
    if isinstance(expires_at, (int, float)):
        expires_at = rfc3339(expires_at)
    entry = {
        "id": key_id or str(uuid.uuid4()),
        "public_id": key[4:12],
        "hash": key_hash or hashlib.sha256(key.encode("ascii")).hexdigest(),
        "expires_at": expires_at,
        "key": key,  # test-side only; stripped by write_config
    }
    if rate_limit is not None:
        entry["rate_limit"] = {"requests_per_minute": rate_limit[0], "burst": rate_limit[1]}
    return entry


def project_entry(upstream_url, keys=(), requests_per_minute=6000, burst=1000,
                  max_body_bytes=10485760, project_id=None, name=None, key_policy="multiple"):
    """One `projects[]` element of the worker config document."""
    keys = list(keys)
    return {
        "id": project_id or str(uuid.uuid4()),
        "name": name or ("proj-" + harness.random_string(8)),
        "upstream_url": upstream_url,
        "upstream_base_url": upstream_url,
        "domains": [],
        "api_keys": [k["hash"] for k in keys],
        "keys": keys,
        "rate_limit": {"requests_per_minute": requests_per_minute, "burst": burst},
        "key_policy": key_policy,
        "max_body_bytes": max_body_bytes,
    }


_version_lock = threading.Lock()
_version_counter = [0]


def next_version():
    with _version_lock:
        _version_counter[0] += 1
        return _version_counter[0]


def config_document(projects, version=None):
    clean = []
    for p in projects:
        p = dict(p)
        p["keys"] = [{k: v for k, v in key.items() if k != "key"} for key in p.get("keys", [])]
        clean.append(p)
    return {
        "schema": 1,
        "version": next_version() if version is None else version,
        "generated_at": rfc3339(time.time()),
        "projects": clean,
    }


def write_raw(path, data):
    """Replaces `path` atomically (write to a sibling, then rename) with `data` (bytes or str)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cfg-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_config(path, projects, version=None):
    """Writes the worker config JSON document; returns the document written."""
    doc = config_document(projects, version)
    write_raw(path, json.dumps(doc, indent=2))
    return doc


# ---------------------------------------------------------------------------------------------
# Upstream


def free_port():
    """A port nothing listens on (bound and released)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def big_pattern(n):
    """The deterministic bytes /big?bytes=N sends."""
    block = bytes(range(256)) * 256  # 64 KiB
    out = hashlib.sha256()
    left = n
    while left > 0:
        piece = block[:min(left, len(block))]
        out.update(piece)
        left -= len(piece)
    return out.hexdigest()


class _BodyError(Exception):
    pass


class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "test-upstream"
    sys_version = ""

    def log_message(self, fmt, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        self.server.upstream._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        self.server.upstream._track(self.connection, False)

    # -- body ------------------------------------------------------------------------------

    def _read_exact(self, n, digest):
        total = 0
        while total < n:
            chunk = self.rfile.read(min(65536, n - total))
            if not chunk:
                raise _BodyError("eof after %d of %d bytes" % (total, n))
            digest.update(chunk)
            total += len(chunk)
        return total

    def _read_body(self):
        """Reads the request body in chunks; returns (length, sha256 hex, complete)."""
        digest = hashlib.sha256()
        total = 0
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        try:
            if "chunked" in te:
                while True:
                    line = self.rfile.readline(65537)
                    if not line:
                        raise _BodyError("eof in chunk size")
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while True:  # trailers
                            t = self.rfile.readline(65537)
                            if not t or t in (b"\r\n", b"\n"):
                                break
                        break
                    total += self._read_exact(size, digest)
                    if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                        raise _BodyError("bad chunk terminator")
            else:
                length = int(self.headers.get("Content-Length") or 0)
                total = self._read_exact(length, digest)
        except (_BodyError, ValueError, OSError):
            return total, digest.hexdigest(), False
        return total, digest.hexdigest(), True

    # -- responses -------------------------------------------------------------------------

    def _send_json(self, status, obj, extra_headers=None):
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra_headers or []):
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _echo(self, record, status=200):
        self._send_json(status, {
            "method": record["method"], "path": record["path"],
            "headers": record["header_dict"], "body_len": record["body_len"],
            "sha256": record["sha256"], "complete": record["complete"],
        }, [("X-Upstream", "yes")])

    def _peer_closed(self):
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if r:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
        return False

    def _handle(self):
        up = self.server.upstream
        parsed = urllib.parse.urlsplit(self.path)
        route = parsed.path
        query = urllib.parse.parse_qs(parsed.query)
        header_pairs = list(self.headers.items())
        header_dict = {}
        for name, value in header_pairs:
            k = name.lower()
            header_dict[k] = header_dict[k] + ", " + value if k in header_dict else value
        record = {
            "method": self.command, "path": self.path, "route": route, "headers": header_pairs,
            "header_dict": header_dict, "body_len": 0, "sha256": hashlib.sha256(b"").hexdigest(),
            "complete": False, "time": time.monotonic(),
        }
        is_ws = route == "/ws" or route.endswith("/ws")
        if route.endswith("/slowread"):  # a backend slow to start reading the body
            up._stop.wait(int((query.get("ms") or ["1000"])[0]) / 1000.0)
        if not is_ws:
            record["body_len"], record["sha256"], record["complete"] = self._read_body()
        else:
            record["complete"] = True
        up._record(record)
        if not record["complete"]:
            self.close_connection = True
            return

        if route.endswith("/slow"):
            ms = int((query.get("ms") or ["100"])[0])
            if up._stop.wait(ms / 1000.0):
                self.close_connection = True
                return
            self._echo(record)
        elif route.endswith("/hang"):
            while not up._stop.wait(0.1):
                if self._peer_closed():
                    break
            self.close_connection = True
        elif route.endswith("/sized"):  # big_pattern's bytes with a Content-Length
            # Head and body in one write, so that a small body arrives with the head (the worker
            # forwards what arrived with the head in one write of its own).
            n = int((query.get("bytes") or ["0"])[0])
            block = bytes(range(256)) * (n // 256 + 1)
            self.log_request(200)
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % n + block[:n])
        elif route.endswith("/big"):
            n = int((query.get("bytes") or ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = bytes(range(256)) * 256
            left = n
            while left > 0:
                piece = block[:min(left, len(block))]
                self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                left -= len(piece)
            self.wfile.write(b"0\r\n\r\n")
        elif "/status/" in route:
            code = int(route.rsplit("/", 1)[1])
            self._echo(record, status=code)
        elif route.endswith("/hop"):
            # hop-by-hop response headers the worker must not pass on
            self._send_json(200, {"path": record["path"]}, [
                ("Connection", "X-Resp-Hop"), ("X-Resp-Hop", "secret"),
                ("Keep-Alive", "timeout=99"), ("X-Resp-E2E", "kept"), ("X-Upstream", "yes")])
        elif route.endswith("/reset"):
            # Close without answering: RST (SO_LINGER 0).
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass
        elif is_ws:
            self._websocket(record)
        else:
            self._echo(record)

    # -- WebSocket echo --------------------------------------------------------------------

    def _websocket(self, record):
        self.close_connection = True
        key = self.headers.get("Sec-WebSocket-Key")
        if (self.headers.get("Upgrade") or "").lower() != "websocket" or not key:
            self._send_json(400, {"detail": "not a websocket upgrade", "headers": record["header_dict"]})
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode("ascii")).digest()).decode()
        self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
        self.server.upstream._ws_sessions += 1
        while True:
            frame = ws_read_frame(self.rfile)
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 0x8:  # close: answer and stop
                self.wfile.write(ws_frame(payload[:2], opcode=0x8, mask=False))
                return
            if opcode == 0x9:  # ping
                self.wfile.write(ws_frame(payload, opcode=0xA, mask=False))
                continue
            self.wfile.write(ws_frame(payload, opcode=opcode, mask=False))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class SockReader:
    """File-like read(n) over a socket with some bytes already received."""

    def __init__(self, sock, initial=b""):
        self.sock = sock
        self.buf = initial

    def read(self, n):
        while not self.buf:
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return b""
            if not chunk:
                return b""
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def websocket_echo(test, worker, key, texts, path="/ws"):
    """Upgrades `path` through the worker with `key`, checks the 101 and its
    Sec-WebSocket-Accept, sends each text as a masked frame and checks the upstream's echo, then
    closes with 1000 and checks the close answer. `test`: the unittest.TestCase asserting."""
    ws_key = base64.b64encode(os.urandom(16)).decode()
    expected_accept = base64.b64encode(hashlib.sha1((ws_key + WS_GUID).encode()).digest()).decode()
    head = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nX-API-Key: %s\r\n\r\n"
            % (path, worker.port, ws_key, key))
    sock = worker.connect()
    try:
        sock.sendall(head.encode())
        status, headers, rest = read_http_head(sock, 5)
        test.assertEqual(status, 101, "handshake answer: %r %r" % (headers, rest[:300]))
        test.assertEqual(headers.get("Sec-WebSocket-Accept"), expected_accept, headers)
        test.assertEqual((headers.get("Upgrade") or "").lower(), "websocket", headers)
        reader = SockReader(sock, rest)
        for text in texts:
            sock.sendall(ws_frame(text, opcode=0x1, mask=True))
            frame = ws_read_frame(reader)
            test.assertIsNotNone(frame, "tunnel closed before the echo")
            test.assertEqual(frame, (0x1, text.encode()))
        sock.sendall(ws_frame(b"\x03\xe8", opcode=0x8, mask=True))
        frame = ws_read_frame(reader)
        test.assertEqual(frame[0] if frame else None, 0x8)
    finally:
        sock.close()
    return head


def ws_frame(payload, opcode=0x1, mask=True):
    """One final WebSocket frame; client frames are masked, server frames are not."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    head = bytes([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        m = os.urandom(4)
        payload = bytes(b ^ m[i % 4] for i, b in enumerate(payload))
        head += m
    return head + payload


def ws_read_frame(reader):
    """Reads one frame from a file-like object; returns (opcode, payload) or None on EOF."""
    def read(n):
        data = b""
        while len(data) < n:
            chunk = reader.read(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    head = read(2)
    if head is None:
        return None
    opcode = head[0] & 0x0F
    masked = head[1] & 0x80
    n = head[1] & 0x7F
    if n == 126:
        ext = read(2)
        if ext is None:
            return None
        n = struct.unpack("!H", ext)[0]
    elif n == 127:
        ext = read(8)
        if ext is None:
            return None
        n = struct.unpack("!Q", ext)[0]
    mask = read(4) if masked else None
    payload = read(n) if n else b""
    if payload is None or (masked and mask is None):
        return None
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


class _UpstreamServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Upstream:
    """A recording HTTP/1.1 backend on 127.0.0.1 (port 0). See the module docstring."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests = []
        self._conns = set()
        self._stop = threading.Event()
        self._ws_sessions = 0
        self._server = _UpstreamServer(("127.0.0.1", 0), _UpstreamHandler)
        self._server.upstream = self
        self.port = self._server.server_address[1]
        self.host = "127.0.0.1"
        self.url = "http://127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()

    def _record(self, record):
        with self._lock:
            self._requests.append(record)

    def _track(self, conn, add):
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    def matching(self, fragment):
        """Recorded requests whose path contains `fragment`."""
        return [r for r in self.requests if fragment in r["path"]]

    def wait_for(self, predicate, count=1, timeout=5.0):
        """Waits until at least `count` recorded requests satisfy `predicate`; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.requests if predicate(r)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def clear(self):
        with self._lock:
            self._requests.clear()

    def drop_connections(self):
        """Closes every open (keep-alive) connection from the upstream's side."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(conns)

    def stop(self):
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# Worker


_live_workers = []


def _stop_all():
    for w in list(_live_workers):
        try:
            w.stop()
        except Exception:
            pass


import atexit  # noqa: E402

atexit.register(_stop_all)


def worker_env(env_extra=None):
    env = {k: v for k, v in os.environ.items()
           if k not in harness.CONFIG_VARS and k not in WORKER_VARS}
    env["WORKER_CONFIG_POLL_SEC"] = "1"
    for key, value in (env_extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


class _Output:
    """Drains stdout (access log) and stderr (logs) in background threads."""

    def __init__(self, proc):
        self.stdout_lines = []
        self.stderr_lines = []
        self.access = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._drain, args=(proc.stdout, True), daemon=True),
            threading.Thread(target=self._drain, args=(proc.stderr, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _drain(self, stream, is_stdout):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                if is_stdout:
                    self.stdout_lines.append(line)
                    s = line.strip()
                    if s.startswith("{"):
                        try:
                            obj = json.loads(s)
                        except ValueError:
                            obj = None
                        if isinstance(obj, dict):
                            self.access.append(obj)
                else:
                    self.stderr_lines.append(line)
                self._cond.notify_all()
        stream.close()

    def wait(self, check, timeout):
        """Waits until check() (called under the lock) returns something truthy; returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = check()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result
                self._cond.wait(min(remaining, 0.1))

    def join(self, timeout=2.0):
        for t in self._threads:
            t.join(timeout)


class Worker:
    def __init__(self, proc, output, env, workdir):
        self.proc = proc
        self.pid = proc.pid
        self._out = output
        self.env = env
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = None
        self.admin_port = None
        self.returncode = None
        self._stopped = False

    # -- output ----------------------------------------------------------------------------

    def access_log(self):
        with self._out._cond:
            return list(self._out.access)

    def wait_for_log(self, predicate, timeout=5.0):
        """First access-log entry satisfying `predicate`, or None after `timeout` seconds."""
        def check():
            for entry in self._out.access:
                if predicate(entry):
                    return entry
            return None
        return self._out.wait(check, timeout)

    def wait_for_stderr(self, regex, timeout=5.0, start=0):
        """First match of `regex` in stderr lines from index `start` on, or None."""
        if isinstance(regex, str):
            regex = re.compile(regex)

        def check():
            for line in self._out.stderr_lines[start:]:
                m = regex.search(line)
                if m:
                    return m
            return None
        return self._out.wait(check, timeout)

    def stderr_count(self):
        with self._out._cond:
            return len(self._out.stderr_lines)

    @property
    def stdout(self):
        with self._out._cond:
            return "\n".join(self._out.stdout_lines)

    @property
    def stderr(self):
        with self._out._cond:
            return "\n".join(self._out.stderr_lines)

    @property
    def logs(self):
        return self.stderr

    # -- HTTP ------------------------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, raw_body=None, content_type=None,
                key=None, timeout=REQUEST_TIMEOUT_SEC):
        """One request on a fresh connection to the public port; never raises on 4xx/5xx.
        `key` is sent as X-API-Key; `body` as JSON; `raw_body` as is (bytes or an iterable)."""
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["X-API-Key"] = key
        return harness.http_request(self.host, self.port, method, path, body=body, headers=hdrs,
                                    raw_body=raw_body, content_type=content_type, timeout=timeout)

    def admin(self, path, method="GET", timeout=REQUEST_TIMEOUT_SEC):
        return harness.http_request(self.host, self.admin_port, method, path, timeout=timeout)

    def metrics(self):
        resp = self.admin("/metrics")
        if resp.status != 200:
            raise AssertionError("GET /metrics on the admin port: %r" % resp)
        return resp.text

    def wait_ready(self, timeout=10.0):
        """Polls /ready until 200; returns the last response."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                resp = self.admin("/ready", timeout=2)
            except OSError:
                resp = None
            if (resp is not None and resp.status == 200) or time.monotonic() > deadline:
                return resp
            time.sleep(0.1)

    def connect(self, timeout=10.0):
        """A raw TCP socket to the public port."""
        return socket.create_connection((self.host, self.port), timeout=timeout)

    # -- process ---------------------------------------------------------------------------

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("VmRSS not found")

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """Exit code, or None if the process is still running after `timeout` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        """SIGTERM, wait, then SIGKILL. Returns the exit code."""
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
        self._out.join()
        if self in _live_workers:
            _live_workers.remove(self)
        return self.returncode


def start_worker(config_path=None, control_url=None, secret=None, env_extra=None, threads=2,
                 args=None, timeout=START_TIMEOUT_SEC):
    """Starts `antigravity worker` on 127.0.0.1:0 (public and admin) and waits for both
    "listening" lines. Config from `config_path` (--config) or the control plane at `control_url`
    with `secret`. `env_extra`: variables to add (None removes one)."""
    extra = {}
    if control_url is not None:
        extra["CONTROL_API_BASE_URL"] = control_url
    if secret is not None:
        extra["CONTROL_WORKER_SHARED_SECRET"] = secret
    extra.update(env_extra or {})
    env = worker_env(extra)
    cmd = [AG_BIN, "worker", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
           "--threads", str(threads)]
    if config_path is not None:
        cmd += ["--config", config_path]
    cmd += list(args or [])
    workdir = tempfile.mkdtemp(prefix="ag-worker-")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = _Output(proc)
    worker = Worker(proc, out, env, workdir)
    _live_workers.append(worker)

    def check():
        public = admin = None
        for line in out.stderr_lines:
            public = public or LISTEN_RE.search(line)
            admin = admin or ADMIN_LISTEN_RE.search(line)
        return (public, admin) if public and admin else None

    deadline = time.monotonic() + timeout
    found = None
    while time.monotonic() < deadline:
        found = out.wait(check, 0.2)
        if found or proc.poll() is not None:
            break
    if not found:
        found = check()
    if not found:
        exited = proc.poll()
        worker.stop()
        raise RuntimeError("worker did not report both listeners within %.0fs (exit code %r); "
                           "stderr:\n%s\nstdout:\n%s" % (timeout, exited, worker.stderr, worker.stdout))
    worker.port = int(found[0].group(1))
    worker.admin_port = int(found[1].group(1))
    return worker


# ---------------------------------------------------------------------------------------------
# Raw socket helpers


def read_http_head(sock, timeout=5.0):
    """Reads until the end of a response head; returns (status, Headers, leftover bytes), or
    (None, None, data) when the connection closed (or timed out) first."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data:
        if time.monotonic() > deadline:
            return None, None, data
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            return None, None, data
        if not chunk:
            return None, None, data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    pairs = []
    for line in lines[1:]:
        if ":" in line:
            n, v = line.split(":", 1)
            pairs.append((n.strip(), v.strip()))
    return status, Headers(pairs), rest


def read_http_response(f, method="GET"):
    """Reads one response from a binary file object (sock.makefile("rb")):
    (status, Headers, body). Handles Content-Length, chunked, 1xx and bodiless responses;
    status None when the connection closed before a status line."""
    line = f.readline(65537)
    if not line:
        return None, None, b""
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    status = int(parts[1])
    pairs = []
    while True:
        h = f.readline(65537)
        if not h or h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        pairs.append((name.strip(), value.strip()))
    headers = Headers(pairs)
    if status < 200 or status in (204, 304) or method == "HEAD":
        return status, headers, b""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        body = b""
        while True:
            size = int(f.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while f.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return status, headers, body
            body += f.read(size)
            f.readline(3)
    if headers.get("Content-Length") is not None:
        return status, headers, f.read(int(headers["Content-Length"]))
    return status, headers, f.read()


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


def stream_request(worker, method, path, chunks, key=None, content_length=None, headers=None,
                   timeout=60):
    """Sends `chunks` (an iterable of bytes) as the body: with Content-Length when given, chunked
    otherwise. Returns a harness.Response."""
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["X-API-Key"] = key
    if content_length is not None:
        hdrs["Content-Length"] = str(content_length)
    conn = http.client.HTTPConnection(worker.host, worker.port, timeout=timeout)
    try:
        try:
            conn.request(method, path, body=chunks, headers=hdrs,
                         encode_chunked=content_length is None)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.getresponse()
        payload = resp.read()
        return harness.Response(resp.status, harness.Headers(resp.getheaders()), payload, method, path)
    finally:
        conn.close()


class WorkerTestCase(unittest.TestCase):
    """Assertions shared by the worker suites."""

    def assertRequestId(self, resp):
        rid = resp.headers.get("X-Request-Id")
        self.assertTrue(rid, "missing X-Request-Id: %r" % (resp,))
        self.assertRegex(rid, REQUEST_ID_RE, repr(resp))
        return rid

    def assertStatus(self, resp, status):
        self.assertEqual(resp.status, status, "unexpected status: %r" % (resp,))
        self.assertRequestId(resp)

    def assertError(self, resp, status, detail=None):
        """A worker-made error: status, JSON {"detail": str}, X-Request-Id."""
        self.assertStatus(resp, status)
        self.assertIn("application/json", resp.headers.get("Content-Type", ""), repr(resp))
        self.assertNotIn("X-Upstream", resp.headers, "error answered by the upstream: %r" % (resp,))
        return harness.error_detail(self, resp, detail)

    def assertProxied(self, resp, status=200):
        """A response that came from the Upstream (it sets X-Upstream: yes)."""
        self.assertStatus(resp, status)
        self.assertEqual(resp.headers.get("X-Upstream"), "yes", "not answered by the upstream: %r" % (resp,))
        return resp.json()

    def assertLogged(self, worker, predicate, what, timeout=5.0):
        entry = worker.wait_for_log(predicate, timeout)
        self.assertIsNotNone(entry, "no access-log line for %s; access log tail: %r"
                             % (what, worker.access_log()[-5:]))
        return entry

    def poll(self, fn, ok, timeout, interval=0.1):
        """Calls fn() until ok(result) or timeout; returns (result, elapsed)."""
        start = time.monotonic()
        while True:
            result = fn()
            if ok(result) or time.monotonic() - start > timeout:
                return result, time.monotonic() - start
            time.sleep(interval)
