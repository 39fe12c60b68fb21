// A project of the worker-config document, and its API keys.
#include "common/slug.hpp"
#include "common/time.hpp"
#include "config/sections/sections.hpp"

namespace ag::config::sections {

// A project object without its keys.
bool parse_project(simdjson::dom::object po, const std::string& where, Project& proj, Parser& p) {
  std::string_view sv;
  if (po["id"].get_string().get(sv) || sv.empty()) return p.fail(where + ".id", "must be a non-empty string");
  proj.id = std::string(sv);
  if (!po["name"].get_string().get(sv)) proj.name = std::string(sv);
  simdjson::dom::element slug;
  if (!po["slug"].get(slug) && !slug.is_null()) {
    if (slug.get_string().get(sv) || !valid_slug(sv)) return p.fail(where + ".slug", "must match ^[a-z0-9_-]{1,63}$");
    proj.slug = std::string(sv);
  }
  // The default upstream may be absent for a project reached only through its services.
  std::string_view url;
  simdjson::dom::element ue;
  bool has_url = (!po["upstream_base_url"].get(ue) && !ue.is_null()) || (!po["upstream_url"].get(ue) && !ue.is_null());
  if (has_url) {
    if (ue.get_string().get(url)) return p.fail(where + ".upstream_base_url", "must be a string");
    if (auto e = parse_upstream(url, proj.upstream); !e.empty()) return p.fail(where + ".upstream_base_url", e);
  }
  simdjson::dom::element se;
  if (!po["services"].get(se) && !se.is_null()) {
    simdjson::dom::array services;
    if (se.get_array().get(services)) return p.fail(where + ".services", "must be an array");
    if (proj.slug.empty() && services.size() > 0) return p.fail(where + ".services", "a project with services needs a slug");
    std::size_t si = 0;
    for (simdjson::dom::element s1 : services) {
      std::string sw = where + ".services[" + std::to_string(si++) + "]";
      simdjson::dom::object so;
      if (s1.get_object().get(so)) return p.fail(sw, "must be an object");
      Service svc;
      if (!parse_service(so, sw, proj.id, svc, p)) return false;
      if (proj.find_service(svc.name)) return p.fail(sw + ".name", "duplicate service");
      proj.services.push_back(std::move(svc));
    }
  }
  simdjson::dom::element rl;
  if (!po["rate_limit"].get(rl) && !get_policy(rl, where + ".rate_limit", proj.rate, p)) return false;
  simdjson::dom::element re;
  if (!po["risk"].get(re) && !re.is_null()) {
    simdjson::dom::object ro;
    if (re.get_object().get(ro)) return p.fail(where + ".risk", "must be an object or null");
    auto risk = std::make_shared<RiskPolicy>();
    if (!parse_risk(ro, where + ".risk", *risk, p)) return false;
    proj.risk = std::move(risk);
  } else {
    proj.risk = default_risk();
  }
  std::int64_t mb = 0;
  if (!po["max_body_bytes"].get_int64().get(mb)) {
    if (mb < 0) return p.fail(where + ".max_body_bytes", "must be >= 0");
    proj.max_body_bytes = mb;
  }
  proj.metrics_slot = p.ctx->slots.slot_for(proj.id);
  return true;
}

bool parse_key(simdjson::dom::object ko, const std::string& where, std::uint32_t slot, KeyDigest& d, KeyEntry& k,
               Parser& p) {
  std::string_view sv;
  if (ko["hash"].get_string().get(sv) || !hex_digest(sv, d))
    return p.fail(where + ".hash", "must be 64 hex characters (SHA-256)");
  k.project_slot = slot;
  if (!ko["id"].get_string().get(sv)) k.id.assign(sv);
  if (!ko["public_id"].get_string().get(sv)) k.public_id.assign(sv);
  simdjson::dom::element ex;
  if (!ko["expires_at"].get(ex) && !ex.is_null()) {
    std::string_view es;
    if (ex.get_string().get(es) || (k.expires_at_ms = parse_rfc3339(es)) < 0)
      return p.fail(where + ".expires_at", "must be an RFC 3339 UTC time or null");
  }
  simdjson::dom::element krl;
  if (!ko["rate_limit"].get(krl) && !krl.is_null()) {
    if (!get_policy(krl, where + ".rate_limit", k.rate_override, p)) return false;
    k.has_rate_override = true;
  }
  return true;
}

}  // namespace ag::config::sections
