// WebAuthn relying-party verification (webauthn.hpp): clientDataJSON with nlohmann/json, CBOR
// with libcbor behind a bounded well-formedness scan, keys and signatures with OpenSSL 3.
// Just over 600 lines: the CBOR pre-scan, COSE key import, attestation formats and both
// ceremonies share the same private helpers; split, each part would have to export them.
#include "control/service/webauthn.hpp"

#include "common/openssl_ptr.hpp"

#include <cbor.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <array>
#include <cstring>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "common/crypto.hpp"

namespace ag::control::webauthn {

Error::Error(std::string error_code, const std::string& message)
    : std::runtime_error(message), code(std::move(error_code)) {}

namespace {

// Chromium's clientDataJSON is ~150–300 bytes; 16 KiB leaves room for any extra members.
constexpr std::size_t kMaxClientDataJson = 16 * 1024;
// A packed attestation with a certificate chain is 1–4 KiB; 64 KiB bounds what libcbor allocates.
constexpr std::size_t kMaxAttestationObject = 64 * 1024;
constexpr std::size_t kMaxAuthenticatorData = 64 * 1024;
constexpr std::size_t kMaxSignature = 1024;     // RSA-4096 is 512 bytes, ES256 DER at most 72
constexpr std::size_t kMaxCredentialId = 1023;  // WebAuthn §6.5.1 (credentialIdLength)
constexpr std::size_t kMaxCborDepth = 16;       // attestationObject needs 3 (map, attStmt, x5c)
constexpr int kMaxJsonDepth = 16;
constexpr int kMinRsaBits = 2048;
// Verification cost grows with the modulus and OpenSSL accepts up to 16384 bits: a credential's
// key is chosen by whoever registers it, so the upper bound is ours.
constexpr int kMaxRsaBits = 4096;
constexpr std::size_t kMaxRsaExponentBytes = 8;

constexpr std::size_t kRpIdHashLen = 32;
constexpr std::size_t kAuthDataHeaderLen = 37;  // rpIdHash 32, flags 1, signCount 4
constexpr std::size_t kAaguidLen = 16;
constexpr std::size_t kCoordLen = 32;  // P-256 coordinates, Ed25519 public keys

// authenticatorData flags: user present, user verified, backup eligible, backed up, attested
// credential data, extensions.
constexpr unsigned kFlagUp = 0x01, kFlagUv = 0x04, kFlagBe = 0x08, kFlagBs = 0x10;
constexpr unsigned kFlagAt = 0x40, kFlagEd = 0x80;
constexpr int kAlgEs256 = -7, kAlgEdDsa = -8, kAlgRs256 = -257;  // COSE algorithm ids

// id-fido-gen-ce-aaguid (FIDO Metadata / WebAuthn §8.2.1).
constexpr const char* kAaguidExtensionOid = "1.3.6.1.4.1.45724.1.1.4";

// --- RAII --------------------------------------------------------------------------------------

void cbor_free(cbor_item_t* p) { cbor_decref(&p); }
using namespace ossl;  // common/openssl_ptr.hpp
using CborPtr = std::unique_ptr<cbor_item_t, Free<cbor_free>>;
using Asn1ObjectPtr = std::unique_ptr<ASN1_OBJECT, Free<ASN1_OBJECT_free>>;
using BasicConstraintsPtr = std::unique_ptr<BASIC_CONSTRAINTS, Free<BASIC_CONSTRAINTS_free>>;

// Empties the thread's OpenSSL error queue when a verification ends, however it ends: a stale
// entry there would mislead a later TLS call on the same thread.
struct ClearOpensslErrors {
  ~ClearOpensslErrors() { ERR_clear_error(); }
};

const unsigned char* bytes_of(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

std::string decode_b64url(std::string_view in, std::size_t max_bytes, const char* code,
                          const char* what) {
  if (in.size() > (max_bytes * 4 + 2) / 3)
    throw Error(code,
                std::string(what) + " is larger than " + std::to_string(max_bytes) + " bytes");
  auto out = crypto::base64url_decode(in);
  if (!out) throw Error(code, std::string(what) + " is not base64url (no padding)");
  return std::move(*out);
}

// --- CBOR --------------------------------------------------------------------------------------

// The length of the one CBOR data item at the start of `in`, or 0 when it is not well formed,
// nests deeper than kMaxCborDepth, has an indefinite length, or declares more elements than bytes
// remain. libcbor 0.8 allocates a container's declared size before reading any element (a 9-byte
// header can ask for 2^64 pointers) and frees nested items recursively, so no bytes reach
// cbor_load without passing here first. CTAP2's canonical CBOR has no indefinite lengths.
std::size_t cbor_item_length(std::string_view in) {
  const unsigned char* p = bytes_of(in);
  const std::size_t n = in.size();
  std::array<std::uint64_t, kMaxCborDepth> left{};  // elements still to read per open container
  std::size_t pos = 0, depth = 0;
  for (;;) {
    if (pos >= n) return 0;
    const unsigned major = p[pos] >> 5, info = p[pos] & 0x1f;
    ++pos;
    std::uint64_t arg = info;
    if (info >= 24) {
      if (info > 27) return 0;  // 28–30 reserved, 31 indefinite length or "break"
      const std::size_t len = std::size_t{1} << (info - 24);
      if (n - pos < len) return 0;
      arg = 0;
      for (std::size_t i = 0; i < len; ++i) arg = arg << 8 | p[pos + i];
      pos += len;
    }
    std::uint64_t children = 0;
    switch (major) {
      case 2:  // byte string
      case 3:  // text string
        if (arg > n - pos) return 0;
        pos += arg;
        break;
      case 4:  // array: each element takes at least one byte
        if (arg > n - pos) return 0;
        children = arg;
        break;
      case 5:  // map
        if (arg > (n - pos) / 2) return 0;
        children = 2 * arg;
        break;
      case 6:  // tag: one tagged item follows
        children = 1;
        break;
      default:  // integers, simple values, floats
        break;
    }
    if (children > 0) {
      if (depth == kMaxCborDepth) return 0;
      left[depth++] = children;
      continue;
    }
    while (depth > 0 && --left[depth - 1] == 0) --depth;  // close every container this completes
    if (depth == 0) return pos;
  }
}

// `in` decoded; it must be exactly one well-formed item.
CborPtr load_cbor(std::string_view in, const char* code, const char* what) {
  if (in.empty() || cbor_item_length(in) != in.size())
    throw Error(code, std::string(what) + " is not one well-formed, definite-length CBOR item");
  cbor_load_result result{};
  CborPtr item(cbor_load(bytes_of(in), in.size(), &result));
  if (!item || result.error.code != CBOR_ERR_NONE || result.read != in.size())
    throw Error(code, std::string(what) + " could not be decoded as CBOR");
  return item;
}

// The accessors below take null (a key not found) and answer nullopt for it.
std::optional<std::int64_t> cbor_int(const cbor_item_t* item) {
  if (!item || !cbor_is_int(item)) return std::nullopt;
  const std::uint64_t v = cbor_get_int(item);
  if (v > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
  const auto s = static_cast<std::int64_t>(v);
  return cbor_isa_uint(item) ? s : -1 - s;  // a NEGINT holds -1 - value
}

std::optional<std::string_view> cbor_bytes(const cbor_item_t* item) {
  if (!item || !cbor_isa_bytestring(item) || !cbor_bytestring_is_definite(item))
    return std::nullopt;
  const std::size_t len = cbor_bytestring_length(item);
  if (len == 0) return std::string_view();
  return std::string_view(reinterpret_cast<const char*>(cbor_bytestring_handle(item)), len);
}

std::optional<std::string_view> cbor_text(const cbor_item_t* item) {
  if (!item || !cbor_isa_string(item) || !cbor_string_is_definite(item)) return std::nullopt;
  const std::size_t len = cbor_string_length(item);
  if (len == 0) return std::string_view();
  return std::string_view(reinterpret_cast<const char*>(cbor_string_handle(item)), len);
}

bool is_map(const cbor_item_t* item) { return cbor_isa_map(item) && cbor_map_is_definite(item); }

// The value under the key that `matches`, or null. A key present twice is refused: decoders
// disagree on which one wins, and the signer and we must read the same value.
template <typename Match>
const cbor_item_t* map_find(const cbor_item_t* map, Match matches, const char* code) {
  const cbor_item_t* found = nullptr;
  const cbor_pair* pairs = cbor_map_handle(map);
  for (std::size_t i = 0, n = cbor_map_size(map); i < n; ++i) {
    if (!matches(pairs[i].key)) continue;
    if (found) throw Error(code, "a CBOR map repeats a key");
    found = pairs[i].value;
  }
  return found;
}
const cbor_item_t* map_get(const cbor_item_t* map, std::int64_t label, const char* code) {
  return map_find(
      map, [label](const cbor_item_t* k) { return cbor_int(k) == label; }, code);
}
const cbor_item_t* map_get(const cbor_item_t* map, std::string_view key, const char* code) {
  return map_find(
      map, [key](const cbor_item_t* k) { return cbor_text(k) == key; }, code);
}

// --- keys and signatures -----------------------------------------------------------------------

PkeyPtr pkey_from_params(const char* type, const OSSL_PARAM* params) {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, const_cast<OSSL_PARAM*>(params)) != 1)
    return nullptr;
  return PkeyPtr(raw);
}

bool is_p256(EVP_PKEY* k) {
  if (EVP_PKEY_is_a(k, "EC") != 1) return false;
  char name[64] = {};
  std::size_t len = 0;
  if (EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof name, &len) != 1)
    return false;
  const std::string_view g(name, len);
  return g == "prime256v1" || g == "P-256" || g == "secp256r1";
}

// True when `k` is the kind of key COSE algorithm `alg` signs with.
bool key_fits_alg(EVP_PKEY* k, int alg) {
  switch (alg) {
    case kAlgEs256:
      return is_p256(k);
    case kAlgEdDsa:
      return EVP_PKEY_is_a(k, "ED25519") == 1;
    case kAlgRs256:
      return EVP_PKEY_is_a(k, "RSA") == 1 && EVP_PKEY_get_bits(k) >= kMinRsaBits &&
             EVP_PKEY_get_bits(k) <= kMaxRsaBits;
    default:
      return false;
  }
}

bool supported_alg(std::int64_t alg) {
  return alg == kAlgEs256 || alg == kAlgEdDsa || alg == kAlgRs256;
}

// ES256 takes the DER signature as is (OpenSSL refuses non-canonical DER), EdDSA the raw 64
// bytes with no digest, RS256 PKCS#1 v1.5 (the default padding) over SHA-256.
bool verify_signature(EVP_PKEY* pkey, int alg, std::string_view msg, std::string_view sig) {
  const char* md = alg == kAlgEdDsa ? nullptr : "SHA256";
  MdCtxPtr ctx(EVP_MD_CTX_new());
  return ctx &&
         EVP_DigestVerifyInit_ex(ctx.get(), nullptr, md, nullptr, nullptr, pkey, nullptr) == 1 &&
         EVP_DigestVerify(ctx.get(), bytes_of(sig), sig.size(), bytes_of(msg), msg.size()) == 1;
}

struct CoseKey {
  int alg = 0;
  PkeyPtr pkey;
};

PkeyPtr ec2_key(const cbor_item_t* map) {
  const auto x = cbor_bytes(map_get(map, -2, "algorithm"));
  const auto y = cbor_bytes(map_get(map, -3, "algorithm"));
  if (cbor_int(map_get(map, -1, "algorithm")) != 1 || !x || !y || x->size() != kCoordLen ||
      y->size() != kCoordLen)
    throw Error("algorithm", "an EC2 COSE key must be P-256 (crv 1) with 32-byte x and y");
  unsigned char point[1 + 2 * kCoordLen];
  point[0] = 0x04;  // uncompressed
  std::memcpy(point + 1, x->data(), kCoordLen);
  std::memcpy(point + 1 + kCoordLen, y->data(), kCoordLen);
  char group[] = "prime256v1";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
      OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point),
      OSSL_PARAM_construct_end()};
  return pkey_from_params("EC", params);  // null when the point is not on the curve
}

