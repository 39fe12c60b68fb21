#pragma once
// Agent tokens (docs/organizations.md, "Agents"): "aga_" + 32 random bytes in base64url, shown
// once. Stored as a slow salted hash, "pbkdf2-sha256$<iterations>$<salt>$<hash>", found by the
// token's first 12 characters (the prefix column).
//
// PBKDF2-HMAC-SHA256 with 200,000 iterations, not argon2id. Measured (bench/micro,
// `ag_micro_bench --benchmark_filter=AgentToken`, 2 shared cores at 2.7 GHz, two runs): one
// PBKDF2 verification 47–58 ms of CPU and a few hundred bytes; argon2id with the password limits
// (2 passes, 64 MiB) 177–203 ms and 64 MiB each (ten agents verifying at once would hold
// 640 MiB). The token has 256 bits of entropy, so memory hardness buys nothing against guessing;
// the slow hash is there so a copied database does not hand out working tokens cheaply.
//
// The slow hash runs once per token per process (VerifiedTokens): a verified token's SHA-256 is
// kept in memory for ten minutes beside the stored hash it matched, and later calls compare that
// in constant time (BM_AgentTokenCachedCheck: about 0.2 µs). A rotated or revoked token stops matching at once (the stored hash changes,
// or the row says revoked).
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace ag::control::agents {

inline constexpr std::string_view kTokenPrefix = "aga_";
inline constexpr std::size_t kLookupPrefixLength = 12;  // "aga_" + 8 characters (48 bits)
inline constexpr int kPbkdf2Iterations = 200'000;

struct NewToken {
  std::string token;   // shown once
  std::string prefix;  // the lookup column
  std::string hash;    // the stored form
};
NewToken new_token();

// Is `token` shaped like an agent token ("aga_" + 43 base64url characters)?
bool well_formed(std::string_view token);
std::string lookup_prefix(std::string_view token);
std::string hash_token(std::string_view token, int iterations = kPbkdf2Iterations);
// Constant-time check of `token` against a stored hash; false for a malformed stored value.
bool verify_token(std::string_view token, std::string_view stored);

// Tokens this process has verified against a stored hash recently.
class VerifiedTokens {
 public:
  // True when `token` was verified against exactly `stored` within the last ten minutes.
  bool seen(std::string_view token, const std::string& stored, std::int64_t now_ms);
  void remember(std::string_view token, const std::string& stored, std::int64_t now_ms);

 private:
  struct Entry {
    std::string token_sha256;
    std::int64_t until_ms = 0;
  };
  std::mutex mu_;
  std::unordered_map<std::string, Entry> by_stored_;  // stored hash → the token that matched it
};

}  // namespace ag::control::agents
