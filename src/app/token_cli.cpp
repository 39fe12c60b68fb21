#include "app/token_cli.hpp"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/config_changes.hpp"
#include "control/api/tokens.hpp"
#include "control/app.hpp"
#include "control/settings.hpp"

namespace ag::cli {

struct TokenCommands {
  CLI::App* token = nullptr;
  CLI::App *create = nullptr, *list = nullptr, *revoke = nullptr, *cleanup = nullptr;
  CLI::App *keys = nullptr, *keys_list = nullptr, *keys_rotate = nullptr, *keys_retire = nullptr, *keys_import = nullptr;
  std::string project, service, description, backend, created_by, output = "json";
  int expires_in_days = 90;
  bool all = false;
  std::string jti, reason, by;
  std::string alg, kid, public_key_file;
};

TokenCommands* add_token_commands(CLI::App& app) {
  static TokenCommands t;
  t.token = app.add_subcommand("token", "Service tokens and their signing keys (works on DATABASE_URL / DATABASE_PATH).");
  t.token->require_subcommand(1);
  t.create = t.token->add_subcommand("create", "Issue a service token for a project's service and print it (shown once).");
  t.create->add_option("--project", t.project, "project slug or id")->required();
  t.create->add_option("--service", t.service, "service name (declared on the project)")->required();
  t.create->add_option("--description", t.description, "what the token is for");
  t.create->add_option("--expires-in-days", t.expires_in_days, "lifetime, 1-365 days")->default_val(90);
  t.create->add_option("--backend", t.backend, "free-form backend label");
  t.create->add_option("--created-by", t.created_by, "who asked for it (stored as created_by_label; created_by is \"cli\")");
  t.create->add_option("--output-format", t.output, "json | text | env")
      ->check(CLI::IsMember({"json", "text", "env"}))
      ->default_val("json");
  t.list = t.token->add_subcommand("list", "List a project's tokens (active ones unless --all).");
  t.list->add_option("--project", t.project, "project slug or id")->required();
  t.list->add_flag("--all", t.all, "include revoked and expired tokens");
  t.revoke = t.token->add_subcommand("revoke", "Revoke a token by its jti; workers refuse it at once.");
  t.revoke->add_option("jti", t.jti, "the token's jti")->required();
  t.revoke->add_option("--reason", t.reason, "why (kept in the audit record)");
  t.revoke->add_option("--by", t.by, "who revoked it")->default_val("cli");
  t.cleanup = t.token->add_subcommand("cleanup", "Delete revocations of tokens that have expired anyway.");
  t.keys = t.token->add_subcommand("keys", "Signing keys for ES256/EdDSA tokens.");
  t.keys->require_subcommand(1);
  t.keys_list = t.keys->add_subcommand("list", "List signing and imported keys.");
  t.keys_rotate = t.keys->add_subcommand("rotate", "Create a new signing key; new tokens use it, old keys keep verifying.");
  t.keys_rotate->add_option("--alg", t.alg, "ES256 | EdDSA (default: GATEWAY_JWT_ALG)")->check(CLI::IsMember({"ES256", "EdDSA"}));
  t.keys_retire = t.keys->add_subcommand("retire", "Retire a key: tokens signed with it stop verifying.");
  t.keys_retire->add_option("kid", t.kid, "key id")->required();
  t.keys_import = t.keys->add_subcommand("import", "Add a verify-only public key (tokens minted elsewhere with this kid).");
  t.keys_import->add_option("--kid", t.kid, "key id the tokens carry")->required();
  t.keys_import->add_option("--alg", t.alg, "ES256 | EdDSA")->required()->check(CLI::IsMember({"ES256", "EdDSA"}));
  t.keys_import->add_option("--public-key", t.public_key_file, "PEM file (SubjectPublicKeyInfo)")->required()->check(CLI::ExistingFile);
  return &t;
}

bool token_command_selected(const TokenCommands* t) { return t && t->token && t->token->parsed(); }

namespace {

// The CLI acts with database access, not as a signed-in user: its audit records name no actor
// and "cli" as the address.
control::AuditContext cli_context() { return {std::nullopt, "cli", "cli-" + crypto::random_base62(16), "user", std::nullopt, std::nullopt}; }

void print_json(const control::json& j) { std::printf("%s\n", j.dump(2).c_str()); }

int run(const TokenCommands& t) {
  control::ControlApp app(control::load_settings());
  auto& st = app.state();
  const auto who = cli_context();
  if (t.create->parsed()) {
    control::json body = {{"service", t.service}, {"expiresInDays", t.expires_in_days}};
    if (!t.description.empty()) body["description"] = t.description;
    if (!t.backend.empty()) body["backend"] = t.backend;
    if (!t.created_by.empty()) body["createdBy"] = t.created_by;
    auto in = control::parse_issue_body(body);
    in.created_by = "cli";  // database access, not a signed-in user; --created-by is the label
    control::json out;
    st.db->transaction([&](store::Connection& c) {
      auto project = control::project_ref(c, t.project);
      out = control::issue_token(st, c, project, in, who);
    });
    control::notify_config_change(st);
    if (t.output == "json") {
      print_json(out);
    } else if (t.output == "env") {
      std::printf("GATEWAY_TOKEN=%s\nGATEWAY_TOKEN_JTI=%s\n", out["token"].get<std::string>().c_str(),
                  out["jti"].get<std::string>().c_str());
    } else {
      std::printf("Token:   %s\nJTI:     %s\nProject: %s\nService: %s\nExpires: %s\n\nStore the token now: it is not shown again.\n",
                  out["token"].get<std::string>().c_str(), out["jti"].get<std::string>().c_str(),
                  out["project"].get<std::string>().c_str(), out["service"].get<std::string>().c_str(),
                  out["expiresAt"].get<std::string>().c_str());
    }
    return 0;
  }
  if (t.list->parsed()) {
    control::json tokens = control::json::array();
    st.db->with_connection([&](store::Connection& c) {
      auto project = control::project_ref(c, t.project);
      auto r = c.exec(std::string("SELECT ") + control::kTokenColumns +
                          " FROM gateway_tokens WHERE project_id = $1 ORDER BY seq DESC",
                      {project.id});
      std::int64_t now = now_ms();
      for (const auto& row : r.rows) {
        bool active = row.integer(9) != 0 && row.integer(7) > now;
        if (t.all || active) tokens.push_back(control::token_record(row));
      }
    });
    print_json({{"tokens", tokens}});
    return 0;
  }
  if (t.revoke->parsed()) {
    std::optional<control::json> out;
    st.db->transaction([&](store::Connection& c) {
      out = control::revoke_token(st, c, std::nullopt, t.jti, t.by,
                                  t.reason.empty() ? std::nullopt : std::optional<std::string>(t.reason), who);
    });
    if (!out) {
      std::fprintf(stderr, "error: NOT_FOUND: no active token with jti %s\n", t.jti.c_str());
      return 1;
    }
    control::notify_config_change(st);
    print_json(*out);
    return 0;
  }
  if (t.cleanup->parsed()) {
    std::int64_t n = 0;
    st.db->transaction([&](store::Connection& c) { n = control::cleanup_expired_revocations(c); });
    std::printf("removed %lld expired revocation(s)\n", static_cast<long long>(n));
    return 0;
  }
  if (t.keys_list->parsed()) {
    control::json keys;
    st.db->with_connection([&](store::Connection& c) { keys = control::list_signing_keys(c); });
    print_json({{"keys", keys}});
    return 0;
  }
  if (t.keys_rotate->parsed()) {
    auto alg = jwt::parse_key_alg(t.alg.empty() ? st.settings.gateway_jwt_alg : t.alg);
    if (!alg || *alg == jwt::KeyAlg::kHS256) {
      std::fprintf(stderr, "error: VALIDATION_ERROR: --alg must be ES256 or EdDSA (HS256 uses GATEWAY_JWT_SECRET)\n");
      return 2;
    }
    std::string kid;
    st.db->transaction([&](store::Connection& c) { kid = control::create_signing_key(st, c, *alg, who); });
    control::notify_config_change(st);
    print_json({{"kid", kid}, {"alg", jwt::key_alg_name(*alg)}});
    return 0;
  }
  if (t.keys_retire->parsed()) {
    bool ok = false;
    st.db->transaction([&](store::Connection& c) { ok = control::retire_signing_key(st, c, t.kid, who); });
    if (!ok) {
      std::fprintf(stderr, "error: NOT_FOUND: no active key with kid %s\n", t.kid.c_str());
      return 1;
    }
    control::notify_config_change(st);
    print_json({{"kid", t.kid}, {"retired", true}});
    return 0;
  }
  if (t.keys_import->parsed()) {
    std::ifstream in(t.public_key_file);
    std::stringstream ss;
    ss << in.rdbuf();
    st.db->transaction([&](store::Connection& c) {
      control::import_public_key(st, c, t.kid, *jwt::parse_key_alg(t.alg), ss.str(), who);
    });
    control::notify_config_change(st);
    print_json({{"kid", t.kid}, {"alg", t.alg}, {"imported", true}});
    return 0;
  }
  return 1;
}

}  // namespace

int run_token_command(const TokenCommands* t) {
  try {
    return run(*t);
  } catch (const control::ApiError& e) {
    std::string code = !e.code.empty() ? e.code : e.status() == 404 ? "NOT_FOUND" : e.status() == 409 ? "CONFLICT" : "VALIDATION_ERROR";
    std::fprintf(stderr, "error: %s: %s\n", code.c_str(), e.detail().c_str());
    return e.status() == 422 ? 2 : 1;
  }
}

}  // namespace ag::cli
