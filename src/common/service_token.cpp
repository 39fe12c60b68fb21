// Service-token verification (service_token.hpp): the token's segments decoded strictly into a
// stack buffer, the header's algorithm bound to the key's, the signature, then the claims.
#include "common/service_token.hpp"

#include <simdjson.h>

#include <climits>
#include <cstring>

#include "common/ascii.hpp"
#include "common/service_token_internal.hpp"
#include "common/slug.hpp"

namespace ag::jwt {

namespace {

using namespace detail;

// Every decoded segment fits here: together they are at most 3/4 of the token's length.
constexpr std::size_t kDecodeBufferSize = kMaxServiceTokenLength / 4 * 3 + 3 * simdjson::SIMDJSON_PADDING + 16;

// A token split into its segments and decoded into a caller's stack buffer; the header and the
// payload are each followed by SIMDJSON_PADDING zero bytes for the JSON parser.
struct Decoded {
  std::string_view signing_input;
  const unsigned char* header = nullptr;
  std::size_t header_len = 0;
  const unsigned char* payload = nullptr;
  std::size_t payload_len = 0;
  const unsigned char* sig = nullptr;
  std::size_t sig_len = 0;
};

TokenError decode_token(std::string_view token, unsigned char* buf, Decoded& d) {
  if (token.size() > kMaxServiceTokenLength) return TokenError::kTooLarge;
  const std::size_t d1 = token.find('.');
  if (d1 == std::string_view::npos) return TokenError::kMalformed;
  const std::size_t d2 = token.find('.', d1 + 1);
  if (d2 == std::string_view::npos || token.find('.', d2 + 1) != std::string_view::npos)
    return TokenError::kMalformed;
  std::string_view segs[3] = {token.substr(0, d1), token.substr(d1 + 1, d2 - d1 - 1), token.substr(d2 + 1)};
  std::size_t pos = 0;
  std::size_t lens[3] = {};
  const unsigned char* starts[3] = {};
  for (int i = 0; i < 3; ++i) {
    const std::size_t padding = i < 2 ? simdjson::SIMDJSON_PADDING : 0;
    if (pos + padding > kDecodeBufferSize) return TokenError::kMalformed;
    if (!b64url_decode(segs[i], buf + pos, kDecodeBufferSize - pos - padding, lens[i])) return TokenError::kMalformed;
    starts[i] = buf + pos;
    std::memset(buf + pos + lens[i], 0, padding);
    pos += lens[i] + padding;
  }
  d.signing_input = token.substr(0, d2);
  d.header = starts[0];
  d.header_len = lens[0];
  d.payload = starts[1];
  d.payload_len = lens[1];
  d.sig = starts[2];
  d.sig_len = lens[2];
  return TokenError::kNone;
}

simdjson::dom::parser& thread_parser() {
  struct Holder {
    simdjson::dom::parser parser{kMaxServiceTokenLength};
    Holder() {
      // Reserved up front so that no token makes the parser grow; on failure it grows on demand.
      if (parser.allocate(kMaxServiceTokenLength) != simdjson::SUCCESS) return;
    }
  };
  thread_local Holder h;
  return h.parser;
}

enum class HeaderAlg { kHS256, kES256, kEdDSA, kOther };

struct Header {
  HeaderAlg alg = HeaderAlg::kOther;
  bool has_kid = false;
  std::string_view kid;  // valid until the parser's next document
};

TokenError parse_header(simdjson::dom::parser& parser, const Decoded& d, Header& h) {
  simdjson::dom::element doc;
  simdjson::dom::object obj;
  if (parser.parse(d.header, d.header_len, false).get(doc) || doc.get_object().get(obj)) return TokenError::kMalformed;
  bool has_alg = false, has_typ = false;
  std::string_view alg;
  for (simdjson::dom::key_value_pair field : obj) {
    const std::string_view key = field.key;
    if (key == "alg") {
      if (has_alg || field.value.get_string().get(alg)) return TokenError::kMalformed;
      has_alg = true;
    } else if (key == "typ") {
      std::string_view typ;
      if (has_typ || field.value.get_string().get(typ) || !iequals_ascii(typ, "JWT")) return TokenError::kMalformed;
      has_typ = true;
    } else if (key == "kid") {
      if (h.has_kid || field.value.get_string().get(h.kid)) return TokenError::kMalformed;
      h.has_kid = true;
    } else if (key == "crit") {
      return TokenError::kMalformed;  // no extension is understood
    }
  }
  if (!has_alg) return TokenError::kMalformed;
  h.alg = alg == "HS256"   ? HeaderAlg::kHS256
          : alg == "ES256" ? HeaderAlg::kES256
          : alg == "EdDSA" ? HeaderAlg::kEdDSA
                           : HeaderAlg::kOther;
  return TokenError::kNone;
}

bool header_alg_is(HeaderAlg h, KeyAlg k) {
  switch (k) {
    case KeyAlg::kHS256:
      return h == HeaderAlg::kHS256;
    case KeyAlg::kES256:
      return h == HeaderAlg::kES256;
    case KeyAlg::kEdDSA:
      return h == HeaderAlg::kEdDSA;
  }
  return false;
}


std::int64_t sat_add(std::int64_t a, std::int64_t b) {
  std::int64_t r;
  if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}
std::int64_t sat_sub(std::int64_t a, std::int64_t b) {
  std::int64_t r;
  if (__builtin_sub_overflow(a, b, &r)) return b > 0 ? INT64_MIN : INT64_MAX;
  return r;
}

// Integer claim: a JSON integer that fits int64 (no fraction, no exponent).
bool get_int_claim(simdjson::dom::element v, std::int64_t& out) {
  return v.type() == simdjson::dom::element_type::INT64 && !v.get_int64().get(out);
}

TokenError check_claims(simdjson::dom::parser& parser, const Decoded& d, const ClaimsOptions& opt,
                        ServiceClaims& out) {
  simdjson::dom::element doc;
  simdjson::dom::object obj;
  if (parser.parse(d.payload, d.payload_len, false).get(doc) || doc.get_object().get(obj))
    return TokenError::kMalformed;

  enum : unsigned { kJti = 1, kProject = 2, kService = 4, kIat = 8, kExp = 16, kNbf = 32, kAud = 64, kIss = 128 };
  unsigned seen = 0;
  std::string_view jti, project, service, iss;
  std::int64_t iat = 0, exp = 0, nbf = 0;
  simdjson::dom::element aud;
  auto once = [&seen](unsigned bit) {
    if (seen & bit) return false;  // duplicate claim
    seen |= bit;
    return true;
  };
  for (simdjson::dom::key_value_pair field : obj) {
    const std::string_view key = field.key;
    const simdjson::dom::element v = field.value;
    bool ok = true;
    if (key == "jti") {
      ok = once(kJti) && !v.get_string().get(jti);
    } else if (key == "project") {
      ok = once(kProject) && !v.get_string().get(project);
    } else if (key == "service") {
      ok = once(kService) && !v.get_string().get(service);
    } else if (key == "iat") {
      ok = once(kIat) && get_int_claim(v, iat);
    } else if (key == "exp") {
      ok = once(kExp) && get_int_claim(v, exp);
    } else if (key == "nbf") {
      ok = once(kNbf) && get_int_claim(v, nbf);
    } else if (key == "iss") {
      ok = once(kIss) && !v.get_string().get(iss);
    } else if (key == "aud") {
      ok = once(kAud);
      aud = v;
      if (ok && !v.is_string()) {
        simdjson::dom::array arr;
        ok = !v.get_array().get(arr);
        if (ok)
          for (simdjson::dom::element e : arr) ok = ok && e.is_string();
      }
    }
    if (!ok) return TokenError::kBadClaim;
  }
  constexpr unsigned kRequired = kJti | kProject | kService | kIat | kExp;
  if ((seen & kRequired) != kRequired) return TokenError::kMissingClaim;
  if (jti.empty() || jti.size() > kMaxJtiLength || !valid_slug(project) || !valid_slug(service))
    return TokenError::kBadClaim;

  const std::int64_t leeway = opt.leeway_s > 0 ? opt.leeway_s : 0;
  if (exp <= sat_sub(opt.now_s, leeway)) return TokenError::kExpired;
  if ((seen & kNbf) && nbf > sat_add(opt.now_s, leeway)) return TokenError::kNotYetValid;
  if (iat > sat_add(opt.now_s, leeway)) return TokenError::kIssuedInFuture;

  // A configured audience or issuer is required, as standard JWT libraries do.
  if (!(seen & kAud) && !opt.audience.empty()) return TokenError::kAudience;
  if (!(seen & kIss) && !opt.issuer.empty()) return TokenError::kIssuer;
  if (seen & kAud) {
    if (opt.audience.empty()) return TokenError::kAudience;
    bool match = false;
    std::string_view s;
    if (!aud.get_string().get(s)) {
      match = s == opt.audience;
    } else {
      simdjson::dom::array arr;
      if (!aud.get_array().get(arr))
        for (simdjson::dom::element e : arr)
          if (!e.get_string().get(s) && s == opt.audience) match = true;
    }
    if (!match) return TokenError::kAudience;
  }
  if ((seen & kIss) && !opt.issuer.empty() && iss != opt.issuer) return TokenError::kIssuer;

  out.jti.assign(jti);
  out.project.assign(project);
  out.service.assign(service);
  out.iat = iat;
  out.exp = exp;
  out.nbf = (seen & kNbf) ? nbf : 0;
  return TokenError::kNone;
}

void clear(ServiceClaims& out) {
  out.jti.clear();
  out.project.clear();
  out.service.clear();
  out.kid.clear();
  out.iat = out.exp = out.nbf = 0;
  out.alg = KeyAlg::kHS256;
}

TokenError verify_impl(const KeySet& keys, std::string_view token, const ClaimsOptions& opt, ServiceClaims& out) {
  if (token.size() > kMaxServiceTokenLength) return TokenError::kTooLarge;
  unsigned char buf[kDecodeBufferSize];
  Decoded d;
  if (auto e = decode_token(token, buf, d); e != TokenError::kNone) return e;
  auto& parser = thread_parser();
  Header h;
  if (auto e = parse_header(parser, d, h); e != TokenError::kNone) return e;

  const ServiceKey* key = nullptr;
  switch (h.alg) {
    case HeaderAlg::kHS256:
      key = keys.hmac.get();  // the header's kid plays no part
      if (!key) return TokenError::kUnknownKey;
      if (key->alg() != KeyAlg::kHS256) return TokenError::kAlgorithm;
      break;
    case HeaderAlg::kES256:
    case HeaderAlg::kEdDSA:
      key = h.has_kid ? keys.find(h.kid) : nullptr;
      if (!key) return TokenError::kUnknownKey;
      if (!header_alg_is(h.alg, key->alg())) return TokenError::kAlgorithm;
      break;
    case HeaderAlg::kOther:
      return TokenError::kAlgorithm;
  }
  if (!key->verify(d.signing_input, d.sig, d.sig_len)) return TokenError::kSignature;
  if (auto e = check_claims(parser, d, opt, out); e != TokenError::kNone) return e;
  out.kid = key->kid();
  out.alg = key->alg();
  return TokenError::kNone;
}

}  // namespace

TokenError verify_service_token(const KeySet& keys, std::string_view token, const ClaimsOptions& opt,
                                ServiceClaims& out) {
  try {
    clear(out);
    TokenError e = verify_impl(keys, token, opt, out);
    if (e != TokenError::kNone) clear(out);
    return e;
  } catch (...) {  // allocation failure: the token is refused
    clear(out);
    return TokenError::kMalformed;
  }
}

TokenError verify_signature_only(const ServiceKey& key, std::string_view token) {
  try {
    if (token.size() > kMaxServiceTokenLength) return TokenError::kTooLarge;
    unsigned char buf[kDecodeBufferSize];
    Decoded d;
    if (auto e = decode_token(token, buf, d); e != TokenError::kNone) return e;
    Header h;
    if (auto e = parse_header(thread_parser(), d, h); e != TokenError::kNone) return e;
    if (!header_alg_is(h.alg, key.alg())) return TokenError::kAlgorithm;
    return key.verify(d.signing_input, d.sig, d.sig_len) ? TokenError::kNone : TokenError::kSignature;
  } catch (...) {
    return TokenError::kMalformed;
  }
}

}  // namespace ag::jwt