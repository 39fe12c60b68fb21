// antigravity: one binary, several roles.
//   antigravity control   the control plane (management API)
//   antigravity up        everything on embedded defaults (today: the control plane)
//   antigravity migrate   apply database migrations and exit
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>

#include "common/crypto.hpp"
#include "common/env.hpp"
#include "control/app.hpp"
#include "control/settings.hpp"
#include "control/store/database.hpp"
#include "control/store/migrations.hpp"

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
  if (!listen.empty()) ag::control::parse_listen(listen, "--listen", s.listen_host, s.listen_port);
  if (threads > 0) s.threads = threads;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Antigravity: a self-hosted API gateway (control plane + worker).\n"
               "Settings come from the environment and a .env file in the working directory;\n"
               "see docs/configuration.md.",
               "antigravity"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  app.set_version_flag("--version", AG_VERSION);

  std::string listen;
  int threads = 0;
  auto* control = app.add_subcommand("control", "Run the control plane (management API).");
  control->add_option("--listen", listen, "HOST:PORT to listen on (env CONTROL_LISTEN, default 127.0.0.1:8000)");
  control->add_option("--threads", threads, "HTTP threads (env CONTROL_THREADS, default 4)")->check(CLI::Range(1, 256));

  auto* up = app.add_subcommand("up", "Run the whole system on embedded defaults (SQLite file, local limits).");
  up->add_option("--listen", listen, "control plane HOST:PORT (default 127.0.0.1:8000)");

  bool status_only = false;
  auto* migrate = app.add_subcommand("migrate", "Apply database migrations (DATABASE_URL / DATABASE_PATH) and exit.");
  migrate->add_flag("--status", status_only, "print the schema version without changing anything");

  CLI11_PARSE(app, argc, argv);
  setup_logging(log_level);

  try {
    ag::crypto::init();
    ag::env::load_dotenv_file(".env");
    if (*control || *up) {
      return ag::control::run_control_server(settings_with_overrides(listen, threads));
    }
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
