#include "http/server.hpp"

#include <utility>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <cctype>
#include <stdexcept>
#include <thread>

namespace ag::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

struct Server::Impl {
  ServerOptions options;
  RequestHandler handler;
  ProtocolErrorHandler on_error;
  asio::io_context ioc;
  tcp::acceptor acceptor{ioc};
  std::uint16_t port = 0;

  // Long polls. Each session runs on its own strand, so a wake-up posted to that strand cannot
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
      : options(std::move(o)), handler(std::move(h)), on_error(std::move(e)), ioc(options.threads) {}

  asio::awaitable<void> accept_loop() {
    for (;;) {
      boost::system::error_code ec;
      tcp::socket socket = co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        spdlog::warn("accept failed: {}", ec.message());
        continue;
      }
      asio::co_spawn(asio::make_strand(ioc), session(std::move(socket)), asio::detached);
    }
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
    r.body = std::move(msg.body());
    r.remote_ip = ip;
    return r;
  }

  asio::awaitable<void> write_response(beast::tcp_stream& stream, Response& res, bool keep_alive,
                                       bool head, unsigned version, boost::system::error_code& ec) {
    bhttp::response<bhttp::string_body> msg{static_cast<bhttp::status>(res.status), version};
    for (auto& h : res.headers) msg.set(h.name, h.value);
    msg.keep_alive(keep_alive);
    msg.body() = std::move(res.body);
    msg.prepare_payload();
    stream.expires_after(std::chrono::seconds(options.idle_timeout_sec));
    if (head) {
      bhttp::response_serializer<bhttp::string_body> sr{msg};
      co_await bhttp::async_write_header(stream, sr, asio::redirect_error(asio::use_awaitable, ec));
    } else {
      co_await bhttp::async_write(stream, msg, asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  asio::awaitable<void> session(tcp::socket socket) {
    std::string ip;
    {
      boost::system::error_code ec;
      auto ep = socket.remote_endpoint(ec);
      if (!ec) ip = ep.address().to_string();
      // A response written in two pieces (head, then body) would otherwise wait for the peer's
      // delayed ACK (~40 ms, Nagle's algorithm): measured as a 44-49 ms mode in the change
      // stream's revocation latency on an idle stack.
      socket.set_option(tcp::no_delay(true), ec);
    }
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    for (;;) {
      bhttp::request_parser<bhttp::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(options.header_limit));
      parser.body_limit(options.body_limit);
      stream.expires_after(std::chrono::seconds(options.idle_timeout_sec));
      boost::system::error_code ec;
      co_await bhttp::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        if (ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
            ec == asio::error::connection_reset || ec == beast::error::timeout ||
            ec == asio::error::operation_aborted)
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
      Request req = to_request(msg, ip);
      std::uint64_t gen = generation.load();
      Response res = handler(req);
      if (res.deferred) {
        auto w = std::make_shared<Waiter>(co_await asio::this_coro::executor);
        {
          std::lock_guard lock(waiters_mutex);
          waiters.insert(w);
        }
        if (generation.load() == gen) {
          w->timer.expires_after(res.defer_for);
          boost::system::error_code wec;
          co_await w->timer.async_wait(asio::redirect_error(asio::use_awaitable, wec));
        }
        {
          std::lock_guard lock(waiters_mutex);
          waiters.erase(w);
        }
        res = res.deferred();
      }
      co_await write_response(stream, res, keep_alive, head, version, ec);
      if (ec || !keep_alive) break;
    }
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }
};

Server::Server(ServerOptions options, RequestHandler handler, ProtocolErrorHandler on_error)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler), std::move(on_error))) {}

Server::~Server() = default;

void Server::listen() {
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(impl_->options.host, ec);
  if (ec) throw std::runtime_error("invalid listen address '" + impl_->options.host + "'");
  tcp::endpoint ep{addr, impl_->options.port};
  auto& a = impl_->acceptor;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error("cannot listen on " + impl_->options.host + ":" +
                             std::to_string(impl_->options.port) + ": " + ec.message());
  impl_->port = a.local_endpoint().port();
}

std::uint16_t Server::bound_port() const { return impl_->port; }

void Server::run() {
  asio::co_spawn(impl_->ioc, impl_->accept_loop(), asio::detached);
  std::vector<std::thread> threads;
  for (int i = 1; i < impl_->options.threads; ++i) threads.emplace_back([this] { impl_->ioc.run(); });
  impl_->ioc.run();
  for (auto& t : threads) t.join();
}

void Server::wake_all() { impl_->wake_all(); }

void Server::stop() {
  asio::post(impl_->ioc, [this] {
    boost::system::error_code ec;
    impl_->acceptor.close(ec);
    impl_->ioc.stop();
  });
}

}  // namespace ag::http
