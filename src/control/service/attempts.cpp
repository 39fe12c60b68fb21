#include "control/service/attempts.hpp"

namespace ag::control {

std::int64_t AttemptLimiter::retry_after(const std::string& key, std::int64_t limit, std::int64_t now_ms) {
  std::lock_guard lock(mu_);
  auto it = windows_.find(key);
  if (it == windows_.end()) return 0;
  if (it->second.ends_ms <= now_ms) {
    windows_.erase(it);
    return 0;
  }
  if (it->second.count < limit) return 0;
  return (it->second.ends_ms - now_ms + 999) / 1000;
}

void AttemptLimiter::record(const std::string& key, std::int64_t window_sec, std::int64_t now_ms) {
  std::lock_guard lock(mu_);
  if (windows_.size() >= 100000) sweep(now_ms);
  auto& w = windows_[key];
  if (w.ends_ms <= now_ms) w = Window{0, now_ms + window_sec * 1000};
  ++w.count;
}

void AttemptLimiter::clear(const std::string& key) {
  std::lock_guard lock(mu_);
  windows_.erase(key);
}

void AttemptLimiter::sweep(std::int64_t now_ms) {
  std::erase_if(windows_, [now_ms](const auto& kv) { return kv.second.ends_ms <= now_ms; });
}

}  // namespace ag::control
