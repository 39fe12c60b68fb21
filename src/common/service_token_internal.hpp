#pragma once
// What the service-token files share (private to common/): strict base64url and the limits.
//   service_token_keys.cpp  keys (HS256, ES256, EdDSA from secrets, PEM and JWK), signing, JWKS
//   service_token.cpp       decoding and verifying a token, claims
#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "common/crypto.hpp"

namespace ag::jwt::detail {

inline constexpr std::size_t kMaxKidLength = 256;
inline constexpr std::size_t kMaxJtiLength = 128;

// --- base64url (RFC 4648 section 5) without padding -------------------------------------------

inline constexpr unsigned char kB64Invalid = 0xFF;

constexpr std::array<unsigned char, 256> make_b64url_table() {
  std::array<unsigned char, 256> t{};
  for (auto& v : t) v = kB64Invalid;
  constexpr std::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  for (std::size_t i = 0; i < kAlphabet.size(); ++i)
    t[static_cast<unsigned char>(kAlphabet[i])] = static_cast<unsigned char>(i);
  return t;
}
inline constexpr auto kB64Url = make_b64url_table();

// Decodes unpadded base64url text into `out` (capacity `cap`). Strict: only the 64 alphabet
// characters, a length that is not 1 mod 4, and zero bits after the last whole byte, so every
// byte string has exactly one accepted encoding. False on any deviation or when `cap` is short.
inline bool b64url_decode(std::string_view in, unsigned char* out, std::size_t cap, std::size_t& len) {
  const std::size_t n = in.size();
  const std::size_t rem = n % 4;
  if (rem == 1) return false;
  const std::size_t need = n / 4 * 3 + (rem ? rem - 1 : 0);
  if (need > cap) return false;
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  unsigned bad = 0;
  std::size_t i = 0;
  std::size_t o = 0;
  for (; i + 4 <= n; i += 4) {
    const unsigned a = kB64Url[p[i]], b = kB64Url[p[i + 1]], c = kB64Url[p[i + 2]],
                   d = kB64Url[p[i + 3]];
    bad |= a | b | c | d;
    const unsigned v = (a << 18) | (b << 12) | (c << 6) | d;
    out[o] = static_cast<unsigned char>(v >> 16);
    out[o + 1] = static_cast<unsigned char>(v >> 8);
    out[o + 2] = static_cast<unsigned char>(v);
    o += 3;
  }
  if (rem == 2) {
    const unsigned a = kB64Url[p[i]], b = kB64Url[p[i + 1]];
    bad |= a | b;
    if (b & 0x0F) return false;
    out[o++] = static_cast<unsigned char>((a << 2) | (b >> 4));
  } else if (rem == 3) {
    const unsigned a = kB64Url[p[i]], b = kB64Url[p[i + 1]], c = kB64Url[p[i + 2]];
    bad |= a | b | c;
    if (c & 0x03) return false;
    out[o++] = static_cast<unsigned char>((a << 2) | (b >> 4));
    out[o++] = static_cast<unsigned char>(((b & 0x0F) << 4) | (c >> 2));
  }
  if (bad & 0x80) return false;
  len = o;
  return true;
}

inline std::string b64url(const unsigned char* data, std::size_t len) {
  return crypto::base64url_encode(std::string_view(reinterpret_cast<const char*>(data), len));
}

// Strictly decodes a base64url string that must hold exactly `want` bytes.
inline bool b64url_fixed(std::string_view in, unsigned char* out, std::size_t want) {
  std::size_t len = 0;
  return b64url_decode(in, out, want, len) && len == want;
}

}  // namespace ag::jwt::detail
