// /auth/*: registration, login (JSON or OAuth2 password form), session lookup, refresh-token
// rotation with reuse detection, logout.
//
// A session is one login. Its refresh tokens form a family: each use spends the token and issues
// the next; presenting a spent token again revokes the session, which also kills its access
// tokens (they carry the session id in `sid` and are checked against a live session row).
#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/context.hpp"
#include "control/api/routes.hpp"
#include "control/service/passwords.hpp"
#include "control/service/validation.hpp"

namespace ag::control {

namespace {

struct User {
  std::string id, email, name;
  std::int64_t created_at = 0;
};

json user_json(const User& u) {
  return {{"id", u.id}, {"email", u.email}, {"name", u.name}, {"created_at", iso_time(u.created_at)}};
}

struct Tokens {
  std::string access, refresh;
};

std::string make_access_token(AppState& app, const User& u, const std::string& session_id) {
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

std::string new_refresh_token() { return "agr_" + crypto::random_base62(43); }

// Inserts a refresh token for `session_id`; returns the raw token (never stored).
std::string issue_refresh(AppState& app, store::Connection& c, const std::string& session_id) {
  std::string token = new_refresh_token();
  std::int64_t now = now_ms();
  c.exec("INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
         {crypto::sha256_hex(token), session_id, now, now + app.settings.refresh_ttl_sec * 1000});
  c.exec("UPDATE sessions SET expires_at = $1 WHERE id = $2",
         {now + app.settings.refresh_ttl_sec * 1000, session_id});
  return token;
}

// Starts a session for `u` inside the caller's transaction.
Tokens start_session(AppState& app, store::Connection& c, const http::Request& req, const User& u) {
  std::string sid = crypto::uuid_v4();
  std::int64_t now = now_ms();
  std::string ua(req.header("user-agent").substr(0, 256));
  c.exec("INSERT INTO sessions (id, user_id, created_at, expires_at, ip, user_agent) VALUES ($1, $2, $3, $4, $5, $6)",
         {sid, u.id, now, now + app.settings.refresh_ttl_sec * 1000, req.remote_ip, ua});
  Tokens t;
  t.refresh = issue_refresh(app, c, sid);
  t.access = make_access_token(app, u, sid);
  return t;
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

std::optional<User> find_user_by_email(store::Connection& c, const std::string& email,
                                       std::string* password_hash) {
  auto r = c.exec("SELECT id, email, name, created_at, password_hash FROM users WHERE email = $1", {email});
  if (r.empty()) return std::nullopt;
  if (password_hash) *password_hash = r.rows[0].text(4);
  return User{r.rows[0].text(0), r.rows[0].text(1), r.rows[0].text(2), r.rows[0].integer(3)};
}

void check_password_field(const std::string& password) {
  // Length in bytes bounds the hashing cost; 8 characters minimum.
  std::size_t chars = 0;
  for (unsigned char ch : password)
    if ((ch & 0xC0) != 0x80) ++chars;
  if (chars < 8 || password.size() > 1024)
    throw validation_error("password", "must be 8 to 1024 characters");
}

http::Response do_register(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  json body = parse_object_body(req);
  reject_unknown_fields(body, {"email", "password", "name"});
  std::string email = lower_ascii(require_string(body, "email"));
  if (auto e = check_email(email); !e.empty()) throw validation_error("email", e);
  std::string password = require_string(body, "password");
  check_password_field(password);
  std::string name = get_string(body, "name").value_or(email.substr(0, email.find('@')));
  if (auto e = check_name(name); !e.empty()) throw validation_error("name", e);

  bool exists = false;
  app.db->with_connection([&](store::Connection& c) { exists = find_user_by_email(c, email, nullptr).has_value(); });
  if (exists) throw ApiError(409, "Email already registered");
  std::string hash = hash_password(password);

  User u{crypto::uuid_v4(), email, name, now_ms()};
  Tokens t;
  try {
    app.db->transaction([&](store::Connection& c) {
      // The first user of a new installation is its operator. PostgreSQL: two first
      // registrations at once are serialised (SQLite's write transactions already are).
      if (app.db->engine() == store::Engine::kPostgres) c.exec("SELECT pg_advisory_xact_lock(7243002)", {});
      c.exec("INSERT INTO users (id, email, name, password_hash, created_at, is_operator) VALUES ($1, $2, $3, $4, $5, "
             "(SELECT CASE WHEN EXISTS (SELECT 1 FROM users) THEN 0 ELSE 1 END))",
             {u.id, u.email, u.name, hash, u.created_at});
      t = start_session(app, c, req, u);
      audit(c, req, u.id, "user.register", "user", u.id, {{"email", u.email}});
    });
  } catch (const store::UniqueViolation&) {
    throw ApiError(409, "Email already registered");
  }
  return json_response(201, token_response(app, u, t));
}

http::Response do_login(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  std::string email, password;
  auto ct = lower_ascii(req.header("content-type"));
  if (ct.rfind("application/x-www-form-urlencoded", 0) == 0) {
    if (!http::percent_encoding_valid(req.body)) throw ApiError(400, "Malformed form body");
    if (!http::query_param(req.body, "username", email)) throw validation_error("username", "field required");
    if (!http::query_param(req.body, "password", password)) throw validation_error("password", "field required");
  } else {
    json body = parse_object_body(req);
    reject_unknown_fields(body, {"email", "password", "username"});
    auto e = get_string(body, "email");
    if (!e) e = get_string(body, "username");
    if (!e) throw validation_error("email", "field required");
    email = *e;
    password = require_string(body, "password");
  }
  email = lower_ascii(email);
  if (email.size() > 254 || password.size() > 1024) throw unauthorized("Incorrect email or password");

  std::string stored;
  std::optional<User> u;
  app.db->with_connection([&](store::Connection& c) { u = find_user_by_email(c, email, &stored); });
  bool ok = false;
  if (u) ok = verify_password(stored, password);
  else verify_dummy_password(password);
  if (!ok) throw unauthorized("Incorrect email or password");

  Tokens t;
  app.db->transaction([&](store::Connection& c) {
    t = start_session(app, c, req, *u);
    audit(c, req, u->id, "auth.login", "user", u->id);
  });
  return json_response(200, token_response(app, *u, t));
}

http::Response do_session(AppState& app, const Call& call) {
  const auto& p = call.user;
  bool has_users = false;
  app.db->with_connection([&](store::Connection& c) {
    has_users = !c.exec("SELECT 1 FROM users LIMIT 1", {}).empty();
  });
  if (!p)
    return json_response(200, {{"authenticated", false},
                               {"user", nullptr},
                               {"hasPasskey", false},
                               {"systemHasUsers", has_users}});
  std::int64_t created = 0;
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec("SELECT created_at FROM users WHERE id = $1", {p->user_id});
    if (!r.empty()) created = r.rows[0].integer(0);
  });
  return json_response(200, {{"authenticated", true},
                             {"user", user_json(User{p->user_id, p->email, p->name, created})},
                             {"hasPasskey", false},
                             {"systemHasUsers", true},
                             {"session", {{"id", p->session_id}, {"expires_at", iso_time(p->session_expires_at)}}}});
}

std::string refresh_token_from_body(const http::Request& req, bool required) {
  json body = parse_object_body(req, !required);
  reject_unknown_fields(body, {"refresh_token", "refreshToken"});
  auto t = get_string(body, "refresh_token");
  if (!t) t = get_string(body, "refreshToken");
  if (!t && required) throw validation_error("refresh_token", "field required");
  return t.value_or("");
}

http::Response do_refresh(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  std::string token = refresh_token_from_body(req, true);
  if (token.size() > 256) throw unauthorized("Invalid refresh token");
  std::string hash = crypto::sha256_hex(token);
  enum class Outcome { kOk, kInvalid, kReuse } outcome = Outcome::kInvalid;
  User u;
  Tokens t;
  app.db->transaction([&](store::Connection& c) {
    std::int64_t now = now_ms();
    auto r = c.exec(
        "SELECT rt.session_id, rt.expires_at, rt.used_at, s.revoked_at, s.expires_at, u.id, u.email, "
        "u.name, u.created_at FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id "
        "JOIN users u ON u.id = s.user_id WHERE rt.token_hash = $1",
        {hash});
    if (r.empty()) return;
    const auto& row = r.rows[0];
    std::string sid = row.text(0);
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
    t.refresh = issue_refresh(app, c, sid);
    t.access = make_access_token(app, u, sid);
    outcome = Outcome::kOk;
  });
  if (outcome == Outcome::kReuse) throw unauthorized("Refresh token reuse detected; session revoked");
  if (outcome == Outcome::kInvalid) throw unauthorized("Invalid refresh token");
  return json_response(200, token_response(app, u, t));
}

http::Response do_logout(AppState& app, const Call& call) {
  const http::Request& req = call.req;
  std::string sid, uid;
  if (const auto& p = call.user) {
    sid = p->session_id;
    uid = p->user_id;
  } else {
    std::string token = refresh_token_from_body(req, false);
    if (token.empty()) throw unauthorized("Not authenticated");
    app.db->with_connection([&](store::Connection& c) {
      auto r = c.exec(
          "SELECT s.id, s.user_id FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id "
          "WHERE rt.token_hash = $1 AND rt.used_at IS NULL AND s.revoked_at IS NULL",
          {crypto::sha256_hex(token)});
      if (!r.empty()) {
        sid = r.rows[0].text(0);
        uid = r.rows[0].text(1);
      }
    });
    if (sid.empty()) throw unauthorized("Invalid refresh token");
  }
  app.db->transaction([&](store::Connection& c) {
    c.exec("UPDATE sessions SET revoked_at = $1, revoke_reason = 'logout' WHERE id = $2 AND revoked_at IS NULL",
           {now_ms(), sid});
    audit(c, req, uid, "auth.logout", "session", sid);
  });
  return no_content();
}

}  // namespace

void register_auth_routes(RouteTable& r, AppState& app) {
  r.add("POST", "/auth/register", Access::kPublic, [&app](const Call& c) { return do_register(app, c); });
  r.add("POST", "/auth/login", Access::kPublic, [&app](const Call& c) { return do_login(app, c); });
  r.add("GET", "/auth/session", Access::kOptionalUser, [&app](const Call& c) { return do_session(app, c); });
  r.add("POST", "/auth/refresh", Access::kPublic, [&app](const Call& c) { return do_refresh(app, c); });
  r.add("POST", "/auth/logout", Access::kUserOrRefreshToken, [&app](const Call& c) { return do_logout(app, c); });
}

}  // namespace ag::control
