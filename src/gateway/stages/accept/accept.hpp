#pragma once
// Stage 1, accept: pins the config snapshot, names the request (id, client address behind
// trusted proxies), answers the head's framing verdict, checks the target's form and normalises
// its path, then the worker-wide IP lists and the failed-authentication block.
#include <memory>
#include <string>
#include <vector>

#include "common/cidr.hpp"
#include "gateway/pipeline/context.hpp"
#include "gateway/stages/accept/client.hpp"

namespace ag::metrics {
class Shard;
}

namespace ag::gateway {

class RiskEngine;

namespace stages {

class Accept {
 public:
  struct Config {
    bool normalize_path = true;
    bool merge_slashes = false;
    std::vector<Cidr> trusted_proxies;  // WORKER_TRUSTED_PROXIES
    std::vector<Cidr> ip_deny, ip_allow;  // WORKER_IP_DENY / WORKER_IP_ALLOW
  };
  // `snapshot` is the thread's current snapshot slot (replaced by a reload, read per request);
  // `ids` names a request that brings no (valid) X-Request-Id.
  Accept(const Config& config, const std::shared_ptr<const config::Snapshot>& snapshot, RiskEngine& risk,
         metrics::Shard& metrics, RequestIds& ids)
      : config_(config), snapshot_(snapshot), risk_(risk), metrics_(metrics), ids_(ids) {}

  LocalReply run(Context& ctx, RequestView& req) const;

 private:
  const Config& config_;
  const std::shared_ptr<const config::Snapshot>& snapshot_;
  RiskEngine& risk_;
  metrics::Shard& metrics_;
  RequestIds& ids_;
};

}  // namespace stages
}  // namespace ag::gateway
