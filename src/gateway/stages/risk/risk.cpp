#include "gateway/stages/risk/risk.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <new>

namespace ag::gateway {

namespace {

constexpr std::int64_t kSecond = 1'000'000'000;
constexpr std::int64_t kMinute = 60 * kSecond;

std::uint64_t mix(std::uint64_t x) {  // splitmix64 finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x | 1;  // 0 marks an empty slot
}

std::uint64_t hash_sv(std::string_view s) { return std::hash<std::string_view>{}(s); }

// 0 at or below the limit, rising linearly to 1 at twice the limit.
double over(double value, double limit) {
  if (limit <= 0 || value <= limit) return 0;
  return std::min(1.0, (value - limit) / limit);
}

template <class T>
T load(const T& v) {
  return std::atomic_ref<T>(const_cast<T&>(v)).load(std::memory_order_relaxed);
}
template <class T>
void store(T& v, T x) {
  std::atomic_ref<T>(v).store(x, std::memory_order_relaxed);
}

template <class T>
T* zeroed(std::size_t n) {  // calloc: large blocks come from fresh (zero, unfaulted) pages
  void* p = std::calloc(n, sizeof(T));
  if (p == nullptr) throw std::bad_alloc();
  return static_cast<T*>(p);
}

bool user_agent_malformed(std::string_view ua) {
  if (ua.empty() || ua.size() > 512) return true;
  for (unsigned char c : ua)
    if (c < 0x20 || c == 0x7f) return true;
  return false;
}

}  // namespace

std::string_view risk_decision_name(RiskDecision d) {
  switch (d) {
    case RiskDecision::kAllow: return "allow";
    case RiskDecision::kThrottle: return "throttle";
    case RiskDecision::kBlock: return "block";
  }
  return "allow";
}

std::string_view risk_rule_name(std::size_t i) {
  static constexpr std::string_view kNames[kRiskRuleCount] = {"velocity", "burst",  "drift",         "user_agent",
                                                               "method",   "size",   "auth_failures", "ip_deny",
                                                               "country"};
  return i < kRiskRuleCount ? kNames[i] : "";
}

RiskEngine::RiskEngine(std::size_t slots, std::int64_t auth_failure_limit, std::int64_t auth_window_sec)
    : mask_(std::bit_ceil(std::max<std::size_t>(slots, 16)) - 1),
      velocity_(zeroed<Counter>(mask_ + 1)),
      burst_(zeroed<Counter>(mask_ + 1)),
      auth_(zeroed<Counter>(mask_ + 1)),
      drift_(zeroed<Spread>(mask_ + 1)),
      auth_limit_(auth_failure_limit),
      auth_window_ns_(auth_window_sec * kSecond) {}

void RiskEngine::FreeDeleter::operator()(void* p) const noexcept { std::free(p); }

std::size_t RiskEngine::memory_bytes() const { return (mask_ + 1) * (3 * sizeof(Counter) + sizeof(Spread)); }

// Brings a slot to window `w`: a newcomer takes the slot over; the previous window's value is kept
// when it is the one just before. Racing threads may lose a count, never corrupt a slot.
template <class W>
void RiskEngine::roll(W& c, std::uint64_t tag, std::int64_t w) {
  using T = decltype(c.cur);
  if (load(c.tag) != tag) {
    store(c.tag, tag);
    store(c.window, w);
    store(c.cur, T{0});
    store(c.prev, T{0});
  }
  std::int64_t cw = load(c.window);
  if (cw != w) {
    store(c.prev, cw == w - 1 ? load(c.cur) : T{0});
    store(c.cur, T{0});
    store(c.window, w);
  }
}

// The estimate over the last window: this window's count plus the previous window's, weighted by
// how much of it still overlaps (the usual sliding-window approximation).
double RiskEngine::bump(Counter& c, std::uint64_t tag, std::int64_t now_ns, std::int64_t window_ns, std::uint32_t add) {
  const std::int64_t w = now_ns / window_ns;
  roll(c, tag, w);
  std::uint32_t cur = std::atomic_ref<std::uint32_t>(c.cur).fetch_add(add, std::memory_order_relaxed) + add;
  double elapsed = static_cast<double>(now_ns - w * window_ns) / static_cast<double>(window_ns);
  return cur + load(c.prev) * (1.0 - elapsed);
}

double RiskEngine::peek(const Counter& c, std::uint64_t tag, std::int64_t now_ns, std::int64_t window_ns) {
  if (load(c.tag) != tag) return 0;
  const std::int64_t w = now_ns / window_ns;
  std::int64_t cw = load(c.window);
  double cur = 0, prev = 0;
  if (cw == w) {
    cur = load(c.cur);
    prev = load(c.prev);
  } else if (cw == w - 1) {
    prev = load(c.cur);
  }
  double elapsed = static_cast<double>(now_ns - w * window_ns) / static_cast<double>(window_ns);
  return cur + prev * (1.0 - elapsed);
}

// Distinct items seen over the last two windows, by linear counting on a 64-bit sketch.
double RiskEngine::spread(Spread& s, std::uint64_t tag, std::uint64_t item, std::int64_t now_ns, std::int64_t window_ns) {
  roll(s, tag, now_ns / window_ns);
  std::uint64_t bit = 1ull << (mix(item) >> 58);
  std::uint64_t bits = std::atomic_ref<std::uint64_t>(s.cur).fetch_or(bit, std::memory_order_relaxed) | bit | load(s.prev);
  int set = std::popcount(bits);
  if (set >= 64) return 64.0 * std::log(64.0);  // saturated: "very many"
  return -64.0 * std::log(1.0 - set / 64.0);
}

RiskResult RiskEngine::evaluate(const config::RiskPolicy& p, const RiskInput& in, std::int64_t now_ns) {
  RiskResult r;
  const std::uint64_t tag = mix(in.caller ^ (hash_sv(in.ip) * 0x9e3779b97f4a7c15ull));
  const std::size_t slot = tag & mask_;
  double score = 0;
  auto signal = [&](double s, double weight, RiskRule rule) {
    if (s <= 0 || weight <= 0) return;
    score += s * weight;
    r.rules |= rule;
  };
  signal(over(bump(velocity_[slot], tag, now_ns, kMinute, 1), static_cast<double>(p.velocity_per_min)), p.w_velocity,
         kRuleVelocity);
  signal(over(bump(burst_[slot], tag, now_ns, kSecond, 1), static_cast<double>(p.burst_per_sec)), p.w_burst, kRuleBurst);
  signal(over(spread(drift_[slot], tag, hash_sv(in.endpoint), now_ns, kMinute), static_cast<double>(p.drift_endpoints)),
         p.w_drift, kRuleDrift);
  if (!in.user_agent_present || user_agent_malformed(in.user_agent)) signal(1, p.w_user_agent, kRuleUserAgent);
  if (!p.allowed_methods.empty() &&
      std::find(p.allowed_methods.begin(), p.allowed_methods.end(), in.method) == p.allowed_methods.end())
    signal(1, p.w_method, kRuleMethod);
  if (p.max_request_bytes > 0 && in.content_length > p.max_request_bytes) signal(1, p.w_size, kRuleSize);
  r.score = std::min(1.0, score);
  // Weights that add up to a threshold exactly (0.6 + 0.3) must reach it despite rounding.
  constexpr double kEps = 1e-9;
  if (r.score > 0 && r.score + kEps >= p.block_at) r.decision = RiskDecision::kBlock;
  else if (r.score > 0 && r.score + kEps >= p.throttle_at) r.decision = RiskDecision::kThrottle;
  return r;
}

bool RiskEngine::auth_blocked(std::string_view ip, std::int64_t now_ns) const {
  if (auth_limit_ <= 0) return false;
  const std::uint64_t tag = mix(hash_sv(ip) ^ 0x5bd1e995ull);
  return peek(auth_[tag & mask_], tag, now_ns, auth_window_ns_) >= static_cast<double>(auth_limit_);
}

void RiskEngine::auth_failed(std::string_view ip, std::int64_t now_ns) {
  if (auth_limit_ <= 0) return;
  const std::uint64_t tag = mix(hash_sv(ip) ^ 0x5bd1e995ull);
  bump(auth_[tag & mask_], tag, now_ns, auth_window_ns_, 1);
}

}  // namespace ag::gateway
