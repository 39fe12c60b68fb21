#pragma once
// The Orbit relay's messages (docs/relay.md): JSON text frames. `parse_inbound` classifies what a
// client or an anchor sent; the other functions build what the relay sends. Pure functions, no
// I/O: the hub (hub.hpp) routes, the socket (socket.cpp) moves bytes. fuzz/relay_message.cpp
// feeds parse_inbound.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ag::relay {

enum class Role { kClient, kAnchor };
std::string_view role_name(Role r);

struct Inbound {
  enum class Kind {
    kInvalid,      // not a JSON object, or a known type with bad fields: `error` says why
    kPing,         // {"type":"ping"}
    kSubscribe,    // {"type":"orbit.subscribe","threadId"} (clients)
    kUnsubscribe,  // {"type":"orbit.unsubscribe","threadId"} (clients)
    kListAnchors,  // {"type":"orbit.list-anchors"} (clients)
    kAnchorHello,  // {"type":"anchor.hello",...} (anchors)
    kRpc,          // anything else: a JSON-RPC-like request, response or notification
  };
  Kind kind = Kind::kInvalid;
  std::string error;
  std::string thread_id;  // subscribe/unsubscribe; an RPC message's thread, when it names one
  // RPC: `id` when present (string or number), and whether the message is a request (has
  // `method`) or a response (`result` or `error`, no `method`).
  std::optional<nlohmann::json> id;
  bool request = false;
  bool response = false;
  std::string anchor_id;  // RPC from a client: the anchor it names (`anchorId` or `params.anchorId`)
  // anchor.hello
  std::string hello_anchor_id, hostname, platform;
  nlohmann::json doc;  // the parsed object, for forwarding
};

// Largest thread or anchor id accepted (longer ones are refused as invalid).
inline constexpr std::size_t kMaxIdLength = 256;

Inbound parse_inbound(std::string_view text, Role from);

// What the relay sends.
std::string hello(Role role, std::int64_t now_ms);
std::string pong();
std::string subscribed(const std::string& thread_id);
std::string unsubscribed(const std::string& thread_id);
std::string client_subscribed(const std::string& thread_id, const std::string& client_id);
// {"type":"orbit.anchors","anchors":[...]} from a JSON array of anchor objects.
std::string anchors(const nlohmann::json& list);
nlohmann::json anchor_object(const std::string& id, const std::string& hostname, const std::string& platform,
                             std::int64_t connected_at_ms);
std::string anchor_connected(const nlohmann::json& anchor);
std::string anchor_disconnected(const std::string& anchor_id);
// {"id", "error": {"code": -32001, "message", "data": {"code"}}}; `id` null when the request had none.
std::string rpc_error(const std::optional<nlohmann::json>& id, std::string_view code, std::string_view message);
// {"type":"orbit.error","code","message"}: a frame the relay could not take (invalid JSON, ...).
std::string protocol_error(std::string_view code, std::string_view message);

}  // namespace ag::relay
