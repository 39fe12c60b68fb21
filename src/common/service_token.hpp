#pragma once
// Service tokens: JWTs (RFC 7519, JWS compact serialisation) naming a project and one of its
// services, signed with HS256 (a shared secret), ES256 (ECDSA P-256 with SHA-256) or EdDSA
// (Ed25519), and verified by the worker on every request.
//
// Verification pins the algorithm to the key: an HS256 token is checked only against the HMAC
// secret of the key set, an ES256/EdDSA token only against the key its "kid" names and only when
// that key is of the token's algorithm. "none" and every other algorithm are refused. Keys are
// immutable once built and may be shared between threads.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>  // the full header only where JWKs are built or read
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ag::jwt {

enum class KeyAlg { kHS256, kES256, kEdDSA };
// "HS256" | "ES256" | "EdDSA" (case-sensitive, as in JWS headers); nullopt otherwise.
std::optional<KeyAlg> parse_key_alg(std::string_view name);
std::string_view key_alg_name(KeyAlg alg);

// A key that can verify service tokens and, when it holds a private part or a secret, sign them.
class ServiceKey {
 public:
  // HS256 with `secret` (the raw bytes); kid is empty. nullptr for an empty secret.
  static std::shared_ptr<const ServiceKey> hmac(std::string secret);
  // PEM whose first block is SubjectPublicKeyInfo ("PUBLIC KEY") or unencrypted PKCS#8
  // ("PRIVATE KEY"), which also allows signing. nullptr when the PEM does not parse or does not
  // match `alg` (ES256 must be EC P-256, EdDSA must be Ed25519), when `kid` is not valid UTF-8 or
  // longer than 256 bytes (it is written into token headers); always nullptr for HS256.
  static std::shared_ptr<const ServiceKey> from_pem(std::string kid, KeyAlg alg, std::string_view pem);
  // JWK (RFC 7517/7518/8037): EC {"kty":"EC","crv":"P-256","x","y"[,"d"]} for ES256, OKP
  // {"kty":"OKP","crv":"Ed25519","x"[,"d"]} for EdDSA; a private "d" allows signing and must
  // match the public part. When present, "alg" must be `alg`'s name and "use" must be "sig".
  // nullptr otherwise (and for a `kid` refused as by from_pem); always nullptr for HS256.
  static std::shared_ptr<const ServiceKey> from_jwk(std::string kid, KeyAlg alg, const nlohmann::json& jwk);

  ~ServiceKey();
  ServiceKey(const ServiceKey&) = delete;
  ServiceKey& operator=(const ServiceKey&) = delete;

  const std::string& kid() const { return kid_; }
  KeyAlg alg() const { return alg_; }
  bool can_sign() const { return can_sign_; }
  // SubjectPublicKeyInfo PEM; empty for HS256.
  std::string public_pem() const;
  // {"kty":"EC","crv":"P-256","x","y"} or {"kty":"OKP","crv":"Ed25519","x"}, plus "kid" (when
  // not empty), "alg" and "use":"sig"; a null json for HS256.
  nlohmann::json public_jwk() const;

  // The raw JWS signature over `signing_input`: 32 bytes (HS256), R||S 64 bytes (ES256) or 64
  // bytes (EdDSA). Throws std::invalid_argument when the key cannot sign, std::runtime_error when
  // the crypto library fails.
  std::string sign(std::string_view signing_input) const;
  // True when `sig` (raw JWS form, as above) is a valid signature of `signing_input`. Never throws.
  bool verify(std::string_view signing_input, const unsigned char* sig, std::size_t sig_len) const noexcept;

  // base64url of this key's JWS header followed by '.': the start of every token it signs.
  const std::string& encoded_header() const { return encoded_header_; }

  struct State;  // key material (opaque)

 private:
  ServiceKey(std::string kid, KeyAlg alg, bool can_sign, std::unique_ptr<State> state);

  std::string kid_;
  KeyAlg alg_;
  bool can_sign_;
  std::string encoded_header_;
  std::unique_ptr<State> state_;
};

struct GeneratedKeyPair {
  std::string private_pem;  // PKCS#8 "PRIVATE KEY"
  std::string public_pem;   // SubjectPublicKeyInfo "PUBLIC KEY"
};
// A fresh ES256 (P-256) or EdDSA (Ed25519) key pair; throws std::invalid_argument for HS256.
GeneratedKeyPair generate_key_pair(KeyAlg alg);

// Header {"alg":...,"typ":"JWT"} plus "kid" when the key has one; the payload is `payload_json`
// as given. ES256 signatures are the JWS raw R||S form (64 bytes), not DER. Throws
// std::invalid_argument when the key cannot sign.
std::string sign_service_token(const ServiceKey& key, std::string_view payload_json);

struct KeySet {
  std::shared_ptr<const ServiceKey> hmac;                // HS256 secret; may be null
  std::vector<std::shared_ptr<const ServiceKey>> keys;  // asymmetric, by kid
  // The first key of `keys` with this kid; nullptr when none (or `kid` is empty).
  const ServiceKey* find(std::string_view kid) const;
};

struct ClaimsOptions {
  std::int64_t now_s = 0;     // unix seconds
  std::int64_t leeway_s = 30;  // negative counts as 0
  // When empty, a token that carries an "aud" claim is refused (RFC 7519 4.1.3); otherwise "aud"
  // (a string or an array of strings) is required and must contain it.
  std::string_view audience;
  // When non-empty, "iss" is required and must equal it.
  std::string_view issuer;
};

struct ServiceClaims {
  std::string jti, project, service;
  std::string kid;  // of the key that verified the token; empty for HS256
  std::int64_t iat = 0, exp = 0, nbf = 0;  // nbf is 0 when absent
  KeyAlg alg = KeyAlg::kHS256;
};

enum class TokenError {
  kNone,
  kMalformed,        // not three base64url segments of JSON objects, bad header, duplicate header field
  kTooLarge,         // longer than kMaxServiceTokenLength
  kAlgorithm,        // alg not allowed, or not the algorithm of the key named by kid
  kUnknownKey,       // no HMAC secret for HS256; no (or no known) kid for ES256/EdDSA
  kSignature,        // signature does not verify (or has the wrong length)
  kMissingClaim,     // jti, project, service, iat or exp absent
  kBadClaim,         // a claim of the wrong type or form, or a duplicate claim
  kExpired,          // exp <= now - leeway
  kNotYetValid,      // nbf > now + leeway
  kIssuedInFuture,   // iat > now + leeway
  kAudience,
  kIssuer,
};
// Short snake_case reason for logs: "token_malformed", "token_expired", ... ("ok" for kNone).
std::string_view token_error_reason(TokenError e);

inline constexpr std::size_t kMaxServiceTokenLength = 4096;

// Verifies structure, algorithm, key, signature and claims, in that order. `out` is filled only
// when the result is kNone (and cleared otherwise). Never throws.
//
// Header: a JSON object with a string "alg"; "typ", when present, must be "JWT" (any case);
// "crit" is refused; "kid", when present, must be a string.
// Claims: "jti" (a non-empty string of at most 128 bytes), "project" and "service"
// (^[a-z0-9_-]{1,63}$), "iat" and "exp" (integers), optional "nbf" (integer), "aud" and "iss"
// (checked as ClaimsOptions says; "aud" a string or an array of strings, "iss" a string).
TokenError verify_service_token(const KeySet& keys, std::string_view token, const ClaimsOptions& opt,
                                ServiceClaims& out);

// The structure, header and signature checks of verify_service_token against one key, without
// the payload's claims (the payload need not even be JSON). The header's "alg" must be the key's
// algorithm; "kid" is not consulted. kNone, kTooLarge, kMalformed, kAlgorithm or kSignature.
TokenError verify_signature_only(const ServiceKey& key, std::string_view token);

}  // namespace ag::jwt
