#include "control/app.hpp"

#include <spdlog/spdlog.h>

#include "control/store/pq.hpp"
#include <sys/select.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <csignal>
#include <thread>

#include "common/ascii.hpp"
#include "common/crypto.hpp"
#include "common/request_id.hpp"
#include "common/signals.hpp"
#include "control/api/context.hpp"
#include "control/api/tokens.hpp"
#include "control/store/migrations.hpp"
#include "http/client.hpp"
#include "http/server.hpp"
#include "relay/relay.hpp"
#include "control/relay_bus.hpp"
#include "http/upgrade.hpp"

namespace ag::control {

namespace {

void set_request_id(http::Request& req) {
  std::string id(req.header("x-request-id"));
  if (!valid_request_id(id)) id = crypto::random_base62(20);
  for (auto it = req.headers.begin(); it != req.headers.end();)
    it = it->name == "x-request-id" ? req.headers.erase(it) : it + 1;
  req.headers.push_back({"x-request-id", std::move(id)});
}

}  // namespace

ControlApp::ControlApp(Settings settings) : state_(std::make_unique<AppState>()) {
  state_->settings = std::move(settings);
  state_->jwt_alg = *jwt::parse_algorithm(state_->settings.jwt_algorithm);
  state_->db = store::open_database(state_->settings.database_url, state_->settings.threads);
  auto st = store::migrate(*state_->db);
  if (const auto& a = state_->settings.auth; !a.oidc_issuer.empty())
    state_->oidc = std::make_unique<oidc::Verifier>(
        oidc::Settings{a.oidc_issuer, a.oidc_audience, a.oidc_email_claim, a.oidc_name_claim, a.oidc_jwks_cache_sec},
        [](const std::string& url) -> std::optional<std::string> {
          auto r = http::fetch("GET", url, {{"accept", "application/json"}}, "", std::chrono::seconds(5), 1 << 20);
          if (!r.ok || r.status != 200) return std::nullopt;
          return r.body;
        });
  if (!st.applied_now.empty())
    spdlog::info("database migrated to schema version {} ({} migration(s) applied)", st.current,
                 st.applied_now.size());
  {
    const Settings& s = state_->settings;
    relay::Limits limits;
    limits.max_message_bytes = static_cast<std::size_t>(s.relay_max_message_bytes);
    limits.max_queue_bytes = static_cast<std::size_t>(s.relay_max_queue_bytes);
    limits.messages_per_sec = static_cast<double>(s.relay_messages_per_sec);
    limits.burst = static_cast<double>(s.relay_message_burst);
    limits.idle_timeout_sec = static_cast<int>(s.relay_idle_timeout_sec);
    limits.deflate = s.relay_deflate;
    state_->relay = std::make_unique<relay::Relay>(limits);
  }
  register_auth_routes(routes_, *state_);
  register_organization_routes(routes_, *state_);
  register_device_routes(routes_, *state_);
  register_passkey_routes(routes_, *state_);
  register_project_routes(routes_, *state_);
  register_key_routes(routes_, *state_);
  register_worker_config_routes(routes_, *state_);
  register_meta_routes(routes_, *state_);
  register_service_routes(routes_, *state_);
  register_agent_routes(routes_, *state_);
  register_activity_routes(routes_, *state_);
  register_traffic_routes(routes_, *state_);
  register_relay_routes(routes_, *state_);
  register_token_routes(routes_, *state_);
  state_->openapi_document = openapi_with_access(routes_.routes());
}

ControlApp::~ControlApp() = default;

http::Response ControlApp::protocol_error(int status, std::string detail) {
  auto r = error_response(status, detail);
  r.set_header("X-Request-Id", crypto::random_base62(20));
  r.set_header("Connection", "close");
  return r;
}

namespace {
std::string_view without_api_prefix(std::string_view path) {
  if (path == "/api/v1") return "/";
  if (path.rfind("/api/v1/", 0) == 0) path.remove_prefix(7);
  return path;
}
}  // namespace

bool ControlApp::runs_inline(const http::Request& req) const {
  if (req.method == "OPTIONS") return true;
  auto m = routes_.match(req.method, without_api_prefix(req.path));
  return m.outcome != http::Router::Outcome::kFound || m.entry->runs == Runs::kInline;
}

http::Response ControlApp::handle(http::Request& req) {
  auto start = std::chrono::steady_clock::now();
  set_request_id(req);
  http::Response res;
  std::string path(without_api_prefix(req.path));
  const RouteTable::Entry* entry = nullptr;
  auto origin = req.header("origin");
  bool cors = false;
  if (!origin.empty())
    for (const auto& o : state_->settings.cors_origins) cors = cors || o == origin;  // exact, as the browser sent it

  try {
    if (req.method == "OPTIONS" && cors) {
      res.status = 204;
      res.set_header("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Request-Id");
      res.set_header("Access-Control-Max-Age", "600");
    } else {
      auto m = routes_.match(req.method, path);
      if (m.outcome == http::Router::Outcome::kFound) {
        entry = m.entry;
        // The route's declared rule is checked here, before its handler runs.
        Call call{req, m.params, std::nullopt, std::nullopt, std::nullopt, std::nullopt};
        authorise(*state_, m.entry->rule, call);
        res = m.entry->handler(call);
      } else if (m.outcome == http::Router::Outcome::kMethodNotAllowed) {
        res = error_response(405, "Method not allowed");
        res.set_header("Allow", m.allow);
      } else {
        res = error_response(404, "Not found");
      }
    }
  } catch (const ApiError& e) {
    res = e.oauth           ? json_response(e.status(), {{"error", e.code}, {"error_description", e.detail()}, {"detail", e.detail()}})
          : e.code.empty() ? error_response(e.status(), e.detail())
                           : json_response(e.status(), {{"detail", e.detail()}, {"code", e.code}});
    for (const auto& h : e.headers) res.set_header(h.name, h.value);
    // A WebSocket upgrade to the relay whose token is refused: a browser's WebSocket cannot read
    // an HTTP status, so the socket is opened and closed at once with 1008 and the reason.
    if (entry && (entry->rule.access == Access::kRelayClient || entry->rule.access == Access::kRelayAnchor) &&
        e.status() == 401 && iequals_ascii(req.header("upgrade"), "websocket")) {
      relay::Relay* relay = state_->relay.get();
      res.take_over = [relay, why = e.detail()](std::unique_ptr<http::UpgradedConnection> conn) {
        relay->reject(std::move(conn), relay::kClosePolicy, why.substr(0, 120));
      };
    }
  } catch (const store::DatabaseError& e) {
    spdlog::error("request {} {} {}: database error: {}", request_id(req), req.method, path, e.what());
    res = error_response(503, "Database unavailable, try again");
    res.set_header("Retry-After", "1");
  } catch (const std::exception& e) {
    spdlog::error("request {} {} {}: internal error: {}", request_id(req), req.method, path, e.what());
    res = error_response(500, "Internal server error");
  }
  auto finish_headers = [rid = std::string(request_id(req)), cors, origin = std::string(origin)](http::Response& r) {
    r.set_header("X-Request-Id", rid);
    // Every error body names its request too: {"detail", "request_id"} (and "code" where set).
    if (r.status >= 400 && !r.body.empty() && r.body.size() <= 64 * 1024 && r.body.front() == '{') {
      json body = json::parse(r.body, nullptr, false);
      if (body.is_object() && body.contains("detail")) {
        body["request_id"] = rid;
        r.body = body.dump();
      }
    }
    if (cors) {
      r.set_header("Access-Control-Allow-Origin", origin);
      r.set_header("Access-Control-Allow-Credentials", "true");
      r.set_header("Vary", "Origin");
      r.set_header("Access-Control-Expose-Headers", "X-Request-Id, ETag");
    }
  };
  finish_headers(res);
  // A held long poll: its final response (or its next hold) gets the same headers.
  struct Finish {
    static void wrap(http::Response& res, const std::function<void(http::Response&)>& finish) {
      if (!res.deferred) return;
      res.deferred = [inner = std::move(res.deferred), finish] {
        http::Response r;
        try {
          r = inner();
        } catch (const std::exception& e) {
          spdlog::error("deferred response failed: {}", e.what());
          r = error_response(503, "Database unavailable, try again");
        }
        finish(r);
        wrap(r, finish);
        return r;
      };
    }
  };
  Finish::wrap(res, finish_headers);
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count();
  // Access log: never bodies, never headers (they carry credentials).
  // Unchanged-config polls from workers (304) would drown everything else: debug level.
  spdlog::log(res.status == 304 ? spdlog::level::debug : spdlog::level::info, "{} {} {} {} {:.1f}ms rid={}",
              req.remote_ip, req.method, path, res.status, us / 1000.0, request_id(req));
  return res;
}

// Wakes this process's long polls when another control-plane process commits a change
// (PostgreSQL LISTEN ag_config). Reconnects on its own; stops within a second of stop().
class PgConfigListener {
 public:
  PgConfigListener(std::string conninfo, std::function<void()> wake)
      : conninfo_(std::move(conninfo)), wake_(std::move(wake)), thread_([this] { run(); }) {}
  ~PgConfigListener() {
    stop_ = true;
    thread_.join();
  }

