#pragma once
// The field readers every section parser of the worker-config document uses (sections.hpp), and
// the `Parser` they share: the first error, named by its path ("projects[3].rate_limit.burst"),
// and the build's context (context.hpp).
#include <simdjson.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/cidr.hpp"
#include "config/context.hpp"
#include "config/snapshot.hpp"

namespace ag::config::sections {

struct Parser {
  explicit Parser(BuildContext* c = nullptr) : ctx(c) {}
  BuildContext* ctx;  // null only for a lone risk object (parse_risk_policy)
  std::string error;
  bool fail(std::string where, std::string_view what) {
    if (error.empty()) error = where + ": " + std::string(what);
    return false;
  }
};

// Parses `json_text` into `doc` (which lives as long as `parser`); false with `error` set.
bool parse_json(simdjson::dom::parser& parser, std::string_view json_text, simdjson::dom::element& doc,
                std::string& error);

std::string to_hex_digest(const KeyDigest& d);
// Table-driven: a million keys per full document made the branchy version a top entry in profiles.
inline constexpr std::array<std::int8_t, 256> kHexValue = [] {
  std::array<std::int8_t, 256> t{};
  for (auto& v : t) v = -1;
  for (int c = '0'; c <= '9'; ++c) t[c] = static_cast<std::int8_t>(c - '0');
  for (int c = 'a'; c <= 'f'; ++c) t[c] = static_cast<std::int8_t>(c - 'a' + 10);
  for (int c = 'A'; c <= 'F'; ++c) t[c] = static_cast<std::int8_t>(c - 'A' + 10);
  return t;
}();
bool hex_digest(std::string_view hex, KeyDigest& out);

// An upstream URL (common/http_url.hpp) into `u`, without resolving it; an error or "".
std::string parse_upstream(std::string_view url, Upstream& u);

// {"requests_per_minute", "burst"}.
bool get_policy(simdjson::dom::element obj, const std::string& where, RatePolicy& out, Parser& p);
// Optional fields (absent or null: `out` keeps its default), checked against their range.
bool get_int_in(simdjson::dom::object o, std::string_view field, std::int64_t lo, std::int64_t hi,
                const std::string& where, std::int64_t& out, Parser& p);
bool get_double_in(simdjson::dom::object o, std::string_view field, double lo, double hi, const std::string& where,
                   double& out, Parser& p);
bool get_cidr_list(simdjson::dom::object o, std::string_view field, const std::string& where, std::vector<Cidr>& out,
                   Parser& p);


}  // namespace ag::config::sections
