// /organizations (members, roles, invites) and /users/me (docs/organizations.md). Every route's
// rule is declared where it is registered (routes.hpp); the one policy beyond a rule — who may
// grant which role — is routes.hpp's require_can_grant.
//
// Invariants kept in the transaction that could break them: an organisation always keeps an
// owner; a personal organisation is never left, deleted or shared.
#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/routes.hpp"
#include "control/api/sessions.hpp"
#include "control/service/validation.hpp"

#include <spdlog/spdlog.h>

namespace ag::control {

namespace {

constexpr std::int64_t kInviteTtlMs = 7LL * 24 * 3600 * 1000;

[[noreturn]] void conflict(std::string_view code, std::string detail) { throw coded_error(409, code, std::move(detail)); }

json org_json(const store::Row& row, std::size_t at) {
  // id, name, personal, created_at[, role]
  json j = {{"id", row.text(at)},
            {"name", row.text(at + 1)},
            {"personal", row.integer(at + 2) != 0},
            {"created_at", iso_time(row.integer(at + 3))}};
  return j;
}

// The organisations `user_id` belongs to, with the role, the personal one first.
json organizations_of(store::Connection& c, const std::string& user_id) {
  json items = json::array();
  auto r = c.exec(
      "SELECT o.id, o.name, o.personal, o.created_at, m.role FROM memberships m JOIN organizations o ON o.id = m.org_id "
      "WHERE m.user_id = $1 ORDER BY o.personal DESC, o.seq",
      {user_id});
  for (const auto& row : r.rows) {
    json j = org_json(row, 0);
    j["role"] = row.text(4);
    items.push_back(j);
  }
  return items;
}

std::string org_name(const json& body, bool required) {
  auto name = get_string(body, "name");
  if (!name) {
    if (required) throw validation_error("name", "field required");
    return {};
  }
  if (auto e = check_name(*name); !e.empty()) throw validation_error("name", e);
  return *name;
}

Role role_field(const json& body) {
  auto r = get_string(body, "role");
  if (!r) throw validation_error("role", "field required");
  auto role = parse_role(*r);
  if (!role) throw validation_error("role", "must be member, admin or owner");
  return *role;
}

std::int64_t owners(store::Connection& c, const std::string& org_id) {
  return c.exec("SELECT COUNT(*) FROM memberships WHERE org_id = $1 AND role = 'owner'", {org_id}).rows[0].integer(0);
}

http::Response create(AppState& app, const Call& call) {
  json body = parse_object_body(call.req);
  reject_unknown_fields(body, {"name"});
  std::string name = org_name(body, true);
  std::string id = crypto::uuid_v4();
  std::int64_t now = now_ms();
  app.db->transaction([&](store::Connection& c) {
    c.exec("INSERT INTO organizations (id, name, personal, created_at) VALUES ($1, $2, 0, $3)", {id, name, now});
    c.exec("INSERT INTO memberships (org_id, user_id, role, created_at) VALUES ($1, $2, 'owner', $3)",
           {id, call.user->user_id, now});
    AuditContext who = audit_context(call);
    who.org_id = id;
    audit(c, who, "organization.create", "organization", id, {{"name", name}});
  });
  return json_response(201, {{"id", id}, {"name", name}, {"personal", false}, {"created_at", iso_time(now)}, {"role", "owner"}});
}

http::Response list(AppState& app, const Call& call) {
  json items;
  app.db->with_connection([&](store::Connection& c) { items = organizations_of(c, call.user->user_id); });
  return json_response(200, {{"items", items}});
}

json one(AppState& app, const Call& call) {
  json out;
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec("SELECT id, name, personal, created_at FROM organizations WHERE id = $1", {call.param("id")});
    out = org_json(r.rows.at(0), 0);
  });
  out["role"] = role_name(*call.org_role);
  return out;
}

http::Response get(AppState& app, const Call& call) { return json_response(200, one(app, call)); }

http::Response update(AppState& app, const Call& call) {
  json body = parse_object_body(call.req);
  reject_unknown_fields(body, {"name"});
  std::string name = org_name(body, false);
  if (!name.empty())
    app.db->transaction([&](store::Connection& c) {
      c.exec("UPDATE organizations SET name = $1 WHERE id = $2", {name, call.param("id")});
      audit(c, call, "organization.update", "organization", call.param("id"), {{"name", name}});
    });
  return json_response(200, one(app, call));
}

