#include "control/store/migrations.hpp"

#include <string>
#include <string_view>

#include "common/time.hpp"

namespace ag::store {

namespace {

struct Migration {
  int version;
  const char* name;
  const char* sqlite;
  const char* postgres;
};

// Timestamps are integer milliseconds since the epoch in both engines; booleans are not needed
// (a NULL `revoked_at` means "not revoked"). `seq` columns give a stable "newest first" order.
// The same DDL on both engines.
constexpr const char* kGatewaysTable = R"SQL(
CREATE TABLE gateways (
  id TEXT PRIMARY KEY,
  address TEXT,
  version_applied BIGINT NOT NULL,
  uptime_sec BIGINT NOT NULL,
  requests BIGINT NOT NULL,
  first_seen BIGINT NOT NULL,
  last_seen BIGINT NOT NULL
);
)SQL";


// Services, service tokens (the `gateway_tokens` audit table and its revocation list) and the
// signing keys. The same DDL on both engines; `seq` orders tokens newest first.
constexpr const char* kServicesAndTokens = R"SQL(
ALTER TABLE projects ADD COLUMN slug TEXT;
CREATE UNIQUE INDEX projects_slug ON projects(slug);
CREATE TABLE services (
  project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  spec TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (project_id, name)
);
CREATE TABLE gateway_tokens (
  seq BIGINT NOT NULL,
  id TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE,
  jti TEXT NOT NULL UNIQUE,
  project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  project TEXT NOT NULL,
  service TEXT NOT NULL,
  backend TEXT,
  description TEXT,
  created_by TEXT,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  last_used_at BIGINT,
  is_active INTEGER NOT NULL,
  revoked_at BIGINT,
  revoked_by TEXT,
  revocation_reason TEXT,
  metadata TEXT,
  alg TEXT NOT NULL,
  kid TEXT
);
CREATE INDEX gateway_tokens_project ON gateway_tokens(project_id, seq);
CREATE TABLE gateway_tokens_revoked (
  jti TEXT PRIMARY KEY,
  revoked_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  reason TEXT
);
CREATE TABLE jwt_signing_keys (
  kid TEXT PRIMARY KEY,
  alg TEXT NOT NULL,
  public_pem TEXT NOT NULL,
  private_sealed TEXT,
  created_at BIGINT NOT NULL,
  retired_at BIGINT
);
)SQL";

constexpr const char* kOperators = R"SQL(
ALTER TABLE users ADD COLUMN is_operator INTEGER NOT NULL DEFAULT 0;
UPDATE users SET is_operator = 1 WHERE seq = (SELECT MIN(seq) FROM users);
ALTER TABLE gateway_tokens ADD COLUMN created_by_label TEXT;
)SQL";

// Accounts (docs/auth.md): passkeys, one-use WebAuthn challenges, device codes, and what a
// session is (a browser's or a device's, whose access tokens are opaque and stored hashed).
// A user without a password has password_hash '' (no password matches it).
constexpr const char* kAccounts = R"SQL(
ALTER TABLE sessions ADD COLUMN kind TEXT NOT NULL DEFAULT 'web';
ALTER TABLE sessions ADD COLUMN client_id TEXT;
ALTER TABLE refresh_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'web';
CREATE TABLE passkeys (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  credential_id TEXT NOT NULL UNIQUE,
  public_key TEXT NOT NULL,
  alg BIGINT NOT NULL,
  sign_count BIGINT NOT NULL,
  backup_eligible INTEGER NOT NULL,
  backup_state INTEGER NOT NULL,
  aaguid TEXT NOT NULL,
  fmt TEXT NOT NULL,
  name TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  last_used_at BIGINT
);
CREATE INDEX passkeys_user ON passkeys(user_id);
CREATE TABLE webauthn_challenges (
  challenge_hash TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  user_id TEXT,
  email TEXT,
  name TEXT,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);
CREATE TABLE device_codes (
  device_code_hash TEXT PRIMARY KEY,
  user_code TEXT NOT NULL UNIQUE,
  client_id TEXT,
  status TEXT NOT NULL,
  user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
  interval_sec BIGINT NOT NULL,
  last_poll_at BIGINT,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);
CREATE TABLE device_access_tokens (
  token_hash TEXT PRIMARY KEY,
  session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);
CREATE INDEX device_access_tokens_session ON device_access_tokens(session_id);
)SQL";

// A table's own sequence, as each engine spells it (substituted when a migration runs).
constexpr std::string_view kSerial = "@SERIAL@";

