"""A software WebAuthn authenticator (ES256, attestation "none"), for suites that need passkey
sign-ins without a browser (the authorisation matrix). It answers the control plane's options
with what PublicKeyCredential.toJSON() would give. The browser suite (test_passkeys.py) uses
Chromium's virtual authenticator instead. Needs python3-cryptography."""

import hashlib
import json
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .jwt_tools import b64url_encode


def cbor(value):
    """The CBOR encoding of ints, bytes, str, lists and dicts (what WebAuthn structures need)."""
    def head(major, n):
        if n < 24:
            return bytes([major << 5 | n])
        for extra, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
            if n < 1 << (8 * struct.calcsize(fmt)):
                return bytes([major << 5 | extra]) + struct.pack(fmt, n)
        raise ValueError(n)
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(cbor(v) for v in value)
    if isinstance(value, dict):
        return head(5, len(value)) + b"".join(cbor(k) + cbor(v) for k, v in value.items())
    raise TypeError(type(value))


class SoftAuthenticator:
    def __init__(self, origin, rp_id="localhost"):
        self.origin = origin
        self.rp_id = rp_id
        self.credentials = {}  # credential id (base64url) -> [private key, user handle, sign count]

    def _client_data(self, kind, challenge):
        return json.dumps({"type": kind, "challenge": challenge, "origin": self.origin,
                           "crossOrigin": False}).encode()

    def create(self, options):
        """navigator.credentials.create() for PublicKeyCredentialCreationOptionsJSON `options`."""
        key = ec.generate_private_key(ec.SECP256R1())
        numbers = key.public_key().public_numbers()
        cred_id = os.urandom(16)
        cose = cbor({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})
        auth_data = (hashlib.sha256(self.rp_id.encode()).digest() + bytes([0x45]) + struct.pack(">I", 0)
                     + bytes(16) + struct.pack(">H", len(cred_id)) + cred_id + cose)
        cid = b64url_encode(cred_id)
        self.credentials[cid] = [key, options["user"]["id"], 0]
        return {"id": cid, "rawId": cid, "type": "public-key", "response": {
            "clientDataJSON": b64url_encode(self._client_data("webauthn.create", options["challenge"])),
            "attestationObject": b64url_encode(cbor({"fmt": "none", "attStmt": {}, "authData": auth_data})),
            "transports": ["internal"]}, "clientExtensionResults": {}}

    def get(self, options, credential_id=None):
        """navigator.credentials.get(): signs with `credential_id` (default: the newest)."""
        cid = credential_id or list(self.credentials)[-1]
        entry = self.credentials[cid]
        entry[2] += 1
        auth_data = hashlib.sha256(self.rp_id.encode()).digest() + bytes([0x05]) + struct.pack(">I", entry[2])
        client_data = self._client_data("webauthn.get", options["challenge"])
        signature = entry[0].sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return {"id": cid, "rawId": cid, "type": "public-key", "response": {
            "clientDataJSON": b64url_encode(client_data), "authenticatorData": b64url_encode(auth_data),
            "signature": b64url_encode(signature), "userHandle": entry[1]}, "clientExtensionResults": {}}
