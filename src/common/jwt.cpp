#include "common/jwt.hpp"

#include <nlohmann/json.hpp>

namespace ag::jwt {

std::optional<Algorithm> parse_algorithm(std::string_view name) {
  if (name == "HS256") return Algorithm{crypto::HmacAlg::kSha256, "HS256"};
  if (name == "HS384") return Algorithm{crypto::HmacAlg::kSha384, "HS384"};
  if (name == "HS512") return Algorithm{crypto::HmacAlg::kSha512, "HS512"};
  return std::nullopt;
}

std::string sign(const Algorithm& alg, std::string_view key, std::string_view payload_json) {
  std::string header = R"({"alg":")" + std::string(alg.name) + R"(","typ":"JWT"})";
  std::string input = crypto::base64url_encode(header) + '.' + crypto::base64url_encode(payload_json);
  std::string sig = crypto::hmac(alg.hmac, key, input);
  return input + '.' + crypto::base64url_encode(sig);
}

Verified verify(const Algorithm& alg, std::string_view key, std::string_view token) {
  Verified out;
  if (token.empty() || token.size() > kMaxTokenLength) return out;
  auto d1 = token.find('.');
  if (d1 == std::string_view::npos) return out;
  auto d2 = token.find('.', d1 + 1);
  if (d2 == std::string_view::npos || token.find('.', d2 + 1) != std::string_view::npos) return out;
  auto header = crypto::base64url_decode(token.substr(0, d1));
  auto payload = crypto::base64url_decode(token.substr(d1 + 1, d2 - d1 - 1));
  auto sig = crypto::base64url_decode(token.substr(d2 + 1));
  if (!header || !payload || !sig) return out;
  auto h = nlohmann::json::parse(*header, nullptr, false);
  if (!h.is_object()) return out;
  auto a = h.find("alg");
  if (a == h.end() || !a->is_string() || a->get_ref<const std::string&>() != alg.name) {
    out.error = VerifyError::kAlgorithm;
    return out;
  }
  std::string expected = crypto::hmac(alg.hmac, key, token.substr(0, d2));
  if (!crypto::constant_time_equal(expected, *sig)) {
    out.error = VerifyError::kSignature;
    return out;
  }
  auto p = nlohmann::json::parse(*payload, nullptr, false);
  if (!p.is_object()) return out;
  out.payload = std::move(*payload);
  return out;
}

}  // namespace ag::jwt
