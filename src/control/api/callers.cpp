#include "control/api/callers.hpp"

#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/sessions.hpp"
#include "control/service/agent_tokens.hpp"
#include "control/service/validation.hpp"

namespace ag::control {

namespace {

// A device session's opaque access token (docs/auth.md, "Device sign-in"): by its hash, live
// while the token and its session are.
Principal device_user(AppState& app, std::string_view token) {
  std::optional<Principal> p;
  if (token.size() <= 64) {
    std::int64_t now = now_ms();
    app.db->with_connection([&](store::Connection& c) {
      auto r = c.exec(
          "SELECT u.id, u.email, u.name, s.id, s.expires_at, u.is_operator FROM device_access_tokens t "
          "JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id "
          "WHERE t.token_hash = $1 AND t.expires_at > $2 AND s.revoked_at IS NULL AND s.expires_at > $2",
          {crypto::sha256_hex(token), now});
      if (!r.empty())
        p = Principal{r.rows[0].text(0), r.rows[0].text(1), r.rows[0].text(2), r.rows[0].text(3),
                      r.rows[0].integer(4), r.rows[0].integer(5) != 0, false, {}, {}};
    });
  }
  if (!p) throw unauthorized("Invalid or expired token");
  return *p;
}

// A Bearer JWT from the OIDC issuer (docs/auth.md, "External sign-in"): the user its `sub` maps
// to, created on first sight. An email that already belongs to an account is linked to it only
// when the issuer says the email is verified; otherwise the token is refused rather than guessed.
Principal external_user(AppState& app, const http::Request& req, std::string_view token) {
  std::string why;
  auto id = app.oidc->verify(token, why);
  if (!id) throw unauthorized("Invalid external token: " + why);
  const std::string& issuer = app.oidc->settings().issuer;
  auto find = [&](store::Connection& c) -> std::optional<Principal> {
    auto r = c.exec(
        "SELECT u.id, u.email, u.name, u.is_operator FROM external_identities x JOIN users u ON u.id = x.user_id "
        "WHERE x.issuer = $1 AND x.subject = $2",
        {issuer, id->sub});
    if (r.empty()) return std::nullopt;
    return Principal{r.rows[0].text(0), r.rows[0].text(1), r.rows[0].text(2), "", id->expires_at_ms,
                     r.rows[0].integer(3) != 0, false, {}, {}};
  };
  std::optional<Principal> p;
  app.db->with_connection([&](store::Connection& c) { p = find(c); });
  if (p) return *p;
  std::string email = lower_ascii(id->email);
  if (email.empty() || !check_email(email).empty())
    throw unauthorized("The external token has no usable email claim ('" + app.oidc->settings().email_claim + "')");
  std::string name = id->name.empty() || !check_name(id->name).empty() ? email.substr(0, email.find('@')) : id->name;
  bool refused = false;
  try {
    app.db->transaction([&](store::Connection& c) {
      std::string user_id;
      if (auto existing = find_user_by_email(c, email, nullptr)) {
        if (!id->email_verified) {
          refused = true;
          return;
        }
        user_id = existing->id;
      } else {
        User u{crypto::uuid_v4(), email, name, now_ms()};
        insert_user(app, c, u, "");
        user_id = u.id;
        audit(c, req, user_id, "user.register", "user", user_id, {{"email", email}, {"method", "oidc"}, {"issuer", issuer}});
      }
      c.exec("INSERT INTO external_identities (issuer, subject, user_id, created_at) VALUES ($1, $2, $3, $4)",
             {issuer, id->sub, user_id, now_ms()});
      audit(c, req, user_id, "auth.external_link", "user", user_id, {{"issuer", issuer}});
    });
  } catch (const store::UniqueViolation&) {
    // The same subject's first two requests at once: the other one linked it.
  }
  if (refused) throw ApiError(403, "This email belongs to an existing account and the issuer does not say it is verified");
  app.db->with_connection([&](store::Connection& c) { p = find(c); });
  if (!p) throw unauthorized("Invalid external token");
  return *p;
}


// The token of `Authorization: Bearer <token>`; nullopt without the header, 401 for another scheme.
std::optional<std::string_view> bearer_token(const http::Request& req) {
  auto auth = req.header("authorization");
  if (auth.empty()) return std::nullopt;
  if (auth.size() < 7 || !(auth.substr(0, 7) == "Bearer " || auth.substr(0, 7) == "bearer "))
    throw unauthorized("Authorization header must be 'Bearer <token>'");
  auto token = auth.substr(7);
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  return token;
}

// A person's token: a session JWT, a device token, or the OIDC issuer's JWT.
Principal token_user(AppState& app, const http::Request& req, std::string_view token) {
  if (token.substr(0, 4) == "agd_") return device_user(app, token);
  if (app.oidc && oidc::unverified_issuer(token) == app.oidc->settings().issuer) return external_user(app, req, token);
  auto v = jwt::verify(app.jwt_alg, app.settings.jwt_secret, token);
  if (!v.payload) throw unauthorized("Invalid or expired token");
  json claims = json::parse(*v.payload, nullptr, false);
  auto str = [&](const char* k) -> std::string {
    auto it = claims.find(k);
    return it != claims.end() && it->is_string() ? it->get<std::string>() : std::string{};
  };
  auto exp = claims.find("exp");
  if (exp == claims.end() || !exp->is_number()) throw unauthorized("Invalid or expired token");
  std::int64_t now = now_ms();
  if (exp->get<double>() * 1000.0 <= static_cast<double>(now)) throw unauthorized("Token expired");
  if (str("iss") != "antigravity" || str("aud") != "antigravity-control")
    throw unauthorized("Invalid or expired token");
  std::string sid = str("sid"), sub = str("sub");
  if (sid.empty() || sub.empty()) throw unauthorized("Invalid or expired token");
  std::optional<Principal> p;
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec(
        "SELECT u.id, u.email, u.name, s.expires_at, u.is_operator FROM sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL AND s.expires_at > $3",
        {sid, sub, now});
    if (!r.empty())
      p = Principal{r.rows[0].text(0), r.rows[0].text(1), r.rows[0].text(2), sid, r.rows[0].integer(3),
                    r.rows[0].integer(4) != 0, false, {}, {}};
  });
  if (!p) throw unauthorized("Session revoked or expired");
  return *p;
}

}  // namespace

