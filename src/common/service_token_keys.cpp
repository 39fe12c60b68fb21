// Service-token keys (service_token.hpp): HS256 secrets, ES256 and EdDSA keys from PEM or JWK,
// generation, signing, and the public forms (PEM, JWK) the JWKS document serves.
#include "common/service_token.hpp"
#include "common/openssl_ptr.hpp"
#include "common/service_token_internal.hpp"

#include <nlohmann/json.hpp>

#include "common/ascii.hpp"

#include "common/slug.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <simdjson.h>

#include <array>
#include <climits>
#include <cstring>
#include <stdexcept>

#include "common/crypto.hpp"

namespace ag::jwt {

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------
namespace {

using namespace detail;

// Owners from common/openssl_ptr.hpp; private key parts are cleared when freed (BN_clear_free).
using ossl::EcdsaSigPtr;
using ossl::Free;
using ossl::MdCtxPtr;
using ossl::ParamBldPtr;
using ossl::ParamPtr;
using ossl::PkeyCtxPtr;
using ossl::PkeyPtr;
using BioPtr = std::unique_ptr<BIO, Free<BIO_free>>;
using BnPtr = std::unique_ptr<BIGNUM, Free<BN_clear_free>>;

constexpr std::size_t kHmacBlock = 64;
constexpr std::size_t kSha256Len = 32;
constexpr std::size_t kCoordLen = 32;  // P-256 coordinates and scalars, Ed25519 keys
constexpr std::size_t kAsymSigLen = 64;

// --- OpenSSL -----------------------------------------------------------------------------------

// OpenSSL 3 looks a digest up by name under a lock on each EVP_sha256()-style call: fetched once.
const EVP_MD* sha256_md() noexcept {
  static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md;
}

struct ThreadMdCtx {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~ThreadMdCtx() { EVP_MD_CTX_free(ctx); }
};

std::string bio_contents(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  if (len <= 0 || !data) return {};
  return std::string(data, static_cast<std::size_t>(len));
}

// Big-endian unsigned `v` (32 bytes) as a DER INTEGER at `out` (up to 35 bytes); its length.
std::size_t der_integer(const unsigned char* v, unsigned char* out) {
  std::size_t i = 0;
  while (i + 1 < kCoordLen && v[i] == 0) ++i;  // minimal form keeps at least one byte
  const bool pad = (v[i] & 0x80) != 0;          // a set high bit would read as negative
  const std::size_t body = kCoordLen - i + (pad ? 1 : 0);
  out[0] = 0x02;
  out[1] = static_cast<unsigned char>(body);
  std::size_t o = 2;
  if (pad) out[o++] = 0x00;
  std::memcpy(out + o, v + i, kCoordLen - i);
  return 2 + body;
}

// JWS R||S (64 bytes) → DER ECDSA-Sig-Value (at most 72 bytes) for OpenSSL; its length.
std::size_t ecdsa_raw_to_der(const unsigned char* rs, unsigned char* out) {
  unsigned char body[2 * (2 + kCoordLen + 1)];
  std::size_t n = der_integer(rs, body);
  n += der_integer(rs + kCoordLen, body + n);
  out[0] = 0x30;
  out[1] = static_cast<unsigned char>(n);  // at most 70: short form
  std::memcpy(out + 2, body, n);
  return n + 2;
}

// One-shot EVP_DigestVerify (`mdname` null for Ed25519). Leaves no error on the thread's OpenSSL
// error queue: a stale entry there would mislead later TLS calls on the same thread.
bool evp_verify(EVP_PKEY* pkey, const char* mdname, std::string_view msg, const unsigned char* sig,
                std::size_t sig_len) noexcept {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  bool ok = ctx && EVP_DigestVerifyInit_ex(ctx.get(), nullptr, mdname, nullptr, nullptr, pkey, nullptr) == 1 &&
            EVP_DigestVerify(ctx.get(), sig, sig_len, reinterpret_cast<const unsigned char*>(msg.data()),
                             msg.size()) == 1;
  if (!ok) ERR_clear_error();
  return ok;
}

std::string evp_sign(EVP_PKEY* pkey, const char* mdname, std::string_view msg) {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  std::size_t len = 0;
  const auto* m = reinterpret_cast<const unsigned char*>(msg.data());
  if (!ctx || EVP_DigestSignInit_ex(ctx.get(), nullptr, mdname, nullptr, nullptr, pkey, nullptr) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, m, msg.size()) != 1) {
    ERR_clear_error();
    throw std::runtime_error("signing failed");
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, m, msg.size()) != 1) {
    ERR_clear_error();
    throw std::runtime_error("signing failed");
  }
  sig.resize(len);
  return sig;
}

