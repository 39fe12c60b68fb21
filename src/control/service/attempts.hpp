#pragma once
// Brute-force limits (docs/auth.md, "Limits"): attempts counted per key ("login:ip:203.0.113.7",
// "login:account:ada@example.com", ...) in a fixed window that starts at the key's first attempt.
// A key past its limit is refused until its window ends; the counter is forgotten then, so it
// never outlives its window. Each key stands alone: one locked account locks no other.
// Kept in the process (a control plane behind a load balancer counts per node: docs/auth.md).
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace ag::control {

class AttemptLimiter {
 public:
  // Seconds until `key` may try again (0: it may now), with `limit` attempts per `window_sec`.
  std::int64_t retry_after(const std::string& key, std::int64_t limit, std::int64_t now_ms);
  // Counts one attempt against `key`.
  void record(const std::string& key, std::int64_t window_sec, std::int64_t now_ms);
  // Forgets `key` (a successful sign-in clears its account's failures).
  void clear(const std::string& key);

 private:
  struct Window {
    std::int64_t count = 0;
    std::int64_t ends_ms = 0;
  };
  void sweep(std::int64_t now_ms);
  std::mutex mu_;
  std::unordered_map<std::string, Window> windows_;
};

}  // namespace ag::control