http::Response remove(AppState& app, const Call& call) {
  const std::string& id = call.param("id");
  app.db->transaction([&](store::Connection& c) {
    if (c.exec("SELECT personal FROM organizations WHERE id = $1", {id}).rows.at(0).integer(0) != 0)
      conflict("personal_organization", "A personal organization cannot be deleted");
    if (!c.exec("SELECT 1 FROM projects WHERE org_id = $1 LIMIT 1", {id}).empty())
      conflict("organization_not_empty", "Delete or move the organization's projects first");
    c.exec("UPDATE users SET active_org_id = id WHERE active_org_id = $1", {id});
    c.exec("DELETE FROM agents WHERE org_id = $1", {id});
    c.exec("DELETE FROM organizations WHERE id = $1", {id});
    audit(c, call, "organization.delete", "organization", id);
  });
  return no_content();
}

http::Response members(AppState& app, const Call& call) {
  json items = json::array();
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec(
        "SELECT u.id, u.email, u.name, m.role, m.created_at FROM memberships m JOIN users u ON u.id = m.user_id "
        "WHERE m.org_id = $1 ORDER BY m.created_at, u.id",
        {call.param("id")});
    for (const auto& row : r.rows)
      items.push_back({{"user_id", row.text(0)}, {"email", row.text(1)}, {"name", row.text(2)}, {"role", row.text(3)},
                       {"joined_at", iso_time(row.integer(4))}});
  });
  return json_response(200, {{"items", items}});
}

// The member `{user_id}` of `{id}` and their role; 404 when not a member.
Role member_role(store::Connection& c, const Call& call) {
  auto r = c.exec("SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2", {call.param("id"), call.param("user_id")});
  if (r.empty()) throw ApiError(404, "Member not found");
  return parse_role(r.rows[0].text(0)).value_or(Role::kMember);
}

http::Response set_role(AppState& app, const Call& call) {
  json body = parse_object_body(call.req);
  reject_unknown_fields(body, {"role"});
  Role wanted = role_field(body);
  app.db->transaction([&](store::Connection& c) {
    Role current = member_role(c, call);
    require_can_grant(call, wanted, current);
    if (current == Role::kOwner && wanted != Role::kOwner && owners(c, call.param("id")) <= 1)
      conflict("last_owner", "An organization keeps at least one owner");
    c.exec("UPDATE memberships SET role = $1 WHERE org_id = $2 AND user_id = $3",
           {std::string(role_name(wanted)), call.param("id"), call.param("user_id")});
    audit(c, call, "organization.member_role", "user", call.param("user_id"),
          {{"organization", call.param("id")}, {"role", role_name(wanted)}});
  });
  return json_response(200, {{"user_id", call.param("user_id")}, {"role", role_name(wanted)}});
}

// Takes `user_id` out of `org_id` (removal by an admin, or leaving).
void drop_member(store::Connection& c, const Call& call, const std::string& org_id, const std::string& user_id, Role role,
                 std::string_view action) {
  if (c.exec("SELECT personal FROM organizations WHERE id = $1", {org_id}).rows.at(0).integer(0) != 0)
    conflict("personal_organization", "No one leaves a personal organization");
  if (role == Role::kOwner && owners(c, org_id) <= 1) conflict("last_owner", "An organization keeps at least one owner");
  c.exec("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2", {org_id, user_id});
  c.exec("UPDATE users SET active_org_id = id WHERE id = $1 AND active_org_id = $2", {user_id, org_id});
  audit(c, call, action, "user", user_id, {{"organization", org_id}});
}

http::Response remove_member(AppState& app, const Call& call) {
  app.db->transaction([&](store::Connection& c) {
    Role current = member_role(c, call);
    require_can_grant(call, current, current);
    drop_member(c, call, call.param("id"), call.param("user_id"), current, "organization.member_remove");
  });
  return no_content();
}

http::Response leave(AppState& app, const Call& call) {
  app.db->transaction([&](store::Connection& c) {
    drop_member(c, call, call.param("id"), call.user->user_id, *call.org_role, "organization.leave");
  });
  return no_content();
}

json invite_json(const store::Row& row) {
  // id, email, role, status, created_at, expires_at
  return {{"id", row.text(0)},        {"email", row.text(1)},
          {"role", row.text(2)},      {"status", row.text(3)},
          {"created_at", iso_time(row.integer(4))}, {"expires_at", iso_time(row.integer(5))}};
}

