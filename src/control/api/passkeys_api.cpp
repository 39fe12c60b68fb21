// Passkeys (docs/auth.md, "Passkeys"): WebAuthn registration and sign-in as a relying party, and a
// user's list of passkeys. The ceremonies' options are the standard JSON forms
// (PublicKeyCredentialCreationOptionsJSON / ...RequestOptionsJSON), so a browser's
// PublicKeyCredential.parseCreationOptionsFromJSON and WebAuthn client libraries take them as
// they are; the answers are what PublicKeyCredential.toJSON() gives. Verification itself is
// service/webauthn.hpp.
//
// Challenges: 32 random bytes, kept as SHA-256 with CHALLENGE_TTL_SEC, consumed by the first
// verify that names them (whether it then succeeds or not), so none is ever used twice.
#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/routes.hpp"
#include "control/api/sessions.hpp"
#include "control/service/validation.hpp"
#include "control/service/webauthn.hpp"

namespace ag::control {

namespace {

namespace wa = webauthn;

[[noreturn]] void refuse(int status, std::string_view code, std::string detail) {
  throw coded_error(status, code, std::move(detail));
}

// A verification refusal as its HTTP answer: a foreign origin is 403, anything else 400.
[[noreturn]] void refuse(const wa::Error& e) { refuse(e.code == "origin" ? 403 : 400, e.code, e.what()); }

void require_passkeys(const AppState& app) {
  if (app.settings.auth.passkey_origin.empty())
    refuse(404, "passkeys_off", "Passkeys are not set up on this server (PASSKEY_ORIGIN)");
}

std::string b64(std::string_view bytes) { return crypto::base64url_encode(bytes); }

// The WebAuthn user handle: the user id's bytes (no personal data, WebAuthn 14.6.1).
std::string user_handle(const std::string& user_id) { return b64(user_id); }

// Issues a challenge of `kind` ("register" or "login") bound to `user_id` (and, for a new
// account, its email and name).
std::string issue_challenge(AppState& app, std::string_view kind, const std::string& user_id, const std::string& email,
                            const std::string& name) {
  std::string challenge = b64(crypto::random_bytes(32));
  std::int64_t now = now_ms();
  app.db->transaction([&](store::Connection& c) {
    c.exec("DELETE FROM webauthn_challenges WHERE expires_at < $1", {now});
    c.exec(
        "INSERT INTO webauthn_challenges (challenge_hash, kind, user_id, email, name, created_at, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        {crypto::sha256_hex(challenge), std::string(kind), user_id.empty() ? store::Value{} : store::Value{user_id},
         email.empty() ? store::Value{} : store::Value{email}, name.empty() ? store::Value{} : store::Value{name}, now,
         now + app.settings.auth.challenge_ttl_sec * 1000});
  });
  return challenge;
}

struct Challenge {
  std::string user_id, email, name;
};
// Consumes the challenge clientDataJSON names; 400 `challenge` when it is unknown, of another
// ceremony, already used or expired.
Challenge take_challenge(AppState& app, const std::string& challenge, std::string_view kind) {
  std::optional<Challenge> out;
  bool expired = false;
  if (challenge.size() <= 128)
    app.db->transaction([&](store::Connection& c) {
      std::string hash = crypto::sha256_hex(challenge);
      auto r = c.exec("SELECT kind, user_id, email, name, expires_at FROM webauthn_challenges WHERE challenge_hash = $1",
                      {hash});
      if (r.empty() || r.rows[0].text(0) != kind) return;
      if (c.exec("DELETE FROM webauthn_challenges WHERE challenge_hash = $1", {hash}).affected != 1) return;
      const auto& row = r.rows[0];
      if (row.integer(4) <= now_ms()) {
        expired = true;
        return;
      }
      out = Challenge{row.is_null(1) ? "" : row.text(1), row.is_null(2) ? "" : row.text(2), row.is_null(3) ? "" : row.text(3)};
    });
  if (expired) refuse(400, "challenge", "The challenge has expired; ask for new options");
  if (!out) refuse(400, "challenge", "Unknown or already used challenge; ask for new options");
  return *out;
}

wa::Expect expect_for(const AppState& app, const std::string& challenge) {
  return {app.settings.auth.passkey_rp_id, app.settings.auth.passkey_origin, challenge, true};
}

// The `credential` object of a verify body (what PublicKeyCredential.toJSON() gives).
struct Credential {
  std::string id;  // base64url
  json response;
};
Credential read_credential(const json& body) {
  auto it = body.find("credential");
  if (it == body.end() || !it->is_object()) throw validation_error("credential", "must be the object PublicKeyCredential.toJSON() returns");
  const json& c = *it;
  auto str = [&](const json& o, const char* k) -> std::string {
    auto f = o.find(k);
    return f != o.end() && f->is_string() ? f->get<std::string>() : std::string{};
  };
  if (str(c, "type") != "public-key") throw validation_error("credential.type", "must be \"public-key\"");
  Credential out;
  out.id = str(c, "rawId");
  if (out.id.empty()) out.id = str(c, "id");
  if (out.id.empty() || out.id.size() > 1400) throw validation_error("credential.rawId", "must be the credential id (base64url)");
  if (!str(c, "id").empty() && str(c, "id") != out.id) throw validation_error("credential.id", "must equal rawId");
  auto r = c.find("response");
  if (r == c.end() || !r->is_object()) throw validation_error("credential.response", "must be an object");
  out.response = *r;
  return out;
}

std::string response_field(const Credential& c, const char* name, bool required = true) {
  auto f = c.response.find(name);
  if (f == c.response.end() || f->is_null()) {
    if (required) throw validation_error(std::string("credential.response.") + name, "field required");
    return {};
  }
  if (!f->is_string()) throw validation_error(std::string("credential.response.") + name, "must be a base64url string");
  return f->get<std::string>();
}

json passkey_json(const store::Row& row) {
  // id, name, created_at, last_used_at, backup_eligible, backup_state, fmt, aaguid, sign_count
  return {{"id", row.text(0)},
          {"name", row.text(1)},
          {"created_at", iso_time(row.integer(2))},
          {"last_used_at", row.is_null(3) ? json(nullptr) : json(iso_time(row.integer(3)))},
          {"backup_eligible", row.integer(4) != 0},
          {"backup_state", row.integer(5) != 0},
          {"fmt", row.text(6)},
          {"aaguid", row.text(7)},
          {"sign_count", row.integer(8)}};
}
constexpr const char* kPasskeyColumns =
    "id, name, created_at, last_used_at, backup_eligible, backup_state, fmt, aaguid, sign_count";

json creation_options(const AppState& app, const std::string& challenge, const std::string& user_id,
                      const std::string& email, const std::string& name, const json& exclude) {
  const auto& a = app.settings.auth;
  json params = json::array();
  for (int alg : {-7, -8, -257}) params.push_back({{"type", "public-key"}, {"alg", alg}});
  return {{"rp", {{"id", a.passkey_rp_id}, {"name", a.passkey_rp_name}}},
          {"user", {{"id", user_handle(user_id)}, {"name", email}, {"displayName", name}}},
          {"challenge", challenge},
          {"pubKeyCredParams", params},
          {"timeout", a.challenge_ttl_sec * 1000},
          {"excludeCredentials", exclude},
          {"authenticatorSelection", {{"residentKey", "preferred"}, {"requireResidentKey", false}, {"userVerification", "required"}}},
          {"attestation", "none"},
          {"hints", json::array()}};
}

http::Response register_options(AppState& app, const Call& call) {
  require_passkeys(app);
  const auto& a = app.settings.auth;
  json body = parse_object_body(call.req, true);
  std::string user_id, email, name;
  json exclude = json::array();
  if (call.user) {  // a passkey for the signed-in account
    reject_unknown_fields(body, {});
    user_id = call.user->user_id, email = call.user->email, name = call.user->name;
    app.db->with_connection([&](store::Connection& c) {
      for (const auto& row : c.exec("SELECT credential_id FROM passkeys WHERE user_id = $1", {user_id}).rows)
        exclude.push_back({{"type", "public-key"}, {"id", row.text(0)}});
    });
  } else {  // a new account
    const std::initializer_list<Limit> limits = {{"passkey:options:ip:" + call.req.remote_ip, a.max_device_polls_per_ip}};
    refuse_if_limited(app, limits, "passkey registrations started");
    note_attempt(app, limits, 60);
    reject_unknown_fields(body, {"email", "username", "name"});
    auto given = get_string_either(body, "email", "username", "username");
    if (!given) throw validation_error("email", "field required");
    email = lower_ascii(*given);
    if (auto e = check_email(email); !e.empty()) throw validation_error("email", e);
    name = get_string(body, "name").value_or(email.substr(0, email.find('@')));
    if (auto e = check_name(name); !e.empty()) throw validation_error("name", e);
    bool exists = false;
    app.db->with_connection([&](store::Connection& c) { exists = find_user_by_email(c, email, nullptr).has_value(); });
    if (exists) throw ApiError(409, "Email already registered");
    user_id = crypto::uuid_v4();
  }
  std::string challenge = issue_challenge(app, "register", user_id, call.user ? "" : email, call.user ? "" : name);
  return json_response(200, creation_options(app, challenge, user_id, email, name, exclude));
}

http::Response register_verify(AppState& app, const Call& call) {
  require_passkeys(app);
  json body = parse_object_body(call.req);
  reject_unknown_fields(body, {"credential", "name"});
  std::string label = get_string(body, "name").value_or("");
  if (label.size() > 64) throw validation_error("name", "must be at most 64 characters");
  Credential cred = read_credential(body);
  wa::ClientData cd;
  wa::NewCredential nc;
  Challenge ch;
  try {
    cd = wa::parse_client_data(response_field(cred, "clientDataJSON"));
    if (cd.type != "webauthn.create") throw wa::Error("type", "clientDataJSON.type must be webauthn.create");
    ch = take_challenge(app, cd.challenge, "register");
    nc = wa::verify_registration(cd, response_field(cred, "attestationObject"), expect_for(app, cd.challenge));
  } catch (const wa::Error& e) {
    refuse(e);
  }
  const bool new_account = !ch.email.empty();
  if (!new_account && (!call.user || call.user->user_id != ch.user_id))
    refuse(403, "wrong_account", "Sign in as the account these options were for");
  if (b64(nc.id) != cred.id) refuse(400, "credential_id", "credential.rawId is not the id in the attestation");
  if (label.empty()) label = nc.backup_eligible ? "Synced passkey" : "Passkey";
  std::string passkey_id = crypto::uuid_v4();
  std::int64_t now = now_ms();
  User u;
  Tokens t;
  try {
    app.db->transaction([&](store::Connection& c) {
      if (new_account) {
        u = User{ch.user_id, ch.email, ch.name, now};
        insert_user(app, c, u, "");
        audit(c, call.req, u.id, "user.register", "user", u.id, {{"email", u.email}, {"method", "passkey"}});
      }
      c.exec(
          "INSERT INTO passkeys (id, user_id, credential_id, public_key, alg, sign_count, backup_eligible, "
          "backup_state, aaguid, fmt, name, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
          {passkey_id, ch.user_id, cred.id, b64(nc.cose_key), std::int64_t{nc.alg}, std::int64_t{nc.sign_count},
           std::int64_t{nc.backup_eligible}, std::int64_t{nc.backup_state}, nc.aaguid_hex, nc.fmt, label, now});
      audit(c, call.req, ch.user_id, "passkey.add", "passkey", passkey_id, {{"fmt", nc.fmt}, {"alg", nc.alg}});
      if (new_account) t = start_session(app, c, call.req, u, SessionKind::kWeb);
    });
  } catch (const store::UniqueViolation&) {
    if (new_account) {
      bool taken = false;
      app.db->with_connection([&](store::Connection& c) { taken = find_user_by_email(c, ch.email, nullptr).has_value(); });
      if (taken) throw ApiError(409, "Email already registered");
    }
    refuse(409, "credential_exists", "This passkey is already registered");
  }
  json passkey;
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec(std::string("SELECT ") + kPasskeyColumns + " FROM passkeys WHERE id = $1", {passkey_id});
    passkey = passkey_json(r.rows.at(0));
  });
  json out = new_account ? token_response(app, u, t) : json{{"verified", true}};
  out["passkey"] = passkey;
  return json_response(201, out);
}

