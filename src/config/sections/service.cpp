// A service of a project: its route, targets, balancing and health checks.
#include "common/slug.hpp"
#include "config/sections/sections.hpp"

namespace ag::config::sections {

// One service (docs/services-and-tokens.md); the same shape as the control API's service record.
bool parse_service(simdjson::dom::object so, const std::string& where, const std::string& project_id, Service& svc,
                   Parser& p) {
  std::string_view sv;
  if (so["name"].get_string().get(sv) || !valid_slug(sv)) return p.fail(where + ".name", "must match ^[a-z0-9_-]{1,63}$");
  svc.name = std::string(sv);
  simdjson::dom::array targets;
  if (so["targets"].get_array().get(targets) || targets.size() == 0 || targets.size() > 16)
    return p.fail(where + ".targets", "must be an array of 1..16 URLs");
  std::size_t ti = 0;
  for (simdjson::dom::element te : targets) {
    std::string tw = where + ".targets[" + std::to_string(ti++) + "]";
    if (te.get_string().get(sv)) return p.fail(tw, "must be a string");
    ServiceTarget t;
    if (auto e = parse_upstream(sv, t.upstream); !e.empty()) return p.fail(tw, e);
    t.state = p.ctx->targets.state_for(project_id + "/" + svc.name + "|" + t.upstream.url);
    svc.targets.push_back(std::move(t));
  }
  if (!so["balancer"].get_string().get(sv)) {
    if (sv == "least_request") svc.least_request = true;
    else if (sv != "round_robin") return p.fail(where + ".balancer", "must be round_robin or least_request");
  }
  simdjson::dom::element hc;
  if (!so["health_check"].get(hc) && !hc.is_null()) {
    simdjson::dom::object ho;
    if (hc.get_object().get(ho)) return p.fail(where + ".health_check", "must be an object or null");
    if (ho["path"].get_string().get(sv) || sv.empty() || sv.front() != '/')
      return p.fail(where + ".health_check.path", "must be a path starting with /");
    svc.health_path = std::string(sv);
    std::int64_t interval_s = 10;
    if (!get_int_in(ho, "interval_sec", 1, 3600, where + ".health_check", interval_s, p)) return false;
    svc.health_interval_ms = interval_s * 1000;
    if (!get_int_in(ho, "timeout_ms", 100, 60000, where + ".health_check", svc.health_timeout_ms, p)) return false;
  }
  simdjson::dom::element ej;
  if (!so["ejection"].get(ej) && !ej.is_null()) {
    simdjson::dom::object eo;
    if (ej.get_object().get(eo)) return p.fail(where + ".ejection", "must be an object");
    std::int64_t f = svc.eject_failures, cool_s = svc.eject_cooldown_ms / 1000;
    if (!get_int_in(eo, "failures", 1, 100, where + ".ejection", f, p)) return false;
    if (!get_int_in(eo, "cooldown_sec", 1, 3600, where + ".ejection", cool_s, p)) return false;
    svc.eject_failures = static_cast<std::int32_t>(f);
    svc.eject_cooldown_ms = cool_s * 1000;
  }
  svc.spec_json = simdjson::minify(so);
  return true;
}

}  // namespace ag::config::sections
