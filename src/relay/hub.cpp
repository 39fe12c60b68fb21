#include "relay/hub.hpp"

namespace ag::relay {

using json = nlohmann::json;

namespace {

std::shared_ptr<const std::string> text(std::string s) { return std::make_shared<const std::string>(std::move(s)); }

std::string str(const json& j, const char* k) {
  auto it = j.find(k);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

void Hub::attach(Bus* bus, std::string replica_id) {
  std::lock_guard lock(mu_);
  bus_ = bus;
  replica_ = std::move(replica_id);
}

void Hub::emit(Effects& fx, const std::string& uid, const char* kind, json fields) {
  if (!bus_) return;
  fields["kind"] = kind;
  fields["from"] = replica_;
  if (!uid.empty()) fields["user"] = uid;
  std::string env = fields.dump();
  if (env.size() > kMaxEnvelopeBytes) {
    counters.too_large_for_bus.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  fx.publish.push_back(std::move(env));
}

void Hub::flush(Effects& fx) {
  for (auto& [p, m] : fx.out) p->send(std::move(m));
  if (bus_)
    for (auto& e : fx.publish) {
      counters.bus_out.fetch_add(1, std::memory_order_relaxed);
      bus_->publish(std::move(e));
    }
}

bool Hub::live_remote(const User& u, const std::string& anchor_id, std::int64_t now) const {
  auto it = u.remote_anchors.find(anchor_id);
  return it != u.remote_anchors.end() && it->second.expires_at > now;
}

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

// Requests waiting for `anchor_id` are answered anchor_offline; clients hear it left.
void Hub::anchor_gone(User& u, const std::string& anchor_id, Effects& fx) {
  auto gone = text(anchor_disconnected(anchor_id));
  for (auto& [id, c] : u.clients) fx.out.emplace_back(c, gone);
  for (auto p = u.pending.begin(); p != u.pending.end();) {
    if (p->second.anchor_id != anchor_id) {
      ++p;
      continue;
    }
    if (auto c = p->second.client.lock()) {
      fx.out.emplace_back(c, text(rpc_error(p->second.original_id, "anchor_offline", "The anchor disconnected before answering")));
      auto n = u.pending_by_client.find(c.get());
      if (n != u.pending_by_client.end() && n->second > 0) --n->second;
    }
    p = u.pending.erase(p);
  }
}

void Hub::on_close(const std::shared_ptr<Peer>& peer) {
  Effects fx;
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
        anchor_gone(u, peer->id(), fx);
        emit(fx, it->first, "down", {{"anchor_id", peer->id()}});
      }
    }
    if (u.clients.empty() && u.anchors.empty() && u.pending.empty() && u.remote_anchors.empty()) users_.erase(it);
  }
  flush(fx);
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
  Effects fx;
  std::shared_ptr<Peer> replaced;
  {
    std::lock_guard lock(mu_);
    now_ = now_ms;
    const std::string& uid = peer->user_id();
    User& u = users_[uid];
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
      json obj = anchor_object(peer->id(), in.hostname, in.platform, now_ms);
      auto msg = text(anchor_connected(obj));
      for (auto& [id, c] : u.clients) fx.out.emplace_back(c, msg);
      emit(fx, uid, "up", {{"anchor", obj}});
    } else if (peer->role() == Role::kClient) {
      client_message(uid, u, peer, in, fx);
    } else {
      auto a = u.anchors.find(peer->id());
      if (a == u.anchors.end() || a->second.peer != peer)
        fx.out.emplace_back(peer, text(protocol_error("hello_required", "Send anchor.hello before anything else")));
      else
        anchor_message(uid, u, peer, in, fx);
    }
  }
  if (replaced) {
    counters.replaced.fetch_add(1, std::memory_order_relaxed);
    replaced->close(1000, "replaced by a new connection with the same id");
  }
  flush(fx);
}

