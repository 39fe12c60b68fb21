// Over 600 lines: the connection's I/O (head and body reading, local replies, the proxy exchange
// with retries, the WebSocket tunnel) lives in one coroutine class whose state the parts share;
// moving the exchange and the tunnel to stages/proxy/ is a change of its own
// (docs/architecture.md, "Not yet split").
//
// The worker's request loop: one coroutine per client connection. For each request it reads the
// head and hands it to the pipeline (pipeline/runner.hpp), which calls back for the I/O: a local
// reply, or the upstream exchange (stage 6). Design notes:
// - Heads are rendered into one reused buffer per connection, instead of Beast's serializer, and
//   written with the body bytes that arrived with them in one syscall: small bodies (<= 2 KiB)
//   copied behind the head (one buffer: send(2)), larger ones as a gather write (sendmsg(2)).
// - Deadlines: the connection records a deadline and a phase; the thread's sweep cancels its
//   sockets when the deadline passes, and the coroutine maps the cancelled phase to 408/504.
// - Bodies stream through a 16 KiB buffer allocated only while a body is in flight.
#include <utility>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/status.hpp>
#include <spdlog/spdlog.h>

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <array>
#include <charconv>
#include <cstring>
#include <limits>
#include <optional>

#include "common/crypto.hpp"
#include "common/time.hpp"
#include "gateway/arena.hpp"
#include "http/h1/http1.hpp"
#include "ratelimit/redis_limiter.hpp"
#include "gateway/runtime.hpp"
#include "gateway/stages/proxy/upstream_head.hpp"
#include "gateway/strict_http.hpp"
#include "net/tls_client.hpp"

