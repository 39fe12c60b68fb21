#include "control/service/validation.hpp"

#include <gtest/gtest.h>

namespace ag::control {
namespace {

std::string url_error(std::string u) { return check_upstream_url(u); }

TEST(Validation, UpstreamUrl) {
  std::string u = "http://127.0.0.1:9000/api/";
  EXPECT_EQ(check_upstream_url(u), "");
  EXPECT_EQ(u, "http://127.0.0.1:9000/api");
  u = "https://example.com";
  EXPECT_EQ(check_upstream_url(u), "");
  u = "HTTPS://Example.com/V1";  // the scheme is stored in lower case; host and path as given
  EXPECT_EQ(check_upstream_url(u), "");
  EXPECT_EQ(u, "https://Example.com/V1");
  u = "http://[::1]:8080";
  EXPECT_EQ(check_upstream_url(u), "");
  for (std::string bad : {"ftp://x.com", "http://", "http:///path", "example.com", "http://a b.com",
                          "http://x.com?q=1", "http://x.com/#f", "http://user:pw@x.com", "http://x.com:0",
                          "http://x.com:70000", "http://x.com:", "http://x_y.com", "http://[::1"})
    EXPECT_NE(url_error(bad), "") << bad;
  EXPECT_NE(url_error("http://x.com/" + std::string(2100, 'a')), "");
}

TEST(Validation, EmailAndName) {
  EXPECT_EQ(check_email("a@b.co"), "");
  for (std::string bad : {"", "ab", "@b.co", "a@", "a@b", "a@@b.co", "a b@c.co", "a@b..co", "a@.b.co"})
    EXPECT_NE(check_email(bad), "") << bad;
  EXPECT_NE(check_email(std::string(250, 'a') + "@b.co"), "");
  std::string n = "  shop  ";
  EXPECT_EQ(check_name(n), "");
  EXPECT_EQ(n, "shop");
  n = "   ";
  EXPECT_NE(check_name(n), "");
  n = std::string(101, 'x');
  EXPECT_NE(check_name(n), "");
  n = std::string(50, 'x') + "\xc3\xa9";  // 51 characters, 52 bytes
  EXPECT_EQ(check_name(n, 51), "");
  n = "a\x01b";
  EXPECT_NE(check_name(n), "");
}

}  // namespace
}  // namespace ag::control