void Hub::client_message(const std::string& uid, User& u, const std::shared_ptr<Peer>& peer, Inbound& in, Effects& fx) {
  auto& out = fx.out;
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
      if (bound == u.thread_anchor.end() || !u.anchors.count(bound->second))
        emit(fx, uid, "subscribed", {{"thread", in.thread_id}, {"client", peer->id()}});
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
      for (auto& [id, a] : u.remote_anchors)
        if (a.expires_at > now_ && !u.anchors.count(id)) list.push_back(anchor_object(id, a.hostname, a.platform, a.connected_at));
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
  auto online = [&](const std::string& id) { return u.anchors.count(id) > 0 || live_remote(u, id, now_); };
  std::string target;
  auto bound = in.thread_id.empty() ? u.thread_anchor.end() : u.thread_anchor.find(in.thread_id);
  if (!in.anchor_id.empty()) {
    if (bound != u.thread_anchor.end() && bound->second != in.anchor_id)
      return refuse("thread_anchor_mismatch", "The thread is bound to another anchor");
    if (!online(in.anchor_id)) return refuse("anchor_not_found", "No anchor with this id is connected");
    target = in.anchor_id;
  } else if (bound != u.thread_anchor.end()) {
    if (!online(bound->second)) return refuse("anchor_offline", "The thread's anchor is not connected");
    target = bound->second;
  } else {
    std::size_t count = u.anchors.size();
    for (auto& [id, a] : u.remote_anchors)
      if (a.expires_at > now_ && !u.anchors.count(id)) {
        ++count;
        target = id;
      }
    if (count == 0) return refuse("anchor_offline", "No anchor is connected");
    if (count > 1) return refuse("anchor_required", "Several anchors are connected: name one with anchorId");
    if (!u.anchors.empty()) target = u.anchors.begin()->first;
  }
  const bool local = u.anchors.count(target) > 0;
  json& doc = in.doc;
  std::string rid;
  if (in.request && in.id) {
    // The anchor sees a relay-wide id ("<replica>:<n>"); its answer goes back to this client
    // with the client's own id.
    if (u.pending_by_client[peer.get()] >= kMaxPendingPerClient)
      return refuse("too_many_requests", "Too many requests waiting for an answer");
    rid = replica_ + ":" + std::to_string(++next_request_);
    doc["id"] = rid;
  }
  std::string body = doc.dump();
  if (!local && body.size() + 256 > kMaxEnvelopeBytes)
    return refuse("message_too_large", "Messages to an anchor on another replica are limited to 7,600 bytes");
  if (!rid.empty()) {
    ++u.pending_by_client[peer.get()];
    u.pending[rid] = Pending{peer, *in.id, target};
  }
  if (!in.thread_id.empty()) u.thread_anchor[in.thread_id] = target;
  counters.routed.fetch_add(1, std::memory_order_relaxed);
  if (local) out.emplace_back(u.anchors[target].peer, text(std::move(body)));
  else emit(fx, uid, "to_anchor", {{"anchor_id", target}, {"text", std::move(body)}});
}

