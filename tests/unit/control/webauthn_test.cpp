// WebAuthn relying-party verification: real keys (OpenSSL), real CBOR (libcbor), real
// signatures; each refusal is provoked by one specific fault in an otherwise valid ceremony.
#include "control/service/webauthn.hpp"

#include <cbor.h>
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/crypto.hpp"

namespace ag::control::webauthn {
namespace {

constexpr int kEs256 = -7, kEdDsa = -8, kRs256 = -257;
constexpr std::uint8_t kUp = 0x01, kUv = 0x04, kBe = 0x08, kBs = 0x10, kAt = 0x40, kEd = 0x80;
const std::string kRpId = "localhost";
const std::string kOrigin = "http://localhost:8123";
const std::string kAaguid =
    std::string("\x01\x23\x45\x67\x89\xab\xcd\xef\x01\x23\x45\x67\x89\xab\xcd\xef", 16);

// --- OpenSSL and libcbor helpers ----------------------------------------------------------------

using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
struct CborFree {
  void operator()(cbor_item_t* p) const { cbor_decref(&p); }
};
using Item = std::unique_ptr<cbor_item_t, CborFree>;

std::string b64(std::string_view s) { return crypto::base64url_encode(s); }

Item cint(std::int64_t v) {
  return Item(v >= 0 ? cbor_build_uint64(static_cast<std::uint64_t>(v))
                     : cbor_build_negint64(static_cast<std::uint64_t>(-1 - v)));
}
Item cbytes(std::string_view s) {
  return Item(cbor_build_bytestring(reinterpret_cast<cbor_data>(s.data()), s.size()));
}
Item ctext(std::string_view s) { return Item(cbor_build_stringn(s.data(), s.size())); }
Item cmap(std::vector<std::pair<Item, Item>> entries) {
  Item m(cbor_new_definite_map(entries.size()));
  for (auto& [k, v] : entries) EXPECT_TRUE(cbor_map_add(m.get(), {k.get(), v.get()}));  // increfs
  return m;
}
Item carray(std::vector<Item> items) {
  Item a(cbor_new_definite_array(items.size()));
  for (auto& i : items) EXPECT_TRUE(cbor_array_push(a.get(), i.get()));
  return a;
}
std::string encode(const Item& item) {
  unsigned char* buf = nullptr;
  std::size_t cap = 0;
  const std::size_t len = cbor_serialize_alloc(item.get(), &buf, &cap);
  std::string out(reinterpret_cast<char*>(buf), len);
  std::free(buf);
  return out;
}

std::string bn_param(EVP_PKEY* k, const char* name, int pad) {
  BIGNUM* bn = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(k, name, &bn), 1);
  std::string out(pad > 0 ? pad : BN_num_bytes(bn), '\0');
  if (pad > 0)
    BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), pad);
  else
    BN_bn2bin(bn, reinterpret_cast<unsigned char*>(out.data()));
  BN_free(bn);
  return out;
}

struct TestKey {
  PkeyPtr pkey;
  int alg = 0;
  std::string cose;  // COSE_Key CBOR
};

// A CBOR map with integer labels (COSE), encoded.
std::string int_map(std::vector<std::pair<std::int64_t, Item>> kv) {
  std::vector<std::pair<Item, Item>> e;
  for (auto& [k, v] : kv) e.emplace_back(cint(k), std::move(v));
  return encode(cmap(std::move(e)));
}

std::string cose_of(EVP_PKEY* k, int alg) {
  std::vector<std::pair<std::int64_t, Item>> kv;
  if (alg == kEs256) {
    kv.emplace_back(1, cint(2));
    kv.emplace_back(3, cint(kEs256));
    kv.emplace_back(-1, cint(1));
    kv.emplace_back(-2, cbytes(bn_param(k, OSSL_PKEY_PARAM_EC_PUB_X, 32)));
    kv.emplace_back(-3, cbytes(bn_param(k, OSSL_PKEY_PARAM_EC_PUB_Y, 32)));
  } else if (alg == kEdDsa) {
    std::string x(32, '\0');
    std::size_t len = x.size();
    EXPECT_EQ(EVP_PKEY_get_raw_public_key(k, reinterpret_cast<unsigned char*>(x.data()), &len), 1);
    kv.emplace_back(1, cint(1));
    kv.emplace_back(3, cint(kEdDsa));
    kv.emplace_back(-1, cint(6));
    kv.emplace_back(-2, cbytes(x));
  } else {
    kv.emplace_back(1, cint(3));
    kv.emplace_back(3, cint(kRs256));
    kv.emplace_back(-1, cbytes(bn_param(k, OSSL_PKEY_PARAM_RSA_N, 0)));
    kv.emplace_back(-2, cbytes(bn_param(k, OSSL_PKEY_PARAM_RSA_E, 0)));
  }
  return int_map(std::move(kv));
}