PkeyPtr okp_key(const cbor_item_t* map) {
  const auto x = cbor_bytes(map_get(map, -2, "algorithm"));
  if (cbor_int(map_get(map, -1, "algorithm")) != 6 || !x || x->size() != kCoordLen)
    throw Error("algorithm", "an OKP COSE key must be Ed25519 (crv 6) with a 32-byte x");
  unsigned char pub[kCoordLen];
  std::memcpy(pub, x->data(), kCoordLen);
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub),
      OSSL_PARAM_construct_end()};
  return pkey_from_params("ED25519", params);
}

PkeyPtr rsa_key(const cbor_item_t* map) {
  const auto n_bytes = cbor_bytes(map_get(map, -1, "algorithm"));
  const auto e_bytes = cbor_bytes(map_get(map, -2, "algorithm"));
  if (!n_bytes || !e_bytes || e_bytes->empty() || e_bytes->size() > kMaxRsaExponentBytes ||
      n_bytes->size() > kMaxRsaBits / 8 + 1)
    throw Error("algorithm", "an RSA COSE key needs n and e (at most 8 bytes)");
  BnPtr n(BN_bin2bn(bytes_of(*n_bytes), static_cast<int>(n_bytes->size()), nullptr));
  BnPtr e(BN_bin2bn(bytes_of(*e_bytes), static_cast<int>(e_bytes->size()), nullptr));
  if (!n || !e) throw std::bad_alloc();
  const int bits = BN_num_bits(n.get());
  if (bits < kMinRsaBits || bits > kMaxRsaBits)
    throw Error("algorithm", "an RSA key must have 2048 to 4096 bits");
  // e = 1 would make every padded digest its own signature.
  if (!BN_is_odd(e.get()) || BN_is_one(e.get()) || BN_cmp(e.get(), n.get()) >= 0)
    throw Error("algorithm", "the RSA public exponent must be odd and greater than 1");
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1)
    throw std::bad_alloc();
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  if (!params) throw std::bad_alloc();
  return pkey_from_params("RSA", params.get());
}

