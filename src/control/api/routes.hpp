#pragma once
// The control API's route table: every route is registered with the rule that says who may call
// it, and ControlApp checks that rule before the handler runs. Handlers never check credentials
// or ownership themselves; they receive the caller the rule established (Call::principal()).
//
//   routes.add("GET", "/projects/{id}", Access::kProjectMember, handler);
//
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
};
std::string_view access_name(Access access);

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
};

class RouteTable {
 public:
  void add(std::string method, std::string pattern, Access access, ApiHandler handler,
           Runs runs = Runs::kOnPool);

  struct Entry {
    Access access;
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

// Checks `access` for the request; fills call.user. Throws ApiError (401/403/404) when refused.
void authorise(AppState& app, Access access, Call& call);

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

}  // namespace ag::control
