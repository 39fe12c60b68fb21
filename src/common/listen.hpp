#pragma once
// Listen addresses ("host:port") as the settings and command-line flags give them.
#include <cstdint>
#include <string>

namespace ag {

// Parses "host:port" (IPv6 as "[::1]:8000"; an empty host is 0.0.0.0); throws
// std::invalid_argument naming `what` (the variable or flag) and the value.
void parse_listen(const std::string& value, const char* what, std::string& host, std::uint16_t& port);

}  // namespace ag
