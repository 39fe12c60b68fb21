#include "common/service_token.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "common/crypto.hpp"
#include "common/jwt.hpp"

namespace ag::jwt {
namespace {

using nlohmann::json;

constexpr std::int64_t kNow = 1'700'000'000;

std::string b64(std::string_view s) { return crypto::base64url_encode(s); }
std::string unb64(std::string_view s) { return crypto::base64url_decode(s).value_or("<bad>"); }

struct Keys {
  Keys() {
    crypto::init();
    hs = ServiceKey::hmac("0123456789abcdef0123456789abcdef");
    es_pair = generate_key_pair(KeyAlg::kES256);
    ed_pair = generate_key_pair(KeyAlg::kEdDSA);
    es = ServiceKey::from_pem("es-1", KeyAlg::kES256, es_pair.private_pem);
    ed = ServiceKey::from_pem("ed-1", KeyAlg::kEdDSA, ed_pair.private_pem);
    es_pub = ServiceKey::from_pem("es-1", KeyAlg::kES256, es_pair.public_pem);
    ed_pub = ServiceKey::from_pem("ed-1", KeyAlg::kEdDSA, ed_pair.public_pem);
    set.hmac = hs;
    set.keys = {es_pub, ed_pub};
  }
  std::shared_ptr<const ServiceKey> hs, es, ed, es_pub, ed_pub;
  GeneratedKeyPair es_pair, ed_pair;
  KeySet set;
};

const Keys& keys() {
  static const Keys k;
  return k;
}

json claims(std::int64_t now = kNow) {
  return {{"jti", crypto::uuid_v4()}, {"project", "captionacc"}, {"service", "prefect"},
          {"iat", now}, {"exp", now + 3600}};
}

ClaimsOptions opts(std::int64_t now = kNow) {
  ClaimsOptions o;
  o.now_s = now;
  return o;
}

TokenError check(const KeySet& ks, std::string_view token, const ClaimsOptions& o = opts()) {
  ServiceClaims out;
  return verify_service_token(ks, token, o, out);
}
TokenError check(std::string_view token, const ClaimsOptions& o = opts()) { return check(keys().set, token, o); }

// A token with any header and payload text, signed by `key` (raw JWS signature form).
std::string forge(const ServiceKey& key, std::string_view header, std::string_view payload) {
  std::string input = b64(header) + '.' + b64(payload);
  return input + '.' + b64(key.sign(input));
}
std::string forge_hs_raw(std::string_view header, std::string_view payload) {
  return forge(*keys().hs, header, payload);
}
std::string forge_hs(std::string_view header, const json& payload) { return forge_hs_raw(header, payload.dump()); }

constexpr std::string_view kHsHeader = R"({"alg":"HS256","typ":"JWT"})";

std::vector<std::string> segments(const std::string& token) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    auto dot = token.find('.', start);
    out.push_back(token.substr(start, dot - start));
    if (dot == std::string::npos) return out;
    start = dot + 1;
  }
}

// --- algorithms and keys -------------------------------------------------------------------

TEST(ServiceToken, ParseAndNameAlgorithms) {
  for (auto a : {KeyAlg::kHS256, KeyAlg::kES256, KeyAlg::kEdDSA}) EXPECT_EQ(parse_key_alg(key_alg_name(a)), a);
  for (std::string_view bad : {"none", "hs256", "HS384", "RS256", "ES384", "eddsa", "Ed25519", ""})
    EXPECT_FALSE(parse_key_alg(bad)) << bad;
}

TEST(ServiceToken, RoundTripAllAlgorithms) {
  const auto& k = keys();
  struct Case {
    std::shared_ptr<const ServiceKey> signer;
    KeyAlg alg;
    std::string kid;
  };
  for (const auto& c : {Case{k.hs, KeyAlg::kHS256, ""}, Case{k.es, KeyAlg::kES256, "es-1"},
                        Case{k.ed, KeyAlg::kEdDSA, "ed-1"}}) {
    json p = claims();
    p["nbf"] = kNow - 10;
    std::string token = sign_service_token(*c.signer, p.dump());
    ServiceClaims out;
    ASSERT_EQ(verify_service_token(k.set, token, opts(), out), TokenError::kNone) << key_alg_name(c.alg);
    EXPECT_EQ(out.jti, p["jti"].get<std::string>());
    EXPECT_EQ(out.project, "captionacc");
    EXPECT_EQ(out.service, "prefect");
    EXPECT_EQ(out.iat, kNow);
    EXPECT_EQ(out.exp, kNow + 3600);
    EXPECT_EQ(out.nbf, kNow - 10);
    EXPECT_EQ(out.kid, c.kid);
    EXPECT_EQ(out.alg, c.alg);
    EXPECT_EQ(verify_signature_only(*c.signer, token), TokenError::kNone);
  }
}

TEST(ServiceToken, HeaderLayoutAndSignatureSizes) {
  const auto& k = keys();
  std::string payload = claims().dump();
  auto hs = segments(sign_service_token(*k.hs, payload));
  auto es = segments(sign_service_token(*k.es, payload));
  auto ed = segments(sign_service_token(*k.ed, payload));
  EXPECT_EQ(json::parse(unb64(hs[0])), json::parse(R"({"alg":"HS256","typ":"JWT"})"));
  EXPECT_EQ(json::parse(unb64(es[0])), json::parse(R"({"alg":"ES256","typ":"JWT","kid":"es-1"})"));
  EXPECT_EQ(json::parse(unb64(ed[0])), json::parse(R"({"alg":"EdDSA","typ":"JWT","kid":"ed-1"})"));
  EXPECT_EQ(unb64(hs[1]), payload);
  EXPECT_EQ(unb64(hs[2]).size(), 32u);
  EXPECT_EQ(unb64(es[2]).size(), 64u);  // raw R||S, not DER
  EXPECT_EQ(unb64(ed[2]).size(), 64u);
  // HS256 tokens are byte-identical to the control plane's HS256 JWTs for the same secret.
  EXPECT_EQ(sign_service_token(*ServiceKey::hmac("s3cret"), payload),
            jwt::sign(*jwt::parse_algorithm("HS256"), "s3cret", payload));
  // A kid that needs escaping is written as valid JSON.
  auto odd = ServiceKey::from_pem(R"(a"b\c)", KeyAlg::kEdDSA, k.ed_pair.private_pem);
  ASSERT_TRUE(odd);
  auto t = sign_service_token(*odd, payload);
  EXPECT_EQ(json::parse(unb64(segments(t)[0]))["kid"], R"(a"b\c)");
  KeySet ks{nullptr, {odd}};
  EXPECT_EQ(check(ks, t), TokenError::kNone);
}

