#!/usr/bin/env python3
"""Writes a worker config with N API keys in Antigravity's format, plus the raw keys.

usage: gen_worker_config.py N UPSTREAM_URL OUT_CONFIG OUT_KEYS [RPM BURST] [--jwt OUT_TOKEN] [--risk-off]
Keys: agk_ + 8 base62 public id + '_' + 43 base62 secret + 6 base62 CRC-32 (docs/api.md).
--risk-off: the project's risk engine is disabled (by default it runs with the default policy).
--jwt: the project also gets the slug "bench" and a service "up" to the same upstream, an ES256
public key, and OUT_TOKEN receives a service token for /bench/up/ (needs python3-jwt and
python3-cryptography).
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
    args = sys.argv[1:]
    jwt_out = None
    risk_off = "--risk-off" in args
    if risk_off:
        args.remove("--risk-off")
    if "--jwt" in args:
        i = args.index("--jwt")
        jwt_out = args[i + 1]
        del args[i:i + 2]
    n, upstream, out_config, out_keys = int(args[0]), args[1], args[2], args[3]
    rpm = int(args[4]) if len(args) > 4 else 100_000_000
    burst = int(args[5]) if len(args) > 5 else 100_000_000
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
    if risk_off:
        doc["projects"][0]["risk"] = {"enabled": False}
    if jwt_out:
        import time
        import uuid
        import jwt
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        private = ec.generate_private_key(ec.SECP256R1())
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        doc["projects"][0]["slug"] = "bench"
        doc["projects"][0]["services"] = [{"name": "up", "targets": [upstream]}]
        doc["jwt_keys"] = [{"kid": "bench-es256", "alg": "ES256", "public_key": public_pem}]
        now = int(time.time())
        token = jwt.encode({"jti": str(uuid.uuid4()), "project": "bench", "service": "up", "iat": now,
                            "exp": now + 86400}, private, algorithm="ES256", headers={"kid": "bench-es256"})
        with open(jwt_out, "w") as f:
            f.write(token + "\n")
    with open(out_config, "w") as f:
        json.dump(doc, f)
    with open(out_keys, "w") as f:
        f.write("\n".join(keys) + "\n")


if __name__ == "__main__":
    main()
