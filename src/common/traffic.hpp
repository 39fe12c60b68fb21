#pragma once
// Traffic reports (docs/metrics.md, "Traffic rollups"): what a worker tells the control plane
// about each project's requests in each hour, and how a latency percentile is read back from the
// counts. Shared by the worker (gateway/traffic.cpp) and the control plane (control/api/traffic_api.cpp).
#include <array>
#include <cstdint>
#include <optional>

namespace ag::traffic {

// Upper bounds of the latency buckets, in milliseconds; one more bucket counts everything slower.
inline constexpr std::array<double, 15> kLatencyBoundsMs = {0.25, 0.5, 1, 2.5, 5, 10, 25, 50,
                                                            100, 250, 500, 1000, 2500, 5000, 10000};
inline constexpr std::size_t kBuckets = kLatencyBoundsMs.size() + 1;
using Buckets = std::array<std::uint64_t, kBuckets>;

std::size_t bucket_of(double ms);

// The `q` quantile (0 < q < 1) of the latencies counted in `counts`, interpolated linearly inside
// its bucket; nullopt when nothing was counted. The slowest bucket answers with its lower bound.
std::optional<double> percentile(const Buckets& counts, double q);

// One project's hour.
struct Tally {
  std::uint64_t requests = 0;
  std::uint64_t errors = 0;     // answered 5xx (by the upstream or the gateway)
  std::uint64_t throttled = 0;  // refused for rate: rate limit, risk throttle, auth-failure limit
  std::uint64_t blocked = 0;    // refused for the caller: credentials, route, IP list, risk block
  Buckets latency{};

  void add(const Tally& o) {
    requests += o.requests;
    errors += o.errors;
    throttled += o.throttled;
    blocked += o.blocked;
    for (std::size_t i = 0; i < kBuckets; ++i) latency[i] += o.latency[i];
  }
};

inline constexpr std::int64_t kHourMs = 3'600'000;
inline std::int64_t hour_of(std::int64_t ms) { return ms - ms % kHourMs; }

}  // namespace ag::traffic
