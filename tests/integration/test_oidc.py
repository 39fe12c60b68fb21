#!/usr/bin/env python3
"""External sign-in (docs/auth.md, "External sign-in"): Bearer JWTs from an OpenID Connect
issuer. The issuer here is a small local one (Python's http.server) that publishes a discovery
document and a JWKS and signs with ES256 and RS256 (python3-jwt, python3-cryptography).
SQLite by default; AG_DB=postgres for PostgreSQL."""

import json
import os
import sys
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from jwt.algorithms import RSAAlgorithm  # noqa: E402

AUDIENCE = "antigravity-test"


class Issuer:
    """Discovery + JWKS on 127.0.0.1; keys can be rotated while it runs."""

    def __init__(self):
        self.keys = {}  # kid -> (alg, private key)
        self.jwks_fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks",
                            "id_token_signing_alg_values_supported": ["RS256", "ES256"]}
                elif self.path == "/jwks":
                    issuer.jwks_fetches += 1
                    body = {"keys": [issuer.public_jwk(kid) for kid in issuer.keys]}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_key(self, kid, alg):
        key = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else rsa.generate_private_key(65537, 2048)
        self.keys[kid] = (alg, key)

    def public_jwk(self, kid):
        alg, key = self.keys[kid]
        if alg == "ES256":
            # RFC 7518 6.2.1.2: each coordinate is the full 32 bytes. (python3-jwt 2.6's to_jwk drops
            # leading zero bytes, a key in 64 or so; the control plane refuses such keys.)
            n = key.public_key().public_numbers()
            jwk = {"kty": "EC", "crv": "P-256", "x": h.b64url_encode(n.x.to_bytes(32, "big")),
                   "y": h.b64url_encode(n.y.to_bytes(32, "big"))}
        else:
            jwk = json.loads(RSAAlgorithm(RSAAlgorithm.SHA256).to_jwk(key.public_key()))
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        return jwk

    def token(self, kid, sub, **claims):
        alg, key = self.keys[kid]
        now = int(time.time())
        body = {"iss": self.url, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600,
                "email": "%s@example.com" % sub, "name": "Ext %s" % sub}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})

    def stop(self):
        self.server.shutdown()


class OidcTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.issuer = Issuer()
        cls.issuer.add_key("ec-1", "ES256")
        cls.issuer.add_key("rsa-1", "RS256")
        cls.server = h.start_control(env_extra={"OIDC_ISSUER": cls.issuer.url, "OIDC_AUDIENCE": AUDIENCE})

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.issuer.stop()

    def session(self, token):
        return self.server.request("GET", "/auth/session", token=token)

    def test_es256_and_rs256_tokens_sign_in_and_map_to_one_user_by_sub(self):
        sub = "alice-" + h.random_string(6)
        first = self.session(self.issuer.token("ec-1", sub))
        self.assertEqual(first.status, 200, first)
        user = first.json()["user"]
        self.assertEqual(user["email"], sub.lower() + "@example.com")
        self.assertEqual(user["name"], "Ext " + sub)
        again = self.session(self.issuer.token("rsa-1", sub))
        self.assertEqual(again.json()["user"]["id"], user["id"])
        # A real user of the API: it creates and lists its projects.
        token = self.issuer.token("rsa-1", sub)
        created = h.create_project(self.server, token)
        listed = self.server.request("GET", "/projects", token=token).json()
        self.assertEqual([p["id"] for p in listed], [created["id"]])

    def test_bad_tokens_are_refused(self):
        sub = "bob-" + h.random_string(6)
        now = int(time.time())
        cases = {
            "wrong audience": self.issuer.token("ec-1", sub, aud="someone-else"),
            "expired": self.issuer.token("ec-1", sub, iat=now - 7200, exp=now - 3600),
            "not yet valid": self.issuer.token("ec-1", sub, nbf=now + 3600),
            "no subject": self.issuer.token("ec-1", None),
            "no email": self.issuer.token("rsa-1", sub, email=None),
        }
        good = self.issuer.token("ec-1", sub)
        head, payload, sig = good.split(".")
        cases["tampered payload"] = head + "." + h.b64url_encode(json.dumps(
            dict(h.jwt_decode_unverified(good)[1], sub="mallory")).encode()) + "." + sig
        cases["bad signature"] = head + "." + payload + "." + sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")
        # HS256 with the issuer's public key as the secret (the classic confusion attack), and none.
        pem = json.dumps(self.issuer.public_jwk("rsa-1"))
        cases["hs256 with the public key"] = jwt.encode({"iss": self.issuer.url, "aud": AUDIENCE, "sub": sub,
                                                         "exp": now + 600, "email": "x@example.com"},
                                                        pem, algorithm="HS256", headers={"kid": "rsa-1"})
        cases["alg none"] = (h.b64url_encode(json.dumps({"alg": "none", "kid": "ec-1"}).encode()) + "." +
                             good.split(".")[1] + ".")
        for what, token in cases.items():
            r = self.session(token)
            self.assertEqual(r.status, 401, (what, r))
            self.assertTrue(r.json()["detail"], what)
            self.assertIn("X-Request-Id", r.headers)

    def test_an_unknown_kid_fetches_the_keys_again(self):
        self.issuer.add_key("ec-2", "ES256")
        token = self.issuer.token("ec-2", "carol-" + h.random_string(6))
        # The keys are fetched again for an unknown kid once the last fetch is 10 s old.
        deadline = time.monotonic() + 15
        while self.session(token).status != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        self.assertEqual(self.session(token).status, 200)
        before = self.issuer.jwks_fetches
        # A made-up kid does not make the control plane fetch again at once.
        for _ in range(5):
            self.issuer.keys["ghost"] = self.issuer.keys["ec-1"]
            token = self.issuer.token("ghost", "dave")
            del self.issuer.keys["ghost"]
            self.assertEqual(self.session(token).status, 401)
        self.assertLessEqual(self.issuer.jwks_fetches - before, 1)

    def test_an_existing_email_is_linked_only_when_verified(self):
        local = h.register_user(self.server)
        sub = "erin-" + h.random_string(6)
        r = self.session(self.issuer.token("ec-1", sub, email=local.email))
        self.assertEqual(r.status, 403, r)
        r = self.session(self.issuer.token("ec-1", sub, email=local.email, email_verified=True))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["user"]["id"], local.id)

    def test_another_issuers_tokens_are_not_taken_for_ours(self):
        other = Issuer()
        other.add_key("ec-1", "ES256")
        try:
            r = self.session(other.token("ec-1", "frank"))
            self.assertEqual(r.status, 401, r)
        finally:
            other.stop()


class StartupTest(unittest.TestCase):
    def test_settings_are_checked(self):
        for env, needle in (({"OIDC_ISSUER": "http://idp.example.com"}, "https://"),
                            ({"OIDC_ISSUER": "https://idp.example.com"}, "OIDC_AUDIENCE")):
            code, out = h.run_binary(["control", "--listen", "127.0.0.1:0"], env_extra=env, timeout=20)
            self.assertNotEqual(code, 0, out)
            self.assertIn(needle, out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
