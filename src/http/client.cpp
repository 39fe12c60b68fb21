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

namespace {

// One exchange on a caller's io_context; every handler holds the state alive.
struct Fetch : std::enable_shared_from_this<Fetch> {
  Fetch(asio::io_context& ioc, ClientResult& result) : stream(ioc), resolver(ioc), out(result) {}
  beast::tcp_stream stream;
  asio::ip::tcp::resolver resolver;
  beast::flat_buffer buffer;
  bhttp::request<bhttp::string_body> req;
  bhttp::response_parser<bhttp::string_body> parser;
  std::unique_ptr<asio::ssl::stream<beast::tcp_stream&>> tls_stream;
  ClientResult& out;

  void fail(const char* what, boost::system::error_code ec) { out.error = std::string(what) + ": " + ec.message(); }

  // The exchange once connected (and, for https://, after the handshake), on either stream.
  template <class Stream>
  void exchange(Stream& s) {
    bhttp::async_write(s, req, [self = shared_from_this(), &s](boost::system::error_code ec, std::size_t) {
      if (ec) return self->fail("write", ec);
      bhttp::async_read(s, self->buffer, self->parser, [self](boost::system::error_code ec, std::size_t) {
        if (ec == asio::ssl::error::stream_truncated) {  // a close without close_notify ends a close-delimited body
          boost::system::error_code eof_ec;
          self->parser.put_eof(eof_ec);
          if (!eof_ec && self->parser.is_done()) ec = {};
        }
        if (ec) return self->fail("read", ec);
        auto& res = self->parser.get();
        auto& out = self->out;
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
  }
};

// Starts `r` on `ioc`; `out` receives the result by the time ioc.run() returns.
void start_fetch(asio::io_context& ioc, const FetchRequest& r, ClientResult& out) {
  const bool tls = r.url.rfind("https://", 0) == 0;
  if (!tls && r.url.rfind("http://", 0) != 0) {
    out.error = "only http:// and https:// URLs are supported";
    return;
  }
  std::string rest = r.url.substr(tls ? 8 : 7);
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

  auto f = std::make_shared<Fetch>(ioc, out);
  f->parser.body_limit(r.max_body);
  auto verb = bhttp::string_to_verb(r.method);
  f->req.method(verb == bhttp::verb::unknown ? bhttp::verb::get : verb);
  f->req.target(target);
  f->req.version(11);
  f->req.set(bhttp::field::host, authority);
  f->req.set(bhttp::field::connection, "close");
  for (const auto& h : r.headers) f->req.set(h.name, h.value);
  if (!r.body.empty()) f->req.body() = r.body;
  f->req.prepare_payload();
  if (tls) {
    f->tls_stream = std::make_unique<asio::ssl::stream<beast::tcp_stream&>>(f->stream, tls::client_context());
    if (!tls::prepare_client(f->tls_stream->native_handle(), host)) {
      out.error = "TLS: invalid host " + host;
      return;
    }
  }
  f->stream.expires_after(r.timeout);
  f->resolver.async_resolve(host, port, [f](boost::system::error_code ec, asio::ip::tcp::resolver::results_type results) {
    if (ec) return f->fail("resolve", ec);
    f->stream.async_connect(results, [f](boost::system::error_code ec, const asio::ip::tcp::endpoint&) {
      if (ec) return f->fail("connect", ec);
      // The request goes out in pieces: without this, the second waits for a delayed ACK (Nagle).
      boost::system::error_code nd;
      f->stream.socket().set_option(asio::ip::tcp::no_delay(true), nd);
      if (!f->tls_stream) return f->exchange(f->stream);
      f->tls_stream->async_handshake(asio::ssl::stream_base::client, [f](boost::system::error_code ec) {
        if (ec) return f->fail("TLS handshake", ec);
        f->exchange(*f->tls_stream);
      });
    });
  });
}

}  // namespace

ClientResult fetch(const std::string& method, const std::string& url, const std::vector<Header>& headers,
                   const std::string& body, std::chrono::milliseconds timeout, std::size_t max_body,
                   FetchCancel* cancel) {
  ClientResult out;
  asio::io_context ioc;
  start_fetch(ioc, FetchRequest{method, url, headers, body, timeout, max_body}, out);
  if (!out.error.empty()) return out;
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

std::vector<ClientResult> fetch_all(const std::vector<FetchRequest>& requests) {
  std::vector<ClientResult> out(requests.size());
  asio::io_context ioc;
  for (std::size_t i = 0; i < requests.size(); ++i) start_fetch(ioc, requests[i], out[i]);
  ioc.run();
  return out;
}

}  // namespace ag::http
