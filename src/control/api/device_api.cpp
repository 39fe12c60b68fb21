// Device sign-in (docs/auth.md, "Device sign-in"): the seed's JSON flow for anchors and
// `antigravity login`, and the same codes through RFC 8628's form-encoded token request, so that
// standard OAuth 2.0 client libraries work too. A device asks for a code, shows the user code and
// polls; a signed-in user approves (or denies) the user code; the next poll gets a device
// session's tokens, once.
//
// Codes: the device code is 32 random bytes (base62), kept as SHA-256; the user code is 8
// characters from an alphabet without vowels or look-alikes (no 0/O/1/I), shown as XXXX-XXXX and
// read case-insensitively with the hyphen optional. Entering user codes is limited per IP and per
// account, and polling per IP; polling faster than the interval answers slow_down and adds 5 s
// to that code's interval (RFC 8628 3.5).
#include <algorithm>
#include <map>

#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/routes.hpp"
#include "control/api/sessions.hpp"
#include "control/service/validation.hpp"

namespace ag::control {

namespace {

constexpr std::string_view kUserCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ";
constexpr std::string_view kDeviceGrant = "urn:ietf:params:oauth:grant-type:device_code";

std::string new_user_code() {
  std::string code;
  // Rejection sampling: 240 = 12 * 20, so every letter is equally likely.
  while (code.size() < 8) {
    auto bytes = crypto::random_bytes(16);
    for (unsigned char b : bytes)
      if (b < 240 && code.size() < 8) code += kUserCodeAlphabet[b % kUserCodeAlphabet.size()];
  }
  return code;
}

std::string show_user_code(const std::string& c) { return c.substr(0, 4) + "-" + c.substr(4); }

// "bcdf-ghjk", "BCDFGHJK", " bcdf ghjk " → "BCDFGHJK"; "" when it cannot be a user code.
std::string normalise_user_code(std::string_view in) {
  std::string out;
  for (char ch : in) {
    if (ch == '-' || ch == ' ') continue;
    char up = (ch >= 'a' && ch <= 'z') ? static_cast<char>(ch - 'a' + 'A') : ch;
    if (kUserCodeAlphabet.find(up) == std::string_view::npos || out.size() == 8) return {};
    out += up;
  }
  return out.size() == 8 ? out : std::string{};
}

bool is_form(const http::Request& req) {
  return lower_ascii(req.header("content-type")).rfind("application/x-www-form-urlencoded", 0) == 0;
}

// A form body's fields; 400 for bad encoding or a repeated field (RFC 6749 3.2: parameters sent
// without a value are as if omitted, and a parameter must not be included more than once).
std::map<std::string, std::string> form_fields(const http::Request& req) {
  if (!http::percent_encoding_valid(req.body)) throw ApiError(400, "Malformed form body");
  std::map<std::string, std::string> out;
  std::string_view rest = req.body;
  while (!rest.empty()) {
    auto amp = rest.find('&');
    std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    if (pair.empty()) continue;
    auto eq = pair.find('=');
    std::string name = http::percent_decode(pair.substr(0, eq), true);
    std::string value = eq == std::string_view::npos ? std::string{} : http::percent_decode(pair.substr(eq + 1), true);
    if (value.empty()) continue;
    if (!out.emplace(name, value).second) throw ApiError(400, "Form field '" + name + "' is repeated");
  }
  return out;
}

// RFC 6749 5.2 / RFC 8628 3.5 error: 400 (401 for invalid_client) {"error", "error_description"}.
[[noreturn]] void oauth_error(std::string_view error, std::string_view description, int status = 400) {
  ApiError e = coded_error(status, error, std::string(description));
  e.oauth = true;
  e.headers.push_back({"Cache-Control", "no-store"});
  throw e;
}

std::string verification_url(const AppState& app, const http::Request& req) {
  return app.settings.auth.device_verification_url.empty() ? public_base(app, req) + "/device"
                                                           : app.settings.auth.device_verification_url;
}

http::Response do_code(AppState& app, const Call& call) {
  const auto& req = call.req;
  std::string client_id;
  if (is_form(req)) {
    auto f = form_fields(req);
    for (const auto& [k, v] : f)
      if (k != "client_id" && k != "scope") throw validation_error(k, "unknown field");
    if (auto it = f.find("client_id"); it != f.end()) client_id = it->second;
  } else {
    json body = parse_object_body(req, true);
    reject_unknown_fields(body, {"clientId", "client_id"});
    client_id = get_string_either(body, "clientId", "client_id", "client_id").value_or("");
  }
  if (client_id.size() > 128) throw validation_error("client_id", "must be at most 128 characters");
  const auto& a = app.settings.auth;
  const std::initializer_list<Limit> limits = {{"device:code:ip:" + req.remote_ip, a.max_device_polls_per_ip}};
  refuse_if_limited(app, limits, "device codes requested");
  note_attempt(app, limits, 60);

  std::string device_code = "agdc_" + crypto::random_base62(43);
  std::string user_code;
  std::int64_t now = now_ms();
  for (int attempt = 0;; ++attempt) {
    user_code = new_user_code();
    try {
      app.db->transaction([&](store::Connection& c) {
        c.exec("DELETE FROM device_codes WHERE expires_at < $1", {now - 3600 * 1000});
        c.exec(
            "INSERT INTO device_codes (device_code_hash, user_code, client_id, status, interval_sec, created_at, "
            "expires_at) VALUES ($1, $2, $3, 'pending', $4, $5, $6)",
            {crypto::sha256_hex(device_code), user_code, client_id.empty() ? store::Value{} : store::Value{client_id},
             a.device_poll_interval_sec, now, now + a.device_code_ttl_sec * 1000});
      });
      break;
    } catch (const store::UniqueViolation&) {
      if (attempt == 4) throw;  // 20^8 codes: five collisions in a row means something else is wrong
    }
  }
  std::string url = verification_url(app, req);
  std::string shown = show_user_code(user_code);
  return json_response(200, {{"deviceCode", device_code},
                             {"userCode", shown},
                             {"verificationUrl", url},
                             {"expiresIn", a.device_code_ttl_sec},
                             {"interval", a.device_poll_interval_sec},
                             {"device_code", device_code},
                             {"user_code", shown},
                             {"verification_uri", url},
                             {"verification_uri_complete", url + "?code=" + shown},
                             {"expires_in", a.device_code_ttl_sec}});
}

// A signed-in user approves or denies a user code.
http::Response decide(AppState& app, const Call& call, bool approve) {
  const auto& req = call.req;
  json body = parse_object_body(req);
  reject_unknown_fields(body, {"userCode", "user_code"});
  auto given = get_string_either(body, "userCode", "user_code", "userCode");
  if (!given) throw validation_error("userCode", "field required");
  const auto& a = app.settings.auth;
  const std::initializer_list<Limit> limits = {{"device:entry:ip:" + req.remote_ip, a.max_failures_per_ip},
                                               {"device:entry:user:" + call.user->user_id, a.max_failures_per_account}};
  refuse_if_limited(app, limits, "wrong user codes");
  std::string code = normalise_user_code(*given);
  enum class Outcome { kOk, kUnknown, kDecided } outcome = Outcome::kUnknown;
  if (!code.empty())
    app.db->transaction([&](store::Connection& c) {
      std::int64_t now = now_ms();
      auto r = c.exec("SELECT status, expires_at FROM device_codes WHERE user_code = $1", {code});
      if (r.empty() || r.rows[0].integer(1) <= now) return;
      if (r.rows[0].text(0) != "pending") {
        outcome = Outcome::kDecided;
        return;
      }
      c.exec("UPDATE device_codes SET status = $1, user_id = $2 WHERE user_code = $3 AND status = 'pending'",
             {std::string(approve ? "authorised" : "denied"), call.user->user_id, code});
      audit(c, req, call.user->user_id, approve ? "device.authorise" : "device.deny", "device_code", show_user_code(code));
      outcome = Outcome::kOk;
    });
  if (outcome == Outcome::kUnknown) {
    note_attempt(app, limits, a.failure_window_sec);
    throw coded_error(400, "invalid_user_code", "Unknown or expired user code");
  }
  if (outcome == Outcome::kDecided) {
    throw coded_error(409, "code_already_used", "This code was already approved or denied");
  }
  return json_response(200, {{"ok", true}});
}

// One poll. `rfc`: the form-encoded RFC 8628 request (errors as OAuth errors).
http::Response poll(AppState& app, const Call& call, const std::string& device_code, const std::string& client_id, bool rfc) {
  const auto& req = call.req;
  const auto& a = app.settings.auth;
  const std::initializer_list<Limit> limits = {{"device:poll:ip:" + req.remote_ip, a.max_device_polls_per_ip}};
  refuse_if_limited(app, limits, "device polls");
  note_attempt(app, limits, 60);
  std::string status = "invalid";
  std::int64_t interval = 0;
  User user;
  Tokens tokens;
  if (device_code.size() <= 64)
    app.db->transaction([&](store::Connection& c) {
      std::int64_t now = now_ms();
      std::string hash = crypto::sha256_hex(device_code);
      auto r = c.exec(
          "SELECT status, user_id, interval_sec, last_poll_at, expires_at, client_id FROM device_codes "
          "WHERE device_code_hash = $1",
          {hash});
      if (r.empty()) return;
      const auto& row = r.rows[0];
      if (!client_id.empty() && !row.is_null(5) && row.text(5) != client_id) return;
      interval = row.integer(2);
      status = row.text(0);
      if (row.integer(4) <= now && status != "used") {
        status = "expired";
        return;
      }
      if (status == "pending" && !row.is_null(3) && now - row.integer(3) < interval * 1000) {
        interval += 5;
        c.exec("UPDATE device_codes SET interval_sec = $1, last_poll_at = $2 WHERE device_code_hash = $3",
               {interval, now, hash});
        status = "slow_down";
        return;
      }
      c.exec("UPDATE device_codes SET last_poll_at = $1 WHERE device_code_hash = $2", {now, hash});
      if (status != "authorised") return;
      // Tokens once: the code is spent in the same transaction that starts the session.
      auto spent = c.exec("UPDATE device_codes SET status = 'used' WHERE device_code_hash = $1 AND status = 'authorised'",
                          {hash});
      auto u = find_user(c, row.text(1));
      if (spent.affected != 1 || !u) {
        status = "used";
        return;
      }
      user = *u;
      tokens = start_session(app, c, req, user, SessionKind::kDevice, row.is_null(5) ? std::string{} : row.text(5));
      audit(c, req, user.id, "auth.device_login", "user", user.id);
    });
  if (status == "authorised") {
    auto res = json_response(200, device_token_response(app, user, tokens));
    res.set_header("Cache-Control", "no-store");
    return res;
  }
  if (rfc) {
    if (status == "pending") oauth_error("authorization_pending", "The user has not approved this code yet");
    if (status == "slow_down") oauth_error("slow_down", "Polling too fast; the interval is now " + std::to_string(interval) + " s");
    if (status == "expired") oauth_error("expired_token", "The device code has expired; start again");
    if (status == "denied") oauth_error("access_denied", "The user denied this code");
    oauth_error("invalid_grant", status == "used" ? "The device code was already used" : "Unknown device code");
  }
  if (status == "invalid") {
    throw coded_error(400, "invalid_device_code", "Unknown device code");
  }
  json body = {{"status", status}};
  if (status == "pending" || status == "slow_down") body["interval"] = interval;
  auto res = json_response(200, body);
  res.set_header("Cache-Control", "no-store");
  return res;
}

http::Response do_token(AppState& app, const Call& call) {
  const auto& req = call.req;
  if (!is_form(req)) {
    json body = parse_object_body(req);
    reject_unknown_fields(body, {"deviceCode", "device_code"});
    auto code = get_string_either(body, "deviceCode", "device_code", "deviceCode");
    if (!code) throw validation_error("deviceCode", "field required");
    return poll(app, call, *code, {}, false);
  }
  auto f = form_fields(req);
  auto field = [&](const char* k) {
    auto it = f.find(k);
    return it == f.end() ? std::string{} : it->second;
  };
  std::string grant = field("grant_type");
  if (grant.empty()) oauth_error("invalid_request", "grant_type is required");
  if (grant == "refresh_token") {
    std::string token = field("refresh_token");
    if (token.empty()) oauth_error("invalid_request", "refresh_token is required");
    try {
      auto [u, t] = refresh_session(app, req, token, SessionKind::kDevice);
      auto res = json_response(200, device_token_response(app, u, t));
      res.set_header("Cache-Control", "no-store");
      return res;
    } catch (const ApiError& e) {
      oauth_error("invalid_grant", e.detail());
    }
  }
  if (grant != kDeviceGrant) oauth_error("unsupported_grant_type", "Supported: " + std::string(kDeviceGrant) + ", refresh_token");
  std::string code = field("device_code");
  if (code.empty()) oauth_error("invalid_request", "device_code is required");
  return poll(app, call, code, field("client_id"), true);
}

http::Response do_refresh(AppState& app, const Call& call) {
  json body = parse_object_body(call.req);
  reject_unknown_fields(body, {"refreshToken", "refresh_token"});
  auto token = get_string_either(body, "refreshToken", "refresh_token", "refreshToken");
  if (!token) throw validation_error("refreshToken", "field required");
  auto [u, t] = refresh_session(app, call.req, *token, SessionKind::kDevice);
  auto res = json_response(200, device_token_response(app, u, t));
  res.set_header("Cache-Control", "no-store");
  return res;
}

// RFC 8414: where a standard client finds the endpoints.
http::Response do_metadata(AppState& app, const Call& call) {
  std::string base = public_base(app, call.req);
  return json_response(200, {{"issuer", base},
                             {"device_authorization_endpoint", base + "/auth/device/code"},
                             {"token_endpoint", base + "/auth/device/token"},
                             {"grant_types_supported", {std::string(kDeviceGrant), "refresh_token"}},
                             {"response_types_supported", json::array()},
                             {"token_endpoint_auth_methods_supported", {"none"}},
                             {"service_documentation", base + "/docs"}});
}

}  // namespace

void register_device_routes(RouteTable& r, AppState& app) {
  r.add("POST", "/auth/device/code", Access::kPublic, [&app](const Call& c) { return do_code(app, c); });
  r.add("POST", "/auth/device/authorise", Access::kUser, [&app](const Call& c) { return decide(app, c, true); });
  r.add("POST", "/auth/device/deny", Access::kUser, [&app](const Call& c) { return decide(app, c, false); });
  r.add("POST", "/auth/device/token", Access::kPublic, [&app](const Call& c) { return do_token(app, c); });
  r.add("POST", "/auth/device/refresh", Access::kPublic, [&app](const Call& c) { return do_refresh(app, c); });
  r.add("GET", "/.well-known/oauth-authorization-server", Access::kPublic,
        [&app](const Call& c) { return do_metadata(app, c); });
}

}  // namespace ag::control
