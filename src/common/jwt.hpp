#pragma once
// JSON Web Tokens (RFC 7519) signed with HMAC (HS256/HS384/HS512).
//
// Verification pins the algorithm: a token whose header names any other algorithm (including
// "none") is refused, so a key can never be used with an algorithm it was not meant for.
// The payload is returned as text for the caller to parse and check claims; signature and
// structure are checked here.
#include <optional>
#include <string>
#include <string_view>

#include "common/crypto.hpp"

namespace ag::jwt {

struct Algorithm {
  crypto::HmacAlg hmac;
  std::string_view name;  // "HS256" ...
};

// Parses "HS256" / "HS384" / "HS512"; nullopt otherwise.
std::optional<Algorithm> parse_algorithm(std::string_view name);

// `payload_json` must be a serialised JSON object.
std::string sign(const Algorithm& alg, std::string_view key, std::string_view payload_json);

enum class VerifyError { kMalformed, kAlgorithm, kSignature };
struct Verified {
  std::optional<std::string> payload;  // set on success
  VerifyError error = VerifyError::kMalformed;
};
// Tokens longer than this are refused before any work.
inline constexpr std::size_t kMaxTokenLength = 8192;
Verified verify(const Algorithm& alg, std::string_view key, std::string_view token);

}  // namespace ag::jwt
