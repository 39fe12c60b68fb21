#include "control/api/tokens.hpp"

#include <sodium.h>

#include "common/crypto.hpp"
#include "common/time.hpp"
#include "control/api/config_changes.hpp"
#include "control/service/validation.hpp"

namespace ag::control {

namespace {


// Private signing keys are sealed at rest with XChaCha20-Poly1305 under a key derived from
// JWT_SECRET_KEY (BLAKE2b keyed hash with a fixed context), stored as base64url(nonce || box).
std::array<unsigned char, crypto_aead_xchacha20poly1305_ietf_KEYBYTES> seal_key(const AppState& app) {
  std::array<unsigned char, crypto_aead_xchacha20poly1305_ietf_KEYBYTES> k{};
  static constexpr std::string_view kContext = "antigravity/jwt-signing-keys/v1";
  const auto& secret = app.settings.jwt_secret;
  // BLAKE2b keys are at most 64 bytes: hash longer secrets first.
  std::array<unsigned char, 64> key_material{};
  std::size_t key_len = std::min<std::size_t>(secret.size(), key_material.size());
  if (secret.size() > key_material.size())
    crypto_generichash(key_material.data(), key_material.size(), reinterpret_cast<const unsigned char*>(secret.data()),
                       secret.size(), nullptr, 0);
  else
    std::memcpy(key_material.data(), secret.data(), key_len);
  crypto_generichash(k.data(), k.size(), reinterpret_cast<const unsigned char*>(kContext.data()), kContext.size(),
                     key_material.data(), std::max<std::size_t>(key_len, crypto_generichash_KEYBYTES_MIN));
  sodium_memzero(key_material.data(), key_material.size());
  return k;
}

std::string seal(const AppState& app, std::string_view plain, std::string_view kid) {
  auto key = seal_key(app);
  std::string out(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + plain.size() + crypto_aead_xchacha20poly1305_ietf_ABYTES, '\0');
  auto* nonce = reinterpret_cast<unsigned char*>(out.data());
  randombytes_buf(nonce, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
  unsigned long long clen = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(nonce + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, &clen,
                                             reinterpret_cast<const unsigned char*>(plain.data()), plain.size(),
                                             reinterpret_cast<const unsigned char*>(kid.data()), kid.size(), nullptr,
                                             nonce, key.data());
  sodium_memzero(key.data(), key.size());
  return crypto::base64url_encode(out);
}

std::optional<std::string> unseal(const AppState& app, std::string_view sealed, std::string_view kid) {
  auto raw = crypto::base64url_decode(sealed);
  constexpr std::size_t kOverhead = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + crypto_aead_xchacha20poly1305_ietf_ABYTES;
  if (!raw || raw->size() < kOverhead) return std::nullopt;
  auto key = seal_key(app);
  std::string plain(raw->size() - kOverhead, '\0');
  unsigned long long plen = 0;
  const auto* nonce = reinterpret_cast<const unsigned char*>(raw->data());
  int rc = crypto_aead_xchacha20poly1305_ietf_decrypt(
      reinterpret_cast<unsigned char*>(plain.data()), &plen, nullptr,
      nonce + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, raw->size() - crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
      reinterpret_cast<const unsigned char*>(kid.data()), kid.size(), nonce, key.data());
  sodium_memzero(key.data(), key.size());
  if (rc != 0) return std::nullopt;
  plain.resize(plen);
  return plain;
}

std::string new_kid(jwt::KeyAlg alg) {
  std::string date = format_rfc3339(now_ms()).substr(0, 10);
  date.erase(std::remove(date.begin(), date.end(), '-'), date.end());
  std::string a(jwt::key_alg_name(alg));
  std::transform(a.begin(), a.end(), a.begin(), ::tolower);
  return a + "-" + date + "-" + crypto::random_base62(6);
}

// The key new tokens are signed with: for HS256 the configured secret; otherwise the newest
// signing key of that algorithm, created on first use.
std::shared_ptr<const jwt::ServiceKey> signer(AppState& app, store::Connection& c, const AuditContext& who) {
  auto alg = *jwt::parse_key_alg(app.settings.gateway_jwt_alg);
  if (alg == jwt::KeyAlg::kHS256) {
    if (app.settings.gateway_jwt_secret.empty())
      throw ApiError(503, "Service tokens are not configured: set GATEWAY_JWT_SECRET for HS256");
    return jwt::ServiceKey::hmac(app.settings.gateway_jwt_secret);
  }
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto r = c.exec("SELECT kid, private_sealed FROM jwt_signing_keys WHERE alg = $1 AND retired_at IS NULL AND "
                    "private_sealed IS NOT NULL ORDER BY created_at DESC, kid DESC LIMIT 1",
                    {std::string(jwt::key_alg_name(alg))});
    if (!r.empty()) {
      const auto& kid = r.rows[0].text(0);
      auto pem = unseal(app, r.rows[0].text(1), kid);
      if (!pem) throw ApiError(503, "Signing key " + kid + " cannot be unsealed (was JWT_SECRET_KEY changed? rotate the signing keys)");
      auto key = jwt::ServiceKey::from_pem(kid, alg, *pem);
      sodium_memzero(pem->data(), pem->size());
      if (!key || !key->can_sign()) throw ApiError(503, "Signing key " + kid + " is unusable");
      return key;
    }
    create_signing_key(app, c, alg, who);
  }
  throw ApiError(503, "No signing key available");
}

std::optional<std::string> opt_string_field(const json& body, const char* field, std::size_t max_len) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) throw token_error("VALIDATION_ERROR", std::string(field) + ": must be a string");
  const auto& s = it->get_ref<const std::string&>();
  if (s.size() > max_len)
    throw token_error("VALIDATION_ERROR", std::string(field) + ": at most " + std::to_string(max_len) + " characters");
  return s;
}

}  // namespace

