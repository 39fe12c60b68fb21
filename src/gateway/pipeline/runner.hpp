#pragma once
// The worker's request pipeline: the life of one request, top to bottom in run_request()
// (docs/worker.md, "Per request"; DESIGN.md, "The worker's request pipeline"):
//
//   1 accept -> 2 identify -> 3 risk -> 4 rate limit -> 5 route -> 6 proxy (or a local reply) -> 7 log
//
// Each stage (src/gateway/stages/<name>/) is built once per worker thread from the worker's
// options (its const part) and has a cheap per-request call that reads and fills the Context,
// whose config snapshot accept pins for the whole request, and returns an empty LocalReply to
// continue or one with a status and a Reason to answer instead; the reason is what the access
// log records. Stages do no I/O: the connection (an Exchange) writes the reply or proxies.
#include <cstdint>

#include "gateway/pipeline/context.hpp"
#include "gateway/stages/accept/accept.hpp"
#include "gateway/stages/identify/identify.hpp"
#include "gateway/stages/log/log.hpp"
#include "gateway/stages/rate_limit/rate_limit.hpp"
#include "gateway/stages/risk/risk_stage.hpp"
#include "gateway/stages/route/route.hpp"
#include "net/executor.hpp"

namespace ag::gateway {

// The connection's side of a request: the I/O the stages leave out.
class Exchange {
 public:
  // Each returns whether the connection may serve another request.
  virtual net::Task<bool> reply(Context& ctx, const LocalReply& reply) = 0;
  virtual net::Task<bool> proxy(Context& ctx) = 0;  // stage 6
  // Holds the request `ms` milliseconds (a caller the risk stage throttles by delay).
  virtual net::Task<void> pause(std::int64_t ms) = 0;

 protected:
  ~Exchange() = default;
};

struct Pipeline {
  stages::Accept accept;
  stages::Identify identify;
  stages::Risk risk;
  stages::RateLimit rate_limit;
  stages::Route route;
  stages::Log log;
};

net::Task<bool> run_request(Pipeline& p, Context& ctx, RequestView& req, Exchange& io);

}  // namespace ag::gateway