http::Response login_options(AppState& app, const Call& call) {
  require_passkeys(app);
  const auto& a = app.settings.auth;
  json body = parse_object_body(call.req, true);
  reject_unknown_fields(body, {"email", "username"});
  const std::initializer_list<Limit> limits = {{"passkey:options:ip:" + call.req.remote_ip, a.max_device_polls_per_ip}};
  refuse_if_limited(app, limits, "passkey sign-ins started");
  note_attempt(app, limits, 60);
  auto given = get_string(body, "email");
  if (!given) given = get_string(body, "username");
  json allow = json::array();
  if (given) {
    std::string email = lower_ascii(*given);
    app.db->with_connection([&](store::Connection& c) {
      auto r = c.exec("SELECT p.credential_id FROM passkeys p JOIN users u ON u.id = p.user_id WHERE u.email = $1", {email});
      for (const auto& row : r.rows) allow.push_back({{"type", "public-key"}, {"id", row.text(0)}});
    });
    // An unknown email gets a credential id all the same (the same one every time), so the
    // answer does not tell which emails have accounts.
    if (allow.empty())
      allow.push_back({{"type", "public-key"},
                       {"id", b64(crypto::hmac(crypto::HmacAlg::kSha256, app.settings.jwt_secret, "passkey-decoy:" + email).substr(0, 16))}});
  }
  std::string challenge = issue_challenge(app, "login", "", "", "");
  return json_response(200, {{"challenge", challenge},
                             {"rpId", a.passkey_rp_id},
                             {"timeout", a.challenge_ttl_sec * 1000},
                             {"userVerification", "required"},
                             {"allowCredentials", allow},
                             {"hints", json::array()}});
}

