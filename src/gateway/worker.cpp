// The worker's start-up and shutdown: thread pools, accept and shedding, the admin listener, the
// config source, health checks and usage reports share Worker::Impl. Options are read in
// options.cpp; a thread's runtime is runtime.cpp.
#include "gateway/worker.hpp"
#include <utility>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <spdlog/spdlog.h>

#include <charconv>
#include <cstdio>
#include <limits>
#include <malloc.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cerrno>

#include <csignal>
#include <thread>
#include <condition_variable>
#include <mutex>
#include <initializer_list>
#include <unordered_map>

#include "common/crypto.hpp"
#include "common/env.hpp"
#include "common/signals.hpp"
#include "common/time.hpp"
#include "config/sync.hpp"
#include "common/listen.hpp"
#include "ratelimit/redis_limiter.hpp"
#include "gateway/runtime.hpp"
#include "gateway/traffic_reporter.hpp"
#include "gateway/strict_http.hpp"
#include "net/tls_client.hpp"
#include "http/client.hpp"
#include "http/server.hpp"

namespace ag::gateway {

using error_code = boost::system::error_code;

struct Worker::Impl {
  explicit Impl(WorkerOptions o) : opts(std::move(o)) {
    if (opts.threads <= 0) opts.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (opts.max_connections <= 0) {
      // Each client connection may need an upstream one: half the open-file limit, less a reserve.
      rlimit nofile{};
      ::getrlimit(RLIMIT_NOFILE, &nofile);
      std::int64_t soft = nofile.rlim_cur == RLIM_INFINITY ? 1'000'000 : static_cast<std::int64_t>(nofile.rlim_cur);
      opts.max_connections = std::max<std::int64_t>(16, (soft - 64) / 2);
    }
    trusted = parse_cidrs(opts.trusted_proxies);
    ip_deny = parse_cidrs(opts.ip_deny);
    ip_allow = parse_cidrs(opts.ip_allow);
    risk = std::make_unique<RiskEngine>(opts.risk_slots, opts.auth_failure_limit, opts.auth_failure_window_sec);
    if (!opts.geoip_db.empty()) geoip = std::make_unique<GeoIp>(opts.geoip_db);
    // A bad bundle stops the start; without one the TLS context is built on first https:// use.
    if (!opts.upstream_ca_file.empty()) tls::configure_client(opts.upstream_ca_file, "WORKER_UPSTREAM_CA_FILE");
    registry = std::make_unique<metrics::Registry>(static_cast<std::size_t>(opts.threads));
    log = std::make_unique<AccessLog>(opts.access_log, static_cast<std::size_t>(opts.threads));
    for (int i = 0; i < opts.threads; ++i)
    {
      threads.push_back(std::make_unique<ThreadRuntime>(static_cast<std::size_t>(i), opts, registry->shard(i), *log,
                                                        limiter, trusted));
      threads.back()->risk = risk.get();
      threads.back()->geoip = geoip.get();
      threads.back()->open_connections = &open_connections;
      threads.back()->memory_over = &memory_over;
    }
    if (!opts.redis_url.empty()) {
      auto url = ratelimit::parse_redis_url(opts.redis_url);
      for (auto& t : threads) {
        redis.push_back(std::make_unique<RedisLimiter>(
            t->ioc, t->limiter, [m = &t->metrics] { m->add(metrics::Counter::kRedisErrors); }, url, 50));
        t->redis = redis.back().get();
      }
    }
    accept_config.normalize_path = opts.normalize_path;
    accept_config.merge_slashes = opts.merge_slashes;
    accept_config.trusted_proxies = trusted;
    accept_config.ip_deny = ip_deny;
    accept_config.ip_allow = ip_allow;
    for (auto& t : threads) t->build_pipeline(accept_config);
  }

