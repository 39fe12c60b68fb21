// libFuzzer target for service-token verification (the worker runs it on every request's
// Authorization header). Built with the other targets (AG_BUILD_FUZZ, scripts/fuzz.sh,
// docs/testing.md). Seed corpus: fuzz/corpus/service_token/ (one token per file).
//
// The key set is fixed: an HS256 secret, the ES256 key of RFC 7515 Appendix A.3 (kid "es-fuzz")
// and the Ed25519 key of RFC 8037 Appendix A.1 (kid "ed-fuzz"). Their private halves are
// published in those RFCs, so valid seed tokens can be minted for them; the seeds carry
// iat 1700000000 and exp 1700003600, inside the clock used here.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/service_token.hpp"

namespace {

using ag::jwt::KeyAlg;
using ag::jwt::ServiceKey;

constexpr std::int64_t kNow = 1'700'000'100;
constexpr std::string_view kHmacSecret = "fuzz-hs256-secret-0123456789abcdef";

const ag::jwt::KeySet& key_set() {
  static const ag::jwt::KeySet keys = [] {
    ag::jwt::KeySet k;
    k.hmac = ServiceKey::hmac(std::string(kHmacSecret));
    k.keys.push_back(ServiceKey::from_jwk("es-fuzz", KeyAlg::kES256,
                                          {{"kty", "EC"},
                                           {"crv", "P-256"},
                                           {"x", "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"},
                                           {"y", "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}));
    k.keys.push_back(ServiceKey::from_jwk(
        "ed-fuzz", KeyAlg::kEdDSA,
        {{"kty", "OKP"}, {"crv", "Ed25519"}, {"x", "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}}));
    if (!k.hmac || !k.keys[0] || !k.keys[1]) __builtin_trap();
    return k;
  }();
  return keys;
}

bool slug(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  return true;
}

// What a kNone result promises the worker; anything else must leave the claims empty.
void check_result(ag::jwt::TokenError e, const ag::jwt::ServiceClaims& c, const ag::jwt::ClaimsOptions& o) {
  if (e == ag::jwt::TokenError::kNone) {
    if (c.jti.empty() || c.jti.size() > 128 || !slug(c.project) || !slug(c.service)) __builtin_trap();
    if (c.exp <= o.now_s - o.leeway_s || c.iat > o.now_s + o.leeway_s) __builtin_trap();
  } else if (!c.jti.empty() || !c.project.empty() || !c.service.empty() || !c.kid.empty()) {
    __builtin_trap();
  }
  if (ag::jwt::token_error_reason(e).empty()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view token(reinterpret_cast<const char*>(data), size);
  const auto& keys = key_set();

  ag::jwt::ClaimsOptions plain;
  plain.now_s = kNow;
  ag::jwt::ServiceClaims claims;
  check_result(ag::jwt::verify_service_token(keys, token, plain, claims), claims, plain);

  ag::jwt::ClaimsOptions strict = plain;
  strict.audience = "gateway";
  strict.issuer = "antigravity";
  strict.leeway_s = 0;
  check_result(ag::jwt::verify_service_token(keys, token, strict, claims), claims, strict);

  for (const auto& k : keys.keys) (void)ag::jwt::verify_signature_only(*k, token);
  (void)ag::jwt::verify_signature_only(*keys.hmac, token);
  return 0;
}
