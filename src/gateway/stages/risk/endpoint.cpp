#include "gateway/stages/risk/endpoint.hpp"

namespace ag::gateway {

using namespace std::string_view_literals;

// False when no path segment starts with a digit or is long enough to be hex: then the endpoint
// is the path itself and the log line needs no copy.
bool needs_normalising(std::string_view path) {
  std::size_t seg_start = 0;
  for (std::size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      std::size_t len = i - seg_start;
      if (len >= 16 || (len > 0 && path[seg_start] >= '0' && path[seg_start] <= '9')) return true;
      seg_start = i + 1;
    }
  }
  return path.empty();
}

std::string normalise_endpoint(std::string_view path) {
  std::string out;
  out.reserve(path.size());
  std::size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '/') {
      out.push_back('/');
      ++i;
      continue;
    }
    auto j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view seg = path.substr(i, j - i);
    bool digits = true, hex = seg.size() >= 16, uuid = seg.size() == 36;
    for (std::size_t k = 0; k < seg.size(); ++k) {
      char c = seg[k];
      bool d = c >= '0' && c <= '9';
      bool h = d || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
      digits = digits && d;
      hex = hex && h;
      if (uuid) uuid = (k == 8 || k == 13 || k == 18 || k == 23) ? c == '-' : h;
    }
    if ((digits && !seg.empty()) || hex || uuid) out += ":id"sv;
    else out.append(seg);
    i = j;
  }
  if (out.empty()) out = "/";
  return out;
}

}  // namespace ag::gateway