namespace ag::gateway {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using error_code = boost::system::error_code;
using namespace std::string_view_literals;

struct TlsStream {
  explicit TlsStream(Socket& s) : stream(s, tls::client_context()) {}
  asio::ssl::stream<Socket&> stream;
};
void TlsStreamDelete::operator()(TlsStream* s) const noexcept { delete s; }

namespace {

constexpr std::size_t kChunk = 16 * 1024;
constexpr std::size_t kInlineBody = 2048;  // bodies up to this size are copied behind the head

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

// Why a handshake with an upstream failed, at most once a second per thread (a misconfigured
// upstream fails every request; the access log still has each one).
void warn_tls_failure(const config::Upstream& up, const error_code& ec, SSL* ssl) {
  thread_local std::int64_t last_ns = 0;
  std::int64_t now = steady_ns();
  if (now - last_ns < 1'000'000'000) return;
  last_ns = now;
  long verify = SSL_get_verify_result(ssl);
  spdlog::warn("TLS handshake with upstream {} failed: {}{}", up.url, ec.message(),
               verify != X509_V_OK ? std::string(" (certificate: ") + X509_verify_cert_error_string(verify) + ")" : std::string());
}

// The end of a stream. A TLS peer that closes without close_notify ends it too: HTTP's own
// framing (Content-Length, chunked) is what tells a complete message from a cut one, and a body
// delimited by the close is accepted from such peers as common clients do.
bool is_eof(const error_code& ec) { return ec == asio::error::eof || ec == asio::ssl::error::stream_truncated; }
using ReqParser = http::request_parser<http::buffer_body, ArenaAllocator<char>>;
using ResParser = http::response_parser<http::buffer_body, ArenaAllocator<char>>;

enum class Phase : std::uint8_t { kFirstHeader, kIdle, kRequestBody, kConnect, kUpstreamWrite, kUpstreamWait, kResponseBody, kTunnel, kLocalWrite };

using http1::has_token;

bool idempotent(http::verb v) {
  return v == http::verb::get || v == http::verb::head || v == http::verb::options || v == http::verb::put ||
         v == http::verb::delete_ || v == http::verb::trace;
}

void append_hex(std::string& out, std::uint64_t v) {
  char buf[24];
  out.append(buf, std::to_chars(buf, buf + sizeof buf, v, 16).ptr);
}



// `into` = `into` + ", " + `more` (a field repeated: RFC 9110 5.3 joins the values in order).
std::string_view join_field(std::string& into, std::string_view first, std::string_view more) {
  if (into.empty()) into.assign(first.data(), first.size());
  into += ", "sv;
  into.append(more.data(), more.size());
  return into;
}


// Reading with Beast's parser through put() on our own buffer, instead of Beast's composed
// async_read_header/async_read_some: the same parsing without two layers of composed operations
// per read (measured: about 1 µs per proxied request).
constexpr std::size_t kReadSize = 8 * 1024;

// Room for the next read, or 0 when the buffer is at its limit. (Reads are done inline in the
// helpers below rather than in a helper coroutine: every coroutine call costs a frame.)
inline std::size_t read_room(const beast::flat_buffer& b) {
  return std::min(b.max_size() - b.size(), kReadSize);
}

// Until the parser has the complete head. Errors as Beast's async_read_header reports them.
// `limit`: bytes the head may take (Beast's own limit only applies to its composed reads).
// `lean`: try the lean parser first (http1.hpp); it is cleared when the lean parser declines and
// the head is left to Beast's. On return with no error and `lean` still set, `*lean` holds the
// head and its bytes are consumed (the views stay valid until the buffer's next prepare()).
template <class Stream, class Parser>
Task<void> read_head(Stream& s, beast::flat_buffer& b, Parser& p, error_code& ec, std::size_t limit,
                     http1::Head*& lean, bool request) {
  ec = {};
  std::size_t consumed = 0;
  for (;;) {
    if (lean && b.size() > 0) {
      std::string_view in(static_cast<const char*>(b.data().data()), b.size());
      auto r = request ? http1::parse_request(in, *lean) : http1::parse_response(in, *lean);
      if (r == http1::Result::kComplete && lean->size <= limit) {
        b.consume(lean->size);
        co_return;
      }
      // Declined, or over the limit (Beast's parser gives the error answer).
      if (r != http1::Result::kIncomplete || b.size() > limit) lean = nullptr;
    }
    while (!lean && b.size() > 0) {
      std::size_t used = p.put(b.data(), ec);
      b.consume(used);
      consumed += used;
      if (consumed > limit) {
        ec = http::error::header_limit;
        co_return;
      }
      if (ec == http::error::need_more) {
        ec = {};
        if (consumed + b.size() > limit) {
          ec = http::error::header_limit;
          co_return;
        }
        break;
      }
      if (ec) co_return;
      if (p.is_header_done()) co_return;
      if (used == 0) break;
    }
    std::size_t room = read_room(b);
    if (room == 0) {
      ec = http::error::header_limit;
      co_return;
    }
    std::size_t n = co_await s.async_read_some(b.prepare(room), asio::redirect_error(use_task, ec));
    if (ec) {
      if (is_eof(ec)) ec = b.size() == 0 && !p.got_some() ? http::error::end_of_stream : http::error::partial_message;
      co_return;
    }
    b.commit(n);
  }
}

// A '\n' not preceded by '\r' in the buffered bytes (which begin at a framing element: Beast
// consumes chunk lines whole).
bool has_bare_lf(const beast::flat_buffer& b) {
  const char* d = static_cast<const char*>(b.data().data());
  for (std::size_t i = 0; i < b.size(); ++i)
    if (d[i] == '\n' && (i == 0 || d[i - 1] != '\r')) return true;
  return false;
}

// Reads body bytes into the parser's buffer_body window until some arrive or the body ends.
// `eof_ends_body`: a response delimited by the connection closing.
template <class Stream, class Parser>
Task<void> read_body_some(Stream& s, beast::flat_buffer& b, Parser& p, error_code& ec) {
  ec = {};
  auto& body = p.get().body();
  const std::size_t window = body.size;
  for (;;) {
    // Non-eager put() stops after each element (a chunk header, then its data): call it while it
    // makes progress, and read from the socket only when it needs more bytes.
    while (b.size() > 0) {
      std::size_t used = p.put(b.data(), ec);
      b.consume(used);
      if (ec == http::error::need_buffer) {
        ec = {};
        co_return;
      }
      if (ec == http::error::need_more) {
        ec = {};
        // Beast's chunk parser waits for a CRLF that a client framing with bare LFs never sends
        // (RFC 9112 7.1 requires CRLF): a bare LF among the unparsed framing bytes is refused now.
        if (p.chunked() && has_bare_lf(b)) ec = http::error::bad_chunk;
        if (ec) co_return;
        break;
      }
      if (ec) co_return;
      if (p.is_done() || body.size != window) co_return;
      if (used == 0) break;
    }
    std::size_t room = read_room(b);
    if (room == 0) {
      ec = http::error::buffer_overflow;
      co_return;
    }
    std::size_t n = co_await s.async_read_some(b.prepare(room), asio::redirect_error(use_task, ec));
    if (ec) {
      if (is_eof(ec)) {
        error_code eec;
        p.put_eof(eec);
        ec = eec ? error_code(http::error::partial_message) : error_code();
      }
      co_return;
    }
    b.commit(n);
  }
}

// A message head as the pipeline reads it, from the lean parser or from Beast's (whose fields are
// listed into a reused vector of views into its container).
struct Message {
  std::string_view method, target, reason;
  std::string_view connection;  // the first Connection header's value
  http::verb verb = http::verb::unknown;
  int status = 0;
  unsigned version = 11;
  const http1::Field* fields_begin = nullptr;
  const http1::Field* fields_end = nullptr;
  bool lean = false;  // parsed by the lean parser: no body (request) or a Content-Length body (response)
  bool keep_alive = false, has_body = false, chunked = false, upgrade = false;
  bool underscore = false;  // some field name contains '_' (WORKER_UNDERSCORE_HEADERS)
  std::optional<std::uint64_t> content_length;

  const http1::Field* begin() const { return fields_begin; }
  const http1::Field* end() const { return fields_end; }
};

template <bool isRequest, class Body, class Allocator>
void from_beast(const http::parser<isRequest, Body, Allocator>& p, std::vector<http1::Field>& fields, Message& m) {
  const auto& h = p.get();
  if constexpr (isRequest) {
    m.method = h.method_string();
    m.target = h.target();
    m.verb = h.method();
  } else {
    m.status = static_cast<int>(h.result_int());
    m.reason = h.reason();
  }
  m.version = h.version();
  m.connection = h[http::field::connection];
  fields.clear();
  m.underscore = false;
  for (const auto& f : h) {
    fields.push_back({f.name_string(), f.value()});
    if (has_underscore(f.name_string())) m.underscore = true;
  }
  m.fields_begin = fields.data();
  m.fields_end = fields.data() + fields.size();
  m.keep_alive = p.keep_alive();
  m.has_body = !p.is_done();
  m.chunked = p.chunked();
  m.upgrade = p.upgrade();
  if (auto l = p.content_length()) m.content_length = *l;
}

void from_lean(const http1::Head& h, Message& m) {
  m.method = h.method;
  m.target = h.target;
  m.verb = h.method.empty() ? http::verb::unknown : http::string_to_verb(h.method);
  m.status = h.status;
  m.reason = h.reason;
  m.connection = h.connection;
  m.version = h.version;
  m.fields_begin = h.begin();
  m.fields_end = h.end();
  m.lean = true;
  m.keep_alive = h.keep_alive;
  m.underscore = h.underscore;
  m.has_body = h.status != 0 && h.content_length > 0;
  m.chunked = false;
  m.upgrade = false;
  if (h.has_length) m.content_length = h.content_length;
  else m.content_length.reset();
}

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
                      cur_.req->verb == http::verb::head);
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

Task<void> Connection::run() {
  rt_.metrics.add(metrics::Counter::kConnectionsAccepted);
  rt_.metrics.set_active_connections(static_cast<std::int64_t>(rt_.live));
  bool first = true;
  for (;;) {
    if (rt_.draining && !first) break;
    arena_.reset();  // the previous exchange's parsers are gone
    ReqParser parser(std::piecewise_construct, std::make_tuple(), std::make_tuple(ArenaAllocator<char>(arena_)));
    parser.header_limit(static_cast<std::uint32_t>(rt_.opts.max_header_bytes));
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    if (first) arm(Phase::kFirstHeader, rt_.opts.header_timeout_ms);
    else arm(Phase::kIdle, rt_.opts.idle_timeout_ms);
    timed_out_ = false;
    const std::int64_t read_started_ns = rt_.coarse_now_ns;
    error_code ec;
    http1::Head* lean = &req_lean_;
    co_await read_head(sock_, buf_, parser, ec, rt_.opts.max_header_bytes, lean, true);
    first = false;
    if (ec) {
      if (drained_) break;
      Context ctx;
      ctx.start_ns = read_started_ns;  // a 408's latency is the time the client kept us waiting
      ctx.client_ip = peer_ip_;
      ctx.request_id = rt_.ids.next();
      LocalReply reply;
      if (timed_out_) {
        // Partial headers that never completed: 408. An idle keep-alive connection: just close.
        if (buf_.size() == 0) break;
        reply = {408, Reason::kHeaderTimeout, "Request header timeout", true};
      } else if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
        reply = {431, Reason::kHeadersTooLarge, "Request header fields too large", true};
      } else if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
                 ec == asio::error::operation_aborted || ec == asio::error::broken_pipe) {
        break;
      } else {
        reply = {400, Reason::kBadRequest, "Malformed HTTP request", true};
      }
      timed_out_ = false;
      co_await send_local(ctx, reply, 11, false);
      rt_.pipeline->log.run(ctx, RequestView{});
      break;
    }
    Message req;
    if (lean) from_lean(req_lean_, req);
    else from_beast(parser, req_fields_, req);
    bool keep = co_await handle(parser, req);
    if (!keep) break;
  }
  deadline_ns = INT64_MAX;
  error_code ec;
  sock_.shutdown(tcp::socket::shutdown_send, ec);
  sock_.close(ec);
}

