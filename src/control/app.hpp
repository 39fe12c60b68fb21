#pragma once
// The control plane as a whole: settings + database + routes + HTTP server.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "control/settings.hpp"
#include "http/message.hpp"
#include "control/api/routes.hpp"

namespace ag::control {

struct AppState;

class ControlApp {
 public:
  // Opens the database and applies pending migrations. Throws with a clear message on failure.
  explicit ControlApp(Settings settings);
  ~ControlApp();

  // Handles one request end to end (request id, /api/v1 prefix, CORS, routing, errors, access
  // log). Never throws.
  http::Response handle(http::Request& req);
  // True when the request's handler never blocks (unknown routes, preflights, static documents):
  // the server answers it on its I/O thread even while every handler thread is busy.
  bool runs_inline(const http::Request& req) const;
  // Answer for errors the HTTP layer detects before a request is complete (400/413/431).
  http::Response protocol_error(int status, std::string detail);

  // Every route with its authorisation rule.
  std::vector<RouteDecl> routes() const { return routes_.routes(); }
  AppState& state() { return *state_; }

 private:
  std::unique_ptr<AppState> state_;
  RouteTable routes_;
};

// The control plane's HTTP server: start() binds and runs it on its own threads.
class ControlServer {
 public:
  explicit ControlServer(Settings settings);
  ~ControlServer();
  void start();
  std::uint16_t port() const;
  const Settings& settings() const;
  void stop();
  void wait();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Runs the control plane until SIGINT/SIGTERM.
int run_control_server(Settings settings);

}  // namespace ag::control
