// The worker's stages without sockets: each is built from its const part and per-thread
// services, called with a Context and a RequestView, and answers or lets the request continue.
#include <gtest/gtest.h>

#include <string>

#include "common/api_key.hpp"
#include "common/crypto.hpp"
#include "config/snapshot.hpp"
#include "gateway/pipeline/context.hpp"
#include "gateway/stages/accept/accept.hpp"
#include "gateway/stages/identify/identify.hpp"
#include "gateway/stages/rate_limit/rate_limit.hpp"
#include "gateway/stages/risk/risk.hpp"
#include "gateway/stages/risk/risk_stage.hpp"
#include "gateway/stages/route/route.hpp"
#include "metrics/worker_metrics.hpp"
#include "ratelimit/local_store.hpp"
#include "config/context.hpp"

// The context this file builds snapshots with (config/context.hpp).
static ag::config::BuildContext test_ctx;

namespace ag::gateway {
namespace {

struct Stages : ::testing::Test {
  void SetUp() override {
    crypto::init();
    key = generate_api_key();
    std::string doc = R"({"version":1,"projects":[
      {"id":"p1","upstream_base_url":"http://127.0.0.1:9/x","max_body_bytes":10,
       "rate_limit":{"requests_per_minute":60,"burst":1},
       "risk":{"enabled":false,"ip_deny":["198.51.100.0/24"]},
       "keys":[{"id":"k1","hash":")" + key.hash_hex + R"(","expires_at":null}]},
      {"id":"p2","upstream_base_url":null,"keys":[{"id":"k2","hash":")" + nowhere.hash_hex + R"(","expires_at":null}]}]})";
    auto built = config::build_snapshot(doc, test_ctx);
    ASSERT_TRUE(built.snapshot) << built.error;
    snapshot = built.snapshot;
    req.method = "GET";
    req.target = "/a/./b?q=1";
    req.path = "/a/./b";
    req.peer_ip = "203.0.113.7";
    req.path_buf = &path_buf;
    req.target_buf = &target_buf;
  }
  LocalReply accept(Context& ctx) {
    stages::Accept a(accept_config, snapshot, risk, shard, ids);
    return a.run(ctx, req);
  }
  GeneratedKey key, nowhere = generate_api_key();
  std::shared_ptr<const config::Snapshot> snapshot;
  stages::Accept::Config accept_config;
  RiskEngine risk{1024, 2, 60};  // two failed authentications block an address
  metrics::Registry registry{1};
  metrics::Shard& shard = registry.shard(0);
  RequestIds ids;
  RequestView req;
  std::string path_buf, target_buf;
  TokenCache tokens;
  TokenCheck token_check;
  ratelimit::LocalStore limiter{1024};
};

TEST_F(Stages, AcceptPinsTheSnapshotNamesTheRequestAndNormalisesThePath) {
  Context ctx;
  EXPECT_EQ(accept(ctx).status, 0);
  EXPECT_EQ(ctx.snapshot, snapshot);
  EXPECT_FALSE(ctx.request_id.empty());
  EXPECT_EQ(ctx.client_ip, "203.0.113.7");
  EXPECT_EQ(req.target, "/a/b?q=1");
  EXPECT_EQ(req.path, "/a/b");
  EXPECT_EQ(ctx.request_target, "/a/b?q=1");
  req.request_id = "client-id-1";
  Context again;
  EXPECT_EQ(accept(again).status, 0);
  EXPECT_EQ(again.request_id, "client-id-1");
}

TEST_F(Stages, AcceptAnswersFramingReadinessTargetAndIpLists) {
  Context ctx;
  req.framing = {400, Reason::kBadRequest, "Conflicting framing", true};
  EXPECT_EQ(accept(ctx).detail, "Conflicting framing");  // the reader's verdict comes first
  req.framing = {};
  std::shared_ptr<const config::Snapshot> none;
  stages::Accept not_ready(accept_config, none, risk, shard, ids);
  EXPECT_EQ(not_ready.run(ctx, req).reason, Reason::kNotReady);
  req.target = req.path = "*";
  EXPECT_EQ(accept(ctx).status, 400);
  req.target = req.path = "/../x";
  EXPECT_EQ(accept(ctx).status, 400);
  req.target = req.path = "/x";
  accept_config.ip_deny = parse_cidrs("203.0.113.0/24");
  auto denied = accept(ctx);
  EXPECT_EQ(denied.status, 403);
  EXPECT_EQ(denied.reason, Reason::kIpDenied);
  accept_config.ip_deny.clear();
  risk.auth_failed("203.0.113.7", 0);
  risk.auth_failed("203.0.113.7", 0);
  EXPECT_EQ(accept(ctx).reason, Reason::kAuthFailures);
}

