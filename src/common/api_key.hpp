#pragma once
// API key format, shared by the control plane (which issues keys) and the worker (which checks
// their format before any lookup).
//
//   agk_<public id: 8 base62>_<secret: 43 base62><checksum: 6 base62>     (62 characters)
//
// - `agk_` makes leaked keys easy for secret scanners to find.
// - The secret is 43 characters drawn uniformly from 62 (≥ 256 bits of OS randomness).
// - The checksum is CRC-32 over everything before it, so a mistyped or invented key is refused
//   without a lookup. It is not a security boundary (the SHA-256 lookup is).
// - The public id names the key in listings, logs and the `X-Gateway-Key-Id` header.
#include <string>
#include <string_view>

namespace ag {

inline constexpr std::string_view kApiKeyPrefix = "agk_";
inline constexpr std::size_t kApiKeyPublicIdLength = 8;
inline constexpr std::size_t kApiKeySecretLength = 43;
inline constexpr std::size_t kApiKeyChecksumLength = 6;
inline constexpr std::size_t kApiKeyLength = 4 + 8 + 1 + 43 + 6;

struct GeneratedKey {
  std::string key;        // shown once, never stored
  std::string public_id;  // stored, shown in listings
  std::string hash_hex;   // SHA-256 of `key`, stored
};

GeneratedKey generate_api_key();
// Format + checksum check only (no lookup).
bool api_key_well_formed(std::string_view key);
// "agk_3fKq81Zb_…" for listings.
std::string api_key_display(std::string_view public_id);

}  // namespace ag
