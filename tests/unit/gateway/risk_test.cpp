// The risk engine with an injected clock: every scenario is deterministic.
#include <gtest/gtest.h>

#include <string>

#include "gateway/stages/risk/risk.hpp"

namespace ag::gateway {
namespace {

constexpr std::int64_t kSec = 1'000'000'000;

config::RiskPolicy enforce() {
  config::RiskPolicy p;
  p.shadow = false;
  p.velocity_per_min = 120;
  p.burst_per_sec = 10;
  p.drift_endpoints = 10;
  return p;
}

RiskInput request(std::string_view ip, std::string_view endpoint, std::uint64_t caller = 42) {
  RiskInput in;
  in.caller = caller;
  in.ip = ip;
  in.endpoint = endpoint;
  in.method = "GET";
  in.user_agent = "client/1.0";
  in.user_agent_present = true;
  return in;
}

TEST(RiskEngine, SteadyNormalTrafficScoresZero) {
  RiskEngine engine(1024);
  auto p = enforce();
  const char* endpoints[] = {"/orders", "/orders/:id", "/users/:id", "/cart", "/search"};
  std::int64_t now = 1000 * kSec;
  // One request a second for ten minutes over five endpoints: under every limit.
  for (int i = 0; i < 600; ++i, now += kSec) {
    auto r = engine.evaluate(p, request("10.0.0.1", endpoints[i % 5]), now);
    ASSERT_EQ(r.score, 0.0) << "request " << i;
    ASSERT_EQ(r.decision, RiskDecision::kAllow);
    ASSERT_EQ(r.rules, 0u);
  }
}

TEST(RiskEngine, BurstAndVelocityRaiseTheScoreUntilBlocked) {
  RiskEngine engine(1024);
  auto p = enforce();
  std::int64_t now = 1000 * kSec;
  RiskResult last;
  // 40 requests in one second from one caller and IP: burst limit 10 -> burst signal saturates.
  for (int i = 0; i < 40; ++i) last = engine.evaluate(p, request("10.0.0.2", "/orders"), now + i * (kSec / 50));
  EXPECT_TRUE(last.rules & kRuleBurst);
  EXPECT_DOUBLE_EQ(last.score, p.w_burst);  // burst alone: 0.3
  EXPECT_EQ(last.decision, RiskDecision::kAllow);
  // Keep going for a minute at 40/s: velocity (120/min) saturates too -> 0.4 + 0.3 = 0.7 -> throttle.
  for (int s = 1; s < 60; ++s)
    for (int i = 0; i < 40; ++i) last = engine.evaluate(p, request("10.0.0.2", "/orders"), now + s * kSec + i * (kSec / 50));
  EXPECT_TRUE(last.rules & kRuleVelocity);
  EXPECT_NEAR(last.score, 0.7, 1e-9);
  EXPECT_EQ(last.decision, RiskDecision::kThrottle);
  // Another caller on the same IP is unaffected.
  auto other = engine.evaluate(p, request("10.0.0.2", "/orders", 7), now + 60 * kSec);
  EXPECT_EQ(other.score, 0.0);
}

TEST(RiskEngine, EndpointScanningRaisesTheScore) {
  RiskEngine engine(1024);
  auto p = enforce();
  std::int64_t now = 1000 * kSec;
  RiskResult r;
  for (int i = 0; i < 5; ++i) r = engine.evaluate(p, request("10.0.0.3", "/a" + std::to_string(i)), now + i * kSec);
  EXPECT_EQ(r.score, 0.0) << "5 distinct endpoints are under the limit of 10";
  for (int i = 5; i < 40; ++i) r = engine.evaluate(p, request("10.0.0.3", "/a" + std::to_string(i)), now + i * kSec);
  EXPECT_TRUE(r.rules & kRuleDrift);
  EXPECT_GT(r.score, 0.2);
  // Two quiet minutes later the sketch has rolled over: back to zero.
  r = engine.evaluate(p, request("10.0.0.3", "/a0"), now + 200 * kSec);
  EXPECT_EQ(r.rules & kRuleDrift, 0u);
}

TEST(RiskEngine, UserAgentMethodAndSizeSignals) {
  RiskEngine engine(1024);
  auto p = enforce();
  p.allowed_methods = {"GET", "POST"};
  p.max_request_bytes = 1000;
  p.w_user_agent = 0.2;
  p.w_method = 0.6;
  p.w_size = 0.3;
  std::int64_t now = 1000 * kSec;
  auto in = request("10.0.0.4", "/x");
  in.user_agent_present = false;
  auto r = engine.evaluate(p, in, now);
  EXPECT_EQ(r.rules, static_cast<std::uint32_t>(kRuleUserAgent));
  EXPECT_DOUBLE_EQ(r.score, 0.2);
  in = request("10.0.0.4", "/x");
  in.user_agent = "bad\x01agent";
  EXPECT_EQ(engine.evaluate(p, in, now + kSec).rules, static_cast<std::uint32_t>(kRuleUserAgent));
  in = request("10.0.0.4", "/x");
  in.method = "DELETE";
  in.content_length = 5000;
  r = engine.evaluate(p, in, now + 2 * kSec);
  EXPECT_EQ(r.rules, static_cast<std::uint32_t>(kRuleMethod | kRuleSize));
  EXPECT_NEAR(r.score, 0.9, 1e-9);
  EXPECT_EQ(r.decision, RiskDecision::kBlock);
}

TEST(RiskEngine, FailedAuthenticationsBlockAnIpForTheWindow) {
  RiskEngine engine(1024, /*auth_failure_limit=*/5, /*auth_window_sec=*/60);
  std::int64_t now = 1000 * kSec;
  for (int i = 0; i < 4; ++i) {
    EXPECT_FALSE(engine.auth_blocked("203.0.113.9", now));
    engine.auth_failed("203.0.113.9", now);
    now += kSec;
  }
  EXPECT_FALSE(engine.auth_blocked("203.0.113.9", now));
  engine.auth_failed("203.0.113.9", now);
  EXPECT_TRUE(engine.auth_blocked("203.0.113.9", now)) << "blocked after the 5th failure";
  EXPECT_FALSE(engine.auth_blocked("203.0.113.10", now)) << "another address is not";
  EXPECT_TRUE(engine.auth_blocked("203.0.113.9", now + 10 * kSec)) << "still inside the window";
  EXPECT_FALSE(engine.auth_blocked("203.0.113.9", now + 150 * kSec)) << "released after the window";
}

TEST(RiskEngine, MemoryIsFixedUnderAFloodOfDistinctAddresses) {
  RiskEngine engine(1u << 12);
  auto p = enforce();
  const std::size_t before = engine.memory_bytes();
  std::int64_t now = 1000 * kSec;
  std::string ip;
  for (std::uint32_t i = 0; i < 200000; ++i) {
    ip = std::to_string(i >> 16 & 255) + "." + std::to_string(i >> 8 & 255) + "." + std::to_string(i & 255) + ".1";
    engine.evaluate(p, request(ip, "/x", i), now + i);
    engine.auth_failed(ip, now + i);
  }
  EXPECT_EQ(engine.memory_bytes(), before);
  // Evictions forget old entries; a fresh caller still scores from zero.
  EXPECT_EQ(engine.evaluate(p, request("198.51.100.1", "/x", 1), now + kSec).score, 0.0);
}

}  // namespace
}  // namespace ag::gateway
