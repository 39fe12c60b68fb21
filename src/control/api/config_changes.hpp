#pragma once
// Recording worker-visible changes (docs/config-stream.md): every mutation that affects workers
// creates one ConfigChanges inside its transaction, adds its changes, and calls commit_notify()
// after the transaction has committed.
#include <cstdint>
#include <optional>
#include <string>

#include "control/api/context.hpp"

namespace ag::control {

class ConfigChanges {
 public:
  ConfigChanges(AppState& app, store::Connection& c) : app_(app), c_(c) {}

  void project_upsert(const std::string& project_id);  // reads the project's current row
  void project_delete(const std::string& project_id);  // also deletes its live keys
  void key_upsert(const std::string& key_id);          // reads the key's current row
  void key_delete(const std::string& project_id, const std::string& key_id, const std::string& hash);
  void token_revoke(const std::string& jti, std::int64_t expires_at_ms);
  void jwt_keys_set();  // reads the signing keys not retired
  std::int64_t version() const { return version_.value_or(0); }

 private:
  std::int64_t next_version();
  void add(std::string_view op, const json& change);

  AppState& app_;
  store::Connection& c_;
  std::optional<std::int64_t> version_;
};

// The worker-format JSON of a project row / key row (shared with the full document).
// Project columns: id, name, upstream_base_url, rate_limit_rpm, rate_limit_burst, key_policy, max_body_bytes, slug, risk
// `services`: the project's services in worker form (worker_services_json).
json worker_project_json(const store::Row& row, json services);
json worker_services_json(store::Connection& c, const std::string& project_id);
// Public signing keys not retired, in worker form: [{"kid","alg","public_key"}].
json worker_jwt_keys_json(store::Connection& c);
// Key columns: id, public_id, key_hash, expires_at, rate_limit_rpm, rate_limit_burst
json worker_key_json(const store::Row& row);
inline constexpr const char* kWorkerProjectColumns =
    "id, name, upstream_base_url, rate_limit_rpm, rate_limit_burst, key_policy, max_body_bytes, slug, risk";
inline constexpr const char* kWorkerKeyColumns =
    "id, public_id, key_hash, expires_at, rate_limit_rpm, rate_limit_burst";

// Wakes long polls after a commit (in this process; PostgreSQL also notifies the others).
void notify_config_change(AppState& app);

}  // namespace ag::control