TestKey make_key(int alg, std::size_t rsa_bits = 2048) {
  TestKey t{PkeyPtr(nullptr, EVP_PKEY_free), alg, {}};
  t.pkey.reset(alg == kEs256   ? EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")
               : alg == kEdDsa ? EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")
                               : EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", rsa_bits));
  EXPECT_TRUE(t.pkey);
  t.cose = cose_of(t.pkey.get(), alg);
  return t;
}

std::string sign(EVP_PKEY* k, int alg, std::string_view msg) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  std::size_t len = 0;
  const auto* m = reinterpret_cast<const unsigned char*>(msg.data());
  EXPECT_EQ(EVP_DigestSignInit_ex(ctx, nullptr, alg == kEdDsa ? nullptr : "SHA256", nullptr,
                                  nullptr, k, nullptr),
            1);
  EXPECT_EQ(EVP_DigestSign(ctx, nullptr, &len, m, msg.size()), 1);
  std::string sig(len, '\0');
  EXPECT_EQ(EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len, m, msg.size()),
            1);
  EVP_MD_CTX_free(ctx);
  sig.resize(len);
  return sig;
}

// --- ceremony builders --------------------------------------------------------------------------

std::string challenge() { return b64(crypto::random_bytes(32)); }

Expect expect_for(const std::string& challenge, bool require_uv = true) {
  return Expect{kRpId, kOrigin, challenge, require_uv};
}

std::string client_json_b64(const std::string& type, const std::string& challenge,
                            nlohmann::json patch = nlohmann::json::object()) {
  nlohmann::json j = {
      {"type", type}, {"challenge", challenge}, {"origin", kOrigin}, {"crossOrigin", false}};
  j.merge_patch(patch);
  return b64(j.dump());
}

ClientData client(const std::string& type, const std::string& challenge,
                  nlohmann::json patch = nlohmann::json::object()) {
  return parse_client_data(client_json_b64(type, challenge, std::move(patch)));
}

std::string be16(std::size_t v) { return {static_cast<char>(v >> 8), static_cast<char>(v & 0xff)}; }

std::string auth_data(std::uint8_t flags, std::uint32_t count, std::string_view tail = {},
                      const std::string& rp_id = kRpId) {
  const auto h = crypto::sha256(rp_id);
  std::string out(reinterpret_cast<const char*>(h.data()), h.size());
  out += static_cast<char>(flags);
  for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((count >> shift) & 0xff);
  out += tail;
  return out;
}

std::string attested(std::string_view cose, std::string_view cred_id = "credential-id-0001") {
  return kAaguid + be16(cred_id.size()) + std::string(cred_id) + std::string(cose);
}

std::string att_obj(std::string_view fmt, Item stmt, std::string_view auth) {
  std::vector<std::pair<Item, Item>> e;
  e.emplace_back(ctext("fmt"), ctext(fmt));
  e.emplace_back(ctext("attStmt"), std::move(stmt));
  e.emplace_back(ctext("authData"), cbytes(auth));
  return encode(cmap(std::move(e)));
}

std::string to_sign(std::string_view auth, const ClientData& cd) {
  const auto h = crypto::sha256(cd.raw);
  return std::string(auth) + std::string(reinterpret_cast<const char*>(h.data()), h.size());
}

Item packed_stmt(int alg, std::string_view sig, Item x5c = nullptr) {
  std::vector<std::pair<Item, Item>> e;
  e.emplace_back(ctext("alg"), cint(alg));
  e.emplace_back(ctext("sig"), cbytes(sig));
  if (x5c) e.emplace_back(ctext("x5c"), std::move(x5c));
  return cmap(std::move(e));
}

