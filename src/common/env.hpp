#pragma once
// Environment access and the `.env` file: real environment variables always win over the file.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <map>

namespace ag::env {

// Parses `.env` syntax: KEY=VALUE lines, `#` comments, optional `export `, single or double
// quotes. Malformed lines are skipped and reported through `errors` (line numbers).
std::map<std::string, std::string> parse_dotenv(std::string_view text, std::string* errors = nullptr);

// Loads `path` (if it exists) into the process environment without overriding variables that
// are already set. Returns the number of variables it set.
int load_dotenv_file(const std::string& path);

std::optional<std::string> get(const char* name);
std::string get_or(const char* name, std::string fallback);
// An integer setting: `def` when unset; std::runtime_error naming the variable and the range
// when it is not an integer in [lo, hi].
std::int64_t get_int(const char* name, std::int64_t def, std::int64_t lo, std::int64_t hi);

}  // namespace ag::env
