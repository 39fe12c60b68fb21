#include "gateway/pipeline.hpp"

#include <arpa/inet.h>

#include <charconv>
#include <chrono>
#include <cstring>
#include <stdexcept>

#include "common/crypto.hpp"
#include "common/request_id.hpp"
#include "common/swar.hpp"
#include "common/time.hpp"
#include "control/service/api_key.hpp"
#include "gateway/risk.hpp"

namespace ag::gateway {

using namespace std::string_view_literals;

std::string_view reason_name(Reason r) {
  switch (r) {
    case Reason::kNone: return "";
    case Reason::kNotReady: return "not_ready";
    case Reason::kKeyMissing: return "key_missing";
    case Reason::kKeyInvalid: return "key_invalid";
    case Reason::kRateLimited: return "rate_limited";
    case Reason::kBodyTooLarge: return "body_too_large";
    case Reason::kHeadersTooLarge: return "headers_too_large";
    case Reason::kHeaderTimeout: return "header_timeout";
    case Reason::kBadRequest: return "bad_request";
    case Reason::kUpstreamUnreachable: return "upstream_unreachable";
    case Reason::kUpstreamTimeout: return "upstream_timeout";
    case Reason::kUpstreamTls: return "upstream_tls";
    case Reason::kCredentialsMissing: return "credentials_missing";
    case Reason::kTokenInvalid: return "token_invalid";
    case Reason::kTokenRevoked: return "token_revoked";
    case Reason::kRouteForbidden: return "route_forbidden";
    case Reason::kNoHealthyTarget: return "no_healthy_target";
    case Reason::kNoRoute: return "no_route";
    case Reason::kIpDenied: return "ip_denied";
    case Reason::kAuthFailures: return "auth_failures";
    case Reason::kRiskBlocked: return "risk_blocked";
    case Reason::kRiskThrottled: return "risk_throttled";
  }
  return "";
}

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool valid_request_id(std::string_view id) { return ag::valid_request_id(id); }

namespace {
std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}
}  // namespace

std::string client_ip(std::string_view peer, std::string_view xff, const std::vector<Cidr>& trusted) {
  if (xff.empty() || !cidr_contains(trusted, peer)) return std::string(peer);
  // Walk right to left: each hop appended the address it saw.
  std::string_view rest = xff;
  while (!rest.empty()) {
    auto comma = rest.rfind(',');
    std::string_view hop = trim(comma == std::string_view::npos ? rest : rest.substr(comma + 1));
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(0, comma);
    unsigned char tmp[16];
    if (!ag::parse_ip(hop, tmp)) break;  // garbage: stop trusting the header here
    if (!cidr_contains(trusted, hop)) return std::string(hop);
  }
  return std::string(peer);
}

bool identify(Context& ctx, std::string_view api_key, bool key_present, std::int64_t now_ms, LocalReply& reply) {
  if (!key_present || api_key.empty()) {
    reply = {401, Reason::kKeyMissing, "API key missing"};
    return false;
  }
  // The checksum rejects mistyped and invented keys without hashing or a lookup.
  if (!control::api_key_well_formed(api_key)) {
    reply = {401, Reason::kKeyInvalid, "Invalid API key"};
    return false;
  }
  auto digest = crypto::sha256(api_key);
  const config::KeyEntry* k = ctx.snapshot->find_key(digest);
  const config::Project* project = k ? ctx.snapshot->project(k->project_slot) : nullptr;
  if (!k || !project || (k->expires_at_ms != 0 && k->expires_at_ms <= now_ms)) {
    reply = {401, Reason::kKeyInvalid, "Invalid API key"};
    return false;
  }
  ctx.key = k;
  ctx.project = project;
  auto rate = ctx.snapshot->rate_for(*k, *project);
  ctx.policy = ratelimit::Policy{rate.requests_per_minute, rate.burst};
  ctx.key_tag = config::KeyDigestHash{}(digest);
  return true;
}

