// Load generator for the Orbit relay (docs/relay.md; run by bench/relay/run.sh). One thread, one
// event loop, Beast WebSocket clients:
//   idle   N      open N client sockets, wait for every orbit.hello, print "ready", hold them
//                 until stdin closes (the script measures the control plane's memory meanwhile)
//   fanout N M    N clients follow one thread; an anchor sends M notifications to it, 20 ms
//                 apart; prints p50/p99/max delivery latency over N*M deliveries
//   rtt    S      one client, one anchor: request → anchor → response, one at a time, for S
//                 seconds; prints round trips per second and p50/p99
// Latency is measured with this process's steady clock, carried in the message.
#include <utility>  // before Asio: its awaitable.hpp uses std::exchange
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/websocket/stream.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using Ws = websocket::stream<beast::tcp_stream>;
using json = nlohmann::json;

// PORT, or ANCHOR_PORT,CLIENT_PORT: the anchor on one replica and the clients on another.
static std::string g_host = "127.0.0.1", g_anchor_port, g_client_port;

static std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static asio::awaitable<std::unique_ptr<Ws>> connect(std::string target) {
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  const std::string& port = target.rfind("/ws/anchor", 0) == 0 ? g_anchor_port : g_client_port;
  auto results = co_await resolver.async_resolve(g_host, port, asio::use_awaitable);
  auto ws = std::make_unique<Ws>(ex);
  co_await beast::get_lowest_layer(*ws).async_connect(results, asio::use_awaitable);
  beast::get_lowest_layer(*ws).socket().set_option(tcp::no_delay(true));
  beast::get_lowest_layer(*ws).expires_never();
  co_await ws->async_handshake(g_host, target, asio::use_awaitable);
  beast::flat_buffer b;
  co_await ws->async_read(b, asio::use_awaitable);  // orbit.hello
  ws->text(true);
  co_return ws;
}

static asio::awaitable<json> read_json(Ws& ws) {
  beast::flat_buffer b;
  co_await ws.async_read(b, asio::use_awaitable);
  co_return json::parse(beast::buffers_to_string(b.data()));
}

static asio::awaitable<void> send(Ws& ws, const json& j) {  // (callers name the json first: g++ 12 rejects braced lists in co_await)
  std::string s = j.dump();
  co_await ws.async_write(asio::buffer(s), asio::use_awaitable);
}

