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

std::optional<std::string> get_string_either(const json& obj, std::string_view name, std::string_view alias,
                                             std::string_view report_as) {
  if (obj.contains(name) && obj.contains(alias))
    throw validation_error(report_as, "give " + std::string(name) + " or " + std::string(alias) + ", not both");
  auto v = get_string(obj, name);
  return v ? v : get_string(obj, alias);
}

ApiError coded_error(int status, std::string_view code, std::string detail) {
  ApiError e(status, std::move(detail));
  e.code = std::string(code);
  return e;
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

AuditContext audit_context(const http::Request& req, const std::optional<std::string>& actor) {
  return {actor, req.remote_ip, std::string(request_id(req)), "user", std::nullopt, std::nullopt};
}

void audit(store::Connection& c, const AuditContext& who, std::string_view action, std::string_view target_type,
           const std::string& target_id, const json& detail) {
  c.exec(
      "INSERT INTO audit_log (actor_id, action, target_type, target_id, detail, request_id, ip, "
      "created_at, actor_type, org_id, project_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
      {store::opt(who.actor), std::string(action), std::string(target_type), target_id, detail.dump(),
       who.request_id, who.ip, now_ms(), who.actor ? store::Value(who.actor_type) : store::Value(nullptr),
       store::opt(who.org_id), store::opt(who.project_id)});
}

void audit(store::Connection& c, const http::Request& req, const std::optional<std::string>& actor,
           std::string_view action, std::string_view target_type, const std::string& target_id,
           const json& detail) {
  audit(c, audit_context(req, actor), action, target_type, target_id, detail);
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
