#include "config/sections/fields.hpp"

#include <cstdio>

#include "common/http_url.hpp"

namespace ag::config::sections {

// Parses `json_text` into `doc` (which lives as long as `parser`); false with `error` set.
bool parse_json(simdjson::dom::parser& parser, std::string_view json_text, simdjson::dom::element& doc,
                std::string& error) {
  if (auto err = parser.parse(json_text.data(), json_text.size(), true).get(doc); err) {
    error = std::string("invalid JSON: ") + simdjson::error_message(err);
    return false;
  }
  return true;
}

std::string to_hex_digest(const KeyDigest& d) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(64, '0');
  for (std::size_t i = 0; i < 32; ++i) {
    out[2 * i] = kHex[d[i] >> 4];
    out[2 * i + 1] = kHex[d[i] & 0xf];
  }
  return out;
}

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

}  // namespace ag::config::sections
