"""Calls of the control API that set up a test: users, logins, projects, API keys."""

import string

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
