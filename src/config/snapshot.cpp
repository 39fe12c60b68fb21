// Over 600 lines: the worker-config document's parsers (projects, keys, services, risk, JWT
// keys), the build, deltas and the serializer share the snapshot's private types and slot
// registries; splitting them by section needs those passed in rather than file-local, a change
// of its own (docs/architecture.md, "Not yet split").
#include "config/snapshot.hpp"

#include <netdb.h>
#include <simdjson.h>
#include <sys/socket.h>

#include <cctype>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <thread>

#include "common/http_url.hpp"
#include "common/json_string.hpp"
#include "common/slug.hpp"
#include "common/time.hpp"

namespace ag::config {

namespace {

std::mutex g_slots_mutex;
std::unordered_map<std::string, std::uint32_t> g_slots;
std::vector<std::string> g_slot_names{""};

std::string to_hex_digest(const KeyDigest& d) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(64, '0');
  for (std::size_t i = 0; i < 32; ++i) {
    out[2 * i] = kHex[d[i] >> 4];
    out[2 * i + 1] = kHex[d[i] & 0xf];
  }
  return out;
}

// Table-driven: a million keys per full document made the branchy version a top entry in profiles.
constexpr std::array<std::int8_t, 256> kHexValue = [] {
  std::array<std::int8_t, 256> t{};
  for (auto& v : t) v = -1;
  for (int c = '0'; c <= '9'; ++c) t[c] = static_cast<std::int8_t>(c - '0');
  for (int c = 'a'; c <= 'f'; ++c) t[c] = static_cast<std::int8_t>(c - 'a' + 10);
  for (int c = 'A'; c <= 'F'; ++c) t[c] = static_cast<std::int8_t>(c - 'A' + 10);
  return t;
}();

bool hex_digest(std::string_view hex, KeyDigest& out) {
  if (hex.size() != 64) return false;
  int bad = 0;
  for (std::size_t i = 0; i < 32; ++i) {
    int hi = kHexValue[static_cast<unsigned char>(hex[2 * i])];
    int lo = kHexValue[static_cast<unsigned char>(hex[2 * i + 1])];
    bad |= hi | lo;  // any -1 sets the sign bit
    out[i] = static_cast<unsigned char>((hi << 4) | (lo & 0xf));
  }
  return bad >= 0;
}

std::string parse_upstream(std::string_view url, Upstream& u) {
  u.url = std::string(url);
  HttpUrl h;
  if (auto error = parse_http_url(url, h); !error.empty()) return error;
  u.tls = h.tls;
  u.port = h.port;
  std::string_view path = h.path;
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  u.base_path = std::string(path);
  u.host = std::string(h.host);
  u.host_header = std::string(h.authority);
  // The scheme is part of the pool's key: an https:// and an http:// upstream on the same
  // authority never share connections.
  u.pool_key = (u.tls ? "https://" : "http://") + std::string(h.authority);
  return {};
}

void resolve(Upstream& u) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(u.port);
  if (getaddrinfo(u.host.c_str(), port.c_str(), &hints, &res) != 0) return;
  for (auto* a = res; a; a = a->ai_next) {
    if (a->ai_addrlen > sizeof(Endpoint::addr)) continue;
    Endpoint e;
    std::memcpy(e.addr, a->ai_addr, a->ai_addrlen);
    e.len = static_cast<std::uint8_t>(a->ai_addrlen);
    u.endpoints.push_back(e);
  }
  freeaddrinfo(res);
}

struct Parser {
  std::string error;
  bool fail(std::string where, std::string_view what) {
    if (error.empty()) error = where + ": " + std::string(what);
    return false;
  }
};

bool get_policy(simdjson::dom::element obj, const std::string& where, RatePolicy& out, Parser& p) {
  simdjson::dom::object o;
  if (obj.get_object().get(o)) return p.fail(where, "must be an object");
  std::int64_t v = 0;
  if (o["requests_per_minute"].get_int64().get(v) || v < 1 || v > 100000000)
    return p.fail(where + ".requests_per_minute", "must be an integer 1..100000000");
  out.requests_per_minute = v;
  if (o["burst"].get_int64().get(v) || v < 0 || v > 100000000)
    return p.fail(where + ".burst", "must be an integer 0..100000000");
  out.burst = v;
  return true;
}