// Parses a COSE_Key (RFC 9052 §7, RFC 9053) of one of the supported kinds.
CoseKey parse_cose_key(std::string_view cbor_bytes_in) {
  const CborPtr item = load_cbor(cbor_bytes_in, "algorithm", "the COSE key");
  const cbor_item_t* map = item.get();
  if (!is_map(map)) throw Error("algorithm", "the COSE key is not a CBOR map");
  const auto kty = cbor_int(map_get(map, 1, "algorithm"));
  const auto alg = cbor_int(map_get(map, 3, "algorithm"));
  if (!kty || !alg) throw Error("algorithm", "the COSE key lacks kty (1) or alg (3)");
  CoseKey key;
  if (*kty == 2 && *alg == kAlgEs256) {
    key.pkey = ec2_key(map);
  } else if (*kty == 1 && *alg == kAlgEdDsa) {
    key.pkey = okp_key(map);
  } else if (*kty == 3 && *alg == kAlgRs256) {
    key.pkey = rsa_key(map);
  } else {
    throw Error("algorithm",
                "unsupported COSE key (allowed: kty 2 alg -7, kty 1 alg -8, kty 3 alg -257)");
  }
  if (!key.pkey) throw Error("algorithm", "the COSE key is not a valid public key");
  key.alg = static_cast<int>(*alg);
  return key;
}

