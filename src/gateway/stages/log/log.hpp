#pragma once
// Stage 7, log: exactly once per request, whatever happened (proxied, answered locally, cut
// short): one JSON access-log line (log_line.hpp), the request's metrics, and its project's
// traffic tally for the control plane's rollups (traffic.hpp). Lines collect per
// thread and go to the log writer in batches of 32 KiB, on every sweep, and at exit (flush()).
#include <cstdint>
#include <string>

#include "gateway/pipeline/context.hpp"
#include "gateway/stages/log/traffic.hpp"

namespace ag::metrics {
class Shard;
}

namespace ag::gateway {

class AccessLog;

namespace stages {

class Log {
 public:
  // `coarse_now_ns`: the thread's coarse clock, refreshed here. `traffic`: null when there is no
  // control plane to report to.
  Log(AccessLog& log, std::size_t thread_index, metrics::Shard& metrics, std::int64_t& coarse_now_ns,
      TrafficShard* traffic)
      : log_(log), thread_(thread_index), metrics_(metrics), now_(coarse_now_ns), traffic_(traffic) {
    pending_.reserve(40 * 1024);
  }

  void run(const Context& ctx, const RequestView& req);
  // Hands the pending lines to the writer (and the traffic counts to the reporter).
  void flush();

 private:
  AccessLog& log_;
  std::size_t thread_;
  metrics::Shard& metrics_;
  std::int64_t& now_;
  TrafficShard* traffic_;
  std::string pending_;
};

}  // namespace stages
}  // namespace ag::gateway
