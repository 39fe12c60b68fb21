#pragma once
// The accept stage's pure helpers: request ids and the client address behind trusted proxies.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/cidr.hpp"

namespace ag::gateway {

// Request ids for requests that bring none: a random per-thread prefix and a counter (unique,
// cheap, not guessable in bulk).
class RequestIds {
 public:
  RequestIds();
  std::string next();

 private:
  std::string prefix_;
  std::uint64_t counter_ = 0;
};

bool valid_request_id(std::string_view id);

using ag::Cidr;
using ag::cidr_contains;
using ag::cidr_refused;
using ag::parse_cidrs;
// The client address: `peer`, or when the peer is a trusted proxy, the right-most address in
// X-Forwarded-For that is not itself trusted.
std::string client_ip(std::string_view peer, std::string_view xff, const std::vector<Cidr>& trusted);

}  // namespace ag::gateway
