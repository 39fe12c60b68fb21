#include "http/server.hpp"

#include <utility>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <optional>
#include <set>
#include <cctype>
#include <stdexcept>
#include <cerrno>
#include <thread>

#include "http/upgrade.hpp"

namespace ag::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;

struct Server::Impl {
  ServerOptions options;
  RequestHandler handler;
  ProtocolErrorHandler on_error;
  // One event loop per I/O thread (concurrency hint 1: a thread's own queue takes no lock). The
  // acceptor runs on the first and hands each connection to the next loop in turn; a connection
  // stays on its loop for its whole life, also after an upgrade, so its handlers never run
  // concurrently and need no strand, and whoever shares its thread reaches it without a
  // cross-thread wake-up (the relay's fan-out: docs/benchmarks.md, "Relay").
  std::vector<std::unique_ptr<asio::io_context>> loops;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> keep_running;
  std::size_t next_loop = 0;
  tcp::acceptor acceptor;
  std::uint16_t port = 0;
  std::unique_ptr<ssl::context> tls;
  // Declared after the loops: destroyed (joined) first, so no handler finishes into a dead loop.
  std::optional<asio::thread_pool> pool;

  static std::vector<std::unique_ptr<asio::io_context>> make_loops(int n) {
    std::vector<std::unique_ptr<asio::io_context>> v;
    for (int i = 0; i < std::max(1, n); ++i) v.push_back(std::make_unique<asio::io_context>(1));
    return v;
  }

  // Long polls. A session's handlers all run on its one loop, so a wake-up posted there cannot
  // race the session arming its timer; `generation` closes the gap between the handler's check
  // and the wait.
  struct Waiter {
    explicit Waiter(asio::any_io_executor ex) : executor(ex), timer(ex) {}
    asio::any_io_executor executor;
    asio::steady_timer timer;
  };
  std::atomic<std::uint64_t> generation{0};
  std::mutex waiters_mutex;
  std::set<std::shared_ptr<Waiter>> waiters;

  void wake_all() {
    generation.fetch_add(1);
    std::lock_guard lock(waiters_mutex);
    for (const auto& w : waiters)
      asio::post(w->executor, [w] { w->timer.cancel(); });
  }

  Impl(ServerOptions o, RequestHandler h, ProtocolErrorHandler e)
      : options(std::move(o)), handler(std::move(h)), on_error(std::move(e)), loops(make_loops(options.threads)),
        acceptor(*loops.front()) {
    for (auto& l : loops) keep_running.push_back(asio::make_work_guard(*l));
    if (options.handler_threads > 0) pool.emplace(static_cast<std::size_t>(options.handler_threads));
  }

  // Runs `f` on the handler pool (or here, without one) and resumes the calling coroutine on its
  // own loop with the result. The pool signals completion by cancelling a timer posted to the
  // loop (the coroutine has suspended on it by then: the loop runs one thing at a time);
  // Server::run() joins the pool before this frame can be destroyed.
  template <class F>
  asio::awaitable<Response> on_pool(F f) {
    if (!pool) co_return f();
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer done(ex, asio::steady_timer::time_point::max());
    Response out;
    asio::post(*pool, [&out, &done, ex, f = std::move(f)]() mutable {
      out = f();
      asio::post(ex, [&done] { done.cancel(); });
    });
    boost::system::error_code ec;
    co_await done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    co_return out;
  }

