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
#include "common/api_key.hpp"
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
  if (!api_key_well_formed(api_key)) {
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
// Only verified tokens are cached, and a verified token ends in its signature: base64url of bytes
// no client chooses. Its last 16 characters (and the length) pick the slot as well as a hash of
// the whole token would — which cost ~900 instructions for a 300-byte token on every request.
std::size_t token_slot(std::string_view token) {
  if (token.size() < 16) return std::hash<std::string_view>{}(token) & (TokenCache::kSlots - 1);
  std::uint64_t a, b;
  std::memcpy(&a, token.data() + token.size() - 16, 8);
  std::memcpy(&b, token.data() + token.size() - 8, 8);
  std::uint64_t h = (a ^ (b * 0x9e3779b97f4a7c15ull) ^ token.size()) * 0xff51afd7ed558ccdull;
  return static_cast<std::size_t>(h >> 40) & (TokenCache::kSlots - 1);
}

// A presented token against a cached one: a bearer credential, so compared in time that depends
// only on the length (no early exit at the first differing byte), a word at a time: libsodium's
// sodium_memcmp (volatile, a byte at a time) made the whole cache hit 744 ns instead of 90 ns for a
// 300-byte token (bench/micro BM_TokenCacheHit).
bool same_token(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  std::uint64_t diff = 0;
  std::size_t i = 0;
  for (; i + 8 <= a.size(); i += 8) {
    std::uint64_t x, y;
    std::memcpy(&x, a.data() + i, 8);
    std::memcpy(&y, b.data() + i, 8);
    diff |= x ^ y;
    __asm__("" : "+r"(diff));  // opaque to the optimiser: no exit once `diff` is non-zero
  }
  for (; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}
}  // namespace

const TokenCache::Entry* TokenCache::find(std::string_view token, std::uint64_t keys_generation) const {
  const Entry& e = slots_[token_slot(token)];
  return e.keys_generation == keys_generation && same_token(e.token, token) ? &e : nullptr;
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

namespace {
// The access log's writers: they write through a pointer into memory the caller has sized for
// the worst case: one resize per line instead of a capacity check per piece (callgrind: ~1,000
// fewer instructions per proxied request than appending to the std::string piece by piece).
char* put(char* p, std::string_view s) {
  if (!s.empty()) std::memcpy(p, s.data(), s.size());  // an empty view's data() may be null
  return p + s.size();
}

// Worst case: 6 bytes per input byte (\u00XX, or \ufffd for a byte that is not UTF-8) + quotes.
constexpr std::size_t json_string_bound(std::size_t n) { return 6 * n + 2; }

char* put_json_string(char* p, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  *p++ = '"';
  // Copy runs of characters that need no escaping in one go (the common case is one run),
  // finding the run's end eight bytes at a time: log lines are written for every request.
  std::size_t run = 0;
  const std::size_t n = s.size();
  std::size_t i = 0;
  auto flush = [&] { p = put(p, s.substr(run, i - run)); };
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
      flush();
      run = ++i;
      p = put(p, "\\ufffd"sv);
      continue;
    }
    flush();
    run = ++i;
    switch (c) {
      case '"': p = put(p, "\\\""sv); break;
      case '\\': p = put(p, "\\\\"sv); break;
      case '\n': p = put(p, "\\n"sv); break;
      case '\r': p = put(p, "\\r"sv); break;
      case '\t': p = put(p, "\\t"sv); break;
      default: {
        const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
        p = put(p, std::string_view(esc, 6));
      }
    }
  }
  i = n;
  flush();
  *p++ = '"';
  return p;
}

constexpr std::size_t kUintChars = 20;  // 2^64 - 1
char* put_uint(char* p, std::uint64_t v) { return std::to_chars(p, p + kUintChars, v).ptr; }

// Nanoseconds as milliseconds with 3 decimals, without printf.
// thousandths / 1000 with three decimals ("12.345"), without printf.
char* put_thousandths(char* p, std::uint64_t thousandths) {
  p = put_uint(p, thousandths / 1000);
  *p++ = '.';
  *p++ = static_cast<char>('0' + thousandths / 100 % 10);
  *p++ = static_cast<char>('0' + thousandths / 10 % 10);
  *p++ = static_cast<char>('0' + thousandths % 10);
  return p;
}

char* put_ms(char* p, std::int64_t ns) { return put_thousandths(p, static_cast<std::uint64_t>(ns < 0 ? 0 : ns / 1000)); }

// The timestamp's text changes once a second: format it once per second per thread.
thread_local std::int64_t t_ts_second = -1;
thread_local char t_ts_text[24];
}  // namespace

void append_json_string(std::string& out, std::string_view s) {
  const std::size_t at = out.size();
  out.resize(at + json_string_bound(s.size()));
  char* end = put_json_string(out.data() + at, s);
  out.resize(static_cast<std::size_t>(end - out.data()));
}

