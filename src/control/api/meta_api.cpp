// Health, the audit feed, and the API's own documentation.
#include <algorithm>
#include <charconv>

#include "control/api/context.hpp"
#include "control/api/routes.hpp"

namespace ag::assets {
std::string_view openapi_json();
std::string_view docs_html();
std::string_view account_html();
}  // namespace ag::assets

namespace ag::control {

namespace {

http::Response health(AppState& app) {
  bool ok = false;
  try {
    app.db->with_connection([&](store::Connection& c) { ok = !c.exec("SELECT 1", {}).empty(); });
  } catch (const std::exception&) {
    ok = false;
  }
  if (!ok) return error_response(503, "database unavailable");
  return json_response(200, {{"status", "ok"}, {"database", app.db->engine_name()}, {"version", AG_VERSION}});
}

http::Response audit_feed(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  const Principal& user = call.principal();
  std::int64_t limit = 50;
  std::string raw;
  if (http::query_param(req.query, "limit", raw)) {
    auto [p, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), limit);
    if (ec != std::errc{} || p != raw.data() + raw.size() || limit < 1 || limit > 200)
      throw validation_error("limit", "must be an integer between 1 and 200");
  }
  json out = json::array();
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec(
        "SELECT id, action, target_type, target_id, detail, request_id, ip, created_at FROM audit_log "
        "WHERE actor_id = $1 ORDER BY id DESC LIMIT $2",
        {user.user_id, limit});
    for (const auto& row : r.rows) {
      json detail = row.is_null(4) ? json(nullptr) : json::parse(row.text(4), nullptr, false);
      if (detail.is_discarded()) detail = nullptr;
      out.push_back({{"id", row.integer(0)},
                     {"action", row.text(1)},
                     {"target_type", row.opt_text(2) ? json(*row.opt_text(2)) : json(nullptr)},
                     {"target_id", row.opt_text(3) ? json(*row.opt_text(3)) : json(nullptr)},
                     {"detail", detail},
                     {"request_id", row.opt_text(5) ? json(*row.opt_text(5)) : json(nullptr)},
                     {"ip", row.opt_text(6) ? json(*row.opt_text(6)) : json(nullptr)},
                     {"created_at", iso_time(row.integer(7))}});
    }
  });
  return json_response(200, out);
}

http::Response static_asset(std::string_view body, const char* type) {
  http::Response r;
  r.body = std::string(body);
  r.set_header("Content-Type", type);
  r.set_header("Cache-Control", "no-cache");
  return r;
}

}  // namespace

std::string openapi_with_access(const std::vector<RouteDecl>& routes) {
  json doc = json::parse(assets::openapi_json());
  auto& paths = doc["paths"];
  for (const auto& r : routes) {
    std::string method = r.method;
    for (auto& ch : method) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    auto p = paths.find(r.pattern);
    if (p == paths.end() || !p->contains(method)) continue;  // tests/unit/control/openapi_test.cpp fails on this
    auto& op = (*p)[method];
    op["x-antigravity-access"] = access_name(r.access);
    if (r.agents) {
      // Agents call it too: say so, and name their credential beside the user's.
      op["x-antigravity-agents"] = true;
      json& security = op["security"];
      if (!security.is_array()) security = json::array({{{"bearerAuth", json::array()}}});
      json agent = {{"agentToken", json::array()}};
      if (std::find(security.begin(), security.end(), agent) == security.end()) security.push_back(agent);
    }
  }
  return doc.dump(2);
}

void register_meta_routes(RouteTable& r, AppState& app) {
  r.add("GET", "/health", Access::kPublic, [&app](const Call&) { return health(app); });
  r.add("GET", "/audit", Access::kUser, [&app](const Call& c) { return audit_feed(app, c); });
  r.add("GET", "/openapi.json", Access::kPublic, [&app](const Call&) {
    return static_asset(app.openapi_document, "application/json");
  }, Runs::kInline);
  // The account page (docs/auth.md): passkey and password sign-in, device-code approval,
  // the user's passkeys and sessions. Its script talks to this API only.
  for (const char* path : {"/login", "/device"})
    r.add("GET", path, Access::kPublic, [](const Call&) {
      auto res = static_asset(assets::account_html(), "text/html; charset=utf-8");
      res.set_header("Content-Security-Policy",
                     "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
                     "frame-ancestors 'none'; base-uri 'none'; form-action 'none'");
      res.set_header("X-Frame-Options", "DENY");
      res.set_header("Referrer-Policy", "no-referrer");
      return res;
    }, Runs::kInline);
  r.add("GET", "/docs", Access::kPublic, [](const Call&) {
    auto res = static_asset(assets::docs_html(), "text/html; charset=utf-8");
    res.set_header("Content-Security-Policy",
                   "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'");
    return res;
  }, Runs::kInline);
}

}  // namespace ag::control
