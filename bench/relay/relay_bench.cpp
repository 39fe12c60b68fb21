// Load generator for the Orbit relay (docs/relay.md; run by bench/relay/run.sh). One event loop
// with Beast WebSocket clients (and, for the fan-out's subscribers, plain epoll reader threads):
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

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>
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

// Reads server frames (unmasked) from every socket until each has seen M "tick" messages; records
// arrival minus the send time the anchor put in the message ("t", this process's steady clock).
static void read_ticks(std::vector<int> fds, int m, std::vector<double>& lat) {
  struct Conn {
    std::string buf;
    int got = 0;
  };
  std::vector<Conn> conns(fds.size());
  int ep = ::epoll_create1(0);
  for (std::size_t i = 0; i < fds.size(); ++i) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
  }
  std::vector<epoll_event> evs(1024);
  char chunk[16384];
  lat.reserve(fds.size() * static_cast<std::size_t>(m));
  std::size_t done = 0;
  while (done < fds.size()) {
    int k = ::epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 5000);
    if (k <= 0) break;  // nothing for 5 s: the relay dropped something
    for (int e = 0; e < k; ++e) {
      auto i = evs[e].data.u64;
      Conn& c = conns[i];
      ssize_t r = ::recv(fds[i], chunk, sizeof chunk, 0);
      const std::int64_t arrived = now_ns();
      if (r <= 0) {
        ::epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], nullptr);
        continue;
      }
      c.buf.append(chunk, static_cast<std::size_t>(r));
      // Whole frames: FIN+opcode, then a 7-bit, 16-bit or 64-bit length (a server never masks).
      std::size_t pos = 0;
      for (;;) {
        if (c.buf.size() - pos < 2) break;
        auto b1 = static_cast<unsigned char>(c.buf[pos + 1]);
        std::size_t len = b1 & 0x7f, head = 2;
        if (len == 126) {
          if (c.buf.size() - pos < 4) break;
          len = (static_cast<unsigned char>(c.buf[pos + 2]) << 8) | static_cast<unsigned char>(c.buf[pos + 3]);
          head = 4;
        } else if (len == 127) {
          if (c.buf.size() - pos < 10) break;
          len = 0;
          for (int b = 0; b < 8; ++b) len = (len << 8) | static_cast<unsigned char>(c.buf[pos + 2 + b]);
          head = 10;
        }
        if (c.buf.size() - pos < head + len) break;
        std::string_view text(c.buf.data() + pos + head, len);
        pos += head + len;
        auto at = text.find("\"t\":");
        if (text.find("\"tick\"") == std::string_view::npos || at == std::string_view::npos) continue;
        lat.push_back(static_cast<double>(arrived - std::strtoll(text.data() + at + 4, nullptr, 10)) / 1e6);
        if (++c.got == m) ++done;
      }
      c.buf.erase(0, pos);
    }
  }
  ::close(ep);
}

// This process's user + system CPU time so far, in microseconds.
static double cpu_us() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 + static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// The relay's CPU time (utime + stime from /proc, microseconds) summed over the processes named in
// RELAY_PIDS (space-separated); 0 without it.
static double relay_cpu_us() {
  const char* pids = std::getenv("RELAY_PIDS");
  if (!pids) return 0;
  double total = 0;
  std::istringstream in(pids);
  std::string pid;
  while (in >> pid) {
    std::ifstream f("/proc/" + pid + "/stat");
    std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) continue;
    std::istringstream fields(stat.substr(close_paren + 2));
    std::string skip;
    for (int i = 3; i < 14; ++i) fields >> skip;  // state .. cmajflt: fields 3-13
    double utime = 0, stime = 0;
    fields >> utime >> stime;
    total += (utime + stime) * 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }
  return total;
}

// read_ticks on one thread per core, each with every R-th socket, from construction to join(),
// which returns every latency they recorded.
class Readers {
 public:
  Readers(const std::vector<int>& fds, int m) {
    const std::size_t r = std::max(1u, std::thread::hardware_concurrency());
    lats_.resize(r);  // before any thread starts: each keeps a reference to its own
    for (std::size_t i = 0; i < r; ++i) {
      std::vector<int> mine;
      for (std::size_t k = i; k < fds.size(); k += r) mine.push_back(fds[k]);
      threads_.emplace_back([this, i, mine = std::move(mine), m] { read_ticks(mine, m, lats_[i]); });
    }
  }
  Readers(const Readers&) = delete;
  Readers& operator=(const Readers&) = delete;
  std::vector<double> join() {
    std::vector<double> all;
    for (std::size_t i = 0; i < threads_.size(); ++i) {
      threads_[i].join();
      all.insert(all.end(), lats_[i].begin(), lats_[i].end());
    }
    return all;
  }

 private:
  std::vector<std::vector<double>> lats_;
  std::vector<std::thread> threads_;
};

// The calling thread's CPU time, in microseconds.
static double thread_cpu_us() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

static void report(const char* what, std::vector<double>& v) {
  if (v.empty()) return;
  std::sort(v.begin(), v.end());
  std::printf("%s: n=%zu p50=%.3f ms p99=%.3f ms max=%.3f ms\n", what, v.size(), v[v.size() / 2],
              v[std::min(v.size() - 1, v.size() * 99 / 100)], v.back());
}

