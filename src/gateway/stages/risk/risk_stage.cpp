#include "gateway/stages/risk/risk_stage.hpp"

#include <algorithm>

#include "gateway/stages/risk/endpoint.hpp"
#include "gateway/stages/risk/geoip.hpp"
#include "gateway/stages/risk/risk.hpp"
#include "metrics/worker_metrics.hpp"
#include "ratelimit/local_store.hpp"

namespace ag::gateway::stages {

LocalReply Risk::run(Context& ctx, const RequestView& req) const {
  const config::RiskPolicy& p = *ctx.project->risk;
  if (cidr_refused(p.ip_deny, p.ip_allow, ctx.client_ip)) {
    metrics_.add(metrics::Counter::kRiskRuleIpDeny);
    return {403, Reason::kIpDenied, "Forbidden by IP policy"};
  }
  if (!p.country_deny.empty() || !p.country_allow.empty()) {
    // Without a database an allow list cannot be satisfied (fail closed); a deny list is skipped.
    std::string cc = geoip_ ? geoip_->country(ctx.client_ip) : std::string();
    auto listed = [&](const std::vector<std::string>& l) { return std::find(l.begin(), l.end(), cc) != l.end(); };
    if ((!cc.empty() && listed(p.country_deny)) || (!p.country_allow.empty() && (cc.empty() || !listed(p.country_allow)))) {
      ctx.reason_detail = cc.empty() ? "country_unknown" : "country_denied";
      metrics_.add(metrics::Counter::kRiskRuleCountry);
      return {403, Reason::kIpDenied, "Forbidden by country policy"};
    }
  }
  if (!p.enabled) return {};
  RiskInput in;
  in.caller = ctx.key_tag;
  in.ip = ctx.client_ip;
  std::string normalised;
  if (needs_normalising(req.path)) normalised = normalise_endpoint(req.path);
  in.endpoint = normalised.empty() ? req.path : std::string_view(normalised);
  in.method = req.method;
  in.user_agent = req.user_agent;
  in.user_agent_present = req.has_user_agent;
  if (req.content_length) in.content_length = static_cast<std::int64_t>(*req.content_length);
  RiskResult r = engine_.evaluate(p, in, ctx.start_ns);
  ctx.risk_evaluated = true;
  ctx.risk_score = r.score;
  ctx.risk_decision = static_cast<std::uint8_t>(r.decision);
  ctx.risk_rules = r.rules;
  ctx.risk_shadow = p.shadow && r.decision != RiskDecision::kAllow;
  for (std::size_t i = 0; i < kRiskRuleCount; ++i)
    if (r.rules & (1u << i))
      metrics_.add(static_cast<metrics::Counter>(static_cast<int>(metrics::Counter::kRiskRuleVelocity) + static_cast<int>(i)));
  metrics_.add(r.decision == RiskDecision::kBlock      ? metrics::Counter::kRiskBlock
               : r.decision == RiskDecision::kThrottle ? metrics::Counter::kRiskThrottle
                                                       : metrics::Counter::kRiskAllow);
  if (ctx.risk_shadow) {
    metrics_.add(metrics::Counter::kRiskShadowed);
    return {};
  }
  if (r.decision == RiskDecision::kBlock) return {429, Reason::kRiskBlocked, "Request blocked by risk policy"};
  if (r.decision == RiskDecision::kThrottle) {
    if (p.throttle_delay) {
      ctx.throttle_delay_ms = p.throttle_delay_ms;
      return {};
    }
    // A tighter limit for this caller, in its own limiter slot.
    ratelimit::Policy tight{std::max<std::int64_t>(1, static_cast<std::int64_t>(ctx.policy.requests_per_minute * p.throttle_limit_factor)),
                            static_cast<std::int64_t>(ctx.policy.burst * p.throttle_limit_factor)};
    auto d = limiter_.check(ctx.key_tag ^ 0x7468726f74746c65ull, tight, ctx.start_ns);
    if (!d.allowed) return {429, Reason::kRiskThrottled, "Rate limit exceeded (throttled by risk policy)"};
  }
  return {};
}

}  // namespace ag::gateway::stages
