#pragma once
#include <cstdint>
#include <string>

namespace ag {

// Milliseconds since the Unix epoch (system clock).
std::int64_t now_ms();
// RFC 3339 UTC with second precision: 2026-11-22T18:34:27Z.
std::string format_rfc3339(std::int64_t epoch_ms);

}  // namespace ag
