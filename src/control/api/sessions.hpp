#pragma once
// Sessions, shared by every way of signing in (docs/auth.md): a password (auth_api.cpp), a
// passkey (passkeys_api.cpp) and a device code (device_api.cpp).
//
// A session is one sign-in. A browser's (`web`) gets short-lived JWT access tokens that carry the
// session id; a device's (`device`: `antigravity login`, anchors) gets opaque access tokens
// stored as SHA-256. Both get refresh tokens that form a family: each use spends the token and
// issues the next; presenting a spent token again revokes the session, and with it every access
// token it issued (each is checked against a live session row).
#include <optional>
#include <string>

#include "control/api/context.hpp"

namespace ag::control {

struct User {
  std::string id, email, name;
  std::int64_t created_at = 0;
};
json user_json(const User& u);
std::optional<User> find_user_by_email(store::Connection& c, const std::string& email, std::string* password_hash);
std::optional<User> find_user(store::Connection& c, const std::string& id);

// Creates the account inside the caller's transaction; the first user of an installation is its
// operator. `password_hash` "" for an account without a password (passkey only).
void insert_user(AppState& app, store::Connection& c, const User& u, const std::string& password_hash);

// Brute-force limits (service/attempts.hpp): 429 with Retry-After, naming what is limited, when
// any key is past its limit; `note` then counts one attempt against each key.
struct Limit {
  std::string key;
  std::int64_t max;
};
void refuse_if_limited(AppState& app, std::initializer_list<Limit> limits, std::string_view what);
void note_attempt(AppState& app, std::initializer_list<Limit> limits, std::int64_t window_sec);

enum class SessionKind { kWeb, kDevice };
std::string_view kind_name(SessionKind k);

struct Tokens {
  std::string access, refresh;
};
// Starts a session for `u` inside the caller's transaction.
Tokens start_session(AppState& app, store::Connection& c, const http::Request& req, const User& u, SessionKind kind,
                     const std::string& client_id = {});

// The answer to a browser sign-in: the seed's {verified, token, refreshToken, user} and the
// OAuth2 names (access_token, token_type, expires_in, refresh_token) for the same tokens.
json token_response(AppState& app, const User& u, const Tokens& t);
// The answer to a device sign-in (the seed's anchor shape, and RFC 6749 5.1's names).
json device_token_response(AppState& app, const User& u, const Tokens& t);

// Spends `refresh_token` of a session of `kind` and issues the next pair. Throws 401 for an
// unknown, expired or other-kind token, and for a spent one (which also revokes the session).
std::pair<User, Tokens> refresh_session(AppState& app, const http::Request& req, const std::string& refresh_token,
                                        SessionKind kind);

// How clients reach this server: CONTROL_PUBLIC_URL, or the scheme and the request's Host (for
// links the control plane hands out: device verification, invites, OAuth metadata).
std::string public_base(const AppState& app, const http::Request& req);

// Ends a session (logout, removal from the session list); audited as `action`.
void revoke_session(store::Connection& c, const http::Request& req, const std::string& session_id,
                    const std::string& user_id, std::string_view reason, std::string_view action);

}  // namespace ag::control
