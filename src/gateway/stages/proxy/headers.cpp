#include "gateway/stages/proxy/headers.hpp"

#include "http/h1/http1.hpp"

namespace ag::gateway {

using namespace std::string_view_literals;

bool is_hop_by_hop(std::string_view n) {
  switch (n.size()) {
    case 2: return n == "te";
    case 7: return n == "trailer" || n == "upgrade";
    case 9: return n == "x-api-key";
    case 10: return n == "connection" || n == "keep-alive";
    case 16: return n == "proxy-connection";
    case 17: return n == "transfer-encoding";
    case 19: return n == "proxy-authorization" || n == "proxy-authenticate";
    default: return false;
  }
}

std::string_view connection_options(std::string_view connection) {
  return http1::name_is(connection, "keep-alive") || http1::name_is(connection, "close") ? std::string_view{} : connection;
}

}  // namespace ag::gateway
