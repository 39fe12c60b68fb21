// The worker's request loop (connection.hpp): for each request on a client connection, read the
// head and hand it to the pipeline (pipeline/runner.hpp), which calls back for the I/O: a local
// reply here, or the upstream exchange (stages/proxy/exchange.cpp).
#include <boost/asio/write.hpp>
#include <boost/beast/http/status.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <limits>

#include "common/json_string.hpp"
#include "common/time.hpp"
#include "gateway/connection.hpp"

namespace ag::gateway {

namespace http = boost::beast::http;
using namespace std::string_view_literals;
using http1::from_beast;
using http1::from_lean;
using http1::read_head;

void TlsStreamDelete::operator()(TlsStream* s) const noexcept { delete s; }


namespace {

// `into` = `into` + ", " + `more` (a field repeated: RFC 9110 5.3 joins the values in order).
std::string_view join_field(std::string& into, std::string_view first, std::string_view more) {
  if (into.empty()) into.assign(first.data(), first.size());
  into += ", "sv;
  into.append(more.data(), more.size());
  return into;
}

}  // namespace

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

Task<void> serve_connection(ThreadRuntime& rt, Socket socket) {
  Connection c(rt, std::move(socket));
  co_await c.run();
}

}  // namespace ag::gateway
