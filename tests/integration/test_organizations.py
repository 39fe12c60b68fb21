#!/usr/bin/env python3
"""Organisations (docs/organizations.md): personal organisations, organisations with members and
roles, invites by email (the round trip with the link's token), the role-granting policy, the
last-owner and personal-organisation invariants, and /users/me with the active organisation.
SQLite by default; AG_DB=postgres for PostgreSQL."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402


class OrganizationsTest(h.ControlApiTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = h.start_control()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_every_account_has_a_personal_organization(self):
        user = h.register_user(self.server)
        me = self.ok(self.req("GET", "/users/me", user=user))
        self.assertEqual(me["active_organization_id"], user.id)
        self.assertEqual([(o["id"], o["personal"], o["role"]) for o in me["organizations"]], [(user.id, True, "owner")])
        self.refused(self.req("DELETE", "/organizations/" + user.id, user=user), 409, "personal_organization")
        self.refused(self.req("POST", "/organizations/%s/leave" % user.id, user=user), 409, "personal_organization")
        self.refused(self.req("POST", "/organizations/%s/invites" % user.id, {"email": h.unique_email()}, user), 409,
                     "personal_organization")

    def test_invite_round_trip(self):
        owner, invitee, stranger = (h.register_user(self.server) for _ in range(3))
        org = self.org_with(owner)
        inv = self.ok(self.req("POST", "/organizations/%s/invites" % org, {"email": invitee.email.upper(), "role": "admin"}, owner), 201)
        self.assertEqual((inv["email"], inv["role"], inv["status"]), (invitee.email, "admin", "pending"))
        self.assertIn("/login?invite=" + inv["token"], inv["link"])
        listed = self.ok(self.req("GET", "/organizations/%s/invites" % org, user=owner))["items"]
        self.assertEqual([i["id"] for i in listed], [inv["id"]])
        self.assertNotIn("token", listed[0])
        # Another user cannot take it; the invitee can, once.
        self.refused(self.req("POST", "/invites/accept", {"token": inv["token"]}, stranger), 403)
        joined = self.ok(self.req("POST", "/invites/accept", {"token": inv["token"]}, invitee))
        self.assertEqual((joined["id"], joined["role"]), (org, "admin"))
        self.refused(self.req("POST", "/invites/accept", {"token": inv["token"]}, invitee), 404)
        roles = {m["email"]: m["role"] for m in self.ok(self.req("GET", "/organizations/%s/members" % org, user=invitee))["items"]}
        self.assertEqual(roles, {owner.email: "owner", invitee.email: "admin"})
        # Declined and revoked invites cannot be used.
        second = h.register_user(self.server)
        inv2 = self.ok(self.req("POST", "/organizations/%s/invites" % org, {"email": second.email}, owner), 201)
        self.assertEqual(self.req("POST", "/invites/decline", {"token": inv2["token"]}, second).status, 204)
        self.refused(self.req("POST", "/invites/accept", {"token": inv2["token"]}, second), 404)
        inv3 = self.ok(self.req("POST", "/organizations/%s/invites" % org, {"email": second.email}, owner), 201)
        self.assertEqual(self.req("DELETE", "/organizations/%s/invites/%s" % (org, inv3["id"]), user=owner).status, 204)
        self.refused(self.req("POST", "/invites/accept", {"token": inv3["token"]}, second), 404)
        self.refused(self.req("POST", "/organizations/%s/invites" % org, {"email": invitee.email}, owner), 409, "already_member")
        # The invite link's secret is not stored.
        self.assertNotIn(inv["token"].encode(), self.server.database_bytes())

    def test_roles_and_what_each_may_do(self):
        owner, admin, member, outsider = (h.register_user(self.server) for _ in range(4))
        org = self.org_with(owner, a=(admin, "admin"), m=(member, "member"))
        path = "/organizations/" + org
        # Reading: every member; nobody else can tell the organisation exists.
        for user in (owner, admin, member):
            self.assertEqual(self.ok(self.req("GET", path, user=user))["id"], org)
        self.refused(self.req("GET", path, user=outsider), 404)
        self.refused(self.req("GET", "/organizations/" + h.random_string(8), user=owner), 404)
        # Changing: admins and owners.
        self.refused(self.req("PATCH", path, {"name": "New name"}, member), 403)
        self.assertEqual(self.ok(self.req("PATCH", path, {"name": "New name"}, admin))["name"], "New name")
        self.refused(self.req("POST", path + "/invites", {"email": h.unique_email()}, member), 403)
        # Granting: up to one's own role; only an owner touches owners.
        self.refused(self.req("POST", path + "/invites", {"email": h.unique_email(), "role": "owner"}, admin), 403)
        self.refused(self.req("PATCH", path + "/members/" + owner.id, {"role": "member"}, admin), 403)
        self.refused(self.req("DELETE", path + "/members/" + owner.id, user=admin), 403)
        self.ok(self.req("PATCH", path + "/members/" + member.id, {"role": "admin"}, admin))
        self.ok(self.req("PATCH", path + "/members/" + member.id, {"role": "member"}, owner))
        self.refused(self.req("PATCH", path + "/members/" + member.id, {"role": "emperor"}, owner), 422)
        # The last owner stays.
        self.refused(self.req("PATCH", path + "/members/" + owner.id, {"role": "admin"}, owner), 409, "last_owner")
        self.refused(self.req("POST", path + "/leave", user=owner), 409, "last_owner")
        self.ok(self.req("PATCH", path + "/members/" + admin.id, {"role": "owner"}, owner))
        self.assertEqual(self.req("POST", path + "/leave", user=owner).status, 204)
        self.refused(self.req("GET", path, user=owner), 404)
        # Removal, and deletion by an owner only.
        self.assertEqual(self.req("DELETE", path + "/members/" + member.id, user=admin).status, 204)
        self.refused(self.req("GET", path, user=member), 404)
        self.refused(self.req("DELETE", path, user=h.register_user(self.server)), 404)
        self.assertEqual(self.req("DELETE", path, user=admin).status, 204)
        self.refused(self.req("GET", path, user=admin), 404)

    def test_projects_belong_to_organizations(self):
        owner, admin, member, outsider = (h.register_user(self.server) for _ in range(4))
        org = self.org_with(owner, a=(admin, "admin"), m=(member, "member"))
        # Created in the organisation named (admins and owners only), or the active one.
        self.refused(self.req("POST", "/projects", {"name": "api", "upstream_base_url": "http://127.0.0.1:9/",
                                                    "organization_id": org}, member), 403)
        project = self.ok(self.req("POST", "/projects", {"name": "api", "upstream_base_url": "http://127.0.0.1:9/",
                                                         "organization_id": org}, admin), 201)
        self.assertEqual(project["organization_id"], org)
        self.refused(self.req("POST", "/projects", {"name": "api", "upstream_base_url": "http://127.0.0.1:9/",
                                                    "organization_id": org}, owner), 409)
        self.refused(self.req("POST", "/projects", {"name": "x", "upstream_base_url": "http://127.0.0.1:9/",
                                                    "organization_id": org}, outsider), 404)
        personal = self.ok(self.req("POST", "/projects", {"name": "mine", "upstream_base_url": "http://127.0.0.1:9/"}, member), 201)
        self.assertEqual(personal["organization_id"], member.id)
        # Every member reads; admins and owners change; nobody else can tell it exists.
        path = "/projects/" + project["id"]
        for user in (owner, admin, member):
            self.assertEqual(self.ok(self.req("GET", path, user=user))["id"], project["id"])
            self.ok(self.req("GET", path + "/keys", user=user))
        self.refused(self.req("PATCH", path, {"name": "renamed"}, member), 403)
        self.refused(self.req("POST", path + "/keys", {}, member), 403)
        key = self.ok(self.req("POST", path + "/keys", {}, admin), 201)
        self.refused(self.req("DELETE", path + "/keys/" + key["id"], user=member), 403)
        self.ok(self.req("PATCH", path, {"name": "renamed"}, owner))
        for method, sub in (("GET", ""), ("PATCH", ""), ("GET", "/keys"), ("POST", "/keys"), ("GET", "/services"),
                            ("GET", "/tokens"), ("DELETE", "")):
            self.refused(self.req(method, path + sub, {} if method in ("POST", "PATCH") else None, outsider), 404)
        listed = {p["id"] for p in self.ok(self.req("GET", "/projects", user=member))}
        self.assertEqual(listed, {project["id"], personal["id"]})
        only = self.ok(self.req("GET", "/projects?organization_id=" + org, user=member))
        self.assertEqual([p["id"] for p in only], [project["id"]])
        self.refused(self.req("GET", "/projects?organization_id=" + org, user=outsider), 404)
        self.assertEqual(self.ok(self.req("GET", "/projects", user=outsider)), [])
        # An organisation with projects is not deleted; leaving loses access.
        self.refused(self.req("DELETE", "/organizations/" + org, user=owner), 409, "organization_not_empty")
        self.assertEqual(self.req("POST", "/organizations/%s/leave" % org, user=member).status, 204)
        self.refused(self.req("GET", path, user=member), 404)

    def test_active_organization(self):
        owner, member = h.register_user(self.server), h.register_user(self.server)
        org = self.org_with(owner, m=(member, "member"))
        me = self.ok(self.req("PATCH", "/users/me", {"active_organization_id": org}, member))
        self.assertEqual(me["active_organization_id"], org)
        self.assertEqual(sorted(o["role"] for o in me["organizations"]), ["member", "owner"])
        other = self.org_with(h.register_user(self.server))
        self.refused(self.req("PATCH", "/users/me", {"active_organization_id": other}, member), 404)
        # Leaving the active organisation falls back to the personal one.
        self.assertEqual(self.req("POST", "/organizations/%s/leave" % org, user=member).status, 204)
        self.assertEqual(self.ok(self.req("GET", "/users/me", user=member))["active_organization_id"], member.id)
        self.ok(self.req("PATCH", "/users/me", {"name": "Renamed"}, member))
        self.assertEqual(self.ok(self.req("GET", "/users/me", user=member))["name"], "Renamed")


if __name__ == "__main__":
    unittest.main(verbosity=2)
