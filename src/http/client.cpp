#include "http/client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <memory>

#include "net/tls_client.hpp"

#include <algorithm>
#include <cctype>

namespace ag::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;

std::string ClientResult::header(std::string_view lower_name) const {
  for (const auto& h : headers)
    if (h.name == lower_name) return h.value;
  return {};
}

void FetchCancel::cancel() {
  std::lock_guard lock(m_);
  cancelled_ = true;
  if (ioc_) static_cast<asio::io_context*>(ioc_)->stop();
}

bool FetchCancel::cancelled() const {
  std::lock_guard lock(m_);
  return cancelled_;
}

ClientResult fetch(const std::string& method, const std::string& url, const std::vector<Header>& headers,
                   const std::string& body, std::chrono::milliseconds timeout, std::size_t max_body,
                   FetchCancel* cancel) {
  ClientResult out;
  const bool tls = url.rfind("https://", 0) == 0;
  if (!tls && url.rfind("http://", 0) != 0) {
    out.error = "only http:// and https:// URLs are supported";
    return out;
  }
  std::string rest = url.substr(tls ? 8 : 7);
  auto slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  std::string target = slash == std::string::npos ? "/" : rest.substr(slash);
  std::string host = authority, port = tls ? "443" : "80";
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    host = authority.substr(1, close - 1);
    if (close + 1 < authority.size() && authority[close + 1] == ':') port = authority.substr(close + 2);
  } else if (auto c = authority.rfind(':'); c != std::string::npos) {
    host = authority.substr(0, c);
    port = authority.substr(c + 1);
  }

  asio::io_context ioc;
  beast::tcp_stream stream(ioc);
  asio::ip::tcp::resolver resolver(ioc);
  beast::flat_buffer buffer;
  bhttp::request<bhttp::string_body> req;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(max_body);
  auto verb = bhttp::string_to_verb(method);
  req.method(verb == bhttp::verb::unknown ? bhttp::verb::get : verb);
  req.target(target);
  req.version(11);
  req.set(bhttp::field::host, authority);
  req.set(bhttp::field::connection, "close");
  for (const auto& h : headers) req.set(h.name, h.value);
  if (!body.empty()) req.body() = body;
  req.prepare_payload();

  auto fail = [&](const char* what, boost::system::error_code ec) {
    out.error = std::string(what) + ": " + ec.message();
  };
  // The exchange once connected (and, for https://, after the handshake), on either stream.
  auto exchange = [&](auto& s) {
    bhttp::async_write(s, req, [&](boost::system::error_code ec, std::size_t) {
      if (ec) return fail("write", ec);
      bhttp::async_read(s, buffer, parser, [&](boost::system::error_code ec, std::size_t) {
        if (ec == asio::ssl::error::stream_truncated) {  // a close without close_notify ends a close-delimited body
          boost::system::error_code eof_ec;
          parser.put_eof(eof_ec);
          if (!eof_ec && parser.is_done()) ec = {};
        }
        if (ec) return fail("read", ec);
        auto& res = parser.get();
        out.ok = true;
        out.status = static_cast<int>(res.result_int());
        for (const auto& f : res) {
          std::string name(f.name_string());
          std::transform(name.begin(), name.end(), name.begin(),
                         [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
          out.headers.push_back({std::move(name), std::string(f.value())});
        }
        out.body = std::move(res.body());
      });
    });
  };
  std::unique_ptr<asio::ssl::stream<beast::tcp_stream&>> tls_stream;
  if (tls) {
    tls_stream = std::make_unique<asio::ssl::stream<beast::tcp_stream&>>(stream, tls::client_context());
    if (!tls::prepare_client(tls_stream->native_handle(), host)) {
      out.error = "TLS: invalid host " + host;
      return out;
    }
  }
  stream.expires_after(timeout);
  resolver.async_resolve(host, port, [&](boost::system::error_code ec, asio::ip::tcp::resolver::results_type results) {
    if (ec) return fail("resolve", ec);
    stream.async_connect(results, [&](boost::system::error_code ec, const asio::ip::tcp::endpoint&) {
      if (ec) return fail("connect", ec);
      // The request goes out in pieces: without this, the second waits for a delayed ACK (Nagle).
      boost::system::error_code nd;
      stream.socket().set_option(asio::ip::tcp::no_delay(true), nd);
      if (!tls_stream) return exchange(stream);
      tls_stream->async_handshake(asio::ssl::stream_base::client, [&](boost::system::error_code ec) {
        if (ec) return fail("TLS handshake", ec);
        exchange(*tls_stream);
      });
    });
  });
  if (cancel) {
    std::lock_guard lock(cancel->m_);
    if (cancel->cancelled_) {
      out.error = "cancelled";
      return out;
    }
    cancel->ioc_ = &ioc;
  }
  ioc.run();
  if (cancel) {
    std::lock_guard lock(cancel->m_);
    cancel->ioc_ = nullptr;
    if (cancel->cancelled_ && !out.ok) out.error = "cancelled";
  }
  return out;
}

}  // namespace ag::http
