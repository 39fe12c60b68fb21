// The upstream request head as a pure function: what crosses the proxy and what the gateway adds.
#include "gateway/stages/proxy/upstream_head.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "config/snapshot.hpp"
#include "config/context.hpp"

// The context this file builds snapshots with (config/context.hpp).
static ag::config::BuildContext test_ctx;

namespace ag::gateway {
namespace {

struct UpstreamHead : ::testing::Test {
  void SetUp() override {
    auto built = config::build_snapshot(R"({"version":1,"projects":[{"id":"p1",
      "upstream_base_url":"http://127.0.0.1:9/base","keys":[]}]})", test_ctx);
    ASSERT_TRUE(built.snapshot) << built.error;
    snapshot = built.snapshot;
    for (const auto& p : snapshot->projects)  // indexed by metrics slot: slot 0 is empty
      if (p) ctx.project = p.get();
    ASSERT_NE(ctx.project, nullptr);
    ctx.request_id = "rid-1";
    ctx.client_ip = "198.51.100.7";
    ctx.request_target = "/v1/items?x=1";
    in.method = "POST";
    in.upstream = &ctx.project->upstream;
    in.peer_ip = "198.51.100.7";
    in.client_host = "api.example.com";
  }
  std::string build() {
    in.fields = fields;
    marks = build_upstream_head(out, ctx, in);
    return out;
  }
  std::shared_ptr<const config::Snapshot> snapshot;
  Context ctx;
  UpstreamHeadInput in;
  std::vector<http1::Field> fields;
  std::string out;
  UpstreamHeadMarks marks;
};

TEST_F(UpstreamHead, ForwardsEndToEndFieldsAndAddsTheGatewaysOwn) {
  fields = {{"Host", "api.example.com"}, {"Accept", "*/*"}, {"X-API-Key", "secret"}, {"Connection", "keep-alive"},
            {"X-Forwarded-For", "6.6.6.6"}, {"X-Real-IP", "6.6.6.6"}, {"X-Gateway-Project", "forged"},
            {"Content-Length", "5"}, {"Transfer-Encoding", "chunked"}, {"Keep-Alive", "timeout=5"}};
  in.connection = "keep-alive";
  in.has_body = true;
  in.content_length = 5;
  std::string h = build();
  EXPECT_EQ(h.substr(0, h.find("\r\n")), "POST /base/v1/items?x=1 HTTP/1.1");
  EXPECT_NE(h.find("\r\nHost: 127.0.0.1:9\r\n"), std::string::npos);
  EXPECT_NE(h.find("\r\nAccept: */*\r\n"), std::string::npos);
  for (const char* gone : {"X-API-Key", "secret", "6.6.6.6", "forged", "Keep-Alive", "Transfer-Encoding"})
    EXPECT_EQ(h.find(gone), std::string::npos) << gone << " in\n" << h;
  EXPECT_NE(h.find("\r\nX-Forwarded-For: 198.51.100.7\r\n"), std::string::npos);
  EXPECT_NE(h.find("\r\nX-Real-IP: 198.51.100.7\r\n"), std::string::npos);
  EXPECT_NE(h.find("\r\nX-Forwarded-Host: api.example.com\r\n"), std::string::npos);
  EXPECT_NE(h.find("\r\nX-Request-Id: rid-1\r\n"), std::string::npos);
  EXPECT_NE(h.find("\r\nX-Gateway-Project: p1\r\n"), std::string::npos);
  EXPECT_NE(h.find("\r\nContent-Length: 5\r\n\r\n"), std::string::npos);
  EXPECT_TRUE(h.ends_with("\r\n\r\n"));
  EXPECT_FALSE(marks.send_chunked);
  EXPECT_EQ(h.substr(marks.host_at, marks.host_end - 2 - marks.host_at), "127.0.0.1:9");
  EXPECT_EQ(h.substr(marks.target_at, 5), "/base");
}

TEST_F(UpstreamHead, TrustedProxyChainsAndConnectionListedFields) {
  fields = {{"X-Forwarded-For", "203.0.113.1"}, {"X-Trace", "t"}, {"X-Keep", "k"}, {"Connection", "X-Trace"}};
  in.peer_trusted = true;
  in.xff = "203.0.113.1";
  in.connection = "X-Trace";
  std::string h = build();
  EXPECT_NE(h.find("\r\nX-Forwarded-For: 203.0.113.1, 198.51.100.7\r\n"), std::string::npos) << h;
  EXPECT_EQ(h.find("X-Trace"), std::string::npos) << "a field the Connection header names is hop-by-hop";
  EXPECT_NE(h.find("\r\nX-Keep: k\r\n"), std::string::npos);
}

TEST_F(UpstreamHead, BodiesWithoutALengthGoChunkedAndExpectIsAnsweredHere) {
  fields = {{"Expect", "100-continue"}, {"X_Odd", "1"}};
  in.has_body = true;
  in.expect_continue = true;
  in.drop_underscores = true;
  std::string h = build();
  EXPECT_TRUE(marks.send_chunked);
  EXPECT_NE(h.find("\r\nTransfer-Encoding: chunked\r\n"), std::string::npos);
  EXPECT_EQ(h.find("Expect"), std::string::npos);
  EXPECT_EQ(h.find("X_Odd"), std::string::npos);
  in.drop_underscores = false;
  EXPECT_NE(build().find("\r\nX_Odd: 1\r\n"), std::string::npos);
}

TEST_F(UpstreamHead, ServiceTokensStayAtTheGateway) {
  fields = {{"Authorization", "Bearer token"}};
  EXPECT_NE(build().find("Authorization: Bearer token"), std::string::npos);  // an API-key caller's own header
  ctx.jwt = true;
  ctx.jti = "jti-9";
  std::string h = build();
  EXPECT_EQ(h.find("Authorization"), std::string::npos);
  EXPECT_NE(h.find("\r\nX-Gateway-JTI: jti-9\r\n"), std::string::npos);
}

}  // namespace
}  // namespace ag::gateway
