#!/usr/bin/env python3
"""A small Orbit client (docs/relay.md): connects to /ws/client with a session access token,
lists the anchors, subscribes to a thread, sends one request to it and prints everything that
arrives for a few seconds.

Usage: examples/orbit_client.py --token <access token> [--control http://localhost:8000]
                                [--thread demo] [--method count] [--params '{"to": 3}']
"""
import argparse
import asyncio
import json

import websockets


async def run(base, token, thread, method, params, seconds):
    async with websockets.connect(base.replace("http", "ws", 1) + "/ws/client?token=" + token) as ws:
        print(json.loads(await ws.recv()))  # orbit.hello
        await ws.send(json.dumps({"type": "orbit.list-anchors"}))
        await ws.send(json.dumps({"type": "orbit.subscribe", "threadId": thread}))
        await ws.send(json.dumps({"id": 1, "method": method, "params": dict(params, threadId=thread)}))
        try:
            while True:
                print(json.loads(await asyncio.wait_for(ws.recv(), seconds)))
        except asyncio.TimeoutError:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--control", default="http://localhost:8000")
    ap.add_argument("--token", required=True)
    ap.add_argument("--thread", default="demo")
    ap.add_argument("--method", default="count")
    ap.add_argument("--params", default='{"to": 3}')
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()
    asyncio.run(run(args.control.rstrip("/"), args.token, args.thread, args.method, json.loads(args.params), args.seconds))


if __name__ == "__main__":
    main()
