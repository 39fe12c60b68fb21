#include "common/traffic.hpp"

#include <algorithm>

namespace ag::traffic {

std::size_t bucket_of(double ms) {
  return static_cast<std::size_t>(std::lower_bound(kLatencyBoundsMs.begin(), kLatencyBoundsMs.end(), ms) -
                                  kLatencyBoundsMs.begin());
}

std::optional<double> percentile(const Buckets& counts, double q) {
  std::uint64_t total = 0;
  for (auto c : counts) total += c;
  if (total == 0) return std::nullopt;
  const double rank = q * static_cast<double>(total);
  std::uint64_t below = 0;
  for (std::size_t i = 0; i < kBuckets; ++i) {
    if (counts[i] == 0) continue;
    if (static_cast<double>(below + counts[i]) >= rank) {
      const double lo = i == 0 ? 0.0 : kLatencyBoundsMs[i - 1];
      if (i == kBuckets - 1) return lo;
      const double hi = kLatencyBoundsMs[i];
      const double within = (rank - static_cast<double>(below)) / static_cast<double>(counts[i]);
      return lo + (hi - lo) * std::clamp(within, 0.0, 1.0);
    }
    below += counts[i];
  }
  return kLatencyBoundsMs.back();
}

}  // namespace ag::traffic
