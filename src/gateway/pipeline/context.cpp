#include "gateway/pipeline/context.hpp"

namespace ag::gateway {

using namespace std::string_view_literals;

std::string_view reason_name(Reason r) {
  switch (r) {
    case Reason::kNone: return "";
    case Reason::kNotReady: return "not_ready";
    case Reason::kKeyMissing: return "key_missing";
    case Reason::kKeyInvalid: return "key_invalid";
    case Reason::kRateLimited: return "rate_limited";
    case Reason::kBodyTooLarge: return "body_too_large";
    case Reason::kHeadersTooLarge: return "headers_too_large";
    case Reason::kHeaderTimeout: return "header_timeout";
    case Reason::kBadRequest: return "bad_request";
    case Reason::kUpstreamUnreachable: return "upstream_unreachable";
    case Reason::kUpstreamTimeout: return "upstream_timeout";
    case Reason::kUpstreamTls: return "upstream_tls";
    case Reason::kCredentialsMissing: return "credentials_missing";
    case Reason::kTokenInvalid: return "token_invalid";
    case Reason::kTokenRevoked: return "token_revoked";
    case Reason::kRouteForbidden: return "route_forbidden";
    case Reason::kNoHealthyTarget: return "no_healthy_target";
    case Reason::kNoRoute: return "no_route";
    case Reason::kIpDenied: return "ip_denied";
    case Reason::kAuthFailures: return "auth_failures";
    case Reason::kRiskBlocked: return "risk_blocked";
    case Reason::kRiskThrottled: return "risk_throttled";
  }
  return "";
}

}  // namespace ag::gateway