ApiError token_error(std::string_view code, std::string detail) { return coded_error(422, code, std::move(detail)); }

TokenProject project_ref_by_id(store::Connection& c, const std::string& project_id) {
  if (crypto::is_uuid(project_id)) {
    auto r = c.exec("SELECT id, slug FROM projects WHERE id = $1", {project_id});
    if (!r.empty()) return {r.rows[0].text(0), r.rows[0].opt_text(1)};
  }
  throw ApiError(404, "Project not found");
}

TokenProject project_ref(store::Connection& c, const std::string& slug_or_id) {
  auto r = c.exec("SELECT id, slug FROM projects WHERE id = $1 OR slug = $1", {slug_or_id});
  if (r.empty()) throw ApiError(404, "Project not found");
  return {r.rows[0].text(0), r.rows[0].opt_text(1)};
}

IssueInput parse_issue_body(const json& body) {
  static constexpr std::string_view kAllowed[] = {"project", "service", "description", "expiresInDays",
                                                   "backend", "createdBy", "metadata"};
  for (auto it = body.begin(); it != body.end(); ++it)
    if (std::find(std::begin(kAllowed), std::end(kAllowed), it.key()) == std::end(kAllowed))
      throw token_error("VALIDATION_ERROR", it.key() + ": unknown field");
  IssueInput in;
  auto svc = body.find("service");
  if (svc == body.end() || svc->is_null()) throw token_error("INVALID_SERVICE", "service: field required");
  if (!svc->is_string() || !valid_slug(svc->get_ref<const std::string&>()))
    throw token_error("INVALID_SERVICE", "service: must match ^[a-z0-9_-]{1,63}$");
  in.service = svc->get<std::string>();
  if (auto p = body.find("project"); p != body.end() && !p->is_null()) {
    if (!p->is_string() || !valid_slug(p->get_ref<const std::string&>()))
      throw token_error("INVALID_PROJECT", "project: must match ^[a-z0-9_-]{1,63}$");
    in.project_claim = p->get<std::string>();
  }
  if (auto e = body.find("expiresInDays"); e != body.end() && !e->is_null()) {
    if (!e->is_number_integer() || e->get<std::int64_t>() < 1 || e->get<std::int64_t>() > 365)
      throw token_error("INVALID_EXPIRY", "expiresInDays: must be an integer from 1 to 365");
    in.expires_in_days = e->get<std::int64_t>();
  }
  in.description = opt_string_field(body, "description", 1000);
  in.backend = opt_string_field(body, "backend", 200);
  in.created_by_label = opt_string_field(body, "createdBy", 200);
  if (auto m = body.find("metadata"); m != body.end() && !m->is_null()) {
    if (!m->is_object()) throw token_error("VALIDATION_ERROR", "metadata: must be an object");
    if (m->dump().size() > 8192) throw token_error("VALIDATION_ERROR", "metadata: at most 8 KiB");
    in.metadata = *m;
  }
  return in;
}

