#pragma once
// Control-plane settings from the environment (and `.env`). Names follow the seeds:
// ENV, DATABASE_URL, DATABASE_PATH, JWT_SECRET_KEY, JWT_ALGORITHM, ACCESS_TTL_SEC,
// REFRESH_TTL_SEC, WORKER_SECRET_KEY, CONTROL_WORKER_SHARED_SECRET, CONTROL_LISTEN,
// CONTROL_THREADS, CORS_ORIGINS, GATEWAY_JWT_ALG, GATEWAY_JWT_SECRET, GATEWAY_JWT_AUDIENCE,
// GATEWAY_JWT_ISSUER, and the accounts settings (AUTH_MODE, PASSKEY_*, DEVICE_*, ANCHOR_*,
// AUTH_*_FAILURES*: docs/auth.md). docs/configuration.md lists each with its default.
#include <cstdint>
#include <string>
#include <vector>

namespace ag::control {

// Sign-in (docs/auth.md).
struct AuthSettings {
  bool passkey_mode = false;           // AUTH_MODE=passkey: new accounts only with a passkey
  std::string passkey_origin;          // PASSKEY_ORIGIN: the exact origin WebAuthn ceremonies come from
  std::string passkey_rp_id;           // PASSKEY_RP_ID, or the origin's host
  std::string passkey_rp_name = "Antigravity";
  std::int64_t challenge_ttl_sec = 300;
  std::string device_verification_url;  // DEVICE_VERIFICATION_URL ("" = this server's /device)
  std::int64_t device_code_ttl_sec = 600;
  std::int64_t device_poll_interval_sec = 5;
  std::int64_t anchor_access_ttl_sec = 86400;
  std::int64_t anchor_refresh_ttl_sec = 2592000;
  // Brute-force limits: failures counted per client IP and per account in a fixed window.
  std::int64_t failure_window_sec = 900;
  std::int64_t max_failures_per_ip = 30;
  std::int64_t max_failures_per_account = 10;
  std::int64_t max_device_polls_per_ip = 120;  // per minute, whatever the codes
  // External sign-in (OIDC_*): Bearer JWTs from this issuer map to users by `sub`.
  std::string oidc_issuer, oidc_audience;
  std::string oidc_email_claim = "email", oidc_name_claim = "name";
  std::int64_t oidc_jwks_cache_sec = 3600;
};

struct Settings {
  bool production = false;
  std::string database_url;  // normalised: sqlite:///abs/path or postgresql://...
  std::string jwt_secret;
  std::string jwt_algorithm = "HS256";
  std::int64_t access_ttl_sec = 3600;
  std::int64_t refresh_ttl_sec = 7 * 24 * 3600;
  AuthSettings auth;
  std::vector<std::string> worker_secrets;  // any one of them authorises a worker
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 8000;
  int threads = 4;     // handler threads (requests that reach the database), also the connection pool size
  int io_threads = 2;  // threads that read and write connections (and do TLS)
  std::string tls_cert_file;  // both set: the control plane listens for HTTPS only
  std::string tls_key_file;
  std::vector<std::string> cors_origins;
  // CONTROL_PUBLIC_URL: how clients reach this server (device verification links, RFC 8414
  // metadata); "" = from the request's Host.
  std::string public_url;
  // INVITE_DELIVERY=log: organisation invite links are also written to the log (they are bearer
  // secrets); by default they are only returned to the inviter.
  bool invite_delivery_log = false;
  // Agents (docs/organizations.md): calls per agent per window (AGENT_RATE_LIMIT,
  // AGENT_RATE_WINDOW_SEC), counted per control-plane process.
  std::int64_t agent_rate_limit = 20;
  std::int64_t agent_rate_window_sec = 60;
  // Traffic rollups are kept this many days (METRICS_RETENTION_DAYS).
  std::int64_t metrics_retention_days = 90;
  // The relay's limits (docs/relay.md, "Limits"): RELAY_*.
  std::int64_t relay_max_message_bytes = 1024 * 1024;
  std::int64_t relay_max_queue_bytes = 1024 * 1024;
  std::int64_t relay_messages_per_sec = 100;
  std::int64_t relay_message_burst = 200;
  std::int64_t relay_idle_timeout_sec = 60;
  bool relay_deflate = false;
  // Service tokens (docs/services-and-tokens.md).
  std::string gateway_jwt_alg = "ES256";  // HS256 | ES256 | EdDSA: how new tokens are signed
  std::string gateway_jwt_secret;         // HS256 only
  std::string gateway_jwt_audience;       // optional "aud" of issued tokens
  std::string gateway_jwt_issuer;         // optional "iss"
  std::vector<std::string> warnings;  // printed at start-up
};

// Reads settings. In production, a missing or weak secret is an error (std::runtime_error with a
// message naming the variable). In development, missing secrets are generated once and saved
// next to the database (dev-secrets.env, mode 0600), with a warning.
Settings load_settings();

// True when `secret` is too short or a well-known placeholder.
bool weak_secret(const std::string& secret);

}  // namespace ag::control