http::Response invite(AppState& app, const Call& call) {
  json body = parse_object_body(call.req);
  reject_unknown_fields(body, {"email", "role"});
  std::string email = lower_ascii(require_string(body, "email"));
  if (auto e = check_email(email); !e.empty()) throw validation_error("email", e);
  Role role = body.contains("role") ? role_field(body) : Role::kMember;
  require_can_grant(call, role, std::nullopt);
  std::string token = "agi_" + crypto::random_base62(43);
  std::string id = crypto::uuid_v4();
  std::int64_t now = now_ms();
  app.db->transaction([&](store::Connection& c) {
    if (c.exec("SELECT personal FROM organizations WHERE id = $1", {call.param("id")}).rows.at(0).integer(0) != 0)
      conflict("personal_organization", "A personal organization has no other members; create an organization to invite people");
    if (!c.exec("SELECT 1 FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 AND u.email = $2",
                {call.param("id"), email})
             .empty())
      conflict("already_member", "This email is already a member");
    c.exec("UPDATE invites SET status = 'revoked', decided_at = $1 WHERE org_id = $2 AND email = $3 AND status = 'pending'",
           {now, call.param("id"), email});
    c.exec(
        "INSERT INTO invites (id, org_id, email, role, token_hash, invited_by, status, created_at, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)",
        {id, call.param("id"), email, std::string(role_name(role)), crypto::sha256_hex(token), call.user->user_id, now,
         now + kInviteTtlMs});
    audit(c, call, "organization.invite", "invite", id,
          {{"organization", call.param("id")}, {"email", email}, {"role", role_name(role)}});
  });
  std::string link = public_base(app, call.req) + "/login?invite=" + token;
  if (app.settings.invite_delivery_log)  // INVITE_DELIVERY=log: the link (a bearer secret) goes to the log
    spdlog::info("invite {} to {} for organization {}: {}", id, email, call.param("id"), link);
  return json_response(201, {{"id", id},
                             {"email", email},
                             {"role", role_name(role)},
                             {"status", "pending"},
                             {"created_at", iso_time(now)},
                             {"expires_at", iso_time(now + kInviteTtlMs)},
                             {"token", token},
                             {"link", link}});
}

http::Response invites(AppState& app, const Call& call) {
  json items = json::array();
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec("SELECT id, email, role, status, created_at, expires_at FROM invites WHERE org_id = $1 ORDER BY created_at DESC, id",
                    {call.param("id")});
    for (const auto& row : r.rows) items.push_back(invite_json(row));
  });
  return json_response(200, {{"items", items}});
}

http::Response revoke_invite(AppState& app, const Call& call) {
  bool done = false;
  app.db->transaction([&](store::Connection& c) {
    done = c.exec("UPDATE invites SET status = 'revoked', decided_at = $1 WHERE id = $2 AND org_id = $3 AND status = 'pending'",
                  {now_ms(), call.param("invite_id"), call.param("id")})
               .affected == 1;
    if (done) audit(c, call, "organization.invite_revoke", "invite", call.param("invite_id"));
  });
  if (!done) throw ApiError(404, "Pending invite not found");
  return no_content();
}

// Accepts or declines the invite named by `{token}` in the body, for the signed-in user whose
// email it was sent to.
http::Response answer(AppState& app, const Call& call, bool accept) {
  json body = parse_object_body(call.req);
  reject_unknown_fields(body, {"token"});
  std::string token = require_string(body, "token");
  json out;
  app.db->transaction([&](store::Connection& c) {
    std::int64_t now = now_ms();
    auto r = c.exec("SELECT id, org_id, email, role, status, expires_at FROM invites WHERE token_hash = $1",
                    {token.size() <= 128 ? crypto::sha256_hex(token) : std::string()});
    if (r.empty() || r.rows[0].text(4) != "pending" || r.rows[0].integer(5) <= now)
      throw ApiError(404, "Unknown, used or expired invite");
    const auto& row = r.rows[0];
    if (lower_ascii(row.text(2)) != lower_ascii(call.user->email))
      throw ApiError(403, "This invite was sent to another email address");
    std::string id = row.text(0), org = row.text(1), role = row.text(3);
    c.exec("UPDATE invites SET status = $1, decided_at = $2 WHERE id = $3", {std::string(accept ? "accepted" : "declined"), now, id});
    if (accept) {
      if (c.exec("SELECT 1 FROM memberships WHERE org_id = $1 AND user_id = $2", {org, call.user->user_id}).empty())
        c.exec("INSERT INTO memberships (org_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
               {org, call.user->user_id, role, now});
      auto o = c.exec("SELECT id, name, personal, created_at FROM organizations WHERE id = $1", {org});
      out = org_json(o.rows.at(0), 0);
      out["role"] = role;
    }
    AuditContext who = audit_context(call);
    who.org_id = org;
    audit(c, who, accept ? "organization.invite_accept" : "organization.invite_decline", "invite", id,
          {{"organization", org}});
  });
  return accept ? json_response(200, out) : no_content();
}

