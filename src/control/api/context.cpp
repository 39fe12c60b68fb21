#include "control/api/context.hpp"

#include "common/time.hpp"

namespace ag::control {

ApiError unauthorized(std::string detail) {
  ApiError e(401, std::move(detail));
  e.headers.push_back({"WWW-Authenticate", "Bearer"});
  return e;
}

ApiError validation_error(std::string_view field, std::string_view message) {
  return ApiError(422, std::string(field) + ": " + std::string(message));
}

http::Response json_response(int status, const json& body) {
  http::Response r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  r.set_header("Content-Type", "application/json");
  return r;
}

http::Response no_content() {
  http::Response r;
  r.status = 204;
  return r;
}

http::Response error_response(int status, std::string_view detail) {
  return json_response(status, json{{"detail", detail}});
}

std::string_view request_id(const http::Request& req) { return req.header("x-request-id"); }

json parse_object_body(const http::Request& req, bool allow_empty) {
  if (req.body.empty()) {
    if (allow_empty) return json::object();
    throw ApiError(400, "Request body is required (a JSON object)");
  }
  auto ct = req.header("content-type");
  if (!ct.empty()) {
    std::string lower(ct.substr(0, ct.find(';')));
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    while (!lower.empty() && lower.back() == ' ') lower.pop_back();
    if (lower != "application/json" && !(lower.size() > 5 && lower.ends_with("+json")))
      throw ApiError(415, "Content-Type must be application/json");
  }
  // Nesting is limited: handlers serialise parts of a body again (dump() recurses per level).
  constexpr int kMaxDepth = 64;
  bool too_deep = false;
  json j = json::parse(
      req.body,
      [&](int depth, json::parse_event_t, json&) {
        if (depth > kMaxDepth) too_deep = true;
        return !too_deep;
      },
      false);
  if (too_deep) throw ApiError(400, "JSON body nested too deeply (at most 64 levels)");
  if (j.is_discarded()) throw ApiError(400, "Malformed JSON body");
  if (!j.is_object()) throw ApiError(400, "Request body must be a JSON object");
  return j;
}

void reject_unknown_fields(const json& obj, std::initializer_list<std::string_view> allowed) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    bool ok = false;
    for (auto a : allowed) ok = ok || it.key() == a;
    if (!ok) throw validation_error(it.key(), "unknown field");
  }
}

std::optional<std::string> get_string(const json& obj, std::string_view field) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) throw validation_error(field, "must be a string");
  return it->get<std::string>();
}

std::optional<std::int64_t> get_int(const json& obj, std::string_view field, std::int64_t lo,
                                    std::int64_t hi) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  auto range = "must be an integer between " + std::to_string(lo) + " and " + std::to_string(hi);
  if (!it->is_number_integer()) throw validation_error(field, range);
  std::int64_t v = 0;
  if (it->is_number_unsigned()) {
    auto u = it->get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(hi)) throw validation_error(field, range);
    v = static_cast<std::int64_t>(u);
  } else {
    v = it->get<std::int64_t>();
  }
  if (v < lo || v > hi) throw validation_error(field, range);
  return v;
}

std::string require_string(const json& obj, std::string_view field) {
  auto v = get_string(obj, field);
  if (!v) throw validation_error(field, "field required");
  return *v;
}

std::optional<Principal> optional_user(AppState& app, const http::Request& req) {
  auto auth = req.header("authorization");
  if (auth.empty()) return std::nullopt;
  if (auth.size() < 7 || !(auth.substr(0, 7) == "Bearer " || auth.substr(0, 7) == "bearer "))
    throw unauthorized("Authorization header must be 'Bearer <token>'");
  auto token = auth.substr(7);
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  auto v = jwt::verify(app.jwt_alg, app.settings.jwt_secret, token);
  if (!v.payload) throw unauthorized("Invalid or expired token");
  json claims = json::parse(*v.payload, nullptr, false);
  auto str = [&](const char* k) -> std::string {
    auto it = claims.find(k);
    return it != claims.end() && it->is_string() ? it->get<std::string>() : std::string{};
  };
  auto exp = claims.find("exp");
  if (exp == claims.end() || !exp->is_number()) throw unauthorized("Invalid or expired token");
  std::int64_t now = now_ms();
  if (exp->get<double>() * 1000.0 <= static_cast<double>(now)) throw unauthorized("Token expired");
  if (str("iss") != "antigravity" || str("aud") != "antigravity-control")
    throw unauthorized("Invalid or expired token");
  std::string sid = str("sid"), sub = str("sub");
  if (sid.empty() || sub.empty()) throw unauthorized("Invalid or expired token");
  std::optional<Principal> p;
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec(
        "SELECT u.id, u.email, u.name, s.expires_at, u.is_operator FROM sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL AND s.expires_at > $3",
        {sid, sub, now});
    if (!r.empty())
      p = Principal{r.rows[0].text(0), r.rows[0].text(1), r.rows[0].text(2), sid, r.rows[0].integer(3),
                    r.rows[0].integer(4) != 0};
  });
  if (!p) throw unauthorized("Session revoked or expired");
  return p;
}

Principal require_user(AppState& app, const http::Request& req) {
  auto p = optional_user(app, req);
  if (!p) throw unauthorized("Not authenticated");
  return *p;
}

Principal require_operator(AppState& app, const http::Request& req) {
  auto p = require_user(app, req);
  if (!p.is_operator) throw ApiError(403, "Operators only");
  return p;
}

void audit(store::Connection& c, const http::Request& req, const std::optional<std::string>& actor,
           std::string_view action, std::string_view target_type, const std::string& target_id,
           const json& detail) {
  c.exec(
      "INSERT INTO audit_log (actor_id, action, target_type, target_id, detail, request_id, ip, "
      "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
      {store::opt(actor), std::string(action), std::string(target_type), target_id, detail.dump(),
       std::string(request_id(req)), req.remote_ip, now_ms()});
}

std::int64_t bump_config_version(store::Connection& c) {
  auto r = c.exec("UPDATE config_state SET version = version + 1 WHERE id = 1 RETURNING version", {});
  return r.rows.at(0).integer(0);
}

std::string iso_time(std::int64_t ms) { return format_rfc3339(ms); }

json iso_or_null(const std::optional<std::int64_t>& ms) {
  if (!ms) return nullptr;
  return format_rfc3339(*ms);
}

}  // namespace ag::control
