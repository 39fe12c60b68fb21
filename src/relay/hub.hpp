#pragma once
// The relay's routing state (docs/relay.md, "Routing"): for each user, their connected clients and
// anchors, which clients follow which thread, which anchor a thread is bound to, and the requests
// waiting for an anchor's answer. Sockets call on_open / on_message / on_close from their I/O
// threads; the hub holds its lock only to read or change that state and sends after releasing it,
// so one slow socket never holds up another (a send appends to the socket's bounded queue and at
// most starts a non-blocking write).
//
// Users never meet: every lookup is inside the caller's own user.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "relay/bus.hpp"
#include "relay/protocol.hpp"

namespace ag::relay {

// One WebSocket, as the hub sees it. send() and close() are thread-safe and never block.
class Peer {
 public:
  Peer(Role role, std::string user_id, std::string id) : role_(role), user_id_(std::move(user_id)), id_(std::move(id)) {}
  virtual ~Peer() = default;
  virtual void send(std::shared_ptr<const std::string> text) = 0;
  virtual void close(std::uint16_t code, std::string reason) = 0;

  Role role() const { return role_; }
  const std::string& user_id() const { return user_id_; }
  // A client's id (from ?clientId=, else generated); an anchor's id (from the URL, or anchor.hello).
  const std::string& id() const { return id_; }
  void set_id(std::string id) { id_ = std::move(id); }

 private:
  Role role_;
  std::string user_id_;
  std::string id_;
};

struct HubCounters {
  std::atomic<std::uint64_t> routed{0};         // RPC messages delivered (each recipient counts)
  std::atomic<std::uint64_t> rpc_errors{0};     // RPC requests answered with an error by the relay
  std::atomic<std::uint64_t> unroutable{0};     // anchor messages with nobody to receive them
  std::atomic<std::uint64_t> replaced{0};       // sockets closed because the same id connected again
  std::atomic<std::uint64_t> invalid{0};        // frames refused as invalid
  std::atomic<std::uint64_t> too_large_for_bus{0};  // messages too large to cross to another replica
  std::atomic<std::uint64_t> bus_in{0}, bus_out{0};  // envelopes from and to other replicas
};

class Hub {
 public:
  // Most requests one client may have waiting for anchors at once (more get `too_many_requests`).
  static constexpr std::size_t kMaxPendingPerClient = 1024;

  void on_open(const std::shared_ptr<Peer>& peer, std::int64_t now_ms);
  void on_message(const std::shared_ptr<Peer>& peer, std::string_view text, std::int64_t now_ms);
  void on_close(const std::shared_ptr<Peer>& peer);

  // Other replicas: `bus` carries envelopes between them (null: this process is the only one).
  // Set once, before any socket connects.
  void attach(Bus* bus, std::string replica_id);
  // An envelope another replica published (own envelopes are ignored).
  void on_remote(std::string_view envelope, std::int64_t now_ms);
  // Every kHeartbeatMs: tells the other replicas which anchors are here.
  void heartbeat(std::int64_t now_ms);
  // Every second: forgets (telling this replica's clients) anchors whose replica has been
  // silent for kRemoteAnchorTtlMs, so a dead replica's anchors leave within TTL + 1 s.
  void sweep(std::int64_t now_ms);
  static constexpr std::int64_t kHeartbeatMs = 5000;
  static constexpr std::int64_t kRemoteAnchorTtlMs = 15000;

  // Every open socket (for a graceful shutdown).
  std::vector<std::shared_ptr<Peer>> all();
  HubCounters counters;

 private:
  struct AnchorInfo {
    std::shared_ptr<Peer> peer;
    std::string hostname, platform;
    std::int64_t connected_at = 0;
  };
  struct RemoteAnchor {
    std::string replica;
    std::string hostname, platform;
    std::int64_t connected_at = 0;
    std::int64_t expires_at = 0;
  };
  struct Pending {
    std::weak_ptr<Peer> client;
    nlohmann::json original_id;
    std::string anchor_id;
  };
  struct User {
    std::unordered_map<std::string, std::shared_ptr<Peer>> clients;  // by client id
    std::unordered_map<std::string, AnchorInfo> anchors;              // by anchor id
    std::unordered_map<std::string, RemoteAnchor> remote_anchors;     // on other replicas, by anchor id
    std::unordered_map<std::string, std::unordered_set<Peer*>> followers;  // thread → subscribed clients
    std::unordered_map<std::string, std::string> thread_anchor;       // thread → the anchor it is bound to
    std::unordered_map<std::string, Pending> pending;                  // relay request id → requester
    std::unordered_map<Peer*, std::size_t> pending_by_client;
    std::unordered_map<Peer*, std::unordered_set<std::string>> subscriptions;  // client → threads
  };
  using Out = std::vector<std::pair<std::shared_ptr<Peer>, std::shared_ptr<const std::string>>>;
  struct Effects {
    Out out;
    std::vector<std::string> publish;  // envelopes for the other replicas
  };

  void client_message(const std::string& uid, User& u, const std::shared_ptr<Peer>& peer, Inbound& in, Effects& fx);
  void anchor_message(const std::string& uid, User& u, const std::shared_ptr<Peer>& peer, Inbound& in, Effects& fx);
  void drop_client(User& u, Peer* p);
  // An answer for the pending request `rid`, delivered to its requester.
  void answer(User& u, const std::string& rid, const std::string& anchor_id, nlohmann::json doc, Effects& fx);
  void anchor_gone(User& u, const std::string& anchor_id, Effects& fx);
  void to_followers(User& u, const std::string& thread, const std::shared_ptr<const std::string>& msg, Effects& fx);
  bool live_remote(const User& u, const std::string& anchor_id, std::int64_t now) const;
  void emit(Effects& fx, const std::string& uid, const char* kind, nlohmann::json fields);
  void flush(Effects& fx);

  std::mutex mu_;
  std::unordered_map<std::string, User> users_;
  std::uint64_t next_request_ = 0;
  Bus* bus_ = nullptr;
  std::string replica_ = "local";
  std::int64_t now_ = 0;  // the time of the event being handled (under mu_)
};

}  // namespace ag::relay