constexpr const char* kInitialSchema = R"SQL(
CREATE TABLE users (
  seq @SERIAL@,
  id TEXT NOT NULL UNIQUE,
  email TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  password_hash TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE TABLE sessions (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  revoked_at BIGINT,
  revoke_reason TEXT,
  ip TEXT,
  user_agent TEXT
);
CREATE INDEX sessions_user ON sessions(user_id);
CREATE TABLE refresh_tokens (
  token_hash TEXT PRIMARY KEY,
  session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  used_at BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens(session_id);
CREATE TABLE projects (
  seq @SERIAL@,
  id TEXT NOT NULL UNIQUE,
  owner_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  upstream_base_url TEXT NOT NULL,
  rate_limit_rpm BIGINT NOT NULL,
  rate_limit_burst BIGINT NOT NULL,
  key_policy TEXT NOT NULL,
  max_body_bytes BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  UNIQUE (owner_id, name)
);
CREATE TABLE api_keys (
  seq @SERIAL@,
  id TEXT NOT NULL UNIQUE,
  project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  public_id TEXT NOT NULL UNIQUE,
  key_hash TEXT NOT NULL UNIQUE,
  label TEXT,
  created_at BIGINT NOT NULL,
  expires_at BIGINT,
  revoked_at BIGINT,
  revoked_by TEXT
);
CREATE INDEX api_keys_project ON api_keys(project_id);
CREATE TABLE audit_log (
  id @SERIAL@,
  actor_id TEXT,
  action TEXT NOT NULL,
  target_type TEXT,
  target_id TEXT,
  detail TEXT,
  request_id TEXT,
  ip TEXT,
  created_at BIGINT NOT NULL
);
CREATE INDEX audit_log_actor ON audit_log(actor_id, id);
CREATE TABLE config_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  version BIGINT NOT NULL
);
INSERT INTO config_state (id, version) VALUES (1, 0);
)SQL";

constexpr const char* kConfigChanges = R"SQL(
CREATE TABLE config_changes (
  seq @SERIAL@,
  version BIGINT NOT NULL,
  op TEXT NOT NULL,
  payload TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE INDEX config_changes_version ON config_changes(version);
)SQL";

// External sign-in (docs/auth.md): which user an issuer's `sub` is.
constexpr const char* kExternalIdentities = R"SQL(
CREATE TABLE external_identities (
  issuer TEXT NOT NULL,
  subject TEXT NOT NULL,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (issuer, subject)
);
CREATE INDEX external_identities_user ON external_identities(user_id);
)SQL";

// Organisations (docs/organizations.md): each user gets a personal organisation whose id is the
// user's own, owning the projects that user made.
constexpr const char* kOrganizations = R"SQL(
CREATE TABLE organizations (
  seq @SERIAL@,
  id TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  personal INTEGER NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL
);
CREATE TABLE memberships (
  org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  role TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user ON memberships(user_id);
CREATE TABLE invites (
  id TEXT PRIMARY KEY,
  org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
  email TEXT NOT NULL,
  role TEXT NOT NULL,
  token_hash TEXT NOT NULL UNIQUE,
  invited_by TEXT,
  status TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  decided_at BIGINT
);
CREATE INDEX invites_org ON invites(org_id);
ALTER TABLE users ADD COLUMN active_org_id TEXT;
ALTER TABLE projects ADD COLUMN org_id TEXT;
INSERT INTO organizations (id, name, personal, created_at) SELECT id, name, 1, created_at FROM users;
INSERT INTO memberships (org_id, user_id, role, created_at) SELECT id, id, 'owner', created_at FROM users;
UPDATE users SET active_org_id = id;
UPDATE projects SET org_id = owner_id;
CREATE INDEX projects_org ON projects(org_id);
)SQL";

