#include "ratelimit/gcra.hpp"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "ratelimit/local_store.hpp"

namespace ag::ratelimit {
namespace {

constexpr std::int64_t kSec = 1'000'000'000;

TEST(Gcra, BurstThenSteadyRate) {
  Policy p{60, 2};  // one a second, 3 at once
  std::int64_t tat = 0, now = 1000 * kSec;
  for (int i = 0; i < 3; ++i) {
    auto r = gcra(p, tat, now);
    ASSERT_TRUE(r.decision.allowed) << i;
    EXPECT_EQ(r.decision.remaining, 2 - i);
    tat = r.new_tat;
  }
  auto denied = gcra(p, tat, now);
  EXPECT_FALSE(denied.decision.allowed);
  EXPECT_EQ(denied.decision.retry_after_ns, kSec);
  EXPECT_EQ(denied.new_tat, tat);  // a denied request does not consume
  auto later = gcra(p, tat, now + kSec);
  EXPECT_TRUE(later.decision.allowed);
  EXPECT_EQ(later.decision.remaining, 0);
}

TEST(Gcra, FullBucketAfterIdle) {
  Policy p{600, 0};  // 10/s, no burst
  auto a = gcra(p, 0, 5 * kSec);
  EXPECT_TRUE(a.decision.allowed);
  EXPECT_FALSE(gcra(p, a.new_tat, 5 * kSec + kSec / 20).decision.allowed);
  EXPECT_TRUE(gcra(p, a.new_tat, 5 * kSec + kSec / 10).decision.allowed);
}

TEST(LocalStore, KeysAreIndependentAndConcurrentUpdatesAreExact) {
  LocalStore store(1024);
  Policy p{60, 99};  // 100 at once
  EXPECT_TRUE(store.check(42, p, kSec).allowed);
  EXPECT_TRUE(store.check(43, p, kSec).allowed);
  // Two threads race on one key at the same instant: exactly 100 admitted in total.
  std::atomic<int> admitted{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 2; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < 200; ++i)
        if (store.check(7, p, 10 * kSec).allowed) admitted.fetch_add(1);
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(admitted.load(), 100);
}

TEST(LocalStore, FullTableEvictsTheSoonestFreeSlot) {
  LocalStore store(16);
  Policy p{1, 0};  // one a minute
  for (std::uint64_t k = 1; k <= 64; ++k) EXPECT_TRUE(store.check(k, p, kSec).allowed);
  EXPECT_EQ(store.slots(), 16u);
  // Memory stays fixed; a key still in its slot keeps being limited.
  EXPECT_FALSE(store.check(64, p, kSec).allowed);
}

}  // namespace
}  // namespace ag::ratelimit
