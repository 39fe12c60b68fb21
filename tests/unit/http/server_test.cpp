// The HTTP server: blocking handlers on their pool leave the I/O thread free; a route can take
// over an upgraded connection (here a WebSocket echo, with Beast's websocket::stream on both
// sides); long polls hold no handler thread.
#include "http/server.hpp"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "http/upgrade.hpp"

namespace ag::http {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace websocket = boost::beast::websocket;
using tcp = asio::ip::tcp;

struct Running {
  explicit Running(ServerOptions o, RequestHandler h)
      : server(std::move(o), std::move(h), [](int status, std::string detail) {
          Response r;
          r.status = status;
          r.body = detail;
          return r;
        }) {
    server.listen();
    thread = std::thread([this] { server.run(); });
  }
  ~Running() {
    server.stop();
    thread.join();
  }
  Server server;
  std::thread thread;
};

// One GET on a new connection; returns status and body.
std::pair<int, std::string> get(std::uint16_t port, const std::string& target) {
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect({asio::ip::make_address("127.0.0.1"), port});
  bhttp::request<bhttp::empty_body> req{bhttp::verb::get, target, 11};
  req.set(bhttp::field::host, "localhost");
  bhttp::write(s, req);
  beast::flat_buffer buf;
  bhttp::response<bhttp::string_body> res;
  bhttp::read(s, buf, res);
  return {static_cast<int>(res.result_int()), res.body()};
}

Response text(std::string body) {
  Response r;
  r.body = std::move(body);
  return r;
}

TEST(Server, BlockingHandlerLeavesTheIoThreadFree) {
  ServerOptions o;
  o.port = 0;
  o.threads = 1;          // one I/O thread
  o.handler_threads = 2;  // a pool of two
  std::promise<void> release;
  auto released = release.get_future().share();
  std::atomic<int> slow_done{0};
  Running r(o, [&](Request& q) {
    if (q.path == "/slow") {
      released.wait();  // blocks a pool thread until the test lets it go
      ++slow_done;
      return text("slow");
    }
    return text("fast");
  });
  auto port = r.server.bound_port();
  auto slow = std::async(std::launch::async, [&] { return get(port, "/slow"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // With handlers on the I/O thread this request would wait for /slow; on the pool it does not.
  auto fast = get(port, "/fast");
  EXPECT_EQ(fast.second, "fast");
  EXPECT_EQ(slow_done.load(), 0) << "the fast answer came while the slow handler still blocked";
  release.set_value();
  EXPECT_EQ(slow.get().second, "slow");
}

TEST(Server, InlineRequestsAnswerWhileThePoolIsFull) {
  ServerOptions o;
  o.port = 0;
  o.threads = 1;
  o.handler_threads = 1;
  o.runs_inline = [](const Request& q) { return q.path == "/static"; };
  std::promise<void> release;
  auto released = release.get_future().share();
  Running r(o, [&](Request& q) {
    if (q.path == "/slow") released.wait();
    return text(q.path);
  });
  auto port = r.server.bound_port();
  auto slow = std::async(std::launch::async, [&] { return get(port, "/slow"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(get(port, "/static").second, "/static");  // the only pool thread is blocked
  release.set_value();
  EXPECT_EQ(slow.get().second, "/slow");
}

TEST(Server, LongPollsHoldNoHandlerThread) {
  ServerOptions o;
  o.port = 0;
  o.threads = 1;
  o.handler_threads = 1;
  Running r(o, [&](Request& q) {
    if (q.path != "/poll") return text("other");
    Response held;
    held.defer_for = std::chrono::seconds(30);
    held.deferred = [] { return text("woken"); };
    return held;
  });
  auto port = r.server.bound_port();
  std::vector<std::future<std::pair<int, std::string>>> polls;
  for (int i = 0; i < 3; ++i) polls.push_back(std::async(std::launch::async, [&] { return get(port, "/poll"); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(get(port, "/x").second, "other");  // three held polls, one handler thread, still free
  r.server.wake_all();
  for (auto& p : polls) EXPECT_EQ(p.get().second, "woken");
}

TEST(Server, ALongPollWokenForNothingIsHeldAgain) {
  ServerOptions o;
  o.port = 0;
  o.threads = 1;
  o.handler_threads = 1;
  std::atomic<int> checks{0};
  Running r(o, [&](Request&) {
    Response held;
    held.defer_for = std::chrono::seconds(30);
    held.deferred = [&] {
      if (++checks == 1) {  // the first wake-up brought nothing for this poll: hold again
        Response again;
        again.defer_for = std::chrono::seconds(30);
        again.deferred = [] { return text("changed"); };
        return again;
      }
      return text("unexpected");
    };
    return held;
  });
  auto port = r.server.bound_port();
  auto poll = std::async(std::launch::async, [&] { return get(port, "/poll"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  r.server.wake_all();
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_EQ(checks.load(), 1);
  EXPECT_EQ(poll.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout) << "still held";
  r.server.wake_all();
  EXPECT_EQ(poll.get().second, "changed");
}

asio::awaitable<void> echo(std::unique_ptr<UpgradedConnection> up) {
  auto& plain = std::get<UpgradedConnection::Plain>(up->stream);
  websocket::stream<beast::tcp_stream> ws(std::move(plain));
  co_await ws.async_accept(up->request, asio::use_awaitable);
  for (;;) {
    beast::flat_buffer buf;
    boost::system::error_code ec;
    co_await ws.async_read(buf, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    ws.text(ws.got_text());
    co_await ws.async_write(buf.data(), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
  }
}

TEST(Server, RouteTakesOverAnUpgradedConnection) {
  ServerOptions o;
  o.port = 0;
  o.threads = 1;
  o.handler_threads = 1;
  Running r(o, [&](Request& q) {
    if (q.path != "/ws") return text("plain");
    Response res;
    res.take_over = [](std::unique_ptr<UpgradedConnection> up) {
      auto ex = std::get<UpgradedConnection::Plain>(up->stream).get_executor();
      asio::co_spawn(ex, echo(std::move(up)), asio::detached);
    };
    return res;
  });
  asio::io_context ioc;
  websocket::stream<tcp::socket> ws(ioc);
  ws.next_layer().connect({asio::ip::make_address("127.0.0.1"), r.server.bound_port()});
  ws.handshake("localhost", "/ws");
  for (std::string msg : {"hello", "second message"}) {
    ws.write(asio::buffer(msg));
    beast::flat_buffer buf;
    ws.read(buf);
    EXPECT_EQ(beast::buffers_to_string(buf.data()), msg);
  }
  ws.close(websocket::close_code::normal);
  EXPECT_EQ(get(r.server.bound_port(), "/other").second, "plain");  // the server goes on
}

}  // namespace
}  // namespace ag::http
