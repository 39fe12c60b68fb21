"""HTTP/1.1 client side: one request per fresh connection (never following redirects, never
raising on 4xx/5xx), streamed request bodies, and parsing of raw responses read from a socket."""

import http.client
import json
import socket
import time

from .common import REQUEST_TIMEOUT_SEC


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


def _exchange(host, port, method, path, data, headers, timeout, encode_chunked=False):
    """Sends one request on a fresh connection and reads the whole response."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        try:
            conn.request(method, path, body=data, headers=headers, encode_chunked=encode_chunked)
        except (BrokenPipeError, ConnectionResetError):
            # The server may answer (413, 431) and close before reading the whole request.
            pass
        resp = conn.getresponse()
        payload = resp.read()
        return Response(resp.status, Headers(resp.getheaders()), payload, method, path)
    finally:
        conn.close()


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
    return _exchange(host, port, method, path, data, hdrs, timeout)


def stream_request(server, method, path, chunks, key=None, content_length=None, headers=None,
                   timeout=60):
    """Sends `chunks` (an iterable of bytes) as the body to `server` (anything with .host and
    .port, e.g. a worker): with Content-Length when given, chunked otherwise. Returns a Response."""
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["X-API-Key"] = key
    if content_length is not None:
        hdrs["Content-Length"] = str(content_length)
    return _exchange(server.host, server.port, method, path, chunks, hdrs, timeout,
                     encode_chunked=content_length is None)


# ---------------------------------------------------------------------------------------------
# Raw responses


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