  std::chrono::steady_clock::time_point last_accept_warning{};
  asio::awaitable<void> accept_loop() {
    for (;;) {
      boost::system::error_code ec;
      asio::io_context& loop = *loops[next_loop++ % loops.size()];
      tcp::socket socket = co_await acceptor.async_accept(asio::any_io_executor(loop.get_executor()),
                                                          asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        // Out of file descriptors (or memory): accepting again at once fails again at once, a
        // busy loop. Pause accepting for 100 ms, as nginx does; pending connections wait in the
        // listen backlog meanwhile. One warning per second at most.
        const auto now = std::chrono::steady_clock::now();
        if (now - last_accept_warning >= std::chrono::seconds(1)) {
          last_accept_warning = now;
          spdlog::warn("accept failed: {}{}", ec.message(),
                       ec.value() == EMFILE ? " (raise the open-file limit, ulimit -n)" : "");
        }
        // By errno value: accept's errors are system errors.
        const int e = ec.value();
        if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
          asio::steady_timer pause(acceptor.get_executor(), std::chrono::milliseconds(100));
          boost::system::error_code ignored;
          co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
        }
        continue;
      }
      std::string ip;
      {
        boost::system::error_code ignored;
        auto ep = socket.remote_endpoint(ignored);
        if (!ignored) ip = ep.address().to_string();
        // A response written in two pieces (head, then body) would otherwise wait for the peer's
        // delayed ACK (~40 ms, Nagle's algorithm).
        socket.set_option(tcp::no_delay(true), ignored);
      }
      if (tls) {
        asio::co_spawn(loop, tls_session(beast::tcp_stream(std::move(socket)), std::move(ip)), asio::detached);
      } else {
        asio::co_spawn(loop, session(beast::tcp_stream(std::move(socket)), std::move(ip)), asio::detached);
      }
    }
  }

  asio::awaitable<void> tls_session(beast::tcp_stream tcp_stream, std::string ip) {
    beast::ssl_stream<beast::tcp_stream> stream(std::move(tcp_stream), *tls);
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(options.idle_timeout_sec));
    boost::system::error_code ec;
    co_await stream.async_handshake(ssl::stream_base::server, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;  // not TLS, or gave up: nothing to answer in
    co_await session(std::move(stream), std::move(ip));
  }

  static Request to_request(bhttp::request<bhttp::string_body>& msg, const std::string& ip) {
    Request r;
    r.method = std::string(msg.method_string());
    r.target = std::string(msg.target());
    auto q = r.target.find('?');
    r.path = r.target.substr(0, q);
    if (q != std::string::npos) r.query = r.target.substr(q + 1);
    for (const auto& f : msg) {
      std::string name(f.name_string());
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      r.headers.push_back({std::move(name), std::string(f.value())});
    }
    r.body = std::move(msg.body());  // an upgrade hands over the head only
    r.remote_ip = ip;
    return r;
  }

  template <class Stream>
  asio::awaitable<void> write_response(Stream& stream, Response& res, bool keep_alive, bool head,
                                       unsigned version, boost::system::error_code& ec) {
    bhttp::response<bhttp::string_body> msg{static_cast<bhttp::status>(res.status), version};
    for (auto& h : res.headers) msg.set(h.name, h.value);
    msg.keep_alive(keep_alive);
    msg.body() = std::move(res.body);
    msg.prepare_payload();
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(options.idle_timeout_sec));
    if (head) {
      bhttp::response_serializer<bhttp::string_body> sr{msg};
      co_await bhttp::async_write_header(stream, sr, asio::redirect_error(asio::use_awaitable, ec));
    } else {
      co_await bhttp::async_write(stream, msg, asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  // Holds a long poll until wake_all() or its time is up, without a thread.
  asio::awaitable<void> hold(std::uint64_t gen, std::chrono::milliseconds wait) {
    auto w = std::make_shared<Waiter>(co_await asio::this_coro::executor);
    {
      std::lock_guard lock(waiters_mutex);
      waiters.insert(w);
    }
    if (generation.load() == gen) {
      w->timer.expires_after(wait);
      boost::system::error_code ec;
      co_await w->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    std::lock_guard lock(waiters_mutex);
    waiters.erase(w);
  }

  template <class Stream>
  asio::awaitable<void> session(Stream stream, std::string ip) {
    beast::flat_buffer buffer;
    for (;;) {
      bhttp::request_parser<bhttp::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(options.header_limit));
      parser.body_limit(options.body_limit);
      beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(options.idle_timeout_sec));
      boost::system::error_code ec;
      co_await bhttp::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        if (ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
            ec == asio::error::connection_reset || ec == beast::error::timeout ||
            ec == asio::error::operation_aborted || ec == ssl::error::stream_truncated)
          break;
        int status = 400;
        std::string detail = "Malformed HTTP request";
        if (ec == bhttp::error::body_limit) {
          status = 413;
          detail = "Request body too large (limit " + std::to_string(options.body_limit) + " bytes)";
        } else if (ec == bhttp::error::header_limit) {
          status = 431;
          detail = "Request headers too large";
        }
        Response res = on_error(status, std::move(detail));
        boost::system::error_code wec;
        co_await write_response(stream, res, false, false, 11, wec);
        break;
      }
      auto& msg = parser.get();
      bool keep_alive = msg.keep_alive();
      bool head = msg.method() == bhttp::verb::head;
      unsigned version = msg.version();
      auto req = std::make_shared<Request>(to_request(msg, ip));
      std::uint64_t gen = generation.load();
      auto run = [this, req] { return handler(*req); };
      // (An if, not ?:, around co_await: g++ 12 miscompiles co_await inside a conditional.)
      Response res;
      if (options.runs_inline && options.runs_inline(*req)) {
        res = run();
      } else {
        res = co_await on_pool(run);
      }
      if (res.take_over) {
        beast::get_lowest_layer(stream).expires_never();
        auto up = std::make_unique<UpgradedConnection>(
            UpgradedConnection{std::move(stream), std::move(buffer), parser.release(), std::move(ip)});
        res.take_over(std::move(up));
        co_return;
      }
      // A long poll; its answer may be another hold (a wake-up that brought it nothing).
      while (res.deferred) {
        co_await hold(gen, res.defer_for);
        gen = generation.load();  // before the check: a change committed during it wakes the next hold
        auto resume = std::move(res.deferred);
        res = co_await on_pool(std::move(resume));
      }
      co_await write_response(stream, res, keep_alive, head, version, ec);
      if (ec || !keep_alive) break;
    }
    co_await close(stream);
  }

  asio::awaitable<void> close(beast::tcp_stream& stream) {
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    co_return;
  }
  asio::awaitable<void> close(beast::ssl_stream<beast::tcp_stream>& stream) {
    // close_notify, waiting a little for the peer's; then the socket closes with the stream.
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(2));
    boost::system::error_code ignored;
    co_await stream.async_shutdown(asio::redirect_error(asio::use_awaitable, ignored));
  }
};

