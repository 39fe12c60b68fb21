#pragma once
// A connection a route took over after an upgrade (Response::take_over): the stream (plain TCP
// or TLS), the bytes already read past the request, and the request itself, as Beast types, so
// the taker can run e.g. `boost::beast::websocket::stream` over it. Only code that takes over
// connections includes this header; it pulls in Beast.
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <string>
#include <variant>

namespace ag::http {

struct UpgradedConnection {
  using Plain = boost::beast::tcp_stream;
  using Tls = boost::beast::ssl_stream<boost::beast::tcp_stream>;
  std::variant<Plain, Tls> stream;
  boost::beast::flat_buffer buffer;
  boost::beast::http::request<boost::beast::http::string_body> request;
  std::string remote_ip;
};

}  // namespace ag::http
