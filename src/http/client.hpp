#pragma once
// A small blocking HTTP/1.1 client for background work (config sync, health checks): requests on
// a private event loop in the calling thread, each with an overall deadline. Not for the
// request path.
#include <chrono>
#include <mutex>
#include <string>
#include <vector>

#include "http/message.hpp"

namespace ag::http {

struct ClientResult {
  bool ok = false;       // a complete response was received
  std::string error;     // otherwise: why not
  int status = 0;
  std::vector<Header> headers;  // names lower-cased
  std::string body;
  std::string header(std::string_view lower_name) const;
};

// Lets another thread abort a fetch in progress (shutdown during a long poll).
class FetchCancel {
 public:
  void cancel();
  bool cancelled() const;

 private:
  friend ClientResult fetch(const std::string&, const std::string&, const std::vector<Header>&, const std::string&,
                            std::chrono::milliseconds, std::size_t, FetchCancel*);
  mutable std::mutex m_;
  void* ioc_ = nullptr;  // the running fetch's io_context
  bool cancelled_ = false;
};

// `url`: http[s]://host[:port]/path?query (https:// verified as net/tls_client.hpp describes).
// `max_body`: larger responses fail.
ClientResult fetch(const std::string& method, const std::string& url, const std::vector<Header>& headers,
                   const std::string& body, std::chrono::milliseconds timeout,
                   std::size_t max_body = 512 * 1024 * 1024, FetchCancel* cancel = nullptr);

struct FetchRequest {
  std::string method = "GET";
  std::string url;
  std::vector<Header> headers;
  std::string body;
  std::chrono::milliseconds timeout{5000};
  std::size_t max_body = 512 * 1024 * 1024;
};
// Runs every request at once on one event loop in the calling thread (no thread per request);
// returns when all are done or past their deadlines, results in the same order.
std::vector<ClientResult> fetch_all(const std::vector<FetchRequest>& requests);

}  // namespace ag::http
