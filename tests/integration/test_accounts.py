#!/usr/bin/env python3
"""Accounts (docs/auth.md): the seed's session API, AUTH_MODE, brute-force limits, CORS, device
sign-in (the seed's JSON flow and RFC 8628 through python3-oauthlib) and `antigravity login` /
`logout` end to end. SQLite by default; AG_DB=postgres for PostgreSQL."""

import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402

from oauthlib.oauth2 import DeviceClient  # noqa: E402
from oauthlib.oauth2.rfc6749 import errors as oauth_errors  # noqa: E402

USER_CODE_RE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
FAST = {"DEVICE_CODE_POLL_INTERVAL_SEC": "1"}


def form(server, path, fields, token=None):
    return server.request("POST", path, raw_body=urllib.parse.urlencode(fields).encode(),
                          content_type="application/x-www-form-urlencoded", token=token)


class Server(unittest.TestCase):
    env = FAST

    @classmethod
    def setUpClass(cls):
        cls.server = h.start_control(env_extra=cls.env)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def basic_user(self):
        email, password = h.unique_email(), "pw-" + h.random_string(16)
        r = self.server.request("POST", "/auth/register/basic", {"email": email, "password": password, "name": "Ada"})
        self.assertEqual(r.status, 201, r)
        return email, password, r.json()

    def new_code(self, **body):
        r = self.server.request("POST", "/auth/device/code", body or {})
        self.assertEqual(r.status, 200, r)
        return r.json()

    def poll(self, device_code):
        return self.server.request("POST", "/auth/device/token", {"deviceCode": device_code})


class SessionApiTest(Server):
    def test_register_and_login_basic_have_the_seed_shape(self):
        email, password, reg = self.basic_user()
        self.assertIs(reg["verified"], True)
        self.assertEqual(reg["user"]["name"], "Ada")
        self.assertTrue(h.UUID4_RE.match(reg["user"]["id"]))
        self.assertEqual(reg["token"], reg["access_token"])
        self.assertEqual(reg["refreshToken"], reg["refresh_token"])
        r = self.server.request("POST", "/auth/login/basic", {"username": email, "password": password})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["user"]["id"], reg["user"]["id"])
        s = self.server.request("GET", "/auth/session", token=r.json()["token"]).json()
        self.assertEqual((s["authenticated"], s["hasPasskey"], s["systemHasUsers"], s["authMode"]),
                         (True, False, True, "basic"))
        self.assertEqual(s["user"]["id"], reg["user"]["id"])
        anon = self.server.request("GET", "/auth/session").json()
        self.assertEqual((anon["authenticated"], anon["user"], anon["systemHasUsers"]), (False, None, True))

    def test_email_and_username_together_are_refused(self):
        r = self.server.request("POST", "/auth/login/basic", {"email": "a@example.com", "username": "b@example.com",
                                                              "password": "x" * 10})
        self.assertEqual(r.status, 422, r)

    def test_refresh_spends_the_token_and_reuse_revokes_the_session(self):
        _, _, reg = self.basic_user()
        r = self.server.request("POST", "/auth/refresh", {"refreshToken": reg["refreshToken"]})
        self.assertEqual(r.status, 200, r)
        new = r.json()
        self.assertNotEqual(new["refreshToken"], reg["refreshToken"])
        self.assertEqual(self.server.request("GET", "/auth/sessions", token=new["token"]).status, 200)
        again = self.server.request("POST", "/auth/refresh", {"refreshToken": reg["refreshToken"]})
        self.assertEqual(again.status, 401, again)
        self.assertIn("reuse", again.json()["detail"])
        self.assertEqual(self.server.request("GET", "/auth/sessions", token=new["token"]).status, 401)
        self.assertEqual(self.server.request("POST", "/auth/refresh", {"refreshToken": new["refreshToken"]}).status, 401)

    def test_logout_refuses_both_tokens_afterwards(self):
        _, _, reg = self.basic_user()
        r = self.server.request("POST", "/auth/logout", token=reg["token"])
        self.assertEqual(r.status, 204, r)
        self.assertEqual(self.server.request("GET", "/auth/sessions", token=reg["token"]).status, 401)
        self.assertEqual(self.server.request("POST", "/auth/refresh", {"refreshToken": reg["refreshToken"]}).status, 401)

    def test_a_user_lists_and_ends_their_own_sessions_only(self):
        email, password, reg = self.basic_user()
        second = self.server.request("POST", "/auth/login/basic", {"email": email, "password": password}).json()
        items = self.server.request("GET", "/auth/sessions", token=reg["token"]).json()["items"]
        self.assertEqual(len(items), 2)
        self.assertEqual(sorted(i["current"] for i in items), [False, True])
        self.assertEqual({i["kind"] for i in items}, {"web"})
        other = [i for i in items if not i["current"]][0]
        _, _, stranger = self.basic_user()
        self.assertEqual(self.server.request("DELETE", "/auth/sessions/" + other["id"], token=stranger["token"]).status, 404)
        self.assertEqual(self.server.request("DELETE", "/auth/sessions/" + other["id"], token=reg["token"]).status, 204)
        self.assertEqual(self.server.request("GET", "/auth/session", token=second["token"]).status, 401)


