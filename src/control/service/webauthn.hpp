#pragma once
// WebAuthn Level 3 relying-party verification (https://www.w3.org/TR/webauthn-3/ §7.1, §7.2):
// checks what navigator.credentials.create() and .get() return. No I/O and no state: the caller
// issues and remembers challenges, stores credentials and their sign counts, and maps an Error to
// its HTTP answer.
//
// Supported: COSE algorithms -7 (ES256, P-256), -8 (EdDSA, Ed25519), -257 (RS256, 2048–4096-bit
// RSA); attestation formats "none" and "packed" (self attestation, or x5c checked without a trust
// store: the certificate's form is checked, not who issued it).
//
// Every refusal throws Error; its `code` is stable (the HTTP layer and the logs use it):
//   client_data         clientDataJSON not base64url, too large (16 KiB), not a JSON object,
//                       duplicate keys, nested deeper than 16, or type/challenge/origin missing,
//                       empty or not strings, crossOrigin not a boolean
//   type                clientDataJSON.type is not webauthn.create / webauthn.get
//   challenge           clientDataJSON.challenge differs from the one issued (or none was issued)
//   origin              clientDataJSON.origin is not exactly Expect::origin
//   cross_origin        clientDataJSON.crossOrigin is true
//   rp_id               authenticatorData's rpIdHash is not SHA-256(Expect::rp_id)
//   user_present        UP flag clear
//   user_verified       UV flag clear while Expect::require_user_verification
//   backup_state        BS set without BE, or (assertion) BE differs from the stored credential's
//   sign_count          (new != 0 || stored != 0) && new <= stored
//   attestation         attestationObject not base64url, over 64 KiB, not one well-formed CBOR map
//                       {fmt, attStmt, authData}; fmt other than none/packed; a non-empty attStmt
//                       for none; a packed attStmt without alg/sig, with ecdaaKeyId, a signature
//                       that does not verify, or an x5c certificate that is not DER, not v3, a CA,
//                       without the attestation subject fields, whose AAGUID extension differs
//                       from the authenticator's, or whose key does not fit alg
//   authenticator_data  not base64url, shorter than 37 bytes, AT clear on registration or set on
//                       an assertion, credential id over 1023 bytes, a COSE key or extensions that
//                       are not well-formed CBOR, bytes after the last part
//   algorithm           COSE key of an unsupported kty/crv/alg or malformed (sizes, point not on
//                       the curve, RSA outside 2048–4096 bits), packed self attestation whose alg
//                       differs from the key's, an unsupported x5c alg, or a stored key whose alg
//                       differs from Stored::alg
//   signature           the assertion signature is not base64url, over 1 KiB, or does not verify
//
// Check order (as py_webauthn, SimpleWebAuthn, webauthn-rs): clientData type, challenge, origin,
// crossOrigin; then authenticatorData rpIdHash, UP, UV, BS/BE; then (assertion) sign count and
// signature, (registration) the credential key and the attestation statement.
//
// Thread-safe: no shared mutable state. Leaves the thread's OpenSSL error queue empty.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ag::control::webauthn {

struct Error : std::runtime_error {
  Error(std::string error_code, const std::string& message);
  std::string code;
};

struct ClientData {
  std::string type;
  std::string challenge;  // base64url, as sent
  std::string origin;
  bool cross_origin = false;
  std::string raw;  // the decoded clientDataJSON bytes (what the authenticator's signature hashes)
};

// Decodes and parses clientDataJSON (base64url, no padding). Throws Error("client_data").
ClientData parse_client_data(std::string_view client_data_json_b64url);

// What the relying party expects of one ceremony.
struct Expect {
  std::string rp_id;      // e.g. "localhost"
  std::string origin;     // exact string, e.g. "http://localhost:8123"
  std::string challenge;  // base64url (no padding) as issued
  bool require_user_verification = true;
};

// A verified new credential, ready to store.
struct NewCredential {
  std::string id;        // raw credential id bytes (from attested credential data)
  std::string cose_key;  // the COSE_Key CBOR bytes, stored as is
  int alg = 0;           // -7 ES256, -8 EdDSA, -257 RS256
  std::uint32_t sign_count = 0;
  bool backup_eligible = false, backup_state = false, user_verified = false;
  std::string aaguid_hex;  // 32 lower-case hex characters
  std::string fmt;         // "none" or "packed"
};

// Registration ceremony (clientData type "webauthn.create").
NewCredential verify_registration(const ClientData& cd, std::string_view attestation_object_b64url,
                                  const Expect& expect);

// A credential as stored at registration.
struct Stored {
  std::string cose_key;
  int alg = 0;
  std::uint32_t sign_count = 0;
  bool backup_eligible = false;
};

// What a verified assertion tells the caller to store (sign_count, backup_state).
struct Assertion {
  std::uint32_t sign_count = 0;
  bool backup_eligible = false, backup_state = false, user_verified = false;
};

// Authentication ceremony (clientData type "webauthn.get"); the signature covers
// authenticatorData || SHA-256(clientDataJSON raw bytes).
Assertion verify_assertion(const ClientData& cd, std::string_view authenticator_data_b64url,
                           std::string_view signature_b64url, const Stored& stored,
                           const Expect& expect);

}  // namespace ag::control::webauthn
