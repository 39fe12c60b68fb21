#pragma once
// The identify stage's parts: API keys, service routes, service tokens and their per-thread cache.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/jwt.hpp"
#include "gateway/pipeline/context.hpp"

namespace ag::gateway {

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

}  // namespace ag::gateway
