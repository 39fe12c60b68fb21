// The head checks and path normalisation of strict_http.hpp, without sockets.
#include "gateway/strict_http.hpp"

#include <gtest/gtest.h>

#include <string>

namespace ag::gateway::strict {
namespace {

HeadFacts ok_head() {
  HeadFacts f;
  f.version = 11;
  f.host_count = 1;
  f.host = "example.com";
  return f;
}

TEST(StrictHead, AcceptsAnOrdinaryHead) {
  EXPECT_EQ(check_head(ok_head(), Underscores::kDrop).status, 0);
  HeadFacts chunked = ok_head();
  chunked.transfer_encoding_count = 1;
  chunked.transfer_encoding = "Chunked";
  EXPECT_EQ(check_head(chunked, Underscores::kDrop).status, 0);
  HeadFacts http10 = ok_head();
  http10.version = 10;
  http10.host_count = 0;
  EXPECT_EQ(check_head(http10, Underscores::kDrop).status, 0);
}

TEST(StrictHead, TransferEncodingOtherThanChunkedIsRefused) {
  for (const char* te : {"cow", "chunked, identity", "xchunked", "identity", "chunked,", "chunked;q=1"}) {
    HeadFacts f = ok_head();
    f.transfer_encoding_count = 1;
    f.transfer_encoding = te;
    LocalReply r = check_head(f, Underscores::kDrop);
    EXPECT_EQ(r.status, 400) << te;
    EXPECT_TRUE(r.close) << te;
    f.has_content_length = true;
    EXPECT_EQ(check_head(f, Underscores::kDrop).status, 400) << te;
  }
  // A coding before chunked is valid HTTP that this gateway does not implement.
  HeadFacts gz = ok_head();
  gz.transfer_encoding_count = 2;
  gz.transfer_encoding = "gzip, chunked";
  EXPECT_EQ(check_head(gz, Underscores::kDrop).status, 501);
  EXPECT_TRUE(check_head(gz, Underscores::kDrop).close);
}

TEST(StrictHead, ChunkedWithContentLengthOrInHttp10IsRefused) {
  HeadFacts both = ok_head();
  both.transfer_encoding_count = 1;
  both.transfer_encoding = "chunked";
  both.has_content_length = true;
  EXPECT_EQ(check_head(both, Underscores::kDrop).status, 400);
  HeadFacts old = ok_head();
  old.version = 10;
  old.transfer_encoding_count = 1;
  old.transfer_encoding = "chunked";
  EXPECT_EQ(check_head(old, Underscores::kDrop).status, 400);
}

TEST(StrictHead, TwoContentLengthsAreRefusedEvenWhenEqual) {
  HeadFacts f = ok_head();
  f.has_content_length = true;
  f.content_length_count = 1;
  EXPECT_EQ(check_head(f, Underscores::kDrop).status, 0);
  f.content_length_count = 2;
  EXPECT_EQ(check_head(f, Underscores::kDrop).status, 400);
  EXPECT_TRUE(check_head(f, Underscores::kDrop).close);
}

TEST(StrictHead, HostMustBePresentOnceAndValid) {
  HeadFacts none = ok_head();
  none.host_count = 0;
  none.host = {};
  EXPECT_EQ(check_head(none, Underscores::kDrop).status, 400);
  HeadFacts two = ok_head();
  two.host_count = 2;
  EXPECT_EQ(check_head(two, Underscores::kDrop).status, 400);
  two.version = 10;
  EXPECT_EQ(check_head(two, Underscores::kDrop).status, 400);
  HeadFacts bad = ok_head();
  bad.host = "exa mple.com";
  EXPECT_EQ(check_head(bad, Underscores::kDrop).status, 400);
}

TEST(StrictHead, ValidHost) {
  for (const char* h : {"", "example.com", "example.com:8080", "127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:9000",
                        "xn--bcher-kva.example", "a-b_c~d.e", "host:", "%41bc"})
    EXPECT_TRUE(valid_host(h)) << h;
  for (const char* h : {"exa mple.com", "a/b", "h:port", "h:99999x", "h:65536", "[::1", "[::1]x", "[zz]", ":80", "a@b",
                        "h:1:2", "%4", "%zz", "a\tb", "h:123456"})
    EXPECT_FALSE(valid_host(h)) << h;
}

TEST(StrictHead, TwoCredentialsOfOneKindAreAmbiguous) {
  HeadFacts keys = ok_head();
  keys.api_key_count = 2;
  EXPECT_EQ(check_head(keys, Underscores::kDrop).status, 400);
  HeadFacts authz = ok_head();
  authz.authorization_count = 2;
  EXPECT_EQ(check_head(authz, Underscores::kDrop).status, 400);
  HeadFacts one_each = ok_head();
  one_each.api_key_count = 1;
  one_each.authorization_count = 1;
  EXPECT_EQ(check_head(one_each, Underscores::kDrop).status, 0);
}

TEST(StrictHead, UnderscoresRefusedOnlyWhenConfigured) {
  HeadFacts f = ok_head();
  f.underscore_name = true;
  EXPECT_EQ(check_head(f, Underscores::kDrop).status, 0);
  EXPECT_EQ(check_head(f, Underscores::kAllow).status, 0);
  EXPECT_EQ(check_head(f, Underscores::kReject).status, 400);
}

std::string norm(std::string_view in, bool merge = true) {
  std::string out;
  switch (normalize_path(in, merge, out)) {
    case PathResult::kUnchanged:
      return std::string(in);
    case PathResult::kChanged:
      EXPECT_NE(out, in);
      return out;
    case PathResult::kAboveRoot:
      return "<above root>";
  }
  return "<unreachable>";
}

TEST(PathNormalisation, RemovesDotSegments) {
  EXPECT_EQ(norm("/"), "/");
  EXPECT_EQ(norm("/a/b/c"), "/a/b/c");
  EXPECT_EQ(norm("/a/./b/../c"), "/a/c");
  EXPECT_EQ(norm("/alpha/svc/../svcB/orders"), "/alpha/svcB/orders");
  EXPECT_EQ(norm("/a/b/.."), "/a/");
  EXPECT_EQ(norm("/a/b/."), "/a/b/");
  EXPECT_EQ(norm("/a/.."), "/");
  EXPECT_EQ(norm("/."), "/");
  EXPECT_EQ(norm("/a/%2e%2e/b"), "/b");
  EXPECT_EQ(norm("/a/%2E%2e/b"), "/b");
  EXPECT_EQ(norm("/a/.%2e/b"), "/b");
  EXPECT_EQ(norm("/a/%2e/b"), "/a/b");
  EXPECT_EQ(norm("/.well-known/x"), "/.well-known/x");
  EXPECT_EQ(norm("/a/...b/c"), "/a/...b/c");
  EXPECT_EQ(norm("/a/.../c"), "/a/.../c");
  EXPECT_EQ(norm("/a/%2e%2e%2e/c"), "/a/%2e%2e%2e/c");
  EXPECT_EQ(norm("/a/%2ex"), "/a/%2ex");
  EXPECT_EQ(norm("/a/%2"), "/a/%2");
}

TEST(PathNormalisation, EncodedSlashIsNotASeparator) {
  EXPECT_EQ(norm("/a%2Fb/../c"), "/c");
  EXPECT_EQ(norm("/a/b%2Fc"), "/a/b%2Fc");
  EXPECT_EQ(norm("/a/b%2F..%2Fc"), "/a/b%2F..%2Fc");
}

TEST(PathNormalisation, RefusesClimbingAboveTheRoot) {
  EXPECT_EQ(norm("/.."), "<above root>");
  EXPECT_EQ(norm("/../x"), "<above root>");
  EXPECT_EQ(norm("/../baseB/x"), "<above root>");
  EXPECT_EQ(norm("/a/../../x"), "<above root>");
  EXPECT_EQ(norm("/%2e%2e/x"), "<above root>");
  EXPECT_EQ(norm("/a/./../.."), "<above root>");
}

TEST(PathNormalisation, MergesSlashesUnlessTurnedOff) {
  EXPECT_EQ(norm("/a//b"), "/a/b");
  EXPECT_EQ(norm("//a///b//"), "/a/b/");
  EXPECT_EQ(norm("//"), "/");
  EXPECT_EQ(norm("/a//b", false), "/a//b");
  EXPECT_EQ(norm("/a//../b", false), "/a/b");
  EXPECT_EQ(norm("/a//./b/../c", false), "/a//c");
}

TEST(ClientIpFields, OnlyTheAddressFields) {
  for (const char* n : {"forwarded", "x-real-ip", "x-client-ip", "true-client-ip"}) EXPECT_TRUE(is_client_ip_field(n)) << n;
  for (const char* n : {"x-forwarded-for", "host", "x-real-ipx", "forwarde"}) EXPECT_FALSE(is_client_ip_field(n)) << n;
}

}  // namespace
}  // namespace ag::gateway::strict
