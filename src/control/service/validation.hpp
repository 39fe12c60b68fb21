#pragma once
// Field rules shared by the API handlers. Each returns an error message naming the rule
// (empty string = valid), so handlers can answer 422 with the field name in front.
#include <string>
#include <string_view>

namespace ag::control {

std::string check_email(std::string_view email);
// Validates and normalises an upstream base URL in place (strips one trailing '/').
std::string check_upstream_url(std::string& url);
// Trims; 1..100 characters, no control characters.
std::string check_name(std::string& name, std::size_t max_len = 100);
// Project slugs, service names and the token claims naming them: ^[a-z0-9_-]{1,63}$.
bool valid_slug(std::string_view s);

std::string lower_ascii(std::string_view s);

}  // namespace ag::control
