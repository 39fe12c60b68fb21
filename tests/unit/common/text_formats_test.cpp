// The shared parsers and writers of common/: upstream URLs (control plane and worker alike) and
// the one JSON string writer.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/http_url.hpp"
#include "common/json_string.hpp"

namespace ag {
namespace {

TEST(HttpUrl, SplitsWhatBothSidesNeed) {
  HttpUrl u;
  ASSERT_EQ(parse_http_url("HTTPS://Api.Example.com:8443/base/", u), "");
  EXPECT_TRUE(u.tls);
  EXPECT_EQ(u.authority, "Api.Example.com:8443");
  EXPECT_EQ(u.host, "Api.Example.com");
  EXPECT_EQ(u.port, 8443);
  EXPECT_EQ(u.path, "/base/");
  ASSERT_EQ(parse_http_url("http://[::1]/x", u), "");
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.authority, "[::1]");
  EXPECT_EQ(u.port, 80);
  ASSERT_EQ(parse_http_url("https://h", u), "");
  EXPECT_EQ(u.port, 443);
  EXPECT_EQ(u.path, "");
}

TEST(HttpUrl, RefusesWhatNeitherSideMayUse) {
  HttpUrl u;
  EXPECT_EQ(parse_http_url("ftp://h/", u), "must be an absolute http:// or https:// URL");
  EXPECT_EQ(parse_http_url("http://", u), "must include a host");
  EXPECT_EQ(parse_http_url("http://:80/", u), "must include a host");
  EXPECT_EQ(parse_http_url("http://user@h/", u), "must not contain user info");
  EXPECT_EQ(parse_http_url("http://h/?q", u), "must not contain a query string");
  EXPECT_EQ(parse_http_url("http://h/#f", u), "must not contain a fragment");
  EXPECT_EQ(parse_http_url("http://h /", u), "must not contain spaces or control characters");
  EXPECT_EQ(parse_http_url("http://h:0/", u), "port must be 1-65535");
  EXPECT_EQ(parse_http_url("http://h:65536/", u), "port must be 1-65535");
  EXPECT_EQ(parse_http_url("http://h:/", u), "has an empty port");
  EXPECT_EQ(parse_http_url("http://h_x/", u), "has an invalid host");
  EXPECT_EQ(parse_http_url("http://[]/", u), "has an invalid IPv6 host");
  EXPECT_EQ(parse_http_url("http://[::1]x/", u), "has an invalid host");
}

TEST(JsonString, EveryInputMakesValidJson) {
  std::string out;
  json_text::append_json_string(out, std::string("a\"b\\c\n\r\t\x01 é \xff end", 18));
  auto parsed = nlohmann::json::parse(out);  // throws on invalid JSON
  EXPECT_EQ(parsed.get<std::string>(), "a\"b\\c\n\r\t\x01 é \xEF\xBF\xBD end");
  out.clear();
  json_text::append_json_string(out, "-----BEGIN PUBLIC KEY-----\nABC\n-----END PUBLIC KEY-----\n");
  EXPECT_EQ(out, R"("-----BEGIN PUBLIC KEY-----\nABC\n-----END PUBLIC KEY-----\n")");
}

}  // namespace
}  // namespace ag
