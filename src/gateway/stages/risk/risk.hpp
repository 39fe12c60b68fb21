#pragma once
// The risk engine (docs/risk.md): per-request signals scored against the project's RiskPolicy,
// giving ALLOW / THROTTLE / BLOCK with the rules that fired; plus failed-authentication counting
// per client IP, checked before a key is known.
//
// State lives in fixed-size tables shared by the worker's threads (relaxed atomics, no locks):
// each slot holds one (caller, IP) or IP, identified by a 64-bit tag, and a newcomer that hashes
// to an occupied slot takes it over. Memory is the same whatever the traffic: a flood from a
// million random addresses evicts entries instead of growing anything. Updates from two threads
// to one slot can race; the counts are estimates, which is all a score needs.
#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "config/snapshot.hpp"

namespace ag::gateway {

enum class RiskDecision : std::uint8_t { kAllow, kThrottle, kBlock };
std::string_view risk_decision_name(RiskDecision d);

// Rules, as bits of RiskResult::rules.
enum RiskRule : std::uint32_t {
  kRuleVelocity = 1u << 0,
  kRuleBurst = 1u << 1,
  kRuleDrift = 1u << 2,
  kRuleUserAgent = 1u << 3,
  kRuleMethod = 1u << 4,
  kRuleSize = 1u << 5,
  kRuleAuthFailures = 1u << 6,
  kRuleIpDeny = 1u << 7,
  kRuleCountry = 1u << 8,
};
inline constexpr std::size_t kRiskRuleCount = 9;
std::string_view risk_rule_name(std::size_t bit_index);

struct RiskInput {
  std::uint64_t caller = 0;        // the key's or token's tag
  std::string_view ip;
  std::string_view endpoint;       // normalised path (ids collapsed to :id)
  std::string_view method;
  std::string_view user_agent;
  bool user_agent_present = false;
  std::int64_t content_length = -1;  // -1: unknown (chunked or none)
};

struct RiskResult {
  double score = 0;
  RiskDecision decision = RiskDecision::kAllow;
  std::uint32_t rules = 0;
};

class RiskEngine {
 public:
  // `slots` per table (rounded up to a power of two).
  explicit RiskEngine(std::size_t slots = 1u << 16, std::int64_t auth_failure_limit = 50,
                      std::int64_t auth_window_sec = 60);

  // Scores one request (and counts it). Pure apart from the tables; `now_ns` is any monotonic clock.
  RiskResult evaluate(const config::RiskPolicy& policy, const RiskInput& in, std::int64_t now_ns);

  // Failed authentications per client IP: after `auth_failure_limit` in the window the IP is
  // refused (429) until the count falls below the limit again (sliding window).
  bool auth_blocked(std::string_view ip, std::int64_t now_ns) const;
  void auth_failed(std::string_view ip, std::int64_t now_ns);

  std::size_t memory_bytes() const;

 private:
  // Slots are plain integers accessed through std::atomic_ref: the tables are calloc'd, so pages
  // no caller has touched are never faulted in (an idle worker does not carry 6.8 MB of zeros).
  template <class T>
  struct Window {  // a sliding window: the slot's owner, the window number, this and the last value
    std::uint64_t tag;
    std::int64_t window;
    T cur;
    T prev;
  };
  using Counter = Window<std::uint32_t>;  // requests per window
  using Spread = Window<std::uint64_t>;   // distinct endpoints: a 64-bit linear-counting sketch
  struct FreeDeleter {
    void operator()(void* p) const noexcept;
  };
  template <class W>
  static void roll(W& c, std::uint64_t tag, std::int64_t w);
  static double bump(Counter& c, std::uint64_t tag, std::int64_t now_ns, std::int64_t window_ns, std::uint32_t add);
  static double peek(const Counter& c, std::uint64_t tag, std::int64_t now_ns, std::int64_t window_ns);
  static double spread(Spread& s, std::uint64_t tag, std::uint64_t item, std::int64_t now_ns, std::int64_t window_ns);

  std::size_t mask_;
  std::unique_ptr<Counter[], FreeDeleter> velocity_, burst_, auth_;
  std::unique_ptr<Spread[], FreeDeleter> drift_;
  std::int64_t auth_limit_;
  std::int64_t auth_window_ns_;
};

}  // namespace ag::gateway
