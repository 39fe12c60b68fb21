#include "control/api/config_changes.hpp"

#include "common/time.hpp"

namespace ag::control {

json worker_services_json(store::Connection& c, const std::string& project_id) {
  json out = json::array();
  auto r = c.exec("SELECT spec FROM services WHERE project_id = $1 ORDER BY name", {project_id});
  for (const auto& row : r.rows) out.push_back(json::parse(row.text(0)));
  return out;
}

json worker_jwt_keys_json(store::Connection& c) {
  json out = json::array();
  auto r = c.exec("SELECT kid, alg, public_pem FROM jwt_signing_keys WHERE retired_at IS NULL ORDER BY created_at, kid", {});
  for (const auto& row : r.rows)
    out.push_back({{"kid", row.text(0)}, {"alg", row.text(1)}, {"public_key", row.text(2)}});
  return out;
}

json worker_project_json(const store::Row& row, json services) {
  return {{"id", row.text(0)},
          {"slug", row.is_null(7) ? json(nullptr) : json(row.text(7))},
          {"risk", row.is_null(8) ? json(nullptr) : json::parse(row.text(8))},
          {"services", std::move(services)},
          {"name", row.text(1)},
          {"upstream_url", row.text(2)},
          {"upstream_base_url", row.text(2)},
          {"domains", json::array()},
          {"rate_limit", {{"requests_per_minute", row.integer(3)}, {"burst", row.integer(4)}}},
          {"key_policy", row.text(5)},
          {"max_body_bytes", row.integer(6)}};
}

json worker_key_json(const store::Row& row) {
  json key = {{"id", row.text(0)},
              {"public_id", row.text(1)},
              {"hash", row.text(2)},
              {"expires_at", iso_or_null(row.opt_integer(3))}};
  if (!row.is_null(4) && !row.is_null(5))
    key["rate_limit"] = {{"requests_per_minute", row.integer(4)}, {"burst", row.integer(5)}};
  return key;
}

std::int64_t ConfigChanges::next_version() {
  if (!version_) {
    version_ = bump_config_version(c_);
    std::int64_t seen = app_.local_config_version.load();
    while (seen < *version_ && !app_.local_config_version.compare_exchange_weak(seen, *version_)) {
    }
    // PostgreSQL delivers the notification to every listening control plane at commit.
    if (app_.db->engine() == store::Engine::kPostgres)
      c_.exec("SELECT pg_notify('ag_config', $1)", {std::to_string(*version_)});
    // Compaction, every 1000 versions: keep at most 100,000 versions and 24 h of changes. A worker
    // further behind gets a full document instead.
    if (*version_ % 1000 == 0)
      c_.exec("DELETE FROM config_changes WHERE version <= $1 OR created_at < $2",
              {*version_ - 100000, now_ms() - 24LL * 3600 * 1000});
  }
  return *version_;
}

void ConfigChanges::add(std::string_view op, const json& change) {
  std::int64_t v = next_version();
  json full = change;
  full["version"] = v;
  full["op"] = op;
  c_.exec("INSERT INTO config_changes (version, op, payload, created_at) VALUES ($1, $2, $3, $4)",
          {v, std::string(op), full.dump(), now_ms()});
}

void ConfigChanges::project_upsert(const std::string& project_id) {
  auto r = c_.exec(std::string("SELECT ") + kWorkerProjectColumns + " FROM projects WHERE id = $1", {project_id});
  if (r.empty()) return;
  add("project.upsert", {{"project", worker_project_json(r.rows[0], worker_services_json(c_, project_id))}});
}

void ConfigChanges::project_delete(const std::string& project_id) {
  auto keys = c_.exec("SELECT id, key_hash FROM api_keys WHERE project_id = $1 AND revoked_at IS NULL", {project_id});
  for (const auto& k : keys.rows) key_delete(project_id, k.text(0), k.text(1));
  add("project.delete", {{"project_id", project_id}});
}

void ConfigChanges::key_upsert(const std::string& key_id) {
  auto r = c_.exec(std::string("SELECT project_id, ") + kWorkerKeyColumns + " FROM api_keys WHERE id = $1", {key_id});
  if (r.empty()) return;
  // Shift the row by one column for worker_key_json (project_id first).
  const auto& row = r.rows[0];
  store::Row key_row({row.opt_text(1), row.opt_text(2), row.opt_text(3), row.opt_text(4), row.opt_text(5), row.opt_text(6)});
  add("key.upsert", {{"project_id", row.text(0)}, {"key", worker_key_json(key_row)}});
}

void ConfigChanges::key_delete(const std::string& project_id, const std::string& key_id, const std::string& hash) {
  add("key.delete", {{"project_id", project_id}, {"key_id", key_id}, {"hash", hash}});
}

void ConfigChanges::token_revoke(const std::string& jti, std::int64_t expires_at_ms) {
  add("token.revoke", {{"jti", jti}, {"expires_at", iso_time(expires_at_ms)}});
}

void ConfigChanges::jwt_keys_set() { add("jwt_keys.set", {{"keys", worker_jwt_keys_json(c_)}}); }

void notify_config_change(AppState& app) {
  if (app.on_config_change) app.on_config_change();
}

}  // namespace ag::control