// Agents, the organisation activity feed and traffic rollups (docs/organizations.md). An agent's
// token is kept as a slow salted hash found by its prefix; audit records name their organisation
// and project and whether a user or an agent acted; traffic is one row per project and hour
// (and one per latency bucket), with the worker batches already counted.
constexpr const char* kAgentsActivityTraffic = R"SQL(
CREATE TABLE agents (
  seq @SERIAL@,
  id TEXT NOT NULL UNIQUE,
  org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  role TEXT NOT NULL,
  token_prefix TEXT NOT NULL,
  token_hash TEXT NOT NULL,
  created_by TEXT,
  created_at BIGINT NOT NULL,
  expires_at BIGINT,
  rotated_at BIGINT,
  revoked_at BIGINT,
  last_seen_at BIGINT
);
CREATE INDEX agents_prefix ON agents(token_prefix);
CREATE INDEX agents_org ON agents(org_id);
ALTER TABLE audit_log ADD COLUMN actor_type TEXT;
ALTER TABLE audit_log ADD COLUMN org_id TEXT;
ALTER TABLE audit_log ADD COLUMN project_id TEXT;
CREATE INDEX audit_log_org ON audit_log(org_id, id);
UPDATE audit_log SET actor_type = 'user' WHERE actor_id IS NOT NULL;
UPDATE audit_log SET project_id = target_id WHERE target_type = 'project';
UPDATE audit_log SET org_id = (SELECT p.org_id FROM projects p WHERE p.id = audit_log.project_id) WHERE project_id IS NOT NULL;
UPDATE audit_log SET org_id = target_id WHERE target_type = 'organization';
CREATE TABLE traffic_hourly (
  project_id TEXT NOT NULL,
  hour BIGINT NOT NULL,
  requests BIGINT NOT NULL,
  errors BIGINT NOT NULL,
  throttled BIGINT NOT NULL,
  blocked BIGINT NOT NULL,
  PRIMARY KEY (project_id, hour)
);
CREATE INDEX traffic_hourly_hour ON traffic_hourly(hour);
CREATE TABLE traffic_latency (
  project_id TEXT NOT NULL,
  hour BIGINT NOT NULL,
  bucket INTEGER NOT NULL,
  count BIGINT NOT NULL,
  PRIMARY KEY (project_id, hour, bucket)
);
CREATE TABLE traffic_batches (
  worker_id TEXT NOT NULL,
  batch_id TEXT NOT NULL,
  received_at BIGINT NOT NULL,
  PRIMARY KEY (worker_id, batch_id)
);
)SQL";

// Listed, with what each does to an existing database, in docs/configuration.md ("Database"):
// a new migration gets its row there too.
const Migration kMigrations[] = {
    {1, "initial schema",
     kInitialSchema,
     kInitialSchema},
    {2, "per-key rate limit override",
     "ALTER TABLE api_keys ADD COLUMN rate_limit_rpm BIGINT; ALTER TABLE api_keys ADD COLUMN rate_limit_burst BIGINT;",
     "ALTER TABLE api_keys ADD COLUMN rate_limit_rpm BIGINT; ALTER TABLE api_keys ADD COLUMN rate_limit_burst BIGINT;"},
    {3, "config change log",
     kConfigChanges,
     kConfigChanges},
    {4, "gateways (worker heartbeats)", kGatewaysTable, kGatewaysTable},
    {5, "services, service tokens and signing keys", kServicesAndTokens, kServicesAndTokens},
    {6, "per-project risk policy", "ALTER TABLE projects ADD COLUMN risk TEXT;", "ALTER TABLE projects ADD COLUMN risk TEXT;"},
    // The first user (by registration order) becomes the operator of an upgraded database
    // (docs/configuration.md, "Operators"); tokens keep a client-supplied creator apart.
    {7, "operators and token creator labels", kOperators, kOperators},
    {8, "accounts: passkeys, WebAuthn challenges, device codes, device sessions", kAccounts, kAccounts},
    {9, "external identities (OIDC sign-in)", kExternalIdentities, kExternalIdentities},
    {10, "organisations: personal organisations, memberships, invites", kOrganizations, kOrganizations},
    {11, "project names unique per organisation", "CREATE UNIQUE INDEX projects_org_name ON projects(org_id, name);",
     "CREATE UNIQUE INDEX projects_org_name ON projects(org_id, name);"},
    {12, "agents, organisation activity, traffic rollups", kAgentsActivityTraffic, kAgentsActivityTraffic},
};

constexpr const char* kCreateTable =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT "
    "NULL, applied_at BIGINT NOT NULL)";

}  // namespace

int latest_schema_version() { return kMigrations[std::size(kMigrations) - 1].version; }

MigrationStatus migrate(Database& db) {
  MigrationStatus status;
  status.latest = latest_schema_version();
  db.transaction([&](Connection& c) {
    // Serialise concurrent migrators on PostgreSQL (SQLite's BEGIN IMMEDIATE already does).
    if (db.engine() == Engine::kPostgres) c.exec("SELECT pg_advisory_xact_lock(7243001)", {});
    c.exec_script(kCreateTable);
    auto r = c.exec("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", {});
    status.current = static_cast<int>(r.rows.at(0).integer(0));
    for (const auto& m : kMigrations) {
      if (m.version <= status.current) continue;
      std::string sql = db.engine() == Engine::kSqlite ? m.sqlite : m.postgres;
      const std::string_view serial =
          db.engine() == Engine::kSqlite ? "INTEGER PRIMARY KEY AUTOINCREMENT" : "BIGSERIAL PRIMARY KEY";
      for (auto at = sql.find(kSerial); at != std::string::npos; at = sql.find(kSerial, at + serial.size()))
        sql.replace(at, kSerial.size(), serial);
      c.exec_script(sql);
      c.exec("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
             {std::int64_t{m.version}, std::string(m.name), now_ms()});
      status.applied_now.push_back(m.version);
      status.current = m.version;
    }
  });
  return status;
}

}  // namespace ag::store