bool match_service_route(Context& ctx, std::string_view target) {
  // target = "/" slug "/" service [ "/" rest | "?" query ]
  if (target.size() < 4 || target.front() != '/') return false;
  std::string_view rest = target.substr(1);
  auto end1 = rest.find_first_of("/?");
  if (end1 == std::string_view::npos || end1 == 0 || rest[end1] != '/') return false;
  const config::Project* proj = ctx.snapshot->project_by_slug(rest.substr(0, end1));
  if (!proj || proj->services.empty()) return false;
  rest = rest.substr(end1 + 1);
  auto end2 = rest.find_first_of("/?");
  std::string_view name = rest.substr(0, end2);
  const config::Service* svc = name.empty() ? nullptr : proj->find_service(name);
  if (!svc) return false;
  ctx.project = proj;
  ctx.service = svc;
  ctx.forward_target = end2 == std::string_view::npos ? std::string_view{} : rest.substr(end2);
  return true;
}

namespace {
std::size_t token_slot(std::string_view token) {
  return std::hash<std::string_view>{}(token) & (TokenCache::kSlots - 1);
}
}  // namespace

const TokenCache::Entry* TokenCache::find(std::string_view token, std::uint64_t keys_generation) const {
  const Entry& e = slots_[token_slot(token)];
  return e.keys_generation == keys_generation && e.token == token ? &e : nullptr;
}

void TokenCache::insert(std::string_view token, std::uint64_t keys_generation, const jwt::ServiceClaims& c) {
  if (token.size() > 2048) return;  // unusually large tokens are verified each time
  Entry& e = slots_[token_slot(token)];
  e.token.assign(token);
  e.keys_generation = keys_generation;
  e.jti = c.jti;
  e.project = c.project;
  e.service = c.service;
  e.exp = c.exp;
  e.nbf = c.nbf;
}

std::string_view bearer_token(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  if (v.size() < 7) return {};
  static constexpr std::string_view kScheme = "bearer ";
  for (std::size_t i = 0; i < 7; ++i) {
    char c = v[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != kScheme[i]) return {};
  }
  v.remove_prefix(7);
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

bool identify_token(Context& ctx, TokenCache& cache, std::string_view authorization, const TokenCheck& check,
                    std::int64_t now_s, std::string& project, std::string& service, LocalReply& reply) {
  std::string_view token = bearer_token(authorization);
  const config::TokenState& ts = *ctx.snapshot->tokens;
  auto refuse = [&](Reason r, std::string_view detail_reason) {
    reply = {401, r, "Invalid token"};
    ctx.reason_detail = detail_reason;
    return false;
  };
  if (token.empty()) return refuse(Reason::kTokenInvalid, "token_malformed");
  const std::int64_t leeway = check.leeway_s < 0 ? 0 : check.leeway_s;
  if (const auto* hit = cache.find(token, ts.keys_generation)) {
    if (hit->exp <= now_s - leeway) return refuse(Reason::kTokenInvalid, "token_expired");
    if (hit->nbf > now_s + leeway) return refuse(Reason::kTokenInvalid, "token_not_yet_valid");
    if (ts.is_revoked(hit->jti)) return refuse(Reason::kTokenRevoked, "token_revoked");
    ctx.jwt = true;
    ctx.jti = hit->jti;
    project = hit->project;
    service = hit->service;
    return true;
  }
  jwt::ClaimsOptions opt;
  opt.now_s = now_s;
  opt.leeway_s = leeway;
  opt.audience = check.audience;
  opt.issuer = check.issuer;
  jwt::ServiceClaims claims;
  auto err = jwt::verify_service_token(ts.keys, token, opt, claims);
  if (err != jwt::TokenError::kNone) return refuse(Reason::kTokenInvalid, jwt::token_error_reason(err));
  if (ts.is_revoked(claims.jti)) return refuse(Reason::kTokenRevoked, "token_revoked");
  cache.insert(token, ts.keys_generation, claims);
  ctx.jwt = true;
  ctx.jti = claims.jti;
  project = std::move(claims.project);
  service = std::move(claims.service);
  return true;
}

// False when no path segment starts with a digit or is long enough to be hex: then the endpoint
// is the path itself and the log line needs no copy.
bool needs_normalising(std::string_view path) {
  std::size_t seg_start = 0;
  for (std::size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      std::size_t len = i - seg_start;
      if (len >= 16 || (len > 0 && path[seg_start] >= '0' && path[seg_start] <= '9')) return true;
      seg_start = i + 1;
    }
  }
  return path.empty();
}

