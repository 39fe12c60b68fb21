#include "control/service/agent_tokens.hpp"

#include <openssl/evp.h>

#include <charconv>
#include <stdexcept>

#include "common/crypto.hpp"

namespace ag::control::agents {

namespace {

constexpr std::int64_t kRememberMs = 10 * 60 * 1000;
constexpr std::size_t kMaxRemembered = 10'000;

std::string pbkdf2(std::string_view token, std::string_view salt, int iterations) {
  std::string out(32, '\0');
  if (PKCS5_PBKDF2_HMAC(token.data(), static_cast<int>(token.size()), reinterpret_cast<const unsigned char*>(salt.data()),
                        static_cast<int>(salt.size()), iterations, EVP_sha256(), static_cast<int>(out.size()),
                        reinterpret_cast<unsigned char*>(out.data())) != 1)
    throw std::runtime_error("PBKDF2 failed");
  return out;
}

std::string digest(std::string_view token) {
  auto d = crypto::sha256(token);
  return std::string(reinterpret_cast<const char*>(d.data()), d.size());
}

}  // namespace

NewToken new_token() {
  NewToken t;
  t.token = std::string(kTokenPrefix) + crypto::base64url_encode(crypto::random_bytes(32));
  t.prefix = lookup_prefix(t.token);
  t.hash = hash_token(t.token);
  return t;
}

bool well_formed(std::string_view token) {
  if (token.size() != kTokenPrefix.size() + 43 || token.substr(0, kTokenPrefix.size()) != kTokenPrefix) return false;
  for (char c : token.substr(kTokenPrefix.size()))
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
      return false;
  return true;
}

std::string lookup_prefix(std::string_view token) { return std::string(token.substr(0, kLookupPrefixLength)); }

std::string hash_token(std::string_view token, int iterations) {
  std::string salt = crypto::random_bytes(16);
  return "pbkdf2-sha256$" + std::to_string(iterations) + "$" + crypto::base64url_encode(salt) + "$" +
         crypto::base64url_encode(pbkdf2(token, salt, iterations));
}

bool verify_token(std::string_view token, std::string_view stored) {
  // pbkdf2-sha256$<iterations>$<salt>$<hash>
  constexpr std::string_view kScheme = "pbkdf2-sha256$";
  if (stored.substr(0, kScheme.size()) != kScheme) return false;
  stored.remove_prefix(kScheme.size());
  auto d1 = stored.find('$');
  if (d1 == std::string_view::npos) return false;
  auto d2 = stored.find('$', d1 + 1);
  if (d2 == std::string_view::npos) return false;
  int iterations = 0;
  auto [p, ec] = std::from_chars(stored.data(), stored.data() + d1, iterations);
  if (ec != std::errc{} || p != stored.data() + d1 || iterations < 1 || iterations > 10'000'000) return false;
  auto salt = crypto::base64url_decode(stored.substr(d1 + 1, d2 - d1 - 1));
  auto want = crypto::base64url_decode(stored.substr(d2 + 1));
  if (!salt || !want || want->size() != 32) return false;
  return crypto::constant_time_equal(pbkdf2(token, *salt, iterations), *want);
}

bool VerifiedTokens::seen(std::string_view token, const std::string& stored, std::int64_t now_ms) {
  std::string d = digest(token);
  std::lock_guard lock(mu_);
  auto it = by_stored_.find(stored);
  return it != by_stored_.end() && it->second.until_ms > now_ms && crypto::constant_time_equal(it->second.token_sha256, d);
}

void VerifiedTokens::remember(std::string_view token, const std::string& stored, std::int64_t now_ms) {
  std::string d = digest(token);
  std::lock_guard lock(mu_);
  if (by_stored_.size() >= kMaxRemembered) {
    for (auto it = by_stored_.begin(); it != by_stored_.end();) it = it->second.until_ms <= now_ms ? by_stored_.erase(it) : std::next(it);
    if (by_stored_.size() >= kMaxRemembered) by_stored_.clear();
  }
  by_stored_[stored] = {std::move(d), now_ms + kRememberMs};
}

}  // namespace ag::control::agents
