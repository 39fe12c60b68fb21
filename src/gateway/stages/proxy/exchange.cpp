// The proxy stage's I/O: one exchange with the upstream for the request on a connection
// (connection.hpp). It picks a service target, sends the head built by upstream_head.hpp, streams
// the request body, retries once where that is safe (a connect failure before anything was sent;
// a pooled connection the upstream had closed), reads the answer (passing 1xx on), and streams
// the response to the client, handing the upstream connection back to the pool when it ended
// cleanly. A 101 to a WebSocket upgrade continues in tunnel.cpp.
//
// One coroutine for the whole exchange, on purpose: every coroutine call costs a frame, and the
// split into helper coroutines measured slower (docs/benchmarks.md).
#include <boost/asio/write.hpp>
#include <boost/beast/http/status.hpp>
#include <spdlog/spdlog.h>

#include <array>
#include <charconv>
#include <cstring>
#include <limits>
#include <optional>

#include "common/time.hpp"
#include "gateway/connection.hpp"
#include "gateway/stages/proxy/upstream_head.hpp"
#include "net/tls_client.hpp"

namespace ag::gateway {

namespace http = boost::beast::http;
using namespace std::string_view_literals;
using http1::from_beast;
using http1::from_lean;
using http1::has_token;
using http1::is_eof;
using http1::read_body_some;
using http1::read_head;

namespace {

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

bool idempotent(http::verb v) {
  return v == http::verb::get || v == http::verb::head || v == http::verb::options || v == http::verb::put ||
         v == http::verb::delete_ || v == http::verb::trace;
}

void append_hex(std::string& out, std::uint64_t v) {
  char buf[24];
  out.append(buf, std::to_chars(buf, buf + sizeof buf, v, 16).ptr);
}

}  // namespace

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

}  // namespace ag::gateway
