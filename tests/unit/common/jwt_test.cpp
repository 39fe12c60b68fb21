#include "common/jwt.hpp"

#include <gtest/gtest.h>

namespace ag::jwt {
namespace {

const Algorithm kHs256 = *parse_algorithm("HS256");

TEST(Jwt, RoundTrip) {
  auto tok = sign(kHs256, "secret-key", R"({"sub":"u1","exp":99})");
  auto v = verify(kHs256, "secret-key", tok);
  ASSERT_TRUE(v.payload);
  EXPECT_EQ(*v.payload, R"({"sub":"u1","exp":99})");
}

TEST(Jwt, KnownTokenFromRfc7515StyleLibrary) {
  // HS256 over {"alg":"HS256","typ":"JWT"}.{"sub":"1234567890","name":"John Doe","iat":1516239022}
  // with key "your-256-bit-secret" (the widely published example token).
  std::string tok =
      "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
      "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
  EXPECT_TRUE(verify(kHs256, "your-256-bit-secret", tok).payload.has_value());
  EXPECT_FALSE(verify(kHs256, "another-secret", tok).payload.has_value());
}

TEST(Jwt, RejectsWrongKeyTamperAndAlgorithms) {
  auto tok = sign(kHs256, "k1", R"({"sub":"u1"})");
  EXPECT_EQ(verify(kHs256, "k2", tok).error, VerifyError::kSignature);
  auto tampered = tok;
  tampered[tok.find('.') + 2] ^= 1;
  EXPECT_FALSE(verify(kHs256, "k1", tampered).payload);
  // Same key, different algorithm: refused (the algorithm is pinned).
  auto hs512 = sign(*parse_algorithm("HS512"), "k1", R"({"sub":"u1"})");
  EXPECT_EQ(verify(kHs256, "k1", hs512).error, VerifyError::kAlgorithm);
  // alg "none" with an empty signature.
  std::string none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSJ9.";
  EXPECT_FALSE(verify(kHs256, "k1", none).payload);
}

TEST(Jwt, RejectsMalformed) {
  for (std::string bad : {"", "a", "a.b", "a.b.c.d", "!!!.???.###", "e30.e30.", "W10.W10.AA"})
    EXPECT_FALSE(verify(kHs256, "k", bad).payload) << bad;
  EXPECT_FALSE(verify(kHs256, "k", std::string(kMaxTokenLength + 1, 'a')).payload);
  EXPECT_FALSE(parse_algorithm("none"));
  EXPECT_FALSE(parse_algorithm("RS256"));
}

}  // namespace
}  // namespace ag::jwt