// An attestationObject (base64url) for `key`: "none", or "packed" self attestation.
std::string registration(const TestKey& key, const std::string& fmt, const ClientData& cd,
                         std::uint8_t flags = kUp | kUv | kAt, std::uint32_t count = 0) {
  const std::string auth = auth_data(flags, count, attested(key.cose));
  if (fmt == "none") return b64(att_obj("none", cmap({}), auth));
  return b64(att_obj("packed",
                     packed_stmt(key.alg, sign(key.pkey.get(), key.alg, to_sign(auth, cd))), auth));
}

struct CertOptions {
  bool ca = false;
  bool v3 = true;
  std::string ou = "Authenticator Attestation";
  std::string aaguid = kAaguid;  // empty: no AAGUID extension
};

// A self-signed attestation certificate for `key` (DER).
std::string make_cert(EVP_PKEY* key, const CertOptions& o) {
  X509* x = X509_new();
  X509_set_version(x, o.v3 ? X509_VERSION_3 : X509_VERSION_1);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  auto add = [name](const char* field, const std::string& v) {
    X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(v.data()), -1, -1, 0);
  };
  add("C", "US");
  add("O", "Antigravity Test");
  if (!o.ou.empty()) add("OU", o.ou);
  add("CN", "Test Attestation");
  X509_set_issuer_name(x, name);
  if (o.v3) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
    X509_EXTENSION* bc = X509V3_EXT_conf_nid(nullptr, &ctx, NID_basic_constraints,
                                             o.ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    X509_add_ext(x, bc, -1);
    X509_EXTENSION_free(bc);
    if (!o.aaguid.empty()) {
      ASN1_OBJECT* oid = OBJ_txt2obj("1.3.6.1.4.1.45724.1.1.4", 1);
      ASN1_OCTET_STRING* value = ASN1_OCTET_STRING_new();
      const std::string der = std::string("\x04\x10", 2) + o.aaguid;
      ASN1_OCTET_STRING_set(value, reinterpret_cast<const unsigned char*>(der.data()),
                            static_cast<int>(der.size()));
      X509_EXTENSION* ext = X509_EXTENSION_create_by_OBJ(nullptr, oid, 0, value);
      X509_add_ext(x, ext, -1);
      X509_EXTENSION_free(ext);
      ASN1_OCTET_STRING_free(value);
      ASN1_OBJECT_free(oid);
    }
  }
  EXPECT_GT(X509_sign(x, key, EVP_PKEY_is_a(key, "ED25519") ? nullptr : EVP_sha256()), 0);
  unsigned char* der = nullptr;
  const int len = i2d_X509(x, &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<std::size_t>(len));
  OPENSSL_free(der);
  X509_free(x);
  return out;
}

// packed x5c: the credential `cred` attested by `att`'s certificate.
std::string x5c_registration(const TestKey& cred, const TestKey& att, const ClientData& cd,
                             const CertOptions& o = {}, int stmt_alg = 0) {
  const std::string auth = auth_data(kUp | kUv | kAt, 0, attested(cred.cose));
  std::vector<Item> chain;
  chain.push_back(cbytes(make_cert(att.pkey.get(), o)));
  return b64(att_obj(
      "packed",
      packed_stmt(stmt_alg ? stmt_alg : att.alg, sign(att.pkey.get(), att.alg, to_sign(auth, cd)),
                  carray(std::move(chain))),
      auth));
}

template <typename F>
std::string code_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(ERR_peek_error(), 0u) << "OpenSSL error queue left non-empty";
    return e.code;
  }
  return "accepted";
}

class WebAuthn : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { crypto::init(); }
  const std::string challenge_ = challenge();
  const Expect expect_ = expect_for(challenge_);
  const ClientData create_ = client("webauthn.create", challenge_);
  const ClientData get_ = client("webauthn.get", challenge_);
};

// --- registration -------------------------------------------------------------------------------

TEST_F(WebAuthn, RegistersEachAlgorithmWithNoneAndPackedSelf) {
  for (int alg : {kEs256, kEdDsa, kRs256}) {
    const TestKey key = make_key(alg);
    for (const std::string fmt : {"none", "packed"}) {
      SCOPED_TRACE(std::to_string(alg) + " " + fmt);
      const NewCredential c = verify_registration(
          create_, registration(key, fmt, create_, kUp | kUv | kAt | kBe, 3), expect_);
      EXPECT_EQ(c.id, "credential-id-0001");
      EXPECT_EQ(c.cose_key, key.cose);
      EXPECT_EQ(c.alg, alg);
      EXPECT_EQ(c.sign_count, 3u);
      EXPECT_TRUE(c.backup_eligible);
      EXPECT_FALSE(c.backup_state);
      EXPECT_TRUE(c.user_verified);
      EXPECT_EQ(c.aaguid_hex, "0123456789abcdef0123456789abcdef");
      EXPECT_EQ(c.fmt, fmt);
    }
  }
}