// --- clientDataJSON and authenticatorData -------------------------------------------------------

void check_client_data(const ClientData& cd, std::string_view type, const Expect& expect) {
  if (cd.type != type) throw Error("type", "clientDataJSON.type is not " + std::string(type));
  if (expect.challenge.empty() || !crypto::constant_time_equal(cd.challenge, expect.challenge))
    throw Error("challenge", "clientDataJSON.challenge is not the challenge issued");
  if (expect.origin.empty() || cd.origin != expect.origin)
    throw Error("origin", "clientDataJSON.origin is not " + expect.origin);
  if (cd.cross_origin) throw Error("cross_origin", "clientDataJSON.crossOrigin is true");
}

// WebAuthn §6.1. Views into the caller's bytes.
struct AuthenticatorData {
  std::string_view rp_id_hash;
  unsigned flags = 0;
  std::uint32_t sign_count = 0;
  // Attested credential data (AT set, registration only).
  std::string_view aaguid, credential_id, cose_key;
};

AuthenticatorData parse_authenticator_data(std::string_view d, bool registration) {
  if (d.size() < kAuthDataHeaderLen)
    throw Error("authenticator_data", "authenticatorData is shorter than 37 bytes");
  const unsigned char* p = bytes_of(d);
  AuthenticatorData ad;
  ad.rp_id_hash = d.substr(0, kRpIdHashLen);
  ad.flags = p[32];
  ad.sign_count = std::uint32_t{p[33]} << 24 | std::uint32_t{p[34]} << 16 |
                  std::uint32_t{p[35]} << 8 | std::uint32_t{p[36]};
  std::string_view rest = d.substr(kAuthDataHeaderLen);
  if (registration != ((ad.flags & kFlagAt) != 0))
    throw Error("authenticator_data", registration ? "AT is clear: no attested credential data"
                                                   : "AT is set on an assertion");
  if (ad.flags & kFlagAt) {
    if (rest.size() < kAaguidLen + 2)
      throw Error("authenticator_data", "attested credential data is truncated");
    ad.aaguid = rest.substr(0, kAaguidLen);
    const std::size_t id_len = std::size_t{p[kAuthDataHeaderLen + kAaguidLen]} << 8 |
                               p[kAuthDataHeaderLen + kAaguidLen + 1];
    rest.remove_prefix(kAaguidLen + 2);
    if (id_len == 0 || id_len > kMaxCredentialId || id_len > rest.size())
      throw Error("authenticator_data", "credential id length is 0, over 1023 or past the end");
    ad.credential_id = rest.substr(0, id_len);
    rest.remove_prefix(id_len);
    const std::size_t key_len = cbor_item_length(rest);
    if (key_len == 0)
      throw Error("authenticator_data", "the credential public key is not well-formed CBOR");
    ad.cose_key = rest.substr(0, key_len);
    rest.remove_prefix(key_len);
  }
  if (ad.flags & kFlagEd) {
    const std::size_t ext_len = cbor_item_length(rest);
    if (ext_len == 0 || (bytes_of(rest)[0] >> 5) != 5)
      throw Error("authenticator_data", "extensions are not a well-formed CBOR map");
    rest.remove_prefix(ext_len);
  }
  if (!rest.empty()) throw Error("authenticator_data", "bytes follow the last part");
  return ad;
}

