#include "common/api_key.hpp"

#include <gtest/gtest.h>

#include <set>

#include "common/crypto.hpp"

namespace ag {
namespace {

TEST(ApiKey, GeneratedKeysAreWellFormedAndHashed) {
  crypto::init();
  std::set<std::string> keys;
  for (int i = 0; i < 200; ++i) {
    auto g = generate_api_key();
    ASSERT_EQ(g.key.size(), kApiKeyLength);
    ASSERT_EQ(g.key.substr(0, 4), "agk_");
    ASSERT_EQ(g.key.substr(4, 8), g.public_id);
    ASSERT_TRUE(api_key_well_formed(g.key)) << g.key;
    ASSERT_EQ(g.hash_hex, crypto::sha256_hex(g.key));
    keys.insert(g.key);
  }
  EXPECT_EQ(keys.size(), 200u);
}

TEST(ApiKey, ChecksumCatchesEveryOneCharacterChange) {
  auto g = generate_api_key();
  for (std::size_t i = 0; i < g.key.size(); ++i) {
    std::string k = g.key;
    k[i] = k[i] == 'a' ? 'b' : 'a';
    EXPECT_FALSE(api_key_well_formed(k)) << "position " << i;
  }
  EXPECT_FALSE(api_key_well_formed(g.key.substr(1)));
  EXPECT_FALSE(api_key_well_formed(g.key + "a"));
  EXPECT_FALSE(api_key_well_formed(""));
  EXPECT_EQ(api_key_display("abcdefgh"), "agk_abcdefgh_\u2026");
}

}  // namespace
}  // namespace ag
