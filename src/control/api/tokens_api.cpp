// /projects/{id}/tokens: issue, list, read and revoke service tokens; /.well-known/jwks.json.
#include "common/time.hpp"
#include "control/api/config_changes.hpp"
#include "control/api/routes.hpp"
#include "control/api/tokens.hpp"

namespace ag::control {

namespace {

http::Response issue(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  const http::PathParams& params = call.params;
  const Principal& user = call.principal();
  json body;
  try {
    body = parse_object_body(req);
  } catch (const ApiError& e) {
    if (e.status() != 400) throw;
    throw token_error("VALIDATION_ERROR", e.detail());
  }
  IssueInput in = parse_issue_body(body);
  in.created_by = user.label();  // the authenticated issuer; a client's "createdBy" is only a label
  json out;
  app.db->transaction([&](store::Connection& c) {
    auto project = project_ref_by_id(c, params.at("id"));
    out = issue_token(app, c, project, in, audit_context(call));
  });
  notify_config_change(app);  // a first token may have created a signing key
  return json_response(201, out);
}

http::Response list(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  const http::PathParams& params = call.params;
  std::string active;
  bool only_active = false;
  if (http::query_param(req.query, "active", active)) {
    if (active != "true" && active != "false") throw validation_error("active", "must be true or false");
    only_active = active == "true";
  }
  json tokens = json::array();
  app.db->with_connection([&](store::Connection& c) {
    auto project = project_ref_by_id(c, params.at("id"));
    auto r = only_active
                 ? c.exec(std::string("SELECT ") + kTokenColumns +
                              " FROM gateway_tokens WHERE project_id = $1 AND is_active = 1 AND expires_at > $2 ORDER BY seq DESC",
                          {project.id, now_ms()})
                 : c.exec(std::string("SELECT ") + kTokenColumns + " FROM gateway_tokens WHERE project_id = $1 ORDER BY seq DESC",
                          {project.id});
    for (const auto& row : r.rows) tokens.push_back(token_record(row));
  });
  return json_response(200, {{"tokens", tokens}});
}

http::Response get(AppState& app, const Call& call) {
  const http::PathParams& params = call.params;
  json out;
  app.db->with_connection([&](store::Connection& c) {
    auto project = project_ref_by_id(c, params.at("id"));
    auto r = c.exec(std::string("SELECT ") + kTokenColumns + " FROM gateway_tokens WHERE project_id = $1 AND jti = $2",
                    {project.id, params.at("jti")});
    if (r.empty()) throw ApiError(404, "Token not found");
    out = token_record(r.rows[0]);
  });
  return json_response(200, out);
}

http::Response revoke(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  const http::PathParams& params = call.params;
  const Principal& user = call.principal();
  json body = parse_object_body(req, true);
  reject_unknown_fields(body, {"reason"});
  auto reason = get_string(body, "reason");
  if (reason && reason->size() > 1000) throw validation_error("reason", "at most 1000 characters");
  std::optional<json> out;
  app.db->transaction([&](store::Connection& c) {
    auto project = project_ref_by_id(c, params.at("id"));
    out = revoke_token(app, c, project.id, params.at("jti"), user.label(), reason, audit_context(call));
  });
  if (!out) throw ApiError(404, "Token not found or not active");
  notify_config_change(app);
  return json_response(200, *out);
}

http::Response well_known_jwks(AppState& app) {
  json out;
  app.db->with_connection([&](store::Connection& c) { out = jwks(c); });
  auto r = json_response(200, out);
  r.set_header("Cache-Control", "public, max-age=300");
  return r;
}

}  // namespace

void register_token_routes(RouteTable& r, AppState& app) {
  r.add("POST", "/projects/{id}/tokens", or_agent(Access::kProjectAdmin), [&app](const Call& c) { return issue(app, c); });
  r.add("GET", "/projects/{id}/tokens", or_agent(Access::kProjectMember), [&app](const Call& c) { return list(app, c); });
  r.add("GET", "/projects/{id}/tokens/{jti}", or_agent(Access::kProjectMember), [&app](const Call& c) { return get(app, c); });
  r.add("POST", "/projects/{id}/tokens/{jti}/revoke", or_agent(Access::kProjectAdmin), [&app](const Call& c) { return revoke(app, c); });
  r.add("GET", "/.well-known/jwks.json", Access::kPublic, [&app](const Call&) { return well_known_jwks(app); });
}

}  // namespace ag::control
