#pragma once
// Reading HTTP/1.x messages from a stream: heads (the lean parser first, Beast's parser for the
// rest, http1.hpp) and body pieces into a Beast buffer_body window, with the errors Beast's own
// composed reads report. `Message` is one head as the worker's pipeline reads it, from either
// parser. Used by the worker's connections for both the client and the upstream side.
//
// Reading with Beast's parser through put() on our own buffer, instead of Beast's composed
// async_read_header/async_read_some: the same parsing without two layers of composed operations
// per read (measured: about 1 µs per proxied request).
#include <utility>  // Boost 1.74 awaitable.hpp uses std::exchange without including it
#include <boost/asio/error.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "http/h1/http1.hpp"
#include "net/executor.hpp"

namespace ag::http1 {

namespace beast = boost::beast;
namespace asio = boost::asio;
using error_code = boost::system::error_code;
using net::Task;
using net::use_task;

// The end of a stream. A TLS peer that closes without close_notify ends it too: HTTP's own
// framing (Content-Length, chunked) is what tells a complete message from a cut one, and a body
// delimited by the close is accepted from such peers as common clients do.
inline bool is_eof(const error_code& ec) { return ec == asio::error::eof || ec == asio::ssl::error::stream_truncated; }

inline constexpr std::size_t kReadSize = 8 * 1024;

// Room for the next read, or 0 when the buffer is at its limit. (Reads are done inline in the
// helpers below rather than in a helper coroutine: every coroutine call costs a frame.)
inline std::size_t read_room(const beast::flat_buffer& b) {
  return std::min(b.max_size() - b.size(), kReadSize);
}

// Until the parser has the complete head. Errors as Beast's async_read_header reports them.
// `limit`: bytes the head may take (Beast's own limit only applies to its composed reads).
// `lean`: try the lean parser first (http1.hpp); it is cleared when the lean parser declines and
// the head is left to Beast's. On return with no error and `lean` still set, `*lean` holds the
// head and its bytes are consumed (the views stay valid until the buffer's next prepare()).
template <class Stream, class Parser>
inline Task<void> read_head(Stream& s, beast::flat_buffer& b, Parser& p, error_code& ec, std::size_t limit,
                     http1::Head*& lean, bool request) {
  ec = {};
  std::size_t consumed = 0;
  for (;;) {
    if (lean && b.size() > 0) {
      std::string_view in(static_cast<const char*>(b.data().data()), b.size());
      auto r = request ? http1::parse_request(in, *lean) : http1::parse_response(in, *lean);
      if (r == http1::Result::kComplete && lean->size <= limit) {
        b.consume(lean->size);
        co_return;
      }
      // Declined, or over the limit (Beast's parser gives the error answer).
      if (r != http1::Result::kIncomplete || b.size() > limit) lean = nullptr;
    }
    while (!lean && b.size() > 0) {
      std::size_t used = p.put(b.data(), ec);
      b.consume(used);
      consumed += used;
      if (consumed > limit) {
        ec = beast::http::error::header_limit;
        co_return;
      }
      if (ec == beast::http::error::need_more) {
        ec = {};
        if (consumed + b.size() > limit) {
          ec = beast::http::error::header_limit;
          co_return;
        }
        break;
      }
      if (ec) co_return;
      if (p.is_header_done()) co_return;
      if (used == 0) break;
    }
    std::size_t room = read_room(b);
    if (room == 0) {
      ec = beast::http::error::header_limit;
      co_return;
    }
    std::size_t n = co_await s.async_read_some(b.prepare(room), asio::redirect_error(use_task, ec));
    if (ec) {
      if (is_eof(ec)) ec = b.size() == 0 && !p.got_some() ? beast::http::error::end_of_stream : beast::http::error::partial_message;
      co_return;
    }
    b.commit(n);
  }
}

// A '\n' not preceded by '\r' in the buffered bytes (which begin at a framing element: Beast
// consumes chunk lines whole).
inline bool has_bare_lf(const beast::flat_buffer& b) {
  const char* d = static_cast<const char*>(b.data().data());
  for (std::size_t i = 0; i < b.size(); ++i)
    if (d[i] == '\n' && (i == 0 || d[i - 1] != '\r')) return true;
  return false;
}

// Reads body bytes into the parser's buffer_body window until some arrive or the body ends.
// `eof_ends_body`: a response delimited by the connection closing.
template <class Stream, class Parser>
inline Task<void> read_body_some(Stream& s, beast::flat_buffer& b, Parser& p, error_code& ec) {
  ec = {};
  auto& body = p.get().body();
  const std::size_t window = body.size;
  for (;;) {
    // Non-eager put() stops after each element (a chunk header, then its data): call it while it
    // makes progress, and read from the socket only when it needs more bytes.
    while (b.size() > 0) {
      std::size_t used = p.put(b.data(), ec);
      b.consume(used);
      if (ec == beast::http::error::need_buffer) {
        ec = {};
        co_return;
      }
      if (ec == beast::http::error::need_more) {
        ec = {};
        // Beast's chunk parser waits for a CRLF that a client framing with bare LFs never sends
        // (RFC 9112 7.1 requires CRLF): a bare LF among the unparsed framing bytes is refused now.
        if (p.chunked() && has_bare_lf(b)) ec = beast::http::error::bad_chunk;
        if (ec) co_return;
        break;
      }
      if (ec) co_return;
      if (p.is_done() || body.size != window) co_return;
      if (used == 0) break;
    }
    std::size_t room = read_room(b);
    if (room == 0) {
      ec = beast::http::error::buffer_overflow;
      co_return;
    }
    std::size_t n = co_await s.async_read_some(b.prepare(room), asio::redirect_error(use_task, ec));
    if (ec) {
      if (is_eof(ec)) {
        error_code eec;
        p.put_eof(eec);
        ec = eec ? error_code(beast::http::error::partial_message) : error_code();
      }
      co_return;
    }
    b.commit(n);
  }
}

// A message head as the pipeline reads it, from the lean parser or from Beast's (whose fields are
// listed into a reused vector of views into its container).
struct Message {
  std::string_view method, target, reason;
  std::string_view connection;  // the first Connection header's value
  beast::http::verb verb = beast::http::verb::unknown;
  int status = 0;
  unsigned version = 11;
  const http1::Field* fields_begin = nullptr;
  const http1::Field* fields_end = nullptr;
  bool lean = false;  // parsed by the lean parser: no body (request) or a Content-Length body (response)
  bool keep_alive = false, has_body = false, chunked = false, upgrade = false;
  bool underscore = false;  // some field name contains '_' (WORKER_UNDERSCORE_HEADERS)
  std::optional<std::uint64_t> content_length;

