// libFuzzer target for WebAuthn relying-party verification (src/control/service/webauthn.hpp):
// the control plane runs it on what a browser posts. Seed corpus: fuzz/corpus/webauthn/.
//
// Input: one control byte, then the payload.
//   control bits 0-1  0 registration: payload = attestationObject bytes
//                     1 assertion:    payload = u16 BE length · authenticatorData ·
//                                               u16 BE length · stored COSE key · signature
//                     2, 3 clientDataJSON: payload parsed as decoded JSON and as base64url text
//   bit 2             Expect::require_user_verification
//   bits 3-4          Stored::alg: -7, -8, -257, -7
//   bit 5             Stored::backup_eligible
//   bit 6             Stored::sign_count 5 (else 0)
// clientDataJSON is fixed for modes 0 and 1 (kCreateJson / kGetJson), so seeds can carry valid
// signatures over authenticatorData || SHA-256(it).
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>

#include "common/crypto.hpp"
#include "control/service/webauthn.hpp"

namespace {

namespace wa = ag::control::webauthn;

constexpr std::string_view kCreateJson =
    R"({"type":"webauthn.create","challenge":"ZnV6ei1jaGFsbGVuZ2UtMDAwMQ","origin":"http://localhost:8123","crossOrigin":false})";
constexpr std::string_view kGetJson =
    R"({"type":"webauthn.get","challenge":"ZnV6ei1jaGFsbGVuZ2UtMDAwMQ","origin":"http://localhost:8123","crossOrigin":false})";

const std::set<std::string>& known_codes() {
  static const std::set<std::string> codes = {"client_data",  "type",          "challenge",
                                              "origin",       "cross_origin",  "rp_id",
                                              "user_present", "user_verified", "backup_state",
                                              "sign_count",   "attestation",   "authenticator_data",
                                              "algorithm",    "signature"};
  return codes;
}

void check_error(const wa::Error& e) {
  if (!known_codes().count(e.code)) __builtin_trap();
}

struct Fixed {
  wa::ClientData create, get;
};

const Fixed& fixed() {
  static const Fixed f = [] {
    ag::crypto::init();
    return Fixed{wa::parse_client_data(ag::crypto::base64url_encode(kCreateJson)),
                 wa::parse_client_data(ag::crypto::base64url_encode(kGetJson))};
  }();
  return f;
}

// Takes a big-endian u16 length and that many bytes from the front of `in`; false when short.
bool take(std::string_view& in, std::string_view& out) {
  if (in.size() < 2) return false;
  const std::size_t len =
      static_cast<unsigned char>(in[0]) << 8 | static_cast<unsigned char>(in[1]);
  in.remove_prefix(2);
  if (len > in.size()) return false;
  out = in.substr(0, len);
  in.remove_prefix(len);
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Fixed& f = fixed();
  const unsigned control = data[0];
  std::string_view payload(reinterpret_cast<const char*>(data) + 1, size - 1);

  wa::Expect expect;
  expect.rp_id = "localhost";
  expect.origin = "http://localhost:8123";
  expect.challenge = "ZnV6ei1jaGFsbGVuZ2UtMDAwMQ";
  expect.require_user_verification = (control & 0x04) != 0;

  try {
    switch (control & 0x03) {
      case 0: {
        const wa::NewCredential c =
            wa::verify_registration(f.create, ag::crypto::base64url_encode(payload), expect);
        if (c.id.empty() || c.id.size() > 1023 || c.aaguid_hex.size() != 32 || c.cose_key.empty() ||
            (c.fmt != "none" && c.fmt != "packed") ||
            (c.alg != -7 && c.alg != -8 && c.alg != -257) ||
            (expect.require_user_verification && !c.user_verified) ||
            (c.backup_state && !c.backup_eligible))
          __builtin_trap();
        break;
      }
      case 1: {
        std::string_view auth, key;
        if (!take(payload, auth) || !take(payload, key)) return 0;
        static constexpr int kAlgs[] = {-7, -8, -257, -7};
        wa::Stored stored;
        stored.cose_key = std::string(key);
        stored.alg = kAlgs[(control >> 3) & 0x03];
        stored.backup_eligible = (control & 0x20) != 0;
        stored.sign_count = (control & 0x40) ? 5 : 0;
        const wa::Assertion a =
            wa::verify_assertion(f.get, ag::crypto::base64url_encode(auth),
                                 ag::crypto::base64url_encode(payload), stored, expect);
        if ((a.sign_count != 0 || stored.sign_count != 0) && a.sign_count <= stored.sign_count)
          __builtin_trap();
        if (a.backup_eligible != stored.backup_eligible ||
            (expect.require_user_verification && !a.user_verified))
          __builtin_trap();
        break;
      }
      default: {
        try {
          (void)wa::parse_client_data(payload);  // the raw bytes as base64url text
        } catch (const wa::Error& e) {
          check_error(e);
        }
        const wa::ClientData cd = wa::parse_client_data(ag::crypto::base64url_encode(payload));
        if (cd.type.empty() || cd.challenge.empty() || cd.origin.empty() || cd.raw != payload)
          __builtin_trap();
        break;
      }
    }
  } catch (const wa::Error& e) {
    check_error(e);  // anything other than Error escapes and libFuzzer reports it
  }
  return 0;
}
