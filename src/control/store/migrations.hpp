#pragma once
// Versioned schema migrations for both engines. Pending migrations are applied together in one
// transaction (all or nothing) and recorded in `schema_migrations`; applying is idempotent and
// safe to run from several control-plane processes at once (PostgreSQL takes an advisory lock).
#include <string>
#include <vector>

#include "control/store/database.hpp"

namespace ag::store {

struct MigrationStatus {
  int current = 0;  // highest applied version
  int latest = 0;   // highest version this binary knows
  std::vector<int> applied_now;
};

MigrationStatus migrate(Database& db);
int latest_schema_version();

}  // namespace ag::store
