// The relay's WebSockets (Beast), one object per socket, every handler on the event loop of the
// I/O thread the connection arrived on (http/server.cpp: one loop per thread, a connection never
// moves), so a socket's handlers never run at once and need no strand. A message for a socket
// goes to its thread's mailbox, which that thread empties in one handler (a fan-out wakes each
// other thread once, not once per socket). Nothing waits on a thread: a socket is a pending read,
// and a write only while it has something to send; an idle socket holds the WebSocket stream, an
// empty read buffer and this object (docs/benchmarks.md, "Relay": bytes per idle socket).
//
// Writes: Beast allows one write at a time and keeps no queue, so each socket has its own,
// bounded in bytes (Limits::max_queue_bytes). Over the bound the socket is a slow consumer: what
// it has not been sent is dropped and it is closed with 3008; if even the close frame cannot be
// written within 5 s, the TCP connection is cut. Other sockets never wait for it: a send only
// appends to this queue.
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/websocket/stream.hpp>

#include <chrono>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <type_traits>
#include <variant>
#include <vector>

#include "common/crypto.hpp"
#include "common/time.hpp"
#include "http/upgrade.hpp"
#include "relay/hub.hpp"
#include "relay/relay.hpp"

namespace ag::relay {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;

namespace {
websocket::close_reason close_why(std::uint16_t code, std::string_view reason) {
  websocket::close_reason r(static_cast<websocket::close_code>(code));
  r.reason = reason.substr(0, 120);
  return r;
}
}  // namespace

struct Relay::Impl {
  explicit Impl(Limits l) : limits(l) {}
  Limits limits;
  std::mutex mu;
  Hub hub;
  std::atomic<bool> stopping{false};
  std::atomic<std::int64_t> clients{0}, anchors{0};
  // Counters every message touches, one set per I/O thread, each written only by its own thread
  // (a plain load and store, no locked instruction) and on a cache line of its own: a fan-out
  // on two threads does not bounce one line between them for every delivery. stats() sums them.
  struct alignas(64) LoopCounters {
    std::atomic<std::int64_t> queued_bytes{0};
    std::atomic<std::uint64_t> messages_in{0}, messages_out{0};
  };
  std::deque<LoopCounters> loop_counters;  // under mu; a deque never moves its elements
  std::unordered_map<const void*, LoopCounters*> counters_by_loop;
  LoopCounters& counters_for(const void* loop) {
    std::lock_guard lock(mu);
    auto& c = counters_by_loop[loop];
    if (!c) c = &loop_counters.emplace_back();
    return *c;
  }
  std::atomic<std::uint64_t> closed_slow{0}, closed_rate{0}, closed_too_big{0}, closed_idle{0};
  // Every open socket, for shutdown (anchors are in the hub only after anchor.hello).
  std::unordered_map<Peer*, std::weak_ptr<Peer>> open;
};

namespace {

// What a mailbox calls on its own thread: queue the message, and write it if nothing is being written.
class Delivery : public Peer {
 public:
  using Peer::Peer;
  virtual void deliver(std::shared_ptr<const std::string> text) = 0;
};

// One per I/O thread's event loop (an Asio service of its io_context): messages for that thread's
// sockets. The first message into an empty mailbox posts one drain handler; the rest ride along
// with it. Also for sockets on the sender's own thread: a fan-out first hands every other thread
// its whole share (one wake-up each) and writes its own share after, so the threads write in
// parallel (docs/benchmarks.md, "Relay").
class Mailbox : public asio::execution_context::service {
 public:
  static asio::execution_context::id id;
  explicit Mailbox(asio::execution_context& ctx) : service(ctx) {}

  void put(std::shared_ptr<Delivery> to, std::shared_ptr<const std::string> text) {
    {
      std::lock_guard lock(mu_);
      if (items_.empty() || items_.back().text != text) items_.push_back(Batch{std::move(text), {}});
      items_.back().to.push_back(std::move(to));
      if (scheduled_) return;
      scheduled_ = true;
    }
    asio::post(static_cast<asio::io_context&>(context()), [this] { drain(); });
  }

 private:
  void shutdown() override {}

