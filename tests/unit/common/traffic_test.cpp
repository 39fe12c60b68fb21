#include "common/traffic.hpp"

#include <gtest/gtest.h>

namespace ag::traffic {
namespace {

TEST(Traffic, BucketsByUpperBound) {
  EXPECT_EQ(bucket_of(0.0), 0u);
  EXPECT_EQ(bucket_of(0.25), 0u);  // bounds are inclusive
  EXPECT_EQ(bucket_of(0.26), 1u);
  EXPECT_EQ(bucket_of(7.0), 5u);    // (5, 10]
  EXPECT_EQ(bucket_of(10000.0), 14u);
  EXPECT_EQ(bucket_of(10000.1), 15u);  // slower than the last bound
  EXPECT_EQ(bucket_of(1e9), kBuckets - 1);
}

TEST(Traffic, PercentileInterpolatesInsideTheBucket) {
  Buckets b{};
  EXPECT_FALSE(percentile(b, 0.5).has_value());
  b[5] = 100;  // all in (5, 10] ms
  EXPECT_DOUBLE_EQ(*percentile(b, 0.5), 7.5);
  EXPECT_DOUBLE_EQ(*percentile(b, 0.99), 9.95);
  // 90 fast (≤ 0.25 ms), 10 slow in (100, 250]: the median is fast, p99 in the slow bucket.
  Buckets mixed{};
  mixed[0] = 90;
  mixed[9] = 10;
  EXPECT_LE(*percentile(mixed, 0.5), 0.25);
  EXPECT_GT(*percentile(mixed, 0.99), 100.0);
  EXPECT_LE(*percentile(mixed, 0.99), 250.0);
  // The slowest bucket answers with its lower bound (there is no upper one).
  Buckets slow{};
  slow[kBuckets - 1] = 3;
  EXPECT_DOUBLE_EQ(*percentile(slow, 0.5), 10000.0);
}

TEST(Traffic, TallyAddsEveryField) {
  Tally a, b;
  a.requests = 3;
  a.errors = 1;
  a.latency[2] = 3;
  b.requests = 2;
  b.throttled = 1;
  b.blocked = 1;
  b.latency[2] = 1;
  b.latency[7] = 1;
  a.add(b);
  EXPECT_EQ(a.requests, 5u);
  EXPECT_EQ(a.errors, 1u);
  EXPECT_EQ(a.throttled, 1u);
  EXPECT_EQ(a.blocked, 1u);
  EXPECT_EQ(a.latency[2], 4u);
  EXPECT_EQ(a.latency[7], 1u);
  EXPECT_EQ(hour_of(3 * kHourMs + 59 * 60 * 1000 + 999), 3 * kHourMs);
}

}  // namespace
}  // namespace ag::traffic
