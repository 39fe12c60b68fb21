#pragma once
// One JSON access-log line per request (docs/worker.md, "Access log").
#include <cstdint>
#include <string>
#include <string_view>

#include "gateway/pipeline/context.hpp"

namespace ag::gateway {

struct LogFields {
  std::string_view method, path, user_agent;
};
// One JSON access-log line (with trailing '\n') appended to `out`.
void append_log_line(std::string& out, const Context& ctx, const LogFields& f, std::int64_t end_ns);
// A JSON string (quotes included) with invalid UTF-8 replaced by U+FFFD.
void append_json_string(std::string& out, std::string_view s);

}  // namespace ag::gateway
