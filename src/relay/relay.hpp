#pragma once
// The Orbit relay (docs/relay.md): WebSockets of clients (/ws/client) and anchors (/ws/anchor)
// on the control plane's event loop, routed by thread (hub.hpp). The control plane authenticates
// the upgrade request and hands the connection over with the caller's identity; Beast stays in
// socket.cpp.
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "http/message.hpp"
#include "relay/bus.hpp"
#include "relay/protocol.hpp"

namespace ag::relay {

struct Limits {
  std::size_t max_message_bytes = 1024 * 1024;   // RELAY_MAX_MESSAGE_BYTES: larger frames close with 1009
  std::size_t max_queue_bytes = 1024 * 1024;     // RELAY_MAX_QUEUE_BYTES: a socket's unsent bytes; beyond, close 3008
  double messages_per_sec = 100;                 // RELAY_MAX_MESSAGES_PER_SEC per socket; beyond the burst, close 1008
  double burst = 200;                            // RELAY_MESSAGE_BURST
  int idle_timeout_sec = 60;                     // RELAY_IDLE_TIMEOUT_SEC: pinged at half, closed when silent this long
  bool deflate = false;                          // RELAY_PERMESSAGE_DEFLATE
};

// Close codes the relay uses (docs/relay.md, "Close codes").
inline constexpr std::uint16_t kCloseNormal = 1000;      // replaced by a newer connection with the same id
inline constexpr std::uint16_t kCloseGoingAway = 1001;   // the control plane is shutting down: reconnect
inline constexpr std::uint16_t kClosePolicy = 1008;      // invalid token, or the message rate exceeded
inline constexpr std::uint16_t kCloseTooBig = 1009;      // a message over max_message_bytes
inline constexpr std::uint16_t kCloseSlow = 3008;        // the socket's queue went over max_queue_bytes

struct Identity {
  Role role = Role::kClient;
  std::string user_id;
  std::string id;  // client id or anchor id ("" = generated)
};

struct Stats {
  std::int64_t clients = 0, anchors = 0, queued_bytes = 0;
  std::uint64_t messages_in = 0, messages_out = 0;
  std::uint64_t closed_slow = 0, closed_rate = 0, closed_too_big = 0, closed_idle = 0;
  std::uint64_t routed = 0, rpc_errors = 0, unroutable = 0, replaced = 0, invalid = 0;
  std::uint64_t bus_in = 0, bus_out = 0, too_large_for_bus = 0;
};

class Relay {
 public:
  explicit Relay(Limits limits);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Completes the WebSocket handshake on `conn` and serves it as `who`.
  void accept(std::unique_ptr<http::UpgradedConnection> conn, Identity who);
  // Completes the handshake and closes at once with `code` (a token refused after the upgrade).
  void reject(std::unique_ptr<http::UpgradedConnection> conn, std::uint16_t code, std::string reason);
  // Tells every socket the relay is going away (close 1001); new sockets are refused the same way.
  void shutdown();
  // Several replicas (docs/relay.md): `bus` carries envelopes to the others; call on_remote with
  // every envelope the bus delivers, heartbeat() every Hub::kHeartbeatMs and sweep() every
  // second. Before any socket.
  void attach(Bus* bus, std::string replica_id);
  void on_remote(std::string_view envelope);
  void heartbeat();
  void sweep();
  Stats stats() const;
  // Prometheus text exposition (GET /relay/metrics).
  std::string metrics_text() const;
  const Limits& limits() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace ag::relay
