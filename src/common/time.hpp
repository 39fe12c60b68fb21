#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace ag {

// Milliseconds since the Unix epoch (system clock).
std::int64_t now_ms();
// Monotonic clock in nanoseconds (for intervals and deadlines, never for timestamps).
std::int64_t steady_ns();
// RFC 3339 UTC with second precision: 2026-11-22T18:34:27Z.
std::string format_rfc3339(std::int64_t epoch_ms);
// "2026-11-22T18:34:27Z" (optionally with fractional seconds, or +00:00) -> epoch ms; -1 when
// malformed.
std::int64_t parse_rfc3339(std::string_view s);

}  // namespace ag
