#pragma once
// Who is calling: the credentials a request may carry, each checked here and nowhere else.
// - Authorization: Bearer <session JWT | device token agd_… | external OIDC JWT | agent token aga_…>
// - X-Agent-Token: <agent token>
// - X-Worker-Secret: <worker secret>
// The route's rule (routes.hpp) decides which of them it takes.
#include <optional>
#include <string_view>

#include "control/api/context.hpp"

namespace ag::control {

// The user behind the request's Bearer token: nullopt when no Authorization header; 401 when one
// is present but invalid.
std::optional<Principal> bearer_user(AppState& app, const http::Request& req);

// The agent whose token this is (docs/organizations.md, "Agents"): 401 for an unknown, revoked
// or expired token, 429 (with Retry-After) past the agent's rate; touches last_seen_at at most
// every 30 s.
Principal agent_caller(AppState& app, std::string_view token);

// The caller of a relay WebSocket (docs/relay.md, "Connecting"): the token in `?token=` or in
// Authorization: Bearer (both at once: 400). Anchors present a device token; clients a user's
// session token (a device token there, or a session token on the anchor route, is a 401).
Principal relay_caller(AppState& app, const http::Request& req, bool anchor);

// X-Worker-Secret (or the older X-Control-Secret) against every configured worker secret.
bool worker_authorised(const AppState& app, const http::Request& req);

}  // namespace ag::control
