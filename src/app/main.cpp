// antigravity: one binary, several roles.
//   antigravity control   the control plane (management API)
//   antigravity worker    the data plane (gateway)
//   antigravity up        control plane + worker + a demo upstream, on embedded defaults
//   antigravity migrate   apply database migrations and exit
//   antigravity token     service tokens and signing keys
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>

#include "app/login_cli.hpp"
#include "app/token_cli.hpp"
#include "common/crypto.hpp"
#include "common/env.hpp"
#include "common/signals.hpp"
#include "control/app.hpp"
#include "common/listen.hpp"
#include "control/settings.hpp"
#include "control/store/database.hpp"
#include "control/store/migrations.hpp"
#include "gateway/worker.hpp"
#include "http/server.hpp"

#include <csignal>
#include <nlohmann/json.hpp>
#include <thread>

namespace {

void setup_logging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("antigravity");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %v", spdlog::pattern_time_type::utc);
  spdlog::set_level(spdlog::level::from_str(level));
  spdlog::flush_on(spdlog::level::info);
}

ag::control::Settings settings_with_overrides(const std::string& listen, int threads) {
  auto s = ag::control::load_settings();
  if (!listen.empty()) ag::parse_listen(listen, "--listen", s.listen_host, s.listen_port);
  if (threads > 0) s.threads = threads;
  return s;
}

// The demo upstream `antigravity up` starts: it answers every request with what it received, so
// a newcomer can see the gateway's headers arrive.
std::unique_ptr<ag::http::Server> start_demo_upstream(const std::string& listen, std::thread& thread) {
  ag::http::ServerOptions o;
  ag::parse_listen(listen, "--demo-upstream", o.host, o.port);
  o.threads = 1;
  auto server = std::make_unique<ag::http::Server>(
      o,
      [](ag::http::Request& r) {
        nlohmann::json headers = nlohmann::json::object();
        for (const auto& h : r.headers) headers[h.name] = h.value;
        ag::http::Response res;
        res.body = nlohmann::json{{"service", "antigravity demo upstream"},
                                  {"method", r.method},
                                  {"path", r.path},
                                  {"query", r.query},
                                  {"body_bytes", r.body.size()},
                                  {"headers", headers}}
                       .dump(2) + "\n";
        res.set_header("Content-Type", "application/json");
        return res;
      },
      [](int status, std::string detail) {
        ag::http::Response r;
        r.status = status;
        r.body = detail;
        return r;
      });
  server->listen();
  spdlog::info("demo upstream listening on http://{}:{}", o.host, server->bound_port());
  auto* raw = server.get();
  thread = std::thread([raw] { raw->run(); });
  return server;
}

int run_up(ag::control::Settings settings, ag::gateway::WorkerOptions wopts, const std::string& demo) {
  ag::block_termination_signals();
  std::thread demo_thread;
  std::unique_ptr<ag::http::Server> demo_server;
  if (!demo.empty() && demo != "off") demo_server = start_demo_upstream(demo, demo_thread);
  // Embedded defaults: passkeys work on the control plane's own page (http://localhost:PORT/login)
  // unless PASSKEY_ORIGIN says otherwise. A port of 0 is only known after start: the origin is
  // then left unset (docs/auth.md).
  if (settings.auth.passkey_origin.empty() && settings.listen_port != 0) {
    settings.auth.passkey_origin = "http://localhost:" + std::to_string(settings.listen_port);
    settings.auth.passkey_rp_id = "localhost";
  }
  ag::control::ControlServer control(std::move(settings));
  control.start();
  wopts.control_url = "http://127.0.0.1:" + std::to_string(control.port());
  if (control.settings().listen_host != "0.0.0.0" && control.settings().listen_host != "::")
    wopts.control_url = "http://" + control.settings().listen_host + ":" + std::to_string(control.port());
  wopts.control_secret = control.settings().worker_secrets.at(0);
  wopts.poll_ms = 1000;
  // HS256 service tokens: the worker verifies with the control plane's secret.
  if (wopts.jwt_secret.empty()) wopts.jwt_secret = control.settings().gateway_jwt_secret;
  if (wopts.jwt_audience.empty()) wopts.jwt_audience = control.settings().gateway_jwt_audience;
  if (wopts.jwt_issuer.empty()) wopts.jwt_issuer = control.settings().gateway_jwt_issuer;
  ag::gateway::Worker worker(std::move(wopts));
  worker.start();
  spdlog::info("antigravity is up: API http://127.0.0.1:{}  gateway http://127.0.0.1:{}  docs http://127.0.0.1:{}/docs",
               control.port(), worker.port(), control.port());
  {
    ag::SignalWatcher watcher([&](int sig) {
      spdlog::info("signal {} received: shutting down", sig);
      worker.shutdown();
    });
    worker.wait();
  }
  control.stop();
  control.wait();
  if (demo_server) {
    demo_server->stop();
    demo_thread.join();
  }
  return 0;
}

