#include "gateway/stages/log/traffic.hpp"

#include "common/json_string.hpp"
#include "common/time.hpp"

namespace ag::gateway::stages {

namespace {

bool throttled(Reason r) { return r == Reason::kRateLimited || r == Reason::kRiskThrottled || r == Reason::kAuthFailures; }

bool blocked(Reason r) {
  switch (r) {
    case Reason::kKeyMissing:
    case Reason::kKeyInvalid:
    case Reason::kCredentialsMissing:
    case Reason::kTokenInvalid:
    case Reason::kTokenRevoked:
    case Reason::kRouteForbidden:
    case Reason::kIpDenied:
    case Reason::kRiskBlocked: return true;
    default: return false;
  }
}

}  // namespace

void TrafficShard::count(const config::Project& project, int status, Reason reason, std::int64_t latency_ns) {
  Entry& e = by_slot_[project.metrics_slot];
  if (e.seen != &project) {
    e.seen = &project;
    if (e.id != project.id) {
      // The slot now belongs to another project: what was counted so far is the old one's.
      if (e.tally.requests > 0) hand_over(now_ms());
      e.id = project.id;
    }
  }
  traffic::Tally& t = e.tally;
  ++t.requests;
  if (status >= 500) ++t.errors;
  else if (throttled(reason)) ++t.throttled;
  else if (blocked(reason)) ++t.blocked;
  ++t.latency[traffic::bucket_of(static_cast<double>(latency_ns) / 1e6)];
  dirty_ = true;
}

void TrafficShard::hand_over(std::int64_t wall_ms) {
  if (!dirty_) return;
  const std::int64_t hour = traffic::hour_of(wall_ms);
  std::lock_guard lock(mu_);
  for (auto& [slot, e] : by_slot_) {
    if (e.tally.requests == 0) continue;
    outbox_[{e.id, hour}].add(e.tally);
    e.tally = traffic::Tally{};
  }
  dirty_ = false;
}

void TrafficShard::take(TrafficByHour& into) {
  std::lock_guard lock(mu_);
  for (auto& [k, t] : outbox_) into[k].add(t);
  outbox_.clear();
}

std::string traffic_batch_json(const std::string& worker_id, const std::string& batch_id, const TrafficByHour& hours) {
  std::string body = "{\"worker_id\":";
  json_text::append_json_string(body, worker_id);
  body += ",\"batch_id\":";
  json_text::append_json_string(body, batch_id);
  body += ",\"hours\":[";
  bool first = true;
  for (const auto& [k, t] : hours) {
    if (!first) body += ',';
    first = false;
    body += "{\"project_id\":";
    json_text::append_json_string(body, k.first);
    body += ",\"hour\":\"" + format_rfc3339(k.second) + "\",\"requests\":" + std::to_string(t.requests) +
            ",\"errors\":" + std::to_string(t.errors) + ",\"throttled\":" + std::to_string(t.throttled) +
            ",\"blocked\":" + std::to_string(t.blocked) + ",\"latency_buckets\":[";
    for (std::size_t i = 0; i < t.latency.size(); ++i) {
      if (i) body += ',';
      body += std::to_string(t.latency[i]);
    }
    body += "]}";
  }
  body += "]}";
  return body;
}

}  // namespace ag::gateway::stages