  WorkerOptions opts;
  std::vector<Cidr> trusted, ip_deny, ip_allow;
  stages::Accept::Config accept_config;  // the accept stage's const part, shared by the threads
  std::unique_ptr<RiskEngine> risk;
  std::unique_ptr<GeoIp> geoip;
  std::atomic<std::int64_t> open_connections{0};
  std::atomic<bool> memory_over{false};
  std::unique_ptr<metrics::Registry> registry;
  std::unique_ptr<AccessLog> log;
  ratelimit::LocalStore limiter;
  std::vector<std::unique_ptr<ThreadRuntime>> threads;
  std::vector<std::unique_ptr<RedisLimiter>> redis;
  std::vector<std::thread> os_threads;
  std::unique_ptr<http::Server> admin;
  std::thread admin_thread;
  // Owned here so the source (which builds snapshots with it) and the metrics share it; declared
  // before `source`, so destroyed after it.
  config::BuildContext build;
  std::unique_ptr<config::ConfigSource> source;
  std::atomic<bool> ready{false};
  // Background work off the request path: active health checks of service targets and reports
  // of service-token use to the control plane.
  std::mutex bg_mutex;
  std::condition_variable bg_cv;
  bool bg_stop = false;
  std::shared_ptr<const config::Snapshot> current;  // the last published snapshot (under bg_mutex)
  std::atomic<std::int64_t> last_trim_ns{std::numeric_limits<std::int64_t>::min() / 2};
  std::thread health_thread, usage_thread, traffic_thread;
  std::unique_ptr<TrafficReporter> traffic;  // with a control plane
  void run_health_checks();
  void run_usage_reports();
  void run_traffic_reports();
  std::vector<stages::TrafficShard*> traffic_shards() {
    std::vector<stages::TrafficShard*> v;
    for (auto& t : threads) v.push_back(&t->traffic);
    return v;
  }
  bool bg_wait(std::chrono::milliseconds d) {
    std::unique_lock lock(bg_mutex);
    return !bg_cv.wait_for(lock, d, [this] { return bg_stop; });
  }
  std::atomic<bool> shutting_down{false};
  std::uint16_t port = 0;

  void bind(ThreadRuntime& t, const tcp::endpoint& ep) {
    error_code ec;
    t.acceptor.open(ep.protocol(), ec);
    if (!ec) t.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) {
      int one = 1;
      if (::setsockopt(t.acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
        ec = error_code(errno, boost::system::system_category());
    }
    if (!ec) t.acceptor.bind(ep, ec);
    if (ec)
      throw std::runtime_error("cannot listen on " + opts.listen_host + ":" + std::to_string(ep.port()) + ": " +
                               ec.message());
  }

  static Task<void> accept_loop(ThreadRuntime& t) {
    for (;;) {
      error_code ec;
      Socket s = co_await t.acceptor.async_accept(asio::redirect_error(use_task, ec));
      if (ec) {
        if (!t.acceptor.is_open() || t.draining) co_return;
        if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space) {
          // Out of file descriptors: back off briefly instead of spinning.
          Timer wait(t.ioc.get_executor());
          wait.expires_after(std::chrono::milliseconds(50));
          co_await wait.async_wait(asio::redirect_error(use_task, ec));
        }
        continue;
      }
      t.coarse_now_ns = steady_ns();  // the new connection's first deadline starts now
      if (t.open_connections->load(std::memory_order_relaxed) >= t.opts.max_connections ||
          t.memory_over->load(std::memory_order_relaxed)) {
        shed(t, s);
        continue;
      }
      asio::co_spawn(t.ioc, serve_connection(t, std::move(s)), asio::detached);
    }
  }

