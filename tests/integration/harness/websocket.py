"""WebSocket (RFC 6455) frames for both sides, and a whole echo session through a worker."""

import base64
import hashlib
import os
import socket
import struct

from .http import read_http_head

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11D65"


def ws_accept(key):
    """The Sec-WebSocket-Accept answer to a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode("ascii")).digest()).decode()


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
    expected_accept = ws_accept(ws_key)
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