http::Response login_verify(AppState& app, const Call& call) {
  require_passkeys(app);
  const auto& a = app.settings.auth;
  const std::initializer_list<Limit> limits = {{"login:ip:" + call.req.remote_ip, a.max_failures_per_ip}};
  refuse_if_limited(app, limits, "failed sign-ins");
  json body = parse_object_body(call.req);
  reject_unknown_fields(body, {"credential"});
  Credential cred = read_credential(body);
  struct Row {
    std::string passkey_id, user_id, cose_key;
    int alg = 0;
    std::int64_t sign_count = 0;
    bool backup_eligible = false;
  };
  std::optional<Row> pk;
  wa::Assertion as;
  try {
    wa::ClientData cd = wa::parse_client_data(response_field(cred, "clientDataJSON"));
    if (cd.type != "webauthn.get") throw wa::Error("type", "clientDataJSON.type must be webauthn.get");
    take_challenge(app, cd.challenge, "login");
    app.db->with_connection([&](store::Connection& c) {
      auto r = c.exec("SELECT id, user_id, public_key, alg, sign_count, backup_eligible FROM passkeys WHERE credential_id = $1",
                      {cred.id});
      if (!r.empty())
        pk = Row{r.rows[0].text(0), r.rows[0].text(1), r.rows[0].text(2), static_cast<int>(r.rows[0].integer(3)),
                 r.rows[0].integer(4), r.rows[0].integer(5) != 0};
    });
    if (!pk) {
      note_attempt(app, limits, a.failure_window_sec);
      refuse(400, "unknown_credential", "This passkey is not registered here");
    }
    std::string handle = response_field(cred, "userHandle", false);
    if (!handle.empty() && handle != user_handle(pk->user_id)) refuse(400, "user_handle", "userHandle does not match the passkey's account");
    auto key = crypto::base64url_decode(pk->cose_key);
    as = wa::verify_assertion(cd, response_field(cred, "authenticatorData"), response_field(cred, "signature"),
                              {key.value_or(""), pk->alg, static_cast<std::uint32_t>(pk->sign_count), pk->backup_eligible},
                              expect_for(app, cd.challenge));
  } catch (const wa::Error& e) {
    note_attempt(app, limits, a.failure_window_sec);
    refuse(e);
  }
  User u;
  Tokens t;
  bool raced = false;
  app.db->transaction([&](store::Connection& c) {
    // Only from the count that was verified against: two sign-ins with one count cannot both pass.
    auto upd = c.exec(
        "UPDATE passkeys SET sign_count = $1, backup_state = $2, last_used_at = $3 WHERE id = $4 AND sign_count = $5",
        {std::int64_t{as.sign_count}, std::int64_t{as.backup_state}, now_ms(), pk->passkey_id, pk->sign_count});
    auto found = find_user(c, pk->user_id);
    if (upd.affected != 1 || !found) {
      raced = true;
      return;
    }
    u = *found;
    t = start_session(app, c, call.req, u, SessionKind::kWeb);
    audit(c, call.req, u.id, "auth.login", "user", u.id, {{"method", "passkey"}, {"passkey", pk->passkey_id}});
  });
  if (raced) refuse(400, "sign_count", "The passkey was used concurrently; sign in again");
  return json_response(200, token_response(app, u, t));
}