std::mutex g_targets_mutex;
std::unordered_map<std::string, std::weak_ptr<TargetState>> g_targets;

// The shared state of a service target: the same object for as long as any snapshot has it.
std::shared_ptr<TargetState> target_state(const std::string& key) {
  std::lock_guard lock(g_targets_mutex);
  auto& slot = g_targets[key];
  if (auto s = slot.lock()) return s;
  auto s = std::make_shared<TargetState>();
  slot = s;
  if (g_targets.size() > 4096)  // forget targets no snapshot holds any more
    std::erase_if(g_targets, [](const auto& kv) { return kv.second.expired(); });
  return s;
}

bool get_int_in(simdjson::dom::object o, std::string_view field, std::int64_t lo, std::int64_t hi,
                const std::string& where, std::int64_t& out, Parser& p) {
  simdjson::dom::element e;
  if (o[field].get(e) || e.is_null()) return true;  // absent: keep the default
  std::int64_t v = 0;
  if (e.get_int64().get(v) || v < lo || v > hi)
    return p.fail(where + "." + std::string(field), "must be an integer " + std::to_string(lo) + ".." + std::to_string(hi));
  out = v;
  return true;
}


const std::shared_ptr<const RiskPolicy>& default_risk() {
  static const auto kDefault = std::make_shared<const RiskPolicy>();
  return kDefault;
}

bool get_double_in(simdjson::dom::object o, std::string_view field, double lo, double hi, const std::string& where,
                   double& out, Parser& p) {
  simdjson::dom::element e;
  if (o[field].get(e) || e.is_null()) return true;
  double v = 0;
  if (e.get_double().get(v) || v < lo || v > hi)
  {
    char msg[64];
    std::snprintf(msg, sizeof msg, "must be a number from %g to %g", lo, hi);
    return p.fail(where + "." + std::string(field), msg);
  }
  out = v;
  return true;
}

