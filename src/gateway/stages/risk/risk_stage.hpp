#pragma once
// Stage 3, risk (docs/risk.md): the project's IP and country lists, then the risk score. In
// shadow mode the decision is logged and counted but not applied; the lists apply in both modes.
// It runs before the limiter because a THROTTLE decision chooses a tighter limit (its own
// limiter slot) or a delay (ctx.throttle_delay_ms, which the runner waits out).
#include "gateway/pipeline/context.hpp"

namespace ag::metrics {
class Shard;
}
namespace ag::ratelimit {
class LocalStore;
}

namespace ag::gateway {

class RiskEngine;
class GeoIp;

namespace stages {

class Risk {
 public:
  // `geoip`: null without WORKER_GEOIP_DB (a country allow list then refuses everyone).
  Risk(RiskEngine& engine, const GeoIp* geoip, ratelimit::LocalStore& limiter, metrics::Shard& metrics)
      : engine_(engine), geoip_(geoip), limiter_(limiter), metrics_(metrics) {}

  LocalReply run(Context& ctx, const RequestView& req) const;

 private:
  RiskEngine& engine_;
  const GeoIp* geoip_;
  ratelimit::LocalStore& limiter_;
  metrics::Shard& metrics_;
};

}  // namespace stages
}  // namespace ag::gateway
