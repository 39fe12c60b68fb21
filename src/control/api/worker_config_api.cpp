// GET /internal/worker/config: everything a worker needs to serve traffic, authorised by the
// shared worker secret. The schema is documented in docs/api.md ("Worker config").
#include <unordered_map>

#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/context.hpp"

namespace ag::control {

namespace {

bool worker_authorised(const AppState& app, const http::Request& req) {
  auto presented = req.header("x-worker-secret");
  if (presented.empty()) presented = req.header("x-control-secret");
  if (presented.empty()) return false;
  // Hash both sides first so the comparison is constant-time whatever the lengths.
  auto p = crypto::sha256(presented);
  std::string_view pv(reinterpret_cast<const char*>(p.data()), p.size());
  bool ok = false;
  for (const auto& s : app.settings.worker_secrets) {
    auto h = crypto::sha256(s);
    ok |= crypto::constant_time_equal(pv, std::string_view(reinterpret_cast<const char*>(h.data()), h.size()));
  }
  return ok;
}

http::Response config(AppState& app, const http::Request& req) {
  if (!worker_authorised(app, req)) throw ApiError(401, "Invalid worker secret");
  json projects = json::array();
  std::int64_t version = 0;
  std::int64_t now = now_ms();
  // One read transaction so the version matches the rows.
  app.db->transaction([&](store::Connection& c) {
    version = c.exec("SELECT version FROM config_state WHERE id = 1", {}).rows.at(0).integer(0);
    auto etag = "\"" + std::to_string(version) + "\"";
    if (req.header("if-none-match") == etag) return;
    auto pr = c.exec(
        "SELECT id, name, upstream_base_url, rate_limit_rpm, rate_limit_burst, key_policy, max_body_bytes "
        "FROM projects ORDER BY seq",
        {});
    auto kr = c.exec(
        "SELECT project_id, id, public_id, key_hash, expires_at, rate_limit_rpm, rate_limit_burst FROM api_keys "
        "WHERE revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > $1) ORDER BY seq",
        {now});
    std::unordered_map<std::string, std::size_t> index;
    for (const auto& row : pr.rows) {
      index[row.text(0)] = projects.size();
      projects.push_back({{"id", row.text(0)},
                          {"name", row.text(1)},
                          {"upstream_url", row.text(2)},
                          {"upstream_base_url", row.text(2)},
                          {"domains", json::array()},
                          {"api_keys", json::array()},
                          {"keys", json::array()},
                          {"rate_limit", {{"requests_per_minute", row.integer(3)}, {"burst", row.integer(4)}}},
                          {"key_policy", row.text(5)},
                          {"max_body_bytes", row.integer(6)}});
    }
    for (const auto& row : kr.rows) {
      auto it = index.find(row.text(0));
      if (it == index.end()) continue;
      auto& p = projects[it->second];
      p["api_keys"].push_back(row.text(3));
      json key = {{"id", row.text(1)},
                  {"public_id", row.text(2)},
                  {"hash", row.text(3)},
                  {"expires_at", iso_or_null(row.opt_integer(4))}};
      if (!row.is_null(5) && !row.is_null(6))
        key["rate_limit"] = {{"requests_per_minute", row.integer(5)}, {"burst", row.integer(6)}};
      p["keys"].push_back(std::move(key));
    }
  });
  auto etag = "\"" + std::to_string(version) + "\"";
  if (req.header("if-none-match") == etag) {
    http::Response r;
    r.status = 304;
    r.set_header("ETag", etag);
    return r;
  }
  auto r = json_response(200, {{"schema", 1},
                               {"version", version},
                               {"generated_at", iso_time(now)},
                               {"projects", std::move(projects)}});
  r.set_header("ETag", etag);
  r.set_header("Cache-Control", "no-store");
  return r;
}

}  // namespace

void register_worker_config_routes(http::Router& r, AppState& app) {
  r.add("GET", "/internal/worker/config", [&app](const http::Request& q, const http::PathParams&) { return config(app, q); });
}

}  // namespace ag::control
