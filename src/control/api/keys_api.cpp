// /projects/{id}/keys: API keys are generated here, shown once, and stored only as SHA-256.
// Under the default "single" key policy, creating a key rotates out the project's other live
// keys, immediately or after a grace period the caller picks (at most 24 h).
#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/config_changes.hpp"
#include "control/api/context.hpp"
#include "control/api/routes.hpp"
#include "common/api_key.hpp"
#include "control/service/validation.hpp"

namespace ag::control {

namespace {

constexpr std::int64_t kMaxGraceSeconds = 24 * 3600;

struct KeyRow {
  std::string id, public_id;
  std::optional<std::string> label;
  std::int64_t created_at = 0;
  std::optional<std::int64_t> expires_at, revoked_at;
  std::optional<std::int64_t> rpm, burst;  // per-key override of the project's rate limit
};

json rate_json(const KeyRow& k) {
  if (!k.rpm || !k.burst) return nullptr;
  return {{"requests_per_minute", *k.rpm}, {"burst", *k.burst}};
}

std::string status_of(const KeyRow& k, std::int64_t now) {
  if (k.revoked_at) return "revoked";
  if (k.expires_at) return *k.expires_at <= now ? "expired" : "expiring";
  return "active";
}

json to_json(const KeyRow& k, std::int64_t now) {
  return {{"id", k.id},
          {"public_id", k.public_id},
          {"label", k.label ? json(*k.label) : json(nullptr)},
          {"display", api_key_display(k.public_id)},
          {"status", status_of(k, now)},
          {"created_at", iso_time(k.created_at)},
          {"expires_at", iso_or_null(k.expires_at)},
          {"revoked_at", iso_or_null(k.revoked_at)},
          {"rate_limit", rate_json(k)}};
}

// The project with that id (the route's rule has checked the caller may act on it), or 404 when
// it was deleted meanwhile. With `lock_for` set, the project row is locked until the transaction ends, so concurrent key
// creations for one project rotate each other out in turn (SQLite's BEGIN IMMEDIATE already
// serialises writers; PostgreSQL needs FOR UPDATE).
std::string project_row(store::Connection& c, const std::string& id, std::string* policy = nullptr,
                        const store::Database* lock_for = nullptr) {
  if (crypto::is_uuid(id)) {
    bool lock = lock_for && lock_for->engine() == store::Engine::kPostgres;
    auto r = c.exec(lock ? "SELECT key_policy FROM projects WHERE id = $1 FOR UPDATE"
                         : "SELECT key_policy FROM projects WHERE id = $1",
                    {id});
    if (!r.empty()) {
      if (policy) *policy = r.rows[0].text(0);
      return id;
    }
  }
  throw ApiError(404, "Project not found");
}

http::Response create(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  const http::PathParams& params = call.params;
  const Principal& user = call.principal();
  json body = parse_object_body(req, true);
  reject_unknown_fields(body, {"label", "grace_period_seconds", "rate_limit"});
  std::optional<std::int64_t> rpm, burst;
  if (auto it = body.find("rate_limit"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) throw validation_error("rate_limit", "must be an object with requests_per_minute and burst");
    for (auto f = it->begin(); f != it->end(); ++f)
      if (f.key() != "requests_per_minute" && f.key() != "burst") throw validation_error("rate_limit." + f.key(), "unknown field");
    try {
      rpm = get_int(*it, "requests_per_minute", 1, 1000000);
      burst = get_int(*it, "burst", 0, 1000000);
    } catch (const ApiError& e) {
      throw ApiError(422, "rate_limit." + e.detail());
    }
    if (!rpm) throw validation_error("rate_limit.requests_per_minute", "field required");
    if (!burst) throw validation_error("rate_limit.burst", "field required");
  }
  auto label = get_string(body, "label");
  if (label) {
    if (auto e = check_name(*label); !e.empty()) throw validation_error("label", e);
  }
  std::int64_t grace = get_int(body, "grace_period_seconds", 0, kMaxGraceSeconds).value_or(0);

  KeyRow k;
  json rotated = json::array();
  std::string raw;
  for (int attempt = 0;; ++attempt) {
    GeneratedKey g = generate_api_key();
    k = KeyRow{crypto::uuid_v4(), g.public_id, label, now_ms(), std::nullopt, std::nullopt, rpm, burst};
    rotated = json::array();
    try {
      app.db->transaction([&](store::Connection& c) {
        std::string policy;
        std::string pid = project_row(c, params.at("id"), &policy, app.db.get());
        ConfigChanges changes(app, c);
        std::int64_t now = k.created_at;
        if (policy == "single") {
          // Every other key still valid now is rotated out.
          auto live = c.exec(
              "SELECT id, expires_at, key_hash FROM api_keys WHERE project_id = $1 AND revoked_at IS NULL AND "
              "(expires_at IS NULL OR expires_at > $2)",
              {pid, now});
          for (const auto& row : live.rows) {
            std::string old = row.text(0);
            if (grace == 0) {
              c.exec("UPDATE api_keys SET revoked_at = $1, revoked_by = $2 WHERE id = $3", {now, user.user_id, old});
              changes.key_delete(pid, old, row.text(2));
              rotated.push_back({{"id", old}, {"expires_at", iso_time(now)}});
            } else {
              std::int64_t until = now + grace * 1000;
              if (auto cur = row.opt_integer(1); cur && *cur < until) until = *cur;  // never extend
              c.exec("UPDATE api_keys SET expires_at = $1 WHERE id = $2", {until, old});
              changes.key_upsert(old);
              rotated.push_back({{"id", old}, {"expires_at", iso_time(until)}});
            }
          }
        }
        c.exec("INSERT INTO api_keys (id, project_id, public_id, key_hash, label, created_at, rate_limit_rpm, "
               "rate_limit_burst) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
               {k.id, pid, k.public_id, g.hash_hex, store::opt(label), now, store::opt(rpm), store::opt(burst)});
        audit(c, call, "key.create", "api_key", k.id,
              {{"project_id", pid}, {"public_id", k.public_id}});
        if (!rotated.empty())
          audit(c, call, "key.rotate", "project", pid,
                {{"new_key_id", k.id}, {"rotated", rotated}, {"grace_period_seconds", grace}});
        changes.key_upsert(k.id);
      });
    } catch (const store::UniqueViolation&) {
      // A public id collision (8 base62 characters): draw again.
      if (attempt < 3) continue;
      throw;
    }
    raw = std::move(g.key);
    break;
  }
  notify_config_change(app);
  json out = to_json(k, k.created_at);
  out["api_key"] = raw;
  out["rotated"] = rotated;
  return json_response(201, out);
}

http::Response list(AppState& app, const Call& call) {
  const http::PathParams& params = call.params;
  json out = json::array();
  app.db->with_connection([&](store::Connection& c) {
    std::string pid = project_row(c, params.at("id"));
    auto r = c.exec(
        "SELECT id, public_id, label, created_at, expires_at, revoked_at, rate_limit_rpm, rate_limit_burst "
        "FROM api_keys WHERE project_id = $1 ORDER BY seq DESC",
        {pid});
    std::int64_t now = now_ms();
    for (const auto& row : r.rows)
      out.push_back(to_json(KeyRow{row.text(0), row.text(1), row.opt_text(2), row.integer(3), row.opt_integer(4),
                                   row.opt_integer(5), row.opt_integer(6), row.opt_integer(7)},
                            now));
  });
  return json_response(200, out);
}

http::Response revoke(AppState& app, const Call& call) {
  const http::PathParams& params = call.params;
  const Principal& user = call.principal();
  app.db->transaction([&](store::Connection& c) {
    std::string pid = project_row(c, params.at("id"));
    const std::string& kid = params.at("key_id");
    if (!crypto::is_uuid(kid)) throw ApiError(404, "API key not found");
    auto r = c.exec("SELECT revoked_at, key_hash FROM api_keys WHERE id = $1 AND project_id = $2", {kid, pid});
    if (r.empty()) throw ApiError(404, "API key not found");
    if (!r.rows[0].is_null(0)) return;  // already revoked: nothing to do, still 204
    c.exec("UPDATE api_keys SET revoked_at = $1, revoked_by = $2 WHERE id = $3", {now_ms(), user.user_id, kid});
    audit(c, call, "key.revoke", "api_key", kid, {{"project_id", pid}});
    ConfigChanges(app, c).key_delete(pid, kid, r.rows[0].text(1));
  });
  notify_config_change(app);
  return no_content();
}

}  // namespace

void register_key_routes(RouteTable& r, AppState& app) {
  r.add("POST", "/projects/{id}/keys", or_agent(Access::kProjectAdmin), [&app](const Call& c) { return create(app, c); });
  r.add("GET", "/projects/{id}/keys", or_agent(Access::kProjectMember), [&app](const Call& c) { return list(app, c); });
  r.add("DELETE", "/projects/{id}/keys/{key_id}", or_agent(Access::kProjectAdmin), [&app](const Call& c) { return revoke(app, c); });
}

}  // namespace ag::control
