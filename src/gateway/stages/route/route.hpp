#pragma once
// Stage 5, route: what the upstream side will accept. A body declared larger than the project's
// max_body_bytes is refused here (413) before a byte is forwarded; a chunked body is counted
// while it streams (the proxy answers 413 when it passes the limit). The service target is
// chosen per attempt by the proxy (pick_target), so a retry can go elsewhere.
#include <cstdint>
#include <unordered_map>

#include "gateway/pipeline/context.hpp"

namespace ag::gateway::stages {

class Route {
 public:
  LocalReply run(Context& ctx, const RequestView& req) const;
};

// A healthy, not ejected target of `svc`: round robin (positions in `rr`, by service), or the
// fewest requests in flight (ties in round-robin order). `avoid` (a target that just failed) is
// skipped when another is available.
const config::ServiceTarget* pick_target(const config::Service& svc, const config::ServiceTarget* avoid,
                                         std::unordered_map<const void*, std::uint32_t>& rr, std::int64_t now_ns);

}  // namespace ag::gateway::stages
