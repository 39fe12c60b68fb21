#!/usr/bin/env python3
"""Passkeys (docs/auth.md, WebAuthn as a relying party) end to end in headless Chromium: the
control plane serves /login on http://localhost:<port> (PASSKEY_ORIGIN); the test does the HTTP
itself and uses the page's agCreate/agGet (src/control/pages/account.html) with a WebAuthn virtual authenticator for each ceremony. The bad cases come from the
DevTools protocol (response override bits, credential properties, credentials removed and added
back) or from editing what the browser returned. SQLite by default; AG_DB=postgres for
PostgreSQL. Needs /usr/bin/chromium and python3-websockets (run with /usr/bin/python3)."""

import json
import os
import sqlite3
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402

EVIL_ORIGIN = "http://evil.example"

_browser = None


def browser():
    """One headless Chromium for the whole module (stopped in tearDownModule or at exit)."""
    global _browser
    if _browser is None:
        _browser = h.Browser.start()
    return _browser


def tearDownModule():
    if _browser is not None:
        _browser.stop()


def query(server, sql):
    """Rows of one SELECT on the server's database (SQLite or PostgreSQL), as lists of strings
    for PostgreSQL and native values for SQLite."""
    if server.db == "sqlite":
        conn = sqlite3.connect(server.db_path, timeout=10)
        try:
            return [list(r) for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    return [line.split("|") for line in h.psql(server.db_url, sql).splitlines() if line]


def edit_client_data(credential, **changes):
    """A copy of `credential` (toJSON() form) whose response.clientDataJSON has `changes`
    applied (re-encoded; the authenticator's signature is not redone)."""
    cred = json.loads(json.dumps(credential))
    client_data = json.loads(h.b64url_decode(cred["response"]["clientDataJSON"]))
    client_data.update(changes)
    cred["response"]["clientDataJSON"] = h.b64url_encode(
        json.dumps(client_data, separators=(",", ":")).encode("utf-8"))
    return cred


class PasskeyCase(unittest.TestCase):
    """A control plane on a fixed port with PASSKEY_ORIGIN=http://localhost:<port>, the shared
    browser on its /login page, and fresh virtual authenticators per test."""
    env = {}

    @classmethod
    def setUpClass(cls):
        port = h.free_port()
        cls.origin = "http://localhost:%d" % port
        cls.server = h.start_control(env_extra=dict({"PASSKEY_ORIGIN": cls.origin}, **cls.env), port=port)
        try:
            cls.browser = browser()
            page = cls.server.request("GET", "/login")
            if page.status != 200:
                raise AssertionError("GET /login: %r" % (page,))
            cls.browser.navigate(cls.origin + "/login")
            kinds = cls.browser.evaluate("[typeof window.agCreate, typeof window.agGet, window.isSecureContext]")
            if kinds != ["function", "function", True]:
                raise AssertionError("the /login page does not define agCreate/agGet in a secure "
                                     "context: %r" % (kinds,))
        except BaseException:
            cls.server.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def setUp(self):
        self.authenticators = []
        self.auth = self.new_authenticator()

    def tearDown(self):
        for auth_id in self.authenticators:
            self.browser.remove_virtual_authenticator(auth_id)

    # -- helpers ----------------------------------------------------------------------------

    def new_authenticator(self, **overrides):
        auth_id = self.browser.add_virtual_authenticator(**overrides)
        self.authenticators.append(auth_id)
        return auth_id

    def drop_authenticator(self, auth_id):
        """Removes an authenticator and returns its credentials (to add back later)."""
        creds = self.browser.get_credentials(auth_id)
        self.browser.remove_virtual_authenticator(auth_id)
        self.authenticators.remove(auth_id)
        return creds

    def assert_error(self, resp, status, code):
        self.assertEqual(resp.status, status, resp)
        data = h.error_detail(self, resp)
        self.assertEqual(data.get("code"), code, resp)
        self.assertTrue(resp.headers.get("X-Request-Id"), resp)
        return data

    def register_options(self, email=None, name="Ada", token=None):
        body = {} if token is not None else {"email": email or h.unique_email("pk"), "name": name}
        r = self.server.request("POST", "/auth/register/options", body, token=token)
        self.assertEqual(r.status, 200, r)
        return r.json()

    def create(self, options):
        return self.browser.evaluate("agCreate(%s)" % json.dumps(options))

    def register_verify(self, credential, token=None, name=None):
        body = {"credential": credential}
        if name is not None:
            body["name"] = name
        return self.server.request("POST", "/auth/register/verify", body, token=token)

    def register(self, email=None, token=None, name=None):
        """A passkey ceremony on the current authenticator: a new account (no token) or a
        passkey added to the token's account. Returns (verify body, credential)."""
        cred = self.create(self.register_options(email=email, token=token))
        r = self.register_verify(cred, token=token, name=name)
        self.assertEqual(r.status, 201, r)
        body = r.json()
        self.assertIs(body["verified"], True, r)
        return body, cred

    def login_options(self, email=None):
        r = self.server.request("POST", "/auth/login/options", {"email": email} if email else {})
        self.assertEqual(r.status, 200, r)
        return r.json()

    def get(self, options):
        return self.browser.evaluate("agGet(%s)" % json.dumps(options))

    def login_verify(self, credential):
        return self.server.request("POST", "/auth/login/verify", {"credential": credential})

    def assertion(self, email=None):
        return self.get(self.login_options(email))

    def sign_in(self, email=None):
        r = self.login_verify(self.assertion(email))
        self.assertEqual(r.status, 200, r)
        body = r.json()
        self.assertIs(body["verified"], True, r)
        return body

    def passkeys(self, token):
        r = self.server.request("GET", "/auth/passkeys", token=token)
        self.assertEqual(r.status, 200, r)
        return r.json()["items"]

    def basic_account(self):
        email, password = h.unique_email("pw"), "pw-" + h.random_string(16)
        r = self.server.request("POST", "/auth/register/basic", {"email": email, "password": password, "name": "Bob"})
        self.assertEqual(r.status, 201, r)
        return email, r.json()


class EndToEndTest(PasskeyCase):
    """Its own server: the passkeys table holds exactly the one passkey of this test."""

    def test_register_then_sign_in_twice_with_a_growing_sign_count(self):
        email = h.unique_email("ada")
        opts = self.register_options(email=email, name="Ada")
        self.assertEqual(opts["rp"]["id"], "localhost", opts)
        self.assertEqual([(p["type"], p["alg"]) for p in opts["pubKeyCredParams"]],
                         [("public-key", -7), ("public-key", -8), ("public-key", -257)])
        self.assertEqual(opts["authenticatorSelection"]["userVerification"], "required")
        self.assertEqual(opts["authenticatorSelection"]["residentKey"], "preferred")
        self.assertEqual(opts["attestation"], "none")
        self.assertEqual(opts["excludeCredentials"], [])
        self.assertEqual(opts["user"]["name"], email)
        self.assertGreaterEqual(len(h.b64url_decode(opts["challenge"])), 16)
        cred = self.create(opts)
        r = self.register_verify(cred)
        self.assertEqual(r.status, 201, r)
        reg = r.json()
        self.assertIs(reg["verified"], True)
        self.assertEqual(reg["user"]["email"], email)
        self.assertEqual(reg["user"]["name"], "Ada")
        self.assertTrue(reg["passkey"]["id"])
        self.assertTrue(h.REFRESH_RE.match(reg["refreshToken"]), reg)
        session = self.server.request("GET", "/auth/session", token=reg["token"]).json()
        self.assertIs(session["authenticated"], True, session)
        self.assertIs(session["hasPasskey"], True, session)
        self.assertEqual(session["user"]["id"], reg["user"]["id"])
        taken = self.server.request("POST", "/auth/register/options", {"email": email})
        self.assertEqual(taken.status, 409, taken)
        h.error_detail(self, taken)
        self.assertTrue(taken.headers.get("X-Request-Id"), taken)

        stored = [int(row[0]) for row in query(self.server, "SELECT sign_count FROM passkeys")]
        self.assertEqual(len(stored), 1, stored)
        counts = [stored[0]]
        for _ in range(2):
            lopts = self.login_options()
            self.assertEqual(lopts["rpId"], "localhost", lopts)
            self.assertEqual(lopts["userVerification"], "required", lopts)
            body = self.sign_in()
            self.assertEqual(body["user"]["id"], reg["user"]["id"])
            self.assertIs(self.server.request("GET", "/auth/session", token=body["token"]).json()["hasPasskey"], True)
            counts.append(int(query(self.server, "SELECT sign_count FROM passkeys")[0][0]))
        self.assertTrue(counts[0] < counts[1] < counts[2], counts)
        self.assertEqual(counts[2], self.browser.get_credentials(self.auth)[0]["signCount"])
        items = self.passkeys(reg["token"])
        self.assertEqual(len(items), 1, items)
        item = items[0]
        self.assertEqual(item["id"], reg["passkey"]["id"])
        self.assertEqual(item["sign_count"], counts[2])
        self.assertEqual((item["backup_eligible"], item["backup_state"], item["fmt"]), (False, False, "none"))
        self.assertTrue(item["last_used_at"], item)
        for key in ("name", "created_at", "aaguid"):
            self.assertIn(key, item)


class PasskeyTest(PasskeyCase):
    def test_a_second_passkey_is_added_to_a_signed_in_account(self):
        reg, first = self.register()
        token = reg["token"]
        opts = self.register_options(token=token)
        self.assertEqual([(c["type"], c["id"]) for c in opts["excludeCredentials"]],
                         [("public-key", first["id"])], opts)
        # excludeCredentials is enforced by the browser: the same authenticator refuses.
        with self.assertRaises(h.BrowserError) as ctx:
            self.create(opts)
        self.assertTrue(str(ctx.exception).startswith("InvalidStateError:"), str(ctx.exception))
        # A second authenticator makes the second passkey (Chromium allows one internal
        # authenticator at a time: the first one goes away, its credentials kept).
        first_creds = self.drop_authenticator(self.auth)
        second_auth = self.new_authenticator()
        second = self.create(self.register_options(token=token))
        r = self.register_verify(second, token=token, name="laptop")
        self.assertEqual(r.status, 201, r)
        added = r.json()
        self.assertIs(added["verified"], True)
        self.assertEqual(added["passkey"]["name"], "laptop")
        self.assertTrue(added["passkey"]["created_at"])
        self.assertNotIn("token", added)
        items = self.passkeys(token)
        self.assertEqual(sorted(i["id"] for i in items), sorted([reg["passkey"]["id"], added["passkey"]["id"]]))
        self.assertEqual(self.sign_in()["user"]["id"], reg["user"]["id"])
        # And the first passkey still signs in to the same account.
        self.drop_authenticator(second_auth)
        again = self.new_authenticator()
        for cred in first_creds:
            self.browser.add_credential(again, cred)
        self.assertEqual(self.sign_in()["user"]["id"], reg["user"]["id"])

    def test_a_registration_for_a_credential_already_stored_is_refused(self):
        _, first = self.register()
        cred = self.create(self.register_options())
        # attestation "none" signs nothing: put the stored credential's attestation object
        # (and id) under the new ceremony's clientDataJSON.
        forged = json.loads(json.dumps(cred))
        forged["id"] = forged["rawId"] = first["id"]
        forged["response"]["attestationObject"] = first["response"]["attestationObject"]
        if "authenticatorData" in first["response"]:
            forged["response"]["authenticatorData"] = first["response"]["authenticatorData"]
            forged["response"]["publicKey"] = first["response"]["publicKey"]
        self.assert_error(self.register_verify(forged), 409, "credential_exists")

    def test_a_replayed_registration_and_sign_in_are_refused(self):
        cred = self.create(self.register_options())
        self.assertEqual(self.register_verify(cred).status, 201)
        self.assert_error(self.register_verify(cred), 400, "challenge")
        assertion = self.assertion()
        self.assertEqual(self.login_verify(assertion).status, 200)
        self.assert_error(self.login_verify(assertion), 400, "challenge")

    def test_a_challenge_the_server_never_gave_is_refused(self):
        self.register()
        assertion = edit_client_data(self.assertion(), challenge=h.b64url_encode(os.urandom(32)))
        self.assert_error(self.login_verify(assertion), 400, "challenge")

    def test_a_wrong_origin_is_refused(self):
        self.register()
        assertion = self.assertion()
        self.assert_error(self.login_verify(edit_client_data(assertion, origin=EVIL_ORIGIN)), 403, "origin")
        cred = self.create(self.register_options())
        self.assert_error(self.register_verify(edit_client_data(cred, origin=EVIL_ORIGIN)), 403, "origin")

    def test_a_wrong_ceremony_type_is_refused(self):
        cred = self.create(self.register_options())
        self.assert_error(self.register_verify(edit_client_data(cred, type="webauthn.get")), 400, "type")

    def test_a_tampered_client_data_on_sign_in_breaks_the_signature(self):
        self.register()
        assertion = self.assertion()
        self.assert_error(self.login_verify(edit_client_data(assertion, extra="tampered")), 400, "signature")

    def test_response_override_bits_are_refused(self):
        reg, _ = self.register()
        for bits, code in ((dict(isBogusSignature=True), "signature"), (dict(isBadUV=True), "user_verified"),
                           (dict(isBadUP=True), "user_present")):
            with self.subTest(**bits):
                self.browser.set_response_override_bits(self.auth, **bits)
                try:
                    assertion = self.assertion()
                finally:
                    self.browser.set_response_override_bits(self.auth)
                self.assert_error(self.login_verify(assertion), 400, code)
                self.assertEqual(self.sign_in()["user"]["id"], reg["user"]["id"])  # without the bit
        self.drop_authenticator(self.auth)  # Chromium allows one internal authenticator at a time
        for bits, code in ((dict(isBadUV=True), "user_verified"), (dict(isBadUP=True), "user_present")):
            with self.subTest(registration=True, **bits):
                auth = self.new_authenticator()
                try:
                    self.browser.set_response_override_bits(auth, **bits)
                    cred = self.create(self.register_options())
                finally:
                    self.drop_authenticator(auth)
                self.assert_error(self.register_verify(cred), 400, code)

    def test_backup_state_without_backup_eligibility_is_refused(self):
        reg, _ = self.register()
        cred_id = self.browser.get_credentials(self.auth)[0]["credentialId"]
        self.browser.set_credential_properties(self.auth, cred_id, backupEligibility=False, backupState=True)
        self.assert_error(self.login_verify(self.assertion()), 400, "backup_state")
        self.browser.set_credential_properties(self.auth, cred_id, backupEligibility=False, backupState=False)
        self.assertEqual(self.sign_in()["user"]["id"], reg["user"]["id"])

    def test_a_backup_eligible_passkey_may_be_backed_up(self):
        self.drop_authenticator(self.auth)
        auth = self.new_authenticator(defaultBackupEligibility=True, defaultBackupState=False)
        reg, _ = self.register()
        self.assertEqual([(i["backup_eligible"], i["backup_state"]) for i in self.passkeys(reg["token"])],
                         [(True, False)])
        cred_id = self.browser.get_credentials(auth)[0]["credentialId"]
        self.browser.set_credential_properties(auth, cred_id, backupEligibility=True, backupState=True)
        self.assertEqual(self.sign_in()["user"]["id"], reg["user"]["id"])

    def test_a_sign_count_that_goes_back_is_refused(self):
        reg, _ = self.register()
        self.sign_in()
        cred = self.browser.get_credentials(self.auth)[0]
        self.assertGreaterEqual(cred["signCount"], 2, cred)
        self.browser.remove_credential(self.auth, cred["credentialId"])
        self.browser.add_credential(self.auth, dict(cred, signCount=0))
        self.assert_error(self.login_verify(self.assertion()), 400, "sign_count")
        self.assertEqual(self.passkeys(reg["token"])[0]["sign_count"], cred["signCount"])

    def test_an_unknown_credential_is_refused(self):
        _, account = self.basic_account()
        token = account["token"]
        added, _ = self.register(token=token)
        self.assertEqual(self.server.request("DELETE", "/auth/passkeys/" + added["passkey"]["id"], token=token).status, 204)
        self.assertEqual(self.passkeys(token), [])
        self.assertIs(self.server.request("GET", "/auth/session", token=token).json()["hasPasskey"], False)
        # The authenticator still has it; the server does not.
        self.assert_error(self.login_verify(self.assertion()), 400, "unknown_credential")

    def test_the_only_way_to_sign_in_cannot_be_deleted(self):
        reg, _ = self.register()
        token, only = reg["token"], reg["passkey"]["id"]
        self.assert_error(self.server.request("DELETE", "/auth/passkeys/" + only, token=token), 409,
                          "last_sign_in_method")
        self.assertEqual([i["id"] for i in self.passkeys(token)], [only])
        self.drop_authenticator(self.auth)
        self.new_authenticator()
        added, _ = self.register(token=token)
        self.assertEqual(self.server.request("DELETE", "/auth/passkeys/" + only, token=token).status, 204)
        self.assert_error(self.server.request("DELETE", "/auth/passkeys/" + added["passkey"]["id"], token=token),
                          409, "last_sign_in_method")
        self.assertEqual(self.sign_in()["user"]["id"], reg["user"]["id"])


class ExpiredChallengeTest(PasskeyCase):
    env = {"CHALLENGE_TTL_SEC": "5"}

    def test_an_expired_challenge_is_refused(self):
        self.register()  # within the TTL: fine
        assertion = self.assertion()
        cred = self.create(self.register_options())
        time.sleep(6)
        self.assert_error(self.login_verify(assertion), 400, "challenge")
        self.assert_error(self.register_verify(cred), 400, "challenge")


class PasskeyModeTest(PasskeyCase):
    env = {"AUTH_MODE": "passkey"}

    def test_passkeys_are_the_way_in(self):
        r = self.server.request("POST", "/auth/register/basic",
                                {"email": h.unique_email(), "password": "pw-" + h.random_string(12)})
        self.assert_error(r, 403, "passkey_mode")
        reg, _ = self.register()
        body = self.sign_in()
        self.assertEqual(body["user"]["id"], reg["user"]["id"])
        session = self.server.request("GET", "/auth/session", token=body["token"]).json()
        self.assertEqual((session["authMode"], session["hasPasskey"]), ("passkey", True), session)


if __name__ == "__main__":
    unittest.main(verbosity=2)
