"""Integration tests of the control API (docs/api.md) against the real binary.

Run: python3 tests/integration/test_control_api.py            (SQLite)
     AG_DB=postgres AG_TEST_PG_URL=postgresql://postgres@127.0.0.1:5432/postgres \
         python3 tests/integration/test_control_api.py         (PostgreSQL)
"""

import http.client
import json
import os
import re
import string
import sys
import threading
import time
import unittest
import urllib.parse
import uuid
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402

WELL_FORMED_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
DEFAULT_UPSTREAM = "http://127.0.0.1:9000/api"
BASE62_ALPHABETS = (
    string.digits + string.ascii_uppercase + string.ascii_lowercase,
    string.digits + string.ascii_lowercase + string.ascii_uppercase,
    string.ascii_uppercase + string.ascii_lowercase + string.digits,
)


def api_key_checksum_ok(key):
    """The last 6 characters are CRC-32 (base62) over everything before them."""
    body, check = key[:-6], key[-6:]
    crc = zlib.crc32(body.encode("ascii"))
    for alphabet in BASE62_ALPHABETS:
        for digits in (check, check[::-1]):
            value = 0
            for c in digits:
                value = value * 62 + alphabet.index(c)
            if value == crc:
                return True
    return False


class ControlTestCase(unittest.TestCase):
    """One server per class; helpers and assertions shared by every test class."""

    env_extra = None
    server = None
    _shared_user = None

    @classmethod
    def setUpClass(cls):
        cls.server = h.start_control(h.AG_DB, cls.env_extra)
        cls._shared_user = None

    @classmethod
    def tearDownClass(cls):
        if cls.server is not None:
            cls.server.stop()
            cls.server = None

    # -- helpers -------------------------------------------------------------------------------

    def req(self, method, path, body=None, **kw):
        return self.server.request(method, path, body, **kw)

    @classmethod
    def shared_user(cls):
        """A user for tests that only need some authenticated caller (saves password hashing)."""
        if cls._shared_user is None:
            cls._shared_user = h.register_user(cls.server)
        return cls._shared_user

    def new_user(self):
        return h.register_user(self.server)

    def new_project(self, token, **fields):
        return h.create_project(self.server, token, **fields)

    def new_key(self, token, project_id, **body):
        return h.create_key(self.server, token, project_id, **body)

    def config(self):
        resp = self.server.worker_config()
        self.assertStatus(resp, 200)
        return resp.json()

    # -- assertions ----------------------------------------------------------------------------

    def assertStatus(self, resp, status):
        self.assertEqual(resp.status, status, "unexpected status: %r" % (resp,))
        self.assertRequestId(resp)

    def assertRequestId(self, resp):
        rid = resp.headers.get("X-Request-Id")
        self.assertTrue(rid, "missing X-Request-Id: %r" % (resp,))

    def assertError(self, resp, status, detail=None, mentions=None):
        """An error response: status, JSON {"detail": str}, optional exact text or field name."""
        self.assertStatus(resp, status)
        self.assertIn("application/json", resp.headers.get("Content-Type", ""), repr(resp))
        data = h.error_detail(self, resp, detail)
        if mentions is not None:
            self.assertIn(mentions, data["detail"], "the message should name the field: %r" % (resp,))
        return data

    def assertUnauthorized(self, resp, detail=None):
        data = self.assertError(resp, 401, detail)
        self.assertIn("bearer", resp.headers.get("WWW-Authenticate", "").lower(),
                      "401 without WWW-Authenticate: Bearer: %r" % (resp,))
        return data

    def assertTimestamp(self, value):
        self.assertIsInstance(value, str)
        self.assertRegex(value, h.RFC3339_RE)

    def assertUuid(self, value):
        self.assertIsInstance(value, str)
        self.assertRegex(value, h.UUID4_RE)

    def assertTokenResponse(self, data, email=None):
        self.assertIsInstance(data, dict)
        for field in ("access_token", "token_type", "expires_in", "refresh_token",
                      "refresh_expires_in", "user", "token", "refreshToken", "verified"):
            self.assertIn(field, data)
        self.assertEqual(data["token_type"], "bearer")
        self.assertIsInstance(data["expires_in"], int)
        self.assertGreater(data["expires_in"], 0)
        self.assertIsInstance(data["refresh_expires_in"], int)
        self.assertGreater(data["refresh_expires_in"], 0)
        self.assertRegex(data["refresh_token"], h.REFRESH_RE)
        self.assertEqual(data["token"], data["access_token"])
        self.assertEqual(data["refreshToken"], data["refresh_token"])
        self.assertIs(data["verified"], True)
        user = data["user"]
        self.assertUuid(user["id"])
        self.assertTimestamp(user["created_at"])
        self.assertIn("name", user)
        if email is not None:
            self.assertEqual(user["email"], email)
        for secret_field in ("password", "password_hash", "hash"):
            self.assertNotIn(secret_field, user)
        header, claims = h.jwt_decode_unverified(data["access_token"])
        self.assertEqual(claims["sub"], user["id"])
        self.assertEqual(claims["email"], user["email"])
        for claim in ("sid", "jti", "iat", "exp"):
            self.assertIn(claim, claims)
        self.assertEqual(claims["iss"], "antigravity")
        aud = claims["aud"]
        self.assertIn("antigravity-control", aud if isinstance(aud, list) else [aud])
        self.assertEqual(claims["exp"] - claims["iat"], data["expires_in"])
        self.assertAlmostEqual(claims["iat"], time.time(), delta=30)
        return header, claims

    def assertAllow(self, resp, expected):
        self.assertError(resp, 405)
        allow = resp.headers.get("Allow")
        self.assertIsNotNone(allow, "405 without Allow: %r" % (resp,))
        methods = {m.strip().upper() for m in allow.split(",") if m.strip()}
        self.assertTrue(set(expected) <= methods, "Allow %r lacks %r" % (allow, expected))
        self.assertNotIn(resp.method.upper(), methods)


# =============================================================================================
# Auth


class RegisterTests(ControlTestCase):

    def test_register_returns_token_response(self):
        local = "reg." + h.random_string(10, string.ascii_lowercase + string.digits)
        email = local + "@example.com"
        resp = self.req("POST", "/auth/register", {"email": email, "password": "correct horse"})
        self.assertStatus(resp, 201)
        self.assertIn("application/json", resp.headers.get("Content-Type", ""))
        data = resp.json()
        header, _claims = self.assertTokenResponse(data, email=email)
        self.assertEqual(header["alg"], "HS256")
        self.assertEqual(data["user"]["name"], local, "name defaults to the part before @")
        self.assertEqual(data["expires_in"], 3600)
        self.assertEqual(data["refresh_expires_in"], 604800)

    def test_register_stores_email_lower_case_and_duplicates_ignore_case(self):
        tag = h.random_string(10, string.ascii_lowercase)
        resp = self.req("POST", "/auth/register",
                        {"email": "Mixed.%s@Example.COM" % tag, "password": "password-1",
                         "name": "Mixed Case"})
        self.assertStatus(resp, 201)
        user = resp.json()["user"]
        self.assertEqual(user["email"], "mixed.%s@example.com" % tag)
        self.assertEqual(user["name"], "Mixed Case")
        resp = self.req("POST", "/auth/register",
                        {"email": "MIXED.%s@example.com" % tag.upper(), "password": "password-2"})
        self.assertError(resp, 409, "Email already registered")

    def test_duplicate_email_is_409_and_changes_nothing(self):
        user = self.new_user()
        before = self.server.table_counts()
        resp = self.req("POST", "/auth/register",
                        {"email": user.email, "password": "another-password", "name": "x"})
        self.assertError(resp, 409, "Email already registered")
        self.assertEqual(self.server.table_counts(), before, "a failed register wrote rows")
        # The first registration is intact: its password works, the duplicate's does not.
        tokens = h.login(self.server, user.email, user.password)
        self.assertEqual(tokens["user"]["id"], user.id)
        resp = self.req("POST", "/auth/login", {"email": user.email, "password": "another-password"})
        self.assertError(resp, 401, "Incorrect email or password")

    def test_concurrent_duplicate_registrations(self):
        email = h.unique_email("race")
        results = []

        def attempt(i):
            results.append(self.req("POST", "/auth/register",
                                     {"email": email, "password": "password-%d" % i}))

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status for r in results)
        self.assertEqual(statuses, [201, 409, 409, 409, 409], [repr(r) for r in results])
        for r in results:
            if r.status == 409:
                self.assertError(r, 409, "Email already registered")

    def test_invalid_email_is_422(self):
        long_domain = "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".com"  # 195 characters
        for email in ("not-an-email", "a@", "@example.com", "a b@example.com", "",
                      "a@b@example.com", "a" * 59 + "@" + long_domain):
            with self.subTest(email=email):
                resp = self.req("POST", "/auth/register", {"email": email, "password": "password-1"})
                self.assertError(resp, 422, mentions="email")

    def test_email_of_254_characters_is_accepted(self):
        long_domain = "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".com"
        email = h.random_string(58, string.ascii_lowercase) + "@" + long_domain
        self.assertEqual(len(email), 254)
        resp = self.req("POST", "/auth/register", {"email": email, "password": "password-1"})
        self.assertStatus(resp, 201)
        self.assertEqual(resp.json()["user"]["email"], email)

    def test_password_length_bounds(self):
        for password in ("1234567", "x" * 1025):
            with self.subTest(length=len(password)):
                resp = self.req("POST", "/auth/register",
                                {"email": h.unique_email(), "password": password})
                self.assertError(resp, 422, mentions="password")
        # 8 and 1024 characters are accepted; the 100-character name too.
        name = "n" * 100
        resp = self.req("POST", "/auth/register",
                        {"email": h.unique_email(), "password": "12345678", "name": name})
        self.assertStatus(resp, 201)
        self.assertEqual(resp.json()["user"]["name"], name)
        email = h.unique_email()
        resp = self.req("POST", "/auth/register", {"email": email, "password": "p" * 1024})
        self.assertStatus(resp, 201)
        h.login(self.server, email, "p" * 1024)

    def test_name_too_long_is_422(self):
        resp = self.req("POST", "/auth/register",
                        {"email": h.unique_email(), "password": "password-1", "name": "n" * 101})
        self.assertError(resp, 422, mentions="name")

    def test_wrong_types_are_422(self):
        cases = [
            ({"email": 123, "password": "password-1"}, "email"),
            ({"email": None, "password": "password-1"}, "email"),
            ({"email": ["a@example.com"], "password": "password-1"}, "email"),
            ({"email": h.unique_email(), "password": 12345678}, "password"),
            ({"email": h.unique_email(), "password": None}, "password"),
            ({"email": h.unique_email(), "password": "password-1", "name": 5}, "name"),
            ({"email": h.unique_email(), "password": "password-1", "name": {"a": 1}}, "name"),
        ]
        for body, field in cases:
            with self.subTest(body=body):
                self.assertError(self.req("POST", "/auth/register", body), 422, mentions=field)

    def test_missing_fields_are_422(self):
        cases = [({}, None), ({"email": h.unique_email()}, "password"),
                 ({"password": "password-1"}, "email")]
        for body, field in cases:
            with self.subTest(body=body):
                self.assertError(self.req("POST", "/auth/register", body), 422, mentions=field)

    def test_malformed_json_is_400(self):
        for raw in (b'{"email": ', b"{bad json}", b"", b'{"email": "a@example.com",}',
                    b'{"email": "a@example.com"} trailing'):
            with self.subTest(raw=raw):
                resp = self.req("POST", "/auth/register", raw_body=raw,
                                content_type="application/json")
                self.assertError(resp, 400)

    def test_invalid_utf8_is_rejected(self):
        raw = b'{"email": "\xff\xfe@example.com", "password": "password-1"}'
        resp = self.req("POST", "/auth/register", raw_body=raw, content_type="application/json")
        self.assertIn(resp.status, (400, 422), repr(resp))
        self.assertError(resp, resp.status)

    def test_non_object_json_is_400(self):
        for raw in (b"[]", b'[{"email": "a@example.com"}]', b'"text"', b"42", b"null", b"true"):
            with self.subTest(raw=raw):
                resp = self.req("POST", "/auth/register", raw_body=raw,
                                content_type="application/json")
                self.assertError(resp, 400)

    def test_body_over_one_mebibyte_is_413(self):
        prefix, suffix = b'{"email": "', b'", "password": "password-1"}'
        raw = prefix + b"a" * (1024 * 1024 + 1 - len(prefix) - len(suffix)) + suffix
        self.assertEqual(len(raw), 1024 * 1024 + 1)
        resp = self.req("POST", "/auth/register", raw_body=raw, content_type="application/json")
        self.assertError(resp, 413)

    def test_body_of_exactly_one_mebibyte_is_read(self):
        body = b'{"email": "not-an-email", "password": "password-1"}'
        raw = body + b" " * (1024 * 1024 - len(body))
        resp = self.req("POST", "/auth/register", raw_body=raw, content_type="application/json")
        self.assertError(resp, 422, mentions="email")

    def test_wrong_content_type_is_415(self):
        raw = json.dumps({"email": h.unique_email(), "password": "password-1"}).encode()
        for ctype in ("text/plain", "application/xml", "application/x-www-form-urlencoded"):
            with self.subTest(content_type=ctype):
                resp = self.req("POST", "/auth/register", raw_body=raw, content_type=ctype)
                self.assertError(resp, 415)

    def test_json_with_charset_is_accepted(self):
        email = h.unique_email()
        raw = json.dumps({"email": email, "password": "password-1"}).encode()
        resp = self.req("POST", "/auth/register", raw_body=raw,
                        content_type="application/json; charset=utf-8")
        self.assertStatus(resp, 201)
        self.assertEqual(resp.json()["user"]["email"], email)


