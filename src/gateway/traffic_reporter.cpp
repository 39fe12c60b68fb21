#include "gateway/traffic_reporter.hpp"

#include <spdlog/spdlog.h>

#include "common/crypto.hpp"
#include "http/client.hpp"

namespace ag::gateway {

TrafficReporter::TrafficReporter(std::string control_url, std::string secret, std::string worker_id, std::size_t max_unsent)
    : url_(std::move(control_url) + "/internal/worker/traffic"),
      secret_(std::move(secret)),
      worker_id_(std::move(worker_id)),
      boot_(crypto::random_base62(12)),  // batch ids stay unique across restarts of one WORKER_ID
      max_unsent_(max_unsent) {}

void TrafficReporter::collect(const std::vector<stages::TrafficShard*>& shards) {
  stages::TrafficByHour hours;
  for (auto* s : shards) s->take(hours);
  if (hours.empty()) return;
  std::string id = boot_ + "-" + std::to_string(++seq_);
  unsent_.emplace_back(id, stages::traffic_batch_json(worker_id_, id, hours));
  if (unsent_.size() > max_unsent_) {
    spdlog::warn("traffic report {} dropped: the control plane has not taken a report for too long", unsent_.front().first);
    unsent_.pop_front();
  }
}

bool TrafficReporter::send() {
  while (!unsent_.empty()) {
    auto r = http::fetch("POST", url_, {{"x-worker-secret", secret_}, {"content-type", "application/json"}},
                         unsent_.front().second, std::chrono::milliseconds(10000), 64 * 1024);
    if (r.ok && r.status == 200) {
      unsent_.pop_front();
      continue;
    }
    if (r.ok && (r.status == 400 || r.status == 413 || r.status == 415 || r.status == 422)) {
      // The batch itself was refused: sending it again changes nothing.
      spdlog::error("traffic report {} refused with status {}: {}", unsent_.front().first, r.status, r.body.substr(0, 200));
      unsent_.pop_front();
      continue;
    }
    spdlog::warn("traffic report failed ({}); {} batch(es) kept for the next attempt",
                 r.ok ? "status " + std::to_string(r.status) : r.error, unsent_.size());
    return false;
  }
  return true;
}

}  // namespace ag::gateway