json issue_token(AppState& app, store::Connection& c, const TokenProject& project, const IssueInput& in,
                 const AuditContext& who) {
  if (!project.slug)
    throw token_error("INVALID_PROJECT", "project: the project has no slug (set one with PATCH /projects/{id})");
  if (in.project_claim && *in.project_claim != *project.slug)
    throw token_error("INVALID_PROJECT", "project: does not match the project's slug '" + *project.slug + "'");
  if (c.exec("SELECT 1 FROM services WHERE project_id = $1 AND name = $2", {project.id, in.service}).empty())
    throw token_error("INVALID_SERVICE", "service: '" + in.service + "' is not a service of this project");
  auto key = signer(app, c, who);
  const std::int64_t now = now_ms();
  const std::int64_t iat = now / 1000;
  const std::int64_t exp = iat + in.expires_in_days * 86400;
  const std::string jti = crypto::uuid_v4();
  json claims = {{"jti", jti}, {"project", *project.slug}, {"service", in.service}, {"iat", iat}, {"exp", exp}};
  if (!app.settings.gateway_jwt_audience.empty()) claims["aud"] = app.settings.gateway_jwt_audience;
  if (!app.settings.gateway_jwt_issuer.empty()) claims["iss"] = app.settings.gateway_jwt_issuer;
  std::string token = jwt::sign_service_token(*key, claims.dump());
  std::string alg(jwt::key_alg_name(key->alg()));
  std::int64_t seq = c.exec("SELECT COALESCE(MAX(seq), 0) + 1 FROM gateway_tokens", {}).rows.at(0).integer(0);
  c.exec("INSERT INTO gateway_tokens (seq, id, token_hash, jti, project_id, project, service, backend, description, "
         "created_by, created_at, expires_at, is_active, metadata, alg, kid, created_by_label) "
         "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $14, $15, $16)",
         {seq, crypto::uuid_v4(), crypto::sha256_hex(token), jti, project.id, *project.slug, in.service,
          store::opt(in.backend), store::opt(in.description), store::opt(in.created_by), now, exp * 1000,
          in.metadata.is_null() ? store::Value(nullptr) : store::Value(in.metadata.dump()), alg,
          key->kid().empty() ? store::Value(nullptr) : store::Value(key->kid()), store::opt(in.created_by_label)});
  audit(c, who, "token.issue", "token", jti,
        {{"project_id", project.id}, {"service", in.service}, {"expires_at", iso_time(exp * 1000)}, {"alg", alg}});
  return {{"token", token},
          {"jti", jti},
          {"expiresAt", iso_time(exp * 1000)},
          {"project", *project.slug},
          {"service", in.service},
          {"alg", alg},
          {"kid", key->kid().empty() ? json(nullptr) : json(key->kid())}};
}

json token_record(const store::Row& r) {
  json metadata = nullptr;
  if (!r.is_null(13)) metadata = json::parse(r.text(13), nullptr, false);
  return {{"jti", r.text(0)},
          {"project", r.text(1)},
          {"project_id", r.text(16)},
          {"service", r.text(2)},
          {"backend", r.opt_text(3) ? json(*r.opt_text(3)) : json(nullptr)},
          {"description", r.opt_text(4) ? json(*r.opt_text(4)) : json(nullptr)},
          {"created_by", r.opt_text(5) ? json(*r.opt_text(5)) : json(nullptr)},
          {"created_at", iso_time(r.integer(6))},
          {"expires_at", iso_time(r.integer(7))},
          {"last_used_at", iso_or_null(r.opt_integer(8))},
          {"is_active", r.integer(9) != 0},
          {"revoked_at", iso_or_null(r.opt_integer(10))},
          {"revoked_by", r.opt_text(11) ? json(*r.opt_text(11)) : json(nullptr)},
          {"revocation_reason", r.opt_text(12) ? json(*r.opt_text(12)) : json(nullptr)},
          {"metadata", metadata},
          {"alg", r.text(14)},
          {"kid", r.opt_text(15) ? json(*r.opt_text(15)) : json(nullptr)},
          {"created_by_label", r.opt_text(17) ? json(*r.opt_text(17)) : json(nullptr)}};
}

std::optional<json> revoke_token(AppState& app, store::Connection& c, const std::optional<std::string>& project_id,
                                 const std::string& jti, const std::optional<std::string>& by,
                                 const std::optional<std::string>& reason, const AuditContext& who) {
  // FOR UPDATE on PostgreSQL so two concurrent revocations cannot both succeed.
  std::string lock = app.db->engine() == store::Engine::kPostgres ? " FOR UPDATE" : "";
  auto r = c.exec(std::string("SELECT ") + kTokenColumns + " FROM gateway_tokens WHERE jti = $1 AND is_active = 1" + lock, {jti});
  if (r.empty() || (project_id && r.rows[0].text(16) != *project_id)) return std::nullopt;
  const std::int64_t now = now_ms();
  const std::int64_t expires = r.rows[0].integer(7);
  c.exec("UPDATE gateway_tokens SET is_active = 0, revoked_at = $1, revoked_by = $2, revocation_reason = $3 WHERE jti = $4",
         {now, store::opt(by), store::opt(reason), jti});
  c.exec("INSERT INTO gateway_tokens_revoked (jti, revoked_at, expires_at, reason) VALUES ($1, $2, $3, $4) "
         "ON CONFLICT (jti) DO NOTHING",
         {jti, now, expires, store::opt(reason)});
  if (expires > now) ConfigChanges(app, c).token_revoke(jti, expires);
  audit(c, who, "token.revoke", "token", jti,
        {{"project_id", r.rows[0].text(16)}, {"reason", reason ? json(*reason) : json(nullptr)}});
  auto after = c.exec(std::string("SELECT ") + kTokenColumns + " FROM gateway_tokens WHERE jti = $1", {jti});
  return token_record(after.rows.at(0));
}

