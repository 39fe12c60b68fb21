#pragma once
// Shared rate-limit state in Redis: one connection per worker thread, pipelined, one round trip
// per decision (an atomic GCRA script, EVALSHA). Each decision waits at most `timeout`; when Redis
// is slow or down the decision is made by the local store instead (never fail open, never 5xx),
// counted, and logged; the connection is re-established in the background with backoff.
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>

#include <functional>

#include "net/executor.hpp"
#include "ratelimit/gcra.hpp"
#include "ratelimit/local_store.hpp"

struct redisReader;

namespace ag::ratelimit {

using net::Socket;
using net::Task;
using net::Timer;

struct RedisUrl {
  std::string host = "127.0.0.1";
  std::uint16_t port = 6379;
  std::string username, password;
  int db = 0;
};
// redis://[user[:password]@]host[:port][/db]; throws std::invalid_argument (the message never
// contains the password).
RedisUrl parse_redis_url(const std::string& url);

class RedisLimiter {
 public:
  // Runs on `ioc` (one worker thread's); decides with `fallback` while Redis cannot answer;
  // calls `on_error` for each error reply (the worker counts them).
  RedisLimiter(net::asio::io_context& ioc, LocalStore& fallback, std::function<void()> on_error, RedisUrl url,
               std::int64_t timeout_ms);
  ~RedisLimiter();

  // Starts the connection loop on the runtime's thread.
  void start();
  void stop();
  Task<Decision> check(std::uint64_t tag, const Policy& policy);

 private:
  struct Waiter {
    explicit Waiter(net::asio::io_context& ioc) : timer(ioc.get_executor()) {}
    Timer timer;
    std::optional<Decision> result;
    bool abandoned = false;
  };
  struct Pending {
    std::shared_ptr<Waiter> waiter;  // null for set-up commands (AUTH, SELECT, SCRIPT LOAD)
  };

  Task<void> connection_loop();
  Task<void> write_loop();
  void fail_all();
  void on_reply(void* reply);
  void append_command(std::initializer_list<std::string_view> args);

  net::asio::io_context& ioc_;
  LocalStore& fallback_;
  std::function<void()> on_error_;
  RedisUrl url_;
  std::int64_t timeout_ms_;
  Socket socket_;
  bool up_ = false;
  bool stopping_ = false;
  bool writing_ = false;
  std::string out_, inflight_;
  std::deque<Pending> pending_;
  redisReader* reader_ = nullptr;
  int consecutive_timeouts_ = 0;
  std::int64_t last_log_ns_ = 0;
  std::string sha_;
};

}  // namespace ag::ratelimit