bool is_p256(EVP_PKEY* k) {
  if (EVP_PKEY_is_a(k, "EC") != 1) return false;
  char name[64] = {};
  std::size_t len = 0;
  if (EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof name, &len) != 1) return false;
  std::string_view n(name, len);
  return n == "prime256v1" || n == "P-256" || n == "secp256r1";
}

bool is_ed25519(EVP_PKEY* k) { return EVP_PKEY_is_a(k, "ED25519") == 1; }

// True when `kid` can be written into a JSON header as is: valid UTF-8, bounded.
bool valid_kid(const std::string& kid) {
  if (kid.size() > kMaxKidLength) return false;
  try {
    (void)nlohmann::json(kid).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

std::string make_encoded_header(KeyAlg alg, const std::string& kid) {
  std::string h = R"({"alg":")";
  h += key_alg_name(alg);
  h += R"(","typ":"JWT")";
  if (!kid.empty()) {
    h += R"(,"kid":)";
    h += nlohmann::json(kid).dump();
  }
  h += '}';
  return crypto::base64url_encode(h) + '.';
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

struct ServiceKey::State {
  // HS256: the key block XOR ipad / opad (RFC 2104).
  std::array<unsigned char, kHmacBlock> ipad{};
  std::array<unsigned char, kHmacBlock> opad{};
  // ES256 / EdDSA.
  PkeyPtr pkey;
  std::string public_pem;
  std::string jwk_x, jwk_y;  // base64url coordinates (jwk_y empty for Ed25519)

  ~State() {
    OPENSSL_cleanse(ipad.data(), ipad.size());
    OPENSSL_cleanse(opad.data(), opad.size());
  }
};

namespace {

// HMAC-SHA256 from the precomputed pads, on a per-thread digest context.
bool hmac_sha256(const ServiceKey::State& s, std::string_view data, unsigned char out[kSha256Len]) noexcept {
  thread_local ThreadMdCtx c;
  const EVP_MD* md = sha256_md();
  if (!md || !c.ctx) return false;
  unsigned char inner[kSha256Len];
  unsigned int len = 0;
  bool ok = EVP_DigestInit_ex2(c.ctx, md, nullptr) == 1 &&
            EVP_DigestUpdate(c.ctx, s.ipad.data(), s.ipad.size()) == 1 &&
            EVP_DigestUpdate(c.ctx, data.data(), data.size()) == 1 && EVP_DigestFinal_ex(c.ctx, inner, &len) == 1 &&
            EVP_DigestInit_ex2(c.ctx, md, nullptr) == 1 &&
            EVP_DigestUpdate(c.ctx, s.opad.data(), s.opad.size()) == 1 &&
            EVP_DigestUpdate(c.ctx, inner, sizeof inner) == 1 && EVP_DigestFinal_ex(c.ctx, out, &len) == 1;
  OPENSSL_cleanse(inner, sizeof inner);
  if (!ok) ERR_clear_error();
  return ok;
}

// Checks `pkey` against `alg` (and its consistency) and extracts the public forms.
std::unique_ptr<ServiceKey::State> asymmetric_state(KeyAlg alg, PkeyPtr pkey, bool has_private) {
  if (!pkey) return nullptr;
  if (alg == KeyAlg::kES256 ? !is_p256(pkey.get()) : !(alg == KeyAlg::kEdDSA && is_ed25519(pkey.get())))
    return nullptr;
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
  if (!ctx) return nullptr;
  // Point on the curve (and, with a private part, matching it).
  if ((has_private ? EVP_PKEY_check(ctx.get()) : EVP_PKEY_public_check(ctx.get())) != 1) return nullptr;

  auto s = std::make_unique<ServiceKey::State>();
  unsigned char x[kCoordLen], y[kCoordLen];
  if (alg == KeyAlg::kES256) {
    BIGNUM* bx = nullptr;
    BIGNUM* by = nullptr;
    bool ok = EVP_PKEY_get_bn_param(pkey.get(), OSSL_PKEY_PARAM_EC_PUB_X, &bx) == 1 &&
              EVP_PKEY_get_bn_param(pkey.get(), OSSL_PKEY_PARAM_EC_PUB_Y, &by) == 1 &&
              BN_bn2binpad(bx, x, kCoordLen) == static_cast<int>(kCoordLen) &&
              BN_bn2binpad(by, y, kCoordLen) == static_cast<int>(kCoordLen);
    BN_free(bx);
    BN_free(by);
    if (!ok) return nullptr;
    s->jwk_x = b64url(x, kCoordLen);
    s->jwk_y = b64url(y, kCoordLen);
  } else {
    std::size_t len = sizeof x;
    if (EVP_PKEY_get_raw_public_key(pkey.get(), x, &len) != 1 || len != kCoordLen) return nullptr;
    s->jwk_x = b64url(x, kCoordLen);
  }
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), pkey.get()) != 1) return nullptr;
  s->public_pem = bio_contents(bio.get());
  s->pkey = std::move(pkey);
  return s;
}

