// /projects/{id}/services: the named backends of a project, reached on the worker at
// /{slug}/{service}/* (docs/services-and-tokens.md).
#include "common/time.hpp"
#include "control/api/config_changes.hpp"
#include "control/api/routes.hpp"
#include "control/api/tokens.hpp"
#include "control/service/validation.hpp"

namespace ag::control {

namespace {

// Validates a PUT body and returns the service in worker form (also what is stored).
json parse_spec(const std::string& name, const json& body) {
  reject_unknown_fields(body, {"targets", "balancer", "health_check", "ejection"});
  auto t = body.find("targets");
  if (t == body.end() || !t->is_array() || t->empty() || t->size() > 16)
    throw validation_error("targets", "must be an array of 1 to 16 http:// or https:// URLs");
  json targets = json::array();
  for (std::size_t i = 0; i < t->size(); ++i) {
    const auto& v = (*t)[i];
    std::string field = "targets[" + std::to_string(i) + "]";
    if (!v.is_string()) throw validation_error(field, "must be a string");
    std::string url = v.get<std::string>();
    if (auto e = check_upstream_url(url); !e.empty()) throw validation_error(field, e);
    targets.push_back(url);
  }
  std::string balancer = "round_robin";
  if (auto b = get_string(body, "balancer")) {
    if (*b != "round_robin" && *b != "least_request") throw validation_error("balancer", "must be round_robin or least_request");
    balancer = *b;
  }
  json health = nullptr;
  if (auto h = body.find("health_check"); h != body.end() && !h->is_null()) {
    if (!h->is_object()) throw validation_error("health_check", "must be an object or null");
    for (auto f = h->begin(); f != h->end(); ++f)
      if (f.key() != "path" && f.key() != "interval_sec" && f.key() != "timeout_ms")
        throw validation_error("health_check." + f.key(), "unknown field");
    auto path = h->find("path");
    if (path == h->end() || !path->is_string() || path->get_ref<const std::string&>().empty() ||
        path->get_ref<const std::string&>().front() != '/' || path->get_ref<const std::string&>().size() > 1024)
      throw validation_error("health_check.path", "must be a path starting with /");
    for (char c : path->get_ref<const std::string&>())
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) throw validation_error("health_check.path", "must not contain spaces or control characters");
    std::int64_t interval = 10, timeout = 2000;
    try {
      if (auto v = get_int(*h, "interval_sec", 1, 3600)) interval = *v;
      if (auto v = get_int(*h, "timeout_ms", 100, 60000)) timeout = *v;
    } catch (const ApiError& e) {
      throw ApiError(422, "health_check." + e.detail());
    }
    health = {{"path", *path}, {"interval_sec", interval}, {"timeout_ms", timeout}};
  }
  std::int64_t failures = 5, cooldown = 30;
  if (auto e = body.find("ejection"); e != body.end() && !e->is_null()) {
    if (!e->is_object()) throw validation_error("ejection", "must be an object");
    for (auto f = e->begin(); f != e->end(); ++f)
      if (f.key() != "failures" && f.key() != "cooldown_sec") throw validation_error("ejection." + f.key(), "unknown field");
    try {
      if (auto v = get_int(*e, "failures", 1, 100)) failures = *v;
      if (auto v = get_int(*e, "cooldown_sec", 1, 3600)) cooldown = *v;
    } catch (const ApiError& err) {
      throw ApiError(422, "ejection." + err.detail());
    }
  }
  return {{"name", name},
          {"targets", targets},
          {"balancer", balancer},
          {"health_check", health},
          {"ejection", {{"failures", failures}, {"cooldown_sec", cooldown}}}};
}

json record(const store::Row& r) {  // spec, created_at, updated_at
  json out = json::parse(r.text(0));
  out["created_at"] = iso_time(r.integer(1));
  out["updated_at"] = iso_time(r.integer(2));
  return out;
}

const std::string& service_name(const http::PathParams& params) {
  const auto& name = params.at("name");
  if (!valid_slug(name)) throw ApiError(404, "Service not found");
  return name;
}

http::Response put(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  const http::PathParams& params = call.params;
  const auto& name = params.at("name");
  json body = parse_object_body(req);
  if (!valid_slug(name)) throw validation_error("name", "must match ^[a-z0-9_-]{1,63}$");
  json spec = parse_spec(name, body);
  bool created = false;
  json out;
  app.db->transaction([&](store::Connection& c) {
    auto project = project_ref_by_id(c, params.at("id"));
    if (!project.slug) throw validation_error("slug", "set the project's slug before adding services");
    std::int64_t now = now_ms();
    auto existing = c.exec("SELECT created_at FROM services WHERE project_id = $1 AND name = $2", {project.id, name});
    created = existing.empty();
    if (created) {
      if (c.exec("SELECT COUNT(*) FROM services WHERE project_id = $1", {project.id}).rows.at(0).integer(0) >= 100)
        throw validation_error("name", "a project has at most 100 services");
      c.exec("INSERT INTO services (project_id, name, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
             {project.id, name, spec.dump(), now});
    } else {
      c.exec("UPDATE services SET spec = $1, updated_at = $2 WHERE project_id = $3 AND name = $4",
             {spec.dump(), now, project.id, name});
    }
    audit(c, call, created ? "service.create" : "service.update", "service", project.id + "/" + name);
    ConfigChanges(app, c).project_upsert(project.id);
    out = record(c.exec("SELECT spec, created_at, updated_at FROM services WHERE project_id = $1 AND name = $2",
                        {project.id, name})
                     .rows.at(0));
  });
  notify_config_change(app);
  return json_response(created ? 201 : 200, out);
}

http::Response list(AppState& app, const Call& call) {
  const http::PathParams& params = call.params;
  json services = json::array();
  app.db->with_connection([&](store::Connection& c) {
    auto project = project_ref_by_id(c, params.at("id"));
    auto r = c.exec("SELECT spec, created_at, updated_at FROM services WHERE project_id = $1 ORDER BY name", {project.id});
    for (const auto& row : r.rows) services.push_back(record(row));
  });
  return json_response(200, {{"services", services}});
}

http::Response get(AppState& app, const Call& call) {
  const http::PathParams& params = call.params;
  json out;
  app.db->with_connection([&](store::Connection& c) {
    auto project = project_ref_by_id(c, params.at("id"));
    auto r = c.exec("SELECT spec, created_at, updated_at FROM services WHERE project_id = $1 AND name = $2",
                    {project.id, service_name(params)});
    if (r.empty()) throw ApiError(404, "Service not found");
    out = record(r.rows[0]);
  });
  return json_response(200, out);
}

http::Response remove(AppState& app, const Call& call) {
  const http::PathParams& params = call.params;
  app.db->transaction([&](store::Connection& c) {
    auto project = project_ref_by_id(c, params.at("id"));
    auto r = c.exec("DELETE FROM services WHERE project_id = $1 AND name = $2", {project.id, service_name(params)});
    if (r.affected == 0) throw ApiError(404, "Service not found");
    audit(c, call, "service.delete", "service", project.id + "/" + params.at("name"));
    ConfigChanges(app, c).project_upsert(project.id);
  });
  notify_config_change(app);
  return no_content();
}

}  // namespace

void register_service_routes(RouteTable& r, AppState& app) {
  r.add("GET", "/projects/{id}/services", or_agent(Access::kProjectMember), [&app](const Call& c) { return list(app, c); });
  r.add("PUT", "/projects/{id}/services/{name}", or_agent(Access::kProjectAdmin), [&app](const Call& c) { return put(app, c); });
  r.add("GET", "/projects/{id}/services/{name}", or_agent(Access::kProjectMember), [&app](const Call& c) { return get(app, c); });
  r.add("DELETE", "/projects/{id}/services/{name}", or_agent(Access::kProjectAdmin), [&app](const Call& c) { return remove(app, c); });
}

}  // namespace ag::control
