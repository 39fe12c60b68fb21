#pragma once
// The one parser of upstream URLs, shared by the control plane (validating what users store) and
// the worker (reading its config, from the control plane or a file).
#include <cstdint>
#include <string>
#include <string_view>

namespace ag {

struct HttpUrl {
  bool tls = false;            // https://
  std::string_view authority;  // host[:port] as written, e.g. "[::1]:8080"
  std::string_view host;       // without an IPv6 address's brackets
  std::uint16_t port = 0;      // as written, or the scheme's default (80, 443)
  std::string_view path;       // "" or everything from the first '/'
};

// An absolute http:// or https:// URL (scheme in any case) without user info, query, fragment,
// spaces or control characters; a host of letters, digits, '-' and '.', or a bracketed IPv6
// address; a port of 1-65535. Returns "" (and fills `out`, views into `url`) or what is wrong,
// e.g. "must include a host".
std::string parse_http_url(std::string_view url, HttpUrl& out);

}  // namespace ag
