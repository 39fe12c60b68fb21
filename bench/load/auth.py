#!/usr/bin/env python3
"""Cost of the sign-in endpoints (docs/auth.md): requests per second and the control plane's CPU
per request (utime + stime from /proc, so the figure does not depend on how fast this client is).

Starts `antigravity control` on a throwaway SQLite database (or AG_DB=postgres with
AG_TEST_PG_URL) with PASSKEY_ORIGIN set and the per-IP limits out of the way, registers one
passkey with a software ES256 authenticator, then runs each scenario for --seconds with
--clients threads, each on its own keep-alive connection:

  login-options   POST /auth/login/options {}                      (a challenge written)
  login-verify    POST /auth/login/verify, a signed assertion     (challenge consumed, signature,
                  (each preceded by its own login/options, timed    sign count, session started)
                  and counted apart)
  device-poll     POST /auth/device/token {deviceCode}, pending     (a code read and its poll time
                  codes polled round-robin                          written; slow_down when early)
  device-code     POST /auth/device/code {}                         (a code written)
  password-login  POST /auth/login/basic                            (argon2id: for scale)

usage: bench/load/auth.py [--seconds 5] [--clients 4] [--only NAME ...]
Loopback only; everything it starts is stopped at the end.
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("AG_BIN", os.path.join(ROOT, "build", "antigravity"))
import harness as h  # noqa: E402

ORIGIN = "http://localhost:8123"


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path, body, token=None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        self.conn.request("POST", path, json.dumps(body), headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()


def run(server, seconds, clients, step):
    """Runs step(client, record) in `clients` threads for `seconds`; record(ms, ok) per timed request."""
    lat, errors = [], [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker():
        c = Client(server.port)
        mine, bad = [], 0
        while time.monotonic() < stop:
            def record(ms, ok):
                nonlocal bad
                mine.append(ms)
                bad += not ok
            step(c, record)
        with lock:
            lat.extend(mine)
            errors[0] += bad

    pid = server.process.proc.pid
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    return lat, errors[0], wall, cpu


def timed(client, record, path, body, expect=200, token=None):
    t = time.perf_counter()
    status, data = client.post(path, body, token)
    record((time.perf_counter() - t) * 1000, status == expect)
    return status, data


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    server = h.start_control(env_extra={"PASSKEY_ORIGIN": ORIGIN, "DEVICE_MAX_POLLS_PER_IP_PER_MIN": "1000000",
                                        "AUTH_MAX_FAILURES_PER_IP": "1000000", "CONTROL_THREADS": "4"})
    try:
        auth = h.SoftAuthenticator(ORIGIN)
        email = h.unique_email("bench")
        options = server.request("POST", "/auth/register/options", {"email": email}).json()
        reg = server.request("POST", "/auth/register/verify", {"credential": auth.create(options)})
        assert reg.status == 201, reg
        # One passkey per client thread: sign counts must reach the server in order.
        for _ in range(args.clients - 1):
            options = server.request("POST", "/auth/register/options", {}, token=reg.json()["token"]).json()
            assert server.request("POST", "/auth/register/verify", {"credential": auth.create(options)},
                                  token=reg.json()["token"]).status == 201
        free_credentials = list(auth.credentials)
        local = threading.local()
        password = "bench-password-1"
        h.register_user(server, email="pw-" + email, password=password)
        codes = [server.request("POST", "/auth/device/code", {}).json()["deviceCode"] for _ in range(1000)]
        sign_lock = threading.Lock()
        next_code = [0]

        def login_verify(c, record):
            if not hasattr(local, "credential"):
                with sign_lock:
                    local.credential = free_credentials.pop()
            status, data = c.post("/auth/login/options", {})
            cred = auth.get(json.loads(data), local.credential)
            timed(c, record, "/auth/login/verify", {"credential": cred})

        def device_poll(c, record):
            with sign_lock:
                code = codes[next_code[0] % len(codes)]
                next_code[0] += 1
            timed(c, record, "/auth/device/token", {"deviceCode": code})

        scenarios = [
            ("login-options", lambda c, r: timed(c, r, "/auth/login/options", {})),
            ("login-verify", login_verify),
            ("device-poll", device_poll),
            ("device-code", lambda c, r: timed(c, r, "/auth/device/code", {})),
            ("password-login", lambda c, r: timed(c, r, "/auth/login/basic", {"email": "pw-" + email, "password": password})),
        ]
        print("%-15s %9s %8s %8s %12s %7s" % ("scenario", "req/s", "p50 ms", "p99 ms", "CPU us/req", "errors"))
        for name, step in scenarios:
            if args.only and name not in args.only:
                continue
            lat, errors, wall, cpu = run(server, args.seconds, args.clients, step)
            lat.sort()
            n = len(lat)
            # login-verify: the options request before each verify is not timed, but its server CPU
            # is included; it is reported apart (login-options) to subtract.
            print("%-15s %9.0f %8.2f %8.2f %12.0f %7d" % (
                name, n / wall, statistics.median(lat), lat[min(n - 1, int(n * 0.99))], cpu / n * 1e6, errors))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
