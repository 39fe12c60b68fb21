#include "common/cidr.hpp"

#include <arpa/inet.h>

#include <cstring>
#include <stdexcept>

#include "common/ascii.hpp"

namespace ag {

bool parse_ip(std::string_view s, unsigned char out[16]) {
  char buf[64];
  if (s.empty() || s.size() >= sizeof buf) return false;
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  in_addr v4;
  if (inet_pton(AF_INET, buf, &v4) == 1) {
    std::memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    std::memcpy(out + 12, &v4, 4);
    return true;
  }
  return inet_pton(AF_INET6, buf, out) == 1;
}

std::vector<Cidr> parse_cidrs(std::string_view list) {
  std::vector<Cidr> out;
  while (!list.empty()) {
    auto comma = list.find(',');
    std::string_view item = trim_ows(list.substr(0, comma));
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
    if (item.empty()) continue;
    Cidr c;
    auto slash = item.find('/');
    std::string_view addr = item.substr(0, slash);
    if (!parse_ip(addr, c.addr)) throw std::invalid_argument("invalid address in CIDR list: '" + std::string(item) + "'");
    bool v4 = addr.find(':') == std::string_view::npos;
    int max = v4 ? 32 : 128;
    int prefix = max;
    if (slash != std::string_view::npos) {
      auto p = item.substr(slash + 1);
      prefix = 0;
      if (p.empty() || p.size() > 3) throw std::invalid_argument("invalid prefix in CIDR list: '" + std::string(item) + "'");
      for (char ch : p) {
        if (ch < '0' || ch > '9') throw std::invalid_argument("invalid prefix in CIDR list: '" + std::string(item) + "'");
        prefix = prefix * 10 + (ch - '0');
      }
      if (prefix > max) throw std::invalid_argument("prefix too long in CIDR list: '" + std::string(item) + "'");
    }
    c.prefix = v4 ? prefix + 96 : prefix;
    out.push_back(c);
  }
  return out;
}

bool cidr_contains(const std::vector<Cidr>& cidrs, std::string_view ip) {
  if (cidrs.empty()) return false;
  unsigned char a[16];
  if (!parse_ip(ip, a)) return false;
  for (const auto& c : cidrs) {
    int bits = c.prefix, i = 0;
    bool match = true;
    for (; bits >= 8; bits -= 8, ++i)
      if (a[i] != c.addr[i]) {
        match = false;
        break;
      }
    if (match && bits > 0) {
      unsigned char mask = static_cast<unsigned char>(0xff << (8 - bits));
      match = (a[i] & mask) == (c.addr[i] & mask);
    }
    if (match) return true;
  }
  return false;
}

}  // namespace ag
