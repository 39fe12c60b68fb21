#!/usr/bin/env python3
"""Revocation propagation: how long after `DELETE /projects/{id}/keys/{key}` returns does a worker
under load refuse the key?

Starts the real control plane (SQLite), a real nginx upstream (the peers' config) when nginx is
installed (else a Python upstream), and one worker following the change stream; keeps wrk
loading the worker with another key; then revokes N keys one by one and, for each, polls the
worker with the revoked key on a keep-alive connection until it answers 401. Prints p50/p99/max.

usage: bench/load/revocation.py [-n 200] [--load-connections 16] [--threads 2]
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
import worker_harness as wh  # noqa: E402


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--load-connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="ag-revocation-")
    os.chmod(workdir, 0o755)
    upstream_url, stop_upstream = start_upstream(workdir)
    control = harness.start_control("sqlite")
    user = harness.register_user(control)
    project = harness.create_project(control, user.token, upstream=upstream_url, key_policy="multiple",
                                     rate_limit={"requests_per_minute": 1000000, "burst": 1000000})
    keys = [harness.create_key(control, user.token, project["id"]) for _ in range(args.n + 1)]
    load_key = keys.pop()
    worker = wh.start_worker(control_url=control.base_url, secret=control.worker_secret, threads=args.threads,
                             env_extra={"WORKER_ACCESS_LOG": "off", "WORKER_SNAPSHOT_PATH": "off"})
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)

    def status(key):
        conn.request("GET", "/", headers={"X-API-Key": key})
        r = conn.getresponse()
        r.read()
        return r.status

    deadline = time.monotonic() + 10
    while status(keys[-1]["api_key"]) != 200:
        if time.monotonic() > deadline:
            raise SystemExit("worker never accepted the keys")
        time.sleep(0.05)
    wrk = None
    if shutil.which("wrk"):
        wrk = subprocess.Popen(["wrk", "-t1", "-c%d" % args.load_connections, "-d600s", "-H",
                                "X-API-Key: " + load_key["api_key"], "http://127.0.0.1:%d/" % worker.port],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
    api = http.client.HTTPConnection("127.0.0.1", control.port, timeout=10)
    samples = []
    try:
        for k in keys:
            api.request("DELETE", "/projects/%s/keys/%s" % (project["id"], k["id"]),
                        headers={"Authorization": "Bearer " + user.token})
            r = api.getresponse()
            r.read()
            if r.status != 204:
                raise SystemExit("revoke failed: %d" % r.status)
            t0 = time.perf_counter()
            while status(k["api_key"]) != 401:
                if time.perf_counter() - t0 > 10:
                    raise SystemExit("key still accepted 10 s after revocation")
            samples.append((time.perf_counter() - t0) * 1000.0)
    finally:
        if wrk:
            wrk.terminate()
            wrk.wait()
        worker.stop()
        control.stop()
        stop_upstream()
        shutil.rmtree(workdir, ignore_errors=True)
    print("revocations: %d (worker threads %d, load: wrk -c%d %s)" % (
        len(samples), args.threads, args.load_connections, "on" if wrk else "off (wrk missing)"))
    print("revocation -> first 401 (ms): p50 %.2f  p99 %.2f  max %.2f  mean %.2f" % (
        percentile(samples, 50), percentile(samples, 99), max(samples), statistics.mean(samples)))


if __name__ == "__main__":
    main()
