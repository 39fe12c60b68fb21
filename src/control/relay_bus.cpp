#include "control/relay_bus.hpp"

#include <spdlog/spdlog.h>
#include <sys/select.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "common/crypto.hpp"
#include "control/store/pq.hpp"
#include "relay/hub.hpp"

namespace ag::control {

namespace {
constexpr std::size_t kMaxQueued = 100'000;  // envelopes waiting for a lost connection; then the oldest go
}

struct PgRelayBus::Impl {
  Impl(std::string c, relay::Relay& r) : conninfo(std::move(c)), relay(r) {
    char host[128] = {};
    ::gethostname(host, sizeof host - 1);
    replica = std::string(host) + "-" + std::to_string(::getpid()) + "-" + crypto::random_base62(6);
  }
  std::string conninfo;
  relay::Relay& relay;
  std::string replica;
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> queue;
  std::thread listener, publisher;

  void listen_loop() {
    auto& pq = ag::pq::api();
    auto next_beat = std::chrono::steady_clock::now();
    auto next_sweep = next_beat;
    while (!stop) {
      PGconn* conn = pq.PQconnectdb(conninfo.c_str());
      if (pq.PQstatus(conn) == CONNECTION_OK) {
        PGresult* r = pq.PQexec(conn, "LISTEN ag_relay");
        bool ok = pq.PQresultStatus(r) == PGRES_COMMAND_OK;
        pq.PQclear(r);
        while (ok && !stop && pq.PQstatus(conn) == CONNECTION_OK) {
          if (std::chrono::steady_clock::now() >= next_beat) {
            relay.heartbeat();
            next_beat = std::chrono::steady_clock::now() + std::chrono::milliseconds(relay::Hub::kHeartbeatMs);
          }
          if (std::chrono::steady_clock::now() >= next_sweep) {
            relay.sweep();
            next_sweep = std::chrono::steady_clock::now() + std::chrono::seconds(1);
          }
          int fd = pq.PQsocket(conn);
          fd_set set;
          FD_ZERO(&set);
          FD_SET(fd, &set);
          timeval tv{0, 200'000};
          if (select(fd + 1, &set, nullptr, nullptr, &tv) < 0) break;
          if (!pq.PQconsumeInput(conn)) break;
          while (PGnotify* n = pq.PQnotifies(conn)) {
            relay.on_remote(n->extra);
            pq.PQfreemem(n);
          }
        }
      } else {
        spdlog::warn("relay bus: cannot listen on PostgreSQL ({}); retrying", pq.PQerrorMessage(conn));
      }
      pq.PQfinish(conn);
      for (int i = 0; i < 10 && !stop; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  void publish_loop() {
    auto& pq = ag::pq::api();
    PGconn* conn = nullptr;
    auto connect = [&] {
      if (conn) pq.PQfinish(conn);
      conn = pq.PQconnectdb(conninfo.c_str());
      if (pq.PQstatus(conn) != CONNECTION_OK) return false;
      PGresult* r = pq.PQprepare(conn, "notify", "SELECT pg_notify('ag_relay', $1)", 1, nullptr);
      bool ok = pq.PQresultStatus(r) == PGRES_COMMAND_OK;
      pq.PQclear(r);
      return ok;
    };
    bool up = connect();
    for (;;) {
      std::string env;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stop || !queue.empty(); });
        if (stop) break;
        env = std::move(queue.front());
        queue.pop_front();
      }
      // In order: the same envelope is retried until it goes (or the bus stops).
      while (!stop) {
        if (!up) {
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
          up = connect();
          continue;
        }
        const char* values[1] = {env.c_str()};
        PGresult* r = pq.PQexecPrepared(conn, "notify", 1, values, nullptr, nullptr, 0);
        bool ok = pq.PQresultStatus(r) == PGRES_TUPLES_OK;
        pq.PQclear(r);
        if (ok) break;
        spdlog::warn("relay bus: NOTIFY failed ({}); reconnecting", pq.PQerrorMessage(conn));
        up = false;
      }
    }
    if (conn) pq.PQfinish(conn);
  }
};

PgRelayBus::PgRelayBus(std::string conninfo, relay::Relay& relay)
    : impl_(std::make_unique<Impl>(std::move(conninfo), relay)) {
  relay.attach(this, impl_->replica);
  impl_->publisher = std::thread([this] { impl_->publish_loop(); });
  impl_->listener = std::thread([this] { impl_->listen_loop(); });
  spdlog::info("relay: replica {} routes to other replicas through PostgreSQL (LISTEN ag_relay)", impl_->replica);
}

PgRelayBus::~PgRelayBus() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  impl_->listener.join();
  impl_->publisher.join();
}

void PgRelayBus::publish(std::string envelope) {
  {
    std::lock_guard lock(impl_->mu);
    impl_->queue.push_back(std::move(envelope));
    if (impl_->queue.size() > kMaxQueued) impl_->queue.pop_front();
  }
  impl_->cv.notify_one();
}

const std::string& PgRelayBus::replica_id() const { return impl_->replica; }

}  // namespace ag::control
