#pragma once
// Traffic tallies for the control plane's rollups (docs/metrics.md, "Traffic rollups"): each
// thread counts its requests per project (requests, errors, throttled, blocked, a latency
// histogram) with no lock, and hands the counts over on every sweep (250 ms), stamped with the
// hour of the wall clock then. The reporter (worker.cpp) takes what the threads handed over,
// sends it as one batch, and sends that same batch again until the control plane has it.
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "common/traffic.hpp"
#include "gateway/pipeline/context.hpp"

namespace ag::gateway::stages {

// (project id, hour start in ms since the epoch) → counts.
using TrafficByHour = std::map<std::pair<std::string, std::int64_t>, traffic::Tally>;

class TrafficShard {
 public:
  // On the thread, once per request that named a project.
  void count(const config::Project& project, int status, Reason reason, std::int64_t latency_ns);
  // On the thread: moves this interval's counts to the outbox under `wall_ms`'s hour.
  void hand_over(std::int64_t wall_ms);
  // On the reporter: adds the outbox into `into` and empties it.
  void take(TrafficByHour& into);

 private:
  struct Entry {
    const config::Project* seen = nullptr;  // the snapshot object `id` was copied from
    std::string id;
    traffic::Tally tally;
  };
  std::unordered_map<std::uint32_t, Entry> by_slot_;  // by the project's metrics slot
  bool dirty_ = false;
  std::mutex mu_;
  TrafficByHour outbox_;
};

// The JSON body of one report: {"worker_id", "batch_id", "hours": [...]}.
std::string traffic_batch_json(const std::string& worker_id, const std::string& batch_id, const TrafficByHour& hours);

}  // namespace ag::gateway::stages