bool get_cidr_list(simdjson::dom::object o, std::string_view field, const std::string& where, std::vector<Cidr>& out,
                   Parser& p) {
  simdjson::dom::element e;
  if (o[field].get(e) || e.is_null()) return true;
  simdjson::dom::array a;
  if (e.get_array().get(a) || a.size() > 1000) return p.fail(where + "." + std::string(field), "must be a list of at most 1000 CIDRs");
  std::string joined;
  for (simdjson::dom::element c : a) {
    std::string_view sv;
    if (c.get_string().get(sv) || sv.find(',') != std::string_view::npos)
      return p.fail(where + "." + std::string(field), "entries must be CIDR strings");
    joined += std::string(sv) + ",";
  }
  try {
    out = parse_cidrs(joined);
  } catch (const std::exception& ex) {
    return p.fail(where + "." + std::string(field), ex.what());
  }
  return true;
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
    t.state = target_state(project_id + "/" + svc.name + "|" + t.upstream.url);
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
  proj.metrics_slot = metrics_slot_for(proj.id);
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

// Resolves upstream hosts (default upstreams and service targets), reusing what `previous`
// already resolved for the same host:port.
void resolve_all(std::vector<Project*>& projects, const Snapshot* previous) {
  std::unordered_map<std::string, std::vector<Endpoint>> resolved;
  auto remember = [&](const Upstream& u) {
    if (!u.endpoints.empty()) resolved.emplace(u.pool_key, u.endpoints);
  };
  if (previous)
    for (const auto& pp : previous->projects) {
      if (!pp) continue;
      remember(pp->upstream);
      for (const auto& svc : pp->services)
        for (const auto& t : svc.targets) remember(t.upstream);
    }
  auto one = [&](Upstream& u) {
    if (!u.endpoints.empty()) return;
    auto it = resolved.find(u.pool_key);
    if (it == resolved.end()) {
      resolve(u);
      resolved.emplace(u.pool_key, u.endpoints);
    } else {
      u.endpoints = it->second;
    }
  };
  for (Project* proj : projects) {
    one(proj->upstream);
    for (auto& svc : proj->services)
      for (auto& t : svc.targets) one(t.upstream);
  }
}

// Public keys and revocations (top level of a full document). Missing lists are empty.
bool parse_tokens(simdjson::dom::object root, TokenState& ts, Parser& p);
bool parse_jwt_keys(simdjson::dom::array keys, const std::string& where, TokenState& ts, Parser& p);
bool parse_revocation(simdjson::dom::object ro, const std::string& where, TokenState& ts, Parser& p);

std::shared_ptr<const std::unordered_map<std::string, std::uint32_t, StringHash, std::equal_to<>>> slug_index(
    const Snapshot& s) {
  auto m = std::make_shared<std::unordered_map<std::string, std::uint32_t, StringHash, std::equal_to<>>>();
  for (const auto& proj : s.projects)
    if (proj && !proj->slug.empty()) m->emplace(proj->slug, proj->metrics_slot);
  return m;
}

// Parses `json_text` into `doc` (which lives as long as `parser`); false with `error` set.
bool parse_json(simdjson::dom::parser& parser, std::string_view json_text, simdjson::dom::element& doc,
                std::string& error) {
  if (auto err = parser.parse(json_text.data(), json_text.size(), true).get(doc); err) {
    error = std::string("invalid JSON: ") + simdjson::error_message(err);
    return false;
  }
  return true;
}

std::shared_ptr<const KeyShard> empty_shard() {
  static const auto kEmpty = std::make_shared<const KeyShard>();
  return kEmpty;
}


std::shared_ptr<const jwt::ServiceKey> g_hmac_key;
std::atomic<std::uint64_t> g_keys_generation{0};

bool parse_jwt_keys(simdjson::dom::array keys, const std::string& where, TokenState& ts, Parser& p) {
  std::size_t i = 0;
  ts.key_specs.clear();
  ts.keys.keys.clear();
  ts.keys_generation = ++g_keys_generation;
  for (simdjson::dom::element ke : keys) {
    std::string kw = where + "[" + std::to_string(i++) + "]";
    simdjson::dom::object ko;
    std::string_view kid, alg, pem;
    if (ke.get_object().get(ko) || ko["kid"].get_string().get(kid) || kid.empty())
      return p.fail(kw + ".kid", "must be a non-empty string");
    if (ko["alg"].get_string().get(alg)) return p.fail(kw + ".alg", "must be ES256 or EdDSA");
    auto a = jwt::parse_key_alg(alg);
    if (!a || *a == jwt::KeyAlg::kHS256) return p.fail(kw + ".alg", "must be ES256 or EdDSA");
    if (ko["public_key"].get_string().get(pem)) return p.fail(kw + ".public_key", "must be a PEM string");
    auto key = jwt::ServiceKey::from_pem(std::string(kid), *a, pem);
    if (!key) return p.fail(kw + ".public_key", "is not a valid " + std::string(alg) + " public key");
    ts.key_specs.push_back({std::string(kid), std::string(alg), std::string(pem)});
    ts.keys.keys.push_back(std::move(key));
  }
  return true;
}

bool parse_revocation(simdjson::dom::object ro, const std::string& where, TokenState& ts, Parser& p) {
  std::string_view jti, exp;
  if (ro["jti"].get_string().get(jti) || jti.empty()) return p.fail(where + ".jti", "must be a non-empty string");
  std::int64_t exp_ms = 0;
  simdjson::dom::element ee;
  if (!ro["expires_at"].get(ee) && !ee.is_null()) {
    if (ee.get_string().get(exp) || (exp_ms = parse_rfc3339(exp)) < 0)
      return p.fail(where + ".expires_at", "must be an RFC 3339 UTC time or null");
  }
  ts.revoked[std::string(jti)] = exp_ms;
  return true;
}

bool parse_tokens(simdjson::dom::object root, TokenState& ts, Parser& p) {
  ts.keys.hmac = g_hmac_key;
  ts.keys_generation = ++g_keys_generation;
  simdjson::dom::element e;
  if (!root["jwt_keys"].get(e) && !e.is_null()) {
    simdjson::dom::array keys;
    if (e.get_array().get(keys)) return p.fail("jwt_keys", "must be an array");
    if (!parse_jwt_keys(keys, "jwt_keys", ts, p)) return false;
  }
  if (!root["revoked_tokens"].get(e) && !e.is_null()) {
    simdjson::dom::array revs;
    if (e.get_array().get(revs)) return p.fail("revoked_tokens", "must be an array");
    std::size_t i = 0;
    for (simdjson::dom::element re : revs) {
      std::string rw = "revoked_tokens[" + std::to_string(i++) + "]";
      simdjson::dom::object ro;
      if (re.get_object().get(ro)) return p.fail(rw, "must be an object");
      if (!parse_revocation(ro, rw, ts, p)) return false;
    }
  }
  return true;
}
}  // namespace

