#!/usr/bin/env python3
"""Revocation propagation: how long after `DELETE /projects/{id}/keys/{key}` returns does a worker
refuse the key, on an idle stack and under load?

Starts the real control plane (SQLite), a real nginx upstream (the peers' config) when nginx is
installed (else a Python upstream), and one worker following the change stream, saving its
snapshot and journal (WORKER_SNAPSHOT_PATH in a temporary directory) as a deployed worker does.
Idle mode: nothing else runs, and the stack rests --pause seconds before each revocation (as
between an operator's commands: connections go quiet, so no ACK rides on other traffic). Loaded mode: wrk keeps the worker busy with another key. In each,
N keys are revoked one by one and, for each, the worker is polled with the revoked key on a
keep-alive connection until it answers 401. Prints p50/p99/max per mode.

usage: bench/load/revocation.py [-n 200] [--mode idle|loaded|both] [--journal on|fsync|off]
                                [--pause 0.2] [--load-connections 16] [--threads 2]
Loopback only; everything it starts is stopped at the end.
"""
import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("AG_BIN", os.path.join(ROOT, "build", "antigravity"))
import harness  # noqa: E402
import harness as wh  # noqa: E402


def start_upstream(workdir):
    peers = os.environ.get("PEERS_DIR", os.path.join(ROOT, "..", "shared", "bench", "peers"))
    conf = os.path.join(peers, "nginx-upstream.conf")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx and os.path.exists(conf):
        port = wh.free_port()
        text = open(conf).read().replace("@RUNDIR@", workdir).replace("@UPSTREAM_PORT@", str(port))
        path = os.path.join(workdir, "upstream.conf")
        open(path, "w").write(text)
        proc = subprocess.Popen([nginx, "-e", os.path.join(workdir, "ups.err"), "-c", path, "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/")
                break
            except OSError:
                time.sleep(0.05)
        return "http://127.0.0.1:%d" % port, proc.terminate
    up = wh.Upstream()
    return up.url, up.stop


def percentile(values, p):
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


POLL_PAUSE_SEC = 0.0001


def measure(keys, revoke, status, pause):
    """Revokes each key and times, from the DELETE's answer, the worker's first 401 (ms).
    `pause`: seconds between revocations (the stack idles, as between an operator's commands)."""
    samples = []
    for k in keys:
        time.sleep(pause)
        revoke(k)
        t0 = time.perf_counter()
        while (got := status(k["api_key"])) != 401:
            if time.perf_counter() - t0 > 10:
                raise SystemExit("revoked key still answered %d after 10 s" % got)
            # A pause between polls: a poller spinning on one of the two cores delays the very
            # processes it measures (the control plane, the worker's config thread).
            time.sleep(POLL_PAUSE_SEC)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


def summary(name, samples):
    return "%-7s revocation -> first 401 (ms): p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  mean %.2f  (n=%d)" % (
        name, percentile(samples, 50), percentile(samples, 90), percentile(samples, 99), max(samples),
        statistics.mean(samples), len(samples))


def main():
    ap = argparse.ArgumentParser(description="revocation propagation: idle and under load")
    ap.add_argument("-n", type=int, default=200, help="revocations per mode")
    ap.add_argument("--mode", choices=("idle", "loaded", "both"), default="both",
                    help="idle: nothing else runs; loaded: wrk keeps the worker busy with another key")
    ap.add_argument("--journal", choices=("on", "fsync", "off"), default="on",
                    help="on: the worker saves its snapshot and journal (the default setup); fsync: with "
                         "WORKER_JOURNAL_FSYNC=on; off: WORKER_SNAPSHOT_PATH=off")
    ap.add_argument("--pause", type=float, default=0.2,
                    help="seconds between revocations in idle mode (default 0.2; loaded mode: none)")
    ap.add_argument("--load-connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    modes = ("idle", "loaded") if args.mode == "both" else (args.mode,)
    workdir = tempfile.mkdtemp(prefix="ag-revocation-")
    os.chmod(workdir, 0o755)
    upstream_url, stop_upstream = start_upstream(workdir)
    control = harness.start_control("sqlite")
    user = harness.register_user(control)
    project = harness.create_project(control, user.token, upstream=upstream_url, key_policy="multiple",
                                     rate_limit={"requests_per_minute": 1000000, "burst": 1000000})
    keys = [harness.create_key(control, user.token, project["id"]) for _ in range(args.n * len(modes) + 1)]
    load_key = keys.pop()
    # Every poll that sees the revoked key counts as a failed authentication from 127.0.0.1: the
    # failed-auth block (50 per minute by default) would answer 429 after the 50th revocation.
    env = {"WORKER_ACCESS_LOG": "off", "WORKER_SNAPSHOT_PATH": "off", "WORKER_AUTH_FAILURE_LIMIT": "0"}
    if args.journal != "off":
        env["WORKER_SNAPSHOT_PATH"] = os.path.join(workdir, "worker-snapshot.json")
        env["WORKER_JOURNAL_FSYNC"] = "on" if args.journal == "fsync" else "off"
    worker = wh.start_worker(control_url=control.base_url, secret=control.worker_secret, threads=args.threads,
                             env_extra=env)
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
    api = http.client.HTTPConnection("127.0.0.1", control.port, timeout=10)

    def status(key):
        conn.request("GET", "/", headers={"X-API-Key": key})
        r = conn.getresponse()
        r.read()
        return r.status

    def revoke(k):
        api.request("DELETE", "/projects/%s/keys/%s" % (project["id"], k["id"]),
                    headers={"Authorization": "Bearer " + user.token})
        r = api.getresponse()
        r.read()
        if r.status != 204:
            raise SystemExit("revoke failed: %d" % r.status)

    deadline = time.monotonic() + 10
    while status(keys[-1]["api_key"]) != 200:
        if time.monotonic() > deadline:
            raise SystemExit("worker never accepted the keys")
        time.sleep(0.05)
    results = []
    wrk = None
    try:
        for i, mode in enumerate(modes):
            batch = keys[i * args.n:(i + 1) * args.n]
            if mode == "loaded":
                if not shutil.which("wrk"):
                    raise SystemExit("the loaded mode needs wrk (apt-get install wrk)")
                wrk = subprocess.Popen(["wrk", "-t1", "-c%d" % args.load_connections, "-d600s", "-H",
                                        "X-API-Key: " + load_key["api_key"], "http://127.0.0.1:%d/" % worker.port],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            else:
                time.sleep(0.5)  # nothing in flight: ACKs do not ride on other traffic
            results.append((mode, measure(batch, revoke, status, args.pause if mode == "idle" else 0.0)))
            if wrk:
                wrk.terminate()
                wrk.wait()
                wrk = None
    finally:
        if wrk:
            wrk.terminate()
            wrk.wait()
        worker.stop()
        control.stop()
        stop_upstream()
        shutil.rmtree(workdir, ignore_errors=True)
    print("worker threads %d, snapshot+journal %s, idle mode: %.2f s between revocations, loaded mode: "
          "wrk -t1 -c%d" % (args.threads, args.journal, args.pause, args.load_connections))
    for mode, samples in results:
        print(summary(mode, samples))


if __name__ == "__main__":
    main()