std::int64_t cleanup_expired_revocations(store::Connection& c) {
  return c.exec("DELETE FROM gateway_tokens_revoked WHERE expires_at <= $1", {now_ms()}).affected;
}

std::string create_signing_key(AppState& app, store::Connection& c, jwt::KeyAlg alg, const AuditContext& who) {
  if (alg == jwt::KeyAlg::kHS256) throw ApiError(422, "alg: signing keys are ES256 or EdDSA (HS256 uses GATEWAY_JWT_SECRET)");
  auto pair = jwt::generate_key_pair(alg);
  std::string kid = new_kid(alg);
  c.exec("INSERT INTO jwt_signing_keys (kid, alg, public_pem, private_sealed, created_at) VALUES ($1, $2, $3, $4, $5)",
         {kid, std::string(jwt::key_alg_name(alg)), pair.public_pem, seal(app, pair.private_pem, kid), now_ms()});
  sodium_memzero(pair.private_pem.data(), pair.private_pem.size());
  ConfigChanges(app, c).jwt_keys_set();
  audit(c, who, "signing_key.create", "signing_key", kid, {{"alg", jwt::key_alg_name(alg)}});
  return kid;
}

bool retire_signing_key(AppState& app, store::Connection& c, const std::string& kid, const AuditContext& who) {
  auto r = c.exec("UPDATE jwt_signing_keys SET retired_at = $1 WHERE kid = $2 AND retired_at IS NULL", {now_ms(), kid});
  if (r.affected == 0) return false;
  ConfigChanges(app, c).jwt_keys_set();
  audit(c, who, "signing_key.retire", "signing_key", kid);
  return true;
}

void import_public_key(AppState& app, store::Connection& c, const std::string& kid, jwt::KeyAlg alg,
                       const std::string& pem, const AuditContext& who) {
  if (kid.empty() || kid.size() > 128) throw ApiError(422, "kid: 1 to 128 characters");
  if (alg == jwt::KeyAlg::kHS256) throw ApiError(422, "alg: ES256 or EdDSA");
  auto key = jwt::ServiceKey::from_pem(kid, alg, pem);
  if (!key) throw ApiError(422, "public key: not a valid " + std::string(jwt::key_alg_name(alg)) + " PEM key");
  if (!c.exec("SELECT 1 FROM jwt_signing_keys WHERE kid = $1", {kid}).empty())
    throw ApiError(409, "A key with this kid already exists");
  // Only the public half is kept, even when a private PEM was given.
  c.exec("INSERT INTO jwt_signing_keys (kid, alg, public_pem, private_sealed, created_at) VALUES ($1, $2, $3, NULL, $4)",
         {kid, std::string(jwt::key_alg_name(alg)), key->public_pem(), now_ms()});
  ConfigChanges(app, c).jwt_keys_set();
  audit(c, who, "signing_key.import", "signing_key", kid, {{"alg", jwt::key_alg_name(alg)}});
}

json list_signing_keys(store::Connection& c) {
  json out = json::array();
  auto r = c.exec("SELECT kid, alg, created_at, retired_at, private_sealed IS NOT NULL FROM jwt_signing_keys "
                  "ORDER BY created_at DESC, kid DESC", {});
  for (const auto& row : r.rows)
    out.push_back({{"kid", row.text(0)},
                   {"alg", row.text(1)},
                   {"created_at", iso_time(row.integer(2))},
                   {"retired_at", iso_or_null(row.opt_integer(3))},
                   {"signing", row.integer(4) != 0}});
  return out;
}

json jwks(store::Connection& c) {
  json keys = json::array();
  auto r = c.exec("SELECT kid, alg, public_pem FROM jwt_signing_keys WHERE retired_at IS NULL ORDER BY created_at, kid", {});
  for (const auto& row : r.rows) {
    auto alg = jwt::parse_key_alg(row.text(1));
    if (!alg) continue;
    auto key = jwt::ServiceKey::from_pem(row.text(0), *alg, row.text(2));
    if (key) keys.push_back(key->public_jwk());
  }
  return {{"keys", keys}};
}

}  // namespace ag::control
