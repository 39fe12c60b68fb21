#include "gateway/stages/identify/identify.hpp"

#include "gateway/stages/risk/risk.hpp"

namespace ag::gateway::stages {

LocalReply Identify::run(Context& ctx, const RequestView& req) const {
  LocalReply reply = credentials(ctx, req);
  if (reply.reason == Reason::kKeyInvalid || reply.reason == Reason::kTokenInvalid ||
      reply.reason == Reason::kTokenRevoked)
    risk_.auth_failed(ctx.client_ip, ctx.start_ns);
  // A caller whose project has no default upstream has nowhere to go: answered here, before it
  // costs a rate-limit token.
  if (reply.status == 0 && !ctx.service && ctx.project->upstream.url.empty())
    return {404, Reason::kNoRoute, "No route for this path"};
  return reply;
}

LocalReply Identify::credentials(Context& ctx, const RequestView& req) const {
  LocalReply reply;
  const bool service_route = match_service_route(ctx, req.target);
  const config::Project* route_project = ctx.project;
  const bool has_key = req.has_api_key;
  std::string_view authz = has_key ? std::string_view{} : req.authorization;
  const bool has_bearer = !bearer_token(authz).empty();
  if (has_key || (!service_route && !has_bearer)) {
    if (!identify(ctx, req.api_key, has_key, now_ms(), reply)) return reply;
    if (service_route && ctx.project != route_project) {
      ctx.project = route_project;
      return {403, Reason::kRouteForbidden, "API key not valid for this route"};
    }
    return {};
  }
  if (!has_bearer) return {401, Reason::kCredentialsMissing, "Credentials missing"};
  std::string claim_project, claim_service;
  if (!identify_token(ctx, cache_, authz, check_, now_ms() / 1000, claim_project, claim_service, reply)) return reply;
  if (!service_route || claim_project != ctx.project->slug || claim_service != ctx.service->name)
    return {403, Reason::kRouteForbidden, "Token not valid for this route"};
  ctx.policy = ratelimit::Policy{ctx.project->rate.requests_per_minute, ctx.project->rate.burst};
  // The token's limiter slot: a hash of its jti (keys use their digest; a collision only shares a limit).
  ctx.key_tag = std::hash<std::string_view>{}(ctx.jti) ^ 0x9e3779b97f4a7c15ull;
  if (usage_) {
    std::lock_guard lock(usage_->mutex);
    if (usage_->last_used.size() < 100000) usage_->last_used[ctx.jti] = now_ms();
  }
  return {};
}

}  // namespace ag::gateway::stages