class LoginTests(ControlTestCase):

    def test_login_json(self):
        user = self.shared_user()
        resp = self.req("POST", "/auth/login", {"email": user.email, "password": user.password})
        self.assertStatus(resp, 200)
        data = resp.json()
        self.assertTokenResponse(data, email=user.email)
        self.assertEqual(data["user"]["id"], user.id)
        self.assertNotEqual(data["access_token"], user.token)
        self.assertNotEqual(data["refresh_token"], user.refresh_token)

    def test_login_email_is_case_insensitive(self):
        user = self.shared_user()
        resp = self.req("POST", "/auth/login", {"email": user.email.upper(), "password": user.password})
        self.assertStatus(resp, 200)
        self.assertEqual(resp.json()["user"]["id"], user.id)

    def test_login_oauth2_form(self):
        user = self.shared_user()
        form = urllib.parse.urlencode({"username": user.email, "password": user.password,
                                       "grant_type": "password"}).encode()
        resp = self.req("POST", "/auth/login", raw_body=form,
                        content_type="application/x-www-form-urlencoded")
        self.assertStatus(resp, 200)
        data = resp.json()
        self.assertTokenResponse(data, email=user.email)
        self.assertEqual(data["user"]["id"], user.id)
        session = self.req("GET", "/auth/session", token=data["access_token"])
        self.assertStatus(session, 200)
        self.assertIs(session.json()["authenticated"], True)

    def test_login_form_wrong_password(self):
        user = self.shared_user()
        form = ("username=%s&password=wrong-password" % user.email.replace("@", "%40")).encode()
        resp = self.req("POST", "/auth/login", raw_body=form,
                        content_type="application/x-www-form-urlencoded")
        self.assertError(resp, 401, "Incorrect email or password")

    def test_wrong_password_and_unknown_email_look_the_same(self):
        user = self.shared_user()
        wrong = self.req("POST", "/auth/login", {"email": user.email, "password": "wrong-password"})
        unknown = self.req("POST", "/auth/login",
                           {"email": h.unique_email("nobody"), "password": "wrong-password"})
        self.assertError(wrong, 401, "Incorrect email or password")
        self.assertError(unknown, 401, "Incorrect email or password")
        # The same body but for the request's own id.
        strip = lambda r: {k: v for k, v in r.json().items() if k != "request_id"}  # noqa: E731
        self.assertEqual(strip(wrong), strip(unknown))
        self.assertEqual(wrong.json()["request_id"], wrong.headers["X-Request-Id"])

    def test_unknown_email_takes_similar_time(self):
        user = self.shared_user()

        def timed(email):
            start = time.monotonic()
            resp = self.req("POST", "/auth/login", {"email": email, "password": "wrong-password"})
            self.assertEqual(resp.status, 401)
            return time.monotonic() - start

        wrong = sorted(timed(user.email) for _ in range(3))[1]
        unknown = sorted(timed(h.unique_email("nobody")) for _ in range(3))[1]
        self.assertGreater(unknown, wrong * 0.3,
                           "unknown email answered in %.3fs vs %.3fs for a wrong password: "
                           "the difference reveals which emails exist" % (unknown, wrong))

    def test_missing_password_is_422(self):
        resp = self.req("POST", "/auth/login", {"email": self.shared_user().email})
        self.assertError(resp, 422, mentions="password")

    def test_form_without_password_is_rejected(self):
        resp = self.req("POST", "/auth/login", raw_body=b"username=a%40example.com",
                        content_type="application/x-www-form-urlencoded")
        self.assertIn(resp.status, (400, 422), repr(resp))
        self.assertError(resp, resp.status)

    def test_malformed_form_is_400(self):
        resp = self.req("POST", "/auth/login", raw_body=b"username=%zz&password=%",
                        content_type="application/x-www-form-urlencoded")
        self.assertError(resp, 400)

    def test_malformed_json_is_400(self):
        resp = self.req("POST", "/auth/login", raw_body=b'{"email":',
                        content_type="application/json")
        self.assertError(resp, 400)

    def test_other_content_type_is_415(self):
        user = self.shared_user()
        raw = json.dumps({"email": user.email, "password": user.password}).encode()
        resp = self.req("POST", "/auth/login", raw_body=raw, content_type="text/plain")
        self.assertError(resp, 415)


class SessionTests(ControlTestCase):

    def test_session_without_token(self):
        self.shared_user()
        resp = self.req("GET", "/auth/session")
        self.assertStatus(resp, 200)
        data = resp.json()
        self.assertIs(data["authenticated"], False)
        self.assertIsNone(data["user"])
        self.assertIs(data["hasPasskey"], False)
        self.assertIs(data["systemHasUsers"], True)

    def test_session_with_token(self):
        user = self.new_user()
        resp = self.req("GET", "/auth/session", token=user.token)
        self.assertStatus(resp, 200)
        data = resp.json()
        self.assertIs(data["authenticated"], True)
        self.assertIs(data["hasPasskey"], False)
        self.assertIs(data["systemHasUsers"], True)
        self.assertEqual(data["user"]["id"], user.id)
        self.assertEqual(data["user"]["email"], user.email)
        self.assertEqual(data["user"], user.tokens["user"])
        self.assertTimestamp(data["session"]["expires_at"])
        self.assertTrue(data["session"]["id"])
        _header, claims = h.jwt_decode_unverified(user.token)
        self.assertEqual(data["session"]["id"], claims["sid"])
        self.assertGreater(h.parse_time(data["session"]["expires_at"]), time.time())

    def test_garbage_tokens_are_401(self):
        for value in ("Bearer garbage", "Bearer a.b.c", "Bearer ", "Basic dXNlcjpwYXNz",
                      "Bearer " + "x" * 500):
            with self.subTest(authorization=value):
                resp = self.req("GET", "/auth/session", headers={"Authorization": value})
                self.assertUnauthorized(resp)

    def _claims(self, user):
        return h.jwt_decode_unverified(user.token)[1]

    def test_resigned_with_the_real_secret_is_accepted(self):
        # Proves the forging below is done right: the same claims signed with the server's
        # secret are accepted, so each rejection below is caused by the one thing changed.
        user = self.shared_user()
        token = h.jwt_encode(self._claims(user), self.server.jwt_secret)
        resp = self.req("GET", "/auth/session", token=token)
        self.assertStatus(resp, 200)
        self.assertEqual(resp.json()["user"]["id"], user.id)

    def test_forged_signature_is_401(self):
        user = self.shared_user()
        for token in (h.jwt_encode(self._claims(user), h.random_string(48)),
                      h.jwt_encode(self._claims(user), "")):
            resp = self.req("GET", "/auth/session", token=token)
            self.assertUnauthorized(resp)
            self.assertUnauthorized(self.req("GET", "/projects", token=token))

    def test_alg_none_is_401(self):
        user = self.shared_user()
        for alg in ("none", "None", "NONE"):
            token = h.jwt_encode(self._claims(user), None, alg="none", header={"alg": alg})
            with self.subTest(alg=alg):
                self.assertUnauthorized(self.req("GET", "/auth/session", token=token))
                # with the original signature kept
                sig = user.token.split(".")[2]
                self.assertUnauthorized(self.req("GET", "/auth/session", token=token + sig))

    def test_tampered_payload_is_401(self):
        user = self.shared_user()
        other = self.new_user()
        header_b64, _payload, sig = user.token.split(".")
        claims = self._claims(user)
        claims["sub"] = other.id
        payload_b64 = h.b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
        resp = self.req("GET", "/auth/session", token="%s.%s.%s" % (header_b64, payload_b64, sig))
        self.assertUnauthorized(resp)

    def test_other_algorithm_with_the_real_secret_is_401(self):
        user = self.shared_user()
        for alg in ("HS384", "HS512"):
            with self.subTest(alg=alg):
                token = h.jwt_encode(self._claims(user), self.server.jwt_secret, alg=alg)
                self.assertUnauthorized(self.req("GET", "/auth/session", token=token))

    def test_expired_claims_with_the_real_secret_are_401(self):
        user = self.shared_user()
        claims = self._claims(user)
        claims["iat"] = int(time.time()) - 7200
        claims["exp"] = int(time.time()) - 3600
        token = h.jwt_encode(claims, self.server.jwt_secret)
        self.assertUnauthorized(self.req("GET", "/auth/session", token=token))

    def test_wrong_audience_or_issuer_is_401(self):
        user = self.shared_user()
        for claim, value in (("aud", "someone-else"), ("iss", "someone-else")):
            with self.subTest(claim=claim):
                claims = self._claims(user)
                claims[claim] = value
                token = h.jwt_encode(claims, self.server.jwt_secret)
                self.assertUnauthorized(self.req("GET", "/auth/session", token=token))

    def test_unknown_session_is_401(self):
        user = self.shared_user()
        claims = self._claims(user)
        claims["sid"] = str(uuid.uuid4())
        claims["jti"] = str(uuid.uuid4())
        token = h.jwt_encode(claims, self.server.jwt_secret)
        self.assertUnauthorized(self.req("GET", "/auth/session", token=token))


