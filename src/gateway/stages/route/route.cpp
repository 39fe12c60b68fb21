#include "gateway/stages/route/route.hpp"

namespace ag::gateway::stages {

LocalReply Route::run(Context& ctx, const RequestView& req) const {
  if (req.has_body && req.content_length && static_cast<std::int64_t>(*req.content_length) > ctx.project->max_body_bytes)
    return {413, Reason::kBodyTooLarge, "Request body too large"};
  return {};
}

const config::ServiceTarget* pick_target(const config::Service& svc, const config::ServiceTarget* avoid,
                                         std::unordered_map<const void*, std::uint32_t>& rr, std::int64_t now_ns) {
  const std::size_t n = svc.targets.size();
  if (n == 0) return nullptr;
  std::uint32_t& pos = rr[svc.targets.front().state.get()];
  const std::size_t start = pos++ % n;
  const config::ServiceTarget* best = nullptr;
  const config::ServiceTarget* fallback = nullptr;
  std::int32_t best_load = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& t = svc.targets[(start + i) % n];
    if (!t.state->available(now_ns)) continue;
    if (&t == avoid) {
      fallback = &t;
      continue;
    }
    if (!svc.least_request) return &t;
    std::int32_t load = t.state->in_flight.load(std::memory_order_relaxed);
    if (!best || load < best_load) {
      best = &t;
      best_load = load;
    }
  }
  return best ? best : fallback;
}

}  // namespace ag::gateway::stages
