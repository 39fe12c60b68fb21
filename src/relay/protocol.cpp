#include "relay/protocol.hpp"

namespace ag::relay {

using json = nlohmann::json;

std::string_view role_name(Role r) { return r == Role::kClient ? "client" : "anchor"; }

namespace {

// A short non-empty string field, or "".
std::string id_field(const json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end() || !it->is_string()) return {};
  const auto& s = it->get_ref<const std::string&>();
  return s.size() <= kMaxIdLength ? s : std::string();
}

// `threadId`, `thread_id` or `thread.id` of an object.
std::string thread_of(const json& obj) {
  if (!obj.is_object()) return {};
  if (auto t = id_field(obj, "threadId"); !t.empty()) return t;
  if (auto t = id_field(obj, "thread_id"); !t.empty()) return t;
  auto it = obj.find("thread");
  if (it != obj.end() && it->is_object()) return id_field(*it, "id");
  return {};
}

Inbound invalid(std::string why) {
  Inbound in;
  in.kind = Inbound::Kind::kInvalid;
  in.error = std::move(why);
  return in;
}

}  // namespace

Inbound parse_inbound(std::string_view text, Role from) {
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return invalid("a message is a JSON object");
  Inbound in;
  std::string type = id_field(doc, "type");
  if (type == "ping") {
    in.kind = Inbound::Kind::kPing;
    return in;
  }
  if (type == "orbit.subscribe" || type == "orbit.unsubscribe") {
    if (from != Role::kClient) return invalid(type + " is for clients");
    in.thread_id = thread_of(doc);
    if (in.thread_id.empty()) return invalid(type + " needs threadId (a string of 1 to 256 characters)");
    in.kind = type == "orbit.subscribe" ? Inbound::Kind::kSubscribe : Inbound::Kind::kUnsubscribe;
    return in;
  }
  if (type == "orbit.list-anchors") {
    if (from != Role::kClient) return invalid(type + " is for clients");
    in.kind = Inbound::Kind::kListAnchors;
    return in;
  }
  if (type == "anchor.hello") {
    if (from != Role::kAnchor) return invalid(type + " is for anchors");
    in.kind = Inbound::Kind::kAnchorHello;
    in.hello_anchor_id = id_field(doc, "anchorId");
    if (in.hello_anchor_id.empty()) in.hello_anchor_id = id_field(doc, "deviceId");
    in.hostname = id_field(doc, "hostname");
    in.platform = id_field(doc, "platform");
    return in;
  }
  if (type.rfind("orbit.", 0) == 0) return invalid("unknown relay message type " + type);
  // JSON-RPC-like.
  in.kind = Inbound::Kind::kRpc;
  auto id = doc.find("id");
  if (id != doc.end()) {
    if (!id->is_string() && !id->is_number_integer()) return invalid("id must be a string or an integer");
    in.id = *id;
  }
  in.request = doc.contains("method");
  in.response = !in.request && (doc.contains("result") || doc.contains("error"));
  if (in.request && !doc["method"].is_string()) return invalid("method must be a string");
  if (in.response && !in.id) return invalid("a response needs the id of its request");
  auto params = doc.find("params");
  auto result = doc.find("result");
  if (params != doc.end()) in.thread_id = thread_of(*params);
  if (in.thread_id.empty() && result != doc.end()) in.thread_id = thread_of(*result);
  if (in.thread_id.empty()) in.thread_id = thread_of(doc);
  if (from == Role::kClient) {
    in.anchor_id = id_field(doc, "anchorId");
    if (in.anchor_id.empty() && params != doc.end() && params->is_object()) in.anchor_id = id_field(*params, "anchorId");
  }
  in.doc = std::move(doc);
  return in;
}

std::string hello(Role role, std::int64_t now_ms) {
  return json{{"type", "orbit.hello"}, {"role", role_name(role)}, {"ts", now_ms}}.dump();
}
std::string pong() { return R"({"type":"pong"})"; }
std::string subscribed(const std::string& thread_id) {
  return json{{"type", "orbit.subscribed"}, {"threadId", thread_id}}.dump();
}
std::string unsubscribed(const std::string& thread_id) {
  return json{{"type", "orbit.unsubscribed"}, {"threadId", thread_id}}.dump();
}
std::string client_subscribed(const std::string& thread_id, const std::string& client_id) {
  return json{{"type", "orbit.client-subscribed"}, {"threadId", thread_id}, {"clientId", client_id}}.dump();
}
std::string anchors(const json& list) { return json{{"type", "orbit.anchors"}, {"anchors", list}}.dump(); }
json anchor_object(const std::string& id, const std::string& hostname, const std::string& platform,
                   std::int64_t connected_at_ms) {
  return {{"id", id}, {"hostname", hostname}, {"platform", platform}, {"connectedAt", connected_at_ms}};
}
std::string anchor_connected(const json& anchor) {
  return json{{"type", "orbit.anchor-connected"}, {"anchor", anchor}}.dump();
}
std::string anchor_disconnected(const std::string& anchor_id) {
  return json{{"type", "orbit.anchor-disconnected"}, {"anchorId", anchor_id}}.dump();
}
std::string rpc_error(const std::optional<json>& id, std::string_view code, std::string_view message) {
  return json{{"id", id ? *id : json(nullptr)},
              {"error", {{"code", -32001}, {"message", message}, {"data", {{"code", code}}}}}}
      .dump();
}
std::string protocol_error(std::string_view code, std::string_view message) {
  return json{{"type", "orbit.error"}, {"code", code}, {"message", message}}.dump();
}

}  // namespace ag::relay
