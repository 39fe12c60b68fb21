"""A raw TCP backend that misbehaves on purpose: never reads, never answers, sends a head and part
of a body then resets or stalls."""

import socket
import threading
import time

from .upstream import reset_connection


class RawUpstream:
    """A raw TCP backend on 127.0.0.1 (thread per connection).

    mode "blackhole": accepts and never reads nor answers.
    mode "routes" (default): reads the request head, then by path:
      /ok               200 JSON, keep-alive
      /hang             never answers (until the peer closes)
      /reset-cl         200 with Content-Length: 1000000, 64 KiB of it, then RST
      /reset-chunked    200 chunked, 4 chunks of 16 KiB, then RST (no last chunk)
      /stall-cl         200 with Content-Length: 1000000, 64 KiB of it, then silence
    Every request head seen is appended to .seen (path strings)."""

    BODY_TOTAL = 1000000
    PARTIAL = 65536

    def __init__(self, mode="routes", port=0):
        self.mode = mode
        self.seen = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _wait_peer_close(self, conn):
        conn.settimeout(0.1)
        while not self._stop.is_set():
            try:
                if conn.recv(65536) == b"":
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    def _serve(self, conn):
        try:
            if self.mode == "blackhole":
                self._stop.wait()
                return
            buf = b""
            conn.settimeout(30)
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = line.split(" ")
                path = parts[1] if len(parts) > 1 else ""
                with self._lock:
                    self.seen.append(path)
                # bodies are not expected on these routes (GET)
                if path.startswith("/hang") or "/hang" in path:
                    self._wait_peer_close(conn)
                    return
                if "/reset-cl" in path or "/stall-cl" in path:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Content-Length: %d\r\nX-Upstream: raw\r\n\r\n" % self.BODY_TOTAL)
                    conn.sendall(b"r" * self.PARTIAL)
                    time.sleep(0.05)
                    if "/reset-cl" in path:
                        reset_connection(conn)
                    else:
                        self._wait_peer_close(conn)
                    return
                if "/reset-chunked" in path:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\nX-Upstream: raw\r\n\r\n")
                    for _ in range(4):
                        conn.sendall(b"4000\r\n" + b"c" * 0x4000 + b"\r\n")
                    time.sleep(0.05)
                    reset_connection(conn)
                    return
                body = b'{"ok":true}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Upstream: raw\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def matching(self, fragment):
        with self._lock:
            return [p for p in self.seen if fragment in p]

    def stop(self):
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