std::string parse_risk_policy(std::string_view json_text, RiskPolicy& out) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  std::string error;
  if (!parse_json(parser, json_text, doc, error)) return error;
  simdjson::dom::object ro;
  if (doc.get_object().get(ro)) return "risk: must be an object";
  Parser p;
  if (!parse_risk(ro, "risk", out, p)) return p.error;
  return {};
}

void set_hmac_token_key(std::shared_ptr<const jwt::ServiceKey> key) { g_hmac_key = std::move(key); }

std::uint32_t metrics_slot_for(std::string_view project_id) {
  std::lock_guard lock(g_slots_mutex);
  auto it = g_slots.find(std::string(project_id));
  if (it != g_slots.end()) return it->second;
  auto slot = static_cast<std::uint32_t>(g_slot_names.size());
  g_slots.emplace(std::string(project_id), slot);
  g_slot_names.emplace_back(project_id);
  return slot;
}

std::vector<std::string> metrics_slot_names() {
  std::lock_guard lock(g_slots_mutex);
  return g_slot_names;
}

BuildResult build_snapshot(std::string_view json_text) {
  BuildResult out;
  Parser p;
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (!parse_json(parser, json_text, doc, out.error)) return out;
  auto snap = std::make_shared<Snapshot>();
  snap->loaded_at_ms = now_ms();
  simdjson::dom::object root;
  if (doc.get_object().get(root)) {
    out.error = "document must be a JSON object";
    return out;
  }
  std::int64_t version = 0;
  if (root["version"].get_int64().get(version) || version < 0) {
    out.error = "version: must be a non-negative integer";
    return out;
  }
  snap->version = version;
  {
    auto ts = std::make_shared<TokenState>();
    if (!parse_tokens(root, *ts, p)) {
      out.error = p.error;
      return out;
    }
    snap->tokens = std::move(ts);
  }
  simdjson::dom::array projects;
  if (root["projects"].get_array().get(projects)) {
    out.error = "projects: must be an array";
    return out;
  }
  // Size the shards up front (one pass over the array lengths) so inserts never rehash.
  std::size_t total_keys = 0;
  for (simdjson::dom::element pe : projects) {
    simdjson::dom::array a;
    if (!pe["keys"].get_array().get(a) || !pe["api_keys"].get_array().get(a)) total_keys += a.size();
  }
  std::vector<std::unique_ptr<KeyShard>> shards(kKeyShards);
  for (auto& sh : shards) {
    sh = std::make_unique<KeyShard>();
    sh->keys.reserve(total_keys / kKeyShards + total_keys / kKeyShards / 10 + 8);  // +10 %: > 3 sd of a shard's share
  }
  std::vector<std::shared_ptr<Project>> built;
  // Pass 1: projects, and where each one's keys are.
  struct ProjectKeys {
    simdjson::dom::array keys;
    bool detailed;  // `keys` objects, or the seed's plain `api_keys` hashes
    std::uint32_t slot;
    std::string where;
  };
  std::vector<ProjectKeys> work;
  std::size_t pi = 0;
  for (simdjson::dom::element pe : projects) {
    std::string where = "projects[" + std::to_string(pi++) + "]";
    simdjson::dom::object po;
    if (pe.get_object().get(po)) {
      p.fail(where, "must be an object");
      break;
    }
    auto proj = std::make_shared<Project>();
    if (!parse_project(po, where, *proj, p)) break;
    simdjson::dom::array keys;
    if (!po["keys"].get_array().get(keys)) {
      work.push_back({keys, true, proj->metrics_slot, where + ".keys"});
    } else if (!po["api_keys"].get_array().get(keys)) {
      work.push_back({keys, false, proj->metrics_slot, where + ".api_keys"});
    } else {
      p.fail(where + ".api_keys", "must be an array");
      break;
    }
    built.push_back(std::move(proj));
  }
  // Pass 2: keys. With many keys, two threads fill disjoint halves of the shards (each reads every
  // key's hash but decodes and inserts only its own): the build of a million keys is mostly
  // hash-map inserts and page faults, which split cleanly.
  auto fill = [&](std::size_t lo, std::size_t hi, Parser& tp) {
    for (const auto& w : work) {
      std::size_t ki = 0;
      for (simdjson::dom::element ke : w.keys) {
        const std::size_t idx = ki++;
        auto where = [&] { return w.where + "[" + std::to_string(idx) + "]"; };
        std::string_view hash;
        simdjson::dom::object ko;
        if (w.detailed) {
          if (ke.get_object().get(ko)) return (void)tp.fail(where(), "must be an object");
          if (ko["hash"].get_string().get(hash)) return (void)tp.fail(where() + ".hash", "must be 64 hex characters (SHA-256)");
        } else if (ke.get_string().get(hash)) {
          return (void)tp.fail(where(), "must be 64 hex characters (SHA-256)");
        }
        if (hash.size() != 64) return (void)tp.fail(where(), "hash must be 64 hex characters (SHA-256)");
        int b8h = kHexValue[static_cast<unsigned char>(hash[16])], b8l = kHexValue[static_cast<unsigned char>(hash[17])];
        int b9h = kHexValue[static_cast<unsigned char>(hash[18])], b9l = kHexValue[static_cast<unsigned char>(hash[19])];
        if ((b8h | b8l | b9h | b9l) < 0) return (void)tp.fail(where(), "hash must be 64 hex characters (SHA-256)");
        std::size_t shard = (static_cast<std::size_t>(b8h << 4 | b8l) | static_cast<std::size_t>(b9h << 4 | b9l) << 8) &
                            (kKeyShards - 1);
        if (shard < lo || shard >= hi) continue;
        KeyDigest d;
        KeyEntry k;
        k.project_slot = w.slot;
        if (w.detailed) {
          if (!parse_key(ko, where(), w.slot, d, k, tp)) return;
        } else if (!hex_digest(hash, d)) {
          return (void)tp.fail(where(), "must be 64 hex characters (SHA-256)");
        }
        shards[shard]->keys.try_emplace(d, std::move(k));
      }
    }
  };
  if (p.error.empty()) {
    if (total_keys >= 50000) {
      Parser second;
      std::thread helper([&] { fill(kKeyShards / 2, kKeyShards, second); });
      fill(0, kKeyShards / 2, p);
      helper.join();
      if (p.error.empty()) p.error = second.error;
    } else {
      fill(0, kKeyShards, p);
    }
  }
  if (!p.error.empty()) {
    out.error = p.error;
    return out;
  }
  std::vector<Project*> raw;
  for (auto& b : built) raw.push_back(b.get());
  resolve_all(raw, nullptr);  // DNS last, once the document is known to be valid
  for (auto& b : built) {
    if (snap->projects.size() <= b->metrics_slot) snap->projects.resize(b->metrics_slot + 1);
    snap->projects[b->metrics_slot] = std::move(b);
    ++snap->project_count;
  }
  snap->slugs = slug_index(*snap);
  if (snap->slugs->size() != snap->project_count) {
    std::size_t with_slug = 0;
    for (const auto& pr : snap->projects) with_slug += pr && !pr->slug.empty();
    if (with_slug != snap->slugs->size()) {
      out.error = "projects: a slug is used by more than one project";
      return out;
    }
  }
  for (std::size_t i = 0; i < kKeyShards; ++i) {
    snap->key_count += shards[i]->keys.size();
    snap->shards[i] = shards[i]->keys.empty() ? empty_shard() : std::shared_ptr<const KeyShard>(std::move(shards[i]));
  }
  out.snapshot = std::move(snap);
  return out;
}

