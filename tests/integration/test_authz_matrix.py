"""Authorisation matrix of the control API: every route × every kind of caller.

The route list and each route's rule come from the running server's `GET /openapi.json`, where
the server names the rule each route was registered with (`x-antigravity-access`,
control/api/routes.hpp); an operation without a known rule fails the test. Path parameters are replaced
by real ids of objects of one organisation (project, key, service, token; an organisation made for
the cell on organisation routes); routes that change or delete something get fresh objects for
every call. Every route is called with and without the `/api/v1` prefix. Whether a route also
takes agents comes from the same document (`x-antigravity-agents`).

Callers:
  anonymous            no credentials at all
  other_user           a valid access token of a user of another organisation
  owner                a valid access token of the organisation's owner
  member, admin        valid access tokens of the organisation's member and admin
  agent_member         X-Agent-Token of an agent of the organisation with the member role
  agent_admin          X-Agent-Token of an agent of the organisation with the admin role
  agent_bearer         the admin agent's token as Authorization: Bearer
  revoked_agent        X-Agent-Token of a revoked agent of the organisation
  other_agent          X-Agent-Token of an admin agent of another organisation
  worker_secret        the worker secret in x-worker-secret (no bearer token)
  wrong_worker_secret  a wrong x-worker-secret
  garbage_bearer       Authorization: Bearer <not a JWT>
  forged_bearer        a well-formed JWT with the owner's claims, signed with another secret
  expired_bearer       a JWT with the owner's claims, signed with the real JWT_SECRET_KEY, expired

Expected status per rule and caller (expect() below; docs/api.md "Who may call what",
docs/services-and-tokens.md, docs/config-stream.md):
  public         health, openapi, docs, jwks, register, login, refresh: success for everyone
                 (the route's documented 2xx; credentials, even bad ones, are not looked at)
  optional_user  GET /auth/session: 200 without a token (authenticated: false) or with a valid
                 one; 401 for a token that is present but invalid or expired
  user_or_refresh_token  POST /auth/logout: the caller's own session; 401 without a valid credential
  user           routes of the caller's own data: 2xx for any valid user, 401 otherwise
  operator       the worker registry (/gateways): the operator (the first user: the owner here)
                 2xx, another user 403, everyone else 401
  project_member, project_admin, org_member, org_admin, org_owner  the organisation's members by
                 role (below the rule's role 403), anyone outside the organisation 404, everyone
                 else 401
  agent          GET /agents/me: any live agent 2xx, everyone else 401
  relay_client   GET /ws/client without an upgrade: a person's valid token 426, everyone else 401
  relay_anchor   GET /ws/anchor: a device token only (none here): everyone 401 (tests/integration/test_relay.py
                 covers devices)
  worker         /internal/worker/*: worker secret 2xx, everyone else 401
Agents: on a route that takes them, an agent of the organisation is judged by its role as a member
would be, an agent of another organisation gets 404, a revoked one 401; on a route that does not,
every agent token is a 401 (user routes take users only).
Beyond the status: a 401 on a bearer route carries `WWW-Authenticate: Bearer`; a refused
mutation leaves the owner's objects unchanged; a caller other than the owner never sees the
owner's ids in a 2xx body of a user, project or session route.

Run: /usr/bin/python3 tests/integration/test_authz_matrix.py
Environment: see the harness (AG_BIN, AG_DB, AG_TEST_PG_URL).
"""

import os
import re
import string
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402

AGENT_CALLERS = ("agent_member", "agent_admin", "agent_bearer", "revoked_agent", "other_agent")
CALLERS = ("anonymous", "other_user", "owner", "member", "admin") + AGENT_CALLERS + (
    "worker_secret", "wrong_worker_secret", "garbage_bearer", "forged_bearer", "expired_bearer")
USERS = ("owner", "other_user", "member", "admin")
BEARER_CALLERS = ("other_user", "owner", "garbage_bearer", "forged_bearer", "expired_bearer")
PREFIXES = ("", "/api/v1")

