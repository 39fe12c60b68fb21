#pragma once
// Shared pieces of the control API handlers: the application state, typed API errors, JSON body
// parsing and field validation, caller authentication, audit records and the worker-config
// version. Handlers throw ApiError; app.cpp turns it into {"detail": ...} with the status.
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/jwt.hpp"
#include "control/settings.hpp"
#include "control/store/database.hpp"
#include "control/service/agent_tokens.hpp"
#include "control/service/attempts.hpp"
#include "control/service/oidc.hpp"
#include "http/message.hpp"

namespace ag::relay {
class Relay;
}

namespace ag::control {

using json = nlohmann::json;

struct AppState {
  Settings settings;
  std::unique_ptr<store::Database> db;
  jwt::Algorithm jwt_alg;
  // Wakes this process's long polls after a worker-visible change commits (set by the server).
  std::function<void()> on_config_change;
  // The newest config version committed through this process (a change seen in the database
  // beyond it came from another process, e.g. the CLI, and must wake the long polls here).
  std::atomic<std::int64_t> local_config_version{0};
  // The last full worker-config document generated, by version and variant (documents for a
  // million keys take seconds to generate; every worker that reconnects at that version reuses it).
  struct FullDocumentCache {
    std::mutex mutex;
    std::int64_t version = -1;
    bool compact = false;
    // The document leaves out keys past their expiry, so it is only good until the first
    // listed key expires, even without a new version.
    std::int64_t valid_until_ms = 0;
    std::shared_ptr<const std::string> body;
  } full_document_cache;
  // docs/openapi.json with each operation's authorisation rule (`x-antigravity-access`).
  std::string openapi_document;
  // Failed sign-ins, user-code entries and device polls (docs/auth.md, "Limits").
  AttemptLimiter attempts;
  // When this process last dropped traffic rollups past their retention (traffic_api.cpp).
  std::atomic<std::int64_t> traffic_swept_at{0};
  // Agent tokens verified by this process (the slow hash runs once per token: agent_tokens.hpp).
  agents::VerifiedTokens agent_tokens;
  // The WebSocket relay (docs/relay.md).
  std::unique_ptr<relay::Relay> relay;
  // External sign-in (OIDC_ISSUER set), else null.
  std::unique_ptr<oidc::Verifier> oidc;
};

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string detail)
      : std::runtime_error(detail), status_(status), detail_(std::move(detail)) {}
  int status() const { return status_; }
  const std::string& detail() const { return detail_; }
  std::vector<http::Header> headers;
  std::string code;     // when set, the body is {"detail", "code"}
  bool oauth = false;   // an OAuth 2.0 error (RFC 6749 5.2): {"error": code, "error_description", "detail"}

 private:
  int status_;
  std::string detail_;
};

ApiError unauthorized(std::string detail);
// An error whose body also carries a stable `code`: {"detail", "code"}.
ApiError coded_error(int status, std::string_view code, std::string detail);
ApiError validation_error(std::string_view field, std::string_view message);

http::Response json_response(int status, const json& body);
http::Response no_content();
http::Response error_response(int status, std::string_view detail);

// The request id the app assigned (also in the X-Request-Id response header).
std::string_view request_id(const http::Request& req);

// Parses a JSON object body. Empty body → {} when `allow_empty`. 415 for a non-JSON content
// type, 400 for invalid JSON or a non-object.
json parse_object_body(const http::Request& req, bool allow_empty = false);
// 422 naming the first field not in `allowed`.
void reject_unknown_fields(const json& obj, std::initializer_list<std::string_view> allowed);
// Typed field access: 422 "<field>: ..." on a wrong type; nullopt when absent (or null).
std::optional<std::string> get_string(const json& obj, std::string_view field);
std::optional<std::int64_t> get_int(const json& obj, std::string_view field, std::int64_t lo,
                                    std::int64_t hi);
std::string require_string(const json& obj, std::string_view field);
// A string field that may be sent under either of two names (the seed's camelCase and the
// OAuth/snake_case one): 422 on `report_as` when both are present, not a guess between them.
std::optional<std::string> get_string_either(const json& obj, std::string_view name, std::string_view alias,
                                             std::string_view report_as);

// The authenticated caller: a user, or an agent of one organisation (docs/organizations.md,
// "Agents"). For an agent, `user_id` is the agent's id (what audit records and `revoked_by`
// name), `name` its name, and `email` is empty.
struct Principal {
  std::string user_id;
  std::string email;
  std::string name;
  std::string session_id;
  std::int64_t session_expires_at = 0;
  bool is_operator = false;  // may see the worker registry (docs/configuration.md, "Operators")
  bool agent = false;
  std::string agent_org_id;  // the agent's organisation
  std::string agent_role;    // "member" or "admin"

  std::string_view kind() const { return agent ? "agent" : "user"; }
  // How the caller is named where a person's email would be (e.g. a token's revoked_by).
  std::string label() const { return agent ? "agent:" + name : email; }
};
// Who did something, and from where, for the audit log: the signed-in user or agent (none for
// the CLI or an anonymous sign-up), the client's address ("cli" for the CLI), the request id,
// and the organisation and project the action belongs to (the activity feed's scope). Domain
// functions take this, not an http::Request, so the CLI calls them directly.
struct AuditContext {
  std::optional<std::string> actor;
  std::string ip;
  std::string request_id;
  std::string actor_type = "user";
  std::optional<std::string> org_id;
  std::optional<std::string> project_id;
};
AuditContext audit_context(const http::Request& req, const std::optional<std::string>& actor);

// Appends an audit record in the caller's transaction.
void audit(store::Connection& c, const AuditContext& who, std::string_view action, std::string_view target_type,
           const std::string& target_id, const json& detail = json::object());
void audit(store::Connection& c, const http::Request& req, const std::optional<std::string>& actor,
           std::string_view action, std::string_view target_type, const std::string& target_id,
           const json& detail = json::object());

// Increments the worker-config version inside the caller's transaction; returns the new value.
std::int64_t bump_config_version(store::Connection& c);

std::string iso_time(std::int64_t ms);
json iso_or_null(const std::optional<std::int64_t>& ms);

}  // namespace ag::control