BuildResult apply_delta(const std::shared_ptr<const Snapshot>& base, std::string_view json_text) {
  BuildResult out;
  Parser p;
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (!parse_json(parser, json_text, doc, out.error)) return out;
  simdjson::dom::object root;
  std::int64_t since = -1, version = -1;
  simdjson::dom::array changes;
  if (doc.get_object().get(root) || root["since"].get_int64().get(since) || root["version"].get_int64().get(version) ||
      root["changes"].get_array().get(changes)) {
    out.error = "delta must have since, version and changes";
    return out;
  }
  if (since != base->version) {
    out.error = "version gap: delta since " + std::to_string(since) + ", have " + std::to_string(base->version);
    return out;
  }
  if (version < since) {
    out.error = "delta version goes backwards";
    return out;
  }
  auto snap = std::make_shared<Snapshot>(*base);  // copies pointers only
  snap->version = version;
  snap->loaded_at_ms = now_ms();
  // Copy-on-write: each touched shard is copied once per delta.
  std::array<std::shared_ptr<KeyShard>, kKeyShards> owned{};
  auto shard_for = [&](const KeyDigest& d) -> KeyShard& {
    auto i = Snapshot::shard_of(d);
    if (!owned[i]) {
      owned[i] = std::make_shared<KeyShard>(*snap->shards[i]);
      snap->shards[i] = owned[i];
    }
    return *owned[i];
  };
  std::vector<std::shared_ptr<Project>> new_projects;
  std::shared_ptr<TokenState> tokens_owned;  // copied on the first token change of this delta
  bool projects_changed = false;
  std::size_t ci = 0;
  for (simdjson::dom::element ce : changes) {
    std::string where = "changes[" + std::to_string(ci++) + "]";
    simdjson::dom::object co;
    std::string_view op, sv;
    if (ce.get_object().get(co) || co["op"].get_string().get(op)) {
      p.fail(where, "must be an object with op");
      break;
    }
    if (op == "project.upsert") {
      simdjson::dom::object po;
      if (co["project"].get_object().get(po)) {
        p.fail(where + ".project", "must be an object");
        break;
      }
      auto proj = std::make_shared<Project>();
      if (!parse_project(po, where + ".project", *proj, p)) break;
      new_projects.push_back(proj);
      if (snap->projects.size() <= proj->metrics_slot) snap->projects.resize(proj->metrics_slot + 1);
      if (!snap->projects[proj->metrics_slot]) ++snap->project_count;
      snap->projects[proj->metrics_slot] = proj;
      projects_changed = true;
    } else if (op == "project.delete") {
      if (co["project_id"].get_string().get(sv)) {
        p.fail(where + ".project_id", "must be a string");
        break;
      }
      auto slot = metrics_slot_for(sv);
      if (slot < snap->projects.size() && snap->projects[slot]) {
        snap->projects[slot].reset();
        --snap->project_count;
      }
      projects_changed = true;
    } else if (op == "key.upsert") {
      simdjson::dom::object ko;
      if (co["project_id"].get_string().get(sv) || co["key"].get_object().get(ko)) {
        p.fail(where, "key.upsert needs project_id and key");
        break;
      }
      KeyDigest d;
      KeyEntry k;
      if (!parse_key(ko, where + ".key", metrics_slot_for(sv), d, k, p)) break;
      auto& shard = shard_for(d);
      if (shard.keys.insert_or_assign(d, std::move(k))) ++snap->key_count;
    } else if (op == "key.delete") {
      KeyDigest d;
      if (co["hash"].get_string().get(sv) || !hex_digest(sv, d)) {
        p.fail(where + ".hash", "must be 64 hex characters (SHA-256)");
        break;
      }
      auto& shard = shard_for(d);
      if (shard.keys.erase(d) > 0) --snap->key_count;
    } else if (op == "token.revoke") {
      if (!tokens_owned) tokens_owned = snap->tokens ? std::make_shared<TokenState>(*snap->tokens) : std::make_shared<TokenState>();
      if (!parse_revocation(co, where, *tokens_owned, p)) break;
    } else if (op == "jwt_keys.set") {
      simdjson::dom::array keys;
      if (co["keys"].get_array().get(keys)) {
        p.fail(where + ".keys", "must be an array");
        break;
      }
      if (!tokens_owned) tokens_owned = snap->tokens ? std::make_shared<TokenState>(*snap->tokens) : std::make_shared<TokenState>();
      if (!parse_jwt_keys(keys, where + ".keys", *tokens_owned, p)) break;
    } else {
      // Unknown operations are ignored so that older workers survive newer control planes.
    }
  }
  if (!p.error.empty()) {
    out.error = p.error;
    return out;
  }
  if (tokens_owned) snap->tokens = std::move(tokens_owned);
  if (projects_changed) {
    snap->slugs = slug_index(*snap);
    std::size_t with_slug = 0;
    for (const auto& pr : snap->projects) with_slug += pr && !pr->slug.empty();
    if (with_slug != snap->slugs->size()) {
      out.error = "a slug is used by more than one project";
      return out;
    }
  }
  // Resolve only what the delta brought, reusing what the base already resolved.
  std::vector<Project*> unresolved;
  for (auto& np : new_projects) unresolved.push_back(np.get());
  if (!unresolved.empty()) resolve_all(unresolved, base.get());
  out.snapshot = std::move(snap);
  return out;
}