TEST_F(WebAuthn, RegistersPackedX5c) {
  const TestKey cred = make_key(kEdDsa);
  for (int att_alg : {kEs256, kEdDsa, kRs256}) {
    const TestKey att = make_key(att_alg);
    const NewCredential c =
        verify_registration(create_, x5c_registration(cred, att, create_), expect_);
    EXPECT_EQ(c.fmt, "packed");
    EXPECT_EQ(c.alg, kEdDsa);
    EXPECT_EQ(c.cose_key, cred.cose);
  }
  const TestKey att = make_key(kEs256);
  CertOptions no_aaguid;
  no_aaguid.aaguid.clear();  // the extension is optional
  EXPECT_EQ(code_of([&] {
              verify_registration(create_, x5c_registration(cred, att, create_, no_aaguid),
                                  expect_);
            }),
            "accepted");
}

TEST_F(WebAuthn, RefusesBadX5c) {
  const TestKey cred = make_key(kEs256);
  const TestKey att = make_key(kEs256);
  auto code = [&](const CertOptions& o, int stmt_alg = 0) {
    return code_of([&] {
      verify_registration(create_, x5c_registration(cred, att, create_, o, stmt_alg), expect_);
    });
  };
  CertOptions ca;
  ca.ca = true;
  EXPECT_EQ(code(ca), "attestation");
  CertOptions v1;
  v1.v3 = false;
  EXPECT_EQ(code(v1), "attestation");
  CertOptions other_aaguid;
  other_aaguid.aaguid = std::string(16, '\x42');
  EXPECT_EQ(code(other_aaguid), "attestation");
  CertOptions no_ou;
  no_ou.ou.clear();
  EXPECT_EQ(code(no_ou), "attestation");
  EXPECT_EQ(code({}, kEdDsa), "attestation");  // P-256 certificate key, attStmt says EdDSA
  EXPECT_EQ(code({}, -35), "algorithm");       // ES384: not supported

  // Signed by the credential key instead of the certificate's.
  const std::string auth = auth_data(kUp | kUv | kAt, 0, attested(cred.cose));
  std::vector<Item> chain;
  chain.push_back(cbytes(make_cert(att.pkey.get(), {})));
  const std::string wrong_signer =
      b64(att_obj("packed",
                  packed_stmt(kEs256, sign(cred.pkey.get(), kEs256, to_sign(auth, create_)),
                              carray(std::move(chain))),
                  auth));
  EXPECT_EQ(code_of([&] { verify_registration(create_, wrong_signer, expect_); }), "attestation");

  std::vector<Item> junk;
  junk.push_back(cbytes("not a certificate"));
  const std::string not_der =
      b64(att_obj("packed",
                  packed_stmt(kEs256, sign(att.pkey.get(), kEs256, to_sign(auth, create_)),
                              carray(std::move(junk))),
                  auth));
  EXPECT_EQ(code_of([&] { verify_registration(create_, not_der, expect_); }), "attestation");
}

// --- assertion ----------------------------------------------------------------------------------

TEST_F(WebAuthn, AssertsEachAlgorithm) {
  for (int alg : {kEs256, kEdDsa, kRs256}) {
    SCOPED_TRACE(alg);
    const TestKey key = make_key(alg);
    const NewCredential c =
        verify_registration(create_, registration(key, "none", create_), expect_);
    Stored stored{c.cose_key, c.alg, c.sign_count, c.backup_eligible};
    for (std::uint32_t count : {1u, 2u, 7u}) {
      const std::string auth = auth_data(kUp | kUv, count);
      const Assertion a = verify_assertion(
          get_, b64(auth), b64(sign(key.pkey.get(), alg, to_sign(auth, get_))), stored, expect_);
      EXPECT_EQ(a.sign_count, count);
      EXPECT_TRUE(a.user_verified);
      EXPECT_FALSE(a.backup_eligible);
      stored.sign_count = a.sign_count;
    }
  }
}

class AssertionFaults : public WebAuthn {
 protected:
  const TestKey key_ = make_key(kEs256);
  Stored stored_{key_.cose, kEs256, 5, false};

