#include "common/env.hpp"

#include <charconv>
#include <stdexcept>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace ag::env {

namespace {
std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}
bool valid_name(std::string_view n) {
  if (n.empty()) return false;
  for (char c : n)
    if (!(c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
      return false;
  return !(n[0] >= '0' && n[0] <= '9');
}
}  // namespace

std::map<std::string, std::string> parse_dotenv(std::string_view text, std::string* errors) {
  std::map<std::string, std::string> out;
  int lineno = 0;
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    ++lineno;
    line = trim(line);
    if (line.empty() || line.front() == '#') continue;
    if (line.substr(0, 7) == "export ") line = trim(line.substr(7));
    auto eq = line.find('=');
    if (eq == std::string_view::npos || !valid_name(trim(line.substr(0, eq)))) {
      if (errors) *errors += "line " + std::to_string(lineno) + ": expected KEY=VALUE\n";
      continue;
    }
    std::string key(trim(line.substr(0, eq)));
    std::string_view value = trim(line.substr(eq + 1));
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    } else if (auto hash = value.find(" #"); hash != std::string_view::npos) {
      value = trim(value.substr(0, hash));
    }
    out[key] = std::string(value);
  }
  return out;
}

int load_dotenv_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return 0;
  std::stringstream ss;
  ss << in.rdbuf();
  int set = 0;
  for (auto& [k, v] : parse_dotenv(ss.str())) {
    if (std::getenv(k.c_str()) == nullptr) {
      ::setenv(k.c_str(), v.c_str(), 0);
      ++set;
    }
  }
  return set;
}

std::optional<std::string> get(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

std::string get_or(const char* name, std::string fallback) {
  auto v = get(name);
  return v ? *v : std::move(fallback);
}

std::int64_t get_int(const char* name, std::int64_t def, std::int64_t lo, std::int64_t hi) {
  auto v = get(name);
  if (!v) return def;
  std::int64_t out = 0;
  auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc{} || p != v->data() + v->size() || out < lo || out > hi)
    throw std::runtime_error(std::string(name) + " must be an integer between " + std::to_string(lo) + " and " +
                             std::to_string(hi));
  return out;
}

}  // namespace ag::env
