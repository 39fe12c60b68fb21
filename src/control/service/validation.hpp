#pragma once
// Field rules shared by the API handlers. Each returns an error message naming the rule
// (empty string = valid), so handlers can answer 422 with the field name in front.
#include <string>
#include <string_view>

#include "common/slug.hpp"

namespace ag::control {

std::string check_email(std::string_view email);
// Validates and normalises an upstream base URL in place (strips one trailing '/').
std::string check_upstream_url(std::string& url);
// Trims; 1..100 characters, no control characters.
std::string check_name(std::string& name, std::size_t max_len = 100);
// Project slugs and service names: ag::valid_slug (common/slug.hpp).

std::string lower_ascii(std::string_view s);

}  // namespace ag::control