  std::string assert_code(std::uint8_t flags, std::uint32_t count, const ClientData& cd,
                          const Expect& expect, const std::string& rp_id = kRpId) {
    const std::string auth = auth_data(flags, count, {}, rp_id);
    return code_of([&] {
      verify_assertion(cd, b64(auth), b64(sign(key_.pkey.get(), kEs256, to_sign(auth, cd))),
                       stored_, expect);
    });
  }
  std::string assert_code(std::uint8_t flags, std::uint32_t count) {
    return assert_code(flags, count, get_, expect_);
  }
};

TEST_F(AssertionFaults, ClientData) {
  EXPECT_EQ(assert_code(kUp | kUv, 6), "accepted");
  EXPECT_EQ(assert_code(kUp | kUv, 6, create_, expect_), "type");
  EXPECT_EQ(assert_code(kUp | kUv, 6, client("webauthn.get", challenge()), expect_), "challenge");
  EXPECT_EQ(assert_code(kUp | kUv, 6, get_, expect_for("")), "challenge");
  ClientData no_challenge = get_;  // built by hand: parse_client_data refuses an empty one
  no_challenge.challenge.clear();
  EXPECT_EQ(assert_code(kUp | kUv, 6, no_challenge, expect_for("")), "challenge");
  EXPECT_EQ(assert_code(kUp | kUv, 6,
                        client("webauthn.get", challenge_, {{"origin", "http://localhost:8124"}}),
                        expect_),
            "origin");
  EXPECT_EQ(assert_code(kUp | kUv, 6,
                        client("webauthn.get", challenge_, {{"origin", "https://localhost:8123"}}),
                        expect_),
            "origin");
  EXPECT_EQ(assert_code(kUp | kUv, 6, client("webauthn.get", challenge_, {{"crossOrigin", true}}),
                        expect_),
            "cross_origin");
  EXPECT_EQ(assert_code(kUp | kUv, 6,
                        client("webauthn.get", challenge_, {{"crossOrigin", nullptr}}), expect_),
            "accepted");  // merge_patch removes it: absent means false
}

TEST_F(AssertionFaults, AuthenticatorFlagsAndRpId) {
  EXPECT_EQ(assert_code(kUp | kUv, 6, get_, expect_, "evil.example"), "rp_id");
  EXPECT_EQ(assert_code(kUv, 6), "user_present");
  EXPECT_EQ(assert_code(kUp, 6), "user_verified");
  EXPECT_EQ(assert_code(kUp, 6, get_, expect_for(challenge_, false)), "accepted");
  EXPECT_EQ(assert_code(kUp | kUv | kBs, 6), "backup_state");  // BS without BE
  EXPECT_EQ(assert_code(kUp | kUv | kBe, 6), "backup_state");  // BE flipped vs stored
  stored_.backup_eligible = true;
  EXPECT_EQ(assert_code(kUp | kUv | kBe | kBs, 6), "accepted");
  EXPECT_EQ(assert_code(kUp | kUv, 7), "backup_state");  // BE flipped the other way
}

TEST_F(AssertionFaults, SignCount) {
  EXPECT_EQ(assert_code(kUp | kUv, 4), "sign_count");  // rollback
  EXPECT_EQ(assert_code(kUp | kUv, 5), "sign_count");  // equal, non-zero
  EXPECT_EQ(assert_code(kUp | kUv, 0), "sign_count");  // a counter that went back to 0
  stored_.sign_count = 0;
  EXPECT_EQ(assert_code(kUp | kUv, 0), "accepted");  // synced passkeys: 0 and 0
  EXPECT_EQ(assert_code(kUp | kUv, 1), "accepted");
}

