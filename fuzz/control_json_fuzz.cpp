// libFuzzer target for the control API's request bodies (src/control/api/context.cpp and
// tokens.cpp): control::parse_object_body on a request as the HTTP server hands it to a handler,
// then what handlers do with an object that parsed: the field helpers (reject_unknown_fields,
// get_string, get_int, require_string) and the token-issue body (control::parse_issue_body).
// Every refusal must be an ApiError with a 4xx status, as the server turns it into a response;
// anything else thrown would be a 500.
//
// Input: the first line is the Content-Type header value (an empty line: no Content-Type); the
// rest is the body.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "control/api/context.hpp"
#include "control/api/tokens.hpp"

namespace {

using ag::control::ApiError;
using ag::control::json;

void check_refusal(const ApiError& e) {
  if (e.status() < 400 || e.status() > 499 || e.detail().empty()) __builtin_trap();
}

void use_object(const json& body) {
  if (!body.is_object()) __builtin_trap();
  try {
    ag::control::reject_unknown_fields(body, {"name", "email", "password", "upstream_base_url", "slug", "expires_in_days"});
  } catch (const ApiError& e) {
    check_refusal(e);
  }
  try {
    (void)ag::control::get_string(body, "name");
    (void)ag::control::get_int(body, "expires_in_days", 1, 3650);
    (void)ag::control::get_int(body, "rate_limit_per_minute", -1, INT64_MAX);
    (void)ag::control::require_string(body, "email");
  } catch (const ApiError& e) {
    check_refusal(e);
  }
  try {
    ag::control::IssueInput in = ag::control::parse_issue_body(body);
    if (in.service.empty() || in.expires_in_days < 1 || in.expires_in_days > 365) __builtin_trap();
    if (!in.metadata.is_null() && !in.metadata.is_object()) __builtin_trap();
  } catch (const ApiError& e) {
    check_refusal(e);
    if (e.code.empty()) __builtin_trap();  // token errors always carry a code
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto nl = in.find('\n');
  ag::http::Request req;
  req.method = "POST";
  req.target = req.path = "/projects/00000000-0000-4000-8000-000000000000/tokens";
  req.remote_ip = "127.0.0.1";
  if (nl != std::string_view::npos && nl > 0) req.headers.push_back({"content-type", std::string(in.substr(0, nl))});
  req.body = std::string(nl == std::string_view::npos ? in : in.substr(nl + 1));

  for (bool allow_empty : {false, true}) {
    try {
      json body = ag::control::parse_object_body(req, allow_empty);
      use_object(body);
    } catch (const ApiError& e) {
      check_refusal(e);
    }
    if (!req.body.empty()) break;  // allow_empty only matters for an empty body
  }
  return 0;
}
