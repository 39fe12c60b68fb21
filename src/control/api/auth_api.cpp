// /auth/*: registration and sign-in with a password (JSON or the OAuth2 password form; also
// under the seed's /auth/register/basic and /auth/login/basic), the session lookup, refresh,
// logout, and a user's list of sessions (docs/auth.md). Sessions themselves: sessions.hpp.
#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/context.hpp"
#include "control/api/routes.hpp"
#include "control/api/sessions.hpp"
#include "control/service/passwords.hpp"
#include "control/service/validation.hpp"

namespace ag::control {

namespace {

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
  if (app.settings.auth.passkey_mode) {
    throw coded_error(403, "passkey_mode",
                      "Password registration is off (AUTH_MODE=passkey): register with a passkey at /auth/register/options");
  }
  json body = parse_object_body(req);
  reject_unknown_fields(body, {"email", "username", "password", "name"});
  auto given = get_string_either(body, "email", "username", "username");
  if (!given) throw validation_error("email", "field required");
  std::string email = lower_ascii(*given);
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
      insert_user(app, c, u, hash);
      t = start_session(app, c, req, u, SessionKind::kWeb);
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
    auto e = get_string_either(body, "email", "username", "username");
    if (!e) throw validation_error("email", "field required");
    email = *e;
    password = require_string(body, "password");
  }
  email = lower_ascii(email);
  if (email.size() > 254 || password.size() > 1024) throw unauthorized("Incorrect email or password");
  const auto& lim = app.settings.auth;
  const std::initializer_list<Limit> limits = {{"login:ip:" + req.remote_ip, lim.max_failures_per_ip},
                                               {"login:account:" + email, lim.max_failures_per_account}};
  refuse_if_limited(app, limits, "failed sign-ins");

  std::string stored;
  std::optional<User> u;
  app.db->with_connection([&](store::Connection& c) { u = find_user_by_email(c, email, &stored); });
  bool ok = false;
  // An account without a password (passkey only) takes as long to refuse as any other.
  if (u && !stored.empty()) ok = verify_password(stored, password);
  else verify_dummy_password(password);
  if (!ok) {
    note_attempt(app, limits, lim.failure_window_sec);
    throw unauthorized("Incorrect email or password");
  }
  app.attempts.clear("login:account:" + email);

  Tokens t;
  app.db->transaction([&](store::Connection& c) {
    t = start_session(app, c, req, *u, SessionKind::kWeb);
    audit(c, req, u->id, "auth.login", "user", u->id);
  });
  return json_response(200, token_response(app, *u, t));
}

http::Response do_session(AppState& app, const Call& call) {
  const auto& p = call.user;
  bool has_users = false, has_passkey = false, has_password = false;
  std::int64_t created = 0;
  app.db->with_connection([&](store::Connection& c) {
    has_users = !c.exec("SELECT 1 FROM users LIMIT 1", {}).empty();
    if (!p) return;
    auto r = c.exec("SELECT created_at, password_hash FROM users WHERE id = $1", {p->user_id});
    if (!r.empty()) created = r.rows[0].integer(0), has_password = !r.rows[0].text(1).empty();
    has_passkey = !c.exec("SELECT 1 FROM passkeys WHERE user_id = $1 LIMIT 1", {p->user_id}).empty();
  });
  const char* mode = app.settings.auth.passkey_mode ? "passkey" : "basic";
  if (!p)
    return json_response(200, {{"authenticated", false},
                               {"user", nullptr},
                               {"hasPasskey", false},
                               {"systemHasUsers", has_users},
                               {"authMode", mode}});
  return json_response(200, {{"authenticated", true},
                             {"user", user_json(User{p->user_id, p->email, p->name, created})},
                             {"hasPasskey", has_passkey},
                             {"hasPassword", has_password},
                             {"systemHasUsers", true},
                             {"authMode", mode},
                             {"session", {{"id", p->session_id}, {"expires_at", iso_time(p->session_expires_at)}}}});
}

// The caller's live sessions, browsers' and devices', newest first.
http::Response do_list_sessions(AppState& app, const Call& call) {
  json items = json::array();
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec(
        "SELECT id, kind, client_id, ip, user_agent, created_at, expires_at FROM sessions "
        "WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at DESC, id",
        {call.user->user_id, now_ms()});
    for (const auto& row : r.rows)
      items.push_back({{"id", row.text(0)},
                       {"kind", row.text(1)},
                       {"client_id", row.is_null(2) ? json(nullptr) : json(row.text(2))},
                       {"ip", row.is_null(3) ? json(nullptr) : json(row.text(3))},
                       {"user_agent", row.is_null(4) ? json(nullptr) : json(row.text(4))},
                       {"created_at", iso_time(row.integer(5))},
                       {"expires_at", iso_time(row.integer(6))},
                       {"current", row.text(0) == call.user->session_id}});
  });
  return json_response(200, {{"items", items}});
}

http::Response do_revoke_session(AppState& app, const Call& call) {
  std::string sid(call.param("id"));
  bool found = false;
  app.db->transaction([&](store::Connection& c) {
    found = !c.exec("SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
                    {sid, call.user->user_id})
                 .empty();
    if (found) revoke_session(c, call.req, sid, call.user->user_id, "revoked_by_user", "auth.session_revoke");
  });
  if (!found) throw ApiError(404, "Session not found");
  return no_content();
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
  auto [u, t] = refresh_session(app, call.req, refresh_token_from_body(call.req, true), SessionKind::kWeb);
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
  app.db->transaction([&](store::Connection& c) { revoke_session(c, req, sid, uid, "logout", "auth.logout"); });
  return no_content();
}

}  // namespace

void register_auth_routes(RouteTable& r, AppState& app) {
  r.add("POST", "/auth/register", Access::kPublic, [&app](const Call& c) { return do_register(app, c); });
  r.add("POST", "/auth/register/basic", Access::kPublic, [&app](const Call& c) { return do_register(app, c); });
  r.add("POST", "/auth/login", Access::kPublic, [&app](const Call& c) { return do_login(app, c); });
  r.add("POST", "/auth/login/basic", Access::kPublic, [&app](const Call& c) { return do_login(app, c); });
  r.add("GET", "/auth/sessions", Access::kUser, [&app](const Call& c) { return do_list_sessions(app, c); });
  r.add("DELETE", "/auth/sessions/{id}", Access::kUser, [&app](const Call& c) { return do_revoke_session(app, c); });
  r.add("GET", "/auth/session", Access::kOptionalUser, [&app](const Call& c) { return do_session(app, c); });
  r.add("POST", "/auth/refresh", Access::kPublic, [&app](const Call& c) { return do_refresh(app, c); });
  r.add("POST", "/auth/logout", Access::kUserOrRefreshToken, [&app](const Call& c) { return do_logout(app, c); });
}

}  // namespace ag::control
