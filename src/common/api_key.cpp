#include "common/api_key.hpp"

#include <array>

#include "common/crypto.hpp"

namespace ag {

namespace {
constexpr auto kBase62 = [] {
  std::array<bool, 256> t{};
  for (char c : crypto::kBase62Alphabet) t[static_cast<unsigned char>(c)] = true;
  return t;
}();
bool base62_char(char c) { return kBase62[static_cast<unsigned char>(c)]; }
std::string checksum(std::string_view body) {
  return crypto::base62_fixed(crypto::crc32(body), kApiKeyChecksumLength);
}
}  // namespace

GeneratedKey generate_api_key() {
  GeneratedKey g;
  g.public_id = crypto::random_base62(kApiKeyPublicIdLength);
  std::string body = std::string(kApiKeyPrefix) + g.public_id + "_" +
                     crypto::random_base62(kApiKeySecretLength);
  g.key = body + checksum(body);
  g.hash_hex = crypto::sha256_hex(g.key);
  return g;
}

bool api_key_well_formed(std::string_view key) {
  if (key.size() != kApiKeyLength || key.substr(0, kApiKeyPrefix.size()) != kApiKeyPrefix) return false;
  constexpr std::size_t kSep = 4 + kApiKeyPublicIdLength;
  for (std::size_t i = kApiKeyPrefix.size(); i < key.size(); ++i) {
    if (i == kSep) {
      if (key[i] != '_') return false;
    } else if (!base62_char(key[i])) {
      return false;
    }
  }
  // The checksum is compared digit by digit from the right (no string is built: this runs for
  // every request the worker sees).
  std::uint64_t crc = crypto::crc32(key.substr(0, key.size() - kApiKeyChecksumLength));
  for (std::size_t i = key.size(); i-- > key.size() - kApiKeyChecksumLength;) {
    if (key[i] != crypto::kBase62Alphabet[crc % 62]) return false;
    crc /= 62;
  }
  return true;
}

std::string api_key_display(std::string_view public_id) {
  return std::string(kApiKeyPrefix) + std::string(public_id) + "_\u2026";
}

}  // namespace ag
