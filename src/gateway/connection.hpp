#pragma once
// A client connection of the worker (private to gateway/): one coroutine that reads requests,
// hands each to the pipeline (pipeline/runner.hpp) and does the I/O the pipeline asks for. Its
// parts live in three files that share this class's state:
//   connection.cpp               the request loop, local replies, the head's facts, deadlines, drain
//   stages/proxy/exchange.cpp    the upstream exchange (connect, retry, stream both bodies)
//   stages/proxy/tunnel.cpp      the WebSocket tunnel after a 101
// Design notes:
// - Heads are rendered into one reused buffer per connection, instead of Beast's serializer, and
//   written with the body bytes that arrived with them in one syscall: small bodies (<= 2 KiB)
//   copied behind the head (one buffer: send(2)), larger ones as a gather write (sendmsg(2)).
// - Deadlines: the connection records a deadline and a phase; the thread's sweep cancels its
//   sockets when the deadline passes, and the coroutine maps the cancelled phase to 408/504.
// - Bodies stream through a 16 KiB buffer allocated only while a body is in flight.
// - The exchange is one coroutine for the whole I/O loop: every coroutine call costs a frame.
#include <utility>  // Boost 1.74 awaitable.hpp uses std::exchange without including it
#include <boost/asio/ssl/stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>

#include <memory>
#include <string>
#include <vector>

#include "gateway/arena.hpp"
#include "gateway/runtime.hpp"
#include "gateway/strict_http.hpp"
#include "http/h1/read.hpp"
#include "net/tls_client.hpp"

namespace ag::gateway {

namespace beast = boost::beast;
using error_code = boost::system::error_code;
using http1::Message;

// TLS over an upstream connection's socket (UpstreamConn::tls), for https:// upstreams.
struct TlsStream {
  explicit TlsStream(Socket& s) : stream(s, tls::client_context()) {}
  asio::ssl::stream<Socket&> stream;
};

inline constexpr std::size_t kChunk = 16 * 1024;
inline constexpr std::size_t kInlineBody = 2048;  // bodies up to this size are copied behind the head

// The upstream end of an exchange, as an Asio stream: the TCP socket, or TLS over it for an
// https:// upstream. It names the Connection's current upstream connection (which changes
// between attempts and requests), so one object serves them all; a plain upstream costs one
// branch per operation.
class UpstreamStream {
 public:
  using executor_type = Executor;
  explicit UpstreamStream(std::unique_ptr<UpstreamConn>& c) : c_(&c) {}
  executor_type get_executor() { return (*c_)->socket.get_executor(); }

  template <class Buffers, class Token>
  auto async_read_some(const Buffers& b, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [](auto handler, UpstreamConn* c, const Buffers& b) {
          if (c->tls) c->tls->stream.async_read_some(b, std::move(handler));
          else c->socket.async_read_some(b, std::move(handler));
        },
        token, c_->get(), b);
  }
  template <class Buffers, class Token>
  auto async_write_some(const Buffers& b, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [](auto handler, UpstreamConn* c, const Buffers& b) {
          if (c->tls) c->tls->stream.async_write_some(b, std::move(handler));
          else c->socket.async_write_some(b, std::move(handler));
        },
        token, c_->get(), b);
  }
  // On the TCP socket underneath (a TLS close_notify is not sent: the socket closes next).
  void shutdown(tcp::socket::shutdown_type what, error_code& ec) { (*c_)->socket.shutdown(what, ec); }
  void cancel(error_code& ec) { (*c_)->socket.cancel(ec); }

 private:
  std::unique_ptr<UpstreamConn>* c_;
};

using ReqParser = beast::http::request_parser<beast::http::buffer_body, ArenaAllocator<char>>;
using ResParser = beast::http::response_parser<beast::http::buffer_body, ArenaAllocator<char>>;

enum class Phase : std::uint8_t { kFirstHeader, kIdle, kRequestBody, kConnect, kUpstreamWrite, kUpstreamWait, kResponseBody, kTunnel, kLocalWrite };

class Connection final : public Tracked, public Exchange {
 public:
  Connection(ThreadRuntime& rt, Socket socket)
      : rt_(rt), sock_(std::move(socket)), buf_(std::max<std::size_t>(64 * 1024, rt.opts.max_header_bytes + 8192)) {
    error_code ec;
    auto ep = sock_.remote_endpoint(ec);
    if (!ec) {
      auto addr = ep.address();
      if (addr.is_v6() && addr.to_v6().is_v4_mapped()) addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
      peer_ip_ = addr.to_string();
    }
    sock_.set_option(tcp::no_delay(true), ec);
    peer_trusted_ = !rt_.trusted.empty() && cidr_contains(rt_.trusted, peer_ip_);
    rt_.track(this);
  }
  ~Connection() override {
    rt_.untrack(this);
    rt_.metrics.set_active_connections(static_cast<std::int64_t>(rt_.live));
  }

