#include "config/snapshot.hpp"

#include <netdb.h>
#include <simdjson.h>
#include <sys/socket.h>

#include <charconv>
#include <ctime>
#include <mutex>

#include "common/time.hpp"

namespace ag::config {

namespace {

std::mutex g_slots_mutex;
std::unordered_map<std::string, std::uint32_t> g_slots;
std::vector<std::string> g_slot_names{""};

bool hex_digest(std::string_view hex, KeyDigest& out) {
  if (hex.size() != 64) return false;
  auto val = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < 32; ++i) {
    int hi = val(hex[2 * i]), lo = val(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<unsigned char>(hi * 16 + lo);
  }
  return true;
}

// "2026-11-22T18:34:27Z" -> epoch ms; -1 when malformed.
std::int64_t parse_rfc3339(std::string_view s) {
  std::tm tm{};
  std::string str(s);
  const char* end = strptime(str.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (!end) return -1;
  std::string_view rest(end);
  std::int64_t ms = 0;
  if (!rest.empty() && rest.front() == '.') {
    rest.remove_prefix(1);
    int digits = 0;
    while (!rest.empty() && rest.front() >= '0' && rest.front() <= '9') {
      if (digits < 3) ms = ms * 10 + (rest.front() - '0');
      ++digits;
      rest.remove_prefix(1);
    }
    for (; digits < 3; ++digits) ms *= 10;
  }
  if (rest != "Z" && rest != "+00:00") return -1;
  return static_cast<std::int64_t>(timegm(&tm)) * 1000 + ms;
}

std::string parse_upstream(std::string_view url, Upstream& u) {
  u.url = std::string(url);
  std::string_view rest;
  if (url.substr(0, 7) == "http://") {
    rest = url.substr(7);
    u.port = 80;
    u.supported = true;
  } else if (url.substr(0, 8) == "https://") {
    rest = url.substr(8);
    u.port = 443;
    u.supported = false;
  } else {
    return "must start with http:// or https://";
  }
  auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash);
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  u.base_path = std::string(path);
  if (authority.empty()) return "has no host";
  std::string_view host = authority;
  std::string_view port;
  if (authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos) return "has an invalid IPv6 host";
    host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return "has an invalid host";
      port = authority.substr(close + 2);
    }
  } else if (auto c = authority.rfind(':'); c != std::string_view::npos) {
    host = authority.substr(0, c);
    port = authority.substr(c + 1);
  }
  if (host.empty()) return "has no host";
  if (!port.empty()) {
    unsigned p = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc{} || ptr != port.data() + port.size() || p == 0 || p > 65535) return "has an invalid port";
    u.port = static_cast<std::uint16_t>(p);
  }
  u.host = std::string(host);
  u.host_header = std::string(authority);
  u.pool_key = std::string(authority);
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

}  // namespace

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
  simdjson::padded_string padded(json_text);
  simdjson::dom::element doc;
  if (auto err = parser.parse(padded).get(doc); err) {
    out.error = std::string("invalid JSON: ") + simdjson::error_message(err);
    return out;
  }
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
  simdjson::dom::array projects;
  if (root["projects"].get_array().get(projects)) {
    out.error = "projects: must be an array";
    return out;
  }
  std::size_t pi = 0;
  for (simdjson::dom::element pe : projects) {
    std::string where = "projects[" + std::to_string(pi++) + "]";
    simdjson::dom::object po;
    if (pe.get_object().get(po)) {
      p.fail(where, "must be an object");
      break;
    }
    auto proj = std::make_unique<Project>();
    std::string_view sv;
    if (po["id"].get_string().get(sv) || sv.empty()) {
      p.fail(where + ".id", "must be a non-empty string");
      break;
    }
    proj->id = std::string(sv);
    if (!po["name"].get_string().get(sv)) proj->name = std::string(sv);
    std::string_view url;
    if (po["upstream_base_url"].get_string().get(url) && po["upstream_url"].get_string().get(url)) {
      p.fail(where + ".upstream_base_url", "must be a string");
      break;
    }
    if (auto e = parse_upstream(url, proj->upstream); !e.empty()) {
      p.fail(where + ".upstream_base_url", e);
      break;
    }
    simdjson::dom::element rl;
    if (!po["rate_limit"].get(rl) && !get_policy(rl, where + ".rate_limit", proj->rate, p)) break;
    std::int64_t mb = 0;
    if (!po["max_body_bytes"].get_int64().get(mb)) {
      if (mb < 0) {
        p.fail(where + ".max_body_bytes", "must be >= 0");
        break;
      }
      proj->max_body_bytes = mb;
    }
    proj->metrics_slot = metrics_slot_for(proj->id);
    const Project* praw = proj.get();

    // Keys: the detailed `keys` array when present, else the seed's plain `api_keys` hashes.
    simdjson::dom::array keys;
    bool ok = true;
    if (!po["keys"].get_array().get(keys)) {
      std::size_t ki = 0;
      for (simdjson::dom::element ke : keys) {
        std::string kw = where + ".keys[" + std::to_string(ki++) + "]";
        simdjson::dom::object ko;
        if (ke.get_object().get(ko)) {
          ok = p.fail(kw, "must be an object");
          break;
        }
        KeyDigest d;
        if (ko["hash"].get_string().get(sv) || !hex_digest(sv, d)) {
          ok = p.fail(kw + ".hash", "must be 64 hex characters (SHA-256)");
          break;
        }
        KeyEntry k;
        k.project = praw;
        k.rate = praw->rate;
        if (!ko["id"].get_string().get(sv)) k.id = std::string(sv);
        if (!ko["public_id"].get_string().get(sv)) k.public_id = std::string(sv);
        simdjson::dom::element ex;
        if (!ko["expires_at"].get(ex) && !ex.is_null()) {
          std::string_view es;
          if (ex.get_string().get(es) || (k.expires_at_ms = parse_rfc3339(es)) < 0) {
            ok = p.fail(kw + ".expires_at", "must be an RFC 3339 UTC time or null");
            break;
          }
        }
        simdjson::dom::element krl;
        if (!ko["rate_limit"].get(krl) && !krl.is_null()) {
          if (!get_policy(krl, kw + ".rate_limit", k.rate, p)) {
            ok = false;
            break;
          }
          k.has_rate_override = true;
        }
        snap->keys.insert_or_assign(d, std::move(k));
      }
    } else {
      simdjson::dom::array hashes;
      if (po["api_keys"].get_array().get(hashes)) {
        p.fail(where + ".api_keys", "must be an array");
        break;
      }
      std::size_t ki = 0;
      for (simdjson::dom::element he : hashes) {
        KeyDigest d;
        if (he.get_string().get(sv) || !hex_digest(sv, d)) {
          ok = p.fail(where + ".api_keys[" + std::to_string(ki) + "]", "must be 64 hex characters (SHA-256)");
          break;
        }
        KeyEntry k;
        k.project = praw;
        k.rate = praw->rate;
        k.id = "";
        snap->keys.insert_or_assign(d, std::move(k));
        ++ki;
      }
    }
    if (!ok) break;
    snap->projects.push_back(std::move(proj));
  }
  if (!p.error.empty()) {
    out.error = p.error;
    return out;
  }
  // DNS last, once the document is known to be valid.
  std::unordered_map<std::string, std::vector<Endpoint>> resolved;
  for (auto& proj : snap->projects) {
    auto& u = proj->upstream;
    if (!u.supported) continue;
    auto it = resolved.find(u.pool_key);
    if (it == resolved.end()) {
      resolve(u);
      resolved.emplace(u.pool_key, u.endpoints);
    } else {
      u.endpoints = it->second;
    }
  }
  out.snapshot = std::move(snap);
  return out;
}

}  // namespace ag::config
