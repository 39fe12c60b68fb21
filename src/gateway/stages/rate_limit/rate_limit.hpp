#pragma once
// Stage 4, rate limit: GCRA with the policy identify chose (the key's own, or its project's), in
// the thread's local store or, with REDIS_URL, in Redis (which decides locally when it cannot
// answer in time). 429 with RateLimit-* and Retry-After headers (added by the reply).
#include "gateway/pipeline/context.hpp"
#include "net/executor.hpp"

namespace ag::metrics {
class Shard;
}
namespace ag::ratelimit {
class LocalStore;
class RedisLimiter;
}  // namespace ag::ratelimit

namespace ag::gateway::stages {

class RateLimit {
 public:
  // `redis`: null for local limits.
  RateLimit(ratelimit::LocalStore& local, ratelimit::RedisLimiter* redis, metrics::Shard& metrics)
      : local_(local), redis_(redis), metrics_(metrics) {}

  // Shared limits take a round trip: the runner awaits run_shared() then, and calls run() (no
  // coroutine frame) otherwise.
  bool shared() const { return redis_ != nullptr; }
  LocalReply run(Context& ctx) const;
  net::Task<LocalReply> run_shared(Context& ctx) const;

 private:
  LocalReply decided(Context& ctx) const;
  ratelimit::LocalStore& local_;
  ratelimit::RedisLimiter* redis_;
  metrics::Shard& metrics_;
};

}  // namespace ag::gateway::stages
