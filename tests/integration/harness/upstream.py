"""In-process upstreams (threads, not processes) the worker proxies to.

- `Upstream`: a real HTTP/1.1 keep-alive backend on 127.0.0.1 that records every request it gets
  (method, target, headers, body length and SHA-256, hashed while streaming) and answers JSON.
  Routes by the end of the path: */slow?ms=, */hang, */slowread?ms=, */sized?bytes=, */big?bytes=
  (chunked), */status/<code>, */hop (hop-by-hop response headers), */reset (RST), */ws
  (WebSocket echo); anything else echoes the request as JSON. Subclass `UpstreamHandler` (and
  pass it as `handler`) for more routes.
- `QuietUpstream`: the same on an optional fixed port (to bring it back on the port the worker
  knows), without Nagle, counting rather than recording requests whose path contains "/load".
"""

import hashlib
import http.server
import json
import select
import socket
import struct
import threading
import time
import urllib.parse

from .websocket import ws_accept, ws_frame, ws_read_frame

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


def reset_connection(sock):
    """Closes `sock` with an RST (SO_LINGER 0) instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class _BodyError(Exception):
    pass


class UpstreamHandler(http.server.BaseHTTPRequestHandler):
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
            reset_connection(self.connection)
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
        accept = ws_accept(key)
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


class UpstreamServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Upstream:
    """A recording HTTP/1.1 backend on 127.0.0.1:`port` (0: any free port), served by `handler`
    (an UpstreamHandler subclass). See the module docstring."""

    def __init__(self, port=0, handler=UpstreamHandler, poll_interval=0.1):
        self._lock = threading.Lock()
        self._requests = []
        self._conns = set()
        self._stop = threading.Event()
        self._ws_sessions = 0
        self._server = UpstreamServer(("127.0.0.1", port), handler)
        self._server.upstream = self
        self.port = self._server.server_address[1]
        self.host = "127.0.0.1"
        self.url = "http://127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": poll_interval}, daemon=True)
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
        self.drop_connections()


class _NoDelayHandler(UpstreamHandler):
    # The base handler writes the head and the body in two send()s: with Nagle on, the body
    # waits for the worker's delayed ACK (~40 ms per request). Load tests want the real rate.
    disable_nagle_algorithm = True


class QuietUpstream(Upstream):
    """Upstream (same routes) on an optional fixed port; requests whose path contains "/load"
    are counted, not recorded (memory stays flat under load)."""

    def __init__(self, port=0):
        self.load_count = 0
        super().__init__(port, _NoDelayHandler, poll_interval=0.05)

    def _record(self, record):
        with self._lock:
            if "/load" in record["path"]:
                self.load_count += 1
            else:
                self._requests.append(record)