static void report(const char* what, std::vector<double>& v) {
  if (v.empty()) return;
  std::sort(v.begin(), v.end());
  std::printf("%s: n=%zu p50=%.3f ms p99=%.3f ms max=%.3f ms\n", what, v.size(), v[v.size() / 2],
              v[std::min(v.size() - 1, v.size() * 99 / 100)], v.back());
}

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: relay_bench PORT[,CLIENT_PORT] CLIENT_TOKEN DEVICE_TOKEN idle N | fanout N M | rtt SECONDS\n");
    return 2;
  }
  std::string ports = argv[1];
  g_anchor_port = ports.substr(0, ports.find(','));
  g_client_port = ports.find(',') == std::string::npos ? g_anchor_port : ports.substr(ports.find(',') + 1);
  const std::string client = "/ws/client?token=" + std::string(argv[2]);
  const std::string anchor = "/ws/anchor?token=" + std::string(argv[3]) + "&anchorId=bench";
  const std::string mode = argv[4];
  const int n = std::atoi(argv[5]);
  const int m = argc > 6 ? std::atoi(argv[6]) : 0;
  asio::io_context ioc;
  std::vector<std::unique_ptr<Ws>> keep;
  int failures = 0;

  if (mode == "idle") {
    asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
      for (int i = 0; i < n; ++i) {
        try {
          keep.push_back(co_await connect(client));
        } catch (const std::exception& e) {
          if (++failures == 1) std::fprintf(stderr, "connect failed: %s\n", e.what());
        }
      }
      std::printf("ready %zu sockets (%d failed)\n", keep.size(), failures);
      std::fflush(stdout);
    }, asio::detached);
    ioc.run();
    std::string line;
    std::getline(std::cin, line);  // hold until told
    return failures == 0 ? 0 : 1;
  }

  if (mode == "fanout") {
    std::vector<double> lat;
    asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
      auto a = co_await connect(anchor);
      { const json msg = {{"type", "anchor.hello"}, {"anchorId", "bench"}, {"hostname", "bench"}, {"platform", "linux"}}; co_await send(*a, msg); }
      std::vector<std::unique_ptr<Ws>> subs;
      for (int i = 0; i < n; ++i) {
        auto c = co_await connect(client);
        { const json msg = {{"type", "orbit.subscribe"}, {"threadId", "bench"}}; co_await send(*c, msg); }
        for (;;) {
          json j = co_await read_json(*c);
          if (j.value("type", "") == "orbit.subscribed") break;
        }
        subs.push_back(std::move(c));
      }
      // Each subscriber reads its M notifications.
      int done = 0;
      for (auto& c : subs)
        asio::co_spawn(ioc, [&, ws = c.get()]() -> asio::awaitable<void> {
          int got = 0;
          beast::flat_buffer b;
          while (got < m) {
            b.consume(b.size());
            co_await ws->async_read(b, asio::use_awaitable);
            const std::int64_t arrived = now_ns();
            // The send time, without parsing the whole message (the client's cost stays small).
            std::string text = beast::buffers_to_string(b.data());
            auto at = text.find("\"t\":");
            if (text.find("\"tick\"") == std::string::npos || at == std::string::npos) continue;
            lat.push_back(static_cast<double>(arrived - std::stoll(text.substr(at + 4))) / 1e6);
            ++got;
          }
          ++done;
        }, asio::detached);
      asio::steady_timer t(ioc);
      for (int k = 0; k < m; ++k) {
        t.expires_after(std::chrono::milliseconds(20));
        co_await t.async_wait(asio::use_awaitable);
        { const json msg = {{"method", "tick"}, {"params", {{"threadId", "bench"}, {"t", now_ns()}}}}; co_await send(*a, msg); }
      }
      while (done < n) {
        t.expires_after(std::chrono::milliseconds(5));
        co_await t.async_wait(asio::use_awaitable);
      }
      keep = std::move(subs);
      keep.push_back(std::move(a));
      ioc.stop();
    }, asio::detached);
    ioc.run();
    char what[64];
    std::snprintf(what, sizeof what, "fanout to %d", n);
    report(what, lat);
    return 0;
  }

  if (mode == "rtt") {
    std::vector<double> lat;
    asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
      auto a = co_await connect(anchor);
      { const json msg = {{"type", "anchor.hello"}, {"anchorId", "bench"}, {"hostname", "bench"}, {"platform", "linux"}}; co_await send(*a, msg); }
      auto c = co_await connect(client);
      // The anchor answers every request at once.
      asio::co_spawn(ioc, [&, ws = a.get()]() -> asio::awaitable<void> {
        for (;;) {
          json j = co_await read_json(*ws);
          if (!j.contains("method") || !j.contains("id")) continue;
          { const json msg = {{"id", j["id"]}, {"result", {{"threadId", "rtt"}}}}; co_await send(*ws, msg); }
        }
      }, asio::detached);
      const std::int64_t end = now_ns() + static_cast<std::int64_t>(n) * 1'000'000'000;
      std::int64_t id = 0;
      while (now_ns() < end) {
        std::int64_t t0 = now_ns();
        { const json msg = {{"id", ++id}, {"method", "echo"}, {"params", {{"threadId", "rtt"}}}}; co_await send(*c, msg); }
        for (;;) {
          json j = co_await read_json(*c);
          if (j.contains("result") || j.contains("error")) break;
        }
        lat.push_back(static_cast<double>(now_ns() - t0) / 1e6);
      }
      std::printf("round trips: %zu in %d s = %.0f per second\n", lat.size(), n, static_cast<double>(lat.size()) / n);
      ioc.stop();
    }, asio::detached);
    ioc.run();
    report("round trip", lat);
    return 0;
  }
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}
