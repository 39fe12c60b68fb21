"""redis-server on a fixed loopback port that can be killed and started again, and single RESP
commands to it."""

import os
import re
import shutil
import socket
import tempfile
import time

from .processes import Process, build_env, free_port, wait_until


def redis_command(port, *args, timeout=2.0):
    """Sends one RESP command; returns the raw reply bytes (None when unreachable)."""
    payload = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        payload += b"$%d\r\n%s\r\n" % (len(a), a)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(payload)
            data = b""
            s.settimeout(timeout)
            while True:
                chunk = s.recv(65536)
                data += chunk
                if not chunk or data.endswith(b"\r\n"):
                    # good enough for the small replies we ask for
                    if data.startswith(b"*") or data.startswith(b"$"):
                        time.sleep(0.02)
                        try:
                            s.settimeout(0.05)
                            more = s.recv(65536)
                            data += more
                        except (socket.timeout, OSError):
                            pass
                    return data
    except OSError:
        return None


class RedisServer:
    """redis-server on a fixed loopback port (default: a free one), no persistence, its output in
    redis.log in its directory; kill() and start() again."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="ag-redis-")
        self.url = "redis://127.0.0.1:%d" % self.port
        self.process = None
        self.start()

    def start(self, timeout=10.0):
        self.process = Process(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            env=build_env(), cwd=self.dir, log_path=os.path.join(self.dir, "redis.log"))

        def pong():
            return (redis_command(self.port, "PING", timeout=1) or b"").startswith(b"+PONG")
        if not wait_until(pong, timeout, process=self.process):
            self.kill()
            raise RuntimeError("redis-server did not start on port %d:\n%s"
                               % (self.port, self.process.logs[-2000:]))

    def kill(self):
        if self.process is not None:
            self.process.kill()

    def keys(self, pattern):
        reply = redis_command(self.port, "KEYS", pattern) or b""
        return re.findall(rb"\$\d+\r\n([^\r\n]*)\r\n", reply)

    def stop(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
