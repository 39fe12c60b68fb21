#include "gateway/stages/log/log.hpp"

#include "gateway/stages/log/access_log.hpp"
#include "gateway/stages/log/log_line.hpp"
#include "common/time.hpp"
#include "metrics/worker_metrics.hpp"

namespace ag::gateway::stages {

void Log::run(const Context& ctx, const RequestView& req) {
  std::int64_t end = now_ = steady_ns();
  if (log_.enabled()) {
    append_log_line(pending_, ctx, LogFields{req.method, req.path, req.user_agent}, end);
    if (pending_.size() >= 32 * 1024) flush();
  }
  metrics_.request(ctx.project ? ctx.project->metrics_slot : 0,
                   ctx.reason == Reason::kNone ? metrics::Decision::kAllow : metrics::Decision::kBlock, ctx.status);
  metrics_.latency.observe(static_cast<double>(end - ctx.start_ns) / 1e6);
  if (ctx.upstream_ns >= 0) metrics_.upstream_latency.observe(static_cast<double>(ctx.upstream_ns) / 1e6);
  if (traffic_ && ctx.project) traffic_->count(*ctx.project, ctx.status, ctx.reason, end - ctx.start_ns);
}

void Log::flush() {
  if (traffic_) traffic_->hand_over(now_ms());
  if (pending_.empty()) return;
  if (!log_.append(thread_, pending_)) metrics_.add(metrics::Counter::kLogLinesDropped);
  pending_.clear();
}

}  // namespace ag::gateway::stages