void check_authenticator_data(const AuthenticatorData& ad, const Expect& expect) {
  const crypto::Sha256Digest h = crypto::sha256(expect.rp_id);
  if (ad.rp_id_hash != std::string_view(reinterpret_cast<const char*>(h.data()), h.size()))
    throw Error("rp_id", "rpIdHash is not SHA-256 of " + expect.rp_id);
  if (!(ad.flags & kFlagUp)) throw Error("user_present", "UP (user present) is clear");
  if (expect.require_user_verification && !(ad.flags & kFlagUv))
    throw Error("user_verified", "UV (user verified) is clear and verification is required");
  if ((ad.flags & kFlagBs) && !(ad.flags & kFlagBe))
    throw Error("backup_state", "BS (backed up) is set without BE (backup eligible)");
}

std::string signed_data(std::string_view authenticator_data, std::string_view client_data_raw) {
  const crypto::Sha256Digest h = crypto::sha256(client_data_raw);
  std::string out(authenticator_data);
  out.append(reinterpret_cast<const char*>(h.data()), h.size());
  return out;
}

// --- packed attestation (WebAuthn §8.2) ---------------------------------------------------------

// The one value of attribute `nid` in `name`; nullopt when absent or repeated.
std::optional<std::string_view> name_entry(X509_NAME* name, int nid) {
  const int i = X509_NAME_get_index_by_NID(name, nid, -1);
  if (i < 0 || X509_NAME_get_index_by_NID(name, nid, i) >= 0) return std::nullopt;
  const ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
  if (!s || ASN1_STRING_length(s) <= 0) return std::nullopt;
  return std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                          static_cast<std::size_t>(ASN1_STRING_length(s)));
}

