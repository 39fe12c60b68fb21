#include "http/router.hpp"

#include <gtest/gtest.h>

namespace ag::http {
namespace {

TEST(Router, MatchesParamsAndMethods) {
  Router r;
  r.add("GET", "/projects", 1);
  r.add("POST", "/projects", 2);
  r.add("GET", "/projects/{id}", 3);
  r.add("DELETE", "/projects/{id}/keys/{key_id}", 4);
  auto m = r.match("DELETE", "/projects/p1/keys/k%2F2");
  ASSERT_EQ(m.outcome, Router::Outcome::kFound);
  EXPECT_EQ(m.slot, 4u);
  EXPECT_EQ(m.params.at("id"), "p1");
  EXPECT_EQ(m.params.at("key_id"), "k/2");
  EXPECT_EQ(r.match("POST", "/projects").slot, 2u);
  EXPECT_EQ(r.match("GET", "/projects/").outcome, Router::Outcome::kFound);
  EXPECT_EQ(r.match("HEAD", "/projects").outcome, Router::Outcome::kFound);
  auto nope = r.match("PUT", "/projects");
  EXPECT_EQ(nope.outcome, Router::Outcome::kMethodNotAllowed);
  EXPECT_EQ(nope.allow, "GET, POST");
  EXPECT_EQ(r.match("GET", "/nothing").outcome, Router::Outcome::kNotFound);
  EXPECT_EQ(r.match("GET", "/projects/a/b").outcome, Router::Outcome::kNotFound);
  EXPECT_EQ(r.routes().size(), 4u);
}

TEST(Query, DecodesParams) {
  std::string v;
  EXPECT_TRUE(query_param("a=1&limit=5&x", "limit", v));
  EXPECT_EQ(v, "5");
  EXPECT_TRUE(query_param("username=a%40b.c&password=p+w%21", "password", v));
  EXPECT_EQ(v, "p w!");
  EXPECT_TRUE(query_param("x", "x", v));
  EXPECT_EQ(v, "");
  EXPECT_FALSE(query_param("a=1", "b", v));
  EXPECT_EQ(percent_decode("%zz%4", false), "%zz%4");
}

}  // namespace
}  // namespace ag::http

namespace ag::http {
namespace {
TEST(Query, PercentEncodingValidity) {
  EXPECT_TRUE(percent_encoding_valid("a=%41%42&b=c+d"));
  EXPECT_FALSE(percent_encoding_valid("a=%zz"));
  EXPECT_FALSE(percent_encoding_valid("a=%4"));
  EXPECT_FALSE(percent_encoding_valid("a=%"));
}
}  // namespace
}  // namespace ag::http
