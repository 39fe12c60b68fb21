#pragma once
// The worker (data plane): thread-per-core event loops behind one SO_REUSEPORT port, an admin
// listener, and a config source. Asio stays out of this header.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config/snapshot.hpp"

namespace ag::gateway {

namespace strict {
enum class Underscores : std::uint8_t;  // strict_http.hpp: kDrop (the zero value), kAllow, kReject
}

struct WorkerOptions {
  std::string listen_host = "0.0.0.0";
  std::uint16_t listen_port = 8080;
  std::string admin_host = "127.0.0.1";
  std::uint16_t admin_port = 9901;
  int threads = 0;  // 0 = number of cores
  std::string trusted_proxies;
  std::int64_t header_timeout_ms = 10'000;
  std::int64_t idle_timeout_ms = 60'000;
  std::int64_t upstream_connect_timeout_ms = 3'000;
  std::int64_t upstream_timeout_ms = 30'000;
  std::int64_t upstream_idle_ms = 30'000;  // pooled upstream connections older than this are closed
  // https:// upstreams are verified against the system trust store plus this PEM bundle (if set).
  std::string upstream_ca_file;
  std::int64_t drain_ms = 15'000;
  std::size_t max_header_bytes = 16 * 1024;
  std::string access_log = "stdout";
  std::string redis_url;
  // Config source: a file, or the control plane.
  std::string config_file;
  std::string control_url;
  std::string control_secret;
  std::int64_t poll_ms = 2'000;       // file mode: how often the file is checked
  std::int64_t long_poll_sec = 25;     // control plane: how long a request may be held
  std::string snapshot_path = "worker-snapshot.json";  // "" or "off": not saved
  std::int64_t snapshot_interval_ms = 5'000;
  std::int64_t snapshot_max_age_ms = 86'400'000;
  bool journal_fsync = false;  // WORKER_JOURNAL_FSYNC: fdatasync each journal append
  // Request paths and headers (docs/worker.md, "Strict HTTP").
  bool normalize_path = true;  // WORKER_PATH_NORMALIZATION: dot segments removed (RFC 3986 5.2.4)
  bool merge_slashes = true;   // WORKER_MERGE_SLASHES
  strict::Underscores underscore_headers{};  // WORKER_UNDERSCORE_HEADERS (drop)
  // File mode with a directory of YAML files (docs/services-and-tokens.md).
  std::string config_dir;
  // Service tokens.
  std::string jwt_secret;    // HS256 verification (GATEWAY_JWT_SECRET)
  std::string jwt_audience;  // GATEWAY_JWT_AUDIENCE
  std::string jwt_issuer;    // GATEWAY_JWT_ISSUER
  std::int64_t jwt_leeway_sec = 30;
  std::int64_t usage_report_ms = 30'000;  // how often token use is reported to the control plane
  std::int64_t traffic_report_ms = 10'000;  // how often traffic counts are reported to the control plane
  // Risk engine (docs/risk.md).
  std::string ip_deny, ip_allow;              // CIDR lists, checked before anything else
  std::int64_t auth_failure_limit = 50;        // failed authentications per IP per window (0 = off)
  std::int64_t auth_failure_window_sec = 60;
  std::size_t risk_slots = 1u << 16;           // entries per state table
  std::string geoip_db;                        // MaxMind-format database for country rules
  // Overload: new connections beyond these get 503 and are closed (existing ones keep working).
  std::int64_t max_connections = 0;  // 0 = derived from the open-file limit
  std::int64_t max_memory_mb = 0;    // resident memory; 0 = no limit
  // How long start-up waits for the first config before accepting connections anyway.
  std::int64_t ready_wait_ms = 5'000;
};

// Reads WORKER_* / CONTROL_* / REDIS_URL from the environment; throws std::runtime_error naming
// the variable on a bad value.
WorkerOptions load_worker_options();

class Worker {
 public:
  explicit Worker(WorkerOptions options);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Binds the listeners (throws with a clear message), starts the threads and the config source.
  void start();
  std::uint16_t port() const;
  std::uint16_t admin_port() const;
  // Begins a graceful shutdown (thread-safe, idempotent).
  void shutdown();
  // Blocks until every thread has stopped; then flushes the access log.
  void wait();
  // Publishes a new config snapshot to every thread.
  void publish(std::shared_ptr<const config::Snapshot> snapshot);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Runs a worker until SIGTERM/SIGINT, then drains. Returns the exit code.
int run_worker(WorkerOptions options);

}  // namespace ag::gateway