std::string normalise_endpoint(std::string_view path) {
  std::string out;
  out.reserve(path.size());
  std::size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '/') {
      out.push_back('/');
      ++i;
      continue;
    }
    auto j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view seg = path.substr(i, j - i);
    bool digits = true, hex = seg.size() >= 16, uuid = seg.size() == 36;
    for (std::size_t k = 0; k < seg.size(); ++k) {
      char c = seg[k];
      bool d = c >= '0' && c <= '9';
      bool h = d || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
      digits = digits && d;
      hex = hex && h;
      if (uuid) uuid = (k == 8 || k == 13 || k == 18 || k == 23) ? c == '-' : h;
    }
    if ((digits && !seg.empty()) || hex || uuid) out += ":id"sv;
    else out.append(seg);
    i = j;
  }
  if (out.empty()) out = "/";
  return out;
}

namespace {
// Length of the well-formed UTF-8 sequence starting at s[i] (a byte >= 0x80), or 0 (RFC 3629:
// no overlong forms, no surrogates, nothing above U+10FFFF).
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  auto cont = [&](std::size_t k) { return i + k < s.size() && (b(k) & 0xC0) == 0x80; };
  unsigned char c = b(0);
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && b(1) < 0xA0) return 0;   // overlong
    if (c == 0xED && b(1) >= 0xA0) return 0;  // surrogates
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && b(1) < 0x90) return 0;   // overlong
    if (c == 0xF4 && b(1) >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}
}  // namespace

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  // Copy runs of characters that need no escaping in one append (the common case is one run),
  // finding the run's end eight bytes at a time: log lines are written for every request.
  std::size_t run = 0;
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    // Controls, '"', '\\', DEL and everything from 0x80 need escaping or checking.
    i = swar::skip(s.data(), i, n, [](std::uint64_t w) {
      return swar::not_printable(w) | swar::equal_to(w, '"') | swar::equal_to(w, '\\');
    });
    if (i >= n) break;
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      // Well-formed UTF-8 is copied as it is; any other byte becomes U+FFFD, so every line stays
      // valid JSON whatever a client sends in its path or headers.
      std::size_t len = utf8_sequence_length(s, i);
      if (len > 0) {
        i += len;
        continue;
      }
      out.append(s.data() + run, i - run);
      run = ++i;
      out += "\\ufffd"sv;
      continue;
    }
    out.append(s.data() + run, i - run);
    run = ++i;
    switch (c) {
      case '"': out += "\\\""sv; break;
      case '\\': out += "\\\\"sv; break;
      case '\n': out += "\\n"sv; break;
      case '\r': out += "\\r"sv; break;
      case '\t': out += "\\t"sv; break;
      default: {
        char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
        out.append(esc, 6);
      }
    }
  }
  out.append(s.data() + run, n - run);
  out.push_back('"');
}