TEST_F(AssertionFaults, SignatureAndLayout) {
  const std::string auth = auth_data(kUp | kUv, 6);
  const std::string sig = sign(key_.pkey.get(), kEs256, to_sign(auth, get_));
  auto code = [&](const std::string& a, const std::string& s, const Stored& st) {
    return code_of([&] { verify_assertion(get_, a, s, st, expect_); });
  };
  EXPECT_EQ(code(b64(auth), b64(sig), stored_), "accepted");
  std::string flipped = sig;
  flipped[flipped.size() / 2] ^= 0x01;
  EXPECT_EQ(code(b64(auth), b64(flipped), stored_), "signature");
  EXPECT_EQ(code(b64(auth), b64(sig + "x"), stored_), "signature");  // DER with trailing bytes
  EXPECT_EQ(code(b64(auth), "not*base64", stored_), "signature");
  EXPECT_EQ(code(b64(auth), b64(sign(key_.pkey.get(), kEs256, to_sign(auth, create_))), stored_),
            "signature");  // signed over another clientDataJSON
  EXPECT_EQ(
      code(b64(auth), b64(sign(make_key(kEs256).pkey.get(), kEs256, to_sign(auth, get_))), stored_),
      "signature");  // another key
  EXPECT_EQ(code(b64(auth.substr(0, 36)), b64(sig), stored_), "authenticator_data");
  EXPECT_EQ(code(b64(auth + std::string(1, '\0')), b64(sig), stored_),
            "authenticator_data");                                            // trailing
  EXPECT_EQ(code(b64(auth) + "=", b64(sig), stored_), "authenticator_data");  // padding
  const std::string with_at = auth_data(kUp | kUv | kAt, 6, attested(key_.cose));
  EXPECT_EQ(code(b64(with_at), b64(sign(key_.pkey.get(), kEs256, to_sign(with_at, get_))), stored_),
            "authenticator_data");
  // ED: an extensions map is tolerated; ED without one, or with a non-map, is not.
  const std::string ext = encode(cmap([] {
    std::vector<std::pair<Item, Item>> e;
    e.emplace_back(ctext("credProtect"), cint(2));
    return e;
  }()));
  const std::string with_ed = auth_data(kUp | kUv | kEd, 6, ext);
  EXPECT_EQ(code(b64(with_ed), b64(sign(key_.pkey.get(), kEs256, to_sign(with_ed, get_))), stored_),
            "accepted");
  EXPECT_EQ(code(b64(auth_data(kUp | kUv | kEd, 6)), b64(sig), stored_), "authenticator_data");
  EXPECT_EQ(code(b64(auth_data(kUp | kUv | kEd, 6, encode(cint(2)))), b64(sig), stored_),
            "authenticator_data");
  EXPECT_EQ(code(b64(with_ed + std::string(1, '\0')), b64(sig), stored_), "authenticator_data");

  Stored wrong_alg = stored_;
  wrong_alg.alg = kRs256;
  EXPECT_EQ(code(b64(auth), b64(sig), wrong_alg), "algorithm");
  Stored corrupt = stored_;
  corrupt.cose_key = "\xa1";
  EXPECT_EQ(code(b64(auth), b64(sig), corrupt), "algorithm");
}

// --- registration faults ------------------------------------------------------------------------

