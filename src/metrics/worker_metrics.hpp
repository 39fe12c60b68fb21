#pragma once
// The worker's metrics. Each event-loop thread owns a shard and is its only writer (relaxed
// atomic stores, no read-modify-write contention); /metrics sums the shards when scraped.
// Names are stable and documented in docs/metrics.md.
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ag::metrics {

inline constexpr std::size_t kMaxProjectSlots = 65536;  // slot 0 = no project (unauthenticated)
inline constexpr std::size_t kStatusClasses = 6;        // 0 = other, 1xx..5xx
inline constexpr std::array<double, 15> kLatencyBucketsMs = {0.25, 0.5, 1, 2.5, 5, 10, 25, 50,
                                                             100, 250, 500, 1000, 2500, 5000, 10000};

enum class Decision : std::uint8_t { kAllow = 0, kBlock = 1 };
enum class Counter : std::uint8_t {
  kRateLimitAllowed,
  kRateLimitLimited,
  kRateLimitFallback,
  kRedisErrors,
  kUpstreamConnectErrors,
  kUpstreamTlsErrors,  // of those, failed TLS handshakes (https:// upstreams)
  kUpstreamTimeouts,
  kUpstreamRetries,
  kUpstreamPoolReuse,
  kConnectionsAccepted,
  kLogLinesDropped,
  kConnectionsShed,
  kRiskAllow,
  kRiskThrottle,
  kRiskBlock,
  kRiskShadowed,  // a throttle or block decided in shadow mode (logged, not applied)
  kRiskRuleVelocity,  // one per rule, in RiskRule bit order
  kRiskRuleBurst,
  kRiskRuleDrift,
  kRiskRuleUserAgent,
  kRiskRuleMethod,
  kRiskRuleSize,
  kRiskRuleAuthFailures,
  kRiskRuleIpDeny,
  kRiskRuleCountry,
  kCount
};

class Histogram {
 public:
  void observe(double ms);
  // Adds this histogram's values into `buckets` (size kLatencyBucketsMs.size() + 1), sum, count.
  void add_to(std::vector<std::uint64_t>& buckets, double& sum, std::uint64_t& count) const;

 private:
  std::array<std::atomic<std::uint64_t>, kLatencyBucketsMs.size() + 1> buckets_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<double> sum_{0};
};

class Shard {
 public:
  Shard();
  ~Shard();
  void request(std::uint32_t slot, Decision d, int status);
  void add(Counter c, std::uint64_t n = 1) { bump(counters_[static_cast<int>(c)], n); }
  void set_active_connections(std::int64_t n) { active_.store(n, std::memory_order_relaxed); }

  Histogram latency;
  Histogram upstream_latency;

 private:
  friend class Registry;
  static void bump(std::atomic<std::uint64_t>& a, std::uint64_t n) {
    a.store(a.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  // [slot][decision][class], allocated zeroed and lazily paged in by the kernel.
  std::uint64_t* requests_;
  std::array<std::atomic<std::uint64_t>, static_cast<int>(Counter::kCount)> counters_{};
  std::atomic<std::int64_t> active_{0};
};

class Registry {
 public:
  explicit Registry(std::size_t shards);
  Shard& shard(std::size_t i) { return *shards_[i]; }

  std::atomic<std::int64_t> config_version{-1};
  std::atomic<std::int64_t> config_loaded_at_ms{0};
  std::atomic<std::uint64_t> config_errors{0};
  std::atomic<std::int64_t> config_keys{0};
  std::atomic<std::int64_t> config_projects{0};
  std::atomic<std::int64_t> config_apply_us{-1};

  std::uint64_t total_requests() const;

  // Prometheus text exposition format 0.0.4.
  std::string render(const std::vector<std::string>& slot_names) const;

 private:
  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace ag::metrics
