#include "gateway/pipeline/runner.hpp"

namespace ag::gateway {

// (No co_await inside ?: here: g++ 12 miscompiles it.)
net::Task<bool> run_request(Pipeline& p, Context& ctx, RequestView& req, Exchange& io) {
  LocalReply reply = p.accept.run(ctx, req);            // 1 snapshot, id, client ip, target, IP lists
  if (!reply.status) reply = p.identify.run(ctx, req);  // 2 API key or service token
  if (!reply.status) {
    reply = p.risk.run(ctx, req);                       // 3 project lists, risk score
    if (ctx.throttle_delay_ms > 0) co_await io.pause(ctx.throttle_delay_ms);
  }
  if (!reply.status) {                                  // 4 GCRA, local or in Redis
    if (p.rate_limit.shared()) {
      reply = co_await p.rate_limit.run_shared(ctx);
    } else {
      reply = p.rate_limit.run(ctx);
    }
  }
  if (!reply.status) reply = p.route.run(ctx, req);     // 5 body limit
  bool keep;
  if (reply.status) {
    keep = co_await io.reply(ctx, reply);               // a local reply, or
  } else {
    keep = co_await io.proxy(ctx);                      // 6 the upstream exchange
  }
  p.log.run(ctx, req);                                  // 7 one access-log line, metrics
  co_return keep;
}

}  // namespace ag::gateway
