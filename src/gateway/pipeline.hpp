#pragma once
// The worker's request pipeline, as stages that do no I/O (the connection loop in
// connection.cpp does the I/O and calls these in order):
//
//   accept (request id, client ip, limits) -> identify (API key) -> rate limit -> proxy -> log
//
// Each stage reads the per-request Context and the snapshot pinned at request start, and either
// continues or produces a LocalReply with a reason; the reason is what the access log records.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/cidr.hpp"
#include "common/time.hpp"
#include "config/snapshot.hpp"
#include "ratelimit/gcra.hpp"

namespace ag::gateway {

// Why the worker answered itself. kNone = proxied.
enum class Reason : std::uint8_t {
  kNone,
  kNotReady,
  kKeyMissing,
  kKeyInvalid,
  kRateLimited,
  kBodyTooLarge,
  kHeadersTooLarge,
  kHeaderTimeout,
  kBadRequest,
  kUpstreamUnreachable,
  kUpstreamTimeout,
  kUpstreamTls,         // the TLS handshake with an https:// upstream failed (certificate, protocol)
  kCredentialsMissing,  // a service route with neither an API key nor a bearer token
  kTokenInvalid,        // the log line names the token error (token_expired, ...)
  kTokenRevoked,
  kRouteForbidden,      // a valid credential for another project, service or route
  kNoHealthyTarget,
  kNoRoute,             // no default upstream for this project
  kIpDenied,            // an IP allow/deny list (403)
  kAuthFailures,        // too many failed authentications from this IP (429)
  kRiskBlocked,         // the risk score reached the block threshold (429)
  kRiskThrottled,       // a throttled caller over its tighter limit (429)
};
std::string_view reason_name(Reason r);

struct LocalReply {
  int status = 0;
  Reason reason = Reason::kNone;
  std::string_view detail;
  bool close = false;  // close the connection after answering
};

struct Context {
  std::shared_ptr<const config::Snapshot> snapshot;  // pinned for the whole request
  const config::Project* project = nullptr;
  const config::KeyEntry* key = nullptr;
  ratelimit::Policy policy;   // the key's own limit, or its project's
  std::uint64_t key_tag = 0;  // first 8 bytes of the key's SHA-256: names its rate-limit state
  std::string request_id;
  std::string client_ip;
  ratelimit::Decision limit;
  bool limit_checked = false;
  Reason reason = Reason::kNone;
  int status = 0;
  std::int64_t start_ns = 0;
  std::int64_t upstream_ns = -1;  // time to the upstream's response head; -1 = not contacted
  std::uint64_t bytes_in = 0, bytes_out = 0;
  // Service routes and service tokens (docs/services-and-tokens.md).
  const config::Service* service = nullptr;  // set on a service route
  std::string_view request_target;          // the request target as routed (path normalised)
  std::string_view forward_target;          // the target after /{slug}/{service} ("" = "/")
  const config::ServiceTarget* target = nullptr;  // the service target proxied to
  bool jwt = false;                         // authenticated by a service token
  std::string jti;
  std::string_view reason_detail;           // overrides reason_name() in the log (token errors)
  // Risk engine (docs/risk.md).
  bool risk_evaluated = false;
  double risk_score = 0;
  std::uint8_t risk_decision = 0;  // RiskDecision
  std::uint32_t risk_rules = 0;    // RiskRule bits
  bool risk_shadow = false;        // the decision was logged, not applied
};

// --- accept -------------------------------------------------------------------------------
bool valid_request_id(std::string_view id);

using ag::Cidr;
using ag::cidr_contains;
using ag::cidr_refused;
using ag::parse_cidrs;
// The client address: `peer`, or when the peer is a trusted proxy, the right-most address in
// X-Forwarded-For that is not itself trusted.
std::string client_ip(std::string_view peer, std::string_view xff, const std::vector<Cidr>& trusted);

// --- identify -----------------------------------------------------------------------------
// Looks up the API key; fills ctx.project/ctx.key or returns the 401 to send.
bool identify(Context& ctx, std::string_view api_key, bool key_present, std::int64_t now_ms, LocalReply& reply);

// --- service routes and tokens --------------------------------------------------------------
// "/{slug}/{service}[/rest][?query]" naming a project's service: sets ctx.project (as the route's
// project), ctx.service and ctx.forward_target. False for any other target.
bool match_service_route(Context& ctx, std::string_view target);

// Verified service tokens per thread, one per slot (the slot from the token's tail; a token whose
// slot is taken replaces the entry), the whole token compared in constant time on a hit: a hit
// skips the signature check. Entries are tied to the key set they were verified
// with, so retiring a key invalidates them; revocation and expiry are checked on every use.
class TokenCache {
 public:
  static constexpr std::size_t kSlots = 4096;
  struct Entry {
    std::string token;
    std::uint64_t keys_generation = 0;
    std::string jti, project, service;
    std::int64_t exp = 0, nbf = 0;
  };
  TokenCache() : slots_(kSlots) {}
  const Entry* find(std::string_view token, std::uint64_t keys_generation) const;
  void insert(std::string_view token, std::uint64_t keys_generation, const jwt::ServiceClaims& c);

 private:
  std::vector<Entry> slots_;
};

struct TokenCheck {
  std::string_view audience, issuer;
  std::int64_t leeway_s = 30;
};
// `authorization` is the whole header value. Verifies the bearer token against the pinned
// snapshot's keys (cache first) and its revocation list; sets ctx.jwt, ctx.jti and the claims'
// project/service in `project`/`service`, or returns the 401 to send.
bool identify_token(Context& ctx, TokenCache& cache, std::string_view authorization, const TokenCheck& check,
                    std::int64_t now_s, std::string& project, std::string& service, LocalReply& reply);
// "Bearer <token>" (scheme case-insensitive) -> token; empty when not a bearer credential.
std::string_view bearer_token(std::string_view authorization);

// --- log ----------------------------------------------------------------------------------
// "/users/123/orders/5f2b…" -> "/users/:id/orders/:id": numbers, UUIDs and long hex collapse.
std::string normalise_endpoint(std::string_view path);
bool needs_normalising(std::string_view path);
// One JSON access-log line (with trailing '\n') appended to `out`.
struct LogFields {
  std::string_view method, path, user_agent;
};
void append_log_line(std::string& out, const Context& ctx, const LogFields& f, std::int64_t end_ns);

// --- shared helpers -----------------------------------------------------------------------
// Hop-by-hop headers (RFC 9110 7.6.1) plus proxy-only ones that are never forwarded.
bool is_hop_by_hop(std::string_view lower_name);
void append_json_string(std::string& out, std::string_view s);

}  // namespace ag::gateway
