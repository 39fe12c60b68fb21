"""Calls of the control API that set up a test: users, logins, projects, API keys."""

import string
import unittest

from .common import random_string


def unique_email(prefix="user"):
    return "%s.%s@example.com" % (prefix, random_string(10, string.ascii_lowercase + string.digits))


class User:
    def __init__(self, email, password, tokens):
        self.email = email
        self.password = password
        self.tokens = tokens

    @property
    def token(self):
        return self.tokens["access_token"]

    @property
    def refresh_token(self):
        return self.tokens["refresh_token"]

    @property
    def id(self):
        return self.tokens["user"]["id"]


def register_user(server, email=None, password=None, name=None):
    """Registers a fresh user (registration also logs in) and returns a User."""
    email = email or unique_email()
    password = password or ("pw-" + random_string(20))
    body = {"email": email, "password": password}
    if name is not None:
        body["name"] = name
    resp = server.request("POST", "/auth/register", body)
    if resp.status != 201:
        raise AssertionError("register failed: %r" % resp)
    return User(email, password, resp.json())


def login(server, email, password):
    resp = server.request("POST", "/auth/login", {"email": email, "password": password})
    if resp.status != 200:
        raise AssertionError("login failed: %r" % resp)
    return resp.json()


def new_token(server):
    """Registers a fresh user, logs it in, and returns the login's access token."""
    user = register_user(server)
    return login(server, user.email, user.password)["access_token"]


def create_project(server, token, name=None, upstream="http://127.0.0.1:9000/api", **fields):
    body = {"name": name or ("proj-" + random_string(8)), "upstream_base_url": upstream}
    body.update(fields)
    resp = server.request("POST", "/projects", body, token=token)
    if resp.status != 201:
        raise AssertionError("project create failed: %r" % resp)
    return resp.json()


def create_key(server, token, project_id, **body):
    resp = server.request("POST", "/projects/%s/keys" % project_id, body, token=token)
    if resp.status != 201:
        raise AssertionError("key create failed: %r" % resp)
    return resp.json()


def find_project(config, project_id):
    for project in config["projects"]:
        if project["id"] == project_id:
            return project
    return None


class ControlApiTestCase(unittest.TestCase):
    """Assertions and set-up shared by the control-API suites; the subclass starts `cls.server`."""

    server = None

    def req(self, method, path, body=None, user=None, agent=None, headers=None):
        """A request as `user` (Bearer) or `agent` (X-Agent-Token), or as nobody."""
        headers = dict(headers or {})
        if agent:
            headers["X-Agent-Token"] = agent
        return self.server.request(method, path, body, token=user.token if user else None, headers=headers)

    def ok(self, resp, status=200):
        self.assertEqual(resp.status, status, resp)
        return resp.json() if resp.body else None

    def refused(self, resp, status, code=None):
        """A refusal: the status, a {"detail", "request_id"} body matching X-Request-Id, and `code`."""
        self.assertEqual(resp.status, status, resp)
        body = resp.json()
        self.assertTrue(body["detail"])
        self.assertEqual(body["request_id"], resp.headers["X-Request-Id"])
        if code:
            self.assertEqual(body.get("code"), code, resp)
        return body

    def org_with(self, owner, **members):
        """An organisation of `owner` with each user in `members` (name -> (User, role)) joined."""
        org = self.ok(self.req("POST", "/organizations", {"name": "Team " + random_string(5)}, owner), 201)
        for user, role in members.values():
            inv = self.ok(self.req("POST", "/organizations/%s/invites" % org["id"], {"email": user.email, "role": role}, owner), 201)
            self.ok(self.req("POST", "/invites/accept", {"token": inv["token"]}, user))
        return org["id"]
