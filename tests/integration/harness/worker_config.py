"""API keys in the product's format and worker config documents (docs/api.md, "API keys" and
"Worker config"), written to files the way the control plane would serve them."""

import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
import zlib

from .common import BASE62, random_string, rfc3339


def base62_fixed(value, width):
    """Fixed-width base62 (alphabet 0-9A-Za-z), most significant digit first."""
    out = []
    for _ in range(width):
        out.append(BASE62[value % 62])
        value //= 62
    if value:
        raise ValueError("value does not fit in %d base62 digits" % width)
    return "".join(reversed(out))


def key_with_checksum(body):
    """Appends the 6-character base62 CRC-32 of `body`."""
    return body + base62_fixed(zlib.crc32(body.encode("ascii")), 6)


def make_key():
    """A valid API key in our format; returns (key, sha256 hex of the key)."""
    body = "agk_" + random_string(8, BASE62) + "_" + random_string(43, BASE62)
    key = key_with_checksum(body)
    return key, hashlib.sha256(key.encode("ascii")).hexdigest()


def key_entry(key, key_hash=None, expires_at=None, key_id=None, rate_limit=None):
    """One `keys[]` element. `expires_at`: None, an RFC 3339 string or epoch seconds.
    `rate_limit`: the key's own (requests_per_minute, burst), replacing the project's."""
    if isinstance(expires_at, (int, float)):
        expires_at = rfc3339(expires_at)
    entry = {
        "id": key_id or str(uuid.uuid4()),
        "public_id": key[4:12],
        "hash": key_hash or hashlib.sha256(key.encode("ascii")).hexdigest(),
        "expires_at": expires_at,
        "key": key,  # test-side only; stripped by write_config
    }
    if rate_limit is not None:
        entry["rate_limit"] = {"requests_per_minute": rate_limit[0], "burst": rate_limit[1]}
    return entry


def project_entry(upstream_url, keys=(), requests_per_minute=6000, burst=1000,
                  max_body_bytes=10485760, project_id=None, name=None, key_policy="multiple"):
    """One `projects[]` element of the worker config document."""
    keys = list(keys)
    return {
        "id": project_id or str(uuid.uuid4()),
        "name": name or ("proj-" + random_string(8)),
        "upstream_url": upstream_url,
        "upstream_base_url": upstream_url,
        "domains": [],
        "api_keys": [k["hash"] for k in keys],
        "keys": keys,
        "rate_limit": {"requests_per_minute": requests_per_minute, "burst": burst},
        "key_policy": key_policy,
        "max_body_bytes": max_body_bytes,
    }


_version_lock = threading.Lock()
_version_counter = [0]


def next_version():
    with _version_lock:
        _version_counter[0] += 1
        return _version_counter[0]


def config_document(projects, version=None):
    clean = []
    for p in projects:
        p = dict(p)
        p["keys"] = [{k: v for k, v in key.items() if k != "key"} for key in p.get("keys", [])]
        clean.append(p)
    return {
        "schema": 1,
        "version": next_version() if version is None else version,
        "generated_at": rfc3339(time.time()),
        "projects": clean,
    }


def write_raw(path, data):
    """Replaces `path` atomically (write to a sibling, then rename) with `data` (bytes or str)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cfg-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_config(path, projects, version=None):
    """Writes the worker config JSON document; returns the document written."""
    doc = config_document(projects, version)
    write_raw(path, json.dumps(doc, indent=2))
    return doc
