"""A minimal MaxMind DB (MMDB format 2.0) writer for tests: an IPv4 database mapping CIDR ranges
to {"country": {"iso_code": CC}}, readable by libmaxminddb. Standard library only.

Format: a binary search tree over the address bits (24-bit records), 16 zero bytes, the data
section, then "\\xab\\xcd\\xefMaxMind.com" and the metadata map.
"""

import ipaddress
import struct
import time


def _ctrl(type_id, size):
    assert size < 29
    if type_id <= 7:
        return bytes([(type_id << 5) | size])
    return bytes([size, type_id - 7])  # extended type


def _str(s):
    b = s.encode()
    return _ctrl(2, len(b)) + b


def _uint(type_id, v):
    b = v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""
    return _ctrl(type_id, len(b)) + b


def _map(pairs):
    out = _ctrl(7, len(pairs))
    for k, v in pairs:
        out += _str(k) + v
    return out


def _array(items):
    return _ctrl(11, len(items)) + b"".join(items)


def write_country_db(path, ranges):
    """`ranges`: [("127.0.0.0/8", "XX"), ...] (IPv4, not overlapping)."""
    data = b""
    offsets = {}
    for _, cc in ranges:
        if cc not in offsets:
            offsets[cc] = len(data)
            data += _map([("country", _map([("iso_code", _str(cc))]))])
    nodes = [[None, None]]
    for cidr, cc in ranges:
        net = ipaddress.ip_network(cidr)
        bits = int(net.network_address)
        node = 0
        for depth in range(net.prefixlen):
            bit = (bits >> (31 - depth)) & 1
            if depth == net.prefixlen - 1:
                nodes[node][bit] = ("data", offsets[cc])
            else:
                nxt = nodes[node][bit]
                if not isinstance(nxt, int):
                    nodes.append([None, None])
                    nxt = len(nodes) - 1
                    nodes[node][bit] = nxt
                node = nxt
    n = len(nodes)

    def record(r):
        if r is None:
            return n
        if isinstance(r, int):
            return r
        return n + 16 + r[1]

    tree = b"".join(struct.pack(">I", record(l))[1:] + struct.pack(">I", record(r))[1:] for l, r in nodes)
    meta = _map([
        ("binary_format_major_version", _uint(5, 2)),
        ("binary_format_minor_version", _uint(5, 0)),
        ("build_epoch", _uint(9, int(time.time()))),
        ("database_type", _str("Antigravity-Test-Country")),
        ("description", _map([("en", _str("test database"))])),
        ("ip_version", _uint(5, 4)),
        ("languages", _array([_str("en")])),
        ("node_count", _uint(6, n)),
        ("record_size", _uint(5, 24)),
    ])
    with open(path, "wb") as f:
        f.write(tree + b"\x00" * 16 + data + b"\xab\xcd\xefMaxMind.com" + meta)