http::Response list_passkeys(AppState& app, const Call& call) {
  json items = json::array();
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec(std::string("SELECT ") + kPasskeyColumns + " FROM passkeys WHERE user_id = $1 ORDER BY created_at, id",
                    {call.user->user_id});
    for (const auto& row : r.rows) items.push_back(passkey_json(row));
  });
  return json_response(200, {{"items", items}});
}

http::Response delete_passkey(AppState& app, const Call& call) {
  std::string id(call.param("id"));
  enum class Outcome { kGone, kMissing, kLast } outcome = Outcome::kMissing;
  app.db->transaction([&](store::Connection& c) {
    if (c.exec("SELECT 1 FROM passkeys WHERE id = $1 AND user_id = $2", {id, call.user->user_id}).empty()) return;
    auto u = c.exec("SELECT password_hash FROM users WHERE id = $1", {call.user->user_id});
    bool has_password = !u.empty() && !u.rows[0].text(0).empty();
    auto n = c.exec("SELECT COUNT(*) FROM passkeys WHERE user_id = $1", {call.user->user_id}).rows[0].integer(0);
    if (!has_password && n <= 1) {
      outcome = Outcome::kLast;
      return;
    }
    c.exec("DELETE FROM passkeys WHERE id = $1", {id});
    audit(c, call.req, call.user->user_id, "passkey.remove", "passkey", id);
    outcome = Outcome::kGone;
  });
  if (outcome == Outcome::kMissing) throw ApiError(404, "Passkey not found");
  if (outcome == Outcome::kLast)
    refuse(409, "last_sign_in_method", "This is the account's only way to sign in; add another passkey first");
  return no_content();
}

}  // namespace

void register_passkey_routes(RouteTable& r, AppState& app) {
  r.add("POST", "/auth/register/options", Access::kOptionalUser, [&app](const Call& c) { return register_options(app, c); });
  r.add("POST", "/auth/register/verify", Access::kOptionalUser, [&app](const Call& c) { return register_verify(app, c); });
  r.add("POST", "/auth/login/options", Access::kPublic, [&app](const Call& c) { return login_options(app, c); });
  r.add("POST", "/auth/login/verify", Access::kPublic, [&app](const Call& c) { return login_verify(app, c); });
  r.add("GET", "/auth/passkeys", Access::kUser, [&app](const Call& c) { return list_passkeys(app, c); });
  r.add("DELETE", "/auth/passkeys/{id}", Access::kUser, [&app](const Call& c) { return delete_passkey(app, c); });
}

}  // namespace ag::control
