#pragma once
// Plain request/response values for handlers that do no I/O. The server converts to and from
// Beast's types, so handler code never includes Boost headers.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ag::http {

struct UpgradedConnection;  // http/upgrade.hpp

struct Header {
  std::string name;  // as received (requests: lower-cased)
  std::string value;
};

struct Request {
  std::string method;  // upper case, e.g. "GET"
  std::string target;  // raw request target, e.g. "/projects?x=1"
  std::string path;    // target without the query string
  std::string query;   // after '?', without it
  std::vector<Header> headers;  // names lower-cased
  std::string body;
  std::string remote_ip;

  // First header with that (lower-case) name, or empty.
  std::string_view header(std::string_view lower_name) const;
  bool has_header(std::string_view lower_name) const;
};

struct Response {
  int status = 200;
  std::vector<Header> headers;
  std::string body;
  // Long poll: when set, the server holds the request (on no thread) for up to `defer_for` or
  // until Server::wake_all(), then sends what `deferred()` returns instead of this response;
  // `deferred` runs where handlers run (it may block), and may answer with another hold.
  std::function<Response()> deferred;
  std::chrono::milliseconds defer_for{0};
  // Upgrade: when set, the server writes nothing and hands the connection to `take_over` on the
  // connection's I/O thread (which must not block); status and headers are then unused.
  std::function<void(std::unique_ptr<UpgradedConnection>)> take_over;

  void set_header(std::string name, std::string value);
  std::string_view header(std::string_view name) const;  // case-insensitive
};

// Value of query parameter `name` (percent-decoded), or nullopt-like empty + found flag.
bool query_param(std::string_view query, std::string_view name, std::string& out);
std::string percent_decode(std::string_view s, bool plus_is_space);
// True when every '%' in `s` starts a valid %XX escape (application/x-www-form-urlencoded).
bool percent_encoding_valid(std::string_view s);

}  // namespace ag::http
