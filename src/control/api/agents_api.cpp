// Agents (docs/organizations.md, "Agents"): automation that calls the API with X-Agent-Token (or
// as a Bearer), in one organisation, with a role no higher than admin. The token is shown once,
// at creation and at rotation; the database keeps its slow salted hash (service/agent_tokens.hpp).
#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/routes.hpp"
#include "control/service/validation.hpp"

namespace ag::control {

namespace {

constexpr const char* kColumns =
    "id, org_id, name, role, token_prefix, created_by, created_at, expires_at, rotated_at, revoked_at, last_seen_at";

json agent_json(const store::Row& r, std::int64_t now) {
  auto expires = r.opt_integer(7);
  auto revoked = r.opt_integer(9);
  std::string status = revoked ? "revoked" : expires && *expires <= now ? "expired" : "active";
  return {{"id", r.text(0)},
          {"organization_id", r.text(1)},
          {"name", r.text(2)},
          {"role", r.text(3)},
          {"token_prefix", r.text(4)},
          {"created_by", r.opt_text(5) ? json(*r.opt_text(5)) : json(nullptr)},
          {"created_at", iso_time(r.integer(6))},
          {"expires_at", iso_or_null(expires)},
          {"rotated_at", iso_or_null(r.opt_integer(8))},
          {"revoked_at", iso_or_null(revoked)},
          {"last_seen_at", iso_or_null(r.opt_integer(10))},
          {"status", status}};
}

// The agent `{agent_id}` of the organisation in the path; 404 for any other id.
json load(store::Connection& c, const Call& call) {
  const std::string& id = call.param("agent_id");
  if (crypto::is_uuid(id)) {
    auto r = c.exec(std::string("SELECT ") + kColumns + " FROM agents WHERE id = $1 AND org_id = $2", {id, *call.org_id});
    if (!r.empty()) return agent_json(r.rows[0], now_ms());
  }
  throw ApiError(404, "Agent not found");
}

http::Response create(AppState& app, const Call& call) {
  json body = parse_object_body(call.req);
  reject_unknown_fields(body, {"name", "role", "expires_in_days"});
  auto name = get_string(body, "name");
  if (!name) throw validation_error("name", "field required");
  if (auto e = check_name(*name); !e.empty()) throw validation_error("name", e);
  Role role = Role::kMember;
  if (auto r = get_string(body, "role")) {
    auto parsed = parse_role(*r);
    if (!parsed || *parsed == Role::kOwner) throw validation_error("role", "must be member or admin (an agent is never an owner)");
    role = *parsed;
  }
  require_can_grant(call, role, std::nullopt);
  auto days = get_int(body, "expires_in_days", 1, 3650);
  const std::int64_t now = now_ms();
  std::optional<std::int64_t> expires;
  if (days) expires = now + *days * 86'400'000;
  auto token = agents::new_token();
  const std::string id = crypto::uuid_v4();
  json out;
  app.db->transaction([&](store::Connection& c) {
    c.exec("INSERT INTO agents (id, org_id, name, role, token_prefix, token_hash, created_by, created_at, expires_at) "
           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
           {id, *call.org_id, *name, std::string(role_name(role)), token.prefix, token.hash, call.principal().user_id, now,
            store::opt(expires)});
    audit(c, call, "agent.create", "agent", id, {{"name", *name}, {"role", role_name(role)}});
    auto r = c.exec(std::string("SELECT ") + kColumns + " FROM agents WHERE id = $1", {id});
    out = agent_json(r.rows.at(0), now);
  });
  out["token"] = token.token;
  return json_response(201, out);
}

http::Response list(AppState& app, const Call& call) {
  json items = json::array();
  const std::int64_t now = now_ms();
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec(std::string("SELECT ") + kColumns + " FROM agents WHERE org_id = $1 ORDER BY seq", {*call.org_id});
    for (const auto& row : r.rows) items.push_back(agent_json(row, now));
  });
  return json_response(200, {{"items", items}});
}

http::Response get(AppState& app, const Call& call) {
  json out;
  app.db->with_connection([&](store::Connection& c) { out = load(c, call); });
  return json_response(200, out);
}

http::Response revoke(AppState& app, const Call& call) {
  app.db->transaction([&](store::Connection& c) {
    json a = load(c, call);
    if (!a["revoked_at"].is_null()) return;  // already revoked: nothing changes
    c.exec("UPDATE agents SET revoked_at = $1 WHERE id = $2", {now_ms(), a["id"].get<std::string>()});
    audit(c, call, "agent.revoke", "agent", a["id"].get<std::string>(), {{"name", a["name"]}});
  });
  return no_content();
}

http::Response rotate(AppState& app, const Call& call) {
  auto token = agents::new_token();
  json out;
  app.db->transaction([&](store::Connection& c) {
    json a = load(c, call);
    if (!a["revoked_at"].is_null()) throw coded_error(409, "agent_revoked", "A revoked agent cannot be given a new token");
    const std::string id = a["id"].get<std::string>();
    const std::int64_t now = now_ms();
    c.exec("UPDATE agents SET token_prefix = $1, token_hash = $2, rotated_at = $3 WHERE id = $4",
           {token.prefix, token.hash, now, id});
    audit(c, call, "agent.rotate", "agent", id, {{"name", a["name"]}});
    auto r = c.exec(std::string("SELECT ") + kColumns + " FROM agents WHERE id = $1", {id});
    out = agent_json(r.rows.at(0), now);
  });
  out["token"] = token.token;
  return json_response(200, out);
}

// The calling agent itself.
http::Response me(AppState& app, const Call& call) {
  json out;
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec(std::string("SELECT ") + kColumns + " FROM agents WHERE id = $1", {call.principal().user_id});
    out = agent_json(r.rows.at(0), now_ms());
  });
  return json_response(200, out);
}

}  // namespace

void register_agent_routes(RouteTable& r, AppState& app) {
  r.add("POST", "/organizations/{id}/agents", Access::kOrgAdmin, [&app](const Call& c) { return create(app, c); });
  r.add("GET", "/organizations/{id}/agents", Access::kOrgAdmin, [&app](const Call& c) { return list(app, c); });
  r.add("GET", "/organizations/{id}/agents/{agent_id}", Access::kOrgAdmin, [&app](const Call& c) { return get(app, c); });
  r.add("DELETE", "/organizations/{id}/agents/{agent_id}", Access::kOrgAdmin, [&app](const Call& c) { return revoke(app, c); });
  r.add("POST", "/organizations/{id}/agents/{agent_id}/rotate", Access::kOrgAdmin,
        [&app](const Call& c) { return rotate(app, c); });
  r.add("GET", "/agents/me", Access::kAgent, [&app](const Call& c) { return me(app, c); });
}

}  // namespace ag::control
