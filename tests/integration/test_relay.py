#!/usr/bin/env python3
"""The Orbit relay (docs/relay.md) with a real WebSocket client library (python3-websockets):
authentication before and after the upgrade, every message type, thread-scoped routing both
ways, every routing error code, replacement of a socket by a newer one with the same id, users
never seeing each other's anchors, and the limits: message size (1009), message rate (1008), a
slow reader dropped (3008) while a fast reader on the same thread keeps up, idle sockets closed,
and a graceful shutdown (1001). SQLite by default; AG_DB=postgres for PostgreSQL."""

import asyncio
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def device_token(server, user):
    """A device (anchor) token of `user`, through the device sign-in flow."""
    code = server.request("POST", "/auth/device/code", {}).json()
    resp = server.request("POST", "/auth/device/authorise", {"userCode": code["userCode"]}, token=user.token)
    assert resp.status == 200, resp
    resp = server.request("POST", "/auth/device/token", {"deviceCode": code["deviceCode"]}).json()
    assert resp["status"] == "authorised", resp
    return resp["anchorAccessToken"]


class Relay:
    """Connections to one control plane's relay."""

    def __init__(self, server):
        self.server = server
        self.base = "ws://127.0.0.1:%d" % server.port

    async def client(self, token, client_id=None, **kw):
        url = self.base + "/ws/client?token=" + token + ("&clientId=" + client_id if client_id else "")
        ws = await websockets.connect(url, ping_interval=None, **kw)
        hello = json.loads(await ws.recv())
        assert hello["type"] == "orbit.hello" and hello["role"] == "client", hello
        return ws

    async def anchor(self, token, anchor_id=None, hostname="box", platform="linux", hello=True, **kw):
        ws = await websockets.connect(self.base + "/ws/anchor", extra_headers={"Authorization": "Bearer " + token},
                                      ping_interval=None, **kw)
        first = json.loads(await ws.recv())
        assert first["type"] == "orbit.hello" and first["role"] == "anchor", first
        if hello:
            msg = {"type": "anchor.hello", "hostname": hostname, "platform": platform, "ts": int(time.time() * 1000)}
            if anchor_id:
                msg["anchorId"] = anchor_id
            await ws.send(json.dumps(msg))
        return ws


async def recv_json(ws, timeout=5):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, type_, timeout=5):
    """The next message of `type_`, skipping others."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if msg.get("type") == type_:
            return msg


async def nothing(ws, wait=0.3):
    """True when nothing arrives within `wait` seconds."""
    try:
        msg = await asyncio.wait_for(ws.recv(), wait)
    except asyncio.TimeoutError:
        return True
    raise AssertionError("unexpected message: %s" % msg)


async def closed_with(ws, timeout=10):
    """The close code the server sent, waiting for it."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as e:
        return e.code, e.reason


class RelayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = h.start_control()
        cls.relay = Relay(cls.server)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def user_with_device(self):
        user = h.register_user(self.server)
        return user, device_token(self.server, user)

    def test_http_answers_before_the_upgrade(self):
        user, device = self.user_with_device()
        s = self.server
        for path, token in (("/ws/client", user.token), ("/ws/anchor", device)):
            plain = s.request("GET", path + "?token=" + token)
            self.assertEqual(plain.status, 426, plain)
            self.assertEqual(plain.headers.get("Upgrade"), "websocket")
            self.assertEqual(plain.json()["request_id"], plain.headers["X-Request-Id"])
            self.assertEqual(s.request("GET", path, headers={"Authorization": "Bearer " + token}).status, 426)
            self.assertEqual(s.request("GET", path + "?token=garbage").status, 401)
            self.assertEqual(s.request("GET", path).status, 401)
            both = s.request("GET", path + "?token=" + token, headers={"Authorization": "Bearer " + token})
            self.assertEqual(both.status, 400, both)
        # The wrong kind of token for the route.
        self.assertEqual(s.request("GET", "/ws/client?token=" + device).status, 401)
        self.assertEqual(s.request("GET", "/ws/anchor?token=" + user.token).status, 401)

    def test_a_refused_token_closes_the_socket_with_1008(self):
        async def go():
            for url in ("/ws/client?token=garbage", "/ws/anchor?token=agd_unknown", "/ws/client"):
                ws = await websockets.connect(self.relay.base + url, ping_interval=None)
                code, reason = await closed_with(ws)
                self.assertEqual(code, 1008, url)
                self.assertTrue(reason)
        run(go())

    def test_messages_and_routing(self):
        user, device = self.user_with_device()
        relay = self.relay

        async def go():
            c1 = await relay.client(user.token, "c1")
            c2 = await relay.client(user.token, "c2")
            await c1.send(json.dumps({"type": "ping"}))
            self.assertEqual(await recv_json(c1), {"type": "pong"})
            await c1.send(json.dumps({"type": "orbit.list-anchors"}))
            self.assertEqual(await recv_json(c1), {"type": "orbit.anchors", "anchors": []})
            # No anchor yet: a request is answered by the relay.
            await c1.send(json.dumps({"id": 1, "method": "run", "params": {"threadId": "t1"}}))
            err = await recv_json(c1)
            self.assertEqual((err["id"], err["error"]["code"], err["error"]["data"]["code"]), (1, -32001, "anchor_offline"))
            a = await relay.anchor(device, "laptop", hostname="laptop.local", platform="linux")
            for c in (c1, c2):
                ev = await recv_type(c, "orbit.anchor-connected")
                self.assertEqual((ev["anchor"]["id"], ev["anchor"]["hostname"], ev["anchor"]["platform"]),
                                 ("laptop", "laptop.local", "linux"))
            await c1.send(json.dumps({"type": "orbit.list-anchors"}))
            listed = await recv_json(c1)
            self.assertEqual([x["id"] for x in listed["anchors"]], ["laptop"])
            self.assertIsInstance(listed["anchors"][0]["connectedAt"], int)
            # Subscribing: the subscriber is told, and so is the anchor.
            await c1.send(json.dumps({"type": "orbit.subscribe", "threadId": "t1"}))
            self.assertEqual(await recv_json(c1), {"type": "orbit.subscribed", "threadId": "t1"})
            note = await recv_type(a, "orbit.client-subscribed")
            self.assertEqual((note["threadId"], note["clientId"]), ("t1", "c1"))
            # A request goes to the anchor (with a relay id); the answer only to its requester.
            await c1.send(json.dumps({"id": 7, "method": "run", "params": {"threadId": "t1", "cmd": "ls"}}))
            req = await recv_json(a)
            self.assertEqual((req["method"], req["params"]["cmd"]), ("run", "ls"))
            self.assertNotEqual(req["id"], 7)
            # c2 uses the same id for its own request: the answers do not cross.
            await c2.send(json.dumps({"id": 7, "method": "run", "params": {"threadId": "t1", "cmd": "pwd"}}))
            req2 = await recv_json(a)
            self.assertNotEqual(req2["id"], req["id"])
            await a.send(json.dumps({"id": req2["id"], "result": {"threadId": "t1", "out": "/home"}}))
            await a.send(json.dumps({"id": req["id"], "result": {"threadId": "t1", "out": "a b"}}))
            self.assertEqual(await recv_json(c1), {"id": 7, "result": {"threadId": "t1", "out": "a b"}})
            self.assertEqual(await recv_json(c2), {"id": 7, "result": {"threadId": "t1", "out": "/home"}})
            # An anchor's notification reaches the thread's subscribers only.
            await a.send(json.dumps({"method": "output", "params": {"thread": {"id": "t1"}, "line": "hi"}}))
            self.assertEqual((await recv_json(c1))["params"]["line"], "hi")
            self.assertTrue(await nothing(c2))
            # Unsubscribed: no more.
            await c1.send(json.dumps({"type": "orbit.unsubscribe", "threadId": "t1"}))
            self.assertEqual(await recv_json(c1), {"type": "orbit.unsubscribed", "threadId": "t1"})
            await a.send(json.dumps({"method": "output", "params": {"threadId": "t1", "line": "again"}}))
            self.assertTrue(await nothing(c1))
            # Invalid frames are answered, not fatal.
            await c1.send("not json")
            self.assertEqual((await recv_json(c1))["code"], "invalid_message")
            await c1.send(json.dumps({"type": "orbit.subscribe"}))
            self.assertEqual((await recv_json(c1))["code"], "invalid_message")
            await c1.send(json.dumps({"type": "anchor.hello"}))
            self.assertEqual((await recv_json(c1))["code"], "invalid_message")
            # The anchor leaves: clients are told, and a request waiting for it is answered.
            await c2.send(json.dumps({"id": "q", "method": "slow", "params": {"threadId": "t1"}}))
            await recv_json(a)
            await a.close()
            got = [await recv_json(c2), await recv_json(c2)]  # the error and the disconnection, in either order
            self.assertIn({"id": "q", "error": {"code": -32001, "message": "The anchor disconnected before answering",
                                                "data": {"code": "anchor_offline"}}}, got)
            self.assertIn({"type": "orbit.anchor-disconnected", "anchorId": "laptop"}, got)
            gone = await recv_type(c1, "orbit.anchor-disconnected")
            self.assertEqual(gone["anchorId"], "laptop")
            # The thread stays bound to its anchor: with it offline, the relay says so.
            await c1.send(json.dumps({"id": 9, "method": "run", "params": {"threadId": "t1"}}))
            self.assertEqual((await recv_json(c1))["error"]["data"]["code"], "anchor_offline")
            for ws in (c1, c2):
                await ws.close()
        run(go())

    def test_routing_errors_with_two_anchors(self):
        user, device = self.user_with_device()
        device2 = device_token(self.server, user)
        relay = self.relay

        async def go():
            c = await relay.client(user.token)
            a = await relay.anchor(device, "A")
            b = await relay.anchor(device2, "B")
            await recv_type(c, "orbit.anchor-connected")
            await recv_type(c, "orbit.anchor-connected")

            async def error_of(msg):
                await c.send(json.dumps(msg))
                return (await recv_json(c))["error"]["data"]["code"]

            self.assertEqual(await error_of({"id": 1, "method": "m", "params": {"threadId": "x"}}), "anchor_required")
            self.assertEqual(await error_of({"id": 2, "method": "m", "anchorId": "Z", "params": {}}), "anchor_not_found")
            # Naming an anchor binds the thread to it; naming another one for that thread is refused.
            await c.send(json.dumps({"id": 3, "method": "m", "params": {"threadId": "x", "anchorId": "A"}}))
            self.assertEqual((await recv_json(a))["method"], "m")
            self.assertEqual(await error_of({"id": 4, "method": "m", "params": {"threadId": "x", "anchorId": "B"}}),
                             "thread_anchor_mismatch")
            # Without a name, the thread's anchor gets it.
            await c.send(json.dumps({"id": 5, "method": "again", "params": {"threadId": "x"}}))
            self.assertEqual((await recv_json(a))["method"], "again")
            self.assertTrue(await nothing(b, 0.2))
            for ws in (a, b, c):
                await ws.close()
        run(go())

    def test_same_id_replaces_the_older_socket(self):
        user, device = self.user_with_device()
        relay = self.relay

        async def go():
            old = await relay.client(user.token, "tab")
            new = await relay.client(user.token, "tab")
            self.assertEqual((await closed_with(old))[0], 1000)
            a1 = await relay.anchor(device, "same")
            await recv_type(new, "orbit.anchor-connected")
            a2 = await relay.anchor(device, "same")
            self.assertEqual((await closed_with(a1))[0], 1000)
            await new.send(json.dumps({"type": "orbit.list-anchors"}))
            self.assertEqual([x["id"] for x in (await recv_type(new, "orbit.anchors"))["anchors"]], ["same"])
            await new.send(json.dumps({"id": 1, "method": "m", "params": {}}))
            self.assertEqual((await recv_json(a2))["method"], "m")
            for ws in (new, a2):
                await ws.close()
        run(go())

    def test_users_never_see_each_others_anchors(self):
        alice, alice_device = self.user_with_device()
        bob = h.register_user(self.server)
        relay = self.relay

        async def go():
            bc = await relay.client(bob.token)
            ac = await relay.client(alice.token)
            a = await relay.anchor(alice_device, "alice-box")
            await recv_type(ac, "orbit.anchor-connected")
            self.assertTrue(await nothing(bc))
            await bc.send(json.dumps({"type": "orbit.list-anchors"}))
            self.assertEqual(await recv_json(bc), {"type": "orbit.anchors", "anchors": []})
            await bc.send(json.dumps({"id": 1, "method": "m", "anchorId": "alice-box", "params": {"threadId": "t"}}))
            self.assertEqual((await recv_json(bc))["error"]["data"]["code"], "anchor_not_found")
            await bc.send(json.dumps({"type": "orbit.subscribe", "threadId": "t"}))
            await recv_json(bc)
            self.assertTrue(await nothing(a, 0.2))  # Alice's anchor hears nothing of Bob
            await a.send(json.dumps({"method": "out", "params": {"threadId": "t"}}))
            self.assertTrue(await nothing(bc))
            for ws in (a, ac, bc):
                await ws.close()
        run(go())

    def test_metrics_for_operators(self):
        operator = None
        resp = self.server.request("GET", "/relay/metrics")
        self.assertEqual(resp.status, 401)
        # The first user of this control plane is its operator.
        rows = h.db_query(self.server.db, self.server.db_path, self.server.db_url,
                          "SELECT email FROM users WHERE is_operator = 1")
        self.assertTrue(rows)
        user = h.register_user(self.server)
        self.assertEqual(self.server.request("GET", "/relay/metrics", token=user.token).status, 403)
        del operator


class RelayLimitsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = h.start_control(env_extra={
            "RELAY_MAX_MESSAGE_BYTES": "4096", "RELAY_MAX_MESSAGES_PER_SEC": "200", "RELAY_MESSAGE_BURST": "20",
            "RELAY_MAX_QUEUE_BYTES": "65536", "RELAY_IDLE_TIMEOUT_SEC": "2"})
        cls.relay = Relay(cls.server)
        cls.operator = h.register_user(cls.server)  # the first user: may read /relay/metrics

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def metrics(self):
        return self.server.request("GET", "/relay/metrics", token=self.operator.token).text

    def test_a_message_over_the_limit_closes_with_1009(self):
        async def go():
            c = await self.relay.client(self.operator.token)
            await c.send(json.dumps({"method": "m", "params": {"pad": "x" * 5000}}))
            self.assertEqual((await closed_with(c))[0], 1009)
        run(go())
        self.assertIn('ag_relay_closed_total{reason="too_big"} 1', self.metrics())

    def test_a_socket_over_its_message_rate_closes_with_1008(self):
        async def go():
            c = await self.relay.client(self.operator.token)
            for _ in range(40):
                await c.send(json.dumps({"type": "ping"}))
            code, reason = await closed_with(c)
            self.assertEqual(code, 1008)
            self.assertIn("rate", reason)
        run(go())

    def test_a_silent_peer_is_closed_after_the_idle_timeout(self):
        # A raw TCP client that completes the handshake and then never answers a ping.
        s = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        s.sendall(("GET /ws/client?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.operator.token, key)).encode())
        head = s.recv(4096)
        self.assertIn(b"101", head.split(b"\r\n")[0])
        start = time.monotonic()
        s.settimeout(10)
        while True:
            data = s.recv(4096)
            if not data:
                break
        elapsed = time.monotonic() - start
        s.close()
        self.assertLess(elapsed, 6)
        self.assertIn('ag_relay_closed_total{reason="idle"}', self.metrics())


class RelaySlowConsumerTest(unittest.TestCase):
    def test_a_slow_reader_is_dropped_and_a_fast_one_keeps_up(self):
        server = h.start_control(env_extra={"RELAY_MAX_QUEUE_BYTES": "65536", "RELAY_MAX_MESSAGES_PER_SEC": "10000",
                                            "RELAY_MESSAGE_BURST": "10000"})
        try:
            user = h.register_user(server)  # the operator: reads /relay/metrics
            device = device_token(server, user)
            relay = Relay(server)

            def slow_closed():
                text = server.request("GET", "/relay/metrics", token=user.token).text
                return 'ag_relay_closed_total{reason="slow_consumer"} 1' in text

            async def go():
                # The slow reader's library stops reading from the socket once 1 message waits.
                slow = await relay.client(user.token, "slow", max_queue=1)
                fast = await relay.client(user.token, "fast")
                a = await relay.anchor(device, "pump")
                for ws in (slow, fast):
                    await recv_type(ws, "orbit.anchor-connected")
                    await ws.send(json.dumps({"type": "orbit.subscribe", "threadId": "flood"}))
                    await recv_type(ws, "orbit.subscribed")
                latencies = []
                payload = "y" * 16000
                i = 0
                # Until the relay drops the slow reader: its kernel buffers fill, then its 64 KiB queue.
                while i < 3000 and not (i % 25 == 0 and slow_closed()):
                    sent = time.monotonic()
                    await a.send(json.dumps({"method": "out", "params": {"threadId": "flood", "i": i, "pad": payload}}))
                    msg = await recv_json(fast)
                    self.assertEqual(msg["params"]["i"], i)
                    latencies.append(time.monotonic() - sent)
                    i += 1
                self.assertTrue(slow_closed(), "the slow reader was never dropped")
                # The slow reader reads again: what it was sent, then the close frame with 3008.
                code, reason = await closed_with(slow, 15)
                self.assertEqual(code, 3008, reason)
                latencies.sort()
                h.report("relay fast reader beside a slow one: p50 %.2f ms, p99 %.2f ms over %d messages of 16 KB",
                         latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000, len(latencies))
                self.assertLess(latencies[int(len(latencies) * 0.99)], 0.5)
                # The fast reader is still served.
                await a.send(json.dumps({"method": "out", "params": {"threadId": "flood", "i": -1}}))
                self.assertEqual((await recv_json(fast))["params"]["i"], -1)
                for ws in (fast, a):
                    await ws.close()
            run(go())
        finally:
            server.stop()


@unittest.skipIf(shutil.which("openssl") is None, "needs the openssl command")
class RelayTlsTest(unittest.TestCase):
    """wss:// on a control plane that speaks HTTPS (CONTROL_TLS_CERT_FILE): the same relay over TLS."""

    def test_routing_over_tls(self):
        d = tempfile.mkdtemp(prefix="ag-relay-tls-")
        self.addCleanup(shutil.rmtree, d, True)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", "/CN=localhost", "-days", "2", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = h.start_control(db="sqlite", env_extra={"CONTROL_TLS_CERT_FILE": cert, "CONTROL_TLS_KEY_FILE": key})
        self.addCleanup(server.stop)
        context = ssl.create_default_context(cafile=cert)

        def post(path, body, token=None):
            conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=context)
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = "Bearer " + token
            conn.request("POST", path, body=json.dumps(body), headers=headers)
            resp = conn.getresponse()
            out = json.loads(resp.read() or b"null")
            conn.close()
            return out

        token = post("/auth/register", {"email": h.unique_email(), "password": "pw-" + h.random_string(16)})["access_token"]
        code = post("/auth/device/code", {})
        post("/auth/device/authorise", {"userCode": code["userCode"]}, token)
        device = post("/auth/device/token", {"deviceCode": code["deviceCode"]})["anchorAccessToken"]
        base = "wss://127.0.0.1:%d" % server.port

        async def go():
            c = await websockets.connect(base + "/ws/client?token=" + token, ssl=context, ping_interval=None)
            a = await websockets.connect(base + "/ws/anchor?token=" + device, ssl=context, ping_interval=None)
            self.assertEqual((await recv_json(c))["type"], "orbit.hello")
            self.assertEqual((await recv_json(a))["type"], "orbit.hello")
            await a.send(json.dumps({"type": "anchor.hello", "anchorId": "tls", "hostname": "h", "platform": "linux"}))
            await recv_type(c, "orbit.anchor-connected")
            await c.send(json.dumps({"id": 1, "method": "echo", "params": {"threadId": "t"}}))
            req = await recv_json(a)
            await a.send(json.dumps({"id": req["id"], "result": {"threadId": "t", "ok": True}}))
            self.assertEqual(await recv_json(c), {"id": 1, "result": {"threadId": "t", "ok": True}})
            await c.close()
            await a.close()
        run(go())


class RelayReplicasTest(unittest.TestCase):
    """Two control planes on one PostgreSQL: a user's client on one and anchor on the other."""

    @classmethod
    def setUpClass(cls):
        if h.AG_DB != "postgres":
            raise unittest.SkipTest("replicas share a PostgreSQL database (AG_DB=postgres)")
        cls.a = h.start_control("postgres")
        cls.b = h.start_control("postgres", db_url=cls.a.db_url,
                                env_extra={"JWT_SECRET_KEY": cls.a.jwt_secret, "WORKER_SECRET_KEY": cls.a.worker_secret})

    @classmethod
    def tearDownClass(cls):
        cls.b.stop()
        cls.a.stop()

    def test_a_thread_across_replicas(self):
        user = h.register_user(self.a)
        device = device_token(self.a, user)
        ra, rb = Relay(self.a), Relay(self.b)

        async def go():
            ca = await ra.client(user.token, "on-a")
            cb = await rb.client(user.token, "on-b")
            anchor = await rb.anchor(device, "far")
            ev = await recv_type(ca, "orbit.anchor-connected", 10)
            self.assertEqual(ev["anchor"]["id"], "far")
            await ca.send(json.dumps({"type": "orbit.list-anchors"}))
            self.assertEqual([x["id"] for x in (await recv_type(ca, "orbit.anchors"))["anchors"]], ["far"])
            # A subscription on A reaches the anchor on B.
            await ca.send(json.dumps({"type": "orbit.subscribe", "threadId": "x"}))
            await recv_type(ca, "orbit.subscribed")
            note = await recv_type(anchor, "orbit.client-subscribed", 10)
            self.assertEqual((note["threadId"], note["clientId"]), ("x", "on-a"))
            await cb.send(json.dumps({"type": "orbit.subscribe", "threadId": "x"}))
            await recv_type(cb, "orbit.subscribed")
            # A request from A to the anchor on B, and its answer back to A only.
            await ca.send(json.dumps({"id": 42, "method": "run", "params": {"threadId": "x"}}))
            req = await recv_json(anchor, 10)
            while "method" not in req:
                req = await recv_json(anchor, 10)
            self.assertEqual(req["method"], "run")
            await anchor.send(json.dumps({"id": req["id"], "result": {"threadId": "x", "ok": 1}}))
            self.assertEqual(await recv_json(ca, 10), {"id": 42, "result": {"threadId": "x", "ok": 1}})
            # The anchor's notification reaches the thread's followers on both replicas.
            await anchor.send(json.dumps({"method": "out", "params": {"threadId": "x", "n": 1}}))
            self.assertEqual((await recv_json(ca, 10))["params"]["n"], 1)
            self.assertEqual((await recv_json(cb, 10))["params"]["n"], 1)
            # Too large to cross replicas: said so, not lost silently.
            await ca.send(json.dumps({"id": 43, "method": "run", "params": {"threadId": "x", "pad": "z" * 9000}}))
            self.assertEqual((await recv_json(ca, 10))["error"]["data"]["code"], "message_too_large")
            await anchor.close()
            gone = await recv_type(ca, "orbit.anchor-disconnected", 10)
            self.assertEqual(gone["anchorId"], "far")
            await ca.close()
            await cb.close()
        run(go())

    def test_a_dead_replicas_anchors_leave_the_list(self):
        c = h.start_control("postgres", db_url=self.a.db_url,
                            env_extra={"JWT_SECRET_KEY": self.a.jwt_secret, "WORKER_SECRET_KEY": self.a.worker_secret})
        user = h.register_user(self.a)
        device = device_token(self.a, user)
        ra, rc = Relay(self.a), Relay(c)

        async def go():
            client = await ra.client(user.token)
            anchor = await rc.anchor(device, "doomed")
            await recv_type(client, "orbit.anchor-connected", 10)
            c.process.proc.kill()  # no goodbye: its anchors must expire
            killed = time.monotonic()
            gone = await recv_type(client, "orbit.anchor-disconnected", 30)
            waited = time.monotonic() - killed
            h.report("relay: a killed replica's anchor left the other replica's list after %.1f s", waited)
            self.assertEqual(gone["anchorId"], "doomed")
            self.assertLess(waited, 18)  # 15 s without a heartbeat (sent every 5 s), checked every second
            await client.send(json.dumps({"type": "orbit.list-anchors"}))
            self.assertEqual((await recv_type(client, "orbit.anchors"))["anchors"], [])
            await client.close()
            del anchor
        try:
            run(go())
        finally:
            c.stop(drop_database=False)


class RelayShutdownTest(unittest.TestCase):
    def test_shutdown_tells_every_socket_to_go_away(self):
        server = h.start_control()
        try:
            user = h.register_user(server)
            device = device_token(server, user)
            relay = Relay(server)

            async def go():
                c = await relay.client(user.token)
                a = await relay.anchor(device)
                await recv_type(c, "orbit.anchor-connected")
                server.process.signal(__import__("signal").SIGTERM)
                self.assertEqual((await closed_with(c))[0], 1001)
                self.assertEqual((await closed_with(a))[0], 1001)
            run(go())
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