// One PEM block: "PUBLIC KEY" (SubjectPublicKeyInfo) or "PRIVATE KEY" (unencrypted PKCS#8).
PkeyPtr read_pem(std::string_view pem, bool& has_private) {
  if (pem.size() > static_cast<std::size_t>(INT_MAX)) return nullptr;
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return nullptr;
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* data = nullptr;
  long len = 0;
  if (PEM_read_bio(bio.get(), &name, &header, &data, &len) != 1) return nullptr;
  PkeyPtr pkey;
  const unsigned char* p = data;
  if (header && header[0] == '\0' && len > 0) {
    if (std::strcmp(name, "PUBLIC KEY") == 0) {
      has_private = false;
      pkey.reset(d2i_PUBKEY(nullptr, &p, len));
    } else if (std::strcmp(name, "PRIVATE KEY") == 0) {
      has_private = true;
      if (PKCS8_PRIV_KEY_INFO* p8 = d2i_PKCS8_PRIV_KEY_INFO(nullptr, &p, len)) {
        pkey.reset(EVP_PKCS82PKEY(p8));
        PKCS8_PRIV_KEY_INFO_free(p8);
      }
    }
    if (p != data + len) pkey.reset();  // trailing bytes after the key
  }
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_clear_free(data, static_cast<std::size_t>(len));
  return pkey;
}

PkeyPtr p256_from_coordinates(const unsigned char* x, const unsigned char* y, const unsigned char* d) {
  unsigned char pub[1 + 2 * kCoordLen];
  pub[0] = 0x04;  // uncompressed point
  std::memcpy(pub + 1, x, kCoordLen);
  std::memcpy(pub + 1 + kCoordLen, y, kCoordLen);
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  BnPtr priv(d ? BN_bin2bn(d, static_cast<int>(kCoordLen), nullptr) : nullptr);
  if (!bld || (d && !priv) ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub) != 1 ||
      (d && OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, priv.get()) != 1))
    return nullptr;
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, d ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params.get()) != 1)
    return nullptr;
  return PkeyPtr(raw);
}

PkeyPtr ed25519_from_raw(const unsigned char* x, const unsigned char* d) {
  if (!d) return PkeyPtr(EVP_PKEY_new_raw_public_key_ex(nullptr, "ED25519", nullptr, x, kCoordLen));
  PkeyPtr k(EVP_PKEY_new_raw_private_key_ex(nullptr, "ED25519", nullptr, d, kCoordLen));
  unsigned char derived[kCoordLen];
  std::size_t len = sizeof derived;
  if (!k || EVP_PKEY_get_raw_public_key(k.get(), derived, &len) != 1 || len != kCoordLen ||
      CRYPTO_memcmp(derived, x, kCoordLen) != 0)
    return nullptr;  // "x" is not the public key of "d"
  return k;
}

}  // namespace

std::optional<KeyAlg> parse_key_alg(std::string_view name) {
  if (name == "HS256") return KeyAlg::kHS256;
  if (name == "ES256") return KeyAlg::kES256;
  if (name == "EdDSA") return KeyAlg::kEdDSA;
  return std::nullopt;
}

std::string_view key_alg_name(KeyAlg alg) {
  switch (alg) {
    case KeyAlg::kHS256:
      return "HS256";
    case KeyAlg::kES256:
      return "ES256";
    case KeyAlg::kEdDSA:
      return "EdDSA";
  }
  return "?";
}

ServiceKey::ServiceKey(std::string kid, KeyAlg alg, bool can_sign, std::unique_ptr<State> state)
    : kid_(std::move(kid)),
      alg_(alg),
      can_sign_(can_sign),
      encoded_header_(make_encoded_header(alg_, kid_)),
      state_(std::move(state)) {}

ServiceKey::~ServiceKey() = default;

