#pragma once
// One JSON access-log line per request (docs/worker.md, "Access log").
#include <cstdint>
#include <string>
#include <string_view>

#include "common/json_string.hpp"
#include "gateway/pipeline/context.hpp"

namespace ag::gateway {

struct LogFields {
  std::string_view method, path, user_agent;
};
// One JSON access-log line (with trailing '\n') appended to `out`.
void append_log_line(std::string& out, const Context& ctx, const LogFields& f, std::int64_t end_ns);
using json_text::append_json_string;  // common/json_string.hpp

}  // namespace ag::gateway
