#pragma once
// Project slugs and service names, as they appear in routes (/{slug}/{service}/*), in the
// control API and in service-token claims: ^[a-z0-9_-]{1,63}$.
#include <string_view>

namespace ag {

inline bool valid_slug(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  return true;
}

}  // namespace ag
