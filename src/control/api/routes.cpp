#include "control/api/routes.hpp"

#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/callers.hpp"

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
    case Access::kAgent: return "agent";
    case Access::kRelayClient: return "relay_client";
    case Access::kRelayAnchor: return "relay_anchor";
  }
  return "unknown";
}

void RouteTable::add(std::string method, std::string pattern, Rule rule, ApiHandler handler, Runs runs) {
  if (rule.agents() && rule.access != Access::kUser && rule.access != Access::kProjectMember &&
      rule.access != Access::kProjectAdmin && rule.access != Access::kOrgMember && rule.access != Access::kOrgAdmin)
    throw std::logic_error("agents cannot be admitted by the rule of " + method + " " + pattern);
  router_.add(method, pattern, entries_.size());
  entries_.push_back({rule, std::move(handler), runs});
  decls_.push_back({std::move(method), std::move(pattern), rule.access, rule.agents()});
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

// The one project-access question: the caller's role in the project's organisation (a member's
// role, or an agent's own role in its organisation). 404 (not 403) for anyone else, so another
// organisation's project ids cannot be told from ids that do not exist; 403 below `least`.
// Returns the project's organisation.
std::string require_project_access(AppState& app, const Principal& caller, const std::string& project_id, Role least) {
  std::optional<Role> role;
  std::string org_id;
  if (crypto::is_uuid(project_id))
    app.db->with_connection([&](store::Connection& c) {
      if (caller.agent) {
        auto r = c.exec("SELECT org_id FROM projects WHERE id = $1", {project_id});
        if (!r.empty() && r.rows[0].text(0) == caller.agent_org_id) {
          org_id = caller.agent_org_id;
          role = parse_role(caller.agent_role);
        }
        return;
      }
      auto r = c.exec("SELECT m.role, p.org_id FROM projects p JOIN memberships m ON m.org_id = p.org_id AND m.user_id = $2 "
                      "WHERE p.id = $1",
                      {project_id, caller.user_id});
      if (!r.empty()) {
        role = parse_role(r.rows[0].text(0));
        org_id = r.rows[0].text(1);
      }
    });
  if (!role) throw ApiError(404, "Project not found");
  if (*role < least)
    throw ApiError(403, "Requires the " + std::string(role_name(least)) + " role in the project's organization");
  return org_id;
}

// The token of an agent, when the request carries one: X-Agent-Token, or a Bearer token with the
// agent prefix (a Bearer that is not a user's token is tried as an agent's, as Mission Control
// did). Both headers at once are refused: two credentials are not guessed between.
std::optional<std::string_view> agent_token(const http::Request& req) {
  auto header = req.header("x-agent-token");
  auto auth = req.header("authorization");
  if (!header.empty() && !auth.empty())
    throw ApiError(400, "Send one credential: Authorization or X-Agent-Token, not both");
  if (!header.empty()) return header;
  if (auth.size() > 7 && (auth.substr(0, 7) == "Bearer " || auth.substr(0, 7) == "bearer ")) {
    auto token = auth.substr(7);
    while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
    if (token.substr(0, agents::kTokenPrefix.size()) == agents::kTokenPrefix) return token;
  }
  return std::nullopt;
}

Role least_role(Access access) {
  switch (access) {
    case Access::kProjectAdmin:
    case Access::kOrgAdmin: return Role::kAdmin;
    case Access::kOrgOwner: return Role::kOwner;
    default: return Role::kMember;
  }
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

void authorise(AppState& app, const Rule& rule, Call& call) {
  const Access access = rule.access;
  if (access == Access::kPublic) return;
  if (access == Access::kWorker) {
    if (!worker_authorised(app, call.req)) throw ApiError(401, "Invalid worker secret");
    return;
  }
  if (access == Access::kRelayClient || access == Access::kRelayAnchor) {
    call.user = relay_caller(app, call.req, access == Access::kRelayAnchor);
    return;
  }
  if (auto token = agent_token(call.req)) {
    if (!rule.agents() && access != Access::kAgent)
      throw unauthorized("This route takes a user's Bearer token; agent tokens are not accepted here");
    call.user = agent_caller(app, *token);
  } else if (access == Access::kAgent) {
    throw unauthorized("This route takes an agent token (X-Agent-Token)");
  } else {
    call.user = bearer_user(app, call.req);
  }
  if (access == Access::kOptionalUser || access == Access::kUserOrRefreshToken) return;
  if (!call.user) throw unauthorized("Not authenticated");
  const Principal& caller = *call.user;
  switch (access) {
    case Access::kOperator:
      if (!caller.is_operator) throw ApiError(403, "Operators only");
      return;
    case Access::kProjectMember:
    case Access::kProjectAdmin:
      call.project_id = call.param("id");
      call.org_id = require_project_access(app, caller, *call.project_id, least_role(access));
      return;
    case Access::kOrgMember:
    case Access::kOrgAdmin:
    case Access::kOrgOwner:
      call.org_id = call.param("id");
      if (caller.agent) {
        auto role = parse_role(caller.agent_role);
        if (caller.agent_org_id != *call.org_id || !role) throw ApiError(404, "Organization not found");
        if (*role < least_role(access))
          throw ApiError(403, "Requires the " + std::string(role_name(least_role(access))) + " role in this organization");
        call.org_role = role;
      } else {
        call.org_role = require_org_role(app, caller, *call.org_id, least_role(access));
      }
      return;
    default:
      if (caller.agent) call.org_id = caller.agent_org_id;
      return;
  }
}

AuditContext audit_context(const Call& call) {
  AuditContext who = audit_context(call.req, call.user ? std::optional<std::string>(call.user->user_id) : std::nullopt);
  if (call.user) who.actor_type = std::string(call.user->kind());
  who.org_id = call.org_id;
  who.project_id = call.project_id;
  return who;
}

void audit(store::Connection& c, const Call& call, std::string_view action, std::string_view target_type,
           const std::string& target_id, const json& detail) {
  audit(c, audit_context(call), action, target_type, target_id, detail);
}

}  // namespace ag::control
