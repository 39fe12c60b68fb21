#pragma once
// Service tokens and their signing keys (docs/services-and-tokens.md), shared by the control API
// (tokens_api.cpp) and the CLI (`antigravity token ...`). Every function runs inside the caller's
// transaction; worker-visible changes are recorded with ConfigChanges, so the caller must call
// notify_config_change() after the commit.
#include <cstdint>
#include <optional>
#include <string>

#include "common/service_token.hpp"
#include "control/api/context.hpp"

namespace ag::control {

// A 422 whose body also carries a machine-readable code (VALIDATION_ERROR, INVALID_PROJECT, ...).
ApiError token_error(std::string_view code, std::string detail);

struct TokenProject {
  std::string id;
  std::optional<std::string> slug;
};

// The project with that id (its route's rule has checked the caller's access); 404 "Project not
// found" when it does not exist (any more).
TokenProject project_ref_by_id(store::Connection& c, const std::string& project_id);
// A project by slug or id, whoever owns it (for the CLI); 404 otherwise.
TokenProject project_ref(store::Connection& c, const std::string& slug_or_id);

struct IssueInput {
  std::string service;
  std::optional<std::string> description, backend, project_claim;
  std::optional<std::string> created_by;        // who issued it: the signed-in user, or "cli"
  std::optional<std::string> created_by_label;  // the request's "createdBy", as the client gave it
  std::int64_t expires_in_days = 90;
  json metadata = nullptr;
};
// The issue request body (seed field names); 422 with a code on any problem.
IssueInput parse_issue_body(const json& body);

// Signs and records a token; returns {token, jti, expiresAt, project, service, alg, kid}.
json issue_token(AppState& app, store::Connection& c, const TokenProject& project, const IssueInput& in,
                 const AuditContext& who);

inline constexpr const char* kTokenColumns =
    "jti, project, service, backend, description, created_by, created_at, expires_at, last_used_at, is_active, "
    "revoked_at, revoked_by, revocation_reason, metadata, alg, kid, project_id, created_by_label";
json token_record(const store::Row& row);

// Revokes an active token (of `project_id` when given). nullopt when nothing active matched.
std::optional<json> revoke_token(AppState& app, store::Connection& c, const std::optional<std::string>& project_id,
                                 const std::string& jti, const std::optional<std::string>& by,
                                 const std::optional<std::string>& reason, const AuditContext& who);

// Deletes revocations whose token has expired anyway; returns how many.
std::int64_t cleanup_expired_revocations(store::Connection& c);

// Signing keys. A new key becomes the signer for its algorithm; returns its kid.
std::string create_signing_key(AppState& app, store::Connection& c, jwt::KeyAlg alg, const AuditContext& who);
// false when no such key (or already retired).
bool retire_signing_key(AppState& app, store::Connection& c, const std::string& kid, const AuditContext& who);
// A verify-only public key (tokens minted elsewhere). Throws ApiError 422/409.
void import_public_key(AppState& app, store::Connection& c, const std::string& kid, jwt::KeyAlg alg,
                       const std::string& pem, const AuditContext& who);
// [{kid, alg, created_at, retired_at, signing}] newest first.
json list_signing_keys(store::Connection& c);
// {"keys": [JWK...]} of the keys not retired.
json jwks(store::Connection& c);


}  // namespace ag::control