// The floor under any relay on this machine: N loopback TCP connections, two sender threads that
// each write a ready-made WebSocket frame to half of them (the first wakes on a timer, stamps the
// time and hands the second its half through an eventfd, as a relay's I/O threads do), and the
// same readers as the fan-out. What it costs is the kernel's loopback path and the readers; a
// relay's fan-out figure is this plus the relay's own work.
static int floor_run(int n, int m) {
  int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(lfd, 4096) != 0 ||
      ::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("listen");
    return 1;
  }
  std::vector<int> readers_fds, senders_fds;
  for (int i = 0; i < n; ++i) {
    int c = ::socket(AF_INET, SOCK_STREAM, 0);
    if (::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      std::perror("connect");
      return 1;
    }
    int s = ::accept(lfd, nullptr, nullptr);
    int one = 1;
    ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    readers_fds.push_back(c);
    senders_fds.push_back(s);
  }
  int handoff = ::eventfd(0, 0);
  std::atomic<std::int64_t> stamp{0};
  auto frame = [](std::int64_t t) {
    std::string text = "{\"method\":\"tick\",\"params\":{\"threadId\":\"bench\",\"t\":" + std::to_string(t) + "}}";
    std::string f = {static_cast<char>(0x81), static_cast<char>(text.size())};
    return f + text;
  };
  auto send_half = [&](std::size_t first, const std::string& f) {
    for (std::size_t i = first; i < senders_fds.size(); i += 2) ::send(senders_fds[i], f.data(), f.size(), MSG_NOSIGNAL);
  };
  std::atomic<double> second_cpu{0};
  std::thread second([&] {
    for (int k = 0; k < m; ++k) {
      std::uint64_t v;
      if (::read(handoff, &v, sizeof v) != sizeof v) return;
      send_half(1, frame(stamp.load()));
    }
    second_cpu = thread_cpu_us();
  });
  const double cpu_before = cpu_us();
  Readers readers(readers_fds, m);
  const double first_before = thread_cpu_us();  // this thread connected the sockets before
  for (int k = 0; k < m; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const std::int64_t t = now_ns();
    stamp = t;
    std::uint64_t one = 1;
    if (::write(handoff, &one, sizeof one) != sizeof one) return 1;
    send_half(0, frame(t));
  }
  const double first_cpu = thread_cpu_us() - first_before;
  second.join();
  std::vector<double> lat = readers.join();
  const double cpu_after = cpu_us();
  char what[64];
  std::snprintf(what, sizeof what, "floor: fanout to %d", n);
  report(what, lat);
  if (!lat.empty())
    std::printf("floor: CPU per delivery: senders %.2f us, senders and readers together %.2f us\n",
                (first_cpu + second_cpu.load()) / static_cast<double>(lat.size()),
                (cpu_after - cpu_before) / static_cast<double>(lat.size()));
  for (int fd : readers_fds) ::close(fd);
  for (int fd : senders_fds) ::close(fd);
  ::close(lfd);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "floor") return floor_run(std::atoi(argv[2]), std::atoi(argv[3]));
  if (argc < 6) {
    std::fprintf(stderr, "usage: relay_bench PORT[,CLIENT_PORT] CLIENT_TOKEN DEVICE_TOKEN idle N | fanout N M | rtt SECONDS\n"
                         "       relay_bench floor N M\n");
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
    std::vector<int> fds_to_close;
    double cpu_before = 0, cpu_after = 0, relay_before = 0, relay_after = 0;
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
      // The subscribers' sockets leave Asio for plain epoll loops, one thread per core, each with
      // every R-th socket: a read costs this process ~5 µs instead of a coroutine's ~12, and no
      // core sits idle while the relay's last messages wait to be read, so on a 2-core machine
      // the figure is the relay's fan-out, not this generator's backlog.
      for (auto& c : subs) fds_to_close.push_back(beast::get_lowest_layer(*c).socket().release());
      cpu_before = cpu_us();
      relay_before = relay_cpu_us();
      Readers readers(fds_to_close, m);
      asio::steady_timer t(ioc);
      for (int k = 0; k < m; ++k) {
        t.expires_after(std::chrono::milliseconds(20));
        co_await t.async_wait(asio::use_awaitable);
        { const json msg = {{"method", "tick"}, {"params", {{"threadId", "bench"}, {"t", now_ns()}}}}; co_await send(*a, msg); }
      }
      lat = readers.join();
      cpu_after = cpu_us();
      relay_after = relay_cpu_us();
      keep = std::move(subs);
      keep.push_back(std::move(a));
      ioc.stop();
    }, asio::detached);
    ioc.run();
    for (int fd : fds_to_close) ::close(fd);
    char what[64];
    std::snprintf(what, sizeof what, "fanout to %d", n);
    report(what, lat);
    if (!lat.empty())
      std::printf("CPU per delivery while fanning out: relay %.2f us, load generator %.2f us\n",
                  (relay_after - relay_before) / static_cast<double>(lat.size()),
                  (cpu_after - cpu_before) / static_cast<double>(lat.size()));
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
