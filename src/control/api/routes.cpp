#include "control/api/routes.hpp"

#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/sessions.hpp"
#include "control/service/validation.hpp"

namespace ag::control {

std::string_view access_name(Access access) {
  switch (access) {
    case Access::kPublic: return "public";
    case Access::kOptionalUser: return "optional_user";
    case Access::kUserOrRefreshToken: return "user_or_refresh_token";
    case Access::kUser: return "user";
    case Access::kProjectMember: return "project_member";
    case Access::kProjectAdmin: return "project_admin";
    case Access::kOperator: return "operator";
    case Access::kWorker: return "worker";
    case Access::kOrgMember: return "org_member";
    case Access::kOrgAdmin: return "org_admin";
    case Access::kOrgOwner: return "org_owner";
  }
  return "unknown";
}

void RouteTable::add(std::string method, std::string pattern, Access access, ApiHandler handler, Runs runs) {
  router_.add(method, pattern, entries_.size());
  entries_.push_back({access, std::move(handler), runs});
  decls_.push_back({std::move(method), std::move(pattern), access});
}

RouteTable::Match RouteTable::match(std::string_view method, std::string_view path) const {
  auto m = router_.match(method, path);
  Match out;
  out.outcome = m.outcome;
  out.allow = std::move(m.allow);
  out.params = std::move(m.params);
  if (m.outcome == http::Router::Outcome::kFound) out.entry = &entries_[m.slot];
  return out;
}

std::vector<RouteDecl> RouteTable::routes() const { return decls_; }

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
                      r.rows[0].integer(4), r.rows[0].integer(5) != 0};
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
                     r.rows[0].integer(3) != 0};
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

// nullopt when no Authorization header; 401 when one is present but invalid.
std::optional<Principal> bearer_user(AppState& app, const http::Request& req) {
  auto auth = req.header("authorization");
  if (auth.empty()) return std::nullopt;
  if (auth.size() < 7 || !(auth.substr(0, 7) == "Bearer " || auth.substr(0, 7) == "bearer "))
    throw unauthorized("Authorization header must be 'Bearer <token>'");
  auto token = auth.substr(7);
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
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
                    r.rows[0].integer(4) != 0};
  });
  if (!p) throw unauthorized("Session revoked or expired");
  return p;
}

// X-Worker-Secret (or the older X-Control-Secret) against every configured worker secret.
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

// The one project-access question: the caller's role in the project's organisation. 404 (not
// 403) for a non-member, so another organisation's project ids cannot be told from ids that do
// not exist; 403 for a member below `least`.
void require_project_access(AppState& app, const Principal& user, const std::string& project_id, Role least) {
  std::optional<Role> role;
  if (crypto::is_uuid(project_id))
    app.db->with_connection([&](store::Connection& c) {
      auto r = c.exec("SELECT m.role FROM projects p JOIN memberships m ON m.org_id = p.org_id AND m.user_id = $2 "
                      "WHERE p.id = $1",
                      {project_id, user.user_id});
      if (!r.empty()) role = parse_role(r.rows[0].text(0));
    });
  if (!role) throw ApiError(404, "Project not found");
  if (*role < least)
    throw ApiError(403, "Requires the " + std::string(role_name(least)) + " role in the project's organization");
}

}  // namespace

std::string_view role_name(Role r) {
  switch (r) {
    case Role::kMember: return "member";
    case Role::kAdmin: return "admin";
    case Role::kOwner: return "owner";
  }
  return "member";
}

std::optional<Role> parse_role(std::string_view name) {
  if (name == "member") return Role::kMember;
  if (name == "admin") return Role::kAdmin;
  if (name == "owner") return Role::kOwner;
  return std::nullopt;
}

void require_can_grant(const Call& call, Role wanted, std::optional<Role> target_current) {
  const Role mine = call.org_role.value_or(Role::kMember);
  if (wanted > mine || (target_current && *target_current > mine) ||
      (mine != Role::kOwner && (wanted == Role::kOwner || target_current == Role::kOwner)))
    throw ApiError(403, "Only an owner may grant or change the owner role, and no one beyond their own role");
}

// The caller's role in the organisation `org_id`: 404 when not a member (an organisation one
// does not belong to cannot be told from one that does not exist), 403 below `least`.
Role require_org_role(AppState& app, const Principal& user, const std::string& org_id, Role least) {
  std::optional<Role> role;
  if (crypto::is_uuid(org_id))
    app.db->with_connection([&](store::Connection& c) {
      auto r = c.exec("SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2", {org_id, user.user_id});
      if (!r.empty()) role = parse_role(r.rows[0].text(0));
    });
  if (!role) throw ApiError(404, "Organization not found");
  if (*role < least) throw ApiError(403, "Requires the " + std::string(role_name(least)) + " role in this organization");
  return *role;
}

void authorise(AppState& app, Access access, Call& call) {
  switch (access) {
    case Access::kPublic:
      return;
    case Access::kOptionalUser:
    case Access::kUserOrRefreshToken:
      call.user = bearer_user(app, call.req);
      return;
    case Access::kUser:
    case Access::kProjectMember:
    case Access::kProjectAdmin:
    case Access::kOperator:
      call.user = bearer_user(app, call.req);
      if (!call.user) throw unauthorized("Not authenticated");
      if (access == Access::kOperator && !call.user->is_operator) throw ApiError(403, "Operators only");
      if (access == Access::kProjectMember) require_project_access(app, *call.user, call.param("id"), Role::kMember);
      if (access == Access::kProjectAdmin) require_project_access(app, *call.user, call.param("id"), Role::kAdmin);
      return;
    case Access::kWorker:
      if (!worker_authorised(app, call.req)) throw ApiError(401, "Invalid worker secret");
      return;
    case Access::kOrgMember:
    case Access::kOrgAdmin:
    case Access::kOrgOwner:
      call.user = bearer_user(app, call.req);
      if (!call.user) throw unauthorized("Not authenticated");
      call.org_role = require_org_role(app, *call.user, call.param("id"),
                                       access == Access::kOrgOwner   ? Role::kOwner
                                       : access == Access::kOrgAdmin ? Role::kAdmin
                                                                     : Role::kMember);
      return;
  }
}

}  // namespace ag::control