  // On the mailbox's own thread.
  void drain() {
    {
      std::lock_guard lock(mu_);
      draining_.swap(items_);
      scheduled_ = false;
    }
    for (auto& b : draining_) {
      // A message for several sockets here is copied once: their queues then share a reference
      // count that only this thread touches, not the sender's, which other threads count too.
      auto text = b.to.size() > 1 ? std::make_shared<const std::string>(*b.text) : std::move(b.text);
      for (auto& to : b.to) to->deliver(text);
    }
    draining_.clear();
  }

  // One message and the sockets here it goes to (a fan-out arrives as one batch).
  struct Batch {
    std::shared_ptr<const std::string> text;
    std::vector<std::shared_ptr<Delivery>> to;
  };
  std::mutex mu_;
  std::vector<Batch> items_, draining_;
  bool scheduled_ = false;
};
asio::execution_context::id Mailbox::id;

// Adds to a counter only its own thread writes.
template <class T>
void bump(std::atomic<T>& counter, std::type_identity_t<T> n) {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

template <class Executor>
asio::io_context& loop_of(const Executor& ex) {
  return static_cast<asio::io_context&>(asio::query(ex, asio::execution::context));
}

// A plain connection leaves Beast's tcp_stream for a socket typed with its loop's own executor:
// no per-operation timer bookkeeping and no type-erased executor copies on each write (the
// WebSocket stream keeps its own handshake and idle timeouts). Measured with bench/relay/run.sh:
// docs/benchmarks.md, "Relay".
using PlainSocket = asio::basic_stream_socket<asio::ip::tcp, asio::io_context::executor_type>;

PlainSocket rebind(beast::tcp_stream& stream) {
  auto& old = stream.socket();
  auto& loop = loop_of(old.get_executor());
  PlainSocket sock(loop.get_executor());
  boost::system::error_code ec;
  auto protocol = old.local_endpoint(ec).protocol();
  if (ec) return sock;  // already gone: the handshake fails and the socket finishes
  auto fd = old.release(ec);
  if (!ec) sock.assign(protocol, fd, ec);
  return sock;
}

// The TCP socket under a WebSocket stream, plain or TLS.
template <class Stream>
auto& tcp_socket_of(Stream& ws) {
  auto& lowest = beast::get_lowest_layer(ws);
  if constexpr (requires { lowest.socket(); }) return lowest.socket();
  else return lowest;
}

template <class Next>
class Socket : public Delivery, public std::enable_shared_from_this<Socket<Next>> {
 public:
  Socket(std::shared_ptr<Relay::Impl> relay, Next&& next, Identity who)
      : Delivery(who.role, std::move(who.user_id), std::move(who.id)),
        relay_(std::move(relay)),
        ws_(std::move(next)),
        // The connection's own loop, as io_context::executor_type: Beast 1.74's saved handlers need
        // an executor with the work-counting interface.
        loop_(loop_of(ws_.get_executor()).get_executor()),
        mailbox_(asio::use_service<Mailbox>(loop_.context())),
        counters_(relay_->counters_for(&loop_.context())) {}

  void start(beast::http::request<beast::http::string_body> req, std::optional<websocket::close_reason> reject) {
    auto self = this->shared_from_this();
    asio::post(loop_, [self, req = std::move(req), reject = std::move(reject)]() mutable {
      self->configure();
      self->ws_.async_accept(req, asio::bind_executor(self->loop_, [self, reject](beast::error_code ec) {
        if (ec) return self->finish(false);
        if (reject) {
          self->closing_ = true;
          return self->do_close(*reject);
        }
        self->opened_ = true;
        (self->role() == Role::kClient ? self->relay_->clients : self->relay_->anchors).fetch_add(1);
        {
          std::lock_guard lock(self->relay_->mu);
          self->relay_->open[self.get()] = self;
        }
        if (self->relay_->stopping.load()) return self->close(kCloseGoingAway, "the relay is shutting down");
        self->relay_->hub.on_open(self, now_ms());
        self->do_read();
      }));
    });
  }

  void send(std::shared_ptr<const std::string> text) override {
    mailbox_.put(this->shared_from_this(), std::move(text));
  }

  void deliver(std::shared_ptr<const std::string> text) override { enqueue(std::move(text)); }

  void close(std::uint16_t code, std::string reason) override {
    auto self = this->shared_from_this();
    asio::post(loop_, [self, code, reason = std::move(reason)]() mutable {
      self->begin_close(close_why(code, reason));
    });
  }

 private:
  void configure() {
    const Limits& l = relay_->limits;
    websocket::stream_base::timeout t;
    t.handshake_timeout = std::chrono::seconds(10);
    t.idle_timeout = std::chrono::seconds(l.idle_timeout_sec);
    t.keep_alive_pings = true;
    ws_.set_option(t);
    ws_.read_message_max(l.max_message_bytes);
    websocket::permessage_deflate pmd;
    pmd.server_enable = l.deflate;
    ws_.set_option(pmd);
    ws_.set_option(websocket::stream_base::decorator([](websocket::response_type& res) {
      res.set(beast::http::field::server, "antigravity");
    }));
    ws_.text(true);
    tokens_ = l.burst;
    refilled_ns_ = steady_ns();
  }

  void do_read() {
    ws_.async_read(rbuf_, asio::bind_executor(loop_, [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
      self->on_read(ec);
    }));
  }

  void on_read(beast::error_code ec) {
    if (ec) {
      if (ec == websocket::error::message_too_big) relay_->closed_too_big.fetch_add(1);
      else if (ec == beast::error::timeout) relay_->closed_idle.fetch_add(1);
      return finish(true);
    }
    bump(counters_.messages_in, 1);
    std::string text = beast::buffers_to_string(rbuf_.data());
    rbuf_.consume(rbuf_.size());
    if (rbuf_.capacity() > 4096) rbuf_.shrink_to_fit();  // an idle socket keeps no large buffer
    if (closing_) return do_read();
    if (!take_token()) {
      relay_->closed_rate.fetch_add(1);
      begin_close(close_why(kClosePolicy, "message rate exceeded"));
      return do_read();  // reads on until the peer's close arrives
    }
    relay_->hub.on_message(this->shared_from_this(), text, now_ms());
    do_read();
  }

  bool take_token() {
    const Limits& l = relay_->limits;
    std::int64_t now = steady_ns();
    tokens_ = std::min(l.burst, tokens_ + static_cast<double>(now - refilled_ns_) * l.messages_per_sec / 1e9);
    refilled_ns_ = now;
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
  }

  void enqueue(std::shared_ptr<const std::string> text) {
    if (closing_ || !opened_) return;
    if (queued_ + text->size() > relay_->limits.max_queue_bytes) {
      relay_->closed_slow.fetch_add(1);
      return begin_close(close_why(kCloseSlow, "slow consumer: too many unsent bytes"));
    }
    queued_ += text->size();
    bump(counters_.queued_bytes, static_cast<std::int64_t>(text->size()));
    queue_.push_back(std::move(text));
    if (!writing_) do_write();
  }

  void do_write() {
    writing_ = true;
    ws_.async_write(asio::buffer(*queue_.front()),
                    asio::bind_executor(loop_, [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                      self->on_write(ec);
                    }));
  }

  void on_write(beast::error_code ec) {
    writing_ = false;
    if (!queue_.empty()) {
      forget(queue_.front()->size());
      queue_.pop_front();
    }
    if (ec) return finish(true);
    bump(counters_.messages_out, 1);
    if (pending_close_) {
      auto why = std::move(*pending_close_);
      pending_close_.reset();
      return do_close(why);
    }
    if (!queue_.empty() && !closing_) do_write();
  }

  void forget(std::size_t n) {
    queued_ -= n;
    bump(counters_.queued_bytes, -static_cast<std::int64_t>(n));
  }

  // Drops what is not yet being written and sends the close frame after the write in progress.
  void begin_close(websocket::close_reason why) {
    if (closing_ || finished_) return;
    closing_ = true;
    while (queue_.size() > (writing_ ? 1u : 0u)) {
      forget(queue_.back()->size());
      queue_.pop_back();
    }
    // A peer that reads nothing may never take the close frame: cut the connection after 5 s.
    cutoff_ = std::make_unique<asio::steady_timer>(loop_, std::chrono::seconds(5));
    cutoff_->async_wait([self = this->shared_from_this()](beast::error_code ec) {
      if (!ec && !self->finished_) {
        beast::error_code ignored;
        tcp_socket_of(self->ws_).close(ignored);
      }
    });
    if (writing_) pending_close_ = std::move(why);
    else do_close(why);
  }

  void do_close(const websocket::close_reason& why) {
    ws_.async_close(why, asio::bind_executor(loop_, [self = this->shared_from_this()](beast::error_code) {
      // The read in progress ends with the peer's close (or the cut-off); finish() runs there.
      if (!self->opened_) self->finish(false);
    }));
  }

  void finish(bool hub_knows) {
    if (finished_) return;
    finished_ = true;
    if (cutoff_) cutoff_->cancel();
    while (!queue_.empty()) {
      forget(queue_.front()->size());
      queue_.pop_front();
    }
    if (!hub_knows || !opened_) return;
    (role() == Role::kClient ? relay_->clients : relay_->anchors).fetch_sub(1);
    {
      std::lock_guard lock(relay_->mu);
      relay_->open.erase(this);
    }
    relay_->hub.on_close(this->shared_from_this());
  }

  std::shared_ptr<Relay::Impl> relay_;
  websocket::stream<Next> ws_;
  asio::io_context::executor_type loop_;
  Mailbox& mailbox_;
  Relay::Impl::LoopCounters& counters_;  // this thread's
  beast::flat_buffer rbuf_;
  std::deque<std::shared_ptr<const std::string>> queue_;
  std::size_t queued_ = 0;
  bool writing_ = false, closing_ = false, opened_ = false, finished_ = false;
  std::optional<websocket::close_reason> pending_close_;
  std::unique_ptr<asio::steady_timer> cutoff_;
  double tokens_ = 0;
  std::int64_t refilled_ns_ = 0;
};

template <class Next>
void serve(std::shared_ptr<Relay::Impl> impl, Next&& next, beast::http::request<beast::http::string_body> req, Identity who,
           std::optional<websocket::close_reason> reject) {
  if (who.id.empty()) who.id = crypto::random_base62(16);
  auto s = std::make_shared<Socket<std::decay_t<Next>>>(std::move(impl), std::move(next), std::move(who));
  s->start(std::move(req), std::move(reject));
}

void dispatch(const std::shared_ptr<Relay::Impl>& impl, std::unique_ptr<http::UpgradedConnection> conn, Identity who,
              std::optional<websocket::close_reason> reject) {
  std::visit(
      [&](auto& stream) {
        if constexpr (std::is_same_v<std::decay_t<decltype(stream)>, http::UpgradedConnection::Plain>)
          serve(impl, rebind(stream), std::move(conn->request), std::move(who), std::move(reject));
        else
          serve(impl, std::move(stream), std::move(conn->request), std::move(who), std::move(reject));
      },
      conn->stream);
}

}  // namespace

Relay::Relay(Limits limits) : impl_(std::make_shared<Impl>(limits)) {}
Relay::~Relay() = default;

void Relay::accept(std::unique_ptr<http::UpgradedConnection> conn, Identity who) {
  dispatch(impl_, std::move(conn), std::move(who), std::nullopt);
}

void Relay::reject(std::unique_ptr<http::UpgradedConnection> conn, std::uint16_t code, std::string reason) {
  dispatch(impl_, std::move(conn), Identity{}, close_why(code, reason));
}

void Relay::shutdown() {
  impl_->stopping = true;
  std::vector<std::shared_ptr<Peer>> peers;
  {
    std::lock_guard lock(impl_->mu);
    for (auto& [p, w] : impl_->open)
      if (auto s = w.lock()) peers.push_back(std::move(s));
  }
  for (auto& p : peers) p->close(kCloseGoingAway, "the relay is shutting down: reconnect");
}

const Limits& Relay::limits() const { return impl_->limits; }

void Relay::attach(Bus* bus, std::string replica_id) { impl_->hub.attach(bus, std::move(replica_id)); }
void Relay::on_remote(std::string_view envelope) { impl_->hub.on_remote(envelope, now_ms()); }
void Relay::heartbeat() { impl_->hub.heartbeat(now_ms()); }
void Relay::sweep() { impl_->hub.sweep(now_ms()); }

Stats Relay::stats() const {
  const Impl& i = *impl_;
  Stats s;
  s.clients = i.clients.load();
  s.anchors = i.anchors.load();
  {
    std::lock_guard lock(impl_->mu);
    for (const auto& c : i.loop_counters) {
      s.queued_bytes += c.queued_bytes.load(std::memory_order_relaxed);
      s.messages_in += c.messages_in.load(std::memory_order_relaxed);
      s.messages_out += c.messages_out.load(std::memory_order_relaxed);
    }
  }
  s.closed_slow = i.closed_slow.load();
  s.closed_rate = i.closed_rate.load();
  s.closed_too_big = i.closed_too_big.load();
  s.closed_idle = i.closed_idle.load();
  s.routed = i.hub.counters.routed.load();
  s.rpc_errors = i.hub.counters.rpc_errors.load();
  s.unroutable = i.hub.counters.unroutable.load();
  s.replaced = i.hub.counters.replaced.load();
  s.invalid = i.hub.counters.invalid.load();
  s.bus_in = i.hub.counters.bus_in.load();
  s.bus_out = i.hub.counters.bus_out.load();
  s.too_large_for_bus = i.hub.counters.too_large_for_bus.load();
  return s;
}

std::string Relay::metrics_text() const {
  Stats s = stats();
  std::string out;
  auto line = [&](const char* name, const char* type, const char* help, const std::string& labels, auto value) {
    out += "# HELP " + std::string(name) + " " + help + "\n# TYPE " + name + " " + type + "\n";
    out += std::string(name) + labels + " " + std::to_string(value) + "\n";
  };
  out += "# HELP ag_relay_sockets Open relay WebSockets by role.\n# TYPE ag_relay_sockets gauge\n";
  out += "ag_relay_sockets{role=\"client\"} " + std::to_string(s.clients) + "\n";
  out += "ag_relay_sockets{role=\"anchor\"} " + std::to_string(s.anchors) + "\n";
  line("ag_relay_messages_in_total", "counter", "Frames received.", "", s.messages_in);
  line("ag_relay_messages_out_total", "counter", "Frames sent.", "", s.messages_out);
  line("ag_relay_queued_bytes", "gauge", "Bytes waiting in the sockets' outgoing queues.", "", s.queued_bytes);
  out += "# HELP ag_relay_closed_total Sockets the relay closed, by reason.\n# TYPE ag_relay_closed_total counter\n";
  out += "ag_relay_closed_total{reason=\"slow_consumer\"} " + std::to_string(s.closed_slow) + "\n";
  out += "ag_relay_closed_total{reason=\"rate\"} " + std::to_string(s.closed_rate) + "\n";
  out += "ag_relay_closed_total{reason=\"too_big\"} " + std::to_string(s.closed_too_big) + "\n";
  out += "ag_relay_closed_total{reason=\"idle\"} " + std::to_string(s.closed_idle) + "\n";
  out += "ag_relay_closed_total{reason=\"replaced\"} " + std::to_string(s.replaced) + "\n";
  out += "# HELP ag_relay_dropped_total Messages the relay did not deliver, by reason.\n# TYPE ag_relay_dropped_total counter\n";
  out += "ag_relay_dropped_total{reason=\"invalid\"} " + std::to_string(s.invalid) + "\n";
  out += "ag_relay_dropped_total{reason=\"unroutable\"} " + std::to_string(s.unroutable) + "\n";
  out += "ag_relay_dropped_total{reason=\"rpc_error\"} " + std::to_string(s.rpc_errors) + "\n";
  out += "ag_relay_dropped_total{reason=\"too_large_for_replicas\"} " + std::to_string(s.too_large_for_bus) + "\n";
  line("ag_relay_routed_total", "counter", "Thread-routed messages delivered (per recipient).", "", s.routed);
  line("ag_relay_bus_envelopes_in_total", "counter", "Envelopes received from other replicas.", "", s.bus_in);
  line("ag_relay_bus_envelopes_out_total", "counter", "Envelopes published to other replicas.", "", s.bus_out);
  return out;
}

}  // namespace ag::relay