void Hub::answer(User& u, const std::string& rid, const std::string& anchor_id, json doc, Effects& fx) {
  auto p = u.pending.find(rid);
  if (p == u.pending.end() || p->second.anchor_id != anchor_id) {
    counters.unroutable.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  auto client = p->second.client.lock();
  doc["id"] = p->second.original_id;
  u.pending.erase(p);
  if (!client) {
    counters.unroutable.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  auto n = u.pending_by_client.find(client.get());
  if (n != u.pending_by_client.end() && n->second > 0) --n->second;
  counters.routed.fetch_add(1, std::memory_order_relaxed);
  fx.out.emplace_back(client, text(doc.dump()));
}

void Hub::to_followers(User& u, const std::string& thread, const std::shared_ptr<const std::string>& msg, Effects& fx) {
  std::size_t sent = 0;
  if (!thread.empty()) {
    auto f = u.followers.find(thread);
    if (f != u.followers.end())
      for (Peer* c : f->second) {
        auto it = u.clients.find(c->id());
        if (it != u.clients.end() && it->second.get() == c) {
          fx.out.emplace_back(it->second, msg);
          ++sent;
        }
      }
  } else {
    for (auto& [id, c] : u.clients) {
      fx.out.emplace_back(c, msg);
      ++sent;
    }
  }
  counters.routed.fetch_add(sent, std::memory_order_relaxed);
}

void Hub::anchor_message(const std::string& uid, User& u, const std::shared_ptr<Peer>& peer, Inbound& in, Effects& fx) {
  if (in.kind != Inbound::Kind::kRpc) {
    fx.out.emplace_back(peer, text(protocol_error("invalid_message", "Not a message for an anchor")));
    return;
  }
  if (in.response) {
    // An answer: to its requester only, on whichever replica it asked from.
    std::string rid = in.id->is_string() ? in.id->get<std::string>() : std::string();
    std::string origin = rid.substr(0, rid.rfind(':'));
    if (bus_ && !rid.empty() && rid.find(':') != std::string::npos && origin != replica_) {
      emit(fx, uid, "response", {{"to", origin}, {"rid", rid}, {"anchor_id", peer->id()}, {"text", in.doc.dump()}});
      return;
    }
    answer(u, rid, peer->id(), std::move(in.doc), fx);
    return;
  }
  // Anything else: to the clients following its thread (every client of the user when it names
  // none), here and on the other replicas.
  if (!in.thread_id.empty()) u.thread_anchor.try_emplace(in.thread_id, peer->id());
  std::string body = in.doc.dump();
  auto msg = text(body);
  to_followers(u, in.thread_id, msg, fx);
  emit(fx, uid, "thread", {{"thread", in.thread_id}, {"anchor_id", peer->id()}, {"text", std::move(body)}});
}

void Hub::on_remote(std::string_view envelope, std::int64_t now_ms) {
  json e = json::parse(envelope, nullptr, false);
  if (!e.is_object()) return;
  const std::string from = str(e, "from"), kind = str(e, "kind"), uid = str(e, "user");
  Effects fx;
  {
    std::lock_guard lock(mu_);
    now_ = now_ms;
    if (from.empty() || from == replica_) return;
    counters.bus_in.fetch_add(1, std::memory_order_relaxed);
    if (kind == "beat") {
      auto list = e.find("anchors");
      if (list == e.end() || !list->is_array()) return;
      for (const auto& a : *list) {
        if (!a.is_object()) continue;
        User& u = users_[str(a, "user")];
        auto& r = u.remote_anchors[str(a, "id")];
        r.replica = from;
        r.hostname = str(a, "hostname");
        r.platform = str(a, "platform");
        r.connected_at = a.value("connectedAt", std::int64_t{0});
        r.expires_at = now_ms + kRemoteAnchorTtlMs;
      }
      return;
    }
    if (uid.empty()) return;
    auto uit = users_.find(uid);
    if (kind == "up") {
      const json& a = e["anchor"];
      if (!a.is_object()) return;
      User& u = users_[uid];
      const std::string id = str(a, "id");
      u.remote_anchors[id] = RemoteAnchor{from, str(a, "hostname"), str(a, "platform"), a.value("connectedAt", std::int64_t{0}),
                                          now_ms + kRemoteAnchorTtlMs};
      auto msg = text(anchor_connected(a));
      for (auto& [cid, c] : u.clients) fx.out.emplace_back(c, msg);
    } else if (uit == users_.end()) {
      return;  // nobody of this user here
    } else if (kind == "down") {
      User& u = uit->second;
      const std::string id = str(e, "anchor_id");
      auto r = u.remote_anchors.find(id);
      if (r != u.remote_anchors.end() && r->second.replica == from) {
        u.remote_anchors.erase(r);
        if (!u.anchors.count(id)) anchor_gone(u, id, fx);
      }
    } else if (kind == "to_anchor") {
      User& u = uit->second;
      auto a = u.anchors.find(str(e, "anchor_id"));
      if (a == u.anchors.end()) {
        counters.unroutable.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      fx.out.emplace_back(a->second.peer, text(str(e, "text")));
    } else if (kind == "response") {
      if (str(e, "to") != replica_) return;
      json doc = json::parse(str(e, "text"), nullptr, false);
      if (!doc.is_object()) return;
      answer(uit->second, str(e, "rid"), str(e, "anchor_id"), std::move(doc), fx);
    } else if (kind == "thread") {
      User& u = uit->second;
      const std::string thread = str(e, "thread");
      if (!thread.empty()) u.thread_anchor.try_emplace(thread, str(e, "anchor_id"));
      to_followers(u, thread, text(str(e, "text")), fx);
    } else if (kind == "subscribed") {
      User& u = uit->second;
      const std::string thread = str(e, "thread");
      auto note = text(client_subscribed(thread, str(e, "client")));
      auto bound = u.thread_anchor.find(thread);
      for (auto& [id, a] : u.anchors)
        if (bound == u.thread_anchor.end() || bound->second == id) fx.out.emplace_back(a.peer, note);
    }
  }
  flush(fx);
}

void Hub::heartbeat(std::int64_t now_ms) {
  Effects fx;
  {
    std::lock_guard lock(mu_);
    now_ = now_ms;
    // This replica's anchors, in envelopes under the size limit.
    json list = json::array();
    std::size_t bytes = 0;
    auto send_list = [&] {
      if (list.empty()) return;
      emit(fx, "", "beat", {{"anchors", list}});
      list = json::array();
      bytes = 0;
    };
    for (auto& [uid, u] : users_)
      for (auto& [id, a] : u.anchors) {
        json item = anchor_object(id, a.hostname, a.platform, a.connected_at);
        item["user"] = uid;
        bytes += item.dump().size() + 1;
        list.push_back(std::move(item));
        if (bytes > kMaxEnvelopeBytes / 2) send_list();
      }
    send_list();
  }
  flush(fx);
}

void Hub::sweep(std::int64_t now_ms) {
  Effects fx;
  {
    std::lock_guard lock(mu_);
    now_ = now_ms;
    for (auto uit = users_.begin(); uit != users_.end();) {
      User& u = uit->second;
      for (auto r = u.remote_anchors.begin(); r != u.remote_anchors.end();) {
        if (r->second.expires_at > now_ms) {
          ++r;
          continue;
        }
        std::string id = r->first;
        r = u.remote_anchors.erase(r);
        if (!u.anchors.count(id)) anchor_gone(u, id, fx);
      }
      if (u.clients.empty() && u.anchors.empty() && u.pending.empty() && u.remote_anchors.empty()) uit = users_.erase(uit);
      else ++uit;
    }
  }
  flush(fx);
}

}  // namespace ag::relay
