#pragma once
// A small HTTP/1.1 server for request/response handlers that do no I/O of their own (the
// control plane). Beast stays inside server.cpp.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "http/message.hpp"

namespace ag::http {

struct ServerOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8000;
  int threads = 4;
  std::size_t header_limit = 16 * 1024;
  std::size_t body_limit = 1024 * 1024;
  int idle_timeout_sec = 60;
};

// Called on a server thread for every complete request. May block (database work); must not
// throw (wrap it). Errors the server detects itself (413, 431, 400) go to `on_protocol_error`.
using RequestHandler = std::function<Response(Request&)>;
using ProtocolErrorHandler = std::function<Response(int status, std::string detail)>;

class Server {
 public:
  Server(ServerOptions options, RequestHandler handler, ProtocolErrorHandler on_error);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens; throws std::runtime_error with a clear message when it cannot.
  void listen();
  std::uint16_t bound_port() const;
  // Runs the event loop on `threads` threads until stop(); returns when they are done.
  void run();
  // Thread-safe; may be called from a signal handler thread.
  void stop();
  // Wakes every request held by a deferred (long-poll) response. Thread-safe.
  void wake_all();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ag::http
