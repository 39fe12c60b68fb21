#!/usr/bin/env python3
"""Writes a worker config with N API keys in Antigravity's format, plus the raw keys.

usage: gen_worker_config.py N UPSTREAM_URL OUT_CONFIG OUT_KEYS [RPM BURST]
Keys: agk_ + 8 base62 public id + '_' + 43 base62 secret + 6 base62 CRC-32 (docs/api.md).
"""
import hashlib
import json
import random
import sys
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def b62_fixed(value, width):
    out = []
    for _ in range(width):
        out.append(ALPHABET[value % 62])
        value //= 62
    return "".join(reversed(out))


def make_key(rng):
    public = "".join(rng.choice(ALPHABET) for _ in range(8))
    body = "agk_" + public + "_" + "".join(rng.choice(ALPHABET) for _ in range(43))
    return body + b62_fixed(zlib.crc32(body.encode()), 6), public


def main():
    n, upstream, out_config, out_keys = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    rpm = int(sys.argv[5]) if len(sys.argv) > 5 else 100_000_000
    burst = int(sys.argv[6]) if len(sys.argv) > 6 else 100_000_000
    rng = random.Random(42)
    keys, entries = [], []
    for i in range(n):
        key, public = make_key(rng)
        keys.append(key)
        entries.append({"id": "key-%d" % i, "public_id": public,
                        "hash": hashlib.sha256(key.encode()).hexdigest(), "expires_at": None})
    doc = {"schema": 1, "version": 1, "projects": [{
        "id": "bench", "name": "bench", "upstream_base_url": upstream, "domains": [],
        "api_keys": [e["hash"] for e in entries], "keys": entries,
        "rate_limit": {"requests_per_minute": rpm, "burst": burst},
        "key_policy": "multiple", "max_body_bytes": 10485760}]}
    with open(out_config, "w") as f:
        json.dump(doc, f)
    with open(out_keys, "w") as f:
        f.write("\n".join(keys) + "\n")


if __name__ == "__main__":
    main()
