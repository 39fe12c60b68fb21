"""A revoked credential stays revoked across worker restarts (docs/config-stream.md, "Saved
snapshot and journal"), against the real binary.

Each scenario: a control plane and a worker following it with a long snapshot interval (30 s), so
that after the first save every later change lives only in the journal; a change that refuses a
credential (key revoked, project deleted, service token revoked, an IP added to a deny list);
the worker refuses it; the worker is stopped (SIGTERM or SIGKILL) within a second; the control
plane is killed; the worker starts again from the same files with the control plane down and
must still refuse the credential while serving the others. The same under `antigravity up`
(control plane and worker in one process), and with a torn journal tail.

Run: python3 tests/integration/test_durable_revocation.py
Environment: see the harness (AG_BIN, AG_TEST_KEEP).
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
import test_config_stream as cs  # noqa: E402
import harness as wh  # noqa: E402

# After the save at the first contact, no other save happens during a scenario.
LONG_INTERVAL = {"WORKER_SNAPSHOT_INTERVAL_SEC": "30"}
UP_LISTEN_RE = re.compile(r"worker listening on http://127\.0\.0\.1:(\d+)")


class DurableRevocationTest(cs.StreamWorkerTestCase):

    def kill(self, ctl):
        ctl.proc.kill()
        ctl.proc.wait(5)

    def follow(self, ctl, path):
        """A worker following `ctl`, ready at its version, with the first save on disk."""
        w = self.start_worker(ctl.base_url, ctl.worker_secret, path, LONG_INTERVAL)
        self.assertReady(w, cs.current_version(ctl))
        _, _, ok = cs.poll_until(lambda: os.path.exists(path), bool, 5.0)
        self.assertTrue(ok, "no snapshot saved at %s\n%s" % (path, w.stderr[-2000:]))
        return w

    def restart(self, w, sig, ctl, path):
        """Stops `w` with `sig` within a second, kills the control plane, starts a worker again
        from the same files; returns it, ready."""
        w.signal(sig)
        w.wait_exit(10)
        self.kill(ctl)
        w2 = self.start_worker(ctl.base_url, ctl.worker_secret, path, LONG_INTERVAL)
        self.assertReady(w2, timeout=5.0)
        return w2

    def key_scenario(self, sig, change):
        """`change(ctl, user, project, doomed)` must make the worker refuse `doomed` with 401."""
        ctl = self.start_control()
        user = h.register_user(ctl)
        project = self.new_project(ctl, user.token)
        other = self.new_project(ctl, user.token)
        doomed = h.create_key(ctl, user.token, project["id"])
        kept = h.create_key(ctl, user.token, other["id"])
        path = self.snapshot_path()
        w = self.follow(ctl, path)
        self.assertProxied(w, doomed["api_key"])
        change(ctl, user, project, doomed)
        self.assertKeyStatus(w, doomed["api_key"], 401, 2.0, "the changed credential")
        # A key created after the save is in the journal too.
        added = h.create_key(ctl, user.token, other["id"])
        self.assertKeyStatus(w, added["api_key"], 200, 2.0, "a key created after the save")
        w2 = self.restart(w, sig, ctl, path)
        self.assertEqual(cs.key_status(w2, doomed["api_key"]), 401,
                         "refused before the stop, accepted after it\n%s" % w2.stderr[-3000:])
        self.assertProxied(w2, kept["api_key"])
        self.assertProxied(w2, added["api_key"])
        return path, w2

    def revoke_key(self, ctl, user, project, key):
        self.revoke(ctl, user.token, project, key)

    def delete_project(self, ctl, user, project, key):
        resp = ctl.request("DELETE", "/projects/%s" % project["id"], token=user.token)
        self.assertEqual(resp.status, 204, repr(resp))

    def test_key_revocation_survives_sigkill(self):
        self.key_scenario(signal.SIGKILL, self.revoke_key)

    def test_key_revocation_survives_sigterm(self):
        self.key_scenario(signal.SIGTERM, self.revoke_key)

    def test_project_deletion_survives_sigkill(self):
        self.key_scenario(signal.SIGKILL, self.delete_project)

    def test_ip_deny_addition_survives_sigkill(self):
        ctl = self.start_control()
        user = h.register_user(ctl)
        project = self.new_project(ctl, user.token)
        key = h.create_key(ctl, user.token, project["id"])
        path = self.snapshot_path()
        w = self.follow(ctl, path)
        self.assertProxied(w, key["api_key"])
        resp = ctl.request("PATCH", "/projects/%s" % project["id"],
                           {"risk": {"ip_deny": ["127.0.0.0/8"]}}, token=user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        self.assertKeyStatus(w, key["api_key"], 403, 2.0, "a denied address")
        w2 = self.restart(w, signal.SIGKILL, ctl, path)
        self.assertEqual(cs.key_status(w2, key["api_key"]), 403, w2.stderr[-3000:])

    def test_token_revocation_survives_sigkill(self):
        ctl = self.start_control()
        user = h.register_user(ctl)
        slug = "dur" + h.random_string(8, "abcdefghijklmnopqrstuvwxyz")
        project = self.new_project(ctl, user.token, slug=slug)
        resp = ctl.request("PUT", "/projects/%s/services/api" % project["id"],
                           {"targets": [self.upstream.url]}, token=user.token)
        self.assertIn(resp.status, (200, 201), repr(resp))
        tokens = []
        for _ in range(2):
            resp = ctl.request("POST", "/projects/%s/tokens" % project["id"], {"service": "api"}, token=user.token)
            self.assertEqual(resp.status, 201, repr(resp))
            tokens.append(resp.json())
        doomed, kept = tokens
        path = self.snapshot_path()
        w = self.follow(ctl, path)
        route = "/%s/api/orders" % slug

        def status(tok):
            try:
                return w_now.request("GET", route, headers={"Authorization": "Bearer " + tok["token"]},
                                     timeout=5).status
            except OSError:
                return None

        w_now = w
        got, _, ok = cs.poll_until(lambda: status(doomed), lambda s: s == 200, 5.0)
        self.assertTrue(ok, "token not accepted before the revocation: %r\n%s" % (got, w.stderr[-2000:]))
        resp = ctl.request("POST", "/projects/%s/tokens/%s/revoke" % (project["id"], doomed["jti"]), {},
                           token=user.token)
        self.assertEqual(resp.status, 200, repr(resp))
        got, _, ok = cs.poll_until(lambda: status(doomed), lambda s: s == 401, 2.0)
        self.assertTrue(ok, "revoked token still %r" % got)
        w_now = self.restart(w, signal.SIGKILL, ctl, path)
        self.assertEqual(status(doomed), 401, "revoked token accepted after the restart\n%s" % w_now.stderr[-3000:])
        self.assertEqual(status(kept), 200)

    def test_torn_journal_tail_is_ignored(self):
        """Garbage appended to the journal (a write cut by a crash): the worker starts, logs it,
        and keeps every intact record."""
        path, w2 = self.key_scenario(signal.SIGKILL, self.revoke_key)
        # The restarted worker folded the journal into the snapshot; make a fresh record, then
        # tear the journal's tail after a second SIGKILL.
        w2.signal(signal.SIGKILL)
        w2.wait_exit(10)
        journals = [n for n in os.listdir(os.path.dirname(path))
                    if n.startswith(os.path.basename(path)) and n.endswith(".journal")]
        self.assertEqual(len(journals), 1, "no journal beside the snapshot: %r" % os.listdir(os.path.dirname(path)))
        with open(os.path.join(os.path.dirname(path), journals[0]), "ab") as f:
            f.write(b"AGJ1\x02\x00\x00")  # 7 bytes: a record header cut short
        w3 = self.start_worker("http://127.0.0.1:9", "unused-secret-" + "x" * 24, path, LONG_INTERVAL)
        self.assertReady(w3, timeout=5.0)
        _, _, ok = cs.poll_until(lambda: "torn or corrupt journal tail of 7 bytes" in w3.stderr, bool, 5.0)
        self.assertTrue(ok, "the torn tail was not reported:\n%s" % w3.stderr[-3000:])


class UpControl:
    """The control plane inside `antigravity up`, for the harness's API helpers."""

    def __init__(self, port):
        self.port = port

    def request(self, method, path, body=None, headers=None, token=None, timeout=h.REQUEST_TIMEOUT_SEC):
        return h.http_request("127.0.0.1", self.port, method, path, body=body, headers=headers, token=token,
                              timeout=timeout)


