// A worker thread's runtime (runtime.hpp): its pipeline, the connections it tracks for the
// deadline sweep and the drain, and its pool of idle upstream connections.
#include <sys/socket.h>

#include "common/time.hpp"
#include "gateway/runtime.hpp"

namespace ag::gateway {


ThreadRuntime::ThreadRuntime(std::size_t i, const WorkerOptions& o, metrics::Shard& shard, AccessLog& l,
                             ratelimit::LocalStore& lim, const std::vector<Cidr>& t)
    : index(i), opts(o), metrics(shard), log(l), limiter(lim), trusted(t) {
  token_check.audience = opts.jwt_audience;
  token_check.issuer = opts.jwt_issuer;
  token_check.leeway_s = opts.jwt_leeway_sec;
  coarse_now_ns = steady_ns();
}

void ThreadRuntime::build_pipeline(const stages::Accept::Config& accept) {
  pipeline.emplace(Pipeline{
      stages::Accept(accept, snapshot, *risk, metrics, ids),
      stages::Identify(token_check, token_cache, *risk, opts.control_url.empty() ? nullptr : &usage),
      stages::Risk(*risk, geoip, limiter, metrics),
      stages::RateLimit(limiter, redis, metrics),
      stages::Route{},
      stages::Log(log, index, metrics, coarse_now_ns, opts.control_url.empty() ? nullptr : &traffic),
  });
}

void ThreadRuntime::track(Tracked* t) {
  if (open_connections) open_connections->fetch_add(1, std::memory_order_relaxed);
  t->prev = nullptr;
  t->next = head;
  if (head) head->prev = t;
  head = t;
  ++live;
}

void ThreadRuntime::untrack(Tracked* t) {
  if (t->prev) t->prev->next = t->next;
  else head = t->next;
  if (t->next) t->next->prev = t->prev;
  t->prev = t->next = nullptr;
  --live;
  if (open_connections) open_connections->fetch_sub(1, std::memory_order_relaxed);
}

namespace {
// True while an idle pooled connection is still usable: the upstream has neither closed it nor
// sent anything unasked. One non-blocking peek per idle connection per sweep, and before a request
// whose body could not be replayed on another connection. (An async wait per
// idle period instead would cost an epoll_ctl and a cancellation on every proxied request, about
// 4 % of the worker's CPU under load; a connection that closes between two sweeps is caught by
// the proxy's retry on a fresh connection.)
bool idle_upstream_alive(UpstreamConn& c) {
  char byte;
  ssize_t n = ::recv(c.socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}
}  // namespace

std::unique_ptr<UpstreamConn> ThreadRuntime::take_pooled(const std::string& key, bool verify) {
  auto it = pools.find(key);
  if (it == pools.end()) return nullptr;
  auto& v = it->second;
  while (!v.empty()) {
    auto c = std::move(v.back());
    v.pop_back();
    if (!verify || idle_upstream_alive(*c)) return c;
  }
  return nullptr;
}

void ThreadRuntime::give_back(std::unique_ptr<UpstreamConn> c) {
  if (draining) return;  // closes it
  c->idle_since_ns = coarse_now_ns;
  auto& v = pools[c->pool_key];
  if (v.size() >= 256) return;  // enough idle connections to this upstream
  v.push_back(std::move(c));
}

void ThreadRuntime::sweep(std::int64_t now) {
  for (Tracked* t = head; t;) {
    Tracked* next = t->next;  // on_deadline never unlinks synchronously, but be safe
    if (t->deadline_ns <= now) t->on_deadline();
    t = next;
  }
  const std::int64_t idle_limit = opts.upstream_idle_ms * 1'000'000;
  for (auto& [key, v] : pools) {
    // Oldest first: drop those idle too long (before the upstream's own keep-alive timeout).
    std::size_t keep_from = 0;
    while (keep_from < v.size() && now - v[keep_from]->idle_since_ns > idle_limit) ++keep_from;
    if (keep_from > 0) v.erase(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(keep_from));
    std::erase_if(v, [](const std::unique_ptr<UpstreamConn>& c) { return !idle_upstream_alive(*c); });
  }
}

void ThreadRuntime::flush_log() {
  if (pipeline) pipeline->log.flush();
}

}  // namespace ag::gateway