TEST_F(WebAuthn, RegistrationFaults) {
  const TestKey key = make_key(kEs256);
  auto code = [&](const ClientData& cd, const std::string& att, const Expect& e) {
    return code_of([&] { verify_registration(cd, att, e); });
  };
  auto reg_code = [&](const std::string& att) { return code(create_, att, expect_); };
  const std::string good = registration(key, "packed", create_);
  EXPECT_EQ(reg_code(good), "accepted");
  EXPECT_EQ(code(get_, registration(key, "packed", get_), expect_), "type");
  EXPECT_EQ(code(create_, good, expect_for(challenge())), "challenge");
  const ClientData foreign =
      client("webauthn.create", challenge_, {{"origin", "http://evil.example"}});
  EXPECT_EQ(code(foreign, registration(key, "none", foreign), expect_), "origin");
  const ClientData framed = client("webauthn.create", challenge_, {{"crossOrigin", true}});
  EXPECT_EQ(code(framed, registration(key, "none", framed), expect_), "cross_origin");

  auto none_with = [&](std::uint8_t flags, const std::string& tail, const std::string& rp = kRpId) {
    return b64(att_obj("none", cmap({}), auth_data(flags, 0, tail, rp)));
  };
  const std::string at = attested(key.cose);
  EXPECT_EQ(reg_code(none_with(kUp | kUv | kAt, at)), "accepted");
  EXPECT_EQ(reg_code(none_with(kUp | kUv | kAt, at, "example.com")), "rp_id");
  EXPECT_EQ(reg_code(none_with(kUv | kAt, at)), "user_present");
  EXPECT_EQ(reg_code(none_with(kUp | kAt, at)), "user_verified");
  EXPECT_EQ(code(create_, none_with(kUp | kAt, at), expect_for(challenge_, false)), "accepted");
  EXPECT_EQ(reg_code(none_with(kUp | kUv | kAt | kBs, at)), "backup_state");
  EXPECT_EQ(reg_code(none_with(kUp | kUv, "")), "authenticator_data");  // AT clear
  EXPECT_EQ(reg_code(none_with(kUp | kUv | kAt, at + std::string(1, '\0'))),
            "authenticator_data");  // trailing
  EXPECT_EQ(reg_code(none_with(kUp | kUv | kAt, at.substr(0, at.size() - 1))),
            "authenticator_data");
  EXPECT_EQ(reg_code(none_with(kUp | kUv | kAt, kAaguid + std::string(1, '\0'))),
            "authenticator_data");
  EXPECT_EQ(reg_code(none_with(kUp | kUv | kAt, attested(key.cose, std::string(1024, 'i')))),
            "authenticator_data");  // credential id over 1023 bytes
  EXPECT_EQ(reg_code(none_with(kUp | kUv | kAt, attested(key.cose, std::string(1023, 'i')))),
            "accepted");
  EXPECT_EQ(reg_code(none_with(kUp | kUv | kAt, kAaguid + be16(50) + "short")),
            "authenticator_data");

  // attestationObject structure.
  EXPECT_EQ(reg_code("not base64!"), "attestation");
  EXPECT_EQ(reg_code(b64("\xff\x00garbage")), "attestation");
  EXPECT_EQ(reg_code(b64(std::string("\x9b\x00\x00\x00\x01\x00\x00\x00\x00", 9))), "attestation");
  EXPECT_EQ(reg_code(b64(*crypto::base64url_decode(good) + std::string(1, '\0'))),
            "attestation");                                              // trailing
  EXPECT_EQ(reg_code(b64(encode(cint(1)))), "attestation");              // not a map
  EXPECT_EQ(reg_code(b64(std::string(70 * 1024, 'a'))), "attestation");  // over 64 KiB
  const std::string auth = auth_data(kUp | kUv | kAt, 0, at);
  EXPECT_EQ(reg_code(b64(att_obj("tpm", cmap({}), auth))), "attestation");
  EXPECT_EQ(reg_code(b64(att_obj("none", packed_stmt(kEs256, "x"), auth))), "attestation");
  const std::string self_sig = sign(key.pkey.get(), kEs256, to_sign(auth, create_));
  std::string bad_sig = self_sig;
  bad_sig[bad_sig.size() - 1] ^= 0x01;
  EXPECT_EQ(reg_code(b64(att_obj("packed", packed_stmt(kEs256, bad_sig), auth))), "attestation");
  EXPECT_EQ(reg_code(b64(att_obj("packed", cmap({}), auth))), "attestation");  // no alg, sig
  EXPECT_EQ(reg_code(b64(att_obj("packed", packed_stmt(kRs256, self_sig), auth))), "algorithm");
  EXPECT_EQ(reg_code(b64(att_obj("packed", packed_stmt(kEs256, self_sig), auth))), "accepted");
  std::vector<std::pair<Item, Item>> dup;  // a repeated key
  dup.emplace_back(ctext("fmt"), ctext("none"));
  dup.emplace_back(ctext("fmt"), ctext("packed"));
  dup.emplace_back(ctext("attStmt"), cmap({}));
  dup.emplace_back(ctext("authData"), cbytes(auth));
  EXPECT_EQ(reg_code(b64(encode(cmap(std::move(dup))))), "attestation");
}