std::optional<Principal> bearer_user(AppState& app, const http::Request& req) {
  auto token = bearer_token(req);
  if (!token) return std::nullopt;
  return token_user(app, req, *token);
}

Principal relay_caller(AppState& app, const http::Request& req, bool anchor) {
  std::string query_token;
  bool in_query = http::query_param(req.query, "token", query_token) && !query_token.empty();
  auto header = bearer_token(req);
  if (in_query && header) throw ApiError(400, "Send the token once: in ?token= or in Authorization, not both");
  std::string token = in_query ? query_token : header ? std::string(*header) : std::string();
  if (token.empty()) throw unauthorized("Not authenticated: send the token in ?token= or Authorization: Bearer");
  const bool device = token.rfind("agd_", 0) == 0;
  if (anchor && !device) throw unauthorized("Anchors connect with a device token (agd_…, from device sign-in)");
  if (!anchor && device) throw unauthorized("A device token connects to /ws/anchor; clients use a session token");
  if (token.rfind(agents::kTokenPrefix, 0) == 0) throw unauthorized("Agent tokens do not connect to the relay");
  return token_user(app, req, token);
}

bool worker_authorised(const AppState& app, const http::Request& req) {
  auto presented = req.header("x-worker-secret");
  if (presented.empty()) presented = req.header("x-control-secret");
  if (presented.empty()) return false;
  // Hash both sides first so the comparison is constant-time whatever the lengths.
  auto p = crypto::sha256(presented);
  std::string_view pv(reinterpret_cast<const char*>(p.data()), p.size());
  bool ok = false;
  for (const auto& s : app.settings.worker_secrets) {
    auto h = crypto::sha256(s);
    ok |= crypto::constant_time_equal(pv, std::string_view(reinterpret_cast<const char*>(h.data()), h.size()));
  }
  return ok;
}


constexpr std::int64_t kLastSeenEveryMs = 30'000;

Principal agent_caller(AppState& app, std::string_view token) {
  if (!agents::well_formed(token)) throw unauthorized("Invalid agent token");
  const std::int64_t now = now_ms();
  struct Row {
    std::string id, org_id, name, role, hash;
    std::optional<std::int64_t> expires_at, revoked_at, last_seen_at;
  };
  std::vector<Row> candidates;
  app.db->with_connection([&](store::Connection& c) {
    auto r = c.exec("SELECT id, org_id, name, role, token_hash, expires_at, revoked_at, last_seen_at FROM agents "
                    "WHERE token_prefix = $1 ORDER BY seq LIMIT 8",
                    {agents::lookup_prefix(token)});
    for (const auto& row : r.rows)
      candidates.push_back({row.text(0), row.text(1), row.text(2), row.text(3), row.text(4), row.opt_integer(5),
                            row.opt_integer(6), row.opt_integer(7)});
  });
  const Row* found = nullptr;
  for (const auto& row : candidates) {
    if (app.agent_tokens.seen(token, row.hash, now) || agents::verify_token(token, row.hash)) {
      app.agent_tokens.remember(token, row.hash, now);
      found = &row;
      break;
    }
  }
  if (!found) throw unauthorized("Invalid agent token");
  if (found->revoked_at) throw unauthorized("Agent token revoked");
  if (found->expires_at && *found->expires_at <= now) throw unauthorized("Agent token expired");
  const std::string key = "agent:" + found->id;
  if (auto wait = app.attempts.retry_after(key, app.settings.agent_rate_limit, now); wait > 0) {
    ApiError e(429, "Agent rate limit reached (" + std::to_string(app.settings.agent_rate_limit) + " calls per " +
                        std::to_string(app.settings.agent_rate_window_sec) + " s)");
    e.headers.push_back({"Retry-After", std::to_string(wait)});
    throw e;
  }
  app.attempts.record(key, app.settings.agent_rate_window_sec, now);
  if (!found->last_seen_at || now - *found->last_seen_at >= kLastSeenEveryMs)
    app.db->with_connection([&](store::Connection& c) {
      c.exec("UPDATE agents SET last_seen_at = $1 WHERE id = $2 AND (last_seen_at IS NULL OR last_seen_at <= $3)",
             {now, found->id, now - kLastSeenEveryMs});
    });
  Principal p;
  p.user_id = found->id;
  p.name = found->name;
  p.agent = true;
  p.agent_org_id = found->org_id;
  p.agent_role = found->role;
  return p;
}

}  // namespace ag::control
