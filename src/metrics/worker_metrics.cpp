#include "metrics/worker_metrics.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>

#include "common/time.hpp"

namespace ag::metrics {

namespace {
constexpr std::size_t kPerSlot = 2 * kStatusClasses;
constexpr const char* kClassNames[kStatusClasses] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
constexpr const char* kCounterNames[] = {
    "ag_ratelimit_decisions_total{result=\"allowed\"}",
    "ag_ratelimit_decisions_total{result=\"limited\"}",
    "ag_ratelimit_fallback_total",
    "ag_redis_errors_total",
    "ag_upstream_connect_errors_total",
    "ag_upstream_tls_errors_total",
    "ag_upstream_timeouts_total",
    "ag_upstream_retries_total",
    "ag_upstream_pool_reuse_total",
    "ag_connections_accepted_total",
    "ag_access_log_dropped_total",
    "ag_connections_shed_total",
    "ag_risk_decisions_total{decision=\"allow\"}",
    "ag_risk_decisions_total{decision=\"throttle\"}",
    "ag_risk_decisions_total{decision=\"block\"}",
    "ag_risk_shadowed_total",
    "ag_risk_rules_total{rule=\"velocity\"}",
    "ag_risk_rules_total{rule=\"burst\"}",
    "ag_risk_rules_total{rule=\"drift\"}",
    "ag_risk_rules_total{rule=\"user_agent\"}",
    "ag_risk_rules_total{rule=\"method\"}",
    "ag_risk_rules_total{rule=\"size\"}",
    "ag_risk_rules_total{rule=\"auth_failures\"}",
    "ag_risk_rules_total{rule=\"ip_deny\"}",
    "ag_risk_rules_total{rule=\"country\"}",
};
static_assert(std::size(kCounterNames) == static_cast<std::size_t>(Counter::kCount));

void append(std::string& out, const char* fmt, auto... args) {
  char buf[512];
  int n = std::snprintf(buf, sizeof buf, fmt, args...);
  if (n > 0) out.append(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
}
}  // namespace

void Histogram::observe(double ms) {
  std::size_t i = 0;
  while (i < kLatencyBucketsMs.size() && ms > kLatencyBucketsMs[i]) ++i;
  buckets_[i].store(buckets_[i].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  count_.store(count_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  sum_.store(sum_.load(std::memory_order_relaxed) + ms, std::memory_order_relaxed);
}

void Histogram::add_to(std::vector<std::uint64_t>& buckets, double& sum, std::uint64_t& count) const {
  for (std::size_t i = 0; i < buckets_.size(); ++i) buckets[i] += buckets_[i].load(std::memory_order_relaxed);
  sum += sum_.load(std::memory_order_relaxed);
  count += count_.load(std::memory_order_relaxed);
}

Shard::Shard() {
  // calloc: large zeroed allocations come straight from mmap, so untouched slots cost no RSS.
  requests_ = static_cast<std::uint64_t*>(std::calloc(kMaxProjectSlots * kPerSlot, sizeof(std::uint64_t)));
  if (!requests_) throw std::bad_alloc();
}

Shard::~Shard() { std::free(requests_); }

void Shard::request(std::uint32_t slot, Decision d, int status) {
  if (slot >= kMaxProjectSlots) slot = 0;
  int cls = status >= 100 && status < 600 ? status / 100 : 0;
  std::atomic_ref<std::uint64_t> c(requests_[slot * kPerSlot + static_cast<int>(d) * kStatusClasses + cls]);
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

Registry::Registry(std::size_t shards) {
  for (std::size_t i = 0; i < shards; ++i) shards_.push_back(std::make_unique<Shard>());
}

std::uint64_t Registry::total_requests() const {
  std::uint64_t total = 0;
  for (const auto& s : shards_) {
    std::uint64_t n = 0;  // every finished request is observed once in the latency histogram
    std::vector<std::uint64_t> b(kLatencyBucketsMs.size() + 1, 0);
    double sum = 0;
    s->latency.add_to(b, sum, n);
    total += n;
  }
  return total;
}

std::string Registry::render(const std::vector<std::string>& slot_names) const {
  std::string out;
  out.reserve(4096);
  out += "# HELP ag_requests_total Requests handled, by project, decision and status class.\n";
  out += "# TYPE ag_requests_total counter\n";
  std::size_t nslots = std::min(slot_names.size(), kMaxProjectSlots);
  for (std::size_t slot = 0; slot < nslots; ++slot) {
    for (int d = 0; d < 2; ++d)
      for (std::size_t cls = 0; cls < kStatusClasses; ++cls) {
        std::uint64_t total = 0;
        for (const auto& s : shards_) {
          std::atomic_ref<std::uint64_t> c(s->requests_[slot * kPerSlot + d * kStatusClasses + cls]);
          total += c.load(std::memory_order_relaxed);
        }
        if (total == 0) continue;
        append(out, "ag_requests_total{project=\"%s\",decision=\"%s\",status=\"%s\"} %llu\n",
               slot == 0 ? "" : slot_names[slot].c_str(), d == 0 ? "allow" : "block", kClassNames[cls],
               static_cast<unsigned long long>(total));
      }
  }
  auto hist = [&](const char* name, const char* help, auto member) {
    std::vector<std::uint64_t> b(kLatencyBucketsMs.size() + 1, 0);
    double sum = 0;
    std::uint64_t count = 0;
    for (const auto& s : shards_) (s.get()->*member).add_to(b, sum, count);
    append(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    std::uint64_t cum = 0;
    for (std::size_t i = 0; i < kLatencyBucketsMs.size(); ++i) {
      cum += b[i];
      append(out, "%s_bucket{le=\"%g\"} %llu\n", name, kLatencyBucketsMs[i], static_cast<unsigned long long>(cum));
    }
    cum += b.back();
    append(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.3f\n%s_count %llu\n", name,
           static_cast<unsigned long long>(cum), name, sum, name, static_cast<unsigned long long>(count));
  };
  hist("ag_request_duration_ms", "Time from request head to the end of the response, in ms.", &Shard::latency);
  hist("ag_upstream_duration_ms", "Time from sending upstream to the upstream's response head, in ms.",
       &Shard::upstream_latency);
  for (int c = 0; c < static_cast<int>(Counter::kCount); ++c) {
    std::uint64_t total = 0;
    for (const auto& s : shards_) total += s->counters_[c].load(std::memory_order_relaxed);
    append(out, "%s %llu\n", kCounterNames[c], static_cast<unsigned long long>(total));
  }
  std::int64_t active = 0;
  for (const auto& s : shards_) active += s->active_.load(std::memory_order_relaxed);
  append(out, "# TYPE ag_connections_active gauge\nag_connections_active %lld\n", static_cast<long long>(active));
  std::int64_t loaded = config_loaded_at_ms.load();
  append(out, "# TYPE ag_config_version gauge\nag_config_version %lld\n", static_cast<long long>(config_version.load()));
  append(out, "# TYPE ag_config_age_seconds gauge\nag_config_age_seconds %.3f\n",
         loaded > 0 ? static_cast<double>(now_ms() - loaded) / 1000.0 : -1.0);
  append(out, "# TYPE ag_config_errors_total counter\nag_config_errors_total %llu\n", static_cast<unsigned long long>(config_errors.load()));
  append(out, "# TYPE ag_config_apply_seconds gauge\nag_config_apply_seconds %.6f\n",
         config_apply_us.load() >= 0 ? static_cast<double>(config_apply_us.load()) / 1e6 : -1.0);
  append(out, "ag_config_keys %lld\nag_config_projects %lld\n", static_cast<long long>(config_keys.load()),
         static_cast<long long>(config_projects.load()));
  return out;
}

}  // namespace ag::metrics
