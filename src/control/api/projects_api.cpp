// /projects: a project is a name, an upstream base URL and the policies the worker enforces for
// it. Every caller sees only their own projects; anyone else's is "not found".
#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/config_changes.hpp"
#include "control/api/context.hpp"
#include "control/api/routes.hpp"
#include "config/snapshot.hpp"
#include "control/service/validation.hpp"

namespace ag::control {

namespace {

constexpr std::int64_t kDefaultRpm = 60;
constexpr std::int64_t kDefaultBurst = 20;
constexpr std::int64_t kDefaultMaxBody = 10 * 1024 * 1024;
constexpr std::int64_t kMaxBodyLimit = 1LL << 40;

constexpr const char* kProjectColumns =
    "id, name, upstream_base_url, rate_limit_rpm, rate_limit_burst, key_policy, max_body_bytes, "
    "created_at, updated_at, slug, risk, org_id";

struct Project {
  std::string id, name, upstream;
  std::optional<std::string> slug;
  std::optional<std::string> risk;  // the risk policy as JSON text (docs/risk.md); null = defaults
  std::int64_t rpm = kDefaultRpm, burst = kDefaultBurst;
  std::string key_policy = "single";
  std::int64_t max_body = kDefaultMaxBody;
  std::int64_t created_at = 0, updated_at = 0;
  std::string org_id;  // the organisation it belongs to (docs/organizations.md)
};

Project from_row(const store::Row& r) {
  Project p{r.text(0), r.text(1), r.text(2), r.opt_text(9), r.opt_text(10), r.integer(3), r.integer(4),
            r.text(5), r.integer(6), r.integer(7), r.integer(8), r.is_null(11) ? std::string() : r.text(11)};
  return p;
}

json to_json(const Project& p) {
  return {{"id", p.id},
          {"organization_id", p.org_id},
          {"name", p.name},
          {"slug", p.slug ? json(*p.slug) : json(nullptr)},
          {"risk", p.risk ? json::parse(*p.risk) : json(nullptr)},
          {"upstream_base_url", p.upstream},
          {"rate_limit", {{"requests_per_minute", p.rpm}, {"burst", p.burst}}},
          {"key_policy", p.key_policy},
          {"max_body_bytes", p.max_body},
          {"created_at", iso_time(p.created_at)},
          {"updated_at", iso_time(p.updated_at)}};
}

// Applies the fields present in `body` to `p`, validating each.
void apply_fields(const json& body, Project& p, bool create) {
  if (create)
    reject_unknown_fields(body, {"name", "slug", "upstream_base_url", "rate_limit", "key_policy", "max_body_bytes", "risk",
                                 "organization_id"});
  else
    reject_unknown_fields(body, {"name", "slug", "upstream_base_url", "rate_limit", "key_policy", "max_body_bytes", "risk"});
  if (auto it = body.find("risk"); it != body.end()) {
    if (it->is_null()) {
      p.risk.reset();
    } else {
      if (!it->is_object()) throw validation_error("risk", "must be an object or null");
      config::RiskPolicy parsed;
      std::string text = it->dump();
      if (auto e = config::parse_risk_policy(text, parsed); !e.empty()) throw ApiError(422, e);
      p.risk = std::move(text);
    }
  }
  if (auto it = body.find("slug"); it != body.end()) {
    if (it->is_null()) {
      p.slug.reset();
    } else if (!it->is_string() || !valid_slug(it->get_ref<const std::string&>())) {
      throw validation_error("slug", "must match ^[a-z0-9_-]{1,63}$");
    } else {
      p.slug = it->get<std::string>();
    }
  }
  if (auto name = get_string(body, "name")) {
    if (auto e = check_name(*name); !e.empty()) throw validation_error("name", e);
    p.name = *name;
  } else if (create) {
    throw validation_error("name", "field required");
  } else if (body.contains("name")) {
    throw validation_error("name", "must be a string");
  }
  if (auto url = get_string(body, "upstream_base_url")) {
    if (auto e = check_upstream_url(*url); !e.empty()) throw validation_error("upstream_base_url", e);
    p.upstream = *url;
  } else if (create) {
    throw validation_error("upstream_base_url", "field required");
  } else if (body.contains("upstream_base_url")) {
    throw validation_error("upstream_base_url", "must be a string");
  }
  if (auto it = body.find("rate_limit"); it != body.end()) {
    if (!it->is_object()) throw validation_error("rate_limit", "must be an object with requests_per_minute and burst");
    for (auto f = it->begin(); f != it->end(); ++f)
      if (f.key() != "requests_per_minute" && f.key() != "burst")
        throw validation_error("rate_limit." + f.key(), "unknown field");
    try {
      if (auto v = get_int(*it, "requests_per_minute", 1, 1000000)) p.rpm = *v;
      if (auto v = get_int(*it, "burst", 0, 1000000)) p.burst = *v;
    } catch (const ApiError& e) {
      throw ApiError(422, "rate_limit." + e.detail());
    }
  }
  if (auto policy = get_string(body, "key_policy")) {
    if (*policy != "single" && *policy != "multiple")
      throw validation_error("key_policy", "must be \"single\" or \"multiple\"");
    p.key_policy = *policy;
  } else if (body.contains("key_policy") && !body["key_policy"].is_null()) {
    throw validation_error("key_policy", "must be \"single\" or \"multiple\"");
  }
  if (auto v = get_int(body, "max_body_bytes", 0, kMaxBodyLimit)) p.max_body = *v;
}

// The project with that id (the route's rule has checked the caller may act on it); nullopt when
// it was deleted meanwhile.
std::optional<Project> load(store::Connection& c, const std::string& id) {
  if (!crypto::is_uuid(id)) return std::nullopt;
  auto r = c.exec(std::string("SELECT ") + kProjectColumns + " FROM projects WHERE id = $1", {id});
  if (r.empty()) return std::nullopt;
  return from_row(r.rows[0]);
}

ApiError not_found() { return ApiError(404, "Project not found"); }
ApiError duplicate() { return ApiError(409, "Project name already exists"); }
ApiError slug_taken() { return ApiError(409, "Project slug already in use"); }

bool slug_used(store::Connection& c, const std::optional<std::string>& slug, const std::string& except_id) {
  return slug && !c.exec("SELECT 1 FROM projects WHERE slug = $1 AND id <> $2", {*slug, except_id}).empty();
}

// Names are unique in an organisation.
bool name_taken(store::Connection& c, const std::string& org_id, const std::string& name,
                const std::string& except_id) {
  return !c.exec("SELECT 1 FROM projects WHERE org_id = $1 AND name = $2 AND id <> $3",
                 {org_id, name, except_id})
              .empty();
}

http::Response create(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  const Principal& user = call.principal();
  json body = parse_object_body(req);
  Project p;
  apply_fields(body, p, true);
  // In the organisation named, or the caller's active one; an admin's role there is needed.
  if (auto org = get_string(body, "organization_id")) {
    p.org_id = *org;
  } else {
    app.db->with_connection([&](store::Connection& c) {
      auto r = c.exec("SELECT active_org_id FROM users WHERE id = $1", {user.user_id});
      p.org_id = r.empty() || r.rows[0].is_null(0) ? user.user_id : r.rows[0].text(0);
    });
  }
  require_org_role(app, user, p.org_id, Role::kAdmin);
  p.id = crypto::uuid_v4();
  p.created_at = p.updated_at = now_ms();
  try {
    app.db->transaction([&](store::Connection& c) {
      if (name_taken(c, p.org_id, p.name, p.id)) throw duplicate();
      if (slug_used(c, p.slug, p.id)) throw slug_taken();
      c.exec("INSERT INTO projects (id, owner_id, name, upstream_base_url, rate_limit_rpm, rate_limit_burst, "
             "key_policy, max_body_bytes, created_at, updated_at, slug, risk, org_id) "
             "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
             {p.id, user.user_id, p.name, p.upstream, p.rpm, p.burst, p.key_policy, p.max_body,
              p.created_at, p.updated_at, store::opt(p.slug), store::opt(p.risk), p.org_id});
      AuditContext who = audit_context(call);
      who.org_id = p.org_id;
      who.project_id = p.id;
      audit(c, who, "project.create", "project", p.id, {{"name", p.name}});
      ConfigChanges(app, c).project_upsert(p.id);
    });
  } catch (const store::UniqueViolation&) {
    throw duplicate();
  }
  notify_config_change(app);
  return json_response(201, to_json(p));
}

http::Response list(AppState& app, const Call& call) {
  const Principal& user = call.principal();
  // The projects of every organisation the caller is in, or of `?organization_id=` only.
  // An agent sees its own organisation's.
  std::string org;
  http::query_param(call.req.query, "organization_id", org);
  if (user.agent && !org.empty() && org != user.agent_org_id) throw ApiError(404, "Organization not found");
  if (!user.agent && !org.empty()) require_org_role(app, user, org, Role::kMember);
  json out = json::array();
  app.db->with_connection([&](store::Connection& c) {
    auto r = user.agent ? c.exec(std::string("SELECT ") + kProjectColumns + " FROM projects WHERE org_id = $1 ORDER BY seq DESC",
                                 {user.agent_org_id})
                        : c.exec(std::string("SELECT ") + kProjectColumns +
                                     " FROM projects WHERE org_id IN (SELECT org_id FROM memberships WHERE user_id = $1) "
                                     "AND ($2 = '' OR org_id = $2) ORDER BY seq DESC",
                                 {user.user_id, org});
    for (const auto& row : r.rows) out.push_back(to_json(from_row(row)));
  });
  return json_response(200, out);
}

http::Response get(AppState& app, const Call& call) {
  const http::PathParams& params = call.params;
  std::optional<Project> p;
  app.db->with_connection([&](store::Connection& c) { p = load(c, params.at("id")); });
  if (!p) throw not_found();
  return json_response(200, to_json(*p));
}

http::Response update(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  const http::PathParams& params = call.params;
  json body = parse_object_body(req);
  Project p;
  try {
    app.db->transaction([&](store::Connection& c) {
      auto existing = load(c, params.at("id"));
      if (!existing) throw not_found();
      p = *existing;
      apply_fields(body, p, false);
      if (p.name != existing->name && name_taken(c, p.org_id, p.name, p.id)) throw duplicate();
      if (p.slug != existing->slug && slug_used(c, p.slug, p.id)) throw slug_taken();
      if (!p.slug && existing->slug &&
          !c.exec("SELECT 1 FROM services WHERE project_id = $1", {p.id}).empty())
        throw validation_error("slug", "cannot be removed while the project has services");
      p.updated_at = now_ms();
      c.exec("UPDATE projects SET name = $1, upstream_base_url = $2, rate_limit_rpm = $3, rate_limit_burst = $4, "
             "key_policy = $5, max_body_bytes = $6, updated_at = $7, slug = $8, risk = $9 WHERE id = $10",
             {p.name, p.upstream, p.rpm, p.burst, p.key_policy, p.max_body, p.updated_at,
              store::opt(p.slug), store::opt(p.risk), p.id});
      json changed = json::array();
      for (auto it = body.begin(); it != body.end(); ++it) changed.push_back(it.key());
      audit(c, call, "project.update", "project", p.id, {{"fields", changed}});
      ConfigChanges(app, c).project_upsert(p.id);
    });
  } catch (const store::UniqueViolation&) {
    throw duplicate();
  }
  notify_config_change(app);
  return json_response(200, to_json(p));
}

http::Response remove(AppState& app, const Call& call) {
  const http::PathParams& params = call.params;
  app.db->transaction([&](store::Connection& c) {
    auto p = load(c, params.at("id"));
    if (!p) throw not_found();
    ConfigChanges(app, c).project_delete(p->id);  // reads the keys before they go
    c.exec("DELETE FROM api_keys WHERE project_id = $1", {p->id});
    c.exec("DELETE FROM projects WHERE id = $1", {p->id});
    c.exec("DELETE FROM traffic_hourly WHERE project_id = $1", {p->id});
    c.exec("DELETE FROM traffic_latency WHERE project_id = $1", {p->id});
    audit(c, call, "project.delete", "project", p->id, {{"name", p->name}});
  });
  notify_config_change(app);
  return no_content();
}

}  // namespace

void register_project_routes(RouteTable& r, AppState& app) {
  r.add("POST", "/projects", Access::kUser, [&app](const Call& c) { return create(app, c); });
  r.add("GET", "/projects", or_agent(Access::kUser), [&app](const Call& c) { return list(app, c); });
  r.add("GET", "/projects/{id}", or_agent(Access::kProjectMember), [&app](const Call& c) { return get(app, c); });
  r.add("PATCH", "/projects/{id}", or_agent(Access::kProjectAdmin), [&app](const Call& c) { return update(app, c); });
  r.add("DELETE", "/projects/{id}", or_agent(Access::kProjectAdmin), [&app](const Call& c) { return remove(app, c); });
}

}  // namespace ag::control
