// The relay's WebSocket endpoints (docs/relay.md): /ws/client and /ws/anchor. The route's rule
// authenticates the upgrade request (relay_client / relay_anchor); the handler answers a plain
// GET with 426 and hands an upgrade to the relay with the caller's identity.
#include "common/ascii.hpp"
#include "control/api/routes.hpp"
#include "relay/relay.hpp"
#include "http/upgrade.hpp"

namespace ag::control {

namespace {

bool is_websocket_upgrade(const http::Request& req) {
  std::string upgrade(req.header("upgrade"));
  for (auto& c : upgrade) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return upgrade == "websocket";
}

// ?clientId= / ?anchorId=: letters, digits, '-', '_', '.', ':' (1–128); "" when absent.
std::string id_param(const Call& call, const char* name) {
  std::string v;
  if (!http::query_param(call.req.query, name, v) || v.empty()) return {};
  if (v.size() > 128) throw validation_error(name, "at most 128 characters");
  for (char c : v)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == ':'))
      throw validation_error(name, "letters, digits, '-', '_', '.' and ':' only");
  return v;
}

http::Response connect(AppState& app, const Call& call, relay::Role role) {
  if (!is_websocket_upgrade(call.req)) {
    http::Response r = error_response(426, "Upgrade required: connect with a WebSocket");
    r.set_header("Upgrade", "websocket");
    r.set_header("Connection", "Upgrade");
    return r;
  }
  relay::Identity who;
  who.role = role;
  who.user_id = call.principal().user_id;
  who.id = id_param(call, role == relay::Role::kClient ? "clientId" : "anchorId");
  // An anchor's default id is its device session: a reconnecting device replaces its old socket.
  if (who.id.empty() && role == relay::Role::kAnchor) who.id = call.principal().session_id;
  http::Response r;
  relay::Relay* relay = app.relay.get();
  r.take_over = [relay, who](std::unique_ptr<http::UpgradedConnection> conn) { relay->accept(std::move(conn), who); };
  return r;
}

http::Response metrics(AppState& app) {
  http::Response r;
  r.body = app.relay->metrics_text();
  r.set_header("Content-Type", "text/plain; version=0.0.4");
  return r;
}

}  // namespace

void register_relay_routes(RouteTable& r, AppState& app) {
  r.add("GET", "/ws/client", Access::kRelayClient, [&app](const Call& c) { return connect(app, c, relay::Role::kClient); });
  r.add("GET", "/ws/anchor", Access::kRelayAnchor, [&app](const Call& c) { return connect(app, c, relay::Role::kAnchor); });
  r.add("GET", "/relay/metrics", Access::kOperator, [&app](const Call&) { return metrics(app); });
}

}  // namespace ag::control
