#include "control/service/validation.hpp"

#include <charconv>

namespace ag::control {

std::string lower_ascii(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string check_email(std::string_view email) {
  if (email.empty() || email.size() > 254) return "must be an email address of at most 254 characters";
  auto at = email.find('@');
  if (at == std::string_view::npos || at == 0 || email.find('@', at + 1) != std::string_view::npos)
    return "must be an email address";
  auto domain = email.substr(at + 1);
  if (domain.empty() || domain.find('.') == std::string_view::npos || domain.front() == '.' ||
      domain.back() == '.' || domain.find("..") != std::string_view::npos)
    return "must be an email address";
  for (char c : email)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '<' || c == '>' || c == ',' ||
        c == ';' || c == '"' || c == '\\')
      return "must be an email address";
  return {};
}

std::string check_upstream_url(std::string& url) {
  if (url.size() > 2048) return "must be at most 2048 characters";
  std::string_view u = url;
  std::size_t scheme_len = 0;
  if (lower_ascii(u.substr(0, 7)) == "http://") scheme_len = 7;
  else if (lower_ascii(u.substr(0, 8)) == "https://") scheme_len = 8;
  else return "must be an absolute http:// or https:// URL";
  for (char c : u)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return "must not contain spaces or control characters";
  if (u.find('?') != std::string_view::npos) return "must not contain a query string";
  if (u.find('#') != std::string_view::npos) return "must not contain a fragment";
  auto rest = u.substr(scheme_len);
  auto slash = rest.find('/');
  auto authority = rest.substr(0, slash);
  if (authority.find('@') != std::string_view::npos) return "must not contain user info";
  if (authority.empty()) return "must include a host";
  std::string_view host = authority, port;
  if (authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos || close == 1) return "has an invalid IPv6 host";
    host = authority.substr(0, close + 1);
    auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return "has an invalid host";
      port = after.substr(1);
      if (port.empty()) return "has an empty port";
    }
  } else if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    if (port.empty()) return "has an empty port";
  }
  if (host.empty()) return "must include a host";
  if (host.front() != '[') {
    for (char c : host)
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
        return "has an invalid host";
  }
  if (!port.empty()) {
    unsigned p = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc{} || ptr != port.data() + port.size() || p < 1 || p > 65535)
      return "port must be 1-65535";
  }
  if (!url.empty() && url.back() == '/' && url.size() > scheme_len + authority.size()) url.pop_back();
  url.replace(0, scheme_len, scheme_len == 7 ? "http://" : "https://");  // the worker expects lower case
  return {};
}

std::string check_name(std::string& name, std::size_t max_len) {
  auto b = name.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "must not be empty";
  name = name.substr(b, name.find_last_not_of(" \t\r\n") - b + 1);
  // Count code points, not bytes.
  std::size_t chars = 0;
  for (unsigned char c : name) {
    if ((c & 0xC0) != 0x80) ++chars;
    if (c < 0x20 || c == 0x7f) return "must not contain control characters";
  }
  if (chars > max_len) return "must be at most " + std::to_string(max_len) + " characters";
  return {};
}


}  // namespace ag::control
