#include "control/service/oidc.hpp"

#include <nlohmann/json.hpp>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include <ctime>

#include "common/crypto.hpp"
#include "common/openssl_ptr.hpp"

namespace ag::control::oidc {

using json = nlohmann::json;

namespace {

using namespace ossl;  // common/openssl_ptr.hpp

constexpr std::int64_t kLeewaySec = 60;
constexpr std::size_t kMaxToken = 16 * 1024;
constexpr auto kMinRefetch = std::chrono::seconds(10);

PkeyPtr from_params(const char* type, OSSL_PARAM* params) {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* out = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &out, EVP_PKEY_PUBLIC_KEY, params) != 1)
    return nullptr;
  return PkeyPtr(out);
}

std::optional<std::string> member(const json& o, const char* name) {
  auto it = o.find(name);
  if (it == o.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

BnPtr bignum(const json& jwk, const char* name) {
  auto s = member(jwk, name);
  if (!s) return nullptr;
  auto bytes = crypto::base64url_decode(*s);
  if (!bytes || bytes->empty() || bytes->size() > 1024) return nullptr;
  return BnPtr(BN_bin2bn(reinterpret_cast<const unsigned char*>(bytes->data()), static_cast<int>(bytes->size()), nullptr));
}

// An RSA (2048 bits or more) or P-256 public key from a JWK; null for anything else.
PkeyPtr key_from_jwk(const json& jwk, std::string& alg) {
  auto kty = member(jwk, "kty");
  if (auto use = member(jwk, "use"); use && *use != "sig") return nullptr;
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!kty || !bld) return nullptr;
  if (*kty == "RSA") {
    BnPtr n = bignum(jwk, "n"), e = bignum(jwk, "e");
    if (!n || !e || BN_num_bits(n.get()) < 2048 || BN_num_bits(n.get()) > 8192 || !BN_is_odd(e.get()) || BN_is_one(e.get()))
      return nullptr;
    if (OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1)
      return nullptr;
    ParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
    alg = "RS256";
    return params ? from_params("RSA", params.get()) : nullptr;
  }
  if (*kty == "EC") {
    auto crv = member(jwk, "crv");
    auto x = member(jwk, "x"), y = member(jwk, "y");
    if (!crv || *crv != "P-256" || !x || !y) return nullptr;
    auto xb = crypto::base64url_decode(*x), yb = crypto::base64url_decode(*y);
    if (!xb || !yb || xb->size() != 32 || yb->size() != 32) return nullptr;
    std::string point = "\x04" + *xb + *yb;
    if (OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1)
      return nullptr;
    ParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
    alg = "ES256";
    return params ? from_params("EC", params.get()) : nullptr;
  }
  return nullptr;
}

// A JWS ES256 signature (r || s, 32 bytes each) as the DER OpenSSL verifies.
std::optional<std::string> es256_der(const std::string& raw) {
  if (raw.size() != 64) return std::nullopt;
  EcdsaSigPtr sig(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data()), 32, nullptr);
  BIGNUM* s = BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data()) + 32, 32, nullptr);
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return std::nullopt;
  }
  unsigned char* der = nullptr;
  int len = i2d_ECDSA_SIG(sig.get(), &der);
  if (len <= 0) return std::nullopt;
  std::string out(reinterpret_cast<char*>(der), static_cast<std::size_t>(len));
  OPENSSL_free(der);
  return out;
}

