#!/usr/bin/env python3
"""Agents, the organisation activity feed and the gateway list for organisation admins
(docs/organizations.md): agent tokens shown once and stored as a slow salted hash, X-Agent-Token
and Bearer, the agent's role and organisation as its limits, revocation, rotation, expiry, the
per-agent rate limit, last_seen_at, and the activity feed's filters and cursor.
SQLite by default; AG_DB=postgres for PostgreSQL."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402


class AgentsTest(h.ControlApiTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = h.start_control(env_extra={"AGENT_RATE_LIMIT": "1000"})

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def agent(self, owner, org, role="member", **extra):
        body = dict({"name": "bot " + h.random_string(4), "role": role}, **extra)
        return self.ok(self.req("POST", "/organizations/%s/agents" % org, body, owner), 201)

    def db_rows(self, sql):
        s = self.server
        return h.db_query(s.db, s.db_path, s.db_url, sql)

    def test_token_is_shown_once_and_stored_as_a_slow_salted_hash(self):
        owner = h.register_user(self.server)
        org = self.org_with(owner)
        a = self.agent(owner, org)
        token = a["token"]
        self.assertTrue(token.startswith("aga_"), token)
        self.assertEqual(len(token), 47)
        self.assertEqual(a["token_prefix"], token[:12])
        self.assertEqual((a["role"], a["status"], a["organization_id"]), ("member", "active", org))
        listed = self.ok(self.req("GET", "/organizations/%s/agents" % org, user=owner))["items"]
        self.assertEqual([x["id"] for x in listed], [a["id"]])
        self.assertNotIn("token", listed[0])
        self.assertNotIn("token", self.ok(self.req("GET", "/organizations/%s/agents/%s" % (org, a["id"]), user=owner)))
        rows = self.db_rows("SELECT token_prefix, token_hash FROM agents WHERE id = '%s'" % a["id"])
        prefix, stored = rows[0]
        self.assertEqual(prefix, token[:12])
        scheme, iterations, salt, digest = stored.split("$")
        self.assertEqual((scheme, iterations), ("pbkdf2-sha256", "200000"))
        self.assertNotIn(token, stored)
        self.assertNotIn(token[4:], stored)
        # Two agents' hashes differ even in form: each has its own salt.
        b = self.agent(owner, org)
        other = self.db_rows("SELECT token_hash FROM agents WHERE id = '%s'" % b["id"])[0][0]
        self.assertNotEqual(other.split("$")[2], salt)
        # The token never reaches the log.
        self.assertNotIn(token, self.server.logs)

    def test_agent_calls_with_either_header_within_its_organization_and_role(self):
        owner = h.register_user(self.server)
        org = self.org_with(owner)
        project = self.ok(self.req("POST", "/projects", {"name": "p", "upstream_base_url": "http://127.0.0.1:9/", "organization_id": org}, owner), 201)
        reader = self.agent(owner, org, "member")["token"]
        writer = self.agent(owner, org, "admin")["token"]
        me = self.ok(self.req("GET", "/agents/me", agent=reader))
        self.assertEqual((me["organization_id"], me["role"]), (org, "member"))
        # X-Agent-Token, and the same token as a Bearer.
        self.assertEqual(self.ok(self.req("GET", "/projects/" + project["id"], agent=reader))["id"], project["id"])
        bearer = self.server.request("GET", "/projects/" + project["id"], token=reader)
        self.assertEqual(self.ok(bearer)["id"], project["id"])
        self.assertEqual([p["id"] for p in self.ok(self.req("GET", "/projects", agent=reader))], [project["id"]])
        self.assertEqual(self.ok(self.req("GET", "/organizations/" + org, agent=reader))["role"], "member")
        # A member agent reads but does not change; an admin agent changes.
        self.refused(self.req("POST", "/projects/%s/keys" % project["id"], {}, agent=reader), 403)
        key = self.ok(self.req("POST", "/projects/%s/keys" % project["id"], {}, agent=writer), 201)
        self.assertTrue(key["id"])
        # Managing the organisation is a person's job: agent tokens are not taken there.
        for method, path, body in (("POST", "/organizations/%s/invites" % org, {"email": h.unique_email()}),
                                   ("POST", "/organizations/%s/agents" % org, {"name": "x"}),
                                   ("PATCH", "/organizations/" + org, {"name": "renamed"}),
                                   ("GET", "/users/me", None), ("POST", "/projects", {"name": "q", "upstream_base_url": "http://127.0.0.1:9/"})):
            self.refused(self.req(method, path, body, agent=writer), 401)
        # /agents/me is for agents only.
        self.refused(self.req("GET", "/agents/me", user=owner), 401)
        # Two credentials at once are refused, not guessed between.
        self.refused(self.server.request("GET", "/projects/" + project["id"], token=owner.token,
                                         headers={"X-Agent-Token": reader}), 400)

    def test_other_organizations_do_not_exist_for_an_agent(self):
        owner, stranger = h.register_user(self.server), h.register_user(self.server)
        org, theirs = self.org_with(owner), self.org_with(stranger)
        their_project = self.ok(self.req("POST", "/projects", {"name": "t", "upstream_base_url": "http://127.0.0.1:9/", "organization_id": theirs}, stranger), 201)
        token = self.agent(owner, org, "admin")["token"]
        for method, path in (("GET", "/projects/" + their_project["id"]), ("GET", "/projects/%s/keys" % their_project["id"]),
                             ("DELETE", "/projects/" + their_project["id"]), ("GET", "/organizations/" + theirs),
                             ("GET", "/organizations/%s/activity" % theirs), ("GET", "/organizations/%s/metrics" % theirs),
                             ("GET", "/projects/%s/metrics" % their_project["id"]), ("GET", "/organizations/%s/gateways" % theirs)):
            self.refused(self.req(method, path, agent=token), 404)
        self.assertEqual(self.ok(self.req("GET", "/projects?organization_id=" + org, agent=token)), [])
        self.refused(self.req("GET", "/projects?organization_id=" + theirs, agent=token), 404)
        # The other organisation's project is still there.
        self.ok(self.req("GET", "/projects/" + their_project["id"], user=stranger))

    def test_revoke_rotate_and_expiry(self):
        owner = h.register_user(self.server)
        org = self.org_with(owner)
        a = self.agent(owner, org)
        old = a["token"]
        self.ok(self.req("GET", "/agents/me", agent=old))
        rotated = self.ok(self.req("POST", "/organizations/%s/agents/%s/rotate" % (org, a["id"]), user=owner))
        self.assertNotEqual(rotated["token"], old)
        self.assertIsNotNone(rotated["rotated_at"])
        self.refused(self.req("GET", "/agents/me", agent=old), 401)
        self.ok(self.req("GET", "/agents/me", agent=rotated["token"]))
        self.ok(self.req("DELETE", "/organizations/%s/agents/%s" % (org, a["id"]), user=owner), 204)
        body = self.refused(self.req("GET", "/agents/me", agent=rotated["token"]), 401)
        self.assertIn("revoked", body["detail"])
        self.assertEqual(self.ok(self.req("GET", "/organizations/%s/agents/%s" % (org, a["id"]), user=owner))["status"], "revoked")
        self.refused(self.req("POST", "/organizations/%s/agents/%s/rotate" % (org, a["id"]), user=owner), 409, "agent_revoked")
        # Expiry: an agent whose time has passed is refused.
        e = self.agent(owner, org, expires_in_days=1)
        self.assertIsNotNone(e["expires_at"])
        self.ok(self.req("GET", "/agents/me", agent=e["token"]))
        s = self.server
        h.db_execute(s.db, s.db_path, s.db_url, "UPDATE agents SET expires_at = 1000 WHERE id = '%s'" % e["id"])
        self.assertIn("expired", self.refused(self.req("GET", "/agents/me", agent=e["token"]), 401)["detail"])
        # Malformed and unknown tokens.
        for bad in ("aga_short", "aga_" + "A" * 43, "not-a-token", a["token"][:-1] + ("A" if a["token"][-1] != "A" else "B")):
            self.refused(self.req("GET", "/agents/me", agent=bad), 401)

    def test_roles_agents_may_be_given(self):
        owner, admin, member = (h.register_user(self.server) for _ in range(3))
        org = self.org_with(owner, admin=(admin, "admin"), member=(member, "member"))
        self.refused(self.req("POST", "/organizations/%s/agents" % org, {"name": "x", "role": "owner"}, owner), 422)
        self.agent(admin, org, "admin")
        self.refused(self.req("POST", "/organizations/%s/agents" % org, {"name": "x"}, member), 403)
        self.refused(self.req("GET", "/organizations/%s/agents" % org, user=member), 403)
        self.refused(self.req("POST", "/organizations/%s/agents" % org, {"name": "x", "bogus": 1}, owner), 422)
        self.refused(self.req("POST", "/organizations/%s/agents" % org, {"name": "x", "expires_in_days": 0}, owner), 422)

    def test_last_seen_is_recorded(self):
        owner = h.register_user(self.server)
        org = self.org_with(owner)
        a = self.agent(owner, org)
        self.assertIsNone(a["last_seen_at"])
        self.ok(self.req("GET", "/agents/me", agent=a["token"]))
        seen = self.ok(self.req("GET", "/organizations/%s/agents/%s" % (org, a["id"]), user=owner))["last_seen_at"]
        self.assertIsNotNone(seen)
        # Touched at most every 30 s: a second call at once leaves it.
        self.ok(self.req("GET", "/agents/me", agent=a["token"]))
        self.assertEqual(self.ok(self.req("GET", "/organizations/%s/agents/%s" % (org, a["id"]), user=owner))["last_seen_at"], seen)

    def test_activity_feed(self):
        owner, member, stranger = (h.register_user(self.server) for _ in range(3))
        org = self.org_with(owner, member=(member, "member"))
        other = self.org_with(stranger)
        p = self.ok(self.req("POST", "/projects", {"name": "a", "upstream_base_url": "http://127.0.0.1:9/", "organization_id": org}, owner), 201)
        q = self.ok(self.req("POST", "/projects", {"name": "b", "upstream_base_url": "http://127.0.0.1:9/", "organization_id": org}, owner), 201)
        self.ok(self.req("POST", "/projects", {"name": "c", "upstream_base_url": "http://127.0.0.1:9/", "organization_id": other}, stranger), 201)
        bot = self.agent(owner, org, "admin")
        for _ in range(3):
            self.ok(self.req("POST", "/projects/%s/keys" % p["id"], {}, agent=bot["token"]), 201)
        self.ok(self.req("POST", "/projects/%s/keys" % q["id"], {}, owner), 201)
        feed = self.ok(self.req("GET", "/organizations/%s/activity" % org, user=member))
        actions = [e["action"] for e in feed["items"]]
        # Four keys made (each further key in a project rotates the one before it: two rotations).
        self.assertEqual((actions.count("key.create"), actions.count("key.rotate")), (4, 2))
        self.assertIn("agent.create", actions)
        self.assertIn("organization.invite_accept", actions)
        self.assertIn("organization.create", actions)
        newest = feed["items"][0]
        self.assertEqual(newest["actor"], {"type": "user", "id": owner.id, "name": newest["actor"]["name"]})
        self.assertEqual(newest["project_id"], q["id"])
        by_agent = self.ok(self.req("GET", "/organizations/%s/activity?actor_type=agent" % org, user=member))["items"]
        self.assertEqual([e["action"] for e in by_agent if e["action"] == "key.create"], ["key.create"] * 3)
        self.assertTrue(all(e["actor"] == {"type": "agent", "id": bot["id"], "name": bot["name"]} for e in by_agent))
        self.assertEqual(len(self.ok(self.req("GET", "/organizations/%s/activity?actor_id=%s" % (org, bot["id"]), user=owner))["items"]), len(by_agent))
        self.assertEqual({e["project_id"] for e in self.ok(self.req("GET", "/organizations/%s/activity?project_id=%s" % (org, p["id"]), user=owner))["items"]}, {p["id"]})
        keys = self.ok(self.req("GET", "/organizations/%s/activity?action=key.*" % org, user=owner))["items"]
        self.assertEqual(len(keys), len([a for a in actions if a.startswith("key.")]))
        self.assertEqual(len(self.ok(self.req("GET", "/organizations/%s/activity?action=key.create" % org, user=owner))["items"]), 4)
        # Nothing of the other organisation, and nothing here for its member.
        self.assertNotIn("c", [e.get("detail", {}).get("name") for e in feed["items"] if isinstance(e.get("detail"), dict)])
        self.refused(self.req("GET", "/organizations/%s/activity" % org, user=stranger), 404)
        # The agent reads its organisation's feed too.
        self.assertEqual(self.ok(self.req("GET", "/organizations/%s/activity?limit=1" % org, agent=bot["token"]))["items"][0]["id"], newest["id"])
        # Cursor pages: every entry once, newest first.
        seen, cursor = [], None
        while True:
            path = "/organizations/%s/activity?limit=2" % org + ("&cursor=" + cursor if cursor else "")
            page = self.ok(self.req("GET", path, user=owner))
            self.assertLessEqual(len(page["items"]), 2)
            seen += [e["id"] for e in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        self.assertEqual(seen, [e["id"] for e in feed["items"]])
        self.assertEqual(seen, sorted(seen, reverse=True))
        # Time filters.
        future = h.rfc3339(time.time() + 3600)
        self.assertEqual(self.ok(self.req("GET", "/organizations/%s/activity?since=%s" % (org, future), user=owner))["items"], [])
        self.assertEqual(len(self.ok(self.req("GET", "/organizations/%s/activity?until=%s" % (org, future), user=owner))["items"]), len(seen))
        # Bad filters are named.
        for query, field in (("limit=0", "limit"), ("since=yesterday", "since"), ("cursor=!!", "cursor"),
                             ("actor_type=robot", "actor_type"), ("colour=blue", "colour")):
            body = self.refused(self.req("GET", "/organizations/%s/activity?%s" % (org, query), user=owner), 422)
            self.assertIn(field, str(body["detail"]))

    def test_gateways_for_organization_admins(self):
        owner, member = h.register_user(self.server), h.register_user(self.server)
        org = self.org_with(owner, member=(member, "member"))
        # A worker's heartbeat (its config poll) puts it in the registry.
        self.server.request("GET", "/internal/worker/config?worker_id=w-%s&address=10.0.0.7:8080&uptime=5&requests=42" % h.random_string(4),
                            headers={"x-worker-secret": self.server.worker_secret})
        listed = self.ok(self.req("GET", "/organizations/%s/gateways" % org, user=owner))
        self.assertTrue(listed["gateways"])
        g = listed["gateways"][0]
        for field in ("id", "version_applied", "lag", "live", "last_seen", "uptime_sec"):
            self.assertIn(field, g)
        self.assertNotIn("address", g)
        self.assertNotIn("requests", g)
        self.refused(self.req("GET", "/organizations/%s/gateways" % org, user=member), 403)
        self.ok(self.req("GET", "/organizations/%s/gateways" % org, agent=self.agent(owner, org, "admin")["token"]))
        self.refused(self.req("GET", "/organizations/%s/gateways" % org, agent=self.agent(owner, org, "member")["token"]), 403)


class AgentRateLimitTest(unittest.TestCase):
    def test_agent_calls_are_rate_limited_per_agent(self):
        server = h.start_control(env_extra={"AGENT_RATE_LIMIT": "5", "AGENT_RATE_WINDOW_SEC": "60"})
        try:
            owner = h.register_user(server)
            org = server.request("POST", "/organizations", {"name": "Rate"}, token=owner.token).json()["id"]
            tokens = [server.request("POST", "/organizations/%s/agents" % org, {"name": "a%d" % i}, token=owner.token).json()["token"]
                      for i in range(2)]
            statuses = [server.request("GET", "/agents/me", headers={"X-Agent-Token": tokens[0]}).status for _ in range(7)]
            self.assertEqual(statuses, [200] * 5 + [429] * 2)
            limited = server.request("GET", "/agents/me", headers={"X-Agent-Token": tokens[0]})
            self.assertEqual(limited.status, 429)
            self.assertGreater(int(limited.headers["Retry-After"]), 0)
            self.assertEqual(limited.json()["request_id"], limited.headers["X-Request-Id"])
            # Another agent has its own budget, and users are not limited by it.
            self.assertEqual(server.request("GET", "/agents/me", headers={"X-Agent-Token": tokens[1]}).status, 200)
            self.assertEqual(server.request("GET", "/organizations/" + org, token=owner.token).status, 200)
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