class PasskeyModeTest(Server):
    env = {"AUTH_MODE": "passkey", "PASSKEY_ORIGIN": "http://localhost:8123"}

    def test_basic_registration_is_refused_with_a_reason(self):
        for path in ("/auth/register/basic", "/auth/register"):
            r = self.server.request("POST", path, {"email": h.unique_email(), "password": "pw-" + h.random_string(12)})
            self.assertEqual(r.status, 403, r)
            self.assertEqual(r.json()["code"], "passkey_mode")
            self.assertIn("X-Request-Id", r.headers)
        self.assertEqual(self.server.request("GET", "/auth/session").json()["authMode"], "passkey")


class StartupChecksTest(unittest.TestCase):
    def refused(self, env, needle):
        code, out = h.run_binary(["control", "--listen", "127.0.0.1:0"], env_extra=dict(
            {"DATABASE_URL": "sqlite:///" + tempfile.mkdtemp() + "/x.db"}, **env), timeout=20)
        self.assertNotEqual(code, 0, out)
        self.assertIn(needle, out)

    def test_bad_settings_stop_the_start(self):
        self.refused({"AUTH_MODE": "magic"}, "AUTH_MODE must be basic or passkey")
        self.refused({"AUTH_MODE": "passkey"}, "needs PASSKEY_ORIGIN")
        self.refused({"PASSKEY_ORIGIN": "http://localhost:8123", "PASSKEY_RP_ID": "example.com"}, "PASSKEY_RP_ID")
        self.refused({"CORS_ORIGINS": "*"}, "wildcard")
        self.refused({"CORS_ORIGINS": "https://app.example.com/"}, "has a path")


class LimitsTest(Server):
    env = dict(FAST, AUTH_MAX_FAILURES_PER_ACCOUNT="3", AUTH_MAX_FAILURES_PER_IP="8", AUTH_FAILURE_WINDOW_SEC="10")

    def test_account_lock_answers_429_and_locks_no_other_account(self):
        email, password, _ = self.basic_user()
        other_email, other_password, _ = self.basic_user()
        for _ in range(3):
            self.assertEqual(self.server.request("POST", "/auth/login/basic", {"email": email, "password": "wrong-pw-1"}).status, 401)
        locked = self.server.request("POST", "/auth/login/basic", {"email": email, "password": password})
        self.assertEqual(locked.status, 429, locked)
        retry = int(locked.headers["Retry-After"])
        self.assertTrue(1 <= retry <= 10, retry)
        self.assertEqual(locked.json()["code"], "rate_limited")
        self.assertEqual(self.server.request("POST", "/auth/login/basic", {"email": other_email, "password": other_password}).status, 200)
        time.sleep(retry + 0.5)  # the counter does not outlive its window
        self.assertEqual(self.server.request("POST", "/auth/login/basic", {"email": email, "password": password}).status, 200)

    def test_user_code_entry_is_limited_per_account(self):
        _, _, guesser = self.basic_user()
        _, _, honest = self.basic_user()
        code = self.new_code()
        for _ in range(3):
            r = self.server.request("POST", "/auth/device/authorise", {"userCode": "BBBB-BBBB"}, token=guesser["token"])
            self.assertEqual(r.status, 400, r)
            self.assertEqual(r.json()["code"], "invalid_user_code")
        r = self.server.request("POST", "/auth/device/authorise", {"userCode": code["userCode"]}, token=guesser["token"])
        self.assertEqual(r.status, 429, r)
        self.assertIn("Retry-After", r.headers)
        r = self.server.request("POST", "/auth/device/authorise", {"userCode": code["userCode"]}, token=honest["token"])
        self.assertEqual(r.status, 200, r)


class PerIpLimitTest(Server):
    env = dict(FAST, AUTH_MAX_FAILURES_PER_ACCOUNT="100", AUTH_MAX_FAILURES_PER_IP="4",
               DEVICE_MAX_POLLS_PER_IP_PER_MIN="5")

    def test_failures_across_accounts_lock_the_address(self):
        email, password, _ = self.basic_user()
        for i in range(4):
            self.server.request("POST", "/auth/login/basic", {"email": "nobody%d@example.com" % i, "password": "wrong-pw-1"})
        r = self.server.request("POST", "/auth/login/basic", {"email": email, "password": password})
        self.assertEqual(r.status, 429, r)

    def test_device_polling_is_limited_per_address(self):
        code = self.new_code()
        statuses = [self.poll(code["deviceCode"]).status for _ in range(7)]
        self.assertEqual(statuses[:4], [200] * 4)
        self.assertIn(429, statuses[4:])


class CorsTest(Server):
    env = {"CORS_ORIGINS": "https://app.example.com,http://localhost:5173"}

    def test_listed_origin_gets_credentials_and_an_exact_echo(self):
        r = self.server.request("OPTIONS", "/auth/session", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.headers["Access-Control-Allow-Origin"], "https://app.example.com")
        self.assertEqual(r.headers["Access-Control-Allow-Credentials"], "true")
        self.assertIn("POST", r.headers["Access-Control-Allow-Methods"])
        self.assertIn("Authorization", r.headers["Access-Control-Allow-Headers"])
        g = self.server.request("GET", "/auth/session", headers={"Origin": "http://localhost:5173"})
        self.assertEqual(g.headers["Access-Control-Allow-Origin"], "http://localhost:5173")
        self.assertEqual(g.headers["Access-Control-Allow-Credentials"], "true")

    def test_other_origins_get_no_cors_headers(self):
        for origin in ("https://evil.example.com", "https://app.example.com.evil.com", "null", "https://APP.example.com"):
            for method in ("OPTIONS", "GET"):
                r = self.server.request(method, "/auth/session", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
                names = [k.lower() for k, _ in r.headers.items()]
                self.assertFalse([n for n in names if n.startswith("access-control-")], (origin, method, r))


class DeviceFlowTest(Server):
    def test_json_flow_from_code_to_tokens_once(self):
        _, _, user = self.basic_user()
        code = self.new_code(clientId="anchor")
        self.assertTrue(USER_CODE_RE.match(code["userCode"]), code)
        self.assertEqual((code["expiresIn"], code["interval"]), (600, 1))
        self.assertTrue(code["verificationUrl"].endswith("/device"), code)
        self.assertEqual(self.poll(code["deviceCode"]).json()["status"], "pending")
        slow = self.poll(code["deviceCode"]).json()  # at once: faster than the interval
        self.assertEqual(slow, {"status": "slow_down", "interval": 6})
        typed = code["userCode"].replace("-", "").lower()  # case and hyphen do not matter
        r = self.server.request("POST", "/auth/device/authorise", {"userCode": typed}, token=user["token"])
        self.assertEqual(r.json(), {"ok": True})
        time.sleep(6.2)
        done = self.poll(code["deviceCode"])
        self.assertEqual(done.status, 200, done)
        t = done.json()
        self.assertEqual(t["status"], "authorised")
        self.assertEqual(t["userId"], user["user"]["id"])
        self.assertEqual(t["anchorAccessExpiresIn"], 86400)
        self.assertTrue(t["anchorAccessToken"].startswith("agd_"))
        self.assertEqual(done.headers["Cache-Control"], "no-store")
        time.sleep(6.2)
        self.assertEqual(self.poll(code["deviceCode"]).json()["status"], "used")
        # The device's token is a session of its own, listed beside the browser's.
        s = self.server.request("GET", "/auth/session", token=t["anchorAccessToken"]).json()
        self.assertEqual(s["user"]["id"], user["user"]["id"])
        kinds = sorted(i["kind"] for i in self.server.request("GET", "/auth/sessions", token=user["token"]).json()["items"])
        self.assertEqual(kinds, ["device", "web"])
        # Stored hashed only.
        dump = self.server.database_bytes()
        for secret in (code["deviceCode"], t["anchorAccessToken"], t["anchorRefreshToken"]):
            self.assertNotIn(secret.encode(), dump)
        # Refresh rotates; a spent device refresh token revokes the device session.
        r = self.server.request("POST", "/auth/device/refresh", {"refreshToken": t["anchorRefreshToken"]})
        self.assertEqual(r.status, 200, r)
        t2 = r.json()
        self.assertEqual(self.server.request("GET", "/auth/session", token=t["anchorAccessToken"]).status, 401)
        self.assertEqual(self.server.request("GET", "/auth/session", token=t2["anchorAccessToken"]).status, 200)
        self.assertEqual(self.server.request("POST", "/auth/refresh", {"refreshToken": t2["anchorRefreshToken"]}).status, 401)
        self.assertEqual(self.server.request("POST", "/auth/device/refresh", {"refreshToken": user["refreshToken"]}).status, 401)
        self.assertEqual(self.server.request("POST", "/auth/device/refresh", {"refreshToken": t["anchorRefreshToken"]}).status, 401)
        self.assertEqual(self.server.request("GET", "/auth/session", token=t2["anchorAccessToken"]).status, 401)

    def test_denied_expired_unknown_and_decided_codes(self):
        _, _, user = self.basic_user()
        code = self.new_code()
        self.assertEqual(self.server.request("POST", "/auth/device/deny", {"userCode": code["userCode"]}, token=user["token"]).status, 200)
        self.assertEqual(self.poll(code["deviceCode"]).json()["status"], "denied")
        again = self.server.request("POST", "/auth/device/authorise", {"userCode": code["userCode"]}, token=user["token"])
        self.assertEqual((again.status, again.json()["code"]), (409, "code_already_used"))
        r = self.poll("agdc_" + "x" * 43)
        self.assertEqual((r.status, r.json()["code"]), (400, "invalid_device_code"))
        for bad in ("", "ABCD-EFGH", "BCDF-GHJ", "BCDF-GHJKL", "bcdf_ghjk"):
            r = self.server.request("POST", "/auth/device/authorise", {"userCode": bad}, token=user["token"])
            self.assertEqual(r.status, 400, (bad, r))
        self.assertEqual(self.server.request("POST", "/auth/device/authorise", {"userCode": code["userCode"]}).status, 401)


class ExpiryTest(Server):
    env = dict(FAST, DEVICE_CODE_TTL_SEC="5")

    def test_an_expired_code_cannot_be_approved_or_polled(self):
        _, _, user = self.basic_user()
        code = self.new_code()
        time.sleep(5.5)
        self.assertEqual(self.poll(code["deviceCode"]).json()["status"], "expired")
        r = self.server.request("POST", "/auth/device/authorise", {"userCode": code["userCode"]}, token=user["token"])
        self.assertEqual(r.status, 400, r)


class Rfc8628Test(Server):
    env = dict(FAST, CONTROL_PUBLIC_URL="https://control.example.com/")

    def test_metadata_names_the_endpoints(self):
        r = self.server.request("GET", "/.well-known/oauth-authorization-server")
        m = r.json()
        self.assertEqual(m["issuer"], "https://control.example.com")
        self.assertEqual(m["device_authorization_endpoint"], "https://control.example.com/auth/device/code")
        self.assertEqual(m["token_endpoint"], "https://control.example.com/auth/device/token")
        self.assertIn(DEVICE_GRANT, m["grant_types_supported"])

    def test_a_standard_client_library_completes_the_flow(self):
        _, _, user = self.basic_user()
        client = DeviceClient("cli-tool")
        r = form(self.server, "/auth/device/code", {"client_id": "cli-tool"})
        self.assertEqual(r.status, 200, r)
        auth = r.json()
        self.assertTrue(auth["verification_uri"].startswith("https://control.example.com/"))
        self.assertIn(auth["user_code"], auth["verification_uri_complete"])

        def token_request():
            body = client.prepare_request_body(device_code=auth["device_code"], include_client_id=True)
            return form(self.server, "/auth/device/token", dict(urllib.parse.parse_qsl(body)))

        def error_of(resp):
            with self.assertRaises(oauth_errors.OAuth2Error) as cm:
                client.parse_request_body_response(resp.text)
            return cm.exception.error

        first = token_request()
        self.assertEqual((first.status, error_of(first)), (400, "authorization_pending"))
        fast = token_request()
        self.assertEqual((fast.status, error_of(fast)), (400, "slow_down"))
        self.server.request("POST", "/auth/device/authorise", {"userCode": auth["user_code"]}, token=user["token"])
        time.sleep(6.2)
        ok = token_request()
        self.assertEqual(ok.status, 200, ok)
        token = client.parse_request_body_response(ok.text)
        self.assertEqual(token["token_type"].lower(), "bearer")
        self.assertEqual(self.server.request("GET", "/auth/session", token=token["access_token"]).json()["user"]["id"],
                         user["user"]["id"])
        time.sleep(6.2)
        self.assertEqual(error_of(token_request()), "invalid_grant")
        # Refresh through the same endpoint, as OAuth libraries do.
        r = form(self.server, "/auth/device/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(r.json()["refresh_token"], token["refresh_token"])
        spent = form(self.server, "/auth/device/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
        self.assertEqual((spent.status, spent.json()["error"]), (400, "invalid_grant"))

    def test_rfc_errors_for_denied_expired_and_malformed_requests(self):
        _, _, user = self.basic_user()
        auth = form(self.server, "/auth/device/code", {"client_id": "c1"}).json()
        self.server.request("POST", "/auth/device/deny", {"userCode": auth["user_code"]}, token=user["token"])
        r = form(self.server, "/auth/device/token", {"grant_type": DEVICE_GRANT, "device_code": auth["device_code"], "client_id": "c1"})
        self.assertEqual((r.status, r.json()["error"]), (400, "access_denied"))
        r = form(self.server, "/auth/device/token", {"grant_type": DEVICE_GRANT, "device_code": auth["device_code"], "client_id": "other"})
        self.assertEqual(r.json()["error"], "invalid_grant")
        r = form(self.server, "/auth/device/token", {"grant_type": "password", "username": "x"})
        self.assertEqual(r.json()["error"], "unsupported_grant_type")
        r = form(self.server, "/auth/device/token", {"device_code": "x"})
        self.assertEqual(r.json()["error"], "invalid_request")
        raw = self.server.request("POST", "/auth/device/token", raw_body=b"grant_type=a&grant_type=b",
                                  content_type="application/x-www-form-urlencoded")
        self.assertEqual(raw.status, 400, raw)


class CliLoginTest(Server):
    def test_login_and_logout_with_the_cli(self):
        _, _, user = self.basic_user()
        creds = os.path.join(tempfile.mkdtemp(prefix="ag-cli-"), "nested", "credentials.json")
        env = h.base_env({"ANTIGRAVITY_CREDENTIALS": creds})
        proc = subprocess.Popen([h.AG_BIN, "login", "--control", self.server.base_url], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            code = None
            lines = []
            for line in proc.stdout:
                lines.append(line)
                m = re.match(r"^Code: (\S+)$", line.strip())
                if m:
                    code = m.group(1)
                    break
            self.assertIsNotNone(code, "".join(lines))
            r = self.server.request("POST", "/auth/device/authorise", {"userCode": code}, token=user["token"])
            self.assertEqual(r.status, 200, r)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        self.assertEqual(proc.returncode, 0, "".join(lines) + out)
        self.assertIn("Signed in as", out)
        mode = stat.S_IMODE(os.stat(creds).st_mode)
        self.assertEqual(mode, 0o600)
        with open(creds) as f:
            saved = json.load(f)
        self.assertEqual(saved["control_url"], self.server.base_url)
        self.assertEqual(saved["user_id"], user["user"]["id"])
        self.assertEqual(self.server.request("GET", "/auth/session", token=saved["access_token"]).status, 200)
        kinds = sorted(i["kind"] for i in self.server.request("GET", "/auth/sessions", token=user["token"]).json()["items"])
        self.assertEqual(kinds, ["device", "web"])
        code, out = h.run_binary(["logout"], env_extra={"ANTIGRAVITY_CREDENTIALS": creds})
        self.assertEqual(code, 0, out)
        self.assertFalse(os.path.exists(creds))
        self.assertEqual(self.server.request("GET", "/auth/session", token=saved["access_token"]).status, 401)
        code, out = h.run_binary(["logout"], env_extra={"ANTIGRAVITY_CREDENTIALS": creds})
        self.assertEqual(code, 1, out)
        self.assertIn("not signed in", out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
