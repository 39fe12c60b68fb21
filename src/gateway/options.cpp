// The worker's options from the environment (docs/configuration.md, "Worker"): every value is
// checked here, and a bad one stops the start with a message naming the variable.
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "common/env.hpp"
#include "common/listen.hpp"
#include "gateway/strict_http.hpp"
#include "gateway/worker.hpp"

namespace ag::gateway {

namespace {

// One of `allowed` (case-sensitive), or `def` when unset; anything else stops the start.
std::string env_choice(const char* name, const char* def, std::initializer_list<const char*> allowed) {
  auto v = env::get(name);
  if (!v) return def;
  std::string list;
  for (const char* a : allowed) {
    if (*v == a) return *v;
    list += list.empty() ? "" : ", ";
    list += a;
  }
  throw std::runtime_error(std::string(name) + " must be one of: " + list);
}

bool env_switch(const char* name, bool def) {
  auto v = env_choice(name, def ? "on" : "off", {"on", "off", "true", "false", "1", "0"});
  return v == "on" || v == "true" || v == "1";
}

}  // namespace

WorkerOptions load_worker_options() {
  WorkerOptions o;
  parse_listen(env::get_or("WORKER_LISTEN", "0.0.0.0:8080"), "WORKER_LISTEN", o.listen_host, o.listen_port);
  parse_listen(env::get_or("WORKER_ADMIN_LISTEN", "127.0.0.1:9901"), "WORKER_ADMIN_LISTEN", o.admin_host,
                        o.admin_port);
  o.threads = static_cast<int>(env::get_int("WORKER_THREADS", 0, 0, 256));
  o.trusted_proxies = env::get_or("WORKER_TRUSTED_PROXIES", "");
  o.header_timeout_ms = env::get_int("WORKER_HEADER_TIMEOUT_SEC", 10, 1, 3600) * 1000;
  o.idle_timeout_ms = env::get_int("WORKER_IDLE_TIMEOUT_SEC", 60, 1, 86400) * 1000;
  o.upstream_connect_timeout_ms = env::get_int("WORKER_UPSTREAM_CONNECT_TIMEOUT_MS", 3000, 10, 600000);
  o.upstream_timeout_ms = env::get_int("WORKER_UPSTREAM_TIMEOUT_SEC", 30, 1, 86400) * 1000;
  o.drain_ms = env::get_int("WORKER_DRAIN_SEC", 15, 0, 3600) * 1000;
  o.max_header_bytes = static_cast<std::size_t>(env::get_int("WORKER_MAX_HEADER_BYTES", 16384, 1024, 1 << 20));
  o.access_log = env::get_or("WORKER_ACCESS_LOG", "stdout");
  o.redis_url = env::get_or("REDIS_URL", "");
  o.config_file = env::get_or("WORKER_CONFIG_FILE", "");
  o.control_url = env::get_or("CONTROL_API_BASE_URL", "");
  o.control_secret = env::get_or("CONTROL_WORKER_SHARED_SECRET", env::get_or("WORKER_SECRET_KEY", ""));
  o.poll_ms = env::get_int("WORKER_CONFIG_POLL_SEC", 1, 1, 3600) * 1000;
  o.snapshot_path = env::get_or("WORKER_SNAPSHOT_PATH", "worker-snapshot.json");
  if (o.snapshot_path == "off") o.snapshot_path.clear();
  o.snapshot_interval_ms = env::get_int("WORKER_SNAPSHOT_INTERVAL_SEC", 5, 1, 86400) * 1000;
  o.snapshot_max_age_ms = env::get_int("WORKER_SNAPSHOT_MAX_AGE_SEC", 86400, 1, 365LL * 86400) * 1000;
  o.journal_fsync = env_switch("WORKER_JOURNAL_FSYNC", false);
  o.normalize_path = env_switch("WORKER_PATH_NORMALIZATION", true);
  o.merge_slashes = env_switch("WORKER_MERGE_SLASHES", true);
  auto us = env_choice("WORKER_UNDERSCORE_HEADERS", "drop", {"drop", "allow", "reject"});
  o.underscore_headers = us == "allow"    ? strict::Underscores::kAllow
                         : us == "reject" ? strict::Underscores::kReject
                                          : strict::Underscores::kDrop;
  o.config_dir = env::get_or("WORKER_CONFIG_DIR", "");
  o.jwt_secret = env::get_or("GATEWAY_JWT_SECRET", "");
  if (!o.jwt_secret.empty() && o.jwt_secret.size() < 32)
    throw std::runtime_error("GATEWAY_JWT_SECRET must be at least 32 characters");
  o.jwt_audience = env::get_or("GATEWAY_JWT_AUDIENCE", "");
  o.jwt_issuer = env::get_or("GATEWAY_JWT_ISSUER", "");
  o.jwt_leeway_sec = env::get_int("GATEWAY_JWT_LEEWAY_SEC", 30, 0, 3600);
  o.usage_report_ms = env::get_int("WORKER_USAGE_REPORT_SEC", 30, 1, 3600) * 1000;
  o.traffic_report_ms = env::get_int("WORKER_TRAFFIC_REPORT_SEC", 10, 1, 3600) * 1000;
  o.ip_deny = env::get_or("WORKER_IP_DENY", "");
  o.ip_allow = env::get_or("WORKER_IP_ALLOW", "");
  o.auth_failure_limit = env::get_int("WORKER_AUTH_FAILURE_LIMIT", 50, 0, 1000000);
  o.auth_failure_window_sec = env::get_int("WORKER_AUTH_FAILURE_WINDOW_SEC", 60, 1, 86400);
  o.risk_slots = static_cast<std::size_t>(env::get_int("WORKER_RISK_SLOTS", 65536, 16, 1 << 24));
  o.max_connections = env::get_int("WORKER_MAX_CONNECTIONS", 0, 0, 10'000'000);
  o.geoip_db = env::get_or("WORKER_GEOIP_DB", "");
  o.ready_wait_ms = env::get_int("WORKER_READY_WAIT_SEC", 5, 0, 300) * 1000;
  o.max_memory_mb = env::get_int("WORKER_MAX_MEMORY_MB", 0, 0, 1'000'000);
  o.upstream_ca_file = env::get_or("WORKER_UPSTREAM_CA_FILE", "");
  return o;
}

}  // namespace ag::gateway