class UpDurableRevocationTest(cs.StreamWorkerTestCase):
    """`antigravity up`: the in-process worker journals too. After `up` is stopped, a standalone
    worker started from up's data directory with the control plane gone still refuses the key."""

    def start_up(self, workdir):
        ports = [wh.free_port() for _ in range(3)]
        env = h.base_env({"WORKER_SNAPSHOT_INTERVAL_SEC": "30"})
        proc = subprocess.Popen([h.AG_BIN, "up", "--listen", "127.0.0.1:%d" % ports[0],
                                 "--gateway-listen", "127.0.0.1:%d" % ports[1],
                                 "--admin-listen", "127.0.0.1:%d" % ports[2], "--demo-upstream", "off"],
                                cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = h.Output(proc)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait(5)))
        self.assertIsNotNone(out.wait_for(UP_LISTEN_RE, 20), "up did not start:\n%s" % out.text)
        return proc, out, "http://127.0.0.1:%d" % ports[0], ports[1]

    def scenario(self, sig):
        workdir = tempfile.mkdtemp(prefix="ag-up-", dir=self.tmp)
        proc, out, base, gw_port = self.start_up(workdir)
        ctl = UpControl(int(base.rsplit(":", 1)[1]))
        user = h.register_user(ctl)
        project = self.new_project(ctl, user.token)
        doomed = h.create_key(ctl, user.token, project["id"])
        kept = h.create_key(ctl, user.token, project["id"])

        def status(key):
            try:
                return h.http_request("127.0.0.1", gw_port, "GET", "/p", headers={"X-API-Key": key["api_key"]},
                                      timeout=5).status
            except OSError:
                return None

        got, _, ok = cs.poll_until(lambda: status(doomed), lambda s: s == 200, 5.0)
        self.assertTrue(ok, "key not served by up's worker: %r\n%s" % (got, out.text[-2000:]))
        snapshot = os.path.join(workdir, "data", "worker-snapshot.json")
        _, _, ok = cs.poll_until(lambda: os.path.exists(snapshot), bool, 5.0)
        self.assertTrue(ok, "up saved no snapshot at %s" % snapshot)
        self.revoke(ctl, user.token, project, doomed)
        got, _, ok = cs.poll_until(lambda: status(doomed), lambda s: s == 401, 2.0)
        self.assertTrue(ok, "revoked key still %r under up" % got)
        proc.send_signal(sig)
        proc.wait(20)
        # The control plane went with `up`: the worker has only the files in data/.
        secret = h.base_env().get("WORKER_SECRET_KEY") or "s" * 40
        w = self.start_worker(base, secret, snapshot, {"WORKER_SNAPSHOT_INTERVAL_SEC": "30"})
        self.assertReady(w, timeout=5.0)
        self.assertEqual(cs.key_status(w, doomed["api_key"]), 401, w.stderr[-3000:])
        self.assertProxied(w, kept["api_key"])

    def test_up_sigkill(self):
        self.scenario(signal.SIGKILL)

    def test_up_sigterm(self):
        self.scenario(signal.SIGTERM)


if __name__ == "__main__":
    unittest.main()
