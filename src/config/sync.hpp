#pragma once
// Where the worker's config comes from, behind one interface: the control plane
// (GET /internal/worker/config, polled with If-None-Match) or a file (reloaded when it changes).
// Each source runs on its own thread, builds snapshots off the request path, and hands every
// good one to `publish`. A document that fails to build is logged and dropped: the previous
// snapshot stays in force.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "config/snapshot.hpp"

namespace ag::config {

struct SyncStats {
  std::atomic<std::int64_t> last_ok_ms{0};  // last successful contact (200 or 304)
  std::atomic<std::uint64_t> errors{0};
};

using PublishFn = std::function<void(std::shared_ptr<const Snapshot>)>;

class ConfigSource {
 public:
  virtual ~ConfigSource() = default;
  virtual void start() = 0;
  virtual void stop() = 0;
  SyncStats stats;
};

struct ControlPlaneSourceOptions {
  std::string base_url;  // http://host:port
  std::string secret;
  std::chrono::milliseconds poll_interval{2000};
  std::chrono::milliseconds timeout{10000};
  std::chrono::milliseconds max_backoff{30000};
};

std::unique_ptr<ConfigSource> make_control_plane_source(ControlPlaneSourceOptions opts, PublishFn publish);
std::unique_ptr<ConfigSource> make_file_source(std::string path, std::chrono::milliseconds poll, PublishFn publish);

}  // namespace ag::config
