#include "gateway/stages/accept/client.hpp"

#include <charconv>

#include "common/ascii.hpp"
#include "common/crypto.hpp"
#include "common/request_id.hpp"

namespace ag::gateway {

using namespace std::string_view_literals;

RequestIds::RequestIds() : prefix_(crypto::random_base62(8)) {}  // 8 + '-' + counter stays within SSO

std::string RequestIds::next() {
  std::string id = prefix_;
  id += '-';
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, ++counter_, 36);
  id.append(buf, r.ptr);
  return id;
}

bool valid_request_id(std::string_view id) { return ag::valid_request_id(id); }


std::string client_ip(std::string_view peer, std::string_view xff, const std::vector<Cidr>& trusted) {
  if (xff.empty() || !cidr_contains(trusted, peer)) return std::string(peer);
  // Walk right to left: each hop appended the address it saw.
  std::string_view rest = xff;
  while (!rest.empty()) {
    auto comma = rest.rfind(',');
    std::string_view hop = trim_ows(comma == std::string_view::npos ? rest : rest.substr(comma + 1));
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(0, comma);
    unsigned char tmp[16];
    if (!ag::parse_ip(hop, tmp)) break;  // garbage: stop trusting the header here
    if (!cidr_contains(trusted, hop)) return std::string(hop);
  }
  return std::string(peer);
}

}  // namespace ag::gateway
