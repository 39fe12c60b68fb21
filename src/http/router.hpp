#pragma once
// Method + path routing with `{name}` segments, e.g. "/projects/{id}/keys/{key_id}". The router
// only matches: each route carries a slot number, the index of whatever the caller keeps for it
// (the control plane keeps the handler and its authorisation rule, control/api/routes.hpp).
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "http/message.hpp"

namespace ag::http {

using PathParams = std::map<std::string, std::string, std::less<>>;

struct RouteInfo {
  std::string method;
  std::string pattern;
};

class Router {
 public:
  void add(std::string method, std::string pattern, std::size_t slot);

  enum class Outcome { kFound, kNotFound, kMethodNotAllowed };
  struct Match {
    Outcome outcome = Outcome::kNotFound;
    std::size_t slot = 0;
    PathParams params;
    std::string allow;  // for kMethodNotAllowed: "GET, POST"
  };
  Match match(std::string_view method, std::string_view path) const;

  // Every registered route, in registration order (for docs and authorization checks).
  std::vector<RouteInfo> routes() const;

 private:
  struct Route {
    std::string method;
    std::string pattern;
    std::vector<std::string> segments;
    std::size_t slot = 0;
  };
  std::vector<Route> routes_;
};

}  // namespace ag::http