// The checks of §8.2.1 that need no trust store, then the signature by the certificate's key.
void verify_x5c(const cbor_item_t* x5c, int alg, std::string_view sig, std::string_view msg,
                std::string_view aaguid) {
  if (!cbor_isa_array(x5c) || !cbor_array_is_definite(x5c) || cbor_array_size(x5c) == 0)
    throw Error("attestation", "x5c is not a non-empty array");
  cbor_item_t** certs = cbor_array_handle(x5c);
  for (std::size_t i = 0; i < cbor_array_size(x5c); ++i)
    if (!cbor_bytes(certs[i])) throw Error("attestation", "x5c holds something other than bytes");
  const std::string_view der = *cbor_bytes(certs[0]);
  const unsigned char* p = bytes_of(der);
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert || p != bytes_of(der) + der.size())
    throw Error("attestation", "the attestation certificate is not one DER certificate");
  if (X509_get_version(cert.get()) != X509_VERSION_3)
    throw Error("attestation", "the attestation certificate is not version 3");

  // Absent basic constraints mean an end-entity certificate (RFC 5280 §4.2.1.9).
  int crit = 0;
  BasicConstraintsPtr bc(static_cast<BASIC_CONSTRAINTS*>(
      X509_get_ext_d2i(cert.get(), NID_basic_constraints, &crit, nullptr)));
  if ((!bc && crit != -1) || (bc && bc->ca))
    throw Error("attestation", "the attestation certificate is a CA (basic constraints)");

  X509_NAME* subject = X509_get_subject_name(cert.get());
  const auto country = subject ? name_entry(subject, NID_countryName) : std::nullopt;
  if (!country || country->size() != 2 || !name_entry(subject, NID_organizationName) ||
      name_entry(subject, NID_organizationalUnitName) != "Authenticator Attestation" ||
      !name_entry(subject, NID_commonName))
    throw Error(
        "attestation",
        "the attestation certificate subject needs C, O, CN and OU=Authenticator Attestation");

  Asn1ObjectPtr oid(OBJ_txt2obj(kAaguidExtensionOid, 1));
  if (!oid) throw std::bad_alloc();
  const int at = X509_get_ext_by_OBJ(cert.get(), oid.get(), -1);
  if (at >= 0) {
    X509_EXTENSION* ext = X509_get_ext(cert.get(), at);
    const ASN1_OCTET_STRING* value = X509_EXTENSION_get_data(ext);
    // The extension's value is itself DER: OCTET STRING (0x04), length 16, the AAGUID.
    const std::string want = std::string("\x04\x10", 2) + std::string(aaguid);
    if (X509_get_ext_by_OBJ(cert.get(), oid.get(), at) >= 0 || X509_EXTENSION_get_critical(ext) ||
        !value ||
        std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                         static_cast<std::size_t>(ASN1_STRING_length(value))) != want)
      throw Error("attestation", "the certificate's AAGUID extension differs from the AAGUID");
  }

  EVP_PKEY* key = X509_get0_pubkey(cert.get());  // owned by cert
  if (!key || !key_fits_alg(key, alg))
    throw Error("attestation", "the attestation certificate's key does not fit attStmt alg");
  if (!verify_signature(key, alg, msg, sig))
    throw Error("attestation", "the packed attestation signature does not verify");
}

void verify_packed(const cbor_item_t* stmt, const CoseKey& credential_key, std::string_view msg,
                   std::string_view aaguid) {
  const auto alg = cbor_int(map_get(stmt, "alg", "attestation"));
  const auto sig = cbor_bytes(map_get(stmt, "sig", "attestation"));
  const cbor_item_t* x5c = map_get(stmt, "x5c", "attestation");
  if (!alg || !sig || sig->size() > kMaxSignature)
    throw Error("attestation", "a packed attStmt needs an integer alg and a byte-string sig");
  if (map_get(stmt, "ecdaaKeyId", "attestation"))
    throw Error("attestation", "ECDAA attestation is not supported");
  if (!supported_alg(*alg)) throw Error("algorithm", "attStmt alg is not -7, -8 or -257");
  if (x5c) {
    verify_x5c(x5c, static_cast<int>(*alg), *sig, msg, aaguid);
    return;
  }
  if (*alg != credential_key.alg)
    throw Error("algorithm", "attStmt alg differs from the credential key's alg");
  if (!verify_signature(credential_key.pkey.get(), credential_key.alg, msg, *sig))
    throw Error("attestation", "the packed self-attestation signature does not verify");
}

}  // namespace

// --- public -------------------------------------------------------------------------------------

ClientData parse_client_data(std::string_view client_data_json_b64url) {
  ClientData cd;
  cd.raw =
      decode_b64url(client_data_json_b64url, kMaxClientDataJson, "client_data", "clientDataJSON");
  // Duplicate keys are refused (another parser could read the other value); the keys seen in each
  // open object are kept on a stack.
  std::vector<std::set<std::string>> keys;
  bool refused = false;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (depth > kMaxJsonDepth) refused = true;
    if (event == Event::object_start) {
      keys.emplace_back();
    } else if (event == Event::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == Event::key && parsed.is_string() && !keys.empty()) {
      if (!keys.back().insert(parsed.get<std::string>()).second) refused = true;
    }
    return true;
  };
  const nlohmann::json j = nlohmann::json::parse(cd.raw, callback, /*allow_exceptions=*/false);
  if (j.is_discarded() || refused || !j.is_object())
    throw Error("client_data", "clientDataJSON is not a JSON object (or repeats a key)");
  auto text = [&j](const char* name) -> std::string {
    const auto it = j.find(name);
    if (it == j.end() || !it->is_string() || it->get_ref<const std::string&>().empty())
      throw Error("client_data",
                  std::string("clientDataJSON.") + name + " is not a non-empty string");
    return it->get<std::string>();
  };
  cd.type = text("type");
  cd.challenge = text("challenge");
  cd.origin = text("origin");
  if (const auto it = j.find("crossOrigin"); it != j.end()) {
    if (!it->is_boolean())
      throw Error("client_data", "clientDataJSON.crossOrigin is not a boolean");
    cd.cross_origin = it->get<bool>();
  }
  return cd;
}