TEST(ServiceToken, HmacKeyMatchesKnownVectors) {
  // The widely published HS256 example token (key "your-256-bit-secret").
  const std::string tok =
      "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
      "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
  EXPECT_EQ(verify_signature_only(*ServiceKey::hmac("your-256-bit-secret"), tok), TokenError::kNone);
  EXPECT_EQ(verify_signature_only(*ServiceKey::hmac("your-256-bit-secreT"), tok), TokenError::kSignature);
  // RFC 4231 test case 2, and keys longer than the SHA-256 block (hashed first).
  EXPECT_EQ(ServiceKey::hmac("Jefe")->sign("what do ya want for nothing?"),
            crypto::hmac(crypto::HmacAlg::kSha256, "Jefe", "what do ya want for nothing?"));
  for (std::size_t n : {1, 31, 32, 63, 64, 65, 200}) {
    std::string secret(n, 'k');
    secret[0] = static_cast<char>(n);
    EXPECT_EQ(ServiceKey::hmac(secret)->sign("data"), crypto::hmac(crypto::HmacAlg::kSha256, secret, "data")) << n;
  }
  EXPECT_EQ(ServiceKey::hmac(""), nullptr);
  auto hs = ServiceKey::hmac("x");
  EXPECT_TRUE(hs->can_sign());
  EXPECT_EQ(hs->alg(), KeyAlg::kHS256);
  EXPECT_TRUE(hs->kid().empty());
  EXPECT_TRUE(hs->public_pem().empty());
  EXPECT_TRUE(hs->public_jwk().is_null());
}

