#pragma once
#include <string_view>

namespace ag::gateway {

// Hop-by-hop headers (RFC 9110 7.6.1) plus proxy-only ones that are never forwarded.
bool is_hop_by_hop(std::string_view lower_name);

}  // namespace ag::gateway
