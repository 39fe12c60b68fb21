#include "common/crypto.hpp"

#include <gtest/gtest.h>

#include <set>

namespace ag::crypto {
namespace {

struct Init : ::testing::Environment {
  void SetUp() override { init(); }
};
const auto* const kInit = ::testing::AddGlobalTestEnvironment(new Init);

TEST(Crypto, Sha256KnownVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Crypto, HmacRfc4231Case2) {
  auto mac = hmac(HmacAlg::kSha256, "Jefe", "what do ya want for nothing?");
  EXPECT_EQ(to_hex(reinterpret_cast<const unsigned char*>(mac.data()), mac.size()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(hmac(HmacAlg::kSha384, "k", "d").size(), 48u);
  EXPECT_EQ(hmac(HmacAlg::kSha512, "k", "d").size(), 64u);
}

TEST(Crypto, Base64UrlRoundTripAndRejectsGarbage) {
  for (std::string s : {"", "f", "fo", "foo", "foob", "\xff\xfe\x00\x01"}) {
    auto enc = base64url_encode(s);
    EXPECT_EQ(enc.find('='), std::string::npos);
    EXPECT_EQ(base64url_decode(enc), s);
  }
  EXPECT_EQ(base64url_encode("\xfb\xff"), "-_8");
  EXPECT_FALSE(base64url_decode("ab$d").has_value());
  EXPECT_FALSE(base64url_decode("abc=").has_value());
}

TEST(Crypto, RandomBase62IsUniformAlphabetAndUnique) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    auto s = random_base62(43);
    ASSERT_EQ(s.size(), 43u);
    for (char c : s) ASSERT_NE(kBase62Alphabet.find(c), std::string_view::npos);
    seen.insert(s);
  }
  EXPECT_EQ(seen.size(), 1000u);
}

TEST(Crypto, UuidV4Shape) {
  auto u = uuid_v4();
  EXPECT_TRUE(is_uuid(u));
  EXPECT_EQ(u[14], '4');
  EXPECT_NE(std::string("89ab").find(u[19]), std::string::npos);
  EXPECT_FALSE(is_uuid("abc"));
  EXPECT_FALSE(is_uuid("00000000-0000-0000-0000-00000000000G"));
  EXPECT_FALSE(is_uuid("00000000-0000-0000-0000-00000000000A"));  // upper case
}

TEST(Crypto, ConstantTimeEqual) {
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "abcd"));
  EXPECT_TRUE(constant_time_equal("", ""));
}

TEST(Crypto, Crc32AndBase62) {
  EXPECT_EQ(crc32("123456789"), 0xCBF43926u);
  EXPECT_EQ(base62_fixed(0, 3), "000");
  EXPECT_EQ(base62_fixed(61, 2), "0z");
  EXPECT_EQ(base62_fixed(62, 2), "10");
}

}  // namespace
}  // namespace ag::crypto