std::string serialize_snapshot(const Snapshot& s, std::int64_t saved_at_ms) {
  // Keys grouped by project slot.
  std::vector<std::vector<std::pair<const KeyDigest*, const KeyEntry*>>> by_slot(s.projects.size());
  for (const auto& shard : s.shards)
    shard->keys.for_each([&](const KeyDigest& d, const KeyEntry& k) {
      if (k.project_slot < by_slot.size()) by_slot[k.project_slot].emplace_back(&d, &k);
    });
  std::string out;
  out.reserve(256 + s.key_count * 200);
  auto str = [&](std::string_view v) { json_text::append_json_string(out, v); };
  out += "{\"schema\":1,\"full\":true,\"version\":" + std::to_string(s.version) +
         ",\"saved_at_ms\":" + std::to_string(saved_at_ms) + ",\"projects\":[";
  bool first_p = true;
  for (std::size_t slot = 0; slot < s.projects.size(); ++slot) {
    const auto& proj = s.projects[slot];
    if (!proj) continue;
    if (!first_p) out += ',';
    first_p = false;
    out += "{\"id\":";
    str(proj->id);
    out += ",\"name\":";
    str(proj->name);
    if (!proj->slug.empty()) {
      out += ",\"slug\":";
      str(proj->slug);
    }
    if (!proj->upstream.url.empty()) {
      out += ",\"upstream_base_url\":";
      str(proj->upstream.url);
    }
    if (proj->risk && !proj->risk->spec_json.empty()) out += ",\"risk\":" + proj->risk->spec_json;
    if (!proj->services.empty()) {
      out += ",\"services\":[";
      for (std::size_t i = 0; i < proj->services.size(); ++i) {
        if (i) out += ',';
        out += proj->services[i].spec_json;
      }
      out += ']';
    }
    out += ",\"rate_limit\":{\"requests_per_minute\":" + std::to_string(proj->rate.requests_per_minute) +
           ",\"burst\":" + std::to_string(proj->rate.burst) + "},\"max_body_bytes\":" +
           std::to_string(proj->max_body_bytes) + ",\"keys\":[";
    bool first_k = true;
    for (const auto& [d, k] : by_slot[slot]) {
      if (!first_k) out += ',';
      first_k = false;
      out += "{\"id\":";
      str(k->id.view());
      out += ",\"public_id\":";
      str(k->public_id.view());
      out += ",\"hash\":\"" + to_hex_digest(*d) + "\",\"expires_at\":";
      if (k->expires_at_ms) str(format_rfc3339(k->expires_at_ms));
      else out += "null";
      if (k->has_rate_override)
        out += ",\"rate_limit\":{\"requests_per_minute\":" + std::to_string(k->rate_override.requests_per_minute) +
               ",\"burst\":" + std::to_string(k->rate_override.burst) + "}";
      out += '}';
    }
    out += "]}";
  }
  out += ']';
  if (s.tokens) {
    out += ",\"jwt_keys\":[";
    for (std::size_t i = 0; i < s.tokens->key_specs.size(); ++i) {
      const auto& k = s.tokens->key_specs[i];
      if (i) out += ',';
      out += "{\"kid\":";
      str(k.kid);
      out += ",\"alg\":";
      str(k.alg);
      out += ",\"public_key\":";
      str(k.public_pem);
      out += '}';
    }
    out += "],\"revoked_tokens\":[";
    bool first_r = true;
    for (const auto& [jti, exp] : s.tokens->revoked) {
      if (!first_r) out += ',';
      first_r = false;
      out += "{\"jti\":";
      str(jti);
      out += ",\"expires_at\":";
      if (exp) str(format_rfc3339(exp));
      else out += "null";
      out += '}';
    }
    out += ']';
  }
  out += "}\n";
  return out;
}

}  // namespace ag::config
