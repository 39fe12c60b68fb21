#pragma once
// The control API's route table: every route is registered with the rule that says who may call
// it, and ControlApp checks that rule before the handler runs. Handlers never check credentials
// or ownership themselves; they receive the caller the rule established (Call::principal()).
//
//   routes.add("GET", "/projects/{id}", or_agent(Access::kProjectMember), handler);
//
// A rule says what role is needed where; whether agents (X-Agent-Token) may call the route at
// all is said beside it (`or_agent`). An agent acts in its own organisation only, with its role.
// The rules and what each caller gets are in docs/api.md ("Who may call what"); /openapi.json
// names each operation's rule as `x-antigravity-access`.
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "control/api/context.hpp"
#include "http/router.hpp"

namespace ag::control {

enum class Access {
  kPublic,              // no credential is looked at
  kOptionalUser,        // a bearer token when one is sent (401 when it is invalid); none is fine
  kUserOrRefreshToken,  // kOptionalUser; without a bearer the handler takes a refresh token from the body
  kUser,                // a valid access token of a live session
  kProjectMember,       // kUser, and a member of the organisation of the project in `{id}` (404 otherwise)
  kProjectAdmin,        // kProjectMember with the admin or owner role there (403 otherwise)
  kOperator,            // kUser, and the caller is an operator (403 otherwise)
  kOrgMember,           // kUser, and a member of the organisation in `{id}` (404 otherwise)
  kOrgAdmin,            // kOrgMember with the admin or owner role (403 otherwise)
  kOrgOwner,            // kOrgMember with the owner role (403 otherwise)
  kWorker,              // a worker secret in X-Worker-Secret
  kAgent,               // an agent token, and nothing else (401 otherwise)
  kRelayClient,         // a user's session token in `?token=` or Authorization: Bearer (not a device token)
  kRelayAnchor,         // a device token (agd_…) in `?token=` or Authorization: Bearer
};
std::string_view access_name(Access access);

// Who may present a credential: users only, or users and agents (docs/organizations.md).
enum class Callers : bool { kUsers, kUsersAndAgents };

struct Rule {
  Access access;
  Callers callers = Callers::kUsers;
  Rule(Access a) : access(a) {}  // implicit on purpose: `Access::kUser` reads as a rule
  Rule(Access a, Callers c) : access(a), callers(c) {}
  bool agents() const { return callers == Callers::kUsersAndAgents; }
};
// The rule, also open to the agents of the organisation it names (`user`: any agent).
inline Rule or_agent(Access a) { return {a, Callers::kUsersAndAgents}; }

// A member's role in an organisation, in rising order of what it may do.
enum class Role { kMember, kAdmin, kOwner };
std::string_view role_name(Role r);
std::optional<Role> parse_role(std::string_view name);

// One call of a route, as its rule admitted it.
struct Call {
  const http::Request& req;
  const http::PathParams& params;
  std::optional<Principal> user;  // the bearer's user, when the rule takes bearer tokens and one was sent
  std::optional<Role> org_role;   // the caller's role in `{id}`, for the organisation rules
  // The organisation and project the rule resolved (a project rule: the project in `{id}` and
  // its organisation; an organisation rule: `{id}`); what audit records and the activity feed name.
  std::optional<std::string> org_id;
  std::optional<std::string> project_id;

  // The caller of a route whose rule requires a user.
  const Principal& principal() const {
    if (!user) throw std::logic_error("principal() on a route whose rule admits no user");
    return *user;
  }
  const std::string& param(std::string_view name) const { return params.find(name)->second; }
};
using ApiHandler = std::function<http::Response(const Call&)>;

// Where a handler runs: on the handler pool (it may block on the database), or on the I/O thread
// (it never blocks: static documents).
enum class Runs { kOnPool, kInline };

struct RouteDecl {
  std::string method;
  std::string pattern;
  Access access;
  bool agents = false;
};

class RouteTable {
 public:
  // Agents are admitted only by the rules that name an organisation (project and organisation
  // rules up to admin) and by `user`; std::logic_error for any other pairing.
  void add(std::string method, std::string pattern, Rule rule, ApiHandler handler, Runs runs = Runs::kOnPool);

  struct Entry {
    Rule rule;
    ApiHandler handler;
    Runs runs = Runs::kOnPool;
  };
  struct Match {
    http::Router::Outcome outcome = http::Router::Outcome::kNotFound;
    const Entry* entry = nullptr;
    http::PathParams params;
    std::string allow;
  };
  Match match(std::string_view method, std::string_view path) const;

  // Every route with its rule, in registration order.
  std::vector<RouteDecl> routes() const;

 private:
  http::Router router_;
  std::vector<RouteDecl> decls_;
  std::vector<Entry> entries_;
};

// Checks `rule` for the request; fills call.user, org_role, org_id, project_id. Throws ApiError
// (400 for two credentials, 401/403/404, 429 for an agent over its rate) when refused.
void authorise(AppState& app, const Rule& rule, Call& call);

// The audit record's who and where for a call: its caller (user or agent), organisation, project.
AuditContext audit_context(const Call& call);
void audit(store::Connection& c, const Call& call, std::string_view action, std::string_view target_type,
           const std::string& target_id, const json& detail = json::object());

// The caller's role in `org_id` (a body field, not the path): 404 when not a member, 403 below
// `least`. The organisation rules use the same check on `{id}`.
Role require_org_role(AppState& app, const Principal& user, const std::string& org_id, Role least);

// The role-granting policy of the organisation routes (docs/organizations.md): a caller may
// give, change or take away only roles up to their own, and only an owner touches an owner.
// 403 otherwise. `target_current`: the member's role now (nullopt for an invite).
void require_can_grant(const Call& call, Role wanted, std::optional<Role> target_current);

// docs/openapi.json with `x-antigravity-access` (the rule's name) on each registered operation.
std::string openapi_with_access(const std::vector<RouteDecl>& routes);

// Route registration, one function per resource file.
void register_auth_routes(RouteTable& r, AppState& app);
void register_organization_routes(RouteTable& r, AppState& app);
void register_device_routes(RouteTable& r, AppState& app);
void register_passkey_routes(RouteTable& r, AppState& app);
void register_project_routes(RouteTable& r, AppState& app);
void register_key_routes(RouteTable& r, AppState& app);
void register_worker_config_routes(RouteTable& r, AppState& app);
void register_meta_routes(RouteTable& r, AppState& app);
void register_token_routes(RouteTable& r, AppState& app);
void register_service_routes(RouteTable& r, AppState& app);
void register_agent_routes(RouteTable& r, AppState& app);
void register_activity_routes(RouteTable& r, AppState& app);
void register_traffic_routes(RouteTable& r, AppState& app);
void register_relay_routes(RouteTable& r, AppState& app);

}  // namespace ag::control