void apply_worker_flags(ag::gateway::WorkerOptions& o, const std::string& listen, const std::string& admin,
                        int threads, const std::string& config, const std::string& config_dir = "") {
  if (!listen.empty()) ag::parse_listen(listen, "--listen", o.listen_host, o.listen_port);
  if (!admin.empty()) ag::parse_listen(admin, "--admin-listen", o.admin_host, o.admin_port);
  if (threads > 0) o.threads = threads;
  if (!config.empty()) o.config_file = config;
  if (!config_dir.empty()) o.config_dir = config_dir;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Antigravity: a self-hosted API gateway (control plane + worker).\n"
               "Settings come from the environment and a .env file in the working directory;\n"
               "see docs/configuration.md (control plane), docs/worker.md and docs/config-stream.md (worker).",
               "antigravity"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  app.set_version_flag("--version", AG_VERSION);

  std::string listen;
  int threads = 0;
  auto* control = app.add_subcommand("control", "Run the control plane (management API).");
  control->add_option("--listen", listen, "HOST:PORT to listen on (env CONTROL_LISTEN, default 127.0.0.1:8000)");
  control->add_option("--threads", threads, "handler threads, also the database pool size (env CONTROL_THREADS, default 4)")->check(CLI::Range(1, 256));
  control->footer(
      "Other settings come from the environment (docs/configuration.md): the database, secrets, token lifetimes,\n"
      "CORS_ORIGINS, CONTROL_IO_THREADS (threads for reading, writing, TLS and held long polls, default 2), and\n"
      "CONTROL_TLS_CERT_FILE with CONTROL_TLS_KEY_FILE (PEM; both set = the listener speaks HTTPS only).\n"
      "Sign-in (docs/auth.md): AUTH_MODE (basic|passkey), PASSKEY_ORIGIN, PASSKEY_RP_ID, the DEVICE_* and ANCHOR_*\n"
      "lifetimes, AUTH_MAX_FAILURES_PER_IP/_PER_ACCOUNT, OIDC_ISSUER with OIDC_AUDIENCE, CONTROL_PUBLIC_URL;\n"
      "organisations (docs/organizations.md): INVITE_DELIVERY (return|log), AGENT_RATE_LIMIT per AGENT_RATE_WINDOW_SEC\n"
      "(default 20 per 60 s); METRICS_RETENTION_DAYS (traffic rollups, default 90);\n"
      "the WebSocket relay (docs/relay.md): RELAY_MAX_MESSAGE_BYTES, RELAY_MAX_QUEUE_BYTES, RELAY_MAX_MESSAGES_PER_SEC,\n"
      "RELAY_MESSAGE_BURST, RELAY_IDLE_TIMEOUT_SEC, RELAY_PERMESSAGE_DEFLATE (on|off).");

  std::string wlisten, admin_listen, config_file, config_dir;
  int wthreads = 0;
  auto* worker = app.add_subcommand("worker", "Run the worker (data plane). Config from CONTROL_API_BASE_URL or --config.");
  worker->add_option("--listen", wlisten, "HOST:PORT for traffic (env WORKER_LISTEN, default 0.0.0.0:8080)");
  worker->add_option("--admin-listen", admin_listen, "HOST:PORT for /metrics, /ping, /ready (env WORKER_ADMIN_LISTEN, default 127.0.0.1:9901)");
  worker->add_option("--threads", wthreads, "event-loop threads (env WORKER_THREADS, default: cores)")->check(CLI::Range(1, 256));
  worker->add_option("--config", config_file, "load config from this JSON file instead of the control plane (env WORKER_CONFIG_FILE)");
  worker->add_option("--config-dir", config_dir,
                     "load config from the *.yml/*.yaml files in this directory, reloaded on change (env WORKER_CONFIG_DIR)");
  worker->footer(
      "Other settings come from the environment (docs/worker.md): timeouts, limits, REDIS_URL, the risk engine,\n"
      "WORKER_UPSTREAM_CA_FILE, a PEM bundle trusted for https:// upstreams besides the system store,\n"
      "WORKER_JOURNAL_FSYNC (on: each config change flushed to disk before it applies), and the strict HTTP\n"
      "settings WORKER_PATH_NORMALIZATION, WORKER_MERGE_SLASHES and WORKER_UNDERSCORE_HEADERS (drop|allow|reject).\n"
      "Reports to the control plane: WORKER_USAGE_REPORT_SEC (service tokens seen, default 30) and\n"
      "WORKER_TRAFFIC_REPORT_SEC (per-project traffic for the hourly rollups, default 10).");

  std::string demo = "127.0.0.1:9000";
  auto* up = app.add_subcommand("up", "Run control plane + worker (+ a demo upstream) on embedded defaults (SQLite file, local limits).");
  up->add_option("--listen", listen, "control plane HOST:PORT (default 127.0.0.1:8000)");
  up->add_option("--gateway-listen", wlisten, "worker HOST:PORT (default 0.0.0.0:8080)");
  up->add_option("--admin-listen", admin_listen, "worker admin HOST:PORT (default 127.0.0.1:9901)");
  up->add_option("--demo-upstream", demo, "HOST:PORT of the built-in demo upstream, or 'off'")->capture_default_str();

  bool status_only = false;
  auto* migrate = app.add_subcommand("migrate", "Apply database migrations (DATABASE_URL / DATABASE_PATH) and exit.");
  migrate->add_flag("--status", status_only, "print the schema version without changing anything");

  auto* token_cmds = ag::cli::add_token_commands(app);
  auto* login_cmds = ag::cli::add_login_commands(app);

  CLI11_PARSE(app, argc, argv);
  setup_logging(log_level);

  try {
    ag::crypto::init();
    ag::env::load_dotenv_file(".env");
    if (*control) return ag::control::run_control_server(settings_with_overrides(listen, threads));
    if (*worker) {
      auto o = ag::gateway::load_worker_options();
      apply_worker_flags(o, wlisten, admin_listen, wthreads, config_file, config_dir);
      return ag::gateway::run_worker(std::move(o));
    }
    if (*up) {
      auto o = ag::gateway::load_worker_options();
      apply_worker_flags(o, wlisten, admin_listen, 0, "");
      o.config_file.clear();
      o.config_dir.clear();
      // Keep everything `up` writes in ./data unless told otherwise.
      if (!ag::env::get("WORKER_SNAPSHOT_PATH")) o.snapshot_path = "data/worker-snapshot.json";
      return run_up(settings_with_overrides(listen, threads), std::move(o), demo);
    }
    if (ag::cli::token_command_selected(token_cmds)) return ag::cli::run_token_command(token_cmds);
    if (ag::cli::login_command_selected(login_cmds)) return ag::cli::run_login_command(login_cmds);
    if (*migrate) {
      auto s = ag::control::load_settings();
      auto db = ag::store::open_database(s.database_url, 1);
      if (status_only) {
        int current = 0;
        db->with_connection([&](ag::store::Connection& c) {
          try {
            current = static_cast<int>(c.exec("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", {})
                                           .rows.at(0).integer(0));
          } catch (const ag::store::DatabaseError&) {
            current = 0;
          }
        });
        std::printf("schema version %d (latest %d, %s)\n", current, ag::store::latest_schema_version(),
                    std::string(db->engine_name()).c_str());
        return 0;
      }
      auto st = ag::store::migrate(*db);
      std::printf("schema version %d (%zu migration(s) applied, %s)\n", st.current, st.applied_now.size(),
                  std::string(db->engine_name()).c_str());
      return 0;
    }
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
  return 0;
}
