#pragma once
// Sends the threads' traffic tallies (stages/log/traffic.hpp) to the control plane, every
// WORKER_TRAFFIC_REPORT_SEC, as numbered batches: a batch that was not acknowledged is sent again,
// whole and under the same id, so the control plane counts it exactly once (docs/metrics.md,
// "Traffic rollups"). Up to an hour of batches wait for a control plane that is away; older
// ones are dropped with a warning.
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "gateway/stages/log/traffic.hpp"

namespace ag::gateway {

class TrafficReporter {
 public:
  TrafficReporter(std::string control_url, std::string secret, std::string worker_id, std::size_t max_unsent);

  // Takes what the shards handed over into a new batch (none when nothing was counted).
  void collect(const std::vector<stages::TrafficShard*>& shards);
  // Sends waiting batches, oldest first, until one fails. True when none is left.
  bool send();

 private:
  std::string url_, secret_, worker_id_, boot_;
  std::size_t max_unsent_;
  std::uint64_t seq_ = 0;
  std::deque<std::pair<std::string, std::string>> unsent_;  // batch id, body
};

}  // namespace ag::gateway
