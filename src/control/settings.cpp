#include "control/settings.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "common/crypto.hpp"
#include "common/env.hpp"
#include "common/http_url.hpp"
#include "common/files.hpp"
#include "common/jwt.hpp"
#include "common/listen.hpp"

namespace ag::control {

namespace {

std::vector<std::string> split_csv(const std::string& s) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i <= s.size()) {
    auto j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string item = s.substr(i, j - i);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
    i = j + 1;
  }
  return out;
}

// An origin as browsers send it: scheme://host[:port], nothing after. "" or what is wrong.
std::string check_origin(const std::string& o) {
  if (o == "*") return "is a wildcard, which credentials may not be used with";
  HttpUrl u;
  if (auto e = parse_http_url(o, u); !e.empty()) return e;
  if (!u.path.empty()) return "has a path (an origin ends after the host or port)";
  return {};
}

AuthSettings load_auth_settings() {
  AuthSettings a;
  auto mode = env::get_or("AUTH_MODE", "basic");
  if (mode != "basic" && mode != "passkey") throw std::runtime_error("AUTH_MODE must be basic or passkey (got '" + mode + "')");
  a.passkey_mode = mode == "passkey";
  a.passkey_origin = env::get_or("PASSKEY_ORIGIN", "");
  if (!a.passkey_origin.empty()) {
    if (auto e = check_origin(a.passkey_origin); !e.empty())
      throw std::runtime_error("PASSKEY_ORIGIN: '" + a.passkey_origin + "' " + e);
    HttpUrl u;
    parse_http_url(a.passkey_origin, u);
    a.passkey_rp_id = env::get_or("PASSKEY_RP_ID", std::string(u.host));
    // The rp id must be the origin's host or a registrable suffix of it (WebAuthn 5.1.3).
    const std::string host(u.host);
    const std::string& rp = a.passkey_rp_id;
    bool suffix = host == rp || (host.size() > rp.size() && host.compare(host.size() - rp.size(), rp.size(), rp) == 0 &&
                                 host[host.size() - rp.size() - 1] == '.');
    if (rp.empty() || !suffix)
      throw std::runtime_error("PASSKEY_RP_ID must be PASSKEY_ORIGIN's host or a parent domain of it");
  } else if (a.passkey_mode) {
    throw std::runtime_error("AUTH_MODE=passkey needs PASSKEY_ORIGIN (the exact origin of the sign-in page)");
  }
  a.passkey_rp_name = env::get_or("PASSKEY_RP_NAME", "Antigravity");
  a.challenge_ttl_sec = env::get_int("CHALLENGE_TTL_SEC", 300, 5, 3600);
  a.device_verification_url = env::get_or("DEVICE_VERIFICATION_URL", "");
  if (!a.device_verification_url.empty()) {
    HttpUrl u;
    if (auto e = parse_http_url(a.device_verification_url, u); !e.empty())
      throw std::runtime_error("DEVICE_VERIFICATION_URL: " + e);
  }
  a.device_code_ttl_sec = env::get_int("DEVICE_CODE_TTL_SEC", 600, 5, 3600);
  a.device_poll_interval_sec = env::get_int("DEVICE_CODE_POLL_INTERVAL_SEC", 5, 1, 60);
  a.anchor_access_ttl_sec = env::get_int("ANCHOR_ACCESS_TTL_SEC", 86400, 60, 30LL * 86400);
  a.anchor_refresh_ttl_sec = env::get_int("ANCHOR_REFRESH_TTL_SEC", 2592000, 300, 365LL * 86400);
  a.failure_window_sec = env::get_int("AUTH_FAILURE_WINDOW_SEC", 900, 10, 86400);
  a.max_failures_per_ip = env::get_int("AUTH_MAX_FAILURES_PER_IP", 30, 1, 1000000);
  a.max_failures_per_account = env::get_int("AUTH_MAX_FAILURES_PER_ACCOUNT", 10, 1, 1000000);
  a.max_device_polls_per_ip = env::get_int("DEVICE_MAX_POLLS_PER_IP_PER_MIN", 120, 1, 1000000);
  a.oidc_issuer = env::get_or("OIDC_ISSUER", "");
  while (!a.oidc_issuer.empty() && a.oidc_issuer.back() == '/') a.oidc_issuer.pop_back();
  if (!a.oidc_issuer.empty()) {
    HttpUrl u;
    if (auto e = parse_http_url(a.oidc_issuer, u); !e.empty()) throw std::runtime_error("OIDC_ISSUER: " + e);
    // Plain HTTP only on this machine (a local issuer): keys fetched in the clear could be swapped.
    bool loopback = u.host == "127.0.0.1" || u.host == "::1" || u.host == "localhost";
    if (!u.tls && !loopback) throw std::runtime_error("OIDC_ISSUER must be https:// (http:// only for a loopback issuer)");
    a.oidc_audience = env::get_or("OIDC_AUDIENCE", "");
    if (a.oidc_audience.empty()) throw std::runtime_error("OIDC_ISSUER needs OIDC_AUDIENCE (the client id tokens are issued for)");
  }
  a.oidc_email_claim = env::get_or("OIDC_EMAIL_CLAIM", "email");
  a.oidc_name_claim = env::get_or("OIDC_NAME_CLAIM", "name");
  a.oidc_jwks_cache_sec = env::get_int("OIDC_JWKS_CACHE_SEC", 3600, 10, 86400);
  return a;
}

}  // namespace