  const http1::Field* begin() const { return fields_begin; }
  const http1::Field* end() const { return fields_end; }
};

template <bool isRequest, class Body, class Allocator>
inline void from_beast(const beast::http::parser<isRequest, Body, Allocator>& p, std::vector<http1::Field>& fields, Message& m) {
  const auto& h = p.get();
  if constexpr (isRequest) {
    m.method = h.method_string();
    m.target = h.target();
    m.verb = h.method();
  } else {
    m.status = static_cast<int>(h.result_int());
    m.reason = h.reason();
  }
  m.version = h.version();
  m.connection = h[beast::http::field::connection];
  fields.clear();
  m.underscore = false;
  for (const auto& f : h) {
    fields.push_back({f.name_string(), f.value()});
    if (has_underscore(f.name_string())) m.underscore = true;
  }
  m.fields_begin = fields.data();
  m.fields_end = fields.data() + fields.size();
  m.keep_alive = p.keep_alive();
  m.has_body = !p.is_done();
  m.chunked = p.chunked();
  m.upgrade = p.upgrade();
  if (auto l = p.content_length()) m.content_length = *l;
}

inline void from_lean(const http1::Head& h, Message& m) {
  m.method = h.method;
  m.target = h.target;
  m.verb = h.method.empty() ? beast::http::verb::unknown : beast::http::string_to_verb(h.method);
  m.status = h.status;
  m.reason = h.reason;
  m.connection = h.connection;
  m.version = h.version;
  m.fields_begin = h.begin();
  m.fields_end = h.end();
  m.lean = true;
  m.keep_alive = h.keep_alive;
  m.underscore = h.underscore;
  m.has_body = h.status != 0 && h.content_length > 0;
  m.chunked = false;
  m.upgrade = false;
  if (h.has_length) m.content_length = h.content_length;
  else m.content_length.reset();
}

}  // namespace ag::http1
