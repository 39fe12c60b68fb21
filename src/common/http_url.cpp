#include "common/http_url.hpp"

#include <charconv>

#include "common/ascii.hpp"

namespace ag {

std::string parse_http_url(std::string_view u, HttpUrl& out) {
  std::size_t scheme_len = 0;
  if (iequals_ascii(u.substr(0, 7), "http://")) scheme_len = 7;
  else if (iequals_ascii(u.substr(0, 8), "https://")) scheme_len = 8;
  else return "must be an absolute http:// or https:// URL";
  out.tls = scheme_len == 8;
  for (char c : u)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return "must not contain spaces or control characters";
  if (u.find('?') != std::string_view::npos) return "must not contain a query string";
  if (u.find('#') != std::string_view::npos) return "must not contain a fragment";
  auto rest = u.substr(scheme_len);
  auto slash = rest.find('/');
  auto authority = rest.substr(0, slash);
  out.path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash);
  if (authority.find('@') != std::string_view::npos) return "must not contain user info";
  if (authority.empty()) return "must include a host";
  std::string_view host = authority, port;
  if (authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos || close == 1) return "has an invalid IPv6 host";
    host = authority.substr(1, close - 1);
    auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return "has an invalid host";
      port = after.substr(1);
      if (port.empty()) return "has an empty port";
    }
  } else {
    if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
      host = authority.substr(0, colon);
      port = authority.substr(colon + 1);
      if (port.empty()) return "has an empty port";
    }
    if (host.empty()) return "must include a host";
    for (char c : host)
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
        return "has an invalid host";
  }
  out.port = out.tls ? 443 : 80;
  if (!port.empty()) {
    unsigned p = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc{} || ptr != port.data() + port.size() || p < 1 || p > 65535) return "port must be 1-65535";
    out.port = static_cast<std::uint16_t>(p);
  }
  out.authority = authority;
  out.host = host;
  return {};
}

}  // namespace ag