void Connection::add_rate_headers(const Context& ctx, std::string& out) const {
  if (!ctx.limit_checked || !(ctx.key || ctx.jwt)) return;
  const auto& d = ctx.limit;
  out += "RateLimit-Limit: "sv;
  append_num(out, static_cast<std::uint64_t>(ctx.policy.burst + 1));
  out += "\r\nRateLimit-Remaining: "sv;
  append_num(out, static_cast<std::uint64_t>(std::max<std::int64_t>(d.remaining, 0)));
  out += "\r\nRateLimit-Reset: "sv;
  append_num(out, static_cast<std::uint64_t>((d.reset_ns + 999'999'999) / 1'000'000'000));
  out += "\r\n"sv;
  if (!d.allowed) {
    out += "Retry-After: "sv;
    append_num(out, static_cast<std::uint64_t>(std::max<std::int64_t>(1, (d.retry_after_ns + 999'999'999) / 1'000'000'000)));
    out += "\r\n"sv;
  }
}

Task<bool> Connection::send_local(Context& ctx, const LocalReply& reply, unsigned version, bool keep_alive,
                                  bool head_only) {
  ctx.status = reply.status;
  ctx.reason = reply.reason;
  bool keep = keep_alive && !reply.close && !rt_.draining;
  std::string body = "{\"detail\":";
  append_json_string(body, reply.detail);
  body += "}"sv;
  head_.clear();
  head_ += version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
  append_num(head_, static_cast<std::uint64_t>(reply.status));
  head_ += ' ';
  auto phrase = http::obsolete_reason(static_cast<http::status>(reply.status));
  head_.append(phrase.data(), phrase.size());
  head_ += "\r\nContent-Type: application/json\r\nContent-Length: "sv;
  append_num(head_, body.size());
  head_ += "\r\nX-Request-Id: "sv;
  head_ += ctx.request_id;
  head_ += "\r\n"sv;
  add_rate_headers(ctx, head_);
  if (reply.reason == Reason::kAuthFailures) {
    head_ += "Retry-After: "sv;
    append_num(head_, static_cast<std::uint64_t>(rt_.opts.auth_failure_window_sec));
    head_ += "\r\n"sv;
  }
  if (reply.reason == Reason::kTokenInvalid || reply.reason == Reason::kTokenRevoked) {
    head_ += "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"sv;
  } else if (reply.reason == Reason::kCredentialsMissing) {
    head_ += "WWW-Authenticate: ApiKey header=\"X-API-Key\"\r\nWWW-Authenticate: Bearer\r\n"sv;
  } else if (reply.status == 401) {
    head_ += "WWW-Authenticate: ApiKey header=\"X-API-Key\"\r\n"sv;
  }
  head_ += keep ? (version == 10 ? "Connection: keep-alive\r\n" : "") : "Connection: close\r\n";
  head_ += "\r\n"sv;
  if (!head_only) head_ += body;
  arm(Phase::kLocalWrite, rt_.opts.idle_timeout_ms);
  error_code ec;
  std::size_t n = co_await asio::async_write(sock_, asio::buffer(head_), asio::redirect_error(use_task, ec));
  ctx.bytes_out += n;
  co_return !ec && keep;
}



void Connection::scan_headers(const Message& req) {
  using http1::name_is;
  seen_ = Seen{};
  auto& facts = seen_.facts;
  facts.version = req.version;
  for (const auto& f : req) {
    std::string_view n = f.name, v = f.value;
    switch (n.size()) {
      case 4:
        if (name_is(n, "host") && facts.host_count++ == 0) facts.host = v;
        break;
      case 6:
        if (seen_.expect.empty() && name_is(n, "expect")) seen_.expect = v;
        break;
      case 7:
        if (seen_.upgrade.empty() && name_is(n, "upgrade")) seen_.upgrade = v;
        break;
      case 9:
        if (name_is(n, "x-api-key") && facts.api_key_count++ == 0) seen_.api_key = v, seen_.has_api_key = true;
        break;
      case 10:
        if (!seen_.has_user_agent && name_is(n, "user-agent")) {
          seen_.user_agent = v, seen_.has_user_agent = true;
        } else if (name_is(n, "connection")) {
          if (seen_.connection_count++ == 0) seen_.connection = v;
          else seen_.connection = join_field(joined_connection_, seen_.connection, v);
        }
        break;
      case 12:
        if (seen_.request_id.empty() && name_is(n, "x-request-id")) seen_.request_id = v;
        break;
      case 13:
        if (name_is(n, "authorization") && facts.authorization_count++ == 0) seen_.authorization = v;
        break;
      case 14:
        if (name_is(n, "content-length")) facts.has_content_length = true, ++facts.content_length_count;
        break;
      case 15:
        if (name_is(n, "x-forwarded-for")) {
          if (seen_.xff_count++ == 0) seen_.xff = v;
          else seen_.xff = join_field(joined_xff_, seen_.xff, v);
        }
        break;
      case 17:
        if (name_is(n, "transfer-encoding")) {
          if (facts.transfer_encoding_count++ == 0) facts.transfer_encoding = v;
          else facts.transfer_encoding = join_field(joined_te_, facts.transfer_encoding, v);
        }
        break;
      default:
        break;
    }
  }
  facts.underscore_name = req.underscore;
}

// The connection's part of a request: the head's facts for the stages, then the pipeline
// (pipeline/runner.cpp), which calls back into reply() or proxy() and logs the request.
Task<bool> Connection::handle(ReqParser& parser, const Message& req) {
  Context ctx;
  ctx.start_ns = rt_.coarse_now_ns = steady_ns();
  joined_connection_.clear();
  joined_xff_.clear();
  joined_te_.clear();
  scan_headers(req);
  RequestView view;
  view.method = req.method;
  view.target = req.target;
  view.path = view.target.substr(0, view.target.find('?'));
  view.user_agent = seen_.user_agent;
  view.has_user_agent = seen_.has_user_agent;
  view.peer_ip = peer_ip_;
  view.request_id = seen_.request_id;
  view.xff = seen_.xff;
  view.api_key = seen_.api_key;
  view.has_api_key = seen_.has_api_key;
  view.authorization = seen_.authorization;
  view.has_body = req.has_body;
  view.content_length = req.content_length;
  view.path_buf = &path_buf_;
  view.target_buf = &target_buf_;
  // A keep-alive client sends the same Host every time: checked once per connection.
  seen_.facts.host_valid = seen_.facts.host_count == 1 && seen_.facts.host == valid_host_;
  view.framing = strict::check_head(seen_.facts, rt_.opts.underscore_headers);
  if (view.framing.status == 0 && !seen_.facts.host_valid && seen_.facts.host_count == 1) valid_host_.assign(seen_.facts.host);
  cur_ = {&parser, &req};
  co_return co_await run_request(*rt_.pipeline, ctx, view, *this);
}

Task<void> Connection::pause(std::int64_t ms) {
  Timer t(rt_.ioc.get_executor());
  t.expires_after(std::chrono::milliseconds(ms));
  error_code ec;
  co_await t.async_wait(asio::redirect_error(use_task, ec));
  rt_.coarse_now_ns = steady_ns();
}

Task<bool> Connection::exchange(Context& ctx, ReqParser& parser, const Message& req, bool keep_alive) {
  unsigned version = req.version;
  bool head_req = req.verb == http::verb::head;
  // A service's target is chosen per attempt; its health state learns from each exchange.
  const config::ServiceTarget* target = nullptr;
  struct InFlight {
    const config::ServiceTarget* t = nullptr;
    void set(const config::ServiceTarget* n) {
      if (t) t->state->in_flight.fetch_sub(1, std::memory_order_relaxed);
      t = n;
      if (t) t->state->in_flight.fetch_add(1, std::memory_order_relaxed);
    }
    ~InFlight() { set(nullptr); }
  } in_flight;
  const config::Service* svc = ctx.service;
  auto target_failed = [&] {
    if (!target) return;
    auto& st = *target->state;
    if (st.failures.fetch_add(1, std::memory_order_relaxed) + 1 >= svc->eject_failures) {
      st.failures.store(0, std::memory_order_relaxed);
      st.ejected_until_ns.store(steady_ns() + svc->eject_cooldown_ms * 1'000'000, std::memory_order_relaxed);
      spdlog::warn("service {}/{}: target {} ejected for {} s after {} consecutive failures", ctx.project->slug,
                   svc->name, target->upstream.url, svc->eject_cooldown_ms / 1000, svc->eject_failures);
    }
  };
  if (svc) {
    target = stages::pick_target(*svc, nullptr, rt_.rr, rt_.coarse_now_ns);
    if (!target)
      co_return co_await send_local(ctx, {503, Reason::kNoHealthyTarget, "No healthy upstream target"}, version,
                                    keep_alive && !req.has_body);
    in_flight.set(target);
    ctx.target = target;
  }
  const config::Upstream* upp = target ? &target->upstream : &ctx.project->upstream;
  if (upp->endpoints.empty()) co_return co_await send_local(ctx, {502, Reason::kUpstreamUnreachable, "Upstream service unreachable"}, version, keep_alive && !req.has_body);

  bool has_body = req.has_body;
  bool chunked_in = req.chunked;
  auto content_length = req.content_length;
  bool upgrade = req.upgrade && has_token(seen_.upgrade, "websocket");
  bool expect_continue = has_body && http1::name_is(seen_.expect, "100-continue");

  // --- the upstream request head (stages/proxy/upstream_head.hpp) -----------------------------
  UpstreamHeadInput hin;
  hin.method = req.method;
  hin.upstream = upp;
  hin.fields = {req.begin(), req.end()};
  hin.peer_ip = peer_ip_;
  hin.xff = seen_.xff;
  hin.client_host = seen_.facts.host;
  hin.connection = seen_.connection;
  hin.peer_trusted = peer_trusted_;
  // The parser noted whether any name holds a '_' (rare): only then is each name looked at.
  hin.drop_underscores = req.underscore && rt_.opts.underscore_headers != strict::Underscores::kAllow;
  hin.expect_continue = expect_continue;
  hin.upgrade = upgrade;
  hin.has_body = has_body;
  hin.chunked = chunked_in;
  hin.content_length = content_length;
  const UpstreamHeadMarks marks = build_upstream_head(up_head_, ctx, hin);
  const std::size_t target_at = marks.target_at, host_at = marks.host_at, host_end = marks.host_end;
  const bool send_chunked = marks.send_chunked;

  if (expect_continue) {
    static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    error_code ec;
    co_await asio::async_write(sock_, asio::buffer(kContinue.data(), kContinue.size()), asio::redirect_error(use_task, ec));
    if (ec) co_return false;
  }

  // --- connect, send, read the response head (with one retry) ------------------------------
  // Beast parsers cannot be reset; an optional lets a 1xx answer be followed by a fresh parser.
  std::optional<ResParser> rpo;
  auto fresh_parser = [&] {
    rpo.emplace(std::piecewise_construct, std::make_tuple(), std::make_tuple(ArenaAllocator<char>(arena_)));
    rpo->header_limit(64 * 1024);
    rpo->body_limit(std::numeric_limits<std::uint64_t>::max());
    if (head_req) rpo->skip(true);
  };
  bool retried = false;
  bool body_started = false;
  http1::Head* res_lean = nullptr;
  std::int64_t sent_ns = 0;
  // Moves a retry to another target of the service (its host and base path in the head).
  auto switch_target = [&] {
    if (!svc) return;
    const config::ServiceTarget* next = stages::pick_target(*svc, target, rt_.rr, rt_.coarse_now_ns);
    if (!next || next == target) return;
    up_head_.replace(host_at, host_end - 2 - host_at, next->upstream.host_header);
    up_head_.replace(target_at, upp->base_path.size(), next->upstream.base_path);
    target = next;
    upp = &next->upstream;
    in_flight.set(next);
    ctx.target = next;
  };
  for (int attempt = 0;; ++attempt) {
    error_code ec;
    bool pooled = false;
    const auto& up = *upp;
    upstream_.reset();
    if (!upgrade) upstream_ = rt_.take_pooled(up.pool_key, has_body);
    if (upstream_) {
      pooled = true;
      rt_.metrics.add(metrics::Counter::kUpstreamPoolReuse);
    } else {
      upstream_ = std::make_unique<UpstreamConn>(rt_.ioc);
      upstream_->pool_key = up.pool_key;
      const auto& e = up.endpoints[static_cast<std::size_t>(attempt) % up.endpoints.size()];
      tcp::endpoint ep;
      std::memcpy(ep.data(), e.addr, e.len);
      arm(Phase::kConnect, rt_.opts.upstream_connect_timeout_ms);
      timed_out_ = false;
      co_await upstream_->socket.async_connect(ep, asio::redirect_error(use_task, ec));
      if (!ec) upstream_->socket.set_option(tcp::no_delay(true), ec);
      bool tls_failed = false;
      if (!ec && up.tls) {  // under the same connect deadline
        upstream_->tls.reset(new TlsStream(upstream_->socket));
        if (!tls::prepare_client(upstream_->tls->stream.native_handle(), up.host))
          ec = asio::error::invalid_argument;
        else
          co_await upstream_->tls->stream.async_handshake(asio::ssl::stream_base::client, asio::redirect_error(use_task, ec));
        if (ec) {
          tls_failed = true;
          rt_.metrics.add(metrics::Counter::kUpstreamTlsErrors);
          warn_tls_failure(up, ec, upstream_->tls->stream.native_handle());
        }
      }
      if (ec) {
        rt_.metrics.add(metrics::Counter::kUpstreamConnectErrors);
        upstream_.reset();
        target_failed();
        if (!retried && !has_body && idempotent(req.verb)) {
          retried = true;
          rt_.metrics.add(metrics::Counter::kUpstreamRetries);
          switch_target();
          continue;
        }
        co_return co_await send_local(ctx, tls_failed ? LocalReply{502, Reason::kUpstreamTls, "Upstream TLS handshake failed"}
                                                      : LocalReply{502, Reason::kUpstreamUnreachable, "Upstream service unreachable"},
                                      version, keep_alive && !has_body);
      }
    }
    ubuf_.clear();
    arm(Phase::kUpstreamWrite, rt_.opts.upstream_timeout_ms);
    timed_out_ = false;
    sent_ns = steady_ns();
    co_await asio::async_write(up_io_, asio::buffer(up_head_), asio::redirect_error(use_task, ec));
    // Stream the request body.
    if (!ec && has_body) {
      body_started = true;
      std::uint64_t total = 0;
      while (!parser.is_done()) {
        auto& body = parser.get().body();
        body.data = chunk();
        body.size = kChunk;
        arm(Phase::kRequestBody, rt_.opts.idle_timeout_ms);
        error_code rec;
        co_await read_body_some(sock_, buf_, parser, rec);
        if (rec == http::error::need_buffer) rec = {};
        if (rec) {
          upstream_.reset();  // the upstream never sees a complete request
          if (timed_out_) co_return co_await send_local(ctx, {408, Reason::kHeaderTimeout, "Request body timeout", true}, version, false);
          // Beast's parser refuses a malformed chunk and a trailer that carries Transfer-Encoding
          // or Content-Length (RFC 9112 7.1.2); the client hears why.
          if (rec.category() == http::make_error_code(http::error::bad_chunk).category() && rec != http::error::partial_message)
            co_return co_await send_local(ctx, {400, Reason::kBadRequest, "Malformed request body", true}, version, false);
          co_return false;  // the client went away mid-body
        }
        std::size_t got = kChunk - body.size;
        total += got;
        ctx.bytes_in += got;
        if (static_cast<std::int64_t>(total) > ctx.project->max_body_bytes) {
          upstream_.reset();
          co_return co_await send_local(ctx, {413, Reason::kBodyTooLarge, "Request body too large", true}, version, false);
        }
        if (got == 0) continue;
        arm(Phase::kUpstreamWrite, rt_.opts.upstream_timeout_ms);
        if (send_chunked) {
          std::string& framing = head_;
          framing.clear();
          append_hex(framing, got);
          framing += "\r\n"sv;
          std::array<asio::const_buffer, 3> bufs{asio::buffer(framing), asio::buffer(chunk(), got), asio::buffer("\r\n", 2)};
          co_await asio::async_write(up_io_, bufs, asio::redirect_error(use_task, ec));
        } else {
          co_await asio::async_write(up_io_, asio::buffer(chunk(), got), asio::redirect_error(use_task, ec));
        }
        if (ec) break;
      }
      if (!ec && send_chunked) co_await asio::async_write(up_io_, asio::buffer("0\r\n\r\n", 5), asio::redirect_error(use_task, ec));
    }
    if (!ec) {
      fresh_parser();
      auto& rp = *rpo;
      arm(Phase::kUpstreamWait, rt_.opts.upstream_timeout_ms);
      timed_out_ = false;
      // A HEAD answer's Content-Length describes no body: left to Beast's parser (skip mode).
      res_lean = head_req ? nullptr : &res_lean_;
      co_await read_head(up_io_, ubuf_, rp, ec, 64 * 1024, res_lean, false);
      // 1xx informational answers (other than 101) are passed on; then the real head follows.
      while (!ec && !res_lean && rpo->get().result_int() >= 100 && rpo->get().result_int() < 200 && rpo->get().result_int() != 101) {
        head_.clear();
        head_ += "HTTP/1.1 "sv;
        append_num(head_, rpo->get().result_int());
        head_ += " Continue\r\n\r\n"sv;
        if (rpo->get().result_int() != 100 || !expect_continue) {
          error_code wec;
          co_await asio::async_write(sock_, asio::buffer(head_), asio::redirect_error(use_task, wec));
        }
        fresh_parser();
        co_await read_head(up_io_, ubuf_, *rpo, ec, 64 * 1024, res_lean, false);
      }
    }
    if (!ec) break;
    bool timed_out = timed_out_;
    timed_out_ = false;
    upstream_.reset();
    if (!pooled || timed_out) target_failed();  // a stale pooled connection says nothing about the target
    if (timed_out && phase_ == Phase::kUpstreamWait) {
      rt_.metrics.add(metrics::Counter::kUpstreamTimeouts);
      co_return co_await send_local(ctx, {504, Reason::kUpstreamTimeout, "Upstream timed out"}, version, false);
    }
    // A pooled connection the upstream had already closed: try once more on a fresh one.
    if (!retried && !body_started && (idempotent(req.verb) || pooled)) {
      retried = true;
      rt_.metrics.add(metrics::Counter::kUpstreamRetries);
      continue;
    }
    if (timed_out) {
      rt_.metrics.add(metrics::Counter::kUpstreamTimeouts);
      co_return co_await send_local(ctx, {504, Reason::kUpstreamTimeout, "Upstream timed out"}, version, false);
    }
    co_return co_await send_local(ctx, {502, Reason::kUpstreamUnreachable, "Upstream service unreachable"}, version, false);
  }
  ctx.upstream_ns = (rt_.coarse_now_ns = steady_ns()) - sent_ns;
  auto& rp = *rpo;
  Message res;
  if (res_lean) from_lean(res_lean_, res);
  else from_beast(rp, res_fields_, res);

  // --- the response head to the client -----------------------------------------------------
  int status = res.status;
  ctx.status = status;
  if (target) {
    if (status >= 502 && status <= 504) target_failed();
    else target->state->failures.store(0, std::memory_order_relaxed);
  }
  bool switching = status == 101 && upgrade;
  bool no_body = head_req || status == 204 || status == 304 || (status >= 100 && status < 200);
  bool up_chunked = res.chunked;
  auto up_len = res.content_length;
  bool until_eof = !no_body && !up_chunked && !up_len;
  bool keep = keep_alive && !rt_.draining;
  bool chunk_out = !no_body && (up_chunked || until_eof) && version >= 11;
  if (until_eof && version < 11) keep = false;

  head_.clear();
  head_ += version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
  append_num(head_, static_cast<std::uint64_t>(status));
  head_ += ' ';
  // An empty reason phrase gets the standard one (as Beast's parser reports it).
  std::string_view phrase = res.reason.empty() ? http::obsolete_reason(static_cast<http::status>(status)) : res.reason;
  head_.append(phrase.data(), phrase.size());
  head_ += "\r\n"sv;
  std::string_view res_conn = connection_options(res.connection);
  for (const auto& f : res) {
    LowerName ln(f.name);
    std::string_view n = ln.view();
    if (switching && (n == "connection" || n == "upgrade")) {
      // keep them: they are the handshake
    } else if (is_hop_by_hop(n) || n == "x-request-id" || (n == "content-length" && !head_req) ||
               (!res_conn.empty() && has_token(res_conn, n))) {
      continue;
    }
    head_.append(f.name.data(), f.name.size());
    head_ += ": "sv;
    head_.append(f.value.data(), f.value.size());
    head_ += "\r\n"sv;
  }
  head_ += "X-Request-Id: "sv;
  head_ += ctx.request_id;
  head_ += "\r\n"sv;
  add_rate_headers(ctx, head_);
  if (!no_body && !head_req) {
    if (up_len && !up_chunked) {
      head_ += "Content-Length: "sv;
      append_num(head_, *up_len);
      head_ += "\r\n"sv;
    } else if (chunk_out) {
      head_ += "Transfer-Encoding: chunked\r\n"sv;
    }
  }
  if (!switching) {
    if (!keep) head_ += "Connection: close\r\n"sv;
    else if (version == 10) head_ += "Connection: keep-alive\r\n"sv;
  }
  head_ += "\r\n"sv;

  error_code ec;
  if (switching) {
    arm(Phase::kTunnel, rt_.opts.idle_timeout_ms);
    co_await asio::async_write(sock_, asio::buffer(head_), asio::redirect_error(use_task, ec));
    if (ec) co_return false;
    co_await tunnel(ctx);
    co_return false;
  }

  // --- the response body --------------------------------------------------------------------
  bool head_sent = false;
  bool body_done = false;  // a lean response's body was read to its end
  if (res.lean) {
    // A Content-Length body, forwarded as it is: what arrived with the head goes out with the
    // response head in one write straight from the read buffer, the rest as it arrives.
    std::uint64_t remaining = *res.content_length;
    for (;;) {
      std::array<asio::const_buffer, 2> bufs{};
      std::size_t nb = 0;
      std::size_t have = static_cast<std::size_t>(std::min<std::uint64_t>(remaining, ubuf_.size()));
      if (!head_sent && have <= kInlineBody) {
        // A small body goes out inside the head's buffer: one buffer is one send(2), where two
        // are a sendmsg(2), which cost the kernel ~0.2 µs more per response (perf, loopback).
        head_.append(static_cast<const char*>(ubuf_.data().data()), have);
        bufs[nb++] = asio::buffer(head_);
      } else {
        if (!head_sent) bufs[nb++] = asio::buffer(head_);
        if (have > 0) bufs[nb++] = asio::buffer(ubuf_.data().data(), have);
      }
      if (nb > 0) {
        arm(Phase::kResponseBody, rt_.opts.idle_timeout_ms);
        // (Not a conditional expression with a co_await in each arm: GCC 12 evaluates both.)
        if (nb == 1) ctx.bytes_out += co_await asio::async_write(sock_, bufs[0], asio::redirect_error(use_task, ec));
        else ctx.bytes_out += co_await asio::async_write(sock_, bufs, asio::redirect_error(use_task, ec));
        head_sent = true;
        if (ec) {
          upstream_.reset();
          co_return false;
        }
      }
      ubuf_.consume(have);
      remaining -= have;
      if (remaining == 0) break;
      arm(Phase::kResponseBody, rt_.opts.upstream_timeout_ms);
      error_code rec;
      std::size_t n = co_await up_io_.async_read_some(
          ubuf_.prepare(static_cast<std::size_t>(std::min<std::uint64_t>(remaining, kChunk))),
          asio::redirect_error(use_task, rec));
      if (rec) {  // the head is out: closing the client connection is the only signal left
        ctx.reason = timed_out_ ? Reason::kUpstreamTimeout : Reason::kUpstreamUnreachable;
        upstream_.reset();
        co_return false;
      }
      ubuf_.commit(n);
    }
    body_done = true;
  } else if (no_body || rp.is_done()) {
    arm(Phase::kResponseBody, rt_.opts.idle_timeout_ms);
    ctx.bytes_out += co_await asio::async_write(sock_, asio::buffer(head_), asio::redirect_error(use_task, ec));
    head_sent = true;
  } else {
    for (;;) {
      auto& body = rp.get().body();
      body.data = chunk();
      body.size = kChunk;
      arm(Phase::kResponseBody, rt_.opts.upstream_timeout_ms);
      error_code rec;
      co_await read_body_some(up_io_, ubuf_, rp, rec);
      if (rec == http::error::need_buffer) rec = {};
      bool eof_done = until_eof && (rec == http::error::end_of_stream || is_eof(rec));
      if (rec && !eof_done) {
        // The upstream failed mid-body. If nothing was sent yet, answer properly; otherwise the
        // only honest signal left is to close the client connection.
        bool to = timed_out_;
        upstream_.reset();
        if (!head_sent) {
          if (to) rt_.metrics.add(metrics::Counter::kUpstreamTimeouts);
          co_return co_await send_local(ctx, to ? LocalReply{504, Reason::kUpstreamTimeout, "Upstream timed out", true}
                                                : LocalReply{502, Reason::kUpstreamUnreachable, "Upstream service unreachable", true},
                                        version, false);
        }
        ctx.reason = to ? Reason::kUpstreamTimeout : Reason::kUpstreamUnreachable;
        co_return false;
      }
      std::size_t got = kChunk - body.size;
      bool done = rp.is_done() || eof_done;
      std::array<asio::const_buffer, 4> bufs{};  // unused entries stay empty and are skipped
      std::size_t nb = 0;
      if (!head_sent) bufs[nb++] = asio::buffer(head_);
      std::string& framing = up_head_;  // the upstream head is no longer needed
      framing.clear();
      if (got > 0 && chunk_out) {
        append_hex(framing, got);
        framing += "\r\n"sv;
      }
      if (!framing.empty()) bufs[nb++] = asio::buffer(framing);
      if (got > 0) bufs[nb++] = asio::buffer(chunk(), got);
      if (chunk_out) {
        if (got > 0 && done) bufs[nb++] = asio::buffer("\r\n0\r\n\r\n", 7);
        else if (got > 0) bufs[nb++] = asio::buffer("\r\n", 2);
        else if (done) bufs[nb++] = asio::buffer("0\r\n\r\n", 5);
      }
      if (nb > 0) {
        arm(Phase::kResponseBody, rt_.opts.idle_timeout_ms);
        ctx.bytes_out += co_await asio::async_write(sock_, bufs, asio::redirect_error(use_task, ec));
        head_sent = true;
        if (ec) {
          upstream_.reset();
          co_return false;
        }
      }
      if (done) break;
    }
  }
  // Back to the pool only when the exchange ended cleanly and the upstream will keep it open.
  if (upstream_ && (res.lean ? body_done : rp.is_done()) && !until_eof && res.keep_alive && ubuf_.size() == 0) {
    rt_.give_back(std::move(upstream_));
  } else {
    upstream_.reset();
  }
  co_return !ec && keep;
}

Task<bool> Connection::tunnel(Context& ctx) {
  // Bytes already buffered on either side go first, then both directions are pumped until one
  // side closes. The connection's deadline is refreshed on every transfer.
  auto pump = [this, &ctx](auto& from, beast::flat_buffer& pending, auto& to, bool upstream_to_client) -> Task<void> {
    std::array<char, 8192> data;
    error_code ec;
    if (pending.size() > 0) {
      co_await asio::async_write(to, pending.data(), asio::redirect_error(use_task, ec));
      pending.consume(pending.size());
      if (ec) co_return;
    }
    for (;;) {
      std::size_t n = co_await from.async_read_some(asio::buffer(data), asio::redirect_error(use_task, ec));
      if (ec) break;
      deadline_ns = rt_.coarse_now_ns + rt_.opts.idle_timeout_ms * 1'000'000;
      co_await asio::async_write(to, asio::buffer(data.data(), n), asio::redirect_error(use_task, ec));
      if (ec) break;
      if (upstream_to_client) ctx.bytes_out += n;
      else ctx.bytes_in += n;
    }
    error_code ignore;
    to.shutdown(tcp::socket::shutdown_send, ignore);
    from.cancel(ignore);
    to.cancel(ignore);
  };
  auto& up = up_io_;
  // Run client->upstream as a separate coroutine and upstream->client here; each ends the other.
  bool other_done = false;
  Timer done_signal(rt_.ioc.get_executor());
  done_signal.expires_at(std::chrono::steady_clock::time_point::max());
  asio::co_spawn(rt_.ioc, [&]() -> Task<void> {
    co_await pump(sock_, buf_, up, false);
    other_done = true;
    done_signal.cancel();
  }, asio::detached);
  co_await pump(up, ubuf_, sock_, true);
  if (!other_done) {
    error_code ec;
    sock_.cancel(ec);
    co_await done_signal.async_wait(asio::redirect_error(use_task, ec));
  }
  upstream_.reset();
  co_return false;
}

}  // namespace

Task<void> serve_connection(ThreadRuntime& rt, Socket socket) {
  Connection c(rt, std::move(socket));
  co_await c.run();
}

}  // namespace ag::gateway