void append_log_line(std::string& out, const Context& ctx, const LogFields& f, std::int64_t end_ns) {
  std::int64_t wall = now_ms();
  if (wall / 1000 != t_ts_second) {
    t_ts_second = wall / 1000;
    std::string s = format_rfc3339(wall);  // 2026-11-22T18:34:27Z
    std::memcpy(t_ts_text, s.data(), 19);
  }
  static constexpr std::string_view kDecisions[] = {"\"allow\"", "\"throttle\"", "\"block\""};
  const std::string_view path = f.path.substr(0, 2048);
  std::string normalised;
  const std::string_view endpoint = needs_normalising(path) ? std::string_view(normalised = normalise_endpoint(path)) : path;
  const std::string_view ua = f.user_agent.substr(0, 512);
  const std::string_view reason = ctx.reason_detail.empty() ? reason_name(ctx.reason) : ctx.reason_detail;
  const std::string_view project = ctx.project ? std::string_view(ctx.project->id) : std::string_view{};
  const std::string_view key_id = ctx.key ? ctx.key->id.view() : std::string_view{};
  const std::string_view service = ctx.service ? std::string_view(ctx.service->name) : std::string_view{};

  // The worst case: every string escaped at 6 bytes a byte, every number at its widest, every
  // optional part present. The fixed text and the widest numbers take under 600 bytes.
  std::size_t bound = 1024 + kRiskRuleCount * 24;
  for (std::string_view v : {std::string_view(ctx.request_id), project, key_id, std::string_view(ctx.jti), service,
                             f.method, path, endpoint, std::string_view(ctx.client_ip), ua, reason})
    bound += json_string_bound(v.size());
  const std::size_t at = out.size();
  out.resize(at + bound);
  char* p = out.data() + at;

  p = put(p, "{\"ts\":\""sv);
  p = put(p, std::string_view(t_ts_text, 19));
  *p++ = '.';
  *p++ = static_cast<char>('0' + wall % 1000 / 100);
  *p++ = static_cast<char>('0' + wall % 100 / 10);
  *p++ = static_cast<char>('0' + wall % 10);
  *p++ = 'Z';
  p = put(p, "\",\"request_id\":"sv);
  p = put_json_string(p, ctx.request_id);
  p = put(p, ",\"project_id\":"sv);
  p = ctx.project ? put_json_string(p, project) : put(p, "null"sv);
  p = put(p, ",\"key_id\":"sv);
  p = !key_id.empty() ? put_json_string(p, key_id) : put(p, "null"sv);
  if (ctx.service || ctx.jwt) {
    p = put(p, ",\"auth\":"sv);
    p = put(p, ctx.jwt ? "\"jwt\""sv : ctx.key ? "\"api_key\""sv : "null"sv);
    p = put(p, ",\"jti\":"sv);
    p = ctx.jwt ? put_json_string(p, ctx.jti) : put(p, "null"sv);
    p = put(p, ",\"service\":"sv);
    p = ctx.service ? put_json_string(p, service) : put(p, "null"sv);
  }
  p = put(p, ",\"method\":"sv);
  p = put_json_string(p, f.method);
  p = put(p, ",\"path\":"sv);
  p = put_json_string(p, path);
  p = put(p, ",\"endpoint\":"sv);
  p = put_json_string(p, endpoint);
  p = put(p, ",\"ip\":"sv);
  p = put_json_string(p, ctx.client_ip);
  p = put(p, ",\"user_agent\":"sv);
  p = put_json_string(p, ua);
  p = put(p, ",\"decision\":"sv);
  p = put(p, ctx.reason != Reason::kNone ? kDecisions[2]
             : (ctx.risk_evaluated && !ctx.risk_shadow && ctx.risk_decision == 1) ? kDecisions[1]
                                                                                  : kDecisions[0]);
  p = put(p, ",\"reason\":"sv);
  p = put_json_string(p, reason);
  p = put(p, ",\"risk_score\":"sv);
  p = put_thousandths(p, static_cast<std::uint64_t>(ctx.risk_score * 1000 + 0.5));
  if (ctx.risk_evaluated) {
    p = put(p, ",\"risk_decision\":"sv);
    p = put(p, kDecisions[ctx.risk_decision < 3 ? ctx.risk_decision : 0]);
    p = put(p, ",\"rules\":["sv);
    bool first = true;
    for (std::size_t i = 0; i < kRiskRuleCount; ++i)
      if (ctx.risk_rules & (1u << i)) {
        if (!first) *p++ = ',';
        first = false;
        *p++ = '"';
        p = put(p, risk_rule_name(i));
        *p++ = '"';
      }
    *p++ = ']';
    if (ctx.risk_shadow) p = put(p, ",\"shadow\":true"sv);
  }
  p = put(p, ",\"status\":"sv);
  p = put_uint(p, static_cast<std::uint64_t>(ctx.status));
  p = put(p, ",\"latency_ms\":"sv);
  p = put_ms(p, end_ns - ctx.start_ns);
  p = put(p, ",\"upstream_latency_ms\":"sv);
  p = ctx.upstream_ns >= 0 ? put_ms(p, ctx.upstream_ns) : put(p, "null"sv);
  p = put(p, ",\"bytes_in\":"sv);
  p = put_uint(p, ctx.bytes_in);
  p = put(p, ",\"bytes_out\":"sv);
  p = put_uint(p, ctx.bytes_out);
  p = put(p, "}\n"sv);
  out.resize(static_cast<std::size_t>(p - out.data()));
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
