"""Every process the suites start goes through here: the environment it gets (a clean base plus
overrides), where its output goes (drained into memory line by line, or a log file), waiting for
it to be ready (a line in its output, a port, an HTTP URL, any check; each with a deadline and
giving up early when the process exits), and stopping it (SIGTERM, then SIGKILL, then reaping).
Anything still running when the interpreter exits is stopped; directories registered with
remove_at_exit are removed then (unless AG_TEST_KEEP=1)."""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

from .common import STOP_TIMEOUT_SEC, keep_files, poll_until
from .http import http_request

# ---------------------------------------------------------------------------------------------
# Cleanup at exit

_live = []  # objects with .stop(), stopped at exit (most recent first)
_dirs = []  # directories removed at exit


def stop_at_exit(obj):
    _live.append(obj)
    return obj


def forget(obj):
    if obj in _live:
        _live.remove(obj)


def remove_at_exit(path):
    _dirs.append(path)
    return path


@atexit.register
def _cleanup():
    for obj in reversed(list(_live)):
        try:
            obj.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    if not keep_files():
        for d in _dirs:
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Environment, ports, /proc


def build_env(overrides=None, clear=(), defaults=None):
    """The inherited environment without the variables in `clear` (so the developer's shell
    cannot leak configuration into a test), then `defaults`, then `overrides`; a value of None
    in either removes the variable."""
    env = {k: v for k, v in os.environ.items() if k not in clear}
    for source in (defaults or {}, overrides or {}):
        for key, value in source.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
    return env


def free_port():
    """A port nothing listens on (bound and released)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found")


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


# ---------------------------------------------------------------------------------------------
# Output


class Output:
    """Drains a process's stdout and stderr in background threads so the pipes never fill.
    Keeps every line (`lines`: both streams in arrival order; `stdout_lines`, `stderr_lines`);
    `parse_stdout(line)`, when given, may return an object to keep in `records`."""

    def __init__(self, proc, parse_stdout=None):
        self.lines = []
        self.stdout_lines = []
        self.stderr_lines = []
        self.records = []
        self.cond = threading.Condition()
        self._parse = parse_stdout
        self._threads = [
            threading.Thread(target=self._drain, args=(proc.stdout, self.stdout_lines), daemon=True),
            threading.Thread(target=self._drain, args=(proc.stderr, self.stderr_lines), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _drain(self, stream, lines):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            record = self._parse(line) if self._parse and lines is self.stdout_lines else None
            with self.cond:
                self.lines.append(line)
                lines.append(line)
                if record is not None:
                    self.records.append(record)
                self.cond.notify_all()
        stream.close()

    def wait(self, check, timeout):
        """Waits until check() (called under the lock) returns something truthy; returns its
        last result."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                result = check()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result
                self.cond.wait(min(remaining, 0.1))

    def first_match(self, regex, lines=None, start=0):
        """First match of `regex` in `lines` (default: both streams) from index `start` on, or
        None. Call under `cond` (or from a check() given to wait)."""
        for line in (self.lines if lines is None else lines)[start:]:
            m = regex.search(line)
            if m:
                return m
        return None

    def wait_for(self, regex, timeout, lines=None, start=0):
        """first_match, waiting up to `timeout` seconds for it."""
        return self.wait(lambda: self.first_match(regex, lines, start), timeout)

    def join(self, timeout=2.0):
        for t in self._threads:
            t.join(timeout)

    @property
    def text(self):
        with self.cond:
            return "\n".join(self.lines)


# ---------------------------------------------------------------------------------------------
# Processes


class Process:
    """A started process. Output drained into memory (`output`), or to `log_path` (then
    `output` is None)."""

    def __init__(self, cmd, env=None, cwd=None, log_path=None, parse_stdout=None):
        self.cmd = list(cmd)
        self.log_path = log_path
        self.returncode = None
        if log_path is not None:
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT)
            self.output = None
        else:
            self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.output = Output(self.proc, parse_stdout)
        self.pid = self.proc.pid
        stop_at_exit(self)

    @property
    def logs(self):
        if self.output is not None:
            return self.output.text
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

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

    def wait_output(self, check, timeout):
        """Waits until check() (called under the output's lock) returns something truthy, the
        process exits (its remaining output is read first) or `timeout` passes; returns the last
        result of check()."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.output.wait(check, min(0.2, max(0.0, deadline - time.monotonic())))
            if found or time.monotonic() >= deadline:
                return found
            if not self.alive():
                self.output.join()
                with self.output.cond:
                    return check()

    def stop(self, timeout=STOP_TIMEOUT_SEC):
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL; reaps. Returns the exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self._reaped()

    def kill(self):
        """SIGKILL (no chance to clean up) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        return self._reaped()

    def _reaped(self):
        self.returncode = self.proc.returncode
        if self.output is not None:
            self.output.join()
        forget(self)
        return self.returncode


class Server:
    """What the harness's servers (ControlServer, Worker) share: one Process, the address they
    listen on, and an idempotent stop()."""

    def __init__(self, env, workdir):
        self.process = None
        self.env = env
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = None
        self.returncode = None
        self._stopped = False

    @property
    def proc(self):
        return self.process.proc

    @property
    def pid(self):
        return self.process.pid

    def alive(self):
        return self.process.alive()

    def stop(self):
        """SIGTERM, wait, then SIGKILL. Returns the exit code."""
        if self._stopped:
            return self.returncode
        self._stopped = True
        if self.process is not None:
            self.returncode = self.process.stop()
        forget(self)
        return self.returncode


# ---------------------------------------------------------------------------------------------
# Readiness


def wait_until(check, timeout, interval=0.05, process=None):
    """Calls check() until it returns something truthy, `timeout` seconds pass or `process`
    (a Process) has exited; returns the last result."""
    def done(result):
        return bool(result) or (process is not None and not process.alive())
    result, _, _ = poll_until(check, done, timeout, interval)
    return result


def port_open(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_for_port(port, timeout, host="127.0.0.1", process=None):
    """True once something accepts TCP connections on host:port."""
    return wait_until(lambda: port_open(port, host), timeout, process=process)


def wait_for_http(host, port, path, timeout, process=None):
    """Polls GET `path` every 0.1 s until it answers 200; returns the last response (None when
    the last attempt could not connect)."""
    last = [None]

    def check():
        try:
            last[0] = http_request(host, port, "GET", path, timeout=2)
        except OSError:
            last[0] = None
        return last[0] is not None and last[0].status == 200
    wait_until(check, timeout, interval=0.1, process=process)
    return last[0]