std::shared_ptr<const ServiceKey> ServiceKey::hmac(std::string secret) {
  if (secret.empty()) return nullptr;
  auto s = std::make_unique<State>();
  std::array<unsigned char, kHmacBlock> block{};
  if (secret.size() > kHmacBlock) {
    auto digest = crypto::sha256(secret);  // RFC 2104: longer keys are hashed first
    std::memcpy(block.data(), digest.data(), digest.size());
    OPENSSL_cleanse(digest.data(), digest.size());
  } else {
    std::memcpy(block.data(), secret.data(), secret.size());
  }
  for (std::size_t i = 0; i < kHmacBlock; ++i) {
    s->ipad[i] = static_cast<unsigned char>(block[i] ^ 0x36);
    s->opad[i] = static_cast<unsigned char>(block[i] ^ 0x5c);
  }
  OPENSSL_cleanse(block.data(), block.size());
  OPENSSL_cleanse(secret.data(), secret.size());
  return std::shared_ptr<const ServiceKey>(new ServiceKey({}, KeyAlg::kHS256, true, std::move(s)));
}

std::shared_ptr<const ServiceKey> ServiceKey::from_pem(std::string kid, KeyAlg alg, std::string_view pem) {
  if (alg == KeyAlg::kHS256 || !valid_kid(kid)) return nullptr;
  bool has_private = false;
  auto pkey = read_pem(pem, has_private);
  auto s = asymmetric_state(alg, std::move(pkey), has_private);
  ERR_clear_error();
  if (!s) return nullptr;
  return std::shared_ptr<const ServiceKey>(new ServiceKey(std::move(kid), alg, has_private, std::move(s)));
}

std::shared_ptr<const ServiceKey> ServiceKey::from_jwk(std::string kid, KeyAlg alg, const nlohmann::json& jwk) {
  if (alg == KeyAlg::kHS256 || !valid_kid(kid) || !jwk.is_object()) return nullptr;
  auto member = [&](const char* name) -> const std::string* {
    auto it = jwk.find(name);
    return it != jwk.end() && it->is_string() ? &it->get_ref<const std::string&>() : nullptr;
  };
  auto has = [&](const char* name) { return jwk.contains(name); };
  const bool ec = alg == KeyAlg::kES256;
  const std::string* kty = member("kty");
  const std::string* crv = member("crv");
  if (!kty || *kty != (ec ? "EC" : "OKP") || !crv || *crv != (ec ? "P-256" : "Ed25519")) return nullptr;
  if (has("alg") && (!member("alg") || *member("alg") != key_alg_name(alg))) return nullptr;
  if (has("use") && (!member("use") || *member("use") != "sig")) return nullptr;

  unsigned char x[kCoordLen], y[kCoordLen], d[kCoordLen];
  const std::string* xs = member("x");
  const std::string* ys = member("y");
  const std::string* ds = member("d");
  if (!xs || !b64url_fixed(*xs, x, kCoordLen)) return nullptr;
  if (ec && (!ys || !b64url_fixed(*ys, y, kCoordLen))) return nullptr;
  if (has("d") && (!ds || !b64url_fixed(*ds, d, kCoordLen))) return nullptr;
  const unsigned char* priv = ds ? d : nullptr;
  PkeyPtr pkey = ec ? p256_from_coordinates(x, y, priv) : ed25519_from_raw(x, priv);
  OPENSSL_cleanse(d, sizeof d);
  auto s = asymmetric_state(alg, std::move(pkey), priv != nullptr);
  ERR_clear_error();
  if (!s) return nullptr;
  return std::shared_ptr<const ServiceKey>(new ServiceKey(std::move(kid), alg, priv != nullptr, std::move(s)));
}

std::string ServiceKey::public_pem() const { return state_->public_pem; }

nlohmann::json ServiceKey::public_jwk() const {
  if (alg_ == KeyAlg::kHS256) return nullptr;
  nlohmann::json j = nlohmann::json::object();
  if (alg_ == KeyAlg::kES256) {
    j["kty"] = "EC";
    j["crv"] = "P-256";
    j["x"] = state_->jwk_x;
    j["y"] = state_->jwk_y;
  } else {
    j["kty"] = "OKP";
    j["crv"] = "Ed25519";
    j["x"] = state_->jwk_x;
  }
  if (!kid_.empty()) j["kid"] = kid_;
  j["alg"] = key_alg_name(alg_);
  j["use"] = "sig";
  return j;
}

