#pragma once
// Cryptographic helpers over OpenSSL (hashes, HMAC) and libsodium (randomness, constant-time
// comparison). Call ag::crypto::init() once at start-up before anything else here.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ag::crypto {

void init();

using Sha256Digest = std::array<unsigned char, 32>;

Sha256Digest sha256(std::string_view data);
std::string sha256_hex(std::string_view data);
std::string to_hex(const unsigned char* data, std::size_t len);

enum class HmacAlg { kSha256, kSha384, kSha512 };
// HMAC of `data` under `key`; the raw MAC bytes.
std::string hmac(HmacAlg alg, std::string_view key, std::string_view data);

// Bytes from the OS CSPRNG (libsodium randombytes).
std::string random_bytes(std::size_t n);
// `n` characters drawn uniformly from [0-9A-Za-z]: log2(62) ≈ 5.95 bits each.
std::string random_base62(std::size_t n);
// Random RFC 4122 version-4 UUID, lower case.
std::string uuid_v4();
bool is_uuid(std::string_view s);

std::string base64url_encode(std::string_view data);
std::optional<std::string> base64url_decode(std::string_view data);

// Constant-time comparison (the length is not secret).
bool constant_time_equal(std::string_view a, std::string_view b);

std::uint32_t crc32(std::string_view data);
// Fixed-width base62 encoding of `value`, most significant digit first.
std::string base62_fixed(std::uint64_t value, std::size_t width);

inline constexpr std::string_view kBase62Alphabet =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

}  // namespace ag::crypto
