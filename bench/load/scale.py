#!/usr/bin/env python3
"""Config at scale: 1,000,000 keys across 10,000 projects.

Builds a control-plane SQLite database with that many projects and keys (written directly with
sqlite3 after `antigravity migrate`, since creating a million keys through the API would measure
the API instead), then measures:
  - the full worker-config document: generation + transfer time and size;
  - a worker starting on it: time to the first published snapshot, snapshot build time
    (ag_config_apply_seconds) and RSS;
  - one-key deltas: apply time for each of several key creations made through the API;
  - request latency at the worker with and without deltas being applied (wrk --latency).

usage: bench/load/scale.py [--projects 10000] [--keys 1000000] [--deltas 20]
"""
import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("AG_BIN", os.path.join(ROOT, "build", "antigravity"))
import harness  # noqa: E402
import harness as wh  # noqa: E402


def metric(worker, name):
    m = re.search(r"^%s (\S+)$" % re.escape(name), worker.metrics(), re.M)
    return float(m.group(1)) if m else None


def rss_mb(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024.0
    return -1


def wrk_latency(port, key, seconds):
    out = subprocess.run(["wrk", "-t1", "-c16", "-d%ds" % seconds, "--latency", "-H", "X-API-Key: " + key,
                          "http://127.0.0.1:%d/" % port], capture_output=True, text=True).stdout
    def pct(p):
        m = re.search(r"^\s+%s%%\s+(\S+)" % p, out, re.M)
        return m.group(1) if m else "?"
    rps = re.search(r"Requests/sec:\s+(\S+)", out)
    return "p50 %s p99 %s (%s req/s)" % (pct(50), pct(99), rps.group(1) if rps else "?")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--projects", type=int, default=10000)
    ap.add_argument("--keys", type=int, default=1000000)
    ap.add_argument("--deltas", type=int, default=20)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="ag-scale-")
    db = os.path.join(workdir, "scale.db")
    control = harness.start_control("sqlite", sqlite_path=db)
    user = harness.register_user(control)
    upstream = wh.Upstream()
    first = harness.create_project(control, user.token, upstream=upstream.url, key_policy="multiple")
    probe = harness.create_key(control, user.token, first["id"])
    secrets = {"JWT_SECRET_KEY": control.jwt_secret, "WORKER_SECRET_KEY": control.worker_secret}
    user_id = user.tokens["user"]["id"]
    control.stop()

    t0 = time.monotonic()
    con = sqlite3.connect(db)
    now = int(time.time() * 1000)
    projects = []
    for i in range(args.projects - 1):
        pid = str(uuid.UUID(int=i + 1, version=4))
        projects.append(pid)
    con.executemany("INSERT INTO projects (id, owner_id, name, upstream_base_url, rate_limit_rpm, rate_limit_burst, "
                    "key_policy, max_body_bytes, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [(p, user_id, "scale-%d" % i, upstream.url, 6000, 100, "multiple", 1 << 20, now, now)
                     for i, p in enumerate(projects)])
    def keys():
        for i in range(args.keys - 1):
            pid = projects[i % len(projects)]
            h = hashlib.sha256(b"scale-key-%d" % i).hexdigest()
            yield (str(uuid.UUID(int=(1 << 64) + i, version=4)), pid, "%08d" % i, h, now)
    con.executemany("INSERT INTO api_keys (id, project_id, public_id, key_hash, created_at) VALUES (?,?,?,?,?)", keys())
    con.execute("UPDATE config_state SET version = version + 1")
    con.commit()
    con.close()
    print("database: %d projects, %d keys written in %.1f s" % (args.projects, args.keys, time.monotonic() - t0))

    control = harness.start_control("sqlite", sqlite_path=db, env_extra=secrets)
    conn = http.client.HTTPConnection("127.0.0.1", control.port, timeout=120)
    t0 = time.monotonic()
    conn.request("GET", "/internal/worker/config", headers={"x-worker-secret": control.worker_secret})
    body = conn.getresponse().read()
    print("full document: %.1f MB generated and transferred in %.2f s" % (len(body) / 1e6, time.monotonic() - t0))
    del body

    t0 = time.monotonic()
    worker = wh.start_worker(control_url=control.base_url, secret=control.worker_secret, threads=2,
                             env_extra={"WORKER_ACCESS_LOG": "off", "WORKER_SNAPSHOT_PATH": "off"})
    while metric(worker, "ag_config_keys") != args.keys:
        if time.monotonic() - t0 > 120:
            raise SystemExit("worker did not load the config")
        time.sleep(0.05)
    print("worker: first snapshot after %.2f s, build %.3f s, RSS %.0f MB" % (
        time.monotonic() - t0, metric(worker, "ag_config_apply_seconds"), rss_mb(worker.proc.pid)))
    for line in worker.stderr.splitlines():
        if "loaded from the control plane" in line:
            print("worker log: " + line.split(" info ", 1)[-1])
    # A second worker at the same version: the control plane serves the document it generated
    # for the first one (transfer + build only).
    t1 = time.monotonic()
    second = wh.start_worker(control_url=control.base_url, secret=control.worker_secret, threads=2,
                             env_extra={"WORKER_ACCESS_LOG": "off", "WORKER_SNAPSHOT_PATH": "off"})
    while metric(second, "ag_config_keys") != args.keys:
        if time.monotonic() - t1 > 120:
            raise SystemExit("second worker did not load the config")
        time.sleep(0.02)
    print("second worker: first snapshot after %.2f s, build %.3f s" % (
        time.monotonic() - t1, metric(second, "ag_config_apply_seconds")))
    for line in second.stderr.splitlines():
        if "loaded from the control plane" in line:
            print("second worker log: " + line.split(" info ", 1)[-1])
    second.stop()
    key = probe["api_key"]
    if worker.request("GET", "/", key=key).status != 200:
        raise SystemExit("probe key refused")

    applies = []
    for _ in range(args.deltas):
        before = metric(worker, "ag_config_version")
        harness.create_key(control, user.token, first["id"])
        deadline = time.monotonic() + 10
        while metric(worker, "ag_config_version") == before and time.monotonic() < deadline:
            time.sleep(0.005)
        applies.append(metric(worker, "ag_config_apply_seconds") * 1000)
    applies.sort()
    print("one-key delta apply (ms): p50 %.3f  max %.3f  (%d deltas)" % (applies[len(applies) // 2], applies[-1], len(applies)))
    print("worker RSS after deltas: %.0f MB" % rss_mb(worker.proc.pid))

    if shutil.which("wrk"):
        print("latency without deltas: " + wrk_latency(worker.port, key, 5))
        stop = threading.Event()
        def churn():
            while not stop.is_set():
                harness.create_key(control, user.token, first["id"])
                time.sleep(0.1)
        t = threading.Thread(target=churn)
        t.start()
        print("latency with a delta every ~100 ms: " + wrk_latency(worker.port, key, 5))
        stop.set()
        t.join()
    worker.stop()
    control.stop()
    upstream.stop()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