std::string ServiceKey::sign(std::string_view signing_input) const {
  if (!can_sign_) throw std::invalid_argument("service key " + kid_ + " has no private part");
  switch (alg_) {
    case KeyAlg::kHS256: {
      unsigned char mac[kSha256Len];
      if (!hmac_sha256(*state_, signing_input, mac)) throw std::runtime_error("hmac failed");
      return std::string(reinterpret_cast<const char*>(mac), sizeof mac);
    }
    case KeyAlg::kES256: {
      std::string der = evp_sign(state_->pkey.get(), "SHA256", signing_input);
      const auto* p = reinterpret_cast<const unsigned char*>(der.data());
      EcdsaSigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size())));
      const BIGNUM* r = nullptr;
      const BIGNUM* s = nullptr;
      if (sig) ECDSA_SIG_get0(sig.get(), &r, &s);
      unsigned char raw[kAsymSigLen];
      if (!r || !s || BN_bn2binpad(r, raw, kCoordLen) != static_cast<int>(kCoordLen) ||
          BN_bn2binpad(s, raw + kCoordLen, kCoordLen) != static_cast<int>(kCoordLen)) {
        ERR_clear_error();
        throw std::runtime_error("ES256 signature conversion failed");
      }
      return std::string(reinterpret_cast<const char*>(raw), sizeof raw);
    }
    case KeyAlg::kEdDSA:
      return evp_sign(state_->pkey.get(), nullptr, signing_input);
  }
  throw std::invalid_argument("unknown key algorithm");
}

bool ServiceKey::verify(std::string_view signing_input, const unsigned char* sig, std::size_t sig_len) const noexcept {
  switch (alg_) {
    case KeyAlg::kHS256: {
      if (sig_len != kSha256Len) return false;
      unsigned char mac[kSha256Len];
      if (!hmac_sha256(*state_, signing_input, mac)) return false;
      return CRYPTO_memcmp(mac, sig, kSha256Len) == 0;
    }
    case KeyAlg::kES256: {
      if (sig_len != kAsymSigLen) return false;
      unsigned char der[2 + 2 * (2 + kCoordLen + 1)];
      std::size_t der_len = ecdsa_raw_to_der(sig, der);
      return evp_verify(state_->pkey.get(), "SHA256", signing_input, der, der_len);
    }
    case KeyAlg::kEdDSA:
      if (sig_len != kAsymSigLen) return false;
      return evp_verify(state_->pkey.get(), nullptr, signing_input, sig, sig_len);
  }
  return false;
}

GeneratedKeyPair generate_key_pair(KeyAlg alg) {
  if (alg == KeyAlg::kHS256) throw std::invalid_argument("HS256 has no key pair");
  PkeyPtr pkey(alg == KeyAlg::kES256 ? EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")
                                     : EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  BioPtr priv(BIO_new(BIO_s_mem()));
  BioPtr pub(BIO_new(BIO_s_mem()));
  if (!pkey || !priv || !pub ||
      PEM_write_bio_PrivateKey(priv.get(), pkey.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1 ||
      PEM_write_bio_PUBKEY(pub.get(), pkey.get()) != 1) {
    ERR_clear_error();
    throw std::runtime_error("key generation failed");
  }
  GeneratedKeyPair out{bio_contents(priv.get()), bio_contents(pub.get())};
  // The private PEM's bytes in the memory BIO are wiped before it is freed.
  char* data = nullptr;
  long len = BIO_get_mem_data(priv.get(), &data);
  if (data && len > 0) OPENSSL_cleanse(data, static_cast<std::size_t>(len));
  return out;
}

std::string sign_service_token(const ServiceKey& key, std::string_view payload_json) {
  std::string input = key.encoded_header();
  input += crypto::base64url_encode(payload_json);
  std::string sig = key.sign(input);
  input += '.';
  input += crypto::base64url_encode(sig);
  return input;
}

const ServiceKey* KeySet::find(std::string_view kid) const {
  if (kid.empty()) return nullptr;
  for (const auto& k : keys)
    if (k && k->kid() == kid) return k.get();
  return nullptr;
}

std::string_view token_error_reason(TokenError e) {
  switch (e) {
    case TokenError::kNone:
      return "ok";
    case TokenError::kMalformed:
      return "token_malformed";
    case TokenError::kTooLarge:
      return "token_too_large";
    case TokenError::kAlgorithm:
      return "token_algorithm";
    case TokenError::kUnknownKey:
      return "token_unknown_key";
    case TokenError::kSignature:
      return "token_signature";
    case TokenError::kMissingClaim:
      return "token_missing_claim";
    case TokenError::kBadClaim:
      return "token_bad_claim";
    case TokenError::kExpired:
      return "token_expired";
    case TokenError::kNotYetValid:
      return "token_not_yet_valid";
    case TokenError::kIssuedInFuture:
      return "token_issued_in_future";
    case TokenError::kAudience:
      return "token_audience";
    case TokenError::kIssuer:
      return "token_issuer";
  }
  return "token_invalid";
}

}  // namespace ag::jwt
