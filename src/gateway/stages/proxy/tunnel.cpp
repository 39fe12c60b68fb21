// The WebSocket tunnel: after the upstream's 101 to an upgrade (exchange.cpp), bytes flow both
// ways between the client and the upstream until either side closes.
#include <utility>  // Boost 1.74 awaitable.hpp uses std::exchange without including it
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/write.hpp>

#include <array>

#include "gateway/connection.hpp"

namespace ag::gateway {

Task<bool> Connection::tunnel(Context& ctx) {
  // Bytes already buffered on either side go first, then both directions are pumped until one
  // side closes. The connection's deadline is refreshed on every transfer.
  auto pump = [this, &ctx](auto& from, beast::flat_buffer& pending, auto& to, bool upstream_to_client) -> Task<void> {
    std::array<char, 8192> data;
    error_code ec;
    if (pending.size() > 0) {
      co_await asio::async_write(to, pending.data(), asio::redirect_error(use_task, ec));
      pending.consume(pending.size());
      if (ec) co_return;
    }
    for (;;) {
      std::size_t n = co_await from.async_read_some(asio::buffer(data), asio::redirect_error(use_task, ec));
      if (ec) break;
      deadline_ns = rt_.coarse_now_ns + rt_.opts.idle_timeout_ms * 1'000'000;
      co_await asio::async_write(to, asio::buffer(data.data(), n), asio::redirect_error(use_task, ec));
      if (ec) break;
      if (upstream_to_client) ctx.bytes_out += n;
      else ctx.bytes_in += n;
    }
    error_code ignore;
    to.shutdown(tcp::socket::shutdown_send, ignore);
    from.cancel(ignore);
    to.cancel(ignore);
  };
  auto& up = up_io_;
  // Run client->upstream as a separate coroutine and upstream->client here; each ends the other.
  bool other_done = false;
  Timer done_signal(rt_.ioc.get_executor());
  done_signal.expires_at(std::chrono::steady_clock::time_point::max());
  asio::co_spawn(rt_.ioc, [&]() -> Task<void> {
    co_await pump(sock_, buf_, up, false);
    other_done = true;
    done_signal.cancel();
  }, asio::detached);
  co_await pump(up, ubuf_, sock_, true);
  if (!other_done) {
    error_code ec;
    sock_.cancel(ec);
    co_await done_signal.async_wait(asio::redirect_error(use_task, ec));
  }
  upstream_.reset();
  co_return false;
}

}  // namespace ag::gateway