class RefreshLogoutTests(ControlTestCase):

    def test_refresh_rotates(self):
        user = self.new_user()
        resp = self.req("POST", "/auth/refresh", {"refresh_token": user.refresh_token})
        self.assertStatus(resp, 200)
        second = resp.json()
        self.assertTokenResponse(second, email=user.email)
        self.assertEqual(second["user"]["id"], user.id)
        self.assertNotEqual(second["refresh_token"], user.refresh_token)
        self.assertNotEqual(second["access_token"], user.token)
        session = self.req("GET", "/auth/session", token=second["access_token"])
        self.assertStatus(session, 200)
        self.assertEqual(session.json()["user"]["id"], user.id)
        # camelCase alias
        resp = self.req("POST", "/auth/refresh", {"refreshToken": second["refresh_token"]})
        self.assertStatus(resp, 200)
        third = resp.json()
        self.assertNotIn(third["refresh_token"], (user.refresh_token, second["refresh_token"]))
        self.assertStatus(self.req("GET", "/projects", token=third["access_token"]), 200)

    def test_refresh_reuse_revokes_the_whole_session(self):
        user = self.new_user()
        first_access, first_refresh = user.token, user.refresh_token
        resp = self.req("POST", "/auth/refresh", {"refresh_token": first_refresh})
        self.assertStatus(resp, 200)
        second = resp.json()
        # Presenting the spent token again is theft.
        resp = self.req("POST", "/auth/refresh", {"refresh_token": first_refresh})
        self.assertError(resp, 401, "Refresh token reuse detected; session revoked")
        # The whole family is dead: the new refresh token and every access token.
        resp = self.req("POST", "/auth/refresh", {"refresh_token": second["refresh_token"]})
        self.assertError(resp, 401)
        for token in (first_access, second["access_token"]):
            self.assertUnauthorized(self.req("GET", "/auth/session", token=token))
            self.assertUnauthorized(self.req("GET", "/projects", token=token))
        # Recorded in the audit trail; a new login still works.
        fresh = h.login(self.server, user.email, user.password)
        audit = self.req("GET", "/audit", token=fresh["access_token"])
        self.assertStatus(audit, 200)
        self.assertIn("auth.refresh_reuse", [e["action"] for e in audit.json()])

    def test_reuse_in_one_session_leaves_other_sessions_alone(self):
        user = self.new_user()
        other = h.login(self.server, user.email, user.password)
        self.assertStatus(self.req("POST", "/auth/refresh", {"refresh_token": user.refresh_token}), 200)
        self.assertError(self.req("POST", "/auth/refresh", {"refresh_token": user.refresh_token}), 401)
        self.assertStatus(self.req("GET", "/projects", token=other["access_token"]), 200)
        self.assertStatus(self.req("POST", "/auth/refresh", {"refresh_token": other["refresh_token"]}), 200)

    def test_concurrent_refreshes_spend_the_token_once(self):
        user = self.new_user()
        results = []

        def refresh():
            results.append(self.req("POST", "/auth/refresh", {"refresh_token": user.refresh_token}))

        threads = [threading.Thread(target=refresh) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = [r for r in results if r.status == 200]
        self.assertLessEqual(len(ok), 1, "one refresh token was spent %d times" % len(ok))
        for r in results:
            if r.status != 200:
                self.assertError(r, 401)

    def test_invalid_refresh_tokens_are_401(self):
        for token in ("agr_" + h.random_string(43), "garbage", h.random_string(62)):
            with self.subTest(token=token):
                resp = self.req("POST", "/auth/refresh", {"refresh_token": token})
                self.assertError(resp, 401, "Invalid refresh token")

    def test_refresh_with_access_token_is_401(self):
        user = self.shared_user()
        resp = self.req("POST", "/auth/refresh", {"refresh_token": user.token})
        self.assertError(resp, 401, "Invalid refresh token")

    def test_refresh_body_errors(self):
        resp = self.req("POST", "/auth/refresh", raw_body=b"{", content_type="application/json")
        self.assertError(resp, 400)
        resp = self.req("POST", "/auth/refresh", raw_body=b"[]", content_type="application/json")
        self.assertError(resp, 400)
        resp = self.req("POST", "/auth/refresh", {})
        self.assertIn(resp.status, (401, 422), repr(resp))
        self.assertError(resp, resp.status)

    def test_logout_with_access_token(self):
        user = self.new_user()
        resp = self.req("POST", "/auth/logout", token=user.token)
        self.assertStatus(resp, 204)
        self.assertEqual(resp.body, b"")
        self.assertUnauthorized(self.req("GET", "/auth/session", token=user.token))
        self.assertUnauthorized(self.req("GET", "/projects", token=user.token))
        self.assertError(self.req("POST", "/auth/refresh", {"refresh_token": user.refresh_token}), 401)
        self.assertUnauthorized(self.req("POST", "/auth/logout", token=user.token))

    def test_logout_with_refresh_token_body(self):
        user = self.new_user()
        resp = self.req("POST", "/auth/logout", {"refresh_token": user.refresh_token})
        self.assertStatus(resp, 204)
        self.assertUnauthorized(self.req("GET", "/auth/session", token=user.token))
        self.assertError(self.req("POST", "/auth/refresh", {"refresh_token": user.refresh_token}), 401)

    def test_logout_only_ends_its_own_session(self):
        user = self.new_user()
        other = h.login(self.server, user.email, user.password)
        self.assertStatus(self.req("POST", "/auth/logout", token=user.token), 204)
        self.assertStatus(self.req("GET", "/projects", token=other["access_token"]), 200)
        resp = self.req("GET", "/auth/session", token=other["access_token"])
        self.assertIs(resp.json()["authenticated"], True)

    def test_logout_without_credentials_is_401(self):
        self.assertUnauthorized(self.req("POST", "/auth/logout"))
        self.assertUnauthorized(self.req("POST", "/auth/logout", token="garbage"))
        resp = self.req("POST", "/auth/logout", {"refresh_token": "agr_" + h.random_string(43)})
        self.assertError(resp, 401)


class ExpiredAccessTokenTests(ControlTestCase):
    env_extra = {"ACCESS_TTL_SEC": "1"}

    def test_access_token_expires(self):
        user = self.new_user()
        self.assertEqual(user.tokens["expires_in"], 1)
        time.sleep(2.1)
        self.assertUnauthorized(self.req("GET", "/auth/session", token=user.token))
        self.assertUnauthorized(self.req("GET", "/projects", token=user.token))
        # The refresh token outlives the access token.
        resp = self.req("POST", "/auth/refresh", {"refresh_token": user.refresh_token})
        self.assertStatus(resp, 200)
        self.assertEqual(resp.json()["expires_in"], 1)


class AlternativeConfigTests(ControlTestCase):
    env_extra = {"JWT_ALGORITHM": "HS384", "ACCESS_TTL_SEC": "120",
                 "CONTROL_WORKER_SHARED_SECRET": h.random_string(48)}

    def test_configured_algorithm_and_ttl(self):
        user = self.shared_user()
        header, claims = h.jwt_decode_unverified(user.token)
        self.assertEqual(header["alg"], "HS384")
        self.assertEqual(user.tokens["expires_in"], 120)
        self.assertEqual(claims["exp"] - claims["iat"], 120)
        resigned = h.jwt_encode(claims, self.server.jwt_secret, alg="HS384")
        self.assertStatus(self.req("GET", "/auth/session", token=resigned), 200)
        downgraded = h.jwt_encode(claims, self.server.jwt_secret, alg="HS256")
        self.assertUnauthorized(self.req("GET", "/auth/session", token=downgraded))

    def test_both_worker_secrets_are_accepted(self):
        shared = self.env_extra["CONTROL_WORKER_SHARED_SECRET"]
        for secret in (self.server.worker_secret, shared):
            for header in ("x-worker-secret", "x-control-secret"):
                with self.subTest(secret=secret[:4], header=header):
                    self.assertStatus(self.server.worker_config(secret, header), 200)
        resp = self.server.worker_config(shared[:-1])
        self.assertError(resp, 401, "Invalid worker secret")


class FreshServerTests(ControlTestCase):
    """A server whose database has never seen a user."""

    def test_first_user(self):
        resp = self.req("GET", "/auth/session")
        self.assertStatus(resp, 200)
        self.assertIs(resp.json()["systemHasUsers"], False)
        config = self.config()
        self.assertEqual(config["projects"], [])
        self.assertIsInstance(config["version"], int)
        self.assertUnauthorized(self.req("GET", "/audit"))
        self.new_user()
        resp = self.req("GET", "/auth/session")
        self.assertIs(resp.json()["systemHasUsers"], True)
        self.assertIs(resp.json()["authenticated"], False)


class OperatorTests(ControlTestCase):
    """The worker registry (GET /gateways, /gateways/propagation) is for operators: the first user
    of a new installation (docs/configuration.md, "Operators")."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.operator = h.register_user(cls.server)  # the first user of this server

    def test_only_the_first_user_sees_the_worker_registry(self):
        first = self.operator
        second = self.new_user()
        for path in ("/gateways", "/gateways/propagation", "/api/v1/gateways"):
            resp = self.req("GET", path, token=first.token)
            self.assertStatus(resp, 200)
            self.assertIn("config_version", resp.json())
            refused = self.req("GET", path, token=second.token)
            self.assertError(refused, 403)
            self.assertNotIn(b"config_version", refused.body)
            self.assertTrue(refused.headers.get("X-Request-Id"), repr(refused))
            self.assertUnauthorized(self.req("GET", path))
        # The second user is an ordinary user everywhere else.
        self.assertStatus(self.req("GET", "/projects", token=second.token), 200)
        # Refused before the query is looked at: a non-operator learns nothing from a 422.
        self.assertError(self.req("GET", "/gateways/propagation?version=x", token=second.token), 403,
                         "Operators only")
        self.assertError(self.req("GET", "/gateways/propagation?version=x", token=first.token), 422,
                         mentions="version")

    def test_an_operator_granted_in_the_database_is_one_at_the_next_request(self):
        """The grant docs/configuration.md describes, with the session the user already has."""
        later = self.new_user()
        self.assertError(self.req("GET", "/gateways", token=later.token), 403, "Operators only")
        self.server.execute("UPDATE users SET is_operator = 1 WHERE email = '%s'" % later.email)
        self.assertStatus(self.req("GET", "/gateways", token=later.token), 200)
        self.server.execute("UPDATE users SET is_operator = 0 WHERE email = '%s'" % later.email)
        self.assertError(self.req("GET", "/gateways", token=later.token), 403, "Operators only")


class TokenCreatorTests(ControlTestCase):
    """A service token's created_by is who issued it; the body's createdBy is only a label
    (docs/services-and-tokens.md). Here so that it runs on PostgreSQL as well."""

    def test_created_by_is_the_signed_in_issuer(self):
        user = self.shared_user()
        slug = "p-" + h.random_string(8, string.ascii_lowercase + string.digits)
        project = self.new_project(user.token, slug=slug)
        resp = self.req("PUT", "/projects/%s/services/api" % project["id"],
                        {"targets": ["http://127.0.0.1:9000"]}, token=user.token)
        self.assertIn(resp.status, (200, 201), repr(resp))
        tokens = "/projects/%s/tokens" % project["id"]
        claimed = self.req("POST", tokens, {"service": "api", "createdBy": "someone.else@example.com"},
                           token=user.token)
        self.assertStatus(claimed, 201)
        plain = self.req("POST", tokens, {"service": "api"}, token=user.token)
        self.assertStatus(plain, 201)
        resp = self.req("GET", tokens, token=user.token)
        self.assertStatus(resp, 200)
        records = {r["jti"]: r for r in resp.json()["tokens"]}
        for issued, label in ((claimed, "someone.else@example.com"), (plain, None)):
            record = records[issued.json()["jti"]]
            self.assertEqual((record["created_by"], record["created_by_label"]), (user.email, label))


class FirstRegistrationRaceTests(ControlTestCase):
    """Registrations racing on an empty database: exactly one of them becomes the operator."""

    def test_simultaneous_first_registrations_make_one_operator(self):
        count = 6
        barrier = threading.Barrier(count)
        users, errors = [None] * count, []

        def register(i):
            try:
                barrier.wait(10)
                users[i] = h.register_user(self.server)
            except Exception as e:  # reported below with the others
                errors.append(repr(e))

        threads = [threading.Thread(target=register, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        statuses = sorted(self.req("GET", "/gateways", token=u.token).status for u in users)
        self.assertEqual(statuses, [200] + [403] * (count - 1))


# =============================================================================================
# Projects


class ProjectTests(ControlTestCase):

    def test_create_with_defaults(self):
        token = self.shared_user().token
        name = "shop-" + h.random_string(6)
        resp = self.req("POST", "/projects", {"name": name, "upstream_base_url": DEFAULT_UPSTREAM},
                        token=token)
        self.assertStatus(resp, 201)
        project = resp.json()
        self.assertUuid(project["id"])
        self.assertEqual(project["name"], name)
        self.assertEqual(project["upstream_base_url"], DEFAULT_UPSTREAM)
        self.assertEqual(project["rate_limit"], {"requests_per_minute": 60, "burst": 20})
        self.assertEqual(project["key_policy"], "single")
        self.assertEqual(project["max_body_bytes"], 10485760)
        self.assertTimestamp(project["created_at"])
        self.assertTimestamp(project["updated_at"])
        self.assertAlmostEqual(h.parse_time(project["created_at"]), time.time(), delta=60)
        got = self.req("GET", "/projects/" + project["id"], token=token)
        self.assertStatus(got, 200)
        self.assertEqual(got.json(), project)

    def test_create_with_every_field(self):
        token = self.shared_user().token
        body = {"name": "full-" + h.random_string(6), "upstream_base_url": "https://api.example.com:8443/v1",
                "rate_limit": {"requests_per_minute": 1000000, "burst": 0},
                "key_policy": "multiple", "max_body_bytes": 1099511627776}
        resp = self.req("POST", "/projects", body, token=token)
        self.assertStatus(resp, 201)
        project = resp.json()
        for field, value in body.items():
            self.assertEqual(project[field], value, field)
        body = {"name": "zero-" + h.random_string(6), "upstream_base_url": "http://localhost",
                "rate_limit": {"requests_per_minute": 1}, "max_body_bytes": 0}
        resp = self.req("POST", "/projects", body, token=token)
        self.assertStatus(resp, 201)
        project = resp.json()
        self.assertEqual(project["rate_limit"], {"requests_per_minute": 1, "burst": 20})
        self.assertEqual(project["max_body_bytes"], 0)
        self.assertEqual(project["upstream_base_url"], "http://localhost")

    def test_trailing_slash_is_removed(self):
        token = self.shared_user().token
        for given, stored in (("http://127.0.0.1:9000/api/", "http://127.0.0.1:9000/api"),
                              ("https://example.com/", "https://example.com")):
            with self.subTest(url=given):
                project = self.new_project(token, upstream=given)
                self.assertEqual(project["upstream_base_url"], stored)

    def test_invalid_upstream_urls_are_422(self):
        token = self.shared_user().token
        too_long = "http://a.example/" + "x" * (2049 - len("http://a.example/"))
        self.assertEqual(len(too_long), 2049)
        for url in ("ftp://example.com/files", "http://", "http:///path", "example.com",
                    "/relative/path", "", "http://example.com/api?x=1", "http://example.com/#frag",
                    "http://user:pw@example.com", "http://user@example.com", "http://example.com:0",
                    "http://example.com:70000", "http://example.com:abc", too_long, 5, None):
            with self.subTest(url=url):
                resp = self.req("POST", "/projects", {"name": "bad-" + h.random_string(6),
                                                      "upstream_base_url": url}, token=token)
                self.assertError(resp, 422, mentions="upstream_base_url")

    def test_upstream_url_of_2048_characters_is_accepted(self):
        token = self.shared_user().token
        url = "http://a.example/" + "x" * (2048 - len("http://a.example/"))
        project = self.new_project(token, upstream=url)
        self.assertEqual(project["upstream_base_url"], url)

    def test_name_is_trimmed_and_validated(self):
        token = self.shared_user().token
        base = "trim-" + h.random_string(6)
        project = self.new_project(token, name="   %s  " % base)
        self.assertEqual(project["name"], base)
        padded100 = "  " + "n" * 95 + h.random_string(5) + "  "
        self.assertEqual(self.new_project(token, name=padded100)["name"], padded100.strip())
        for name in ("", "    ", "n" * 101, 5, None, ["x"]):
            with self.subTest(name=name):
                resp = self.req("POST", "/projects", {"name": name,
                                                      "upstream_base_url": DEFAULT_UPSTREAM}, token=token)
                self.assertError(resp, 422, mentions="name")

    def test_name_length_counts_characters_not_bytes(self):
        token = self.shared_user().token
        name = "\u0439" * 95 + h.random_string(5)  # 100 characters, 195 bytes of UTF-8
        self.assertEqual(self.new_project(token, name=name)["name"], name)
        raw = json.dumps({"name": "\u043c\u0430\u0433\u0430\u0437\u0438\u043d " + h.random_string(5),
                          "upstream_base_url": DEFAULT_UPSTREAM}, ensure_ascii=False).encode("utf-8")
        resp = self.req("POST", "/projects", raw_body=raw, content_type="application/json", token=token)
        self.assertStatus(resp, 201)
        self.assertTrue(resp.json()["name"].startswith("\u043c\u0430\u0433\u0430\u0437\u0438\u043d "))
        resp = self.req("POST", "/projects", {"name": "\u0439" * 101, "upstream_base_url": DEFAULT_UPSTREAM},
                        token=token)
        self.assertError(resp, 422, mentions="name")

    def test_awkward_strings_are_stored_exactly_or_rejected(self):
        token = self.shared_user().token
        for name in ("nul\u0000inside-" + h.random_string(4), "emoji \U0001F6D2 " + h.random_string(4),
                     "quote ' and \" and \\ " + h.random_string(4)):
            with self.subTest(name=name):
                resp = self.req("POST", "/projects", {"name": name, "upstream_base_url": DEFAULT_UPSTREAM},
                                token=token)
                self.assertIn(resp.status, (201, 422), repr(resp))
                if resp.status == 201:
                    got = self.req("GET", "/projects/" + resp.json()["id"], token=token).json()
                    self.assertEqual(got["name"], name)
                else:
                    self.assertError(resp, 422, mentions="name")
        raw = b'{"name": "lone \\ud800 surrogate", "upstream_base_url": "http://127.0.0.1:9000"}'
        resp = self.req("POST", "/projects", raw_body=raw, content_type="application/json", token=token)
        self.assertIn(resp.status, (400, 422), repr(resp))
        self.assertTrue(self.server.alive())

    def test_missing_fields_are_422(self):
        token = self.shared_user().token
        resp = self.req("POST", "/projects", {"upstream_base_url": DEFAULT_UPSTREAM}, token=token)
        self.assertError(resp, 422, mentions="name")
        resp = self.req("POST", "/projects", {"name": "x-" + h.random_string(6)}, token=token)
        self.assertError(resp, 422, mentions="upstream_base_url")

    def test_invalid_settings_are_422(self):
        token = self.shared_user().token
        cases = [
            ({"rate_limit": {"requests_per_minute": 0}}, "requests_per_minute"),
            ({"rate_limit": {"requests_per_minute": 1000001}}, "requests_per_minute"),
            ({"rate_limit": {"requests_per_minute": "60"}}, "requests_per_minute"),
            ({"rate_limit": {"requests_per_minute": 1.5}}, "requests_per_minute"),
            ({"rate_limit": {"requests_per_minute": True}}, "requests_per_minute"),
            ({"rate_limit": {"burst": -1}}, "burst"),
            ({"rate_limit": {"burst": 1000001}}, "burst"),
            ({"rate_limit": 60}, "rate_limit"),
            ({"key_policy": "several"}, "key_policy"),
            ({"key_policy": 1}, "key_policy"),
            ({"max_body_bytes": -1}, "max_body_bytes"),
            ({"max_body_bytes": 1099511627777}, "max_body_bytes"),
            ({"max_body_bytes": "10"}, "max_body_bytes"),
            ({"max_body_bytes": 10 ** 30}, "max_body_bytes"),
            ({"rate_limit": {"burst": 2 ** 64}}, "burst"),
            ({"rate_limit": {"requests_per_minute": -(2 ** 63) - 1}}, "requests_per_minute"),
        ]
        for extra, field in cases:
            with self.subTest(extra=extra):
                body = {"name": "bad-" + h.random_string(6), "upstream_base_url": DEFAULT_UPSTREAM}
                body.update(extra)
                self.assertError(self.req("POST", "/projects", body, token=token), 422, mentions=field)
        resp = self.req("POST", "/projects", {"name": "policy", "upstream_base_url": DEFAULT_UPSTREAM,
                                              "key_policy": "several"}, token=token)
        detail = self.assertError(resp, 422)["detail"]
        self.assertIn("single", detail, "the message should name the allowed values")
        self.assertIn("multiple", detail, "the message should name the allowed values")

    def test_failed_create_writes_nothing(self):
        user = self.new_user()
        self.new_project(user.token)
        before = self.server.table_counts()
        resp = self.req("POST", "/projects", {"name": "bad", "upstream_base_url": "ftp://x"},
                        token=user.token)
        self.assertError(resp, 422)
        self.assertEqual(len(self.req("GET", "/projects", token=user.token).json()), 1)
        self.assertEqual(self.server.table_counts(), before)

    def test_duplicate_name(self):
        user = self.new_user()
        other = self.new_user()
        self.new_project(user.token, name="shop")
        before = self.server.table_counts()
        for name in ("shop", "  shop "):
            with self.subTest(name=name):
                resp = self.req("POST", "/projects", {"name": name, "upstream_base_url": DEFAULT_UPSTREAM},
                                token=user.token)
                self.assertError(resp, 409, "Project name already exists")
        self.assertEqual(self.server.table_counts(), before)
        # Names are unique per owner only.
        self.assertEqual(self.new_project(other.token, name="shop")["name"], "shop")

    def test_list_is_own_and_newest_first(self):
        user = self.new_user()
        other = self.new_user()
        self.assertEqual(self.req("GET", "/projects", token=user.token).json(), [])
        ids = [self.new_project(user.token)["id"] for _ in range(3)]
        other_project = self.new_project(other.token)
        resp = self.req("GET", "/projects", token=user.token)
        self.assertStatus(resp, 200)
        listed = resp.json()
        self.assertEqual([p["id"] for p in listed], list(reversed(ids)))
        self.assertEqual(listed[0], self.req("GET", "/projects/" + ids[2], token=user.token).json())
        self.assertEqual([p["id"] for p in self.req("GET", "/projects", token=other.token).json()],
                         [other_project["id"]])

    def test_get_missing_or_foreign_is_404(self):
        user = self.new_user()
        other = self.new_user()
        foreign = self.new_project(other.token)
        for pid in (foreign["id"], str(uuid.uuid4()), "abc", foreign["id"] + "0", "0" * 36):
            with self.subTest(id=pid):
                resp = self.req("GET", "/projects/" + pid, token=user.token)
                self.assertError(resp, 404, "Project not found")

    def test_patch_partial(self):
        user = self.shared_user()
        project = self.new_project(user.token)
        path = "/projects/" + project["id"]
        resp = self.req("PATCH", path, {"rate_limit": {"burst": 5}}, token=user.token)
        self.assertStatus(resp, 200)
        patched = resp.json()
        self.assertEqual(patched["rate_limit"], {"requests_per_minute": 60, "burst": 5})
        for field in ("id", "name", "upstream_base_url", "key_policy", "max_body_bytes", "created_at"):
            self.assertEqual(patched[field], project[field], field)
        resp = self.req("PATCH", path, {"rate_limit": {"requests_per_minute": 120}}, token=user.token)
        self.assertEqual(resp.json()["rate_limit"], {"requests_per_minute": 120, "burst": 5})
        new_name = "renamed-" + h.random_string(6)
        resp = self.req("PATCH", path, {"name": "  %s " % new_name, "upstream_base_url": "https://new.example/v2/",
                                        "key_policy": "multiple", "max_body_bytes": 0}, token=user.token)
        self.assertStatus(resp, 200)
        patched = resp.json()
        self.assertEqual(patched["name"], new_name)
        self.assertEqual(patched["upstream_base_url"], "https://new.example/v2")
        self.assertEqual(patched["key_policy"], "multiple")
        self.assertEqual(patched["max_body_bytes"], 0)
        self.assertEqual(patched["rate_limit"], {"requests_per_minute": 120, "burst": 5})
        self.assertGreaterEqual(h.parse_time(patched["updated_at"]), h.parse_time(project["created_at"]))
        self.assertEqual(self.req("GET", path, token=user.token).json(), patched)
        # Renaming to its own name is not a conflict.
        self.assertStatus(self.req("PATCH", path, {"name": new_name}, token=user.token), 200)

    def test_patch_invalid_is_422_and_changes_nothing(self):
        user = self.shared_user()
        project = self.new_project(user.token)
        path = "/projects/" + project["id"]
        cases = [
            ({"foo": 1}, "foo"),
            ({"rate_limit": {"bogus": 1}}, "bogus"),
            ({"name": ""}, "name"),
            ({"name": "n" * 101}, "name"),
            ({"name": None}, "name"),
            ({"upstream_base_url": "ftp://example.com"}, "upstream_base_url"),
            ({"upstream_base_url": "http://example.com?q=1"}, "upstream_base_url"),
            ({"rate_limit": {"requests_per_minute": 0}}, "requests_per_minute"),
            ({"rate_limit": {"burst": -1}}, "burst"),
            ({"key_policy": "none"}, "key_policy"),
            ({"max_body_bytes": -5}, "max_body_bytes"),
            # a valid change together with an invalid one: all or nothing
            ({"name": "partial-" + h.random_string(6), "rate_limit": {"burst": -1}}, "burst"),
        ]
        for body, field in cases:
            with self.subTest(body=body):
                self.assertError(self.req("PATCH", path, body, token=user.token), 422, mentions=field)
        self.assertEqual(self.req("GET", path, token=user.token).json(), project)
        self.assertError(self.req("PATCH", path, raw_body=b"[1]", content_type="application/json",
                                  token=user.token), 400)
        self.assertError(self.req("PATCH", path, raw_body=b"{", content_type="application/json",
                                  token=user.token), 400)
        self.assertError(self.req("PATCH", path, raw_body=b"{}", content_type="text/plain",
                                  token=user.token), 415)

    def test_patch_rename_to_duplicate_is_409(self):
        user = self.new_user()
        first = self.new_project(user.token, name="alpha")
        second = self.new_project(user.token, name="beta")
        resp = self.req("PATCH", "/projects/" + second["id"], {"name": "alpha"}, token=user.token)
        self.assertError(resp, 409, "Project name already exists")
        self.assertEqual(self.req("GET", "/projects/" + second["id"], token=user.token).json()["name"], "beta")
        self.assertEqual(self.req("GET", "/projects/" + first["id"], token=user.token).json(), first)

    def test_patch_foreign_or_missing_is_404(self):
        user = self.new_user()
        other = self.new_user()
        foreign = self.new_project(other.token)
        for pid in (foreign["id"], str(uuid.uuid4()), "abc"):
            with self.subTest(id=pid):
                resp = self.req("PATCH", "/projects/" + pid, {"name": "stolen"}, token=user.token)
                self.assertError(resp, 404, "Project not found")
        self.assertEqual(self.req("GET", "/projects/" + foreign["id"], token=other.token).json(), foreign)

    def test_delete(self):
        user = self.new_user()
        other = self.new_user()
        project = self.new_project(user.token)
        path = "/projects/" + project["id"]
        self.assertError(self.req("DELETE", path, token=other.token), 404, "Project not found")
        self.assertStatus(self.req("GET", path, token=user.token), 200)
        resp = self.req("DELETE", path, token=user.token)
        self.assertStatus(resp, 204)
        self.assertEqual(resp.body, b"")
        self.assertError(self.req("GET", path, token=user.token), 404, "Project not found")
        self.assertError(self.req("DELETE", path, token=user.token), 404, "Project not found")
        self.assertError(self.req("GET", path + "/keys", token=user.token), 404, "Project not found")
        self.assertEqual(self.req("GET", "/projects", token=user.token).json(), [])
        # The name is free again.
        self.new_project(user.token, name=project["name"])
        self.assertError(self.req("DELETE", "/projects/abc", token=user.token), 404, "Project not found")

    def test_unauthenticated_is_401(self):
        user = self.shared_user()
        pid = self.new_project(user.token)["id"]
        routes = [("GET", "/projects"), ("POST", "/projects"), ("GET", "/projects/" + pid),
                  ("PATCH", "/projects/" + pid), ("DELETE", "/projects/" + pid),
                  ("GET", "/projects/%s/keys" % pid), ("POST", "/projects/%s/keys" % pid),
                  ("DELETE", "/projects/%s/keys/%s" % (pid, uuid.uuid4())), ("GET", "/audit")]
        for method, path in routes:
            body = {} if method in ("POST", "PATCH") else None
            with self.subTest(method=method, path=path):
                self.assertUnauthorized(self.req(method, path, body))
                self.assertUnauthorized(self.req(method, path, body, token="not-a-jwt"))
        # nothing was deleted
        self.assertStatus(self.req("GET", "/projects/" + pid, token=user.token), 200)


# =============================================================================================
# API keys


class KeyTests(ControlTestCase):

    def test_create_key(self):
        user = self.shared_user()
        project = self.new_project(user.token)
        path = "/projects/%s/keys" % project["id"]
        resp = self.req("POST", path, {}, token=user.token)
        self.assertStatus(resp, 201)
        key = resp.json()
        api_key = key["api_key"]
        self.assertRegex(api_key, h.API_KEY_RE)
        self.assertEqual(len(api_key), 62)
        self.assertEqual(key["public_id"], api_key[4:12])
        self.assertTrue(api_key_checksum_ok(api_key), "bad CRC-32 checksum in %s" % api_key)
        self.assertUuid(key["id"])
        self.assertIsNone(key["label"])
        self.assertEqual(key["status"], "active")
        self.assertIsNone(key["expires_at"])
        self.assertTimestamp(key["created_at"])
        self.assertEqual(key["rotated"], [])
        self.assertTrue(key["display"].startswith("agk_%s_" % key["public_id"]), key["display"])
        self.assertNotIn(api_key[13:], key["display"])
        self.assertNotIn("hash", key)
        # label, and no body at all
        labelled = self.new_key(user.token, project["id"], label="ci deploy")
        self.assertEqual(labelled["label"], "ci deploy")
        resp = self.req("POST", path, token=user.token)
        self.assertStatus(resp, 201)
        keys = {api_key, labelled["api_key"], resp.json()["api_key"]}
        self.assertEqual(len(keys), 3, "keys must be unique")
        self.assertEqual(len({k[4:12] for k in keys}), 3, "public ids must be unique")

    def test_create_key_validation(self):
        user = self.shared_user()
        project = self.new_project(user.token)
        path = "/projects/%s/keys" % project["id"]
        cases = [({"label": "l" * 101}, "label"), ({"label": 5}, "label"),
                 ({"grace_period_seconds": -1}, "grace_period_seconds"),
                 ({"grace_period_seconds": 86401}, "grace_period_seconds"),
                 ({"grace_period_seconds": "10"}, "grace_period_seconds"),
                 ({"grace_period_seconds": 1.5}, "grace_period_seconds")]
        for body, field in cases:
            with self.subTest(body=body):
                self.assertError(self.req("POST", path, body, token=user.token), 422, mentions=field)
        self.assertError(self.req("POST", path, raw_body=b"[]", content_type="application/json",
                                  token=user.token), 400)
        self.assertEqual(self.req("GET", path, token=user.token).json(), [])
        key = self.new_key(user.token, project["id"], label="l" * 100, grace_period_seconds=86400)
        self.assertEqual(key["label"], "l" * 100)

    def test_per_key_rate_limit_override(self):
        user = self.shared_user()
        project = self.new_project(user.token, key_policy="multiple")
        path = "/projects/%s/keys" % project["id"]
        plain = self.new_key(user.token, project["id"])
        self.assertIsNone(plain["rate_limit"])
        special = self.new_key(user.token, project["id"],
                               rate_limit={"requests_per_minute": 600, "burst": 5})
        self.assertEqual(special["rate_limit"], {"requests_per_minute": 600, "burst": 5})
        listed = {k["id"]: k for k in self.req("GET", path, token=user.token).json()}
        self.assertEqual(listed[special["id"]]["rate_limit"], {"requests_per_minute": 600, "burst": 5})
        self.assertIsNone(listed[plain["id"]]["rate_limit"])
        cfg = self.server.worker_config().json()
        wp = [p for p in cfg["projects"] if p["id"] == project["id"]][0]
        by_id = {k["id"]: k for k in wp["keys"]}
        self.assertEqual(by_id[special["id"]]["rate_limit"], {"requests_per_minute": 600, "burst": 5})
        self.assertNotIn("rate_limit", by_id[plain["id"]])
        for body, field in [({"rate_limit": {"requests_per_minute": 0, "burst": 1}}, "requests_per_minute"),
                            ({"rate_limit": {"requests_per_minute": 10}}, "burst"),
                            ({"rate_limit": {"requests_per_minute": 10, "burst": 1, "x": 1}}, "rate_limit.x"),
                            ({"rate_limit": 5}, "rate_limit")]:
            with self.subTest(body=body):
                self.assertError(self.req("POST", path, body, token=user.token), 422, mentions=field)

    def test_list_never_shows_the_secret(self):
        user = self.shared_user()
        project = self.new_project(user.token)
        first = self.new_key(user.token, project["id"], label="first")
        second = self.new_key(user.token, project["id"], label="second")
        resp = self.req("GET", "/projects/%s/keys" % project["id"], token=user.token)
        self.assertStatus(resp, 200)
        listed = resp.json()
        self.assertEqual([k["id"] for k in listed], [second["id"], first["id"]])
        for item in listed:
            self.assertLessEqual({"id", "public_id", "label", "display", "status", "created_at",
                                  "expires_at", "revoked_at"}, set(item))
            for forbidden in ("api_key", "key", "hash", "key_hash", "secret"):
                self.assertNotIn(forbidden, item)
        for key in (first, second):
            self.assertNotIn(key["api_key"][13:].encode(), resp.body)
            self.assertNotIn(h.sha256_hex(key["api_key"]).encode(), resp.body)
        self.assertEqual(listed[0]["public_id"], second["public_id"])
        self.assertEqual(listed[0]["display"], second["display"])
        self.assertEqual(listed[0]["status"], "active")
        self.assertIsNone(listed[0]["revoked_at"])

    def test_single_policy_rotation_without_grace(self):
        user = self.shared_user()
        project = self.new_project(user.token)
        first = self.new_key(user.token, project["id"])
        second = self.new_key(user.token, project["id"])
        self.assertEqual([r["id"] for r in second["rotated"]], [first["id"]])
        listed = {k["id"]: k for k in self.req("GET", "/projects/%s/keys" % project["id"],
                                               token=user.token).json()}
        self.assertEqual(listed[first["id"]]["status"], "revoked")
        self.assertEqual(listed[second["id"]]["status"], "active")
        entry = h.find_project(self.config(), project["id"])
        self.assertEqual(entry["api_keys"], [h.sha256_hex(second["api_key"])])
        self.assertEqual([k["id"] for k in entry["keys"]], [second["id"]])

    def test_single_policy_rotation_with_grace(self):
        user = self.new_user()
        project = self.new_project(user.token)
        old = self.new_key(user.token, project["id"])
        new = self.new_key(user.token, project["id"], grace_period_seconds=2)
        now = time.time()
        self.assertEqual(len(new["rotated"]), 1)
        self.assertEqual(new["rotated"][0]["id"], old["id"])
        expires_at = new["rotated"][0]["expires_at"]
        self.assertTimestamp(expires_at)
        self.assertAlmostEqual(h.parse_time(expires_at), now + 2, delta=2)
        listed = {k["id"]: k for k in self.req("GET", "/projects/%s/keys" % project["id"],
                                               token=user.token).json()}
        self.assertEqual(listed[old["id"]]["status"], "expiring")
        self.assertEqual(listed[old["id"]]["expires_at"], expires_at)
        self.assertEqual(listed[new["id"]]["status"], "active")
        entry = h.find_project(self.config(), project["id"])
        self.assertEqual(sorted(entry["api_keys"]),
                         sorted([h.sha256_hex(old["api_key"]), h.sha256_hex(new["api_key"])]))
        by_id = {k["id"]: k for k in entry["keys"]}
        self.assertEqual(by_id[old["id"]]["expires_at"], expires_at)
        self.assertEqual(by_id[old["id"]]["hash"], h.sha256_hex(old["api_key"]))
        self.assertIsNone(by_id[new["id"]]["expires_at"])
        # After the grace period the old key is expired and gone from the config.
        time.sleep(max(0.0, h.parse_time(expires_at) + 1.2 - time.time()))
        listed = {k["id"]: k for k in self.req("GET", "/projects/%s/keys" % project["id"],
                                               token=user.token).json()}
        self.assertEqual(listed[old["id"]]["status"], "expired")
        self.assertEqual(listed[new["id"]]["status"], "active")
        entry = h.find_project(self.config(), project["id"])
        self.assertEqual(entry["api_keys"], [h.sha256_hex(new["api_key"])])
        self.assertEqual([k["id"] for k in entry["keys"]], [new["id"]])
        actions = [e["action"] for e in self.req("GET", "/audit", token=user.token).json()]
        self.assertIn("key.rotate", actions)

    def test_multiple_policy_keeps_every_key(self):
        user = self.shared_user()
        project = self.new_project(user.token, key_policy="multiple")
        first = self.new_key(user.token, project["id"])
        second = self.new_key(user.token, project["id"], grace_period_seconds=5)
        self.assertEqual(second["rotated"], [])
        statuses = [k["status"] for k in self.req("GET", "/projects/%s/keys" % project["id"],
                                                  token=user.token).json()]
        self.assertEqual(statuses, ["active", "active"])
        entry = h.find_project(self.config(), project["id"])
        self.assertEqual(sorted(entry["api_keys"]),
                         sorted(h.sha256_hex(k["api_key"]) for k in (first, second)))
        self.assertTrue(all(k["expires_at"] is None for k in entry["keys"]))

    def test_revoke(self):
        user = self.shared_user()
        project = self.new_project(user.token, key_policy="multiple")
        keep = self.new_key(user.token, project["id"])
        gone = self.new_key(user.token, project["id"])
        path = "/projects/%s/keys/%s" % (project["id"], gone["id"])
        resp = self.req("DELETE", path, token=user.token)
        self.assertStatus(resp, 204)
        self.assertEqual(resp.body, b"")
        self.assertStatus(self.req("DELETE", path, token=user.token), 204)
        listed = {k["id"]: k for k in self.req("GET", "/projects/%s/keys" % project["id"],
                                               token=user.token).json()}
        self.assertEqual(listed[gone["id"]]["status"], "revoked")
        self.assertTimestamp(listed[gone["id"]]["revoked_at"])
        self.assertEqual(listed[keep["id"]]["status"], "active")
        entry = h.find_project(self.config(), project["id"])
        self.assertEqual(entry["api_keys"], [h.sha256_hex(keep["api_key"])])
        self.assertEqual([k["id"] for k in entry["keys"]], [keep["id"]])

    def test_revoke_unknown_is_404(self):
        user = self.shared_user()
        project = self.new_project(user.token)
        other_project = self.new_project(user.token)
        other_key = self.new_key(user.token, other_project["id"])
        for kid in (str(uuid.uuid4()), "abc", other_key["id"]):
            with self.subTest(key_id=kid):
                resp = self.req("DELETE", "/projects/%s/keys/%s" % (project["id"], kid), token=user.token)
                self.assertError(resp, 404, "API key not found")
        self.assertEqual(h.find_project(self.config(), other_project["id"])["api_keys"],
                         [h.sha256_hex(other_key["api_key"])])

    def test_foreign_project_keys_are_404(self):
        owner = self.shared_user()
        intruder = self.new_user()
        project = self.new_project(owner.token)
        key = self.new_key(owner.token, project["id"])
        base = "/projects/%s/keys" % project["id"]
        self.assertError(self.req("POST", base, {}, token=intruder.token), 404, "Project not found")
        self.assertError(self.req("GET", base, token=intruder.token), 404, "Project not found")
        self.assertError(self.req("DELETE", base + "/" + key["id"], token=intruder.token), 404)
        self.assertError(self.req("GET", "/projects/%s/keys" % uuid.uuid4(), token=owner.token),
                         404, "Project not found")
        listed = self.req("GET", base, token=owner.token).json()
        self.assertEqual([(k["id"], k["status"]) for k in listed], [(key["id"], "active")])

    def test_concurrent_creates_keep_one_active_key(self):
        user = self.shared_user()
        project = self.new_project(user.token)
        results = []

        def create():
            results.append(self.req("POST", "/projects/%s/keys" % project["id"], {}, token=user.token))

        threads = [threading.Thread(target=create) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual([r.status for r in results], [201] * 8, [repr(r) for r in results if r.status != 201])
        listed = self.req("GET", "/projects/%s/keys" % project["id"], token=user.token).json()
        active = [k for k in listed if k["status"] == "active"]
        self.assertEqual(len(listed), 8)
        self.assertEqual(len(active), 1, "single policy left %d active keys" % len(active))
        self.assertEqual(len(h.find_project(self.config(), project["id"])["api_keys"]), 1)


# =============================================================================================
# Worker config


class WorkerConfigTests(ControlTestCase):

    def test_secret_is_required(self):
        resp = self.req("GET", "/internal/worker/config")
        self.assertError(resp, 401, "Invalid worker secret")
        self.assertEqual(resp.json(), {"detail": "Invalid worker secret", "request_id": resp.headers["X-Request-Id"]})
        for secret in ("wrong", self.server.worker_secret[:-1], self.server.worker_secret + "x",
                       self.server.jwt_secret):
            with self.subTest(secret=secret[:6]):
                self.assertError(self.server.worker_config(secret), 401, "Invalid worker secret")
        user = self.shared_user()
        self.assertError(self.req("GET", "/internal/worker/config", token=user.token), 401,
                         "Invalid worker secret")

    def test_both_headers_are_accepted(self):
        for header in ("x-worker-secret", "x-control-secret", "X-Worker-Secret"):
            with self.subTest(header=header):
                resp = self.server.worker_config(header=header)
                self.assertStatus(resp, 200)
                self.assertIn("application/json", resp.headers.get("Content-Type", ""))

    def test_document_shape(self):
        user = self.shared_user()
        project = self.new_project(user.token, upstream="http://127.0.0.1:9000/api/",
                                   rate_limit={"requests_per_minute": 90, "burst": 7},
                                   max_body_bytes=2048)
        empty = self.new_project(user.token)
        key = self.new_key(user.token, project["id"])
        config = self.config()
        self.assertEqual(config["schema"], 1)
        self.assertIsInstance(config["version"], int)
        self.assertTimestamp(config["generated_at"])
        entry = h.find_project(config, project["id"])
        self.assertIsNotNone(entry, "project missing from the worker config")
        self.assertEqual(entry["name"], project["name"])
        self.assertEqual(entry["upstream_url"], "http://127.0.0.1:9000/api")
        self.assertEqual(entry["upstream_base_url"], "http://127.0.0.1:9000/api")
        self.assertEqual(entry["domains"], [])
        digest = h.sha256_hex(key["api_key"])
        self.assertRegex(digest, h.SHA256_HEX_RE)
        self.assertEqual(entry["api_keys"], [digest])
        self.assertEqual(len(entry["keys"]), 1)
        self.assertEqual({f: entry["keys"][0].get(f) for f in ("id", "public_id", "hash", "expires_at")},
                         {"id": key["id"], "public_id": key["public_id"], "hash": digest,
                          "expires_at": None})
        self.assertEqual(entry["rate_limit"], {"requests_per_minute": 90, "burst": 7})
        self.assertEqual(entry["key_policy"], "single")
        self.assertEqual(entry["max_body_bytes"], 2048)
        empty_entry = h.find_project(config, empty["id"])
        self.assertEqual(empty_entry["api_keys"], [])
        self.assertEqual(empty_entry["keys"], [])
        self.assertEqual(empty_entry["domains"], [])
        # The key appears under its own project only, and the raw key never appears.
        for other in config["projects"]:
            if other["id"] != project["id"]:
                self.assertNotIn(digest, other["api_keys"])
        self.assertNotIn(key["api_key"].encode(), self.server.worker_config().body)

    def test_all_users_projects_are_included(self):
        a, b = self.shared_user(), self.new_user()
        pa, pb = self.new_project(a.token), self.new_project(b.token)
        config = self.config()
        self.assertIsNotNone(h.find_project(config, pa["id"]))
        self.assertIsNotNone(h.find_project(config, pb["id"]))

    def test_version_etag_and_changes(self):
        user = self.shared_user()

        def version():
            resp = self.server.worker_config()
            self.assertStatus(resp, 200)
            v = resp.json()["version"]
            self.assertEqual(resp.headers.get("ETag"), '"%d"' % v)
            return v

        def assert_unchanged(v):
            resp = self.server.worker_config(extra_headers={"If-None-Match": '"%d"' % v})
            self.assertStatus(resp, 304)
            self.assertEqual(resp.body, b"")

        versions = [version()]
        assert_unchanged(versions[-1])
        project = self.new_project(user.token)
        versions.append(version())
        # A stale ETag gets the full document.
        resp = self.server.worker_config(extra_headers={"If-None-Match": '"%d"' % versions[0]})
        self.assertStatus(resp, 200)
        self.assertIsNotNone(h.find_project(resp.json(), project["id"]))
        path = "/projects/" + project["id"]
        self.assertStatus(self.req("PATCH", path, {"rate_limit": {"burst": 1}}, token=user.token), 200)
        versions.append(version())
        key = self.new_key(user.token, project["id"])
        versions.append(version())
        self.new_key(user.token, project["id"])  # rotates `key` out
        versions.append(version())
        self.assertStatus(self.req("DELETE", "%s/keys/%s" % (path, key["id"]), token=user.token), 204)
        self.assertStatus(self.req("DELETE", path, token=user.token), 204)
        versions.append(version())
        for earlier, later in zip(versions, versions[1:]):
            self.assertLess(earlier, later, "version must increase on every change: %r" % versions)
        # Failed and read-only requests change nothing.
        self.assertError(self.req("POST", "/projects", {"name": "x", "upstream_base_url": "ftp://x"},
                                  token=user.token), 422)
        self.assertStatus(self.req("GET", "/projects", token=user.token), 200)
        assert_unchanged(versions[-1])
        self.assertIsNone(h.find_project(self.config(), project["id"]))

    def test_deleted_project_disappears(self):
        user = self.shared_user()
        project = self.new_project(user.token)
        key = self.new_key(user.token, project["id"])
        self.assertIsNotNone(h.find_project(self.config(), project["id"]))
        self.assertStatus(self.req("DELETE", "/projects/" + project["id"], token=user.token), 204)
        resp = self.server.worker_config()
        self.assertIsNone(h.find_project(resp.json(), project["id"]))
        self.assertNotIn(h.sha256_hex(key["api_key"]).encode(), resp.body)


# =============================================================================================
# Protocol: request ids, routing, limits


class ProtocolTests(ControlTestCase):

    def test_request_id_on_every_response(self):
        user = self.shared_user()
        pid = self.new_project(user.token)["id"]
        responses = [
            self.req("GET", "/health"),
            self.req("POST", "/projects", {"name": "rid-" + h.random_string(6),
                                           "upstream_base_url": DEFAULT_UPSTREAM}, token=user.token),
            self.req("DELETE", "/projects/" + self.new_project(user.token)["id"], token=user.token),
            self.req("POST", "/projects", raw_body=b"{", content_type="application/json", token=user.token),
            self.req("GET", "/projects"),
            self.req("GET", "/no/such/route"),
            self.req("GET", "/projects/" + str(uuid.uuid4()), token=user.token),
            self.req("PUT", "/projects/" + pid, {}, token=user.token),
            self.req("POST", "/projects", raw_body=b"x", content_type="text/plain", token=user.token),
            self.req("POST", "/projects", {"name": ""}, token=user.token),
            self.server.worker_config(secret="wrong"),
        ]
        v = self.config()["version"]
        responses.append(self.server.worker_config(extra_headers={"If-None-Match": '"%d"' % v}))
        self.assertEqual([r.status for r in responses],
                         [200, 201, 204, 400, 401, 404, 404, 405, 415, 422, 401, 304])
        ids = []
        for resp in responses:
            rid = resp.headers.get("X-Request-Id")
            self.assertTrue(rid, "no X-Request-Id on %r" % (resp,))
            self.assertRegex(rid, WELL_FORMED_REQUEST_ID)
            ids.append(rid)
        self.assertEqual(len(set(ids)), len(ids), "generated request ids must differ")

    def test_valid_request_id_is_echoed(self):
        for rid in ("abc-123", "A.b_C-9", "x" * 128, "0"):
            for method, path in (("GET", "/health"), ("GET", "/nope"), ("GET", "/projects")):
                with self.subTest(rid=rid[:20], path=path):
                    resp = self.req(method, path, headers={"X-Request-Id": rid})
                    self.assertEqual(resp.headers.get("X-Request-Id"), rid, repr(resp))

    def test_invalid_request_id_is_replaced(self):
        for rid in ("x" * 129, "y" * 200, "has space", "semi;colon", "slash/es", "ünïcode", ""):
            with self.subTest(rid=rid[:20]):
                resp = self.req("GET", "/health", headers={"X-Request-Id": rid})
                self.assertStatus(resp, 200)
                got = resp.headers.get("X-Request-Id")
                self.assertTrue(got)
                self.assertNotEqual(got, rid)
                self.assertRegex(got, WELL_FORMED_REQUEST_ID)

    def test_unknown_route_is_404_json(self):
        for method, path in (("GET", "/nope"), ("POST", "/auth/nope"), ("GET", "/api/v2/projects"),
                             ("GET", "/projects/%s/nope" % uuid.uuid4()), ("GET", "/api/v1")):
            with self.subTest(path=path):
                self.assertError(self.req(method, path, token=self.shared_user().token), 404)

    def test_wrong_method_is_405_with_allow(self):
        user = self.shared_user()
        pid = self.new_project(user.token)["id"]
        cases = [("PUT", "/projects", {"GET", "POST"}),
                 ("POST", "/projects/" + pid, {"GET", "PATCH", "DELETE"}),
                 ("GET", "/auth/register", {"POST"}), ("GET", "/auth/login", {"POST"}),
                 ("POST", "/auth/session", {"GET"}), ("DELETE", "/health", {"GET"}),
                 ("GET", "/projects/%s/keys/%s" % (pid, uuid.uuid4()), {"DELETE"}),
                 ("DELETE", "/projects/%s/keys" % pid, {"GET", "POST"}),
                 ("POST", "/internal/worker/config", {"GET"}),
                 ("PUT", "/api/v1/projects", {"GET", "POST"})]
        for method, path, allowed in cases:
            with self.subTest(method=method, path=path):
                body = {} if method in ("POST", "PUT") else None
                self.assertAllow(self.req(method, path, body, token=user.token), allowed)

    def test_api_v1_prefix(self):
        self.assertEqual(self.req("GET", "/api/v1/health").json()["status"], "ok")
        email = h.unique_email("v1")
        resp = self.req("POST", "/api/v1/auth/register", {"email": email, "password": "password-1"})
        self.assertStatus(resp, 201)
        token = resp.json()["access_token"]
        resp = self.req("POST", "/api/v1/auth/login", {"email": email, "password": "password-1"})
        self.assertStatus(resp, 200)
        resp = self.req("POST", "/api/v1/projects", {"name": "v1", "upstream_base_url": DEFAULT_UPSTREAM},
                        token=token)
        self.assertStatus(resp, 201)
        pid = resp.json()["id"]
        self.assertEqual([p["id"] for p in self.req("GET", "/projects", token=token).json()], [pid])
        self.assertEqual(self.req("GET", "/api/v1/projects/" + pid, token=token).json()["id"], pid)
        resp = self.req("POST", "/api/v1/projects/%s/keys" % pid, {}, token=token)
        self.assertStatus(resp, 201)
        self.assertIs(self.req("GET", "/api/v1/auth/session", token=token).json()["authenticated"], True)
        resp = self.req("GET", "/api/v1/internal/worker/config",
                        headers={"x-worker-secret": self.server.worker_secret})
        self.assertStatus(resp, 200)
        self.assertIsNotNone(h.find_project(resp.json(), pid))
        self.assertError(self.req("GET", "/api/v1/projects/" + pid), 401)

    def test_oversized_headers_are_431(self):
        resp = self.req("GET", "/health", headers={"X-Filler": "a" * (17 * 1024)})
        self.assertEqual(resp.status, 431, repr(resp))
        resp = self.req("GET", "/health", headers={"X-Filler-%d" % i: "b" * 1000 for i in range(20)})
        self.assertEqual(resp.status, 431, repr(resp))
        self.assertStatus(self.req("GET", "/health", headers={"X-Filler": "a" * 8 * 1024}), 200)

    def test_deeply_nested_json_does_not_crash(self):
        depth = 100000
        for raw in (b"[" * depth + b"]" * depth,
                    b'{"email": ' + b"[" * depth + b"]" * depth + b', "password": "password-1"}',
                    b"[" * depth):
            resp = self.req("POST", "/auth/register", raw_body=raw, content_type="application/json")
            self.assertIn(resp.status, (400, 422), repr(resp))
        self.assertTrue(self.server.alive(), "server died:\n" + self.server.logs[-2000:])
        self.assertStatus(self.req("GET", "/health"), 200)

    def test_project_routes_reject_oversized_and_wrong_type_bodies(self):
        token = self.shared_user().token
        raw = b'{"name": "' + b"n" * (1024 * 1024) + b'", "upstream_base_url": "http://x"}'
        self.assertError(self.req("POST", "/projects", raw_body=raw, content_type="application/json",
                                  token=token), 413)
        raw = json.dumps({"name": "ct", "upstream_base_url": DEFAULT_UPSTREAM}).encode()
        self.assertError(self.req("POST", "/projects", raw_body=raw, content_type="text/plain",
                                  token=token), 415)
        resp = self.req("POST", "/projects", raw_body=raw, content_type="application/json; charset=utf-8",
                        token=token)
        self.assertStatus(resp, 201)

    def test_chunked_body_cannot_bypass_the_size_limit(self):
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=30)
        try:
            chunks = iter([b'{"email": "'] + [b"a" * 65536] * 20 + [b'", "password": "password-1"}'])
            try:
                conn.request("POST", "/auth/register", body=chunks, encode_chunked=True,
                             headers={"Content-Type": "application/json",
                                      "Transfer-Encoding": "chunked"})
            except (BrokenPipeError, ConnectionResetError):
                pass
            resp = conn.getresponse()
            resp.read()
            self.assertIn(resp.status, (400, 411, 413), "chunked 1.3 MiB body got %d" % resp.status)
        finally:
            conn.close()
        self.assertStatus(self.req("GET", "/health"), 200)

    def test_keep_alive_connection_serves_several_requests(self):
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=30)
        try:
            for path in ("/health", "/nope", "/health", "/auth/session"):
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                self.assertIn(resp.status, (200, 404), path)
                json.loads(body)
        finally:
            conn.close()

    def test_server_survives_a_burst_of_connections(self):
        results = []

        def hit():
            results.append(self.req("GET", "/health").status)

        threads = [threading.Thread(target=hit) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, [200] * 40)


# =============================================================================================
# Meta: health, OpenAPI, docs, audit


EXPECTED_ROUTES = [
    ("/auth/register", "post"), ("/auth/login", "post"), ("/auth/session", "get"),
    ("/auth/refresh", "post"), ("/auth/logout", "post"), ("/projects", "get"), ("/projects", "post"),
    ("/projects/{}", "get"), ("/projects/{}", "patch"), ("/projects/{}", "delete"),
    ("/projects/{}/keys", "get"), ("/projects/{}/keys", "post"), ("/projects/{}/keys/{}", "delete"),
    ("/internal/worker/config", "get"), ("/health", "get"), ("/audit", "get"),
]


class MetaTests(ControlTestCase):

    def test_health(self):
        resp = self.req("GET", "/health")
        self.assertStatus(resp, 200)
        data = resp.json()
        self.assertEqual(data["status"], "ok")
        self.assertEqual(data["database"], {"sqlite": "sqlite", "postgres": "postgresql"}[h.AG_DB])
        self.assertIsInstance(data["version"], str)
        self.assertTrue(data["version"])

    def test_openapi_document(self):
        resp = self.req("GET", "/openapi.json")
        self.assertStatus(resp, 200)
        self.assertIn("application/json", resp.headers.get("Content-Type", ""))
        doc = resp.json()
        self.assertIsInstance(doc["openapi"], str)
        self.assertTrue(doc["openapi"].startswith("3."), doc["openapi"])
        self.assertIn("info", doc)
        present = set()
        for path, item in doc["paths"].items():
            norm = re.sub(r"\{[^}]+\}", "{}", path)
            if norm.startswith("/api/v1/"):
                norm = norm[len("/api/v1"):]
            for method in item:
                present.add((norm, method.lower()))
        missing = [r for r in EXPECTED_ROUTES if r not in present]
        self.assertEqual(missing, [], "routes missing from /openapi.json")
        self.assertEqual(self.req("GET", "/api/v1/openapi.json").json(), doc)

    def test_docs_page(self):
        resp = self.req("GET", "/docs")
        self.assertStatus(resp, 200)
        self.assertIn("text/html", resp.headers.get("Content-Type", ""))
        self.assertIn("<html", resp.text.lower())
        self.assertIn("openapi", resp.text.lower())

    def test_audit_trail(self):
        user = self.new_user()
        other = self.new_user()
        project = self.new_project(user.token)
        key_resp = self.req("POST", "/projects/%s/keys" % project["id"], {}, token=user.token,
                            headers={"X-Request-Id": "audit-key-create"})
        self.assertStatus(key_resp, 201)
        key = key_resp.json()
        revoke = self.req("DELETE", "/projects/%s/keys/%s" % (project["id"], key["id"]),
                          token=user.token, headers={"X-Request-Id": "audit-key-revoke"})
        self.assertStatus(revoke, 204)
        self.assertStatus(self.req("PATCH", "/projects/" + project["id"], {"max_body_bytes": 1},
                                   token=user.token), 200)
        doomed = self.new_project(user.token)
        self.assertStatus(self.req("DELETE", "/projects/" + doomed["id"], token=user.token), 204)
        resp = self.req("GET", "/audit", token=user.token)
        self.assertStatus(resp, 200)
        events = resp.json()
        actions = [e["action"] for e in events]
        self.assertEqual(actions[:6], ["project.delete", "project.create", "project.update",
                                       "key.revoke", "key.create", "project.create"], actions)
        self.assertEqual(actions[-1], "user.register")
        for event in events:
            self.assertEqual(set(event), {"id", "action", "target_type", "target_id", "detail",
                                          "request_id", "ip", "created_at"})
            self.assertTimestamp(event["created_at"])
            self.assertEqual(event["ip"], "127.0.0.1")
        by_action = {e["action"]: e for e in reversed(events)}  # newest per action wins
        self.assertEqual(by_action["key.create"]["target_id"], key["id"])
        self.assertEqual(by_action["key.create"]["request_id"], "audit-key-create")
        self.assertEqual(by_action["key.revoke"]["target_id"], key["id"])
        self.assertEqual(by_action["key.revoke"]["request_id"], "audit-key-revoke")
        self.assertEqual(events[5]["target_id"], project["id"])
        self.assertEqual(by_action["project.delete"]["target_id"], doomed["id"])
        self.assertEqual(by_action["user.register"]["target_id"], user.id)
        # limit
        one = self.req("GET", "/audit?limit=1", token=user.token)
        self.assertStatus(one, 200)
        self.assertEqual([e["id"] for e in one.json()], [events[0]["id"]])
        self.assertEqual(len(self.req("GET", "/audit?limit=3", token=user.token).json()), 3)
        self.assertStatus(self.req("GET", "/audit?limit=200", token=user.token), 200)
        # only the caller's events
        theirs = self.req("GET", "/audit", token=other.token).json()
        self.assertNotIn(key["id"], [e["target_id"] for e in theirs])
        self.assertNotIn(project["id"], [e["target_id"] for e in theirs])

    def test_audit_limit_validation(self):
        token = self.shared_user().token
        for limit in ("0", "201", "-1", "abc", "1.5", ""):
            with self.subTest(limit=limit):
                self.assertError(self.req("GET", "/audit?limit=" + limit, token=token), 422,
                                 mentions="limit")

    def test_audit_default_limit_is_50(self):
        user = self.new_user()
        for _ in range(26):
            project = self.new_project(user.token)
            self.assertStatus(self.req("DELETE", "/projects/" + project["id"], token=user.token), 204)
        self.assertEqual(len(self.req("GET", "/audit", token=user.token).json()), 50)
        self.assertEqual(len(self.req("GET", "/audit?limit=200", token=user.token).json()), 53)

    def test_auth_events_are_audited(self):
        user = self.new_user()
        session = h.login(self.server, user.email, user.password)
        self.assertStatus(self.req("POST", "/auth/logout", token=session["access_token"]), 204)
        actions = [e["action"] for e in self.req("GET", "/audit", token=user.token).json()]
        self.assertEqual(actions[:2], ["auth.logout", "auth.login"], actions)
        self.assertEqual(actions[-1], "user.register", actions)


class DatabaseOutageTests(ControlTestCase):
    """PostgreSQL only: the database disappears under a running server."""

    @classmethod
    def setUpClass(cls):
        if h.AG_DB != "postgres":
            raise unittest.SkipTest("needs PostgreSQL (a dropped database)")
        super().setUpClass()

    def test_health_reports_database_unavailable(self):
        self.assertStatus(self.req("GET", "/health"), 200)
        h.drop_pg_database(self.server.pg_admin_url, self.server.pg_dbname)
        resp = self.req("GET", "/health")
        self.assertError(resp, 503, "database unavailable")
        resp = self.req("POST", "/auth/login", {"email": h.unique_email(), "password": "password-1"})
        self.assertGreaterEqual(resp.status, 500, repr(resp))
        self.assertError(resp, resp.status)
        self.assertTrue(self.server.alive(), "server died:\n" + self.server.logs[-2000:])


# =============================================================================================
# Integrity: secrets at rest, atomicity, concurrency


class IntegrityTests(ControlTestCase):

    def test_no_secret_is_stored_or_logged(self):
        password = "pw-hygiene-" + h.random_string(20)
        user = h.register_user(self.server, password=password)
        tokens = [user.tokens, h.login(self.server, user.email, password)]
        resp = self.req("POST", "/auth/refresh", {"refresh_token": tokens[1]["refresh_token"]})
        self.assertStatus(resp, 200)
        tokens.append(resp.json())
        project = self.new_project(user.token)
        keys = [self.new_key(user.token, project["id"]),
                self.new_key(user.token, project["id"], grace_period_seconds=60)]
        secrets_ = {"password": password}
        for i, t in enumerate(tokens):
            secrets_["access token %d" % i] = t["access_token"]
            secrets_["refresh token %d" % i] = t["refresh_token"]
        for i, k in enumerate(keys):
            secrets_["api key %d" % i] = k["api_key"]
            secrets_["api key %d secret part" % i] = k["api_key"][13:]
        stored = self.server.database_bytes()
        self.assertGreater(len(stored), 0)
        logs = self.server.logs
        for label, value in secrets_.items():
            with self.subTest(secret=label):
                self.assertNotIn(value.encode(), stored, "%s is stored in the database" % label)
                self.assertNotIn(value.encode().hex().encode(), stored,
                                 "%s is stored (hex) in the database" % label)
                self.assertNotIn(value, logs, "%s appears in the logs" % label)
        # What is stored instead: the SHA-256 of each key.
        self.assertIn(h.sha256_hex(keys[0]["api_key"]).encode(), stored)

    def test_failed_requests_write_nothing(self):
        user = self.new_user()
        other = self.new_user()
        project = self.new_project(user.token, name="kept")
        self.new_project(user.token, name="second")
        key = self.new_key(user.token, project["id"])
        before_counts = self.server.table_counts()
        version = self.config()["version"]
        path = "/projects/" + project["id"]
        failures = [
            (self.req("POST", "/auth/register", {"email": user.email, "password": "password-1"}), 409),
            (self.req("POST", "/auth/register", {"email": "bad", "password": "password-1"}), 422),
            (self.req("POST", "/auth/login", {"email": user.email, "password": "wrong-password"}), 401),
            (self.req("POST", "/auth/refresh", {"refresh_token": "agr_" + h.random_string(43)}), 401),
            (self.req("POST", "/projects", {"name": "kept", "upstream_base_url": DEFAULT_UPSTREAM},
                      token=user.token), 409),
            (self.req("POST", "/projects", {"name": "new", "upstream_base_url": "http://x?y"},
                      token=user.token), 422),
            (self.req("PATCH", path, {"name": "second"}, token=user.token), 409),
            (self.req("PATCH", path, {"name": "renamed", "max_body_bytes": -1}, token=user.token), 422),
            (self.req("PATCH", path, {"name": "stolen"}, token=other.token), 404),
            (self.req("DELETE", path, token=other.token), 404),
            (self.req("POST", path + "/keys", {"grace_period_seconds": 99999}, token=user.token), 422),
            (self.req("POST", path + "/keys", {}, token=other.token), 404),
            (self.req("DELETE", "%s/keys/%s" % (path, key["id"]), token=other.token), 404),
            (self.req("DELETE", "%s/keys/%s" % (path, uuid.uuid4()), token=user.token), 404),
        ]
        for resp, status in failures:
            self.assertError(resp, status)
        self.assertEqual(self.server.table_counts(), before_counts)
        resp = self.server.worker_config(extra_headers={"If-None-Match": '"%d"' % version})
        self.assertStatus(resp, 304)
        self.assertEqual(self.req("GET", path, token=user.token).json()["name"], "kept")

    def test_concurrent_project_creation(self):
        user = self.new_user()
        results = [None] * 20

        def create(i):
            results[i] = self.req("POST", "/projects", {"name": "concurrent-%02d" % i,
                                                        "upstream_base_url": DEFAULT_UPSTREAM},
                                  token=user.token)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = [r for r in results if r.status != 201]
        self.assertEqual(bad, [], "concurrent creates failed")
        ids = {r.json()["id"] for r in results}
        self.assertEqual(len(ids), 20)
        listed = self.req("GET", "/projects", token=user.token).json()
        self.assertEqual({p["id"] for p in listed}, ids)
        config = self.config()
        self.assertTrue(all(h.find_project(config, pid) for pid in ids))

    def test_concurrent_duplicate_names(self):
        user = self.new_user()
        results = []

        def create():
            results.append(self.req("POST", "/projects", {"name": "same", "upstream_base_url": DEFAULT_UPSTREAM},
                                    token=user.token))

        threads = [threading.Thread(target=create) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(r.status for r in results), [201] + [409] * 7,
                         [repr(r) for r in results if r.status not in (201, 409)])
        self.assertEqual(len(self.req("GET", "/projects", token=user.token).json()), 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