TEST_F(WebAuthn, RefusesUnsupportedKeys) {
  auto key_code = [&](const std::string& cose) {
    return code_of([&] {
      verify_registration(
          create_, b64(att_obj("none", cmap({}), auth_data(kUp | kUv | kAt, 0, attested(cose)))),
          expect_);
    });
  };
  EXPECT_EQ(key_code(make_key(kRs256, 1024).cose), "algorithm");
  EXPECT_EQ(key_code(make_key(kRs256, 2048).cose), "accepted");
  const TestKey rsa = make_key(kRs256);
  for (const std::string& e : {std::string("\x01"), std::string("\x01\x00\x00", 3)}) {  // 1, even
    std::vector<std::pair<std::int64_t, Item>> kv;
    kv.emplace_back(1, cint(3));
    kv.emplace_back(3, cint(kRs256));
    kv.emplace_back(-1, cbytes(bn_param(rsa.pkey.get(), OSSL_PKEY_PARAM_RSA_N, 0)));
    kv.emplace_back(-2, cbytes(e));
    EXPECT_EQ(key_code(int_map(std::move(kv))), "algorithm");
  }
  auto ec = [&](std::int64_t kty, std::int64_t alg, std::int64_t crv, std::string x,
                std::string y) {
    std::vector<std::pair<std::int64_t, Item>> kv;
    kv.emplace_back(1, cint(kty));
    kv.emplace_back(3, cint(alg));
    kv.emplace_back(-1, cint(crv));
    kv.emplace_back(-2, cbytes(x));
    kv.emplace_back(-3, cbytes(y));
    return int_map(std::move(kv));
  };
  const TestKey p256 = make_key(kEs256);
  const std::string x = bn_param(p256.pkey.get(), OSSL_PKEY_PARAM_EC_PUB_X, 32);
  const std::string y = bn_param(p256.pkey.get(), OSSL_PKEY_PARAM_EC_PUB_Y, 32);
  EXPECT_EQ(key_code(ec(2, kEs256, 1, x, y)), "accepted");
  EXPECT_EQ(key_code(ec(2, -35, 1, x, y)), "algorithm");     // ES384
  EXPECT_EQ(key_code(ec(2, kEs256, 2, x, y)), "algorithm");  // P-384 curve id
  EXPECT_EQ(key_code(ec(1, kEs256, 1, x, y)), "algorithm");  // OKP kty with ES256
  EXPECT_EQ(key_code(ec(2, kEs256, 1, x, std::string(32, '\x02'))), "algorithm");  // off the curve
  EXPECT_EQ(key_code(ec(2, kEs256, 1, x.substr(1), y)), "algorithm");              // short x
  EXPECT_EQ(key_code(encode(cint(7))), "algorithm");                               // not a map
}

TEST(WebAuthnClientData, ParsesAndRefuses) {
  const ClientData cd = parse_client_data(b64(
      R"({"type":"webauthn.get","challenge":"abc","origin":"http://localhost:8123","crossOrigin":false,"other":{"x":[1,2]}})"));
  EXPECT_EQ(cd.type, "webauthn.get");
  EXPECT_EQ(cd.challenge, "abc");
  EXPECT_EQ(cd.origin, "http://localhost:8123");
  EXPECT_FALSE(cd.cross_origin);
  EXPECT_EQ(cd.raw.substr(0, 9), R"({"type":")");
  auto code = [](const std::string& b) { return code_of([&] { parse_client_data(b); }); };
  EXPECT_EQ(code("e30="), "client_data");  // padding
  EXPECT_EQ(code("!!!"), "client_data");   // not base64url
  EXPECT_EQ(code(b64("not json")), "client_data");
  EXPECT_EQ(code(b64("[1]")), "client_data");
  EXPECT_EQ(code(b64(R"({"type":"webauthn.get","challenge":"abc"})")), "client_data");  // no origin
  EXPECT_EQ(code(b64(R"({"type":"webauthn.get","challenge":"","origin":"o"})")), "client_data");
  EXPECT_EQ(code(b64(R"({"type":1,"challenge":"abc","origin":"o"})")), "client_data");
  EXPECT_EQ(
      code(b64(R"({"type":"webauthn.get","challenge":"abc","origin":"o","crossOrigin":"true"})")),
      "client_data");
  EXPECT_EQ(code(b64(R"({"type":"webauthn.get","challenge":"abc","origin":"o","origin":"p"})")),
            "client_data");  // repeated key
  EXPECT_EQ(code(b64(R"({"type":"webauthn.get","challenge":"abc","origin":"o"} x)")),
            "client_data");
  const std::string fields = R"("type":"webauthn.get","challenge":"abc","origin":"o")";
  EXPECT_EQ(
      code(b64("{" + fields + R"(,"x":)" + std::string(15, '[') + std::string(15, ']') + "}")),
      "accepted");
  EXPECT_EQ(
      code(b64("{" + fields + R"(,"x":)" + std::string(64, '[') + std::string(64, ']') + "}")),
      "client_data");                                                // nested too deep
  EXPECT_EQ(code(b64(std::string(17 * 1024, ' '))), "client_data");  // too large
  EXPECT_EQ(code(b64(R"({"type":"webauthn.get","challenge":"abc","origin":"o","x":"\xff"})")),
            "client_data");  // not UTF-8
}

}  // namespace
}  // namespace ag::control::webauthn