bool weak_secret(const std::string& secret) {
  static const char* kPlaceholders[] = {"super-secret-jwt-key", "super-long-random-string",
                                        "changeme", "change-me", "secret", "password"};
  if (secret.size() < 32) return true;
  std::string lower = secret;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  for (const char* p : kPlaceholders)
    if (lower.find(p) != std::string::npos) return true;
  // A single repeated character is not a secret either.
  return std::all_of(secret.begin(), secret.end(), [&](char c) { return c == secret[0]; });
}

Settings load_settings() {
  Settings s;
  std::string env_name = env::get_or("ENV", "development");
  std::transform(env_name.begin(), env_name.end(), env_name.begin(), ::tolower);
  s.production = env_name == "production" || env_name == "prod";

  // Database: DATABASE_URL wins; DATABASE_PATH names a SQLite file; default ./data/antigravity.db.
  std::filesystem::path data_dir = "data";
  if (auto url = env::get("DATABASE_URL")) {
    s.database_url = *url;
    if (url->rfind("sqlite:", 0) == 0) {
      std::string path = url->rfind("sqlite:///", 0) == 0 ? url->substr(9)
                         : url->rfind("sqlite://", 0) == 0 ? url->substr(9)
                                                            : url->substr(7);
      if (path != ":memory:") data_dir = std::filesystem::path(path).parent_path();
    }
  } else {
    std::filesystem::path p = env::get_or("DATABASE_PATH", "data/antigravity.db");
    p = std::filesystem::absolute(p);
    data_dir = p.parent_path();
    s.database_url = "sqlite://" + p.string();
  }
  if (data_dir.empty()) data_dir = ".";

  if (auto alg = env::get("JWT_ALGORITHM")) {
    if (!jwt::parse_algorithm(*alg))
      throw std::runtime_error("JWT_ALGORITHM must be HS256, HS384 or HS512 (got '" + *alg + "')");
    s.jwt_algorithm = *alg;
  }
  s.access_ttl_sec = env::get_int("ACCESS_TTL_SEC", 3600, 1, 7 * 24 * 3600);
  s.refresh_ttl_sec = env::get_int("REFRESH_TTL_SEC", 7 * 24 * 3600, 60, 365LL * 24 * 3600);
  s.auth = load_auth_settings();
  s.public_url = env::get_or("CONTROL_PUBLIC_URL", "");
  if (auto d = env::get_or("INVITE_DELIVERY", "return"); d != "return" && d != "log")
    throw std::runtime_error("INVITE_DELIVERY must be return or log (got '" + d + "')");
  else
    s.invite_delivery_log = d == "log";
  while (!s.public_url.empty() && s.public_url.back() == '/') s.public_url.pop_back();
  if (!s.public_url.empty()) {
    HttpUrl u;
    if (auto e = parse_http_url(s.public_url, u); !e.empty()) throw std::runtime_error("CONTROL_PUBLIC_URL: " + e);
  }
  s.agent_rate_limit = env::get_int("AGENT_RATE_LIMIT", 20, 1, 1'000'000'000);
  s.agent_rate_window_sec = env::get_int("AGENT_RATE_WINDOW_SEC", 60, 1, 86400);
  s.metrics_retention_days = env::get_int("METRICS_RETENTION_DAYS", 90, 1, 3650);
  s.relay_max_message_bytes = env::get_int("RELAY_MAX_MESSAGE_BYTES", 1024 * 1024, 1024, 64LL * 1024 * 1024);
  s.relay_max_queue_bytes = env::get_int("RELAY_MAX_QUEUE_BYTES", 1024 * 1024, 1024, 1024LL * 1024 * 1024);
  s.relay_messages_per_sec = env::get_int("RELAY_MAX_MESSAGES_PER_SEC", 100, 1, 1'000'000);
  s.relay_message_burst = env::get_int("RELAY_MESSAGE_BURST", 200, 1, 1'000'000);
  s.relay_idle_timeout_sec = env::get_int("RELAY_IDLE_TIMEOUT_SEC", 60, 2, 3600);
  if (auto d = env::get_or("RELAY_PERMESSAGE_DEFLATE", "off"); d != "on" && d != "off")
    throw std::runtime_error("RELAY_PERMESSAGE_DEFLATE must be on or off (got '" + d + "')");
  else
    s.relay_deflate = d == "on";
  s.threads = static_cast<int>(env::get_int("CONTROL_THREADS", 4, 1, 256));
  s.io_threads = static_cast<int>(env::get_int("CONTROL_IO_THREADS", 2, 1, 64));
  s.tls_cert_file = env::get_or("CONTROL_TLS_CERT_FILE", "");
  s.tls_key_file = env::get_or("CONTROL_TLS_KEY_FILE", "");
  if (s.tls_cert_file.empty() != s.tls_key_file.empty())
    throw std::runtime_error("CONTROL_TLS_CERT_FILE and CONTROL_TLS_KEY_FILE must be set together");
  parse_listen(env::get_or("CONTROL_LISTEN", "127.0.0.1:8000"), "CONTROL_LISTEN", s.listen_host,
               s.listen_port);
  s.cors_origins = split_csv(env::get_or("CORS_ORIGINS", ""));
  for (const auto& o : s.cors_origins)
    if (auto e = check_origin(o); !e.empty())
      throw std::runtime_error("CORS_ORIGINS: '" + o + "' " + e + " (list exact origins, e.g. https://app.example.com)");

  s.gateway_jwt_alg = env::get_or("GATEWAY_JWT_ALG", "ES256");
  if (s.gateway_jwt_alg != "HS256" && s.gateway_jwt_alg != "ES256" && s.gateway_jwt_alg != "EdDSA")
    throw std::runtime_error("GATEWAY_JWT_ALG must be HS256, ES256 or EdDSA (got '" + s.gateway_jwt_alg + "')");
  s.gateway_jwt_audience = env::get_or("GATEWAY_JWT_AUDIENCE", "");
  s.gateway_jwt_issuer = env::get_or("GATEWAY_JWT_ISSUER", "");
  auto gateway_secret = env::get("GATEWAY_JWT_SECRET");
  const bool hs256 = s.gateway_jwt_alg == "HS256";

  auto jwt_secret = env::get("JWT_SECRET_KEY");
  std::vector<std::string> worker;
  if (auto w = env::get("WORKER_SECRET_KEY")) worker.push_back(*w);
  if (auto w = env::get("CONTROL_WORKER_SHARED_SECRET"); w && (worker.empty() || *w != worker[0]))
    worker.push_back(*w);

  if (s.production) {
    if (!jwt_secret)
      throw std::runtime_error("ENV=production: JWT_SECRET_KEY is not set (use at least 32 random characters)");
    if (weak_secret(*jwt_secret))
      throw std::runtime_error("ENV=production: JWT_SECRET_KEY is weak (use at least 32 random characters, not a placeholder)");
    if (worker.empty())
      throw std::runtime_error("ENV=production: WORKER_SECRET_KEY (or CONTROL_WORKER_SHARED_SECRET) is not set");
    for (const auto& w : worker)
      if (weak_secret(w))
        throw std::runtime_error("ENV=production: WORKER_SECRET_KEY / CONTROL_WORKER_SHARED_SECRET is weak (use at least 32 random characters)");
    if (hs256 && (!gateway_secret || weak_secret(*gateway_secret)))
      throw std::runtime_error("ENV=production: GATEWAY_JWT_ALG=HS256 needs GATEWAY_JWT_SECRET (at least 32 random characters)");
  } else if (!jwt_secret || worker.empty() || (hs256 && !gateway_secret)) {
    // Development: generate the missing secrets once and keep them beside the database, so
    // tokens and workers keep working across restarts.
    std::filesystem::create_directories(data_dir);
    auto file = data_dir / "dev-secrets.env";
    auto saved = [&] {
      std::ifstream in(file);
      std::stringstream ss;
      ss << in.rdbuf();
      return env::parse_dotenv(ss.str());
    }();
    bool changed = false;
    auto ensure = [&](const char* name) -> std::string {
      auto it = saved.find(name);
      if (it != saved.end() && !it->second.empty()) return it->second;
      changed = true;
      return saved[name] = crypto::random_base62(48);
    };
    if (!jwt_secret) jwt_secret = ensure("JWT_SECRET_KEY");
    if (worker.empty()) worker.push_back(ensure("WORKER_SECRET_KEY"));
    if (hs256 && !gateway_secret) gateway_secret = ensure("GATEWAY_JWT_SECRET");
    if (changed) {
      // Owner-only from the moment it exists, and never half-written.
      std::string text = "# Development secrets generated by antigravity. Do not use in production.\n";
      for (auto& [k, v] : saved) text += k + '=' + v + '\n';
      if (!files::save_private_atomically(file.string(), text)) {
        const std::string cause = std::strerror(errno);
        throw std::runtime_error("cannot write " + file.string() + ": " + cause +
                                 " (set JWT_SECRET_KEY and WORKER_SECRET_KEY, or make the data directory writable)");
      }
    } else if (struct stat st{}; ::stat(file.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      // Written by an older version, or by hand: owner only.
      if (::chmod(file.c_str(), 0600) != 0)
        s.warnings.push_back(file.string() + " is readable by other users and could not be made owner-only: " +
                             std::strerror(errno));
    }
    s.warnings.push_back("development mode: generated secrets are in " + file.string() +
                         " (set JWT_SECRET_KEY and WORKER_SECRET_KEY, and ENV=production, for real deployments)");
  }
  if (gateway_secret && !gateway_secret->empty() && gateway_secret->size() < 32)
    throw std::runtime_error("GATEWAY_JWT_SECRET must be at least 32 characters");
  s.jwt_secret = *jwt_secret;
  s.worker_secrets = std::move(worker);
  s.gateway_jwt_secret = gateway_secret.value_or("");
  return s;
}

}  // namespace ag::control
