// A project's risk policy (docs/risk.md).
#include <algorithm>

#include "config/sections/sections.hpp"

namespace ag::config::sections {

const std::shared_ptr<const RiskPolicy>& default_risk() {
  static const auto kDefault = std::make_shared<const RiskPolicy>();
  return kDefault;
}

bool parse_risk(simdjson::dom::object ro, const std::string& where, RiskPolicy& r, Parser& p) {
  for (auto [k, v] : ro) {
    static constexpr std::string_view kKnown[] = {"enabled", "mode", "weights", "thresholds", "velocity_per_min",
                                                 "burst_per_sec", "drift_endpoints", "max_request_bytes",
                                                 "allowed_methods", "ip_allow", "ip_deny", "throttle",
                                                 "country_allow", "country_deny"};
    if (std::find(std::begin(kKnown), std::end(kKnown), k) == std::end(kKnown))
      return p.fail(where + "." + std::string(k), "unknown field");
  }
  simdjson::dom::element e;
  bool b = true;
  if (!ro["enabled"].get(e) && !e.is_null()) {
    if (e.get_bool().get(b)) return p.fail(where + ".enabled", "must be true or false");
    r.enabled = b;
  }
  std::string_view sv;
  if (!ro["mode"].get(e) && !e.is_null()) {
    if (e.get_string().get(sv) || (sv != "shadow" && sv != "enforce")) return p.fail(where + ".mode", "must be shadow or enforce");
    r.shadow = sv == "shadow";
  }
  simdjson::dom::object wo;
  if (!ro["weights"].get(e) && !e.is_null()) {
    if (e.get_object().get(wo)) return p.fail(where + ".weights", "must be an object");
    for (auto [k, v] : wo) {
      static constexpr std::string_view kW[] = {"velocity", "burst", "drift", "user_agent", "method", "size"};
      if (std::find(std::begin(kW), std::end(kW), k) == std::end(kW)) return p.fail(where + ".weights." + std::string(k), "unknown signal");
    }
    const std::string ww = where + ".weights";
    if (!get_double_in(wo, "velocity", 0, 1, ww, r.w_velocity, p) || !get_double_in(wo, "burst", 0, 1, ww, r.w_burst, p) ||
        !get_double_in(wo, "drift", 0, 1, ww, r.w_drift, p) || !get_double_in(wo, "user_agent", 0, 1, ww, r.w_user_agent, p) ||
        !get_double_in(wo, "method", 0, 1, ww, r.w_method, p) || !get_double_in(wo, "size", 0, 1, ww, r.w_size, p))
      return false;
  }
  if (!ro["thresholds"].get(e) && !e.is_null()) {
    simdjson::dom::object to;
    if (e.get_object().get(to)) return p.fail(where + ".thresholds", "must be an object");
    for (auto [k, v] : to)
      if (k != "throttle" && k != "block") return p.fail(where + ".thresholds." + std::string(k), "unknown field");
    if (!get_double_in(to, "throttle", 0, 1, where + ".thresholds", r.throttle_at, p) ||
        !get_double_in(to, "block", 0, 1, where + ".thresholds", r.block_at, p))
      return false;
    if (r.throttle_at > r.block_at) return p.fail(where + ".thresholds", "throttle must not exceed block");
  }
  if (!get_int_in(ro, "velocity_per_min", 1, 100000000, where, r.velocity_per_min, p) ||
      !get_int_in(ro, "burst_per_sec", 1, 10000000, where, r.burst_per_sec, p) ||
      !get_int_in(ro, "drift_endpoints", 1, 10000, where, r.drift_endpoints, p) ||
      !get_int_in(ro, "max_request_bytes", 0, 1LL << 40, where, r.max_request_bytes, p))
    return false;
  if (!ro["allowed_methods"].get(e) && !e.is_null()) {
    simdjson::dom::array a;
    if (e.get_array().get(a) || a.size() > 32) return p.fail(where + ".allowed_methods", "must be a list of HTTP methods");
    for (simdjson::dom::element m : a) {
      if (m.get_string().get(sv) || sv.empty() || sv.size() > 20) return p.fail(where + ".allowed_methods", "must be a list of HTTP methods");
      std::string up(sv);
      for (auto& c : up) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      r.allowed_methods.push_back(std::move(up));
    }
  }
  if (!get_cidr_list(ro, "ip_allow", where, r.ip_allow, p) || !get_cidr_list(ro, "ip_deny", where, r.ip_deny, p)) return false;
  for (auto [field, list] : {std::pair<const char*, std::vector<std::string>*>{"country_allow", &r.country_allow},
                             {"country_deny", &r.country_deny}}) {
    if (ro[field].get(e) || e.is_null()) continue;
    simdjson::dom::array a;
    if (e.get_array().get(a) || a.size() > 300) return p.fail(where + "." + field, "must be a list of ISO 3166-1 alpha-2 codes");
    for (simdjson::dom::element c : a) {
      if (c.get_string().get(sv) || sv.size() != 2 || !std::isalpha(static_cast<unsigned char>(sv[0])) ||
          !std::isalpha(static_cast<unsigned char>(sv[1])))
        return p.fail(where + "." + field, "must be a list of ISO 3166-1 alpha-2 codes");
      std::string code(sv);
      for (auto& ch : code) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      list->push_back(std::move(code));
    }
  }
  if (!ro["throttle"].get(e) && !e.is_null()) {
    simdjson::dom::object th;
    if (e.get_object().get(th)) return p.fail(where + ".throttle", "must be an object");
    for (auto [k, v] : th)
      if (k != "action" && k != "delay_ms" && k != "limit_factor") return p.fail(where + ".throttle." + std::string(k), "unknown field");
    if (!th["action"].get(e) && !e.is_null()) {
      if (e.get_string().get(sv) || (sv != "delay" && sv != "limit")) return p.fail(where + ".throttle.action", "must be delay or limit");
      r.throttle_delay = sv == "delay";
    }
    if (!get_int_in(th, "delay_ms", 1, 10000, where + ".throttle", r.throttle_delay_ms, p) ||
        !get_double_in(th, "limit_factor", 0.001, 1, where + ".throttle", r.throttle_limit_factor, p))
      return false;
  }
  r.spec_json = simdjson::minify(ro);
  return true;
}

}  // namespace ag::config::sections

namespace ag::config {

std::string parse_risk_policy(std::string_view json_text, RiskPolicy& out) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  std::string error;
  if (!sections::parse_json(parser, json_text, doc, error)) return error;
  simdjson::dom::object ro;
  if (doc.get_object().get(ro)) return "risk: must be an object";
  sections::Parser p;
  if (!sections::parse_risk(ro, "risk", out, p)) return p.error;
  return {};
}

}  // namespace ag::config
