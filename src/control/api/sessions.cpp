#include "control/api/sessions.hpp"

#include "common/crypto.hpp"
#include "common/time.hpp"

namespace ag::control {

json user_json(const User& u) {
  return {{"id", u.id}, {"email", u.email}, {"name", u.name}, {"created_at", iso_time(u.created_at)}};
}

std::optional<User> find_user_by_email(store::Connection& c, const std::string& email, std::string* password_hash) {
  auto r = c.exec("SELECT id, email, name, created_at, password_hash FROM users WHERE email = $1", {email});
  if (r.empty()) return std::nullopt;
  if (password_hash) *password_hash = r.rows[0].text(4);
  return User{r.rows[0].text(0), r.rows[0].text(1), r.rows[0].text(2), r.rows[0].integer(3)};
}

std::optional<User> find_user(store::Connection& c, const std::string& id) {
  auto r = c.exec("SELECT id, email, name, created_at FROM users WHERE id = $1", {id});
  if (r.empty()) return std::nullopt;
  return User{r.rows[0].text(0), r.rows[0].text(1), r.rows[0].text(2), r.rows[0].integer(3)};
}

void insert_user(AppState& app, store::Connection& c, const User& u, const std::string& password_hash) {
  // PostgreSQL: two first registrations at once are serialised (SQLite's write transactions
  // already are), so exactly one becomes the operator.
  if (app.db->engine() == store::Engine::kPostgres) c.exec("SELECT pg_advisory_xact_lock(7243002)", {});
  c.exec("INSERT INTO users (id, email, name, password_hash, created_at, is_operator) VALUES ($1, $2, $3, $4, $5, "
         "(SELECT CASE WHEN EXISTS (SELECT 1 FROM users) THEN 0 ELSE 1 END))",
         {u.id, u.email, u.name, password_hash, u.created_at});
  // Every account starts with a personal organisation (docs/organizations.md), its id the user's.
  c.exec("INSERT INTO organizations (id, name, personal, created_at) VALUES ($1, $2, 1, $3)", {u.id, u.name, u.created_at});
  c.exec("INSERT INTO memberships (org_id, user_id, role, created_at) VALUES ($1, $2, 'owner', $3)",
         {u.id, u.id, u.created_at});
  c.exec("UPDATE users SET active_org_id = $1 WHERE id = $1", {u.id});
}

void refuse_if_limited(AppState& app, std::initializer_list<Limit> limits, std::string_view what) {
  std::int64_t now = now_ms(), wait = 0;
  for (const auto& l : limits) wait = std::max(wait, app.attempts.retry_after(l.key, l.max, now));
  if (wait == 0) return;
  ApiError e = coded_error(429, "rate_limited", "Too many " + std::string(what) + "; try again in " + std::to_string(wait) + " s");
  e.headers.push_back({"Retry-After", std::to_string(wait)});
  throw e;
}

void note_attempt(AppState& app, std::initializer_list<Limit> limits, std::int64_t window_sec) {
  std::int64_t now = now_ms();
  for (const auto& l : limits) app.attempts.record(l.key, window_sec, now);
}

std::string_view kind_name(SessionKind k) { return k == SessionKind::kWeb ? "web" : "device"; }

namespace {

std::int64_t refresh_ttl_sec(const AppState& app, SessionKind kind) {
  return kind == SessionKind::kWeb ? app.settings.refresh_ttl_sec : app.settings.auth.anchor_refresh_ttl_sec;
}

std::string make_jwt_access(AppState& app, const User& u, const std::string& session_id) {
  std::int64_t now = now_ms() / 1000;
  json claims = {{"sub", u.id},
                 {"email", u.email},
                 {"sid", session_id},
                 {"jti", crypto::uuid_v4()},
                 {"iat", now},
                 {"exp", now + app.settings.access_ttl_sec},
                 {"iss", "antigravity"},
                 {"aud", "antigravity-control"}};
  return jwt::sign(app.jwt_alg, app.settings.jwt_secret, claims.dump());
}

// An opaque device access token; only its hash is kept. A refresh replaces the session's
// earlier access tokens.
std::string issue_device_access(AppState& app, store::Connection& c, const std::string& session_id) {
  std::string token = "agd_" + crypto::random_base62(43);
  std::int64_t now = now_ms();
  c.exec("DELETE FROM device_access_tokens WHERE session_id = $1", {session_id});
  c.exec("INSERT INTO device_access_tokens (token_hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
         {crypto::sha256_hex(token), session_id, now, now + app.settings.auth.anchor_access_ttl_sec * 1000});
  return token;
}

// Inserts a refresh token for `session_id`; returns the raw token (never stored).
std::string issue_refresh(AppState& app, store::Connection& c, const std::string& session_id, SessionKind kind) {
  std::string token = "agr_" + crypto::random_base62(43);
  std::int64_t now = now_ms();
  std::int64_t expires = now + refresh_ttl_sec(app, kind) * 1000;
  c.exec("INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at, kind) VALUES ($1, $2, $3, $4, $5)",
         {crypto::sha256_hex(token), session_id, now, expires, std::string(kind_name(kind))});
  c.exec("UPDATE sessions SET expires_at = $1 WHERE id = $2", {expires, session_id});
  return token;
}

Tokens issue_pair(AppState& app, store::Connection& c, const User& u, const std::string& sid, SessionKind kind) {
  Tokens t;
  t.refresh = issue_refresh(app, c, sid, kind);
  t.access = kind == SessionKind::kWeb ? make_jwt_access(app, u, sid) : issue_device_access(app, c, sid);
  return t;
}

}  // namespace

Tokens start_session(AppState& app, store::Connection& c, const http::Request& req, const User& u, SessionKind kind,
                     const std::string& client_id) {
  std::string sid = crypto::uuid_v4();
  std::int64_t now = now_ms();
  std::string ua(req.header("user-agent").substr(0, 256));
  c.exec(
      "INSERT INTO sessions (id, user_id, created_at, expires_at, ip, user_agent, kind, client_id) "
      "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
      {sid, u.id, now, now + refresh_ttl_sec(app, kind) * 1000, req.remote_ip, ua, std::string(kind_name(kind)),
       client_id.empty() ? store::Value{} : store::Value{client_id}});
  return issue_pair(app, c, u, sid, kind);
}

json token_response(AppState& app, const User& u, const Tokens& t) {
  return {{"access_token", t.access},
          {"token_type", "bearer"},
          {"expires_in", app.settings.access_ttl_sec},
          {"refresh_token", t.refresh},
          {"refresh_expires_in", app.settings.refresh_ttl_sec},
          {"user", user_json(u)},
          {"token", t.access},
          {"refreshToken", t.refresh},
          {"verified", true}};
}

json device_token_response(AppState& app, const User& u, const Tokens& t) {
  return {{"status", "authorised"},
          {"userId", u.id},
          {"anchorAccessToken", t.access},
          {"anchorRefreshToken", t.refresh},
          {"anchorAccessExpiresIn", app.settings.auth.anchor_access_ttl_sec},
          {"access_token", t.access},
          {"token_type", "bearer"},
          {"expires_in", app.settings.auth.anchor_access_ttl_sec},
          {"refresh_token", t.refresh}};
}

std::pair<User, Tokens> refresh_session(AppState& app, const http::Request& req, const std::string& refresh_token,
                                        SessionKind kind) {
  if (refresh_token.size() > 256) throw unauthorized("Invalid refresh token");
  std::string hash = crypto::sha256_hex(refresh_token);
  enum class Outcome { kOk, kInvalid, kReuse } outcome = Outcome::kInvalid;
  User u;
  Tokens t;
  app.db->transaction([&](store::Connection& c) {
    std::int64_t now = now_ms();
    auto r = c.exec(
        "SELECT rt.session_id, rt.expires_at, rt.used_at, s.revoked_at, s.expires_at, u.id, u.email, "
        "u.name, u.created_at, rt.kind FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id "
        "JOIN users u ON u.id = s.user_id WHERE rt.token_hash = $1",
        {hash});
    if (r.empty()) return;
    const auto& row = r.rows[0];
    std::string sid = row.text(0);
    if (row.text(9) != kind_name(kind)) return;
    if (!row.is_null(3) || row.integer(4) <= now || row.integer(1) <= now) return;
    // Spend the token; a concurrent or later second use finds it spent.
    auto spent = c.exec("UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
                        {now, hash});
    if (!row.is_null(2) || spent.affected != 1) {
      c.exec("UPDATE sessions SET revoked_at = $1, revoke_reason = 'refresh_token_reuse' WHERE id = $2",
             {now, sid});
      audit(c, req, row.text(5), "auth.refresh_reuse", "session", sid);
      outcome = Outcome::kReuse;
      return;
    }
    u = User{row.text(5), row.text(6), row.text(7), row.integer(8)};
    t = issue_pair(app, c, u, sid, kind);
    outcome = Outcome::kOk;
  });
  if (outcome == Outcome::kReuse) throw unauthorized("Refresh token reuse detected; session revoked");
  if (outcome == Outcome::kInvalid) throw unauthorized("Invalid refresh token");
  return {u, t};
}

std::string public_base(const AppState& app, const http::Request& req) {
  if (!app.settings.public_url.empty()) return app.settings.public_url;
  std::string host(req.header("host"));
  if (host.empty() || host.size() > 255 || host.find_first_of(" /\\@") != std::string::npos) host = "localhost";
  return (app.settings.tls_cert_file.empty() ? "http://" : "https://") + host;
}

void revoke_session(store::Connection& c, const http::Request& req, const std::string& session_id,
                    const std::string& user_id, std::string_view reason, std::string_view action) {
  c.exec("UPDATE sessions SET revoked_at = $1, revoke_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
         {now_ms(), std::string(reason), session_id});
  c.exec("DELETE FROM device_access_tokens WHERE session_id = $1", {session_id});
  audit(c, req, user_id, action, "session", session_id);
}

}  // namespace ag::control