bool verify_signature(EVP_PKEY* key, std::string_view input, const std::string& sig) {
  MdCtxPtr md(EVP_MD_CTX_new());
  return md && EVP_DigestVerifyInit_ex(md.get(), nullptr, "SHA256", nullptr, nullptr, key, nullptr) == 1 &&
         EVP_DigestVerify(md.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                          reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1;
}

std::optional<json> decode_part(std::string_view part) {
  auto bytes = crypto::base64url_decode(part);
  if (!bytes) return std::nullopt;
  json j = json::parse(*bytes, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  return j;
}

bool number(const json& claims, const char* name, std::int64_t& out) {
  auto it = claims.find(name);
  if (it == claims.end() || !it->is_number()) return false;
  out = static_cast<std::int64_t>(it->get<double>());
  return true;
}

}  // namespace

struct Verifier::Key {
  PkeyPtr pkey;
  std::string alg;
};

std::string unverified_issuer(std::string_view token) {
  auto d1 = token.find('.');
  if (d1 == std::string_view::npos || token.size() > kMaxToken) return {};
  auto d2 = token.find('.', d1 + 1);
  if (d2 == std::string_view::npos) return {};
  auto payload = decode_part(token.substr(d1 + 1, d2 - d1 - 1));
  if (!payload) return {};
  return member(*payload, "iss").value_or("");
}

Verifier::Verifier(Settings settings, Fetch fetch) : settings_(std::move(settings)), fetch_(std::move(fetch)) {}
Verifier::~Verifier() = default;

bool Verifier::refresh(std::string& why) {
  last_attempt_ = std::chrono::steady_clock::now();
  if (jwks_uri_.empty()) {
    auto doc = fetch_(settings_.issuer + "/.well-known/openid-configuration");
    json d = doc ? json::parse(*doc, nullptr, false) : json();
    if (!d.is_object() || member(d, "issuer").value_or("") != settings_.issuer || !member(d, "jwks_uri")) {
      why = "the issuer's discovery document is unavailable or names another issuer";
      return false;
    }
    jwks_uri_ = *member(d, "jwks_uri");
  }
  auto body = fetch_(jwks_uri_);
  json set = body ? json::parse(*body, nullptr, false) : json();
  if (!set.is_object() || !set.contains("keys") || !set["keys"].is_array()) {
    why = "the issuer's JWKS is unavailable";
    return false;
  }
  std::map<std::string, std::shared_ptr<const Key>> keys;
  for (const auto& jwk : set["keys"]) {
    if (!jwk.is_object()) continue;
    auto kid = member(jwk, "kid").value_or("");
    auto k = std::make_shared<Key>();
    k->pkey = key_from_jwk(jwk, k->alg);
    ERR_clear_error();
    if (!k->pkey) continue;
    if (auto alg = member(jwk, "alg"); alg && *alg != k->alg) continue;
    keys[kid] = std::move(k);
  }
  keys_ = std::move(keys);
  fetched_at_ = std::chrono::steady_clock::now();
  return true;
}

std::shared_ptr<const Verifier::Key> Verifier::key(const std::string& kid, std::string& why) {
  std::lock_guard lock(mu_);
  auto now = std::chrono::steady_clock::now();
  bool stale = fetched_at_ == std::chrono::steady_clock::time_point{} ||
               now - fetched_at_ > std::chrono::seconds(settings_.jwks_cache_sec);
  auto it = keys_.find(kid);
  if ((stale || it == keys_.end()) && now - last_attempt_ >= kMinRefetch) {
    if (!refresh(why) && keys_.empty()) return nullptr;
    it = keys_.find(kid);
  }
  if (it == keys_.end()) {
    if (why.empty()) why = "no key with this kid at the issuer";
    return nullptr;
  }
  return it->second;
}

std::optional<Identity> Verifier::verify(std::string_view token, std::string& why) {
  if (token.size() > kMaxToken) return why = "token too large", std::nullopt;
  auto d1 = token.find('.');
  auto d2 = d1 == std::string_view::npos ? d1 : token.find('.', d1 + 1);
  if (d2 == std::string_view::npos || token.find('.', d2 + 1) != std::string_view::npos)
    return why = "not a JWS compact token", std::nullopt;
  auto header = decode_part(token.substr(0, d1));
  auto claims = decode_part(token.substr(d1 + 1, d2 - d1 - 1));
  auto sig = crypto::base64url_decode(token.substr(d2 + 1));
  if (!header || !claims || !sig) return why = "malformed token", std::nullopt;
  auto alg = member(*header, "alg").value_or("");
  if (alg != "RS256" && alg != "ES256") return why = "algorithm not accepted: " + alg, std::nullopt;
  auto key = this->key(member(*header, "kid").value_or(""), why);
  if (!key) return std::nullopt;
  if (key->alg != alg) return why = "the token's alg does not match its key", std::nullopt;
  std::string signature = *sig;
  if (alg == "ES256") {
    auto der = es256_der(signature);
    if (!der) return why = "malformed signature", std::nullopt;
    signature = *der;
  }
  bool ok = verify_signature(key->pkey.get(), token.substr(0, d2), signature);
  ERR_clear_error();
  if (!ok) return why = "bad signature", std::nullopt;
  const json& c = *claims;
  if (member(c, "iss").value_or("") != settings_.issuer) return why = "wrong issuer", std::nullopt;
  bool aud_ok = false;
  if (auto a = c.find("aud"); a != c.end()) {
    if (a->is_string()) aud_ok = a->get<std::string>() == settings_.audience;
    else if (a->is_array())
      for (const auto& v : *a) aud_ok = aud_ok || (v.is_string() && v.get<std::string>() == settings_.audience);
  }
  if (!aud_ok) return why = "wrong audience", std::nullopt;
  std::int64_t now = static_cast<std::int64_t>(std::time(nullptr)), exp = 0, nbf = 0, iat = 0;
  if (!number(c, "exp", exp) || exp + kLeewaySec <= now) return why = "expired", std::nullopt;
  if (number(c, "nbf", nbf) && nbf - kLeewaySec > now) return why = "not valid yet", std::nullopt;
  if (number(c, "iat", iat) && iat - kLeewaySec > now) return why = "issued in the future", std::nullopt;
  Identity id;
  id.sub = member(c, "sub").value_or("");
  if (id.sub.empty() || id.sub.size() > 255) return why = "no subject", std::nullopt;
  id.email = member(c, settings_.email_claim.c_str()).value_or("");
  id.name = member(c, settings_.name_claim.c_str()).value_or("");
  auto ev = c.find("email_verified");
  id.email_verified = ev != c.end() && ev->is_boolean() && ev->get<bool>();
  id.expires_at_ms = exp * 1000;
  return id;
}

}  // namespace ag::control::oidc