  void on_deadline() override {
    timed_out_ = true;
    error_code ec;
    sock_.cancel(ec);
    if (upstream_) upstream_->socket.cancel(ec);
    deadline_ns = INT64_MAX;
  }
  void on_drain() override {
    // Mid-request: finish, then close. Between requests with nothing received (not even bytes
    // still in the kernel's queue): close now. A connection accepted just before the drain began
    // gets a short grace to send its first request, which is then answered with Connection: close.
    if ((phase_ != Phase::kIdle && phase_ != Phase::kFirstHeader) || buf_.size() > 0) return;
    char byte;
    ssize_t n = ::recv(sock_.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return;  // a request is arriving: serve it
    if (phase_ == Phase::kFirstHeader && n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      deadline_ns = std::min<std::int64_t>(deadline_ns, rt_.coarse_now_ns + 500'000'000);
      return;
    }
    drained_ = true;
    error_code ec;
    sock_.cancel(ec);
  }

  Task<void> run();

 private:
  // Deadlines use the thread's coarse clock (refreshed per request and per sweep): reading the
  // clock for every I/O showed up in profiles, and a deadline a few ms early does not matter.
  void arm(Phase p, std::int64_t timeout_ms) {
    phase_ = p;
    deadline_ns = rt_.coarse_now_ns + timeout_ms * 1'000'000;
  }

  Task<bool> handle(ReqParser& parser, const Message& req);
  // The pipeline's I/O (Exchange), for the request in cur_.
  Task<bool> reply(Context& ctx, const LocalReply& reply) override {
    // An unread request body would be taken for the next request: close instead.
    return send_local(ctx, reply, cur_.req->version, cur_.req->keep_alive && !cur_.req->has_body,
                      cur_.req->verb == beast::http::verb::head);
  }
  Task<bool> proxy(Context& ctx) override { return exchange(ctx, *cur_.parser, *cur_.req, cur_.req->keep_alive); }
  Task<void> pause(std::int64_t ms) override;
  struct Current {
    ReqParser* parser = nullptr;
    const Message* req = nullptr;
  } cur_;
  Task<bool> send_local(Context& ctx, const LocalReply& reply, unsigned version, bool keep_alive,
                        bool head_only = false);
  Task<bool> exchange(Context& ctx, ReqParser& parser, const Message& req, bool keep_alive);
  Task<bool> tunnel(Context& ctx);
  void add_rate_headers(const Context& ctx, std::string& out) const;
  char* chunk() {
    if (!chunk_) chunk_ = std::make_unique<char[]>(kChunk);
    return chunk_.get();
  }

  // The request headers the pipeline reads, found in one pass over the fields (each lookup by
  // name in Beast's container costs a hash and a tree search). The first occurrence wins.
  // Repeated Connection and X-Forwarded-For fields are joined (joined_*_); the fields that
  // frame the message or carry a credential are counted, for strict::check_head.
  struct Seen {
    std::string_view request_id, xff, user_agent, api_key, authorization, upgrade, connection, expect;
    bool has_user_agent = false, has_api_key = false;
    std::uint8_t connection_count = 0, xff_count = 0;
    strict::HeadFacts facts;
  };
  Seen seen_;
  void scan_headers(const Message& req);
  std::string joined_connection_, joined_xff_, joined_te_;
  std::string path_buf_, target_buf_;  // the normalised path, and target (path + query)
  bool peer_trusted_ = false;  // the peer is one of WORKER_TRUSTED_PROXIES
  std::string valid_host_;     // the last Host value found valid on this connection

  ThreadRuntime& rt_;
  Socket sock_;
  beast::flat_buffer buf_;  // request bytes: at most one head (plus pipelined bytes)
  std::string peer_ip_;
  Phase phase_ = Phase::kFirstHeader;
  bool timed_out_ = false;
  bool drained_ = false;
  std::unique_ptr<UpstreamConn> upstream_;
  UpstreamStream up_io_{upstream_};  // I/O on upstream_, plain or TLS
  beast::flat_buffer ubuf_;  // upstream read buffer (for the current upstream connection)
  std::string head_;         // outgoing head to the client
  std::string up_head_;      // outgoing head to the upstream
  std::unique_ptr<char[]> chunk_;
  Arena arena_;  // header fields of the current exchange
  // Heads from the lean parser, and Beast's fields listed as views (reused, no allocation).
  http1::Head req_lean_, res_lean_;
  std::vector<http1::Field> req_fields_, res_fields_;
};

}  // namespace ag::gateway