Server::Server(ServerOptions options, RequestHandler handler, ProtocolErrorHandler on_error)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler), std::move(on_error))) {}

Server::~Server() = default;

void Server::listen() {
  auto& o = impl_->options;
  if (o.tls_cert_file.empty() != o.tls_key_file.empty())
    throw std::runtime_error("TLS needs both a certificate file and a key file");
  if (!o.tls_cert_file.empty()) {
    auto ctx = std::make_unique<ssl::context>(ssl::context::tls_server);
    ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                     ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
    boost::system::error_code ec;
    ctx->use_certificate_chain_file(o.tls_cert_file, ec);
    if (ec) throw std::runtime_error("cannot load the TLS certificate chain '" + o.tls_cert_file + "': " + ec.message());
    ctx->use_private_key_file(o.tls_key_file, ssl::context::pem, ec);
    if (ec) throw std::runtime_error("cannot load the TLS private key '" + o.tls_key_file + "': " + ec.message());
    impl_->tls = std::move(ctx);
  }
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(o.host, ec);
  if (ec) throw std::runtime_error("invalid listen address '" + o.host + "'");
  tcp::endpoint ep{addr, o.port};
  auto& a = impl_->acceptor;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error("cannot listen on " + o.host + ":" + std::to_string(o.port) + ": " + ec.message());
  impl_->port = a.local_endpoint().port();
}

std::uint16_t Server::bound_port() const { return impl_->port; }
bool Server::tls() const { return impl_->tls != nullptr; }

void Server::run() {
  auto& loops = impl_->loops;
  asio::co_spawn(*loops.front(), impl_->accept_loop(), asio::detached);
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < loops.size(); ++i) threads.emplace_back([l = loops[i].get()] { l->run(); });
  loops.front()->run();
  for (auto& t : threads) t.join();
  if (impl_->pool) impl_->pool->join();
}

void Server::wake_all() { impl_->wake_all(); }

void Server::stop() {
  asio::post(*impl_->loops.front(), [this] {
    boost::system::error_code ec;
    impl_->acceptor.close(ec);
    for (auto& l : impl_->loops) l->stop();
  });
}

}  // namespace ag::http