 private:
  void run() {
    while (!stop_) {
      PGconn* conn = ag::pq::api().PQconnectdb(conninfo_.c_str());
      if (ag::pq::api().PQstatus(conn) == CONNECTION_OK) {
        PGresult* r = ag::pq::api().PQexec(conn, "LISTEN ag_config");
        bool ok = ag::pq::api().PQresultStatus(r) == PGRES_COMMAND_OK;
        ag::pq::api().PQclear(r);
        if (ok) {
          wake_();  // anything committed while we were not listening
          while (!stop_ && ag::pq::api().PQstatus(conn) == CONNECTION_OK) {
            int fd = ag::pq::api().PQsocket(conn);
            fd_set set;
            FD_ZERO(&set);
            FD_SET(fd, &set);
            timeval tv{1, 0};
            if (select(fd + 1, &set, nullptr, nullptr, &tv) < 0) break;
            if (!ag::pq::api().PQconsumeInput(conn)) break;
            bool any = false;
            while (PGnotify* n = ag::pq::api().PQnotifies(conn)) {
              any = true;
              ag::pq::api().PQfreemem(n);
            }
            if (any) wake_();
          }
        }
      }
      ag::pq::api().PQfinish(conn);
      for (int i = 0; i < 10 && !stop_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  std::string conninfo_;
  std::function<void()> wake_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct ControlServer::Impl {
  explicit Impl(Settings s) : opts(make_opts(s)), app(std::move(s)) {}
  std::unique_ptr<PgConfigListener> listener;
  // With PostgreSQL: the relay's route to the other replicas.
  std::unique_ptr<PgRelayBus> relay_bus;
  static http::ServerOptions make_opts(const Settings& s) {
    http::ServerOptions o;
    o.host = s.listen_host;
    o.port = s.listen_port;
    o.threads = s.io_threads;
    o.handler_threads = s.threads;
    o.tls_cert_file = s.tls_cert_file;
    o.tls_key_file = s.tls_key_file;
    return o;
  }
  http::ServerOptions opts;
  ControlApp app;
  std::unique_ptr<http::Server> server;
  std::thread thread;
  // Housekeeping: hourly cleanup of expired token revocations; with SQLite, also notices config
  // changes committed by another process (the CLI) and wakes this process's long polls.
  std::thread maintenance;
  std::mutex maintenance_mutex;
  std::condition_variable maintenance_cv;
  bool stopping = false;
  void run_maintenance();
};

void ControlServer::Impl::run_maintenance() {
  auto& st = app.state();
  const bool sqlite = st.db->engine() == store::Engine::kSqlite;
  std::int64_t seen_version = -1;
  auto next_cleanup = std::chrono::steady_clock::now();
  std::unique_lock lock(maintenance_mutex);
  while (!stopping) {
    lock.unlock();
    try {
      if (sqlite) {
        std::int64_t v = 0;
        st.db->with_connection([&](store::Connection& c) {
          v = c.exec("SELECT version FROM config_state WHERE id = 1", {}).rows.at(0).integer(0);
        });
        if (seen_version >= 0 && v != seen_version && v > st.local_config_version.load()) server->wake_all();
        seen_version = v;
      }
      if (std::chrono::steady_clock::now() >= next_cleanup) {
        std::int64_t n = 0;
        st.db->transaction([&](store::Connection& c) { n = cleanup_expired_revocations(c); });
        if (n > 0) spdlog::info("removed {} expired token revocation(s)", n);
        next_cleanup = std::chrono::steady_clock::now() + std::chrono::hours(1);
      }
    } catch (const std::exception& e) {
      spdlog::warn("control plane housekeeping: {}", e.what());
    }
    lock.lock();
    maintenance_cv.wait_for(lock, std::chrono::milliseconds(sqlite ? 250 : 5000), [this] { return stopping; });
  }
}

ControlServer::ControlServer(Settings settings) {
  for (const auto& w : settings.warnings) spdlog::warn("{}", w);
  impl_ = std::make_unique<Impl>(std::move(settings));
}

ControlServer::~ControlServer() {
  stop();
  wait();
}

void ControlServer::start() {
  auto& im = *impl_;
  im.opts.runs_inline = [this](const http::Request& r) { return impl_->app.runs_inline(r); };
  im.server = std::make_unique<http::Server>(
      im.opts, [this](http::Request& r) { return impl_->app.handle(r); },
      [this](int status, std::string detail) { return impl_->app.protocol_error(status, std::move(detail)); });
  im.server->listen();
  http::Server* server = im.server.get();
  im.app.state().on_config_change = [server] { server->wake_all(); };
  if (im.app.state().db->engine() == store::Engine::kPostgres) {
    im.listener = std::make_unique<PgConfigListener>(im.app.state().settings.database_url, [server] { server->wake_all(); });
    im.relay_bus = std::make_unique<PgRelayBus>(im.app.state().settings.database_url, *im.app.state().relay);
  }
  std::string host = im.opts.host.find(':') != std::string::npos ? "[" + im.opts.host + "]" : im.opts.host;
  spdlog::info("control plane listening on {}://{}:{} (database: {})", im.server->tls() ? "https" : "http", host,
               im.server->bound_port(),
               im.app.state().db->engine_name());
  im.thread = std::thread([this] { impl_->server->run(); });
  im.maintenance = std::thread([this] { impl_->run_maintenance(); });
}

std::uint16_t ControlServer::port() const { return impl_->server ? impl_->server->bound_port() : 0; }
const Settings& ControlServer::settings() const { return impl_->app.state().settings; }

void ControlServer::stop() {
  // Relay sockets first: each is told (close 1001) so its peer reconnects elsewhere; up to 2 s
  // for the close frames to go out before the event loop stops.
  if (impl_->server && !impl_->stopping) {
    auto& relay = *impl_->app.state().relay;
    relay.shutdown();
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (std::chrono::steady_clock::now() < until) {
      auto s = relay.stats();
      if (s.clients + s.anchors == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  if (impl_->server) impl_->server->stop();
  {
    std::lock_guard lock(impl_->maintenance_mutex);
    impl_->stopping = true;
  }
  impl_->maintenance_cv.notify_all();
}

void ControlServer::wait() {
  if (impl_->thread.joinable()) impl_->thread.join();
  if (impl_->maintenance.joinable()) impl_->maintenance.join();
  impl_->listener.reset();
  impl_->relay_bus.reset();
}

int run_control_server(Settings settings) {
  // Signals are taken by a watcher thread; block them before any other thread starts.
  block_termination_signals();
  ControlServer server(std::move(settings));
  server.start();
  {
    SignalWatcher watcher([&](int sig) {
      spdlog::info("signal {} received, shutting down", sig);
      server.stop();
    });
    server.wait();
  }
  spdlog::info("control plane stopped");
  return 0;
}

}  // namespace ag::control
