#include "gateway/stages/rate_limit/rate_limit.hpp"

#include "metrics/worker_metrics.hpp"
#include "ratelimit/local_store.hpp"
#include "ratelimit/redis_limiter.hpp"

namespace ag::gateway::stages {

// The key's limiter slot is named by the first 8 bytes of its SHA-256 (set by identify).
LocalReply RateLimit::run(Context& ctx) const {
  ctx.limit = local_.check(ctx.key_tag, ctx.policy, ctx.start_ns);
  return decided(ctx);
}

net::Task<LocalReply> RateLimit::run_shared(Context& ctx) const {
  ctx.limit = co_await redis_->check(ctx.key_tag, ctx.policy);
  co_return decided(ctx);
}

LocalReply RateLimit::decided(Context& ctx) const {
  ctx.limit_checked = true;
  if (ctx.limit.fallback) metrics_.add(metrics::Counter::kRateLimitFallback);
  if (!ctx.limit.allowed) {
    metrics_.add(metrics::Counter::kRateLimitLimited);
    return {429, Reason::kRateLimited, "Rate limit exceeded"};
  }
  metrics_.add(metrics::Counter::kRateLimitAllowed);
  return {};
}

}  // namespace ag::gateway::stages
