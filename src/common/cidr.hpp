#pragma once
// IP address ranges (CIDR) for trusted proxies and allow/deny lists. IPv4 is held as
// IPv4-mapped IPv6 so one comparison covers both families.
#include <string>
#include <string_view>
#include <vector>

namespace ag {

struct Cidr {
  unsigned char addr[16] = {};  // IPv4 as IPv4-mapped IPv6
  int prefix = 0;               // in IPv6 bits
};
// Parses "10.0.0.0/8, ::1/128, 192.168.1.5"; throws std::invalid_argument naming the bad entry.
std::vector<Cidr> parse_cidrs(std::string_view list);
bool cidr_contains(const std::vector<Cidr>& cidrs, std::string_view ip);
// An allow/deny pair: true when `ip` is denied, or an allow list is set and `ip` is not on it.
inline bool cidr_refused(const std::vector<Cidr>& deny, const std::vector<Cidr>& allow, std::string_view ip) {
  return (!deny.empty() && cidr_contains(deny, ip)) || (!allow.empty() && !cidr_contains(allow, ip));
}
// A textual IPv4 or IPv6 address -> 16 bytes (IPv4-mapped for IPv4); false when not an address.
bool parse_ip(std::string_view s, unsigned char out[16]);

}  // namespace ag
