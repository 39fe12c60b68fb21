#pragma once
// Internal to the worker: the per-thread runtime shared by worker.cpp (threads, listeners,
// sweeps) and connection.cpp (the request loop). Includes Asio; keep it out of other files.
#include <utility>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/basic_stream_socket.hpp>
#include <boost/asio/basic_waitable_timer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <atomic>
#include <mutex>
#include <unordered_map>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/snapshot.hpp"
#include "net/executor.hpp"
#include "gateway/stages/log/access_log.hpp"
#include "gateway/pipeline/context.hpp"
#include "gateway/pipeline/runner.hpp"
#include "gateway/stages/accept/client.hpp"
#include "gateway/stages/identify/credentials.hpp"
#include "gateway/stages/log/log_line.hpp"
#include "gateway/stages/proxy/headers.hpp"
#include "gateway/stages/risk/geoip.hpp"
#include "gateway/stages/risk/risk.hpp"
#include "gateway/worker.hpp"
#include "metrics/worker_metrics.hpp"
#include "ratelimit/local_store.hpp"

namespace ag::ratelimit {
class RedisLimiter;
}

namespace ag::gateway {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using net::Acceptor;
using net::Executor;
using net::Socket;
using net::Task;
using net::Timer;
using net::use_task;
using ratelimit::RedisLimiter;

// Something with a deadline, checked by the thread's sweep (one coarse timer per thread instead
// of a timer per operation: per-operation timers cost about a third of the throughput).
class Tracked {
 public:
  virtual ~Tracked() = default;
  // Called on the owning thread when the deadline has passed. Must cancel pending I/O.
  virtual void on_deadline() = 0;
  // Called when the worker starts draining. Idle connections close; busy ones finish.
  virtual void on_drain() = 0;
  std::int64_t deadline_ns = INT64_MAX;
  Tracked* prev = nullptr;
  Tracked* next = nullptr;
};

// TLS over an upstream's socket (https:// upstreams); the type lives where TLS is used
// (connection.hpp), so the TLS headers stay out of this one.
struct TlsStream;
struct TlsStreamDelete {
  void operator()(TlsStream* s) const noexcept;
};

struct UpstreamConn {
  explicit UpstreamConn(asio::io_context& ioc) : socket(ioc.get_executor()) {}
  Socket socket;
  std::unique_ptr<TlsStream, TlsStreamDelete> tls;  // set for https://; declared after `socket`, so destroyed first
  std::int64_t idle_since_ns = 0;
  std::string pool_key;
};

struct ThreadRuntime {
  ThreadRuntime(std::size_t index, const WorkerOptions& opts, metrics::Shard& shard, AccessLog& log,
                ratelimit::LocalStore& limiter, const std::vector<Cidr>& trusted);
  // Pooled sockets must go before the io_context they belong to.
  ~ThreadRuntime() { pools.clear(); }

  std::size_t index;
  const WorkerOptions& opts;
  // One thread runs this context; other threads only post() to it, so the reactor needs no locks.
  asio::io_context ioc{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  Acceptor acceptor{ioc.get_executor()};
  Timer sweep_timer{ioc.get_executor()};
  std::shared_ptr<const config::Snapshot> snapshot;  // replaced by publish(), never mutated
  metrics::Shard& metrics;
  AccessLog& log;
  ratelimit::LocalStore& limiter;
  RedisLimiter* redis = nullptr;
  const std::vector<Cidr>& trusted;
  bool draining = false;
  std::int64_t coarse_now_ns = 0;  // steady clock, refreshed per request and per sweep
  std::int64_t drain_deadline_ns = 0;
  // Hands the pending access-log lines to the writer: on every sweep, and at exit (the log
  // stage also does at 32 KiB).
  void flush_log();

  // Intrusive list of live client connections.
  Tracked* head = nullptr;
  std::size_t live = 0;
  void track(Tracked* t);
  void untrack(Tracked* t);

  // Keep-alive pools, by upstream "host:port". Most recently used at the back.
  std::unordered_map<std::string, std::vector<std::unique_ptr<UpstreamConn>>> pools;
  // `verify`: check the connection is still open first (for requests that cannot be retried).
  std::unique_ptr<UpstreamConn> take_pooled(const std::string& key, bool verify);
  void give_back(std::unique_ptr<UpstreamConn> c);
  void sweep(std::int64_t now_ns);

  // Service tokens: verified-token cache, claim checks, and the JTIs seen since the last report.
  TokenCache token_cache;
  TokenCheck token_check;
  stages::TokenUsage usage;
  // This thread's traffic counts for the control plane's rollups.
  stages::TrafficShard traffic;
  // Overload state shared by the threads (owned by the worker).
  std::atomic<std::int64_t>* open_connections = nullptr;
  std::atomic<bool>* memory_over = nullptr;
  std::int64_t last_shed_log_ns = 0;
  std::int64_t last_trim_ns = 0;
  // Risk engine (shared by the threads).
  RiskEngine* risk = nullptr;
  const GeoIp* geoip = nullptr;  // null without WORKER_GEOIP_DB
  // Round-robin positions, by service (its first target's state).
  std::unordered_map<const void*, std::uint32_t> rr;

  RequestIds ids;

  // The request pipeline (pipeline/runner.hpp), built once the services above are set.
  std::optional<Pipeline> pipeline;
  void build_pipeline(const stages::Accept::Config& accept);
};

// The request loop for one accepted client connection.
Task<void> serve_connection(ThreadRuntime& rt, Socket socket);

}  // namespace ag::gateway
