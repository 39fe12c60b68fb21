#pragma once
// The HTTP/1.1 server of the control plane (and of the worker's admin port). Beast stays inside
// server.cpp; an upgraded connection is handed over as http/upgrade.hpp's UpgradedConnection.
//
// Threads: `threads` I/O threads, each with its own event loop, read and write the connections
// (and do TLS); a connection stays on the thread that accepted it. Handlers that may
// block (database work) run on a separate pool of `handler_threads`, so a slow handler never
// holds up reading, writing, TLS handshakes, held long polls or the answers that need no
// handler thread (`runs_inline`). With handler_threads = 0 every handler runs on the I/O threads
// (for servers whose handlers never block).
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "http/message.hpp"

namespace ag::http {

struct ServerOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8000;
  int threads = 4;          // I/O threads
  int handler_threads = 0;  // blocking handlers' pool; 0 = run handlers on the I/O threads
  std::size_t header_limit = 16 * 1024;
  std::size_t body_limit = 1024 * 1024;
  int idle_timeout_sec = 60;
  // TLS: both set = the listener speaks only HTTPS (TLS 1.2 or later) with this PEM certificate
  // chain and key. Unreadable files make listen() throw.
  std::string tls_cert_file;
  std::string tls_key_file;
  // True for a request whose handler never blocks: it runs on the I/O thread even when the pool
  // is busy (unknown routes, static documents).
  std::function<bool(const Request&)> runs_inline;
};

// Called for every complete request (on the pool, or inline). Must not throw (wrap it). Errors
// the server detects itself (413, 431, 400) go to `on_protocol_error`.
using RequestHandler = std::function<Response(Request&)>;
using ProtocolErrorHandler = std::function<Response(int status, std::string detail)>;

class Server {
 public:
  Server(ServerOptions options, RequestHandler handler, ProtocolErrorHandler on_error);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens (and loads the TLS certificate); throws std::runtime_error with a clear
  // message when it cannot.
  void listen();
  std::uint16_t bound_port() const;
  bool tls() const;
  // Runs the event loop on `threads` threads until stop(); returns when they are done.
  void run();
  // Thread-safe; may be called from a signal handler thread.
  void stop();
  // Wakes every request held by a long poll (Response::deferred). Thread-safe.
  void wake_all();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ag::http
