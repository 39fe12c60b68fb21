// Service-token verification state: JWT public keys and revoked token ids.
#include "common/time.hpp"
#include "config/sections/sections.hpp"

namespace ag::config::sections {

bool parse_jwt_keys(simdjson::dom::array keys, const std::string& where, TokenState& ts, Parser& p) {
  std::size_t i = 0;
  ts.key_specs.clear();
  ts.keys.keys.clear();
  ts.keys_generation = ++p.ctx->keys_generation;
  for (simdjson::dom::element ke : keys) {
    std::string kw = where + "[" + std::to_string(i++) + "]";
    simdjson::dom::object ko;
    std::string_view kid, alg, pem;
    if (ke.get_object().get(ko) || ko["kid"].get_string().get(kid) || kid.empty())
      return p.fail(kw + ".kid", "must be a non-empty string");
    if (ko["alg"].get_string().get(alg)) return p.fail(kw + ".alg", "must be ES256 or EdDSA");
    auto a = jwt::parse_key_alg(alg);
    if (!a || *a == jwt::KeyAlg::kHS256) return p.fail(kw + ".alg", "must be ES256 or EdDSA");
    if (ko["public_key"].get_string().get(pem)) return p.fail(kw + ".public_key", "must be a PEM string");
    auto key = jwt::ServiceKey::from_pem(std::string(kid), *a, pem);
    if (!key) return p.fail(kw + ".public_key", "is not a valid " + std::string(alg) + " public key");
    ts.key_specs.push_back({std::string(kid), std::string(alg), std::string(pem)});
    ts.keys.keys.push_back(std::move(key));
  }
  return true;
}

bool parse_revocation(simdjson::dom::object ro, const std::string& where, TokenState& ts, Parser& p) {
  std::string_view jti, exp;
  if (ro["jti"].get_string().get(jti) || jti.empty()) return p.fail(where + ".jti", "must be a non-empty string");
  std::int64_t exp_ms = 0;
  simdjson::dom::element ee;
  if (!ro["expires_at"].get(ee) && !ee.is_null()) {
    if (ee.get_string().get(exp) || (exp_ms = parse_rfc3339(exp)) < 0)
      return p.fail(where + ".expires_at", "must be an RFC 3339 UTC time or null");
  }
  ts.revoked[std::string(jti)] = exp_ms;
  return true;
}

bool parse_tokens(simdjson::dom::object root, TokenState& ts, Parser& p) {
  ts.keys.hmac = p.ctx->hmac_key;
  ts.keys_generation = ++p.ctx->keys_generation;
  simdjson::dom::element e;
  if (!root["jwt_keys"].get(e) && !e.is_null()) {
    simdjson::dom::array keys;
    if (e.get_array().get(keys)) return p.fail("jwt_keys", "must be an array");
    if (!parse_jwt_keys(keys, "jwt_keys", ts, p)) return false;
  }
  if (!root["revoked_tokens"].get(e) && !e.is_null()) {
    simdjson::dom::array revs;
    if (e.get_array().get(revs)) return p.fail("revoked_tokens", "must be an array");
    std::size_t i = 0;
    for (simdjson::dom::element re : revs) {
      std::string rw = "revoked_tokens[" + std::to_string(i++) + "]";
      simdjson::dom::object ro;
      if (re.get_object().get(ro)) return p.fail(rw, "must be an object");
      if (!parse_revocation(ro, rw, ts, p)) return false;
    }
  }
  return true;
}

}  // namespace ag::config::sections