# The rules a route can declare (control/api/routes.hpp), as the server's /openapi.json names
# them in `x-antigravity-access`. An operation without one, or with a rule not listed here, fails
# the test: every route must declare who may call it.
RULES = ("public", "optional_user", "user_or_refresh_token", "user", "operator", "project_member", "project_admin",
         "worker", "org_member", "org_admin", "org_owner", "agent", "relay_client", "relay_anchor")

OK = "2xx"  # the route's documented success status(es), from /openapi.json
BAD = {"wrong_worker_secret": 401, "garbage_bearer": 401, "forged_bearer": 401, "expired_bearer": 401}
# The minimum role of the organisation rules, and what each user caller has in the organisation.
LEAST = {"project_member": 0, "org_member": 0, "project_admin": 1, "org_admin": 1, "org_owner": 2}
ROLE = {"member": 0, "admin": 1, "owner": 2, "agent_member": 0, "agent_admin": 1, "agent_bearer": 1}


def expect(rule, agents):
    """Expected status per caller for a route with `rule`, taking agents or not."""
    e = dict(BAD, anonymous=401, worker_secret=401)
    for a in AGENT_CALLERS:
        e[a] = 401
    if rule == "public":
        return {c: OK for c in CALLERS}
    if rule == "worker":
        e.update({u: 401 for u in USERS}, worker_secret=OK)
        return e
    if rule == "agent":
        e.update({u: 401 for u in USERS}, agent_member=OK, agent_admin=OK, agent_bearer=OK, other_agent=OK)
        return e
    if rule == "relay_client":  # a plain GET with a person's valid token: 426, "connect with a WebSocket"
        e.update({u: 426 for u in USERS})
        return e
    if rule == "relay_anchor":  # device tokens only: nobody in the matrix holds one
        e.update({u: 401 for u in USERS})
        return e
    if rule == "optional_user":
        e.update({u: OK for u in USERS}, anonymous=OK, worker_secret=OK, wrong_worker_secret=OK)
        return e
    if rule in ("user", "user_or_refresh_token"):
        e.update({u: OK for u in USERS})
        if agents:
            e.update(agent_member=OK, agent_admin=OK, agent_bearer=OK, other_agent=OK)
        return e
    if rule == "operator":  # the owner registered first: the operator
        e.update(owner=OK, other_user=403, member=403, admin=403)
        return e
    least = LEAST[rule]
    e["other_user"] = 404
    for c in ("owner", "member", "admin") + (("agent_member", "agent_admin", "agent_bearer") if agents else ()):
        e[c] = OK if ROLE[c] >= least else 403
    if agents:
        e["other_agent"] = 404
    return e


MUTATING = ("POST", "PUT", "PATCH", "DELETE")
UPSTREAM = "http://127.0.0.1:9/authz"
ORIGIN = "http://localhost:8123"




def lower_id():
    return h.random_string(10, string.ascii_lowercase + string.digits)


class AuthzMatrixTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Device codes and polls are made for many cells: the per-IP limits stay out of the way.
        cls.ctl = h.start_control(h.AG_DB, env_extra={"DEVICE_MAX_POLLS_PER_IP_PER_MIN": "100000",
                                                      "PASSKEY_ORIGIN": ORIGIN, "AGENT_RATE_LIMIT": "100000000"})
        # Passkeys signed by a software authenticator (the browser suite uses Chromium's).
        cls.authenticator = h.SoftAuthenticator(ORIGIN)
        cls.owner = h.register_user(cls.ctl)
        cls.other = h.register_user(cls.ctl)
        cls.member = h.register_user(cls.ctl)
        cls.admin = h.register_user(cls.ctl)
        cls.boss = h.register_user(cls.ctl)  # owns the organisations other callers join
        # The organisation the fixtures belong to, with a member, an admin and its agents.
        cls.org = cls.new_org(cls.owner.token)
        cls.join(cls.org, cls.owner.token, cls.member, "member")
        cls.join(cls.org, cls.owner.token, cls.admin, "admin")
        cls.agents = cls.org_agents(cls.org)
        other_org = cls.new_org(cls.other.token)
        cls.other_agent = cls.new_agent(other_org, cls.other.token, "admin")["token"]
        cls.fixture = cls.make_fixture()
        _, claims = h.jwt_decode_unverified(cls.owner.token)
        now = int(time.time())
        expired = dict(claims, iat=now - 7200, exp=now - 3600)
        cls.expired_token = h.jwt_encode(expired, cls.ctl.jwt_secret, alg="HS256")
        cls.forged_token = h.jwt_encode(dict(claims, exp=now + 3600), "not-the-secret-" + h.random_string(32))
        cls.garbage_token = "garbage." + h.random_string(40)

    @classmethod
    def tearDownClass(cls):
        cls.ctl.stop()

    # -- fixtures ---------------------------------------------------------------------------

    @classmethod
    def make_fixture(cls):
        """A project of the owner with a slug, a key, a service and a service token."""
        ctl, token = cls.ctl, cls.owner.token
        project = h.create_project(ctl, token, name="authz-" + lower_id(), upstream=UPSTREAM,
                                   slug="authz-" + lower_id(), key_policy="multiple", organization_id=cls.org)
        key = h.create_key(ctl, token, project["id"])
        name = "svc-" + lower_id()
        resp = ctl.request("PUT", "/projects/%s/services/%s" % (project["id"], name),
                           {"targets": ["http://127.0.0.1:9"]}, token=token)
        assert resp.status == 201, resp
        resp = ctl.request("POST", "/projects/%s/tokens" % project["id"], {"service": name}, token=token)
        assert resp.status == 201, resp
        tok = resp.json()
        return {"id": project["id"], "key_id": key["id"], "name": name, "jti": tok["jti"],
                "secret_ids": [project["id"], key["id"], tok["jti"], key["public_id"]]}

    def owner_view(self, fx):
        """What the owner sees of a fixture (to prove a refused mutation changed nothing)."""
        ctl, token = self.ctl, self.owner.token
        out = {}
        for path in ("/projects/%s" % fx["id"], "/projects/%s/keys" % fx["id"],
                     "/projects/%s/services" % fx["id"], "/projects/%s/tokens" % fx["id"]):
            resp = ctl.request("GET", path, token=token)
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            out[path] = (resp.status, self._strip_volatile(body))
        return out

    @classmethod
    def _strip_volatile(cls, obj):
        if isinstance(obj, dict):
            return {k: cls._strip_volatile(v) for k, v in obj.items() if k not in ("last_used_at",)}
        if isinstance(obj, list):
            return [cls._strip_volatile(v) for v in obj]
        return obj

    # -- requests ---------------------------------------------------------------------------

    def caller_headers(self, caller, route):
        if caller == "anonymous":
            return {}
        if caller in self.agent_tokens:
            token = self.agent_tokens[caller]
            return {"Authorization": "Bearer " + token} if caller == "agent_bearer" else {"X-Agent-Token": token}
        if caller in USERS:
            user = self.user(caller)
            if route == ("POST", "/auth/logout"):
                # a session of its own: logging it out must not break the rest of the matrix
                return {"Authorization": "Bearer " + h.login(self.ctl, user.email, user.password)["access_token"]}
            return {"Authorization": "Bearer " + user.token}
        if caller == "worker_secret":
            return {"x-worker-secret": self.ctl.worker_secret}
        if caller == "wrong_worker_secret":
            return {"x-worker-secret": "wrong-" + h.random_string(42)}
        if caller == "garbage_bearer":
            return {"Authorization": "Bearer " + self.garbage_token}
        if caller == "forged_bearer":
            return {"Authorization": "Bearer " + self.forged_token}
        if caller == "expired_bearer":
            return {"Authorization": "Bearer " + self.expired_token}
        raise ValueError(caller)

    def device_code(self):
        resp = self.ctl.request("POST", "/auth/device/code", {})
        assert resp.status == 200, resp
        return resp.json()

    def device_refresh_token(self):
        """A device session of the owner (docs/auth.md, "Device sign-in"), for the refresh route."""
        code = self.device_code()
        resp = self.ctl.request("POST", "/auth/device/authorise", {"userCode": code["userCode"]}, token=self.owner.token)
        assert resp.status == 200, resp
        resp = self.ctl.request("POST", "/auth/device/token", {"deviceCode": code["deviceCode"]})
        assert resp.json().get("status") == "authorised", resp
        return resp.json()["anchorRefreshToken"]

    def user(self, caller):
        return {"owner": self.owner, "other_user": self.other, "member": self.member, "admin": self.admin}[caller]

    def own_session_id(self, caller):
        """A fresh session of the caller, for the route that ends one of the caller's sessions."""
        user = self.user(caller)
        token = h.login(self.ctl, user.email, user.password)["access_token"]
        return self.ctl.request("GET", "/auth/session", token=token).json()["session"]["id"]

    def add_passkey(self, caller):
        """A new passkey of the caller (owner or other_user, who both have a password): its id."""
        token = self.caller_token(caller)
        options = self.ctl.request("POST", "/auth/register/options", {}, token=token).json()
        resp = self.ctl.request("POST", "/auth/register/verify", {"credential": self.authenticator.create(options)},
                                token=token)
        assert resp.status == 201, resp
        return resp.json()["passkey"]["id"]

    def caller_token(self, caller):
        return self.user(caller).token

    # -- organisations ---------------------------------------------------------------------

    @classmethod
    def new_org(cls, token):
        resp = cls.ctl.request("POST", "/organizations", {"name": "org-" + lower_id()}, token=token)
        assert resp.status == 201, resp
        return resp.json()["id"]

    @classmethod
    def join(cls, org_id, inviter_token, user, role="member"):
        resp = cls.ctl.request("POST", "/organizations/%s/invites" % org_id, {"email": user.email, "role": role},
                               token=inviter_token)
        assert resp.status == 201, resp
        resp = cls.ctl.request("POST", "/invites/accept", {"token": resp.json()["token"]}, token=user.token)
        assert resp.status == 200, resp

    @classmethod
    def new_agent(cls, org_id, token, role):
        resp = cls.ctl.request("POST", "/organizations/%s/agents" % org_id, {"name": "agent-" + lower_id(), "role": role},
                               token=token)
        assert resp.status == 201, resp
        return resp.json()

    @classmethod
    def org_agents(cls, org_id):
        """The agent callers' tokens in `org_id` (the revoked one revoked)."""
        revoked = cls.new_agent(org_id, cls.owner.token, "member")
        resp = cls.ctl.request("DELETE", "/organizations/%s/agents/%s" % (org_id, revoked["id"]), token=cls.owner.token)
        assert resp.status == 204, resp
        admin = cls.new_agent(org_id, cls.owner.token, "admin")["token"]
        return {"agent_member": cls.new_agent(org_id, cls.owner.token, "member")["token"], "agent_admin": admin,
                "agent_bearer": admin, "revoked_agent": revoked["token"]}

    @property
    def agent_tokens(self):
        return dict(self.agents, other_agent=self.other_agent)

    def org_path(self, route, caller):
        """The path of an organisation route, on an organisation made for this cell."""
        method, path = route
        org = self.new_org(self.owner.token)
        values = {"id": org}
        if route == ("POST", "/organizations/{id}/leave"):
            org = values["id"] = self.new_org(self.boss.token)  # the owner is a member there
            self.join(org, self.boss.token, self.owner)
        # The caller's place in this organisation: a member, an admin, or one of its agents.
        if caller in ("member", "admin"):
            self.join(org, self.boss.token if route == ("POST", "/organizations/{id}/leave") else self.owner.token,
                      self.user(caller), caller)
        saved = self.agents
        if caller in ("agent_member", "agent_admin", "agent_bearer", "revoked_agent"):
            owner_token = self.boss.token if route == ("POST", "/organizations/{id}/leave") else self.owner.token
            if caller == "revoked_agent":
                a = self.new_agent(org, owner_token, "member")
                self.ctl.request("DELETE", "/organizations/%s/agents/%s" % (org, a["id"]), token=owner_token)
            else:
                a = self.new_agent(org, owner_token, "member" if caller == "agent_member" else "admin")
            self.cell_agent = a["token"]
        if "{agent_id}" in path:
            values["agent_id"] = self.new_agent(org, self.owner.token, "member")["id"]
        del saved
        if "{user_id}" in path:
            member = h.register_user(self.ctl)
            self.join(org, self.owner.token, member)
            values["user_id"] = member.id
        if "{invite_id}" in path:
            resp = self.ctl.request("POST", "/organizations/%s/invites" % org, {"email": h.unique_email("inv")},
                                    token=self.owner.token)
            values["invite_id"] = resp.json()["id"]
        return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)

    def body_for(self, route, fx, caller=None):
        method, path = route
        if path in ("/invites/accept", "/invites/decline"):
            if caller not in USERS:
                return {"token": "agi_" + "x" * 43}
            user = self.user(caller)
            org = self.new_org(self.boss.token)
            resp = self.ctl.request("POST", "/organizations/%s/invites" % org, {"email": user.email},
                                    token=self.boss.token)
            return {"token": resp.json()["token"]}
        if route == ("POST", "/organizations"):
            return {"name": "org-" + lower_id()}
        if route == ("PATCH", "/organizations/{id}"):
            return {"name": "renamed-" + lower_id()}
        if route == ("PATCH", "/organizations/{id}/members/{user_id}"):
            return {"role": "admin"}
        if route == ("POST", "/organizations/{id}/invites"):
            return {"email": h.unique_email("inv"), "role": "member"}
        if route == ("POST", "/organizations/{id}/agents"):
            return {"name": "agent-" + lower_id()}
        if route == ("POST", "/internal/worker/traffic"):
            hour = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime())
            return {"worker_id": "authz", "batch_id": lower_id(), "hours": [
                {"project_id": fx["id"], "hour": hour, "requests": 1, "errors": 0, "throttled": 0, "blocked": 0,
                 "latency_buckets": [1] + [0] * 15}]}
        if route == ("PATCH", "/users/me"):
            return {}
        if path == "/auth/register/options":
            return {} if caller in USERS else {"email": h.unique_email("authz")}
        if path == "/auth/register/verify":
            token = self.caller_token(caller) if caller in USERS else None
            body = {} if token else {"email": h.unique_email("authz")}
            options = self.ctl.request("POST", "/auth/register/options", body, token=token).json()
            return {"credential": self.authenticator.create(options)}
        if path == "/auth/login/verify":
            if not getattr(self, "login_credential", None):  # one passkey kept for the sign-ins
                self.add_passkey("owner")
                self.login_credential = list(self.authenticator.credentials)[-1]
            options = self.ctl.request("POST", "/auth/login/options", {}).json()
            return {"credential": self.authenticator.get(options, self.login_credential)}
        if path in ("/auth/device/authorise", "/auth/device/deny"):
            return {"userCode": self.device_code()["userCode"]}
        if path == "/auth/device/token":
            return {"deviceCode": self.device_code()["deviceCode"]}
        if path == "/auth/device/refresh":
            return {"refreshToken": self.device_refresh_token()}
        if path == "/auth/register/basic":
            path = "/auth/register"
        if path == "/auth/login/basic":
            path = "/auth/login"
        if path == "/auth/register":
            return {"email": h.unique_email("authz"), "password": "pw-" + h.random_string(16)}
        if path == "/auth/login":
            return {"email": self.owner.email, "password": self.owner.password}
        if path == "/auth/refresh":
            return {"refresh_token": h.login(self.ctl, self.owner.email, self.owner.password)["refresh_token"]}
        if route == ("POST", "/projects"):
            return {"name": "authz-new-" + lower_id(), "upstream_base_url": UPSTREAM}
        if route == ("PATCH", "/projects/{id}"):
            return {"rate_limit": {"burst": 7}}
        if route == ("POST", "/projects/{id}/keys"):
            return {"label": "authz"}
        if route == ("PUT", "/projects/{id}/services/{name}"):
            return {"targets": ["http://127.0.0.1:9/changed"]}
        if route == ("POST", "/projects/{id}/tokens"):
            return {"service": fx["name"]}
        if route == ("POST", "/projects/{id}/tokens/{jti}/revoke"):
            return {"reason": "authz"}
        if route == ("POST", "/internal/worker/token-usage"):
            return {"tokens": [{"jti": fx["jti"], "last_used_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}
        return None

    @staticmethod
    def fill_path(path, fx):
        def sub(m):
            return fx[m.group(1)]
        return re.sub(r"\{(\w+)\}", sub, path)

    # -- the matrix -------------------------------------------------------------------------

    def test_matrix(self):
        doc = self.ctl.request("GET", "/openapi.json").json()
        routes, rules, agents = {}, {}, {}
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                    ok = sorted(int(c) for c in op.get("responses", {}) if c.isdigit() and 200 <= int(c) < 300)
                    routes[(method.upper(), path)] = ok
                    rules[(method.upper(), path)] = op.get("x-antigravity-access")
                    agents[(method.upper(), path)] = op.get("x-antigravity-agents", False)
        undeclared = sorted(r for r, rule in rules.items() if rule not in RULES)
        self.assertEqual(undeclared, [], "operations of /openapi.json without a declared rule "
                         "(x-antigravity-access): a route the server does not serve, or one "
                         "registered without a known rule")
        self.assertGreaterEqual(len(routes), 30)

        failures = []
        cells = 0
        table = []
        for route in sorted(routes):
            cls_ = rules[route]
            success = set(routes[route]) or {200}
            table_for_route = expect(cls_, agents[route])
            for prefix in PREFIXES:
                for caller in CALLERS:
                    expected = table_for_route[caller]
                    method, path = route
                    mutating = method in MUTATING and cls_ in ("project_member", "project_admin", "worker")
                    fx = self.make_fixture() if mutating else self.fixture
                    before = self.owner_view(fx) if mutating and expected != OK else None
                    self.cell_agent = None
                    body = self.body_for(route, fx, caller)
                    url = prefix + (self.org_path(route, caller) if path.startswith("/organizations/{id}")
                                    else self.fill_path(path, fx))
                    headers = self.caller_headers(caller, route)
                    if self.cell_agent:  # an agent of the organisation made for this cell
                        headers = ({"Authorization": "Bearer " + self.cell_agent} if caller == "agent_bearer"
                                   else {"X-Agent-Token": self.cell_agent})
                    if route == ("DELETE", "/auth/sessions/{id}") and caller in USERS:
                        url = prefix + "/auth/sessions/" + self.own_session_id(caller)
                    if route == ("DELETE", "/auth/passkeys/{id}") and caller in USERS:
                        url = prefix + "/auth/passkeys/" + self.add_passkey(caller)
                    resp = self.ctl.request(method, url, body=body, headers=headers)
                    cells += 1
                    where = "%s %s%s × %s" % (method, prefix, path, caller)
                    problems = []
                    if expected == OK:
                        if resp.status not in success:
                            problems.append("expected %s, got %d" % (sorted(success), resp.status))
                    elif resp.status != expected:
                        problems.append("expected %d, got %d" % (expected, resp.status))
                    if (resp.status == 401 and cls_ in ("optional_user", "user_or_refresh_token", "user", "project_member", "project_admin", "operator")
                            and caller in BEARER_CALLERS + ("anonymous",)):
                        if "bearer" not in (resp.headers.get("WWW-Authenticate") or "").lower():
                            problems.append("401 without WWW-Authenticate: Bearer")
                    if (200 <= resp.status < 300 and caller in ("other_user", "other_agent", "anonymous")
                            and cls_ in ("optional_user", "user", "project_member", "project_admin")):
                        leaked = [i for i in self.fixture["secret_ids"] + fx["secret_ids"]
                                  if i.encode() in resp.body]
                        if leaked:
                            problems.append("2xx body shows the owner's ids %r" % leaked)
                    if caller == "anonymous" and route == ("GET", "/auth/session") and resp.status == 200:
                        if resp.json().get("authenticated") is not False:
                            problems.append("anonymous session is authenticated: %r" % resp.text[:200])
                    if before is not None:
                        after = self.owner_view(fx)
                        if after != before:
                            problems.append("a refused %s changed the owner's objects" % method)
                    if problems:
                        failures.append("%s: %s [%s]" % (where, "; ".join(problems), resp.text[:120]))
                    table.append((where, resp.status))
        sys.stderr.write("\n    [measured] %d cells (%d routes × %d callers × %d prefixes), %d failing\n"
                         % (cells, len(routes), len(CALLERS), len(PREFIXES), len(failures)))
        self.assertEqual(failures, [], "authorisation matrix:\n" + "\n".join(failures))


if __name__ == "__main__":
    unittest.main(verbosity=2)
