#pragma once
// Sign-in with an external OpenID Connect issuer (docs/auth.md, "External sign-in"): a Bearer JWT
// from OIDC_ISSUER, verified against the issuer's JWKS, names a user by `sub`.
//
// The JWKS URL comes from the issuer's discovery document
// (`<issuer>/.well-known/openid-configuration`); keys are cached for OIDC_JWKS_CACHE_SEC and
// fetched again when a token names an unknown `kid` (at most once every 10 s, so tokens with
// made-up kids cannot make the control plane hammer the issuer). Algorithms: RS256 (2048-bit keys
// or larger) and ES256; `none`, HMAC and anything else are refused. Claims: `iss` exactly the
// issuer, `aud` (a string or a list) containing OIDC_AUDIENCE, `exp` in the future and `nbf`/`iat`
// not in it (60 s leeway), `sub` non-empty.
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace ag::control::oidc {

struct Settings {
  std::string issuer;    // OIDC_ISSUER; "" = off
  std::string audience;  // OIDC_AUDIENCE
  std::string email_claim = "email";
  std::string name_claim = "name";
  std::int64_t jwks_cache_sec = 3600;
};

struct Identity {
  std::string sub, email, name;
  bool email_verified = false;
  std::int64_t expires_at_ms = 0;
};

// The issuer named by an unverified JWT, or "" when `token` is not a JWT with a string `iss`.
std::string unverified_issuer(std::string_view token);

class Verifier {
 public:
  // `fetch(url)` returns the body of a 200 answer, or nullopt (injectable for unit tests).
  using Fetch = std::function<std::optional<std::string>(const std::string& url)>;
  Verifier(Settings settings, Fetch fetch);
  ~Verifier();
  const Settings& settings() const { return settings_; }
  // The identity in `token`; nullopt (with `why` set) when it is not valid.
  std::optional<Identity> verify(std::string_view token, std::string& why);

 private:
  struct Key;
  std::shared_ptr<const Key> key(const std::string& kid, std::string& why);
  bool refresh(std::string& why);  // under mu_
  Settings settings_;
  Fetch fetch_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<const Key>> keys_;
  std::chrono::steady_clock::time_point fetched_at_{}, last_attempt_{};
  std::string jwks_uri_;
};

}  // namespace ag::control::oidc
