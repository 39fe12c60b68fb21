#pragma once
#include <string_view>

namespace ag {

// A client-supplied X-Request-Id is kept when it is 1-128 characters of [A-Za-z0-9._-]
// (control plane and worker alike); anything else is replaced by a generated id.
inline bool valid_request_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
          c == '-'))
      return false;
  return true;
}

}  // namespace ag
