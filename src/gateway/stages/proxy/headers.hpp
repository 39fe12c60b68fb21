#pragma once
// Header helpers of the proxy stage: which fields never cross the proxy, and cheap writers.
#include <charconv>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "http/h1/http1.hpp"

namespace ag::gateway {

// Hop-by-hop headers (RFC 9110 7.6.1) plus proxy-only ones that are never forwarded.
bool is_hop_by_hop(std::string_view lower_name);

// The field names a Connection value lists as further hop-by-hop fields; "keep-alive" and
// "close" (the common values) name none, which spares a token search per forwarded field.
std::string_view connection_options(std::string_view connection);

using http1::has_underscore;

inline void append_num(std::string& out, std::uint64_t v) {
  char buf[24];
  out.append(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
}

// Header names are compared in lower case; this lowers into a stack buffer (no allocation).
struct LowerName {
  explicit LowerName(std::string_view s) {
    len = s.size() < sizeof buf ? s.size() : sizeof buf;
    for (std::size_t i = 0; i < len; ++i) {
      char c = s[i];
      buf[i] = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    }
  }
  std::string_view view() const { return {buf, len}; }
  char buf[64];
  std::size_t len;
};

}  // namespace ag::gateway
