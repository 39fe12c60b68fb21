#include "relay/hub.hpp"

namespace ag::relay {

using json = nlohmann::json;

namespace {

std::shared_ptr<const std::string> text(std::string s) { return std::make_shared<const std::string>(std::move(s)); }

}  // namespace

void Hub::on_open(const std::shared_ptr<Peer>& peer, std::int64_t now_ms) {
  std::shared_ptr<Peer> replaced;
  {
    std::lock_guard lock(mu_);
    User& u = users_[peer->user_id()];
    if (peer->role() == Role::kClient) {
      auto& slot = u.clients[peer->id()];
      if (slot && slot != peer) {
        replaced = slot;
        drop_client(u, slot.get());
      }
      slot = peer;
    }
    // Anchors join the user's list with anchor.hello (they name themselves there).
  }
  peer->send(text(hello(peer->role(), now_ms)));
  if (replaced) {
    counters.replaced.fetch_add(1, std::memory_order_relaxed);
    replaced->close(1000, "replaced by a new connection with the same id");
  }
}

void Hub::drop_client(User& u, Peer* p) {
  auto subs = u.subscriptions.find(p);
  if (subs != u.subscriptions.end()) {
    for (const auto& t : subs->second) {
      auto f = u.followers.find(t);
      if (f == u.followers.end()) continue;
      f->second.erase(p);
      if (f->second.empty()) u.followers.erase(f);
    }
    u.subscriptions.erase(subs);
  }
  u.pending_by_client.erase(p);
  for (auto it = u.pending.begin(); it != u.pending.end();) {
    auto c = it->second.client.lock();
    it = !c || c.get() == p ? u.pending.erase(it) : std::next(it);
  }
}

void Hub::on_close(const std::shared_ptr<Peer>& peer) {
  Out out;
  {
    std::lock_guard lock(mu_);
    auto it = users_.find(peer->user_id());
    if (it == users_.end()) return;
    User& u = it->second;
    if (peer->role() == Role::kClient) {
      auto c = u.clients.find(peer->id());
      if (c != u.clients.end() && c->second == peer) u.clients.erase(c);
      drop_client(u, peer.get());
    } else {
      auto a = u.anchors.find(peer->id());
      if (a != u.anchors.end() && a->second.peer == peer) {
        u.anchors.erase(a);
        auto gone = text(anchor_disconnected(peer->id()));
        for (auto& [id, c] : u.clients) out.emplace_back(c, gone);
        // Requests it will never answer: their requesters hear so now.
        for (auto p = u.pending.begin(); p != u.pending.end();) {
          if (p->second.anchor_id != peer->id()) {
            ++p;
            continue;
          }
          if (auto c = p->second.client.lock()) {
            out.emplace_back(c, text(rpc_error(p->second.original_id, "anchor_offline", "The anchor disconnected before answering")));
            auto n = u.pending_by_client.find(c.get());
            if (n != u.pending_by_client.end() && n->second > 0) --n->second;
          }
          p = u.pending.erase(p);
        }
      }
    }
    if (u.clients.empty() && u.anchors.empty() && u.pending.empty()) users_.erase(it);
  }
  for (auto& [p, m] : out) p->send(std::move(m));
}

std::vector<std::shared_ptr<Peer>> Hub::all() {
  std::vector<std::shared_ptr<Peer>> v;
  std::lock_guard lock(mu_);
  for (auto& [uid, u] : users_) {
    for (auto& [id, c] : u.clients) v.push_back(c);
    for (auto& [id, a] : u.anchors) v.push_back(a.peer);
  }
  return v;
}

void Hub::on_message(const std::shared_ptr<Peer>& peer, std::string_view frame, std::int64_t now_ms) {
  Inbound in = parse_inbound(frame, peer->role());
  if (in.kind == Inbound::Kind::kPing) {
    peer->send(text(pong()));
    return;
  }
  if (in.kind == Inbound::Kind::kInvalid) {
    counters.invalid.fetch_add(1, std::memory_order_relaxed);
    peer->send(text(protocol_error("invalid_message", in.error)));
    return;
  }
  Out out;
  std::shared_ptr<Peer> replaced;
  {
    std::lock_guard lock(mu_);
    User& u = users_[peer->user_id()];
    if (in.kind == Inbound::Kind::kAnchorHello) {
      // The anchor takes its id (anchorId, else deviceId, else the one it connected with); an
      // earlier socket with that id is replaced.
      if (!in.hello_anchor_id.empty() && in.hello_anchor_id != peer->id()) {
        auto old = u.anchors.find(peer->id());
        if (old != u.anchors.end() && old->second.peer == peer) u.anchors.erase(old);
        peer->set_id(in.hello_anchor_id);
      }
      auto& slot = u.anchors[peer->id()];
      if (slot.peer && slot.peer != peer) replaced = slot.peer;
      slot.peer = peer;
      slot.hostname = in.hostname;
      slot.platform = in.platform;
      slot.connected_at = now_ms;
      auto msg = text(anchor_connected(anchor_object(peer->id(), in.hostname, in.platform, now_ms)));
      for (auto& [id, c] : u.clients) out.emplace_back(c, msg);
    } else if (peer->role() == Role::kClient) {
      client_message(u, peer, in, out);
    } else {
      auto a = u.anchors.find(peer->id());
      if (a == u.anchors.end() || a->second.peer != peer)
        out.emplace_back(peer, text(protocol_error("hello_required", "Send anchor.hello before anything else")));
      else
        anchor_message(u, peer, in, out);
    }
  }
  if (replaced) {
    counters.replaced.fetch_add(1, std::memory_order_relaxed);
    replaced->close(1000, "replaced by a new connection with the same id");
  }
  for (auto& [p, m] : out) p->send(std::move(m));
}

void Hub::client_message(User& u, const std::shared_ptr<Peer>& peer, Inbound& in, Out& out) {
  switch (in.kind) {
    case Inbound::Kind::kSubscribe: {
      u.followers[in.thread_id].insert(peer.get());
      u.subscriptions[peer.get()].insert(in.thread_id);
      out.emplace_back(peer, text(subscribed(in.thread_id)));
      // The anchor the thread is bound to hears of it; an unbound thread: every anchor of the user.
      auto note = text(client_subscribed(in.thread_id, peer->id()));
      auto bound = u.thread_anchor.find(in.thread_id);
      for (auto& [id, a] : u.anchors)
        if (bound == u.thread_anchor.end() || bound->second == id) out.emplace_back(a.peer, note);
      return;
    }
    case Inbound::Kind::kUnsubscribe: {
      auto f = u.followers.find(in.thread_id);
      if (f != u.followers.end()) {
        f->second.erase(peer.get());
        if (f->second.empty()) u.followers.erase(f);
      }
      auto s = u.subscriptions.find(peer.get());
      if (s != u.subscriptions.end()) s->second.erase(in.thread_id);
      out.emplace_back(peer, text(unsubscribed(in.thread_id)));
      return;
    }
    case Inbound::Kind::kListAnchors: {
      json list = json::array();
      for (auto& [id, a] : u.anchors) list.push_back(anchor_object(id, a.hostname, a.platform, a.connected_at));
      out.emplace_back(peer, text(anchors(list)));
      return;
    }
    case Inbound::Kind::kRpc:
      break;
    default:
      return;
  }
  // A JSON-RPC-like message for one anchor: the one it names, else the thread's, else the only one.
  auto refuse = [&](std::string_view code, std::string_view message) {
    counters.rpc_errors.fetch_add(1, std::memory_order_relaxed);
    out.emplace_back(peer, text(rpc_error(in.id, code, message)));
  };
  std::string target;
  auto bound = in.thread_id.empty() ? u.thread_anchor.end() : u.thread_anchor.find(in.thread_id);
  if (!in.anchor_id.empty()) {
    if (bound != u.thread_anchor.end() && bound->second != in.anchor_id)
      return refuse("thread_anchor_mismatch", "The thread is bound to another anchor");
    if (!u.anchors.count(in.anchor_id)) return refuse("anchor_not_found", "No anchor with this id is connected");
    target = in.anchor_id;
  } else if (bound != u.thread_anchor.end()) {
    if (!u.anchors.count(bound->second)) return refuse("anchor_offline", "The thread's anchor is not connected");
    target = bound->second;
  } else if (u.anchors.size() == 1) {
    target = u.anchors.begin()->first;
  } else if (u.anchors.empty()) {
    return refuse("anchor_offline", "No anchor is connected");
  } else {
    return refuse("anchor_required", "Several anchors are connected: name one with anchorId");
  }
  if (!in.thread_id.empty()) u.thread_anchor[in.thread_id] = target;
  json& doc = in.doc;
  if (in.request && in.id) {
    // The anchor sees a relay-wide id; its answer goes back to this client with the client's id.
    std::size_t& n = u.pending_by_client[peer.get()];
    if (n >= kMaxPendingPerClient) return refuse("too_many_requests", "Too many requests waiting for an answer");
    ++n;
    std::string rid = "r" + std::to_string(++next_request_);
    u.pending[rid] = Pending{peer, *in.id, target};
    doc["id"] = rid;
  }
  counters.routed.fetch_add(1, std::memory_order_relaxed);
  out.emplace_back(u.anchors[target].peer, text(doc.dump()));
}

void Hub::anchor_message(User& u, const std::shared_ptr<Peer>& peer, Inbound& in, Out& out) {
  if (in.kind != Inbound::Kind::kRpc) {
    out.emplace_back(peer, text(protocol_error("invalid_message", "Not a message for an anchor")));
    return;
  }
  if (in.response) {
    // An answer: to its requester only.
    std::string rid = in.id->is_string() ? in.id->get<std::string>() : std::string();
    auto p = u.pending.find(rid);
    if (p == u.pending.end() || p->second.anchor_id != peer->id()) {
      counters.unroutable.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    auto client = p->second.client.lock();
    in.doc["id"] = p->second.original_id;
    u.pending.erase(p);
    if (!client) {
      counters.unroutable.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    auto n = u.pending_by_client.find(client.get());
    if (n != u.pending_by_client.end() && n->second > 0) --n->second;
    counters.routed.fetch_add(1, std::memory_order_relaxed);
    out.emplace_back(client, text(in.doc.dump()));
    return;
  }
  // Anything else: to the clients following its thread (every client of the user when it names none).
  auto msg = text(in.doc.dump());
  std::size_t sent = 0;
  if (!in.thread_id.empty()) {
    u.thread_anchor.try_emplace(in.thread_id, peer->id());
    auto f = u.followers.find(in.thread_id);
    if (f != u.followers.end())
      for (Peer* c : f->second) {
        auto it = u.clients.find(c->id());
        if (it != u.clients.end() && it->second.get() == c) {
          out.emplace_back(it->second, msg);
          ++sent;
        }
      }
  } else {
    for (auto& [id, c] : u.clients) {
      out.emplace_back(c, msg);
      ++sent;
    }
  }
  if (sent == 0) counters.unroutable.fetch_add(1, std::memory_order_relaxed);
  counters.routed.fetch_add(sent, std::memory_order_relaxed);
}

}  // namespace ag::relay
