#include "ratelimit/redis_limiter.hpp"

#include <hiredis/hiredis.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

#include <charconv>
#include <stdexcept>

#include "common/crypto.hpp"
#include "common/time.hpp"

namespace ag::ratelimit {

namespace asio = boost::asio;
using net::use_task;
using tcp = asio::ip::tcp;

using error_code = boost::system::error_code;

namespace {

// GCRA in microseconds on Redis' own clock, so every worker agrees on "now".
// Returns {allowed (1/0), remaining or retry-after µs, reset µs}.
constexpr std::string_view kScript = R"LUA(
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local diff = new_tat - now
if diff > tolerance then
  return {0, diff - tolerance, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor(diff / 1000) + 1000)
return {1, math.floor((tolerance - diff) / interval), diff}
)LUA";

}  // namespace

RedisUrl parse_redis_url(const std::string& url) {
  RedisUrl u;
  std::string_view s = url;
  if (s.substr(0, 8) != "redis://") throw std::invalid_argument("REDIS_URL must start with redis:// (TLS is not supported)");
  s.remove_prefix(8);
  if (auto at = s.rfind('@'); at != std::string_view::npos) {
    std::string_view cred = s.substr(0, at);
    s = s.substr(at + 1);
    auto colon = cred.find(':');
    if (colon == std::string_view::npos) {
      u.password = std::string(cred);
    } else {
      u.username = std::string(cred.substr(0, colon));
      u.password = std::string(cred.substr(colon + 1));
    }
    if (u.username == "default") u.username.clear();
  }
  auto slash = s.find('/');
  std::string_view hostport = s.substr(0, slash);
  if (slash != std::string_view::npos) {
    auto dbs = s.substr(slash + 1);
    if (!dbs.empty()) {
      auto [p, ec] = std::from_chars(dbs.data(), dbs.data() + dbs.size(), u.db);
      if (ec != std::errc{} || p != dbs.data() + dbs.size() || u.db < 0) throw std::invalid_argument("REDIS_URL: invalid database number");
    }
  }
  if (auto colon = hostport.rfind(':'); colon != std::string_view::npos && hostport.find(']') == std::string_view::npos) {
    auto ps = hostport.substr(colon + 1);
    unsigned port = 0;
    auto [p, ec] = std::from_chars(ps.data(), ps.data() + ps.size(), port);
    if (ec != std::errc{} || p != ps.data() + ps.size() || port == 0 || port > 65535) throw std::invalid_argument("REDIS_URL: invalid port");
    u.port = static_cast<std::uint16_t>(port);
    hostport = hostport.substr(0, colon);
  }
  if (!hostport.empty()) u.host = std::string(hostport);
  return u;
}

RedisLimiter::RedisLimiter(asio::io_context& ioc, LocalStore& fallback, std::function<void()> on_error, RedisUrl url,
                           std::int64_t timeout_ms)
    : ioc_(ioc),
      fallback_(fallback),
      on_error_(std::move(on_error)),
      url_(std::move(url)),
      timeout_ms_(timeout_ms),
      socket_(ioc.get_executor()) {}

RedisLimiter::~RedisLimiter() {
  if (reader_) redisReaderFree(reader_);
}

void RedisLimiter::start() {
  asio::co_spawn(ioc_, connection_loop(), asio::detached);
}

void RedisLimiter::stop() {
  stopping_ = true;
  error_code ec;
  socket_.close(ec);
}

void RedisLimiter::append_command(std::initializer_list<std::string_view> args) {
  char num[24];
  out_ += '*';
  out_.append(num, std::to_chars(num, num + sizeof num, args.size()).ptr - num);
  out_ += "\r\n";
  for (auto a : args) {
    out_ += '$';
    out_.append(num, std::to_chars(num, num + sizeof num, a.size()).ptr - num);
    out_ += "\r\n";
    out_.append(a.data(), a.size());
    out_ += "\r\n";
  }
  if (!writing_ && up_) {
    writing_ = true;
    asio::co_spawn(ioc_, write_loop(), asio::detached);
  }
}

Task<void> RedisLimiter::write_loop() {
  while (!out_.empty() && up_) {
    inflight_.swap(out_);
    out_.clear();
    error_code ec;
    co_await asio::async_write(socket_, asio::buffer(inflight_), asio::redirect_error(use_task, ec));
    inflight_.clear();
    if (ec) {
      error_code ignore;
      socket_.close(ignore);
      break;
    }
  }
  writing_ = false;
}

void RedisLimiter::fail_all() {
  up_ = false;
  out_.clear();
  for (auto& p : pending_)
    if (p.waiter && !p.waiter->abandoned) p.waiter->timer.cancel();
  pending_.clear();
}

