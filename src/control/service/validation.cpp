#include "control/service/validation.hpp"

#include "common/http_url.hpp"

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
  HttpUrl u;
  if (auto error = parse_http_url(url, u); !error.empty()) return error;
  const std::size_t scheme_len = u.tls ? 8 : 7;
  if (url.back() == '/' && url.size() > scheme_len + u.authority.size()) url.pop_back();
  url.replace(0, scheme_len, u.tls ? "https://" : "http://");  // the worker expects lower case
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