namespace {
void append_uint(std::string& out, std::uint64_t v) {
  char buf[24];
  out.append(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
}
// Nanoseconds as milliseconds with 3 decimals, without printf.
void append_ms(std::string& out, std::int64_t ns) {
  if (ns < 0) ns = 0;
  std::int64_t us = ns / 1000;
  append_uint(out, static_cast<std::uint64_t>(us / 1000));
  char frac[4] = {'.', static_cast<char>('0' + us / 100 % 10), static_cast<char>('0' + us / 10 % 10),
                  static_cast<char>('0' + us % 10)};
  out.append(frac, 4);
}
// The timestamp's text changes once a second: format it once per second per thread.
thread_local std::int64_t t_ts_second = -1;
thread_local char t_ts_text[24];
}  // namespace

void append_log_line(std::string& out, const Context& ctx, const LogFields& f, std::int64_t end_ns) {
  std::int64_t wall = now_ms();
  if (wall / 1000 != t_ts_second) {
    t_ts_second = wall / 1000;
    std::string s = format_rfc3339(wall);  // 2026-11-22T18:34:27Z
    std::memcpy(t_ts_text, s.data(), 19);
  }
  out += "{\"ts\":\""sv;
  out.append(t_ts_text, 19);
  char ms[5] = {'.', static_cast<char>('0' + wall % 1000 / 100), static_cast<char>('0' + wall % 100 / 10),
                static_cast<char>('0' + wall % 10), 'Z'};
  out.append(ms, 5);
  out += "\",\"request_id\":"sv;
  append_json_string(out, ctx.request_id);
  out += ",\"project_id\":"sv;
  if (ctx.project) append_json_string(out, ctx.project->id);
  else out += "null"sv;
  out += ",\"key_id\":"sv;
  if (ctx.key && !ctx.key->id.empty()) append_json_string(out, ctx.key->id.view());
  else out += "null"sv;
  if (ctx.service || ctx.jwt) {
    out += ",\"auth\":"sv;
    out += ctx.jwt ? "\"jwt\"" : ctx.key ? "\"api_key\"" : "null";
    out += ",\"jti\":"sv;
    if (ctx.jwt) append_json_string(out, ctx.jti);
    else out += "null"sv;
    out += ",\"service\":"sv;
    if (ctx.service) append_json_string(out, ctx.service->name);
    else out += "null"sv;
  }
  out += ",\"method\":"sv;
  append_json_string(out, f.method);
  out += ",\"path\":"sv;
  append_json_string(out, f.path.substr(0, 2048));
  out += ",\"endpoint\":"sv;
  append_json_string(out, needs_normalising(f.path) ? std::string_view(normalise_endpoint(f.path.substr(0, 2048)))
                                                    : f.path.substr(0, 2048));
  out += ",\"ip\":"sv;
  append_json_string(out, ctx.client_ip);
  out += ",\"user_agent\":"sv;
  append_json_string(out, f.user_agent.substr(0, 512));
  out += ",\"decision\":"sv;
  static constexpr std::string_view kDecisions[] = {"\"allow\"", "\"throttle\"", "\"block\""};
  out += ctx.reason != Reason::kNone ? kDecisions[2]
         : (ctx.risk_evaluated && !ctx.risk_shadow && ctx.risk_decision == 1) ? kDecisions[1]
                                                                              : kDecisions[0];
  out += ",\"reason\":"sv;
  append_json_string(out, ctx.reason_detail.empty() ? reason_name(ctx.reason) : ctx.reason_detail);
  out += ",\"risk_score\":"sv;
  {
    // Three decimals without printf.
    auto milli = static_cast<std::uint64_t>(ctx.risk_score * 1000 + 0.5);
    append_uint(out, milli / 1000);
    char frac[4] = {'.', static_cast<char>('0' + milli / 100 % 10), static_cast<char>('0' + milli / 10 % 10),
                    static_cast<char>('0' + milli % 10)};
    out.append(frac, 4);
  }
  if (ctx.risk_evaluated) {
    out += ",\"risk_decision\":"sv;
    out += kDecisions[ctx.risk_decision < 3 ? ctx.risk_decision : 0];
    out += ",\"rules\":["sv;
    bool first = true;
    for (std::size_t i = 0; i < kRiskRuleCount; ++i)
      if (ctx.risk_rules & (1u << i)) {
        if (!first) out += ',';
        first = false;
        out += '"';
        out += risk_rule_name(i);
        out += '"';
      }
    out += ']';
    if (ctx.risk_shadow) out += ",\"shadow\":true"sv;
  }
  out += ",\"status\":"sv;
  append_uint(out, static_cast<std::uint64_t>(ctx.status));
  out += ",\"latency_ms\":"sv;
  append_ms(out, end_ns - ctx.start_ns);
  out += ",\"upstream_latency_ms\":"sv;
  if (ctx.upstream_ns >= 0) append_ms(out, ctx.upstream_ns);
  else out += "null"sv;
  out += ",\"bytes_in\":"sv;
  append_uint(out, ctx.bytes_in);
  out += ",\"bytes_out\":"sv;
  append_uint(out, ctx.bytes_out);
  out += "}\n"sv;
}

bool is_hop_by_hop(std::string_view n) {
  switch (n.size()) {
    case 2: return n == "te";
    case 7: return n == "trailer" || n == "upgrade";
    case 9: return n == "x-api-key";
    case 10: return n == "connection" || n == "keep-alive";
    case 16: return n == "proxy-connection";
    case 17: return n == "transfer-encoding";
    case 19: return n == "proxy-authorization" || n == "proxy-authenticate";
    default: return false;
  }
}

}  // namespace ag::gateway