void RedisLimiter::on_reply(void* r) {
  auto* reply = static_cast<redisReply*>(r);
  if (pending_.empty()) {
    freeReplyObject(reply);
    return;
  }
  Pending p = std::move(pending_.front());
  pending_.pop_front();
  if (!p.waiter) {
    if (reply->type == REDIS_REPLY_ERROR) spdlog::error("redis set-up command failed: {}", std::string(reply->str, reply->len));
    else if (reply->type == REDIS_REPLY_STRING && reply->len == 40) sha_.assign(reply->str, reply->len);
  } else if (!p.waiter->abandoned) {
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 && reply->element[0]->type == REDIS_REPLY_INTEGER) {
      ratelimit::Decision d;
      d.allowed = reply->element[0]->integer == 1;
      long long v = reply->element[1]->integer, reset = reply->element[2]->integer;
      if (d.allowed) d.remaining = v;
      else d.retry_after_ns = v * 1000;
      d.reset_ns = reset * 1000;
      p.waiter->result = d;
      consecutive_timeouts_ = 0;
    } else if (reply->type == REDIS_REPLY_ERROR) {
      std::string_view err(reply->str, reply->len);
      if (err.substr(0, 8) == "NOSCRIPT") {
        pending_.push_back({nullptr});
        append_command({"SCRIPT", "LOAD", kScript});
      }
      if (on_error_) on_error_();
    }
    p.waiter->timer.cancel();
  }
  freeReplyObject(reply);
}

Task<void> RedisLimiter::connection_loop() {
  std::int64_t backoff_ms = 100;
  while (!stopping_) {
    error_code ec;
    tcp::resolver resolver(ioc_);
    auto results = co_await resolver.async_resolve(url_.host, std::to_string(url_.port), asio::redirect_error(use_task, ec));
    if (!ec) {
      socket_ = Socket(ioc_.get_executor());
      // Bounded connect: a timer closes the socket if the connect takes too long.
      Timer guard(ioc_.get_executor());
      guard.expires_after(std::chrono::milliseconds(500));
      guard.async_wait([this](error_code e) {
        if (!e) {
          error_code ignore;
          socket_.close(ignore);
        }
      });
      co_await asio::async_connect(socket_, results, asio::redirect_error(use_task, ec));
      guard.cancel();
    }
    if (ec) {
      if (backoff_ms == 100 || backoff_ms >= 5000)
        spdlog::warn("redis {}:{} unreachable ({}); rate limits are local until it is back", url_.host, url_.port, ec.message());
      Timer wait(ioc_.get_executor());
      wait.expires_after(std::chrono::milliseconds(backoff_ms));
      co_await wait.async_wait(asio::redirect_error(use_task, ec));
      backoff_ms = std::min<std::int64_t>(backoff_ms * 2, 5000);
      continue;
    }
    socket_.set_option(tcp::no_delay(true), ec);
    if (reader_) redisReaderFree(reader_);
    reader_ = redisReaderCreate();
    up_ = true;
    consecutive_timeouts_ = 0;
    if (!url_.password.empty()) {
      pending_.push_back({nullptr});
      if (url_.username.empty()) append_command({"AUTH", url_.password});
      else append_command({"AUTH", url_.username, url_.password});
    }
    if (url_.db != 0) {
      pending_.push_back({nullptr});
      append_command({"SELECT", std::to_string(url_.db)});
    }
    pending_.push_back({nullptr});
    append_command({"SCRIPT", "LOAD", kScript});
    if (backoff_ms > 100) spdlog::info("redis {}:{} connected; shared rate limits restored", url_.host, url_.port);
    backoff_ms = 100;

    std::array<char, 16384> buf;
    for (;;) {
      std::size_t n = co_await socket_.async_read_some(asio::buffer(buf), asio::redirect_error(use_task, ec));
      if (ec) break;
      redisReaderFeed(reader_, buf.data(), n);
      void* reply = nullptr;
      bool bad = false;
      while (true) {
        if (redisReaderGetReply(reader_, &reply) != REDIS_OK) {
          bad = true;
          break;
        }
        if (!reply) break;
        on_reply(reply);
      }
      if (bad) break;
    }
    error_code ignore;
    socket_.close(ignore);
    fail_all();
    if (!stopping_) spdlog::warn("redis connection lost; rate limits are local until it is back");
  }
}

Task<Decision> RedisLimiter::check(std::uint64_t tag, const Policy& policy) {
  auto local = [&] {
    auto d = fallback_.check(tag, policy, steady_ns());
    d.fallback = true;
    return d;
  };
  if (!up_ || sha_.size() != 40) co_return local();
  char key[32];
  int klen = std::snprintf(key, sizeof key, "ag:rl:%016llx", static_cast<unsigned long long>(tag));
  std::int64_t interval_us = policy.interval_ns() / 1000;
  std::string a1 = std::to_string(interval_us), a2 = std::to_string(interval_us * (policy.burst + 1));
  auto w = std::make_shared<Waiter>(ioc_);
  w->timer.expires_after(std::chrono::milliseconds(timeout_ms_));
  pending_.push_back({w});
  append_command({"EVALSHA", sha_, "1", std::string_view(key, klen), a1, a2});
  error_code ec;
  co_await w->timer.async_wait(asio::redirect_error(use_task, ec));
  if (w->result) co_return *w->result;
  w->abandoned = true;
  if (!ec) {
    // Timed out: after a few in a row, drop the connection and reconnect.
    if (++consecutive_timeouts_ >= 3 && up_) {
      error_code ignore;
      socket_.close(ignore);
    }
  }
  std::int64_t now = steady_ns();
  if (now - last_log_ns_ > 5'000'000'000LL) {
    last_log_ns_ = now;
    spdlog::warn("redis rate-limit decision unavailable ({}); decided locally",
                 ec ? "connection down" : "timeout");
  }
  co_return local();
}

}  // namespace ag::ratelimit