// RFC 7515 Appendix A.3: ES256 with the published P-256 key.
const json kRfc7515A3Jwk = {{"kty", "EC"},
                            {"crv", "P-256"},
                            {"x", "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"},
                            {"y", "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}};
constexpr std::string_view kRfc7515A3D = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
constexpr std::string_view kRfc7515A3Token =
    "eyJhbGciOiJFUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

TEST(ServiceTokenRfc, Rfc7515AppendixA3Es256) {
  auto pub = ServiceKey::from_jwk("", KeyAlg::kES256, kRfc7515A3Jwk);
  ASSERT_TRUE(pub);
  EXPECT_FALSE(pub->can_sign());
  EXPECT_EQ(verify_signature_only(*pub, kRfc7515A3Token), TokenError::kNone);
  // The same key through its SubjectPublicKeyInfo PEM.
  auto from_pem = ServiceKey::from_pem("", KeyAlg::kES256, pub->public_pem());
  ASSERT_TRUE(from_pem);
  EXPECT_EQ(verify_signature_only(*from_pem, kRfc7515A3Token), TokenError::kNone);
  // Any change to the signature, header or payload is refused.
  std::string t(kRfc7515A3Token);
  t.back() = 'A';
  EXPECT_EQ(verify_signature_only(*pub, t), TokenError::kSignature);
  t = std::string(kRfc7515A3Token);
  t[25] = t[25] == 'a' ? 'b' : 'a';
  EXPECT_NE(verify_signature_only(*pub, t), TokenError::kNone);
  // The RFC token carries neither a kid nor our claims: the full check refuses it.
  KeySet ks{nullptr, {pub}};
  EXPECT_EQ(check(ks, kRfc7515A3Token), TokenError::kUnknownKey);
  // The private key reproduces the public coordinates and signs verifiable tokens.
  json priv = kRfc7515A3Jwk;
  priv["d"] = kRfc7515A3D;
  auto signer = ServiceKey::from_jwk("rfc", KeyAlg::kES256, priv);
  ASSERT_TRUE(signer);
  EXPECT_TRUE(signer->can_sign());
  json jwk = signer->public_jwk();
  EXPECT_EQ(jwk["x"], kRfc7515A3Jwk["x"]);
  EXPECT_EQ(jwk["y"], kRfc7515A3Jwk["y"]);
  EXPECT_EQ(jwk["kid"], "rfc");
  EXPECT_EQ(jwk["alg"], "ES256");
  EXPECT_EQ(jwk["use"], "sig");
  KeySet rfc{nullptr, {ServiceKey::from_jwk("rfc", KeyAlg::kES256, kRfc7515A3Jwk)}};
  EXPECT_EQ(check(rfc, sign_service_token(*signer, claims().dump())), TokenError::kNone);
}

// RFC 8037 Appendix A.4: Ed25519 with the published key (A.1).
const json kRfc8037Jwk = {{"kty", "OKP"}, {"crv", "Ed25519"}, {"x", "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}};
constexpr std::string_view kRfc8037D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
constexpr std::string_view kRfc8037Input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
constexpr std::string_view kRfc8037Sig =
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

TEST(ServiceTokenRfc, Rfc8037AppendixA4Ed25519) {
  const std::string token = std::string(kRfc8037Input) + '.' + std::string(kRfc8037Sig);
  auto pub = ServiceKey::from_jwk("", KeyAlg::kEdDSA, kRfc8037Jwk);
  ASSERT_TRUE(pub);
  EXPECT_EQ(verify_signature_only(*pub, token), TokenError::kNone);
  auto from_pem = ServiceKey::from_pem("", KeyAlg::kEdDSA, pub->public_pem());
  ASSERT_TRUE(from_pem);
  EXPECT_EQ(verify_signature_only(*from_pem, token), TokenError::kNone);
  std::string bad = token;
  bad[bad.size() - 5] = bad[bad.size() - 5] == 'M' ? 'N' : 'M';
  EXPECT_EQ(verify_signature_only(*pub, bad), TokenError::kSignature);
  // The RFC token names no key: the full check refuses it.
  EXPECT_EQ(check(KeySet{nullptr, {pub}}, token), TokenError::kUnknownKey);
  auto named = ServiceKey::from_jwk("ed", KeyAlg::kEdDSA, kRfc8037Jwk);
  // Ed25519 is deterministic: the published private key reproduces the published signature.
  json priv = kRfc8037Jwk;
  priv["d"] = kRfc8037D;
  auto signer = ServiceKey::from_jwk("", KeyAlg::kEdDSA, priv);
  ASSERT_TRUE(signer);
  EXPECT_EQ(b64(signer->sign(kRfc8037Input)), kRfc8037Sig);
  EXPECT_EQ(signer->public_jwk()["x"], kRfc8037Jwk["x"]);
  EXPECT_FALSE(signer->public_jwk().contains("d"));
  KeySet ks{nullptr, {named}};
  EXPECT_EQ(check(ks, sign_service_token(*ServiceKey::from_jwk("ed", KeyAlg::kEdDSA, priv), claims().dump())),
            TokenError::kNone);
}

TEST(ServiceTokenKeys, FromPemChecksLabelAndCurve) {
  const auto& k = keys();
  EXPECT_TRUE(k.es && k.ed && k.es_pub && k.ed_pub);
  EXPECT_TRUE(k.es->can_sign());
  EXPECT_FALSE(k.es_pub->can_sign());
  EXPECT_NE(k.es_pair.private_pem.find("-----BEGIN PRIVATE KEY-----"), std::string::npos);
  EXPECT_NE(k.es_pair.public_pem.find("-----BEGIN PUBLIC KEY-----"), std::string::npos);
  EXPECT_NE(k.ed_pair.private_pem.find("-----BEGIN PRIVATE KEY-----"), std::string::npos);
  EXPECT_EQ(k.es->public_pem(), k.es_pair.public_pem);
  EXPECT_EQ(k.ed_pub->public_pem(), k.ed_pair.public_pem);
  // Algorithm mismatches.
  EXPECT_FALSE(ServiceKey::from_pem("x", KeyAlg::kEdDSA, k.es_pair.public_pem));
  EXPECT_FALSE(ServiceKey::from_pem("x", KeyAlg::kES256, k.ed_pair.private_pem));
  EXPECT_FALSE(ServiceKey::from_pem("x", KeyAlg::kHS256, k.es_pair.public_pem));
  // Garbage and truncation.
  EXPECT_FALSE(ServiceKey::from_pem("x", KeyAlg::kES256, ""));
  EXPECT_FALSE(ServiceKey::from_pem("x", KeyAlg::kES256, "not a pem"));
  std::string cut = k.es_pair.public_pem;
  cut.erase(40, 10);
  EXPECT_FALSE(ServiceKey::from_pem("x", KeyAlg::kES256, cut));
  // Another curve (P-384), SEC1 "EC PRIVATE KEY", and an encrypted PKCS#8 are refused.
  EVP_PKEY* p384 = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384");
  ASSERT_TRUE(p384);
  BIO* bio = BIO_new(BIO_s_mem());
  ASSERT_EQ(PEM_write_bio_PUBKEY(bio, p384), 1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  EXPECT_FALSE(ServiceKey::from_pem("x", KeyAlg::kES256, std::string(data, len)));
  BIO_free(bio);
  EVP_PKEY_free(p384);

  EVP_PKEY* es = nullptr;
  {
    BIO* in = BIO_new_mem_buf(k.es_pair.private_pem.data(), static_cast<int>(k.es_pair.private_pem.size()));
    es = PEM_read_bio_PrivateKey(in, nullptr, nullptr, nullptr);
    BIO_free(in);
  }
  ASSERT_TRUE(es);
  bio = BIO_new(BIO_s_mem());
  ASSERT_EQ(PEM_write_bio_PrivateKey_traditional(bio, es, nullptr, nullptr, 0, nullptr, nullptr), 1);
  len = BIO_get_mem_data(bio, &data);
  std::string sec1(data, len);
  EXPECT_NE(sec1.find("EC PRIVATE KEY"), std::string::npos);
  EXPECT_FALSE(ServiceKey::from_pem("x", KeyAlg::kES256, sec1));
  BIO_free(bio);
  bio = BIO_new(BIO_s_mem());
  char pass[] = "passphrase";
  ASSERT_EQ(PEM_write_bio_PKCS8PrivateKey(bio, es, EVP_aes_256_cbc(), pass, sizeof pass - 1, nullptr, nullptr), 1);
  len = BIO_get_mem_data(bio, &data);
  EXPECT_FALSE(ServiceKey::from_pem("x", KeyAlg::kES256, std::string(data, len)));
  BIO_free(bio);
  EVP_PKEY_free(es);
  // A kid that is not valid UTF-8 cannot go into a JSON header.
  EXPECT_FALSE(ServiceKey::from_pem("\xff\xfe", KeyAlg::kES256, k.es_pair.public_pem));
  EXPECT_FALSE(ServiceKey::from_pem(std::string(257, 'k'), KeyAlg::kES256, k.es_pair.public_pem));
  EXPECT_EQ(ERR_peek_error(), 0u);  // failures leave no stale OpenSSL error behind
}

TEST(ServiceTokenKeys, PublicJwkRoundTrip) {
  const auto& k = keys();
  json es = k.es_pub->public_jwk();
  EXPECT_EQ(es["kty"], "EC");
  EXPECT_EQ(es["crv"], "P-256");
  EXPECT_EQ(es["kid"], "es-1");
  EXPECT_EQ(es["alg"], "ES256");
  EXPECT_EQ(es["use"], "sig");
  EXPECT_EQ(es["x"].get<std::string>().size(), 43u);
  EXPECT_EQ(es["y"].get<std::string>().size(), 43u);
  EXPECT_FALSE(es.contains("d"));
  json ed = k.ed->public_jwk();
  EXPECT_EQ(ed["kty"], "OKP");
  EXPECT_EQ(ed["crv"], "Ed25519");
  EXPECT_EQ(ed["alg"], "EdDSA");
  EXPECT_FALSE(ed.contains("y"));
  EXPECT_FALSE(ed.contains("d"));
  EXPECT_EQ(k.es->public_jwk(), es);  // the private key publishes the same JWK

  KeySet ks{nullptr, {ServiceKey::from_jwk("es-1", KeyAlg::kES256, es), ServiceKey::from_jwk("ed-1", KeyAlg::kEdDSA, ed)}};
  ASSERT_TRUE(ks.keys[0] && ks.keys[1]);
  EXPECT_EQ(check(ks, sign_service_token(*k.es, claims().dump())), TokenError::kNone);
  EXPECT_EQ(check(ks, sign_service_token(*k.ed, claims().dump())), TokenError::kNone);
}

TEST(ServiceTokenKeys, FromJwkRefusesInconsistentKeys) {
  auto es = [](auto mutate) {
    json j = kRfc7515A3Jwk;
    mutate(j);
    return ServiceKey::from_jwk("k", KeyAlg::kES256, j);
  };
  EXPECT_TRUE(es([](json&) {}));
  EXPECT_FALSE(es([](json& j) { j["crv"] = "P-384"; }));
  EXPECT_FALSE(es([](json& j) { j["kty"] = "OKP"; }));
  EXPECT_FALSE(es([](json& j) { j.erase("y"); }));
  EXPECT_FALSE(es([](json& j) { j["x"] = 5; }));
  EXPECT_FALSE(es([](json& j) { j["x"] = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVE"; }));    // 31.x bytes
  EXPECT_FALSE(es([](json& j) { j["x"] = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU="; }));  // padding
  EXPECT_FALSE(es([](json& j) { j["y"] = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a1"; }));   // bits past the end
  EXPECT_FALSE(es([](json& j) { j["y"] = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5aA"; }));   // not on the curve
  EXPECT_FALSE(es([](json& j) { j["alg"] = "ES384"; }));
  EXPECT_TRUE(es([](json& j) { j["alg"] = "ES256"; }));
  EXPECT_FALSE(es([](json& j) { j["use"] = "enc"; }));
  EXPECT_FALSE(es([](json& j) { j["d"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"; }));  // zero scalar
  // A private scalar that belongs to another point.
  EXPECT_FALSE(es([](json& j) { j["d"] = "jpsQnnGQmL-YBIffH1136cLnT8EgfH3cTzP9kGkoFtM"; }));
  EXPECT_FALSE(ServiceKey::from_jwk("k", KeyAlg::kEdDSA, kRfc7515A3Jwk));
  EXPECT_FALSE(ServiceKey::from_jwk("k", KeyAlg::kHS256, kRfc7515A3Jwk));
  EXPECT_FALSE(ServiceKey::from_jwk("k", KeyAlg::kES256, json::array()));
  json ed = kRfc8037Jwk;
  ed["d"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";  // not the seed of "x"
  EXPECT_FALSE(ServiceKey::from_jwk("k", KeyAlg::kEdDSA, ed));
  EXPECT_EQ(ERR_peek_error(), 0u);
}

TEST(ServiceTokenKeys, GenerateKeyPair) {
  EXPECT_THROW(generate_key_pair(KeyAlg::kHS256), std::invalid_argument);
  auto a = generate_key_pair(KeyAlg::kES256);
  auto b = generate_key_pair(KeyAlg::kES256);
  EXPECT_NE(a.private_pem, b.private_pem);
  EXPECT_NE(a.public_pem, b.public_pem);
  auto priv = ServiceKey::from_pem("k", KeyAlg::kES256, a.private_pem);
  auto pub = ServiceKey::from_pem("k", KeyAlg::kES256, a.public_pem);
  ASSERT_TRUE(priv && pub);
  EXPECT_EQ(verify_signature_only(*pub, sign_service_token(*priv, "{}")), TokenError::kNone);
  EXPECT_THROW(sign_service_token(*pub, "{}"), std::invalid_argument);
  EXPECT_THROW(keys().ed_pub->sign("x"), std::invalid_argument);
}

// --- algorithm pinning -----------------------------------------------------------------------

TEST(ServiceToken, AlgNoneAndOtherAlgorithmsRefused) {
  std::string p = b64(claims().dump());
  for (std::string_view alg : {"none", "None", "NONE", ""}) {
    std::string h = b64(json{{"alg", std::string(alg)}, {"typ", "JWT"}}.dump());
    EXPECT_EQ(check(h + '.' + p + '.'), TokenError::kAlgorithm) << alg;
    EXPECT_EQ(check(h + '.' + p + '.' + b64(std::string(32, 'x'))), TokenError::kAlgorithm) << alg;
  }
  for (std::string_view alg : {"HS384", "HS512", "RS256", "PS256", "ES384", "ES512", "ES256K", "hs256", "es256", "EDDSA",
                               "Ed25519", "HS256 "}) {
    json h = {{"alg", std::string(alg)}, {"typ", "JWT"}, {"kid", "es-1"}};
    EXPECT_EQ(check(forge_hs(h.dump(), claims())), TokenError::kAlgorithm) << alg;
    EXPECT_EQ(check(forge(*keys().es, h.dump(), claims().dump())), TokenError::kAlgorithm) << alg;
  }
}

TEST(ServiceToken, AlgorithmConfusionRefused) {
  const auto& k = keys();
  // HS256 with the ES256 public key (PEM, or its JWK) as the HMAC secret.
  for (const std::string& secret : {k.es_pair.public_pem, k.es_pub->public_jwk().dump()}) {
    auto forged_key = ServiceKey::hmac(secret);
    for (std::string_view header : {R"({"alg":"HS256","typ":"JWT"})", R"({"alg":"HS256","typ":"JWT","kid":"es-1"})"}) {
      std::string tok = forge(*forged_key, header, claims().dump());
      EXPECT_EQ(check(KeySet{nullptr, {k.es_pub, k.ed_pub}}, tok), TokenError::kUnknownKey);
      EXPECT_EQ(check(tok), TokenError::kSignature);  // the real secret does not match
      // A misconfigured set holding an asymmetric key in the HMAC slot never uses it as a secret.
      EXPECT_EQ(check(KeySet{k.es_pub, {k.es_pub}}, tok), TokenError::kAlgorithm);
    }
  }
  // ES256 header naming the Ed25519 key and the other way round.
  EXPECT_EQ(check(forge(*k.es, R"({"alg":"ES256","kid":"ed-1"})", claims().dump())), TokenError::kAlgorithm);
  EXPECT_EQ(check(forge(*k.ed, R"({"alg":"EdDSA","kid":"es-1"})", claims().dump())), TokenError::kAlgorithm);
  // An HS256 token is checked against the secret whatever its kid says.
  EXPECT_EQ(check(forge_hs(R"({"alg":"HS256","kid":"es-1"})", claims())), TokenError::kNone);
  EXPECT_EQ(check(KeySet{nullptr, {k.es_pub}}, sign_service_token(*k.hs, claims().dump())), TokenError::kUnknownKey);
}

TEST(ServiceToken, KidRules) {
  const auto& k = keys();
  std::string p = claims().dump();
  EXPECT_EQ(check(forge(*k.es, R"({"alg":"ES256","typ":"JWT","kid":"nope"})", p)), TokenError::kUnknownKey);
  EXPECT_EQ(check(forge(*k.es, R"({"alg":"ES256","typ":"JWT"})", p)), TokenError::kUnknownKey);
  EXPECT_EQ(check(forge(*k.es, R"({"alg":"ES256","kid":""})", p)), TokenError::kUnknownKey);
  EXPECT_EQ(check(forge(*k.es, R"({"alg":"ES256","kid":"ES-1"})", p)), TokenError::kUnknownKey);
  EXPECT_EQ(check(forge(*k.es, R"({"alg":"ES256","kid":5})", p)), TokenError::kMalformed);
  EXPECT_EQ(check(forge(*k.ed, R"({"alg":"EdDSA","kid":"nope"})", p)), TokenError::kUnknownKey);
  // A retired key: the set no longer holds it.
  EXPECT_EQ(check(KeySet{k.hs, {k.ed_pub}}, sign_service_token(*k.es, p)), TokenError::kUnknownKey);
  // kid escapes are decoded before the lookup.
  EXPECT_EQ(check(forge(*k.es, R"({"alg":"ES256","kid":"es\u002d1"})", p)), TokenError::kNone);
  KeySet with_null{k.hs, {nullptr, k.es_pub}};
  EXPECT_EQ(check(with_null, sign_service_token(*k.es, p)), TokenError::kNone);
  EXPECT_EQ(with_null.find(""), nullptr);
}

TEST(ServiceToken, ResignedWithAnotherKeyRefused) {
  const auto& k = keys();
  std::string p = claims().dump();
  auto other_es = ServiceKey::from_pem("es-1", KeyAlg::kES256, generate_key_pair(KeyAlg::kES256).private_pem);
  auto other_ed = ServiceKey::from_pem("ed-1", KeyAlg::kEdDSA, generate_key_pair(KeyAlg::kEdDSA).private_pem);
  EXPECT_EQ(check(sign_service_token(*other_es, p)), TokenError::kSignature);
  EXPECT_EQ(check(sign_service_token(*other_ed, p)), TokenError::kSignature);
  EXPECT_EQ(check(sign_service_token(*ServiceKey::hmac("another-secret-another-secret-xx"), p)), TokenError::kSignature);
  // A signature moved from one token to another.
  auto a = segments(sign_service_token(*k.es, p));
  auto b = segments(sign_service_token(*k.es, claims().dump()));
  EXPECT_EQ(check(a[0] + '.' + a[1] + '.' + b[2]), TokenError::kSignature);
}

TEST(ServiceToken, SignatureFormRules) {
  const auto& k = keys();
  std::string p = claims().dump();
  auto es = segments(sign_service_token(*k.es, p));
  std::string rs = unb64(es[2]);
  ASSERT_EQ(rs.size(), 64u);
  // DER instead of R||S (what a naive OpenSSL signer emits).
  const auto* raw = reinterpret_cast<const unsigned char*>(rs.data());
  ECDSA_SIG* sig = ECDSA_SIG_new();
  ECDSA_SIG_set0(sig, BN_bin2bn(raw, 32, nullptr), BN_bin2bn(raw + 32, 32, nullptr));
  unsigned char* der = nullptr;
  int der_len = i2d_ECDSA_SIG(sig, &der);
  ASSERT_GT(der_len, 0);
  std::string der_sig(reinterpret_cast<char*>(der), der_len);
  OPENSSL_free(der);
  ECDSA_SIG_free(sig);
  std::string input = es[0] + '.' + es[1] + '.';
  EXPECT_EQ(check(input + b64(rs)), TokenError::kNone);
  EXPECT_EQ(check(input + b64(der_sig)), TokenError::kSignature);
  EXPECT_EQ(check(input + b64(rs.substr(0, 63))), TokenError::kSignature);
  EXPECT_EQ(check(input + b64(rs + '\0')), TokenError::kSignature);
  EXPECT_EQ(check(input + b64('\0' + rs)), TokenError::kSignature);
  EXPECT_EQ(check(input), TokenError::kSignature);
  EXPECT_EQ(check(input + b64(std::string(64, '\0'))), TokenError::kSignature);  // r = s = 0
  EXPECT_EQ(check(input + b64(std::string(64, '\xff'))), TokenError::kSignature);  // r, s >= n
  auto hs = segments(sign_service_token(*k.hs, p));
  std::string mac = unb64(hs[2]);
  EXPECT_EQ(check(hs[0] + '.' + hs[1] + '.' + b64(mac.substr(0, 16))), TokenError::kSignature);
  EXPECT_EQ(check(hs[0] + '.' + hs[1] + '.'), TokenError::kSignature);
  auto ed = segments(sign_service_token(*k.ed, p));
  EXPECT_EQ(check(ed[0] + '.' + ed[1] + '.' + b64(unb64(ed[2]).substr(0, 32))), TokenError::kSignature);
  EXPECT_EQ(ERR_peek_error(), 0u);
}

// --- structure -------------------------------------------------------------------------------

TEST(ServiceToken, StructureRules) {
  std::string good = sign_service_token(*keys().hs, claims().dump());
  ASSERT_EQ(check(good), TokenError::kNone);
  auto s = segments(good);
  for (std::string bad : {std::string(), std::string("a"), std::string("a.b"), std::string(".."),
                          std::string("..."), good + ".", "." + good, s[0] + ".." + s[1] + "." + s[2],
                          s[0] + "=." + s[1] + "." + s[2], s[0] + "." + s[1] + "." + s[2] + "=",
                          s[0] + "." + s[1] + "." + s[2] + "==", " " + good, good + " ", good + "\n",
                          s[0] + ".\t" + s[1] + "." + s[2], s[0] + "." + s[1] + "+." + s[2]}) {
    EXPECT_EQ(check(bad), TokenError::kMalformed) << bad;
  }
  // Standard base64 characters instead of the URL-safe ones.
  std::string std_chars = good;
  for (auto& c : std_chars) c = c == '-' ? '+' : c == '_' ? '/' : c;
  if (std_chars != good) {
    EXPECT_EQ(check(std_chars), TokenError::kMalformed);
  }
  // A segment whose length is 1 mod 4 or whose last character carries stray bits.
  EXPECT_EQ(check(s[0] + "A." + s[1] + "." + s[2]), TokenError::kMalformed);
  std::string h2 = b64(R"({"alg":"HS256"} )");  // 16 bytes: last char carries 4 bits of padding
  ASSERT_EQ(h2.size() % 4, 2u);
  std::string stray = h2;
  stray.back() = stray.back() == 'A' ? 'B' : static_cast<char>(stray.back() + 1);
  EXPECT_EQ(check(stray + "." + s[1] + "." + s[2]), TokenError::kMalformed);
}

TEST(ServiceToken, HeaderRules) {
  json p = claims();
  EXPECT_EQ(check(forge_hs(R"({"alg":"HS256","typ":"jwt"})", p)), TokenError::kNone);
  EXPECT_EQ(check(forge_hs(R"({"alg":"HS256","typ":"Jwt"})", p)), TokenError::kNone);
  EXPECT_EQ(check(forge_hs(R"({"alg":"HS256"})", p)), TokenError::kNone);
  EXPECT_EQ(check(forge_hs(R"({"alg":"HS256","typ":"JWT","cty":"x","x5u":"http://evil"})", p)), TokenError::kNone);
  for (std::string_view h :
       {R"({"alg":"HS256","typ":"JOSE"})", R"({"alg":"HS256","typ":"at+jwt"})", R"({"alg":"HS256","typ":5})",
        R"({"alg":"HS256","typ":"JWT","crit":["exp"]})", R"({"alg":"HS256","crit":[]})", R"({"typ":"JWT"})",
        R"({"alg":5})", R"({"alg":null})", R"({"alg":["HS256"]})", R"({"alg":"HS256","alg":"HS256"})",
        R"({"alg":"HS256","typ":"JWT","typ":"JWT"})", R"(["HS256"])", R"("HS256")", "", "{", "{}",
        R"({"alg":"HS256"} x)", "{\"alg\":\"HS\xff\"}"}) {
    EXPECT_EQ(check(forge_hs(h, p)), TokenError::kMalformed) << h;
  }
}

TEST(ServiceToken, PayloadMustBeJsonObject) {
  for (std::string_view p : {"", "[]", "null", "\"x\"", "42", "{", R"({"jti":"a",})", "{}{}", "\xff"}) {
    EXPECT_EQ(check(forge_hs_raw(kHsHeader, p)), TokenError::kMalformed) << p;
  }
  EXPECT_EQ(check(forge_hs_raw(kHsHeader, "{}")), TokenError::kMissingClaim);
}

TEST(ServiceToken, Truncated) {
  const auto& k = keys();
  for (const auto& key : {k.hs, k.es, k.ed}) {
    std::string tok = sign_service_token(*key, claims().dump());
    for (std::size_t n = 0; n < tok.size(); ++n) {
      TokenError e = check(tok.substr(0, n));
      EXPECT_NE(e, TokenError::kNone) << n;
    }
    // A signature short of its last byte is well-formed base64url but the wrong length.
    auto s = segments(tok);
    std::string sig = unb64(s[2]);
    EXPECT_EQ(check(s[0] + '.' + s[1] + '.' + b64(sig.substr(0, sig.size() - 1))), TokenError::kSignature);
  }
}

TEST(ServiceToken, SizeLimit) {
  EXPECT_EQ(check(std::string(kMaxServiceTokenLength + 1, 'a')), TokenError::kTooLarge);
  EXPECT_EQ(check(std::string(100000, '.')), TokenError::kTooLarge);
  // A valid token of exactly the limit is accepted; one byte more is refused.
  json p = claims();
  p["pad"] = "";
  std::string tok = sign_service_token(*keys().hs, p.dump());
  std::size_t pad = (kMaxServiceTokenLength - tok.size()) * 3 / 4;
  for (std::size_t extra = pad > 8 ? pad - 8 : 0; extra < pad + 8; ++extra) {
    p["pad"] = std::string(extra, 'x');
    tok = sign_service_token(*keys().hs, p.dump());
    if (tok.size() == kMaxServiceTokenLength) break;
  }
  ASSERT_EQ(tok.size(), kMaxServiceTokenLength);
  EXPECT_EQ(check(tok), TokenError::kNone);
  p["pad"] = p["pad"].get<std::string>() + "xxx";
  EXPECT_EQ(check(sign_service_token(*keys().hs, p.dump())), TokenError::kTooLarge);
  // A header or payload of nearly the whole limit decodes without overrunning anything.
  std::string big(kMaxServiceTokenLength - 2, 'A');
  EXPECT_EQ(check(big + ".."), TokenError::kMalformed);
  EXPECT_EQ(check(".." + big), TokenError::kMalformed);
  EXPECT_EQ(check("." + big + "."), TokenError::kMalformed);
  std::string hs_header = b64(kHsHeader);
  EXPECT_EQ(check(hs_header + '.' + std::string(kMaxServiceTokenLength - hs_header.size() - 2, 'A') + '.'),
            TokenError::kSignature);
}

// --- claims ----------------------------------------------------------------------------------

TEST(ServiceTokenClaims, MissingClaims) {
  for (const char* name : {"jti", "project", "service", "iat", "exp"}) {
    json p = claims();
    p.erase(name);
    EXPECT_EQ(check(forge_hs(kHsHeader, p)), TokenError::kMissingClaim) << name;
  }
}

TEST(ServiceTokenClaims, BadClaims) {
  auto with = [](const char* name, json value) {
    json p = claims();
    p[name] = std::move(value);
    return check(forge_hs(kHsHeader, p));
  };
  EXPECT_EQ(with("jti", std::string(128, 'j')), TokenError::kNone);
  EXPECT_EQ(with("project", std::string(63, 'p')), TokenError::kNone);
  EXPECT_EQ(with("service", "a-b_c-9"), TokenError::kNone);
  EXPECT_EQ(with("jti", ""), TokenError::kBadClaim);
  EXPECT_EQ(with("jti", std::string(129, 'j')), TokenError::kBadClaim);
  EXPECT_EQ(with("jti", 5), TokenError::kBadClaim);
  EXPECT_EQ(with("jti", nullptr), TokenError::kBadClaim);
  for (const char* name : {"project", "service"}) {
    for (json v : {json(""), json("CaptionAcc"), json("a b"), json("a.b"), json("a/b"), json(std::string(64, 'p')),
                   json("caf\u00e9"), json(5), json::array({"x"}), json(nullptr)})
      EXPECT_EQ(with(name, v), TokenError::kBadClaim) << name << " " << v.dump();
  }
  for (const char* name : {"iat", "exp", "nbf"}) {
    for (json v : {json(1.5), json(1700000000.0), json("1700000000"), json(nullptr), json(true),
                   json(std::uint64_t{9223372036854775808ull}), json::array({1})})
      EXPECT_EQ(with(name, v), TokenError::kBadClaim) << name << " " << v.dump();
  }
  // Numbers written with a fraction or an exponent are not integers.
  for (std::string_view exp : {"1700003600.0", "1.7000036e9", "17000036E2", "-0.0"}) {
    std::string p = R"({"jti":"j","project":"captionacc","service":"prefect","iat":1700000000,"exp":)";
    p += exp;
    p += '}';
    EXPECT_EQ(check(forge_hs_raw(kHsHeader, p)), TokenError::kBadClaim) << p;
  }
  EXPECT_EQ(with("aud", 5), TokenError::kBadClaim);
  EXPECT_EQ(with("aud", json::array({"a", 5})), TokenError::kBadClaim);
  EXPECT_EQ(with("aud", json::object()), TokenError::kBadClaim);
  EXPECT_EQ(with("iss", 5), TokenError::kBadClaim);
  // Duplicate claims (RFC 7519 section 4).
  std::string p = claims().dump();
  p.insert(1, R"("jti":"other",)");
  EXPECT_EQ(check(forge_hs_raw(kHsHeader, p)), TokenError::kBadClaim);
  p = claims().dump();
  p.insert(1, R"("exp":99999999999,)");
  EXPECT_EQ(check(forge_hs_raw(kHsHeader, p)), TokenError::kBadClaim);
  // Unknown claims, of any type, are ignored.
  json extra = claims();
  extra["metadata"] = {{"a", {1, 2, {{"b", nullptr}}}}};
  extra["scope"] = "read";
  EXPECT_EQ(check(forge_hs(kHsHeader, extra)), TokenError::kNone);
}

TEST(ServiceTokenClaims, TimeChecksWithLeeway) {
  auto at = [](std::int64_t iat, std::int64_t exp, std::optional<std::int64_t> nbf, ClaimsOptions o) {
    json p = claims();
    p["iat"] = iat;
    p["exp"] = exp;
    if (nbf) p["nbf"] = *nbf;
    return check(forge_hs(kHsHeader, p), o);
  };
  ClaimsOptions o = opts();  // leeway 30
  ASSERT_EQ(o.leeway_s, 30);
  EXPECT_EQ(at(kNow - 100, kNow - 30, {}, o), TokenError::kExpired);
  EXPECT_EQ(at(kNow - 100, kNow - 29, {}, o), TokenError::kNone);
  EXPECT_EQ(at(kNow - 100, kNow - 1000, {}, o), TokenError::kExpired);
  EXPECT_EQ(at(kNow, kNow + 100, kNow + 30, o), TokenError::kNone);
  EXPECT_EQ(at(kNow, kNow + 100, kNow + 31, o), TokenError::kNotYetValid);
  EXPECT_EQ(at(kNow + 30, kNow + 100, {}, o), TokenError::kNone);
  EXPECT_EQ(at(kNow + 31, kNow + 100, {}, o), TokenError::kIssuedInFuture);
  // Order: expiry before nbf before iat.
  EXPECT_EQ(at(kNow + 1000, kNow - 1000, kNow + 1000, o), TokenError::kExpired);
  EXPECT_EQ(at(kNow + 1000, kNow + 2000, kNow + 1000, o), TokenError::kNotYetValid);
  o.leeway_s = 0;
  EXPECT_EQ(at(kNow, kNow, {}, o), TokenError::kExpired);
  EXPECT_EQ(at(kNow, kNow + 1, {}, o), TokenError::kNone);
  EXPECT_EQ(at(kNow + 1, kNow + 100, {}, o), TokenError::kIssuedInFuture);
  o.leeway_s = -50;  // counts as 0
  EXPECT_EQ(at(kNow, kNow, {}, o), TokenError::kExpired);
  EXPECT_EQ(at(kNow, kNow + 1, {}, o), TokenError::kNone);
  // Extreme values do not overflow.
  o.leeway_s = INT64_MAX;
  EXPECT_EQ(at(INT64_MAX, kNow - INT64_MAX + 1, INT64_MAX, o), TokenError::kNone);
  EXPECT_EQ(at(INT64_MAX, kNow - INT64_MAX, INT64_MAX, o), TokenError::kExpired);
  o.now_s = INT64_MIN;
  EXPECT_EQ(at(INT64_MIN, INT64_MIN, {}, o), TokenError::kExpired);
  o = opts(INT64_MAX);
  EXPECT_EQ(at(INT64_MAX, INT64_MAX, INT64_MAX, o), TokenError::kNone);
  EXPECT_EQ(at(0, INT64_MIN, {}, o), TokenError::kExpired);
  o = opts(INT64_MIN);
  EXPECT_EQ(at(INT64_MIN, INT64_MAX, {}, o), TokenError::kNone);
  EXPECT_EQ(at(0, INT64_MAX, {}, o), TokenError::kIssuedInFuture);
}

TEST(ServiceTokenClaims, Audience) {
  auto with_aud = [](std::optional<json> aud, std::string_view audience) {
    json p = claims();
    if (aud) p["aud"] = *aud;
    ClaimsOptions o = opts();
    o.audience = audience;
    return check(forge_hs(kHsHeader, p), o);
  };
  EXPECT_EQ(with_aud({}, ""), TokenError::kNone);
  EXPECT_EQ(with_aud({}, "gateway"), TokenError::kAudience);  // required once configured
  EXPECT_EQ(with_aud(json("gateway"), ""), TokenError::kAudience);  // RFC 7519 4.1.3
  EXPECT_EQ(with_aud(json::array(), ""), TokenError::kAudience);
  EXPECT_EQ(with_aud(json("gateway"), "gateway"), TokenError::kNone);
  EXPECT_EQ(with_aud(json::array({"other", "gateway"}), "gateway"), TokenError::kNone);
  EXPECT_EQ(with_aud(json::array({"other"}), "gateway"), TokenError::kAudience);
  EXPECT_EQ(with_aud(json::array(), "gateway"), TokenError::kAudience);
  EXPECT_EQ(with_aud(json("Gateway"), "gateway"), TokenError::kAudience);
  EXPECT_EQ(with_aud(json("gateway2"), "gateway"), TokenError::kAudience);
  EXPECT_EQ(with_aud(json(""), "gateway"), TokenError::kAudience);
}

TEST(ServiceTokenClaims, Issuer) {
  auto with_iss = [](std::optional<json> iss, std::string_view issuer) {
    json p = claims();
    if (iss) p["iss"] = *iss;
    ClaimsOptions o = opts();
    o.issuer = issuer;
    return check(forge_hs(kHsHeader, p), o);
  };
  EXPECT_EQ(with_iss(json("antigravity"), "antigravity"), TokenError::kNone);
  EXPECT_EQ(with_iss(json("other"), "antigravity"), TokenError::kIssuer);
  EXPECT_EQ(with_iss(json("Antigravity"), "antigravity"), TokenError::kIssuer);
  EXPECT_EQ(with_iss({}, "antigravity"), TokenError::kIssuer);  // required once configured
  EXPECT_EQ(with_iss(json("anything"), ""), TokenError::kNone);
  EXPECT_EQ(with_iss(json(5), "antigravity"), TokenError::kBadClaim);
  // Audience is checked before issuer.
  json p = claims();
  p["iss"] = "other";
  p["aud"] = "other";
  ClaimsOptions o = opts();
  o.audience = "gateway";
  o.issuer = "antigravity";
  EXPECT_EQ(check(forge_hs(kHsHeader, p), o), TokenError::kAudience);
}

TEST(ServiceToken, OutputClearedOnFailure) {
  ServiceClaims out;
  ASSERT_EQ(verify_service_token(keys().set, sign_service_token(*keys().es, claims().dump()), opts(), out),
            TokenError::kNone);
  EXPECT_FALSE(out.jti.empty());
  json p = claims();
  p["exp"] = kNow - 1000;
  EXPECT_EQ(verify_service_token(keys().set, sign_service_token(*keys().es, p.dump()), opts(), out),
            TokenError::kExpired);
  EXPECT_TRUE(out.jti.empty());
  EXPECT_TRUE(out.project.empty());
  EXPECT_TRUE(out.kid.empty());
  EXPECT_EQ(out.exp, 0);
}

TEST(ServiceToken, ErrorReasons) {
  std::set<std::string_view> seen;
  for (int i = 0; i <= static_cast<int>(TokenError::kIssuer); ++i) {
    auto r = token_error_reason(static_cast<TokenError>(i));
    EXPECT_TRUE(seen.insert(r).second) << r;
    for (char c : r) EXPECT_TRUE((c >= 'a' && c <= 'z') || c == '_') << r;
  }
  EXPECT_EQ(token_error_reason(TokenError::kExpired), "token_expired");
  EXPECT_EQ(token_error_reason(TokenError::kSignature), "token_signature");
  EXPECT_EQ(token_error_reason(TokenError::kUnknownKey), "token_unknown_key");
  EXPECT_EQ(token_error_reason(TokenError::kAlgorithm), "token_algorithm");
  EXPECT_EQ(token_error_reason(TokenError::kMalformed), "token_malformed");
}

// --- robustness ------------------------------------------------------------------------------

TEST(ServiceToken, RandomGarbageAndMutationsNeverPass) {
  const auto& k = keys();
  std::mt19937_64 rng(20260915);
  auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_..=+/ ";
  for (int i = 0; i < 3000; ++i) {
    std::string s(pick(400), '\0');
    const bool bytes = i % 3 == 0;
    for (auto& c : s) c = bytes ? static_cast<char>(rng()) : kAlphabet[pick(kAlphabet.size())];
    EXPECT_NE(check(s), TokenError::kNone) << s;
  }
  // Random segments that decode to valid base64url of random bytes and JSON-looking text.
  constexpr std::string_view kJsonBits[] = {"{", "}", "[", "]", ",", ":", "\"alg\"", "\"HS256\"", "\"ES256\"",
                                            "\"kid\"", "\"es-1\"", "\"jti\"", "\"exp\"", "1e999", "-0",
                                            "18446744073709551616", "\"\\u0000\"", "\"\\ud800\"", "null", "true"};
  for (int i = 0; i < 2000; ++i) {
    std::string h, p;
    for (std::size_t j = pick(12); j > 0; --j) h += kJsonBits[pick(std::size(kJsonBits))];
    for (std::size_t j = pick(24); j > 0; --j) p += kJsonBits[pick(std::size(kJsonBits))];
    std::string sig(pick(80), '\0');
    for (auto& c : sig) c = static_cast<char>(rng());
    EXPECT_NE(check(b64(h) + '.' + b64(p) + '.' + b64(sig)), TokenError::kNone);
    check(forge_hs_raw(h, p));  // validly signed nonsense: any error, no crash
  }
  // Mutations of valid tokens: flips, insertions, deletions, swaps.
  std::vector<std::string> valid;
  for (const auto& key : {k.hs, k.es, k.ed}) valid.push_back(sign_service_token(*key, claims().dump()));
  for (int i = 0; i < 3000; ++i) {
    std::string t = valid[pick(valid.size())];
    const std::string original = t;
    for (int m = 1 + static_cast<int>(pick(3)); m > 0; --m) {
      switch (pick(4)) {
        case 0:
          t[pick(t.size())] = kAlphabet[pick(kAlphabet.size())];
          break;
        case 1:
          t.insert(pick(t.size() + 1), 1, kAlphabet[pick(kAlphabet.size())]);
          break;
        case 2:
          if (!t.empty()) t.erase(pick(t.size()), 1 + pick(4));
          break;
        default:
          if (t.size() > 2) std::swap(t[pick(t.size())], t[pick(t.size())]);
      }
    }
    if (t != original) {
      EXPECT_NE(check(t), TokenError::kNone) << original << " -> " << t;
    }
  }
  EXPECT_EQ(ERR_peek_error(), 0u);
}

TEST(ServiceToken, ConcurrentVerification) {
  const auto& k = keys();
  std::vector<std::string> tokens;
  for (const auto& key : {k.hs, k.es, k.ed}) tokens.push_back(sign_service_token(*key, claims().dump()));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 150; ++i) {
        const std::string& tok = tokens[(t + i) % tokens.size()];
        if (check(tok) != TokenError::kNone) ++failures;
        std::string bad = tok;
        bad[bad.size() / 2] = bad[bad.size() / 2] == 'a' ? 'b' : 'a';
        if (check(bad) == TokenError::kNone) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace ag::jwt
