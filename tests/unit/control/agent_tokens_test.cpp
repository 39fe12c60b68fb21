#include "control/service/agent_tokens.hpp"

#include <gtest/gtest.h>

#include "common/crypto.hpp"

namespace ag::control::agents {
namespace {

// Fewer iterations keep the unit tests fast; the format and the check are the same.
constexpr int kFast = 1000;

TEST(AgentTokens, NewTokenShapeAndStoredForm) {
  crypto::init();
  NewToken t = new_token();
  EXPECT_TRUE(well_formed(t.token)) << t.token;
  EXPECT_EQ(t.token.size(), 47u);
  EXPECT_EQ(t.prefix, t.token.substr(0, 12));
  EXPECT_EQ(t.hash.rfind("pbkdf2-sha256$200000$", 0), 0u) << t.hash;
  EXPECT_EQ(t.hash.find(t.token.substr(4)), std::string::npos);
  EXPECT_TRUE(verify_token(t.token, t.hash));
  EXPECT_NE(new_token().token, t.token);
}

TEST(AgentTokens, VerifyRefusesOtherTokensAndBrokenHashes) {
  crypto::init();
  std::string token = "aga_" + std::string(43, 'A');
  std::string stored = hash_token(token, kFast);
  EXPECT_TRUE(verify_token(token, stored));
  std::string other = token;
  other.back() = 'B';
  EXPECT_FALSE(verify_token(other, stored));
  // Same token, another salt: another stored form, both verify.
  std::string again = hash_token(token, kFast);
  EXPECT_NE(again, stored);
  EXPECT_TRUE(verify_token(token, again));
  for (const char* broken : {"", "pbkdf2-sha256$", "pbkdf2-sha256$1000$$", "pbkdf2-sha256$x$AAAA$AAAA",
                             "pbkdf2-sha256$0$AAAA$AAAA", "sha256$1000$AAAA$AAAA", "pbkdf2-sha256$1000$AAAA$short"})
    EXPECT_FALSE(verify_token(token, broken)) << broken;
}

TEST(AgentTokens, WellFormed) {
  EXPECT_TRUE(well_formed("aga_" + std::string(43, '-')));
  EXPECT_FALSE(well_formed("aga_" + std::string(42, 'a')));
  EXPECT_FALSE(well_formed("agx_" + std::string(43, 'a')));
  EXPECT_FALSE(well_formed("aga_" + std::string(42, 'a') + "="));
}

TEST(AgentTokens, VerifiedTokensRememberOnlyTheExactPairForTenMinutes) {
  crypto::init();
  VerifiedTokens cache;
  const std::string token = "aga_" + std::string(43, 'c'), stored = "pbkdf2-sha256$1$x$y";
  EXPECT_FALSE(cache.seen(token, stored, 1000));
  cache.remember(token, stored, 1000);
  EXPECT_TRUE(cache.seen(token, stored, 1000 + 599'000));
  EXPECT_FALSE(cache.seen(token, stored, 1000 + 600'000));            // expired
  EXPECT_FALSE(cache.seen(token, "pbkdf2-sha256$1$x$z", 2000));        // rotated: another stored hash
  EXPECT_FALSE(cache.seen("aga_" + std::string(43, 'd'), stored, 2000));  // another token
}

}  // namespace
}  // namespace ag::control::agents
