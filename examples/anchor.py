#!/usr/bin/env python3
"""A small Orbit anchor (docs/relay.md): signs in with a device code, connects to the relay's
/ws/anchor, says hello, and answers requests on any thread:

  echo  {"text"}       -> {"text"}
  time  {}             -> {"now": <unix seconds>}
  count {"to": n}      -> a notification {"method": "tick", "params": {"threadId", "n"}} per
                          second up to n (to the thread's subscribers), then {"done": true}

Usage: examples/anchor.py [--control http://localhost:8000] [--id my-laptop]
Needs Python 3 and python3-websockets (Debian: apt install python3-websockets).
"""
import argparse
import asyncio
import json
import platform
import socket
import sys
import time
import urllib.request

import websockets


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def device_sign_in(base):
    code = post(base, "/auth/device/code", {})
    print("Open %s and enter the code %s" % (code["verificationUrl"], code["userCode"]), flush=True)
    while True:
        time.sleep(code.get("interval", 5))
        got = post(base, "/auth/device/token", {"deviceCode": code["deviceCode"]})
        if got["status"] == "authorised":
            return got["anchorAccessToken"]
        if got["status"] == "expired":
            sys.exit("the code expired; run again")


async def serve(base, token, anchor_id):
    url = base.replace("http", "ws", 1) + "/ws/anchor?token=" + token + ("&anchorId=" + anchor_id if anchor_id else "")
    async with websockets.connect(url) as ws:
        print(json.loads(await ws.recv()), flush=True)  # orbit.hello
        await ws.send(json.dumps({"type": "anchor.hello", "anchorId": anchor_id or socket.gethostname(),
                                  "hostname": socket.gethostname(), "platform": platform.system().lower(),
                                  "ts": int(time.time() * 1000)}))
        print("connected as anchor %s; waiting for requests" % (anchor_id or socket.gethostname()), flush=True)
        async for frame in ws:
            msg = json.loads(frame)
            print("<-", msg, flush=True)
            if "method" not in msg or "id" not in msg:
                continue
            params = msg.get("params") or {}
            thread = params.get("threadId")
            if msg["method"] == "echo":
                result = {"threadId": thread, "text": params.get("text")}
            elif msg["method"] == "time":
                result = {"threadId": thread, "now": time.time()}
            elif msg["method"] == "count":
                for n in range(1, int(params.get("to", 3)) + 1):
                    await ws.send(json.dumps({"method": "tick", "params": {"threadId": thread, "n": n}}))
                    await asyncio.sleep(1)
                result = {"threadId": thread, "done": True}
            else:
                await ws.send(json.dumps({"id": msg["id"], "error": {"code": -32601, "message": "unknown method"}}))
                continue
            await ws.send(json.dumps({"id": msg["id"], "result": result}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--control", default="http://localhost:8000")
    ap.add_argument("--id", default="")
    ap.add_argument("--token", default="", help="a device token (skips the device sign-in)")
    args = ap.parse_args()
    token = args.token or device_sign_in(args.control)
    asyncio.run(serve(args.control.rstrip("/"), token, args.id))


if __name__ == "__main__":
    main()
