#include "common/listen.hpp"

#include <charconv>
#include <stdexcept>

namespace ag {

void parse_listen(const std::string& value, const char* what, std::string& host, std::uint16_t& port) {
  auto colon = value.rfind(':');
  if (colon == std::string::npos || colon + 1 >= value.size())
    throw std::invalid_argument(std::string(what) + " must be HOST:PORT (got '" + value + "')");
  host = value.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) host = "0.0.0.0";
  unsigned p = 0;
  auto ps = value.substr(colon + 1);
  auto [ptr, ec] = std::from_chars(ps.data(), ps.data() + ps.size(), p);
  if (ec != std::errc{} || ptr != ps.data() + ps.size() || p > 65535)
    throw std::invalid_argument(std::string(what) + ": port must be 0-65535 (got '" + ps + "')");
  port = static_cast<std::uint16_t>(p);
}

}  // namespace ag