TEST_F(Stages, IdentifyFindsTheKeyAndCountsFailures) {
  stages::Identify identify(token_check, tokens, risk, nullptr);
  Context ctx;
  ASSERT_EQ(accept(ctx).status, 0);
  EXPECT_EQ(identify.run(ctx, req).reason, Reason::kKeyMissing);
  req.api_key = key.key;
  req.has_api_key = true;
  EXPECT_EQ(identify.run(ctx, req).status, 0);
  EXPECT_EQ(ctx.project->id, "p1");
  EXPECT_EQ(ctx.policy.burst, 1);
  Context bad;
  ASSERT_EQ(accept(bad).status, 0);
  const std::string unknown = generate_api_key().key;  // well-formed, not in the snapshot
  req.api_key = unknown;
  EXPECT_EQ(identify.run(bad, req).reason, Reason::kKeyInvalid);
  EXPECT_FALSE(risk.auth_blocked("203.0.113.7", 0));
  EXPECT_EQ(identify.run(bad, req).reason, Reason::kKeyInvalid);
  EXPECT_TRUE(risk.auth_blocked("203.0.113.7", 0)) << "each invalid key counts against the address";
  Context lost;
  req.peer_ip = "192.0.2.1";
  ASSERT_EQ(accept(lost).status, 0);
  req.api_key = nowhere.key;
  EXPECT_EQ(identify.run(lost, req).reason, Reason::kNoRoute);  // p2 has no default upstream
}

TEST_F(Stages, RiskAppliesTheProjectsIpList) {
  stages::Identify identify(token_check, tokens, risk, nullptr);
  stages::Risk stage(risk, nullptr, limiter, shard);
  req.api_key = key.key;
  req.has_api_key = true;
  Context ok;
  ASSERT_EQ(accept(ok).status, 0);
  ASSERT_EQ(identify.run(ok, req).status, 0);
  EXPECT_EQ(stage.run(ok, req).status, 0);
  req.peer_ip = "198.51.100.20";
  Context listed;
  ASSERT_EQ(accept(listed).status, 0);
  ASSERT_EQ(identify.run(listed, req).status, 0);
  auto r = stage.run(listed, req);
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.detail, "Forbidden by IP policy");
}

TEST_F(Stages, RateLimitAnswers429PastTheBurst) {
  stages::Identify identify(token_check, tokens, risk, nullptr);
  stages::RateLimit stage(limiter, nullptr, shard);
  EXPECT_FALSE(stage.shared());
  req.api_key = key.key;
  req.has_api_key = true;
  int limited = 0;
  for (int i = 0; i < 4; ++i) {
    Context ctx;
    ASSERT_EQ(accept(ctx).status, 0);
    ASSERT_EQ(identify.run(ctx, req).status, 0);
    auto r = stage.run(ctx);
    EXPECT_TRUE(ctx.limit_checked);
    if (r.status) {
      EXPECT_EQ(r.reason, Reason::kRateLimited);
      EXPECT_FALSE(ctx.limit.allowed);
      ++limited;
    }
  }
  EXPECT_EQ(limited, 2);  // burst 1: two requests pass at once, the rest wait a second each
}

TEST_F(Stages, RouteRefusesADeclaredBodyOverTheProjectsLimit) {
  stages::Identify identify(token_check, tokens, risk, nullptr);
  stages::Route route;
  req.api_key = key.key;
  req.has_api_key = true;
  Context ctx;
  ASSERT_EQ(accept(ctx).status, 0);
  ASSERT_EQ(identify.run(ctx, req).status, 0);
  req.has_body = true;
  req.content_length = 10;
  EXPECT_EQ(route.run(ctx, req).status, 0);
  req.content_length = 11;
  EXPECT_EQ(route.run(ctx, req).reason, Reason::kBodyTooLarge);
}

}  // namespace
}  // namespace ag::gateway