  // Over a limit: one short answer written without waiting (it fits in the socket buffer), then
  // the connection is closed; the connections already open are not touched.
  static void shed(ThreadRuntime& t, Socket& s) {
    static constexpr std::string_view kOverloaded =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 31\r\n"
        "Retry-After: 1\r\nConnection: close\r\n\r\n{\"detail\":\"Server overloaded\"}\n";
    ::send(s.native_handle(), kOverloaded.data(), kOverloaded.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    error_code ec;
    s.shutdown(tcp::socket::shutdown_send, ec);
    s.close(ec);
    t.metrics.add(metrics::Counter::kConnectionsShed);
    if (t.coarse_now_ns - t.last_shed_log_ns > 10'000'000'000) {
      t.last_shed_log_ns = t.coarse_now_ns;
      spdlog::warn("overloaded ({} connections open{}): new connections get 503", t.open_connections->load(),
                   t.memory_over->load() ? ", memory limit reached" : "");
    }
  }

  // Resident memory against WORKER_MAX_MEMORY_MB, read from /proc every sweep by thread 0.
  static void check_memory(ThreadRuntime& t) {
    if (t.index != 0 || t.opts.max_memory_mb <= 0) return;
    auto rss_mb = [] {
      long pages = 0, resident = 0;
      if (FILE* f = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        std::fclose(f);
      }
      return static_cast<std::int64_t>(resident) * ::sysconf(_SC_PAGESIZE) / (1024 * 1024);
    };
    std::int64_t rss = rss_mb();
    if (rss >= t.opts.max_memory_mb && t.coarse_now_ns - t.last_trim_ns >= 1'000'000'000) {
      // Freed memory may still be held by the allocator after a spike: hand it back and look
      // again, so that shedding stops once the load that caused it is gone.
      t.last_trim_ns = t.coarse_now_ns;
      ::malloc_trim(0);
      rss = rss_mb();
    }
    t.memory_over->store(rss >= t.opts.max_memory_mb, std::memory_order_relaxed);
  }

  static Task<void> sweep_loop(ThreadRuntime& t) {
    for (;;) {
      t.sweep_timer.expires_after(std::chrono::milliseconds(250));
      error_code ec;
      co_await t.sweep_timer.async_wait(asio::redirect_error(use_task, ec));
      std::int64_t now = t.coarse_now_ns = steady_ns();
      t.sweep(now);
      t.flush_log();
      check_memory(t);
      if (t.draining) {
        if (t.live == 0 || now >= t.drain_deadline_ns) {
          if (t.live > 0) spdlog::warn("drain deadline reached with {} connection(s) still open on thread {}", t.live, t.index);
          t.pools.clear();
          t.flush_log();
          t.ioc.stop();
          co_return;
        }
      }
    }
  }

  http::Response admin_handle(http::Request& req) {
    http::Response r;
    if (req.path == "/metrics") {
      if (source) {
        registry->config_errors.store(source->stats.errors.load());
        registry->config_apply_us.store(source->stats.last_apply_us.load());
      }
      r.body = registry->render(build.slots.names());
      r.set_header("Content-Type", "text/plain; version=0.0.4");
      return r;
    }
    if (req.path == "/ping" || req.path == "/ready") {
      bool ok = ready.load() && !shutting_down.load();
      r.status = ok ? 200 : 503;
      r.body = std::string("{\"status\":\"") + (ok ? "ok" : shutting_down.load() ? "draining" : "starting") +
               "\",\"ready\":" + (ok ? "true" : "false") +
               ",\"config_version\":" + std::to_string(registry->config_version.load()) + "}";
      r.set_header("Content-Type", "application/json");
      return r;
    }
    r.status = 404;
    r.body = "{\"detail\":\"Not found\"}";
    r.set_header("Content-Type", "application/json");
    return r;
  }
};

Worker::Worker(WorkerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Worker::~Worker() {
  shutdown();
  wait();
}

void Worker::start() {
  auto& im = *impl_;
  if (!im.opts.jwt_secret.empty()) im.build.hmac_key = jwt::ServiceKey::hmac(im.opts.jwt_secret);
  error_code ec;
  auto addr = asio::ip::make_address(im.opts.listen_host, ec);
  if (ec) throw std::runtime_error("invalid WORKER_LISTEN address '" + im.opts.listen_host + "'");
  // The first thread binds (port 0 picks a free port); the others join the same port.
  tcp::endpoint ep{addr, im.opts.listen_port};
  im.bind(*im.threads[0], ep);
  im.port = im.threads[0]->acceptor.local_endpoint().port();
  ep.port(im.port);
  for (std::size_t i = 1; i < im.threads.size(); ++i) im.bind(*im.threads[i], ep);

  http::ServerOptions ao;
  ao.host = im.opts.admin_host;
  ao.port = im.opts.admin_port;
  ao.threads = 1;
  im.admin = std::make_unique<http::Server>(
      ao, [this](http::Request& r) { return impl_->admin_handle(r); },
      [](int status, std::string detail) {
        http::Response r;
        r.status = status;
        r.body = "{\"detail\":\"" + detail + "\"}";
        return r;
      });
  im.admin->listen();

  for (auto& r : im.redis) r->start();
  for (auto& t : im.threads) asio::co_spawn(t->ioc, Impl::sweep_loop(*t), asio::detached);
  for (auto& t : im.threads) {
    ThreadRuntime* rt = t.get();
    im.os_threads.emplace_back([rt] { rt->ioc.run(); });
  }
  im.admin_thread = std::thread([this] { impl_->admin->run(); });

  auto publish = [this](std::shared_ptr<const config::Snapshot> s) { this->publish(std::move(s)); };
  if (!im.opts.config_dir.empty()) {
    im.source = config::make_yaml_dir_source(im.build, im.opts.config_dir, std::chrono::milliseconds(im.opts.poll_ms), publish);
  } else if (!im.opts.config_file.empty()) {
    im.source = config::make_file_source(im.build, im.opts.config_file, std::chrono::milliseconds(1000), publish);
  } else if (!im.opts.control_url.empty()) {
    config::ControlPlaneSourceOptions co;
    co.base_url = im.opts.control_url;
    co.secret = im.opts.control_secret;
    co.long_poll = std::chrono::seconds(im.opts.long_poll_sec);
    co.snapshot_path = im.opts.snapshot_path;
    co.save_interval = std::chrono::milliseconds(im.opts.snapshot_interval_ms);
    co.max_age = std::chrono::milliseconds(im.opts.snapshot_max_age_ms);
    co.journal_sync = im.opts.journal_fsync;
    config::SavedSnapshot saved;
    if (!co.snapshot_path.empty()) {
      saved = config::load_saved_snapshot(im.build, co.snapshot_path, co.max_age);
      if (saved.snapshot) {
        spdlog::info("serving saved config version {} from {} and {} journal record(s) ({} projects, {} keys) until the "
                     "control plane answers",
                     saved.snapshot->version, co.snapshot_path, saved.replayed, saved.snapshot->project_count,
                     saved.snapshot->key_count);
        publish(saved.snapshot);
      } else if (!saved.problem.empty()) {
        spdlog::warn("{}; waiting for the control plane", saved.problem);
      }
      if (!saved.journal_note.empty()) spdlog::warn("config journal: {}", saved.journal_note);
    }
    // Heartbeat: who we are, where we listen, how long we have run, what we have served.
    std::string worker_id = env::get_or("WORKER_ID", "");
    if (worker_id.empty()) {
      char host[256] = {};
      ::gethostname(host, sizeof host - 1);
      worker_id = std::string(host) + "-" + std::to_string(::getpid()) + "-" + crypto::random_base62(4);
    }
    auto started = now_ms();
    std::string address = im.opts.listen_host + ":" + std::to_string(im.port);
    co.identity = [this, worker_id, address, started] {
      return "&worker_id=" + worker_id + "&address=" + address + "&uptime=" +
             std::to_string((now_ms() - started) / 1000) + "&requests=" + std::to_string(impl_->registry->total_requests());
    };
    im.source = config::make_control_plane_source(im.build, co, publish, std::move(saved));
    im.traffic = std::make_unique<TrafficReporter>(im.opts.control_url, im.opts.control_secret, worker_id,
                                                   static_cast<std::size_t>(3'600'000 / im.opts.traffic_report_ms) + 1);
  } else {
    spdlog::warn("no config source: set CONTROL_API_BASE_URL or --config; every request gets 503 until then");
  }
  if (im.source) im.source->start();
  // The port is bound (so a conflict fails at once) but joins the accept group only once a config
  // is in force, or after WORKER_READY_WAIT_SEC (then answering 503 until one arrives): a worker
  // restarted beside others on the same SO_REUSEPORT port takes no connections it cannot serve.
  auto wait_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(im.opts.ready_wait_ms);
  while (!im.ready.load() && std::chrono::steady_clock::now() < wait_until)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (!im.ready.load() && im.source) spdlog::warn("no config yet: listening anyway, every request gets 503 until one arrives");
  for (auto& t : im.threads) {
    error_code lec;
    t->acceptor.listen(4096, lec);
    if (lec) throw std::runtime_error("cannot listen on " + im.opts.listen_host + ":" + std::to_string(im.port) + ": " + lec.message());
    asio::co_spawn(t->ioc, Impl::accept_loop(*t), asio::detached);
  }
  im.health_thread = std::thread([this] { impl_->run_health_checks(); });
  if (!im.opts.control_url.empty() && im.opts.config_dir.empty() && im.opts.config_file.empty())
    im.usage_thread = std::thread([this] { impl_->run_usage_reports(); });
  if (im.traffic) im.traffic_thread = std::thread([this] { impl_->run_traffic_reports(); });
  spdlog::info("worker limits: {} connections{}", im.opts.max_connections,
               im.opts.max_memory_mb > 0 ? ", " + std::to_string(im.opts.max_memory_mb) + " MB resident" : std::string());
  spdlog::info("worker listening on http://{}:{} ({} threads{})", im.opts.listen_host, im.port, im.threads.size(),
               im.redis.empty() ? ", local rate limits" : ", rate limits in Redis");
  spdlog::info("worker admin listening on http://{}:{}", im.opts.admin_host, im.admin->bound_port());
}


// Every 250 ms: the service targets whose check is due are checked at once on one event loop in
// this thread (each bounded by its timeout); a 2xx/3xx answer marks a target healthy, anything
// else unhealthy.
void Worker::Impl::run_health_checks() {
  std::unordered_map<const config::TargetState*, std::int64_t> next_due;
  while (bg_wait(std::chrono::milliseconds(250))) {
    std::shared_ptr<const config::Snapshot> snap;
    {
      std::lock_guard lock(bg_mutex);
      snap = current;
    }
    if (!snap) continue;
    struct Check {
      std::shared_ptr<config::TargetState> state;
      std::string url, what;
      std::int64_t timeout_ms;
    };
    std::vector<Check> due;
    std::unordered_map<const config::TargetState*, std::int64_t> still;
    const std::int64_t now = steady_ns() / 1'000'000;
    for (const auto& proj : snap->projects) {
      if (!proj) continue;
      for (const auto& svc : proj->services) {
        if (svc.health_path.empty()) continue;
        for (const auto& t : svc.targets) {
          auto it = next_due.find(t.state.get());
          std::int64_t due_at = it == next_due.end() ? now : it->second;
          if (due_at <= now) {
            std::string url = (t.upstream.tls ? "https://" : "http://") + t.upstream.host_header + t.upstream.base_path + svc.health_path;
            due.push_back({t.state, std::move(url), proj->slug + "/" + svc.name + " " + t.upstream.url, svc.health_timeout_ms});
            due_at = now + svc.health_interval_ms;
          }
          still[t.state.get()] = due_at;
        }
      }
    }
    next_due.swap(still);  // targets no longer configured are forgotten
    if (due.empty()) continue;
    std::vector<http::FetchRequest> requests;
    for (const auto& c : due)
      requests.push_back({"GET", c.url, {{"user-agent", "antigravity-health-check"}}, "",
                          std::chrono::milliseconds(c.timeout_ms), 64 * 1024});
    auto results = http::fetch_all(requests);  // all due checks on one event loop, at once
    for (std::size_t i = 0; i < due.size(); ++i) {
      const auto& c = due[i];
      const auto& r = results[i];
      bool healthy = r.ok && r.status >= 200 && r.status < 400;
      bool was = c.state->healthy.exchange(healthy);
      if (was != healthy) {
        if (healthy) spdlog::info("health check: {} is healthy again", c.what);
        else spdlog::warn("health check: {} is unhealthy ({})", c.what, r.ok ? "status " + std::to_string(r.status) : r.error);
      }
    }
  }
}

// Every WORKER_USAGE_REPORT_SEC: the service tokens each thread saw, merged and sent to the
// control plane (which keeps the latest use per token); a failed report is retried next time.
void Worker::Impl::run_usage_reports() {
  std::unordered_map<std::string, std::int64_t> pending;
  auto send = [&] {
    for (auto& t : threads) {
      std::unordered_map<std::string, std::int64_t> taken;
      {
        std::lock_guard lock(t->usage.mutex);
        taken.swap(t->usage.last_used);
      }
      for (auto& [jti, ms] : taken) {
        auto& v = pending[jti];
        v = std::max(v, ms);
      }
    }
    if (pending.empty()) return;
    std::string body = "{\"tokens\":[";
    bool first = true;
    std::size_t n = 0;
    for (auto it = pending.begin(); it != pending.end() && n < 10000; ++it, ++n) {
      if (!first) body += ',';
      first = false;
      body += "{\"jti\":";
      append_json_string(body, it->first);
      body += ",\"last_used_at\":\"" + format_rfc3339(it->second) + "\"}";
    }
    body += "]}";
    auto r = http::fetch("POST", opts.control_url + "/internal/worker/token-usage",
                         {{"x-worker-secret", opts.control_secret}, {"content-type", "application/json"}}, body,
                         std::chrono::milliseconds(10000), 64 * 1024);
    if (r.ok && r.status == 204) {
      pending.clear();
    } else {
      spdlog::warn("token usage report failed ({}); kept for the next one", r.ok ? "status " + std::to_string(r.status) : r.error);
      if (pending.size() > 100000) pending.clear();
    }
  };
  while (bg_wait(std::chrono::milliseconds(opts.usage_report_ms))) send();
  send();  // what the last interval saw, on the way out
}

// Every WORKER_TRAFFIC_REPORT_SEC: the threads' traffic counts, as one batch (traffic_reporter.hpp).
// The last counts are sent by wait(), once the threads have stopped.
void Worker::Impl::run_traffic_reports() {
  while (bg_wait(std::chrono::milliseconds(opts.traffic_report_ms))) {
    traffic->collect(traffic_shards());
    traffic->send();
  }
}

std::uint16_t Worker::port() const { return impl_->port; }
std::uint16_t Worker::admin_port() const { return impl_->admin ? impl_->admin->bound_port() : 0; }

void Worker::publish(std::shared_ptr<const config::Snapshot> snapshot) {
  auto& im = *impl_;
  if (!snapshot) {  // withdrawn: fail closed
    im.ready.store(false);
    im.registry->config_version.store(-1);
    for (auto& t : im.threads) {
      ThreadRuntime* rt = t.get();
      asio::post(rt->ioc, [rt] { rt->snapshot.reset(); });
    }
    return;
  }
  {
    std::lock_guard lock(im.bg_mutex);
    im.current = snapshot;
  }
  im.registry->config_version.store(snapshot->version);
  im.registry->config_loaded_at_ms.store(now_ms());
  im.registry->config_keys.store(static_cast<std::int64_t>(snapshot->key_count));
  im.registry->config_projects.store(static_cast<std::int64_t>(snapshot->project_count));
  for (auto& t : im.threads) {
    ThreadRuntime* rt = t.get();
    asio::post(rt->ioc, [rt, snapshot] { rt->snapshot = snapshot; });
  }
  im.ready.store(true);
  // Building a snapshot leaves the parser's freed memory in this thread's malloc arena (4.5 MB
  // for 10,000 keys): give it back, at most once a second when deltas arrive in a burst.
  std::int64_t now = steady_ns();
  if (now - im.last_trim_ns.load(std::memory_order_relaxed) >= 1'000'000'000) {
    im.last_trim_ns.store(now, std::memory_order_relaxed);
    ::malloc_trim(0);
  }
}

void Worker::shutdown() {
  auto& im = *impl_;
  if (im.shutting_down.exchange(true)) return;
  if (im.source) im.source->stop();
  {
    std::lock_guard lock(im.bg_mutex);
    im.bg_stop = true;
  }
  im.bg_cv.notify_all();
  for (auto& t : im.threads) {
    ThreadRuntime* rt = t.get();
    asio::post(rt->ioc, [rt] {
      rt->draining = true;
      rt->drain_deadline_ns = steady_ns() + rt->opts.drain_ms * 1'000'000;
      error_code ec;
      rt->acceptor.close(ec);
      rt->pools.clear();
      for (Tracked* c = rt->head; c;) {
        Tracked* next = c->next;
        c->on_drain();
        c = next;
      }
      if (rt->live == 0) rt->ioc.stop();
    });
  }
}

void Worker::wait() {
  auto& im = *impl_;
  for (auto& t : im.os_threads)
    if (t.joinable()) t.join();
  for (auto& t : im.threads) t->flush_log();
  if (im.health_thread.joinable()) im.health_thread.join();
  if (im.usage_thread.joinable()) im.usage_thread.join();
  if (im.traffic_thread.joinable()) im.traffic_thread.join();
  if (im.traffic) {
    im.traffic->collect(im.traffic_shards());
    im.traffic->send();
  }
  if (im.admin) im.admin->stop();
  if (im.admin_thread.joinable()) im.admin_thread.join();
  im.log->flush();
}

int run_worker(WorkerOptions options) {
  block_termination_signals();
  Worker w(std::move(options));
  w.start();
  {
    SignalWatcher watcher([&](int sig) {
      spdlog::info("signal {} received: draining", sig);
      w.shutdown();
    });
    w.wait();
  }
  spdlog::info("worker stopped");
  return 0;
}

}  // namespace ag::gateway