NewCredential verify_registration(const ClientData& cd, std::string_view attestation_object_b64url,
                                  const Expect& expect) {
  const ClearOpensslErrors clear_errors;
  check_client_data(cd, "webauthn.create", expect);

  const std::string att = decode_b64url(attestation_object_b64url, kMaxAttestationObject,
                                        "attestation", "attestationObject");
  const CborPtr obj = load_cbor(att, "attestation", "attestationObject");
  if (!is_map(obj.get())) throw Error("attestation", "attestationObject is not a CBOR map");
  const auto fmt = cbor_text(map_get(obj.get(), "fmt", "attestation"));
  const cbor_item_t* stmt = map_get(obj.get(), "attStmt", "attestation");
  const auto auth = cbor_bytes(map_get(obj.get(), "authData", "attestation"));
  if (!fmt || !stmt || !is_map(stmt) || !auth)
    throw Error("attestation",
                "attestationObject needs fmt (text), attStmt (map), authData (bytes)");
  if (*fmt != "none" && *fmt != "packed")
    throw Error("attestation", "unsupported attestation format (allowed: none, packed)");

  const AuthenticatorData ad = parse_authenticator_data(*auth, /*registration=*/true);
  check_authenticator_data(ad, expect);
  const CoseKey key = parse_cose_key(ad.cose_key);

  if (*fmt == "none") {
    if (cbor_map_size(stmt) != 0) throw Error("attestation", "fmt none needs an empty attStmt");
  } else {
    verify_packed(stmt, key, signed_data(*auth, cd.raw), ad.aaguid);
  }

  NewCredential out;
  out.id = std::string(ad.credential_id);
  out.cose_key = std::string(ad.cose_key);
  out.alg = key.alg;
  out.sign_count = ad.sign_count;
  out.backup_eligible = (ad.flags & kFlagBe) != 0;
  out.backup_state = (ad.flags & kFlagBs) != 0;
  out.user_verified = (ad.flags & kFlagUv) != 0;
  out.aaguid_hex = crypto::to_hex(bytes_of(ad.aaguid), ad.aaguid.size());
  out.fmt = std::string(*fmt);
  return out;
}

Assertion verify_assertion(const ClientData& cd, std::string_view authenticator_data_b64url,
                           std::string_view signature_b64url, const Stored& stored,
                           const Expect& expect) {
  const ClearOpensslErrors clear_errors;
  check_client_data(cd, "webauthn.get", expect);

  const std::string auth = decode_b64url(authenticator_data_b64url, kMaxAuthenticatorData,
                                         "authenticator_data", "authenticatorData");
  const std::string sig = decode_b64url(signature_b64url, kMaxSignature, "signature", "signature");
  const AuthenticatorData ad = parse_authenticator_data(auth, /*registration=*/false);
  check_authenticator_data(ad, expect);
  if (((ad.flags & kFlagBe) != 0) != stored.backup_eligible)
    throw Error("backup_state", "BE (backup eligible) differs from the stored credential's");
  // Synced passkeys report 0 every time; otherwise the count must grow (a clone lags behind).
  if ((ad.sign_count != 0 || stored.sign_count != 0) && ad.sign_count <= stored.sign_count)
    throw Error("sign_count", "the signature counter did not grow");

  const CoseKey key = parse_cose_key(stored.cose_key);
  if (key.alg != stored.alg)
    throw Error("algorithm", "the stored key's alg differs from Stored::alg");
  if (!verify_signature(key.pkey.get(), key.alg, signed_data(auth, cd.raw), sig))
    throw Error("signature", "the assertion signature does not verify");

  Assertion out;
  out.sign_count = ad.sign_count;
  out.backup_eligible = (ad.flags & kFlagBe) != 0;
  out.backup_state = (ad.flags & kFlagBs) != 0;
  out.user_verified = (ad.flags & kFlagUv) != 0;
  return out;
}

}  // namespace ag::control::webauthn