json me(AppState& app, const Principal& p) {
  json out;
  app.db->with_connection([&](store::Connection& c) {
    auto u = c.exec("SELECT id, email, name, created_at, active_org_id FROM users WHERE id = $1", {p.user_id});
    const auto& row = u.rows.at(0);
    out = {{"id", row.text(0)}, {"email", row.text(1)}, {"name", row.text(2)}, {"created_at", iso_time(row.integer(3))},
           {"active_organization_id", row.is_null(4) ? json(nullptr) : json(row.text(4))}, {"is_operator", p.is_operator}};
    out["organizations"] = organizations_of(c, p.user_id);
  });
  return out;
}

http::Response get_me(AppState& app, const Call& call) { return json_response(200, me(app, *call.user)); }

http::Response patch_me(AppState& app, const Call& call) {
  json body = parse_object_body(call.req);
  reject_unknown_fields(body, {"name", "active_organization_id"});
  std::string name = org_name(body, false);
  auto active = get_string(body, "active_organization_id");
  app.db->transaction([&](store::Connection& c) {
    if (active && c.exec("SELECT 1 FROM memberships WHERE org_id = $1 AND user_id = $2", {*active, call.user->user_id}).empty())
      throw ApiError(404, "Organization not found");
    if (!name.empty()) c.exec("UPDATE users SET name = $1 WHERE id = $2", {name, call.user->user_id});
    if (active) c.exec("UPDATE users SET active_org_id = $1 WHERE id = $2", {*active, call.user->user_id});
    audit(c, call, "user.update", "user", call.user->user_id);
  });
  return json_response(200, me(app, *call.user));
}

}  // namespace

void register_organization_routes(RouteTable& r, AppState& app) {
  r.add("GET", "/users/me", Access::kUser, [&app](const Call& c) { return get_me(app, c); });
  r.add("PATCH", "/users/me", Access::kUser, [&app](const Call& c) { return patch_me(app, c); });
  r.add("POST", "/organizations", Access::kUser, [&app](const Call& c) { return create(app, c); });
  r.add("GET", "/organizations", Access::kUser, [&app](const Call& c) { return list(app, c); });
  r.add("GET", "/organizations/{id}", or_agent(Access::kOrgMember), [&app](const Call& c) { return get(app, c); });
  r.add("PATCH", "/organizations/{id}", Access::kOrgAdmin, [&app](const Call& c) { return update(app, c); });
  r.add("DELETE", "/organizations/{id}", Access::kOrgOwner, [&app](const Call& c) { return remove(app, c); });
  r.add("GET", "/organizations/{id}/members", or_agent(Access::kOrgMember), [&app](const Call& c) { return members(app, c); });
  r.add("PATCH", "/organizations/{id}/members/{user_id}", Access::kOrgAdmin, [&app](const Call& c) { return set_role(app, c); });
  r.add("DELETE", "/organizations/{id}/members/{user_id}", Access::kOrgAdmin, [&app](const Call& c) { return remove_member(app, c); });
  r.add("POST", "/organizations/{id}/leave", Access::kOrgMember, [&app](const Call& c) { return leave(app, c); });
  r.add("POST", "/organizations/{id}/invites", Access::kOrgAdmin, [&app](const Call& c) { return invite(app, c); });
  r.add("GET", "/organizations/{id}/invites", Access::kOrgAdmin, [&app](const Call& c) { return invites(app, c); });
  r.add("DELETE", "/organizations/{id}/invites/{invite_id}", Access::kOrgAdmin, [&app](const Call& c) { return revoke_invite(app, c); });
  r.add("POST", "/invites/accept", Access::kUser, [&app](const Call& c) { return answer(app, c, true); });
  r.add("POST", "/invites/decline", Access::kUser, [&app](const Call& c) { return answer(app, c, false); });
}

}  // namespace ag::control
