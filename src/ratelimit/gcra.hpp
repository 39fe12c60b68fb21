#pragma once
// GCRA (generic cell rate algorithm) — the rate-limit decision as a pure function.
//
// A policy of R requests per minute with burst B admits B+1 requests at once and then one every
// T = 60 s / R. State is one number per key: the theoretical arrival time (TAT) of the next
// request. A request at `now` is admitted when max(TAT, now) + T - now <= (B + 1) * T, and
// then TAT becomes max(TAT, now) + T.
#include <algorithm>
#include <cstdint>

namespace ag::ratelimit {

struct Policy {
  std::int64_t requests_per_minute = 60;
  std::int64_t burst = 20;

  std::int64_t interval_ns() const { return 60'000'000'000LL / std::max<std::int64_t>(requests_per_minute, 1); }
  std::int64_t tolerance_ns() const { return interval_ns() * (burst + 1); }
  std::int64_t limit() const { return burst + 1; }
};

struct Decision {
  bool allowed = true;
  std::int64_t remaining = 0;       // requests still admissible right now
  std::int64_t retry_after_ns = 0;  // when denied: wait this long
  std::int64_t reset_ns = 0;        // until the bucket is full again
  bool fallback = false;            // decided locally because the shared store failed
};

struct GcraResult {
  Decision decision;
  std::int64_t new_tat = 0;  // store this when allowed
};

inline GcraResult gcra(const Policy& p, std::int64_t tat, std::int64_t now) {
  const std::int64_t t = p.interval_ns();
  const std::int64_t tau = p.tolerance_ns();
  const std::int64_t base = std::max(tat, now);
  const std::int64_t next = base + t;
  GcraResult r;
  if (next - now > tau) {
    r.decision.allowed = false;
    r.decision.remaining = 0;
    r.decision.retry_after_ns = next - now - tau;
    r.decision.reset_ns = base - now;
    r.new_tat = tat;
    return r;
  }
  r.new_tat = next;
  r.decision.allowed = true;
  r.decision.remaining = (tau - (next - now)) / t;
  r.decision.reset_ns = next - now;
  return r;
}

}  // namespace ag::ratelimit
