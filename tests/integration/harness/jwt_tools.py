"""JWTs signed with HMAC (HS256/384/512, or alg "none") for forging tokens, and decoding a token
without checking it."""

import base64
import hashlib
import hmac
import json


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    pad = "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text + pad)


def jwt_decode_unverified(token):
    header_b64, payload_b64, _sig = token.split(".")
    return json.loads(b64url_decode(header_b64)), json.loads(b64url_decode(payload_b64))


_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def jwt_encode(payload, secret, alg="HS256", header=None):
    hdr = {"alg": alg, "typ": "JWT"}
    if header:
        hdr.update(header)
    signing_input = (b64url_encode(json.dumps(hdr, separators=(",", ":")).encode()) + "." +
                     b64url_encode(json.dumps(payload, separators=(",", ":")).encode()))
    if alg == "none":
        return signing_input + "."
    key = secret.encode() if isinstance(secret, str) else secret
    sig = hmac.new(key, signing_input.encode("ascii"), _HASHES[alg]).digest()
    return signing_input + "." + b64url_encode(sig)
