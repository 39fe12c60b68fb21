// The log stage's traffic tallies (stages/log/traffic.hpp): how each request is classified, the
// hand-over by hour, and the report's JSON.
#include "gateway/stages/log/traffic.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace ag::gateway::stages {
namespace {

config::Project project(std::string id, std::uint32_t slot) {
  config::Project p;
  p.id = std::move(id);
  p.metrics_slot = slot;
  return p;
}

TEST(TrafficShard, ClassifiesEachRequestOnce) {
  TrafficShard shard;
  auto p = project("p1", 1);
  shard.count(p, 200, Reason::kNone, 3'000'000);          // 3 ms
  shard.count(p, 502, Reason::kUpstreamUnreachable, 1'000'000);
  shard.count(p, 429, Reason::kRateLimited, 100'000);
  shard.count(p, 429, Reason::kRiskThrottled, 100'000);
  shard.count(p, 403, Reason::kRouteForbidden, 100'000);
  shard.count(p, 401, Reason::kTokenRevoked, 100'000);
  shard.count(p, 404, Reason::kNone, 100'000);  // the upstream's own 404: just a request
  TrafficByHour out;
  shard.take(out);
  EXPECT_TRUE(out.empty()) << "nothing is taken before the thread hands it over";
  const std::int64_t t = 10 * traffic::kHourMs + 1234;
  shard.hand_over(t);
  shard.take(out);
  ASSERT_EQ(out.size(), 1u);
  const auto& [key, tally] = *out.begin();
  EXPECT_EQ(key, std::make_pair(std::string("p1"), 10 * traffic::kHourMs));
  EXPECT_EQ(tally.requests, 7u);
  EXPECT_EQ(tally.errors, 1u);
  EXPECT_EQ(tally.throttled, 2u);
  EXPECT_EQ(tally.blocked, 2u);
  std::uint64_t counted = 0;
  for (auto c : tally.latency) counted += c;
  EXPECT_EQ(counted, 7u);
  EXPECT_EQ(tally.latency[traffic::bucket_of(3.0)], 1u);
  // Taken once: a second take finds nothing.
  TrafficByHour again;
  shard.take(again);
  EXPECT_TRUE(again.empty());
}

TEST(TrafficShard, HoursAndProjectsStayApart) {
  TrafficShard shard;
  auto a = project("a", 1), b = project("b", 2);
  shard.count(a, 200, Reason::kNone, 1);
  shard.hand_over(1 * traffic::kHourMs);
  shard.count(a, 200, Reason::kNone, 1);
  shard.count(b, 200, Reason::kNone, 1);
  shard.hand_over(2 * traffic::kHourMs + 5);
  TrafficByHour out;
  shard.take(out);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[std::make_pair(std::string("a"), 1 * traffic::kHourMs)].requests, 1u);
  EXPECT_EQ(out[std::make_pair(std::string("a"), 2 * traffic::kHourMs)].requests, 1u);
  EXPECT_EQ(out[std::make_pair(std::string("b"), 2 * traffic::kHourMs)].requests, 1u);
}

TEST(TrafficShard, ASlotGivenToAnotherProjectKeepsTheCountsApart) {
  TrafficShard shard;
  auto old_project = project("old", 3);
  shard.count(old_project, 200, Reason::kNone, 1);
  auto new_project = project("new", 3);  // a later snapshot reuses slot 3
  shard.count(new_project, 200, Reason::kNone, 1);
  shard.count(new_project, 200, Reason::kNone, 1);
  shard.hand_over(traffic::kHourMs);
  TrafficByHour out;
  shard.take(out);
  std::uint64_t old_n = 0, new_n = 0;
  for (const auto& [k, t] : out) (k.first == "old" ? old_n : new_n) += t.requests;
  EXPECT_EQ(old_n, 1u);
  EXPECT_EQ(new_n, 2u);
}

TEST(TrafficShard, BatchJsonIsWhatTheControlPlaneReads) {
  TrafficByHour hours;
  auto& t = hours[{"p\"1", 0}];
  t.requests = 2;
  t.errors = 1;
  t.latency[0] = 2;
  auto j = nlohmann::json::parse(traffic_batch_json("w-1", "b-7", hours));
  EXPECT_EQ(j["worker_id"], "w-1");
  EXPECT_EQ(j["batch_id"], "b-7");
  ASSERT_EQ(j["hours"].size(), 1u);
  EXPECT_EQ(j["hours"][0]["project_id"], "p\"1");
  EXPECT_EQ(j["hours"][0]["hour"], "1970-01-01T00:00:00Z");
  EXPECT_EQ(j["hours"][0]["requests"], 2);
  EXPECT_EQ(j["hours"][0]["errors"], 1);
  EXPECT_EQ(j["hours"][0]["latency_buckets"].size(), traffic::kBuckets);
}

}  // namespace
}  // namespace ag::gateway::stages
