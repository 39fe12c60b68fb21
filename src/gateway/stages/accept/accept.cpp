#include "gateway/stages/accept/accept.hpp"

#include "gateway/stages/risk/risk.hpp"
#include "gateway/strict_http.hpp"
#include "metrics/worker_metrics.hpp"

namespace ag::gateway::stages {

LocalReply Accept::run(Context& ctx, RequestView& req) const {
  ctx.snapshot = snapshot_;  // pinned: a reload mid-request does not affect this request
  ctx.request_id = valid_request_id(req.request_id) ? std::string(req.request_id) : ids_.next();
  ctx.client_ip = config_.trusted_proxies.empty() ? std::string(req.peer_ip)
                                                  : client_ip(req.peer_ip, req.xff, config_.trusted_proxies);
  ctx.request_target = req.target;
  // An ambiguous head (strict::check_head, run by the connection's reader) is refused first.
  if (req.framing.status) return req.framing;
  if (!ctx.snapshot) return {503, Reason::kNotReady, "Gateway not ready: configuration not loaded"};
  if (req.target.empty() || req.target.front() != '/') return {400, Reason::kBadRequest, "Request target must be an absolute path"};
  if (config_.normalize_path) {
    // Routing, credentials and the upstream all see the same, normalised path.
    auto r = strict::normalize_path(req.path, config_.merge_slashes, *req.path_buf);
    if (r == strict::PathResult::kAboveRoot) return {400, Reason::kBadRequest, "Request path climbs above the root"};
    if (r == strict::PathResult::kChanged) {
      *req.target_buf = *req.path_buf;
      req.target_buf->append(req.target.substr(req.path.size()));
      req.target = *req.target_buf;
      req.path = std::string_view(*req.target_buf).substr(0, req.path_buf->size());
      ctx.request_target = req.target;
    }
  }
  // Worker-wide IP lists first: a denied address gets no other work done.
  if (cidr_refused(config_.ip_deny, config_.ip_allow, ctx.client_ip)) {
    metrics_.add(metrics::Counter::kRiskRuleIpDeny);
    return {403, Reason::kIpDenied, "Forbidden"};
  }
  // An address that keeps failing authentication is refused before any key is checked.
  if (risk_.auth_blocked(ctx.client_ip, ctx.start_ns)) {
    metrics_.add(metrics::Counter::kRiskRuleAuthFailures);
    return {429, Reason::kAuthFailures, "Too many failed authentication attempts"};
  }
  return {};
}

}  // namespace ag::gateway::stages
