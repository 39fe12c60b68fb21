#pragma once
// A lean parser for the common HTTP/1.x message heads: a request without a body and a response
// with a Content-Length. It reads the head in one pass and keeps the fields as views into the
// read buffer; nothing is copied or allocated.
//
// Why it exists: callgrind puts Beast's parser and header container at ~7,900 of the worker's
// ~33,000 user-space instructions per proxied request (parse_field, string_to_field, the field
// container's insert and element allocation), the largest single share left in user space
// (docs/benchmarks.md). This parser does the same work for the common case in ~1,000.
//
// It never decides that a message is malformed. Anything it does not fully understand — a body
// on a request, Transfer-Encoding, obsolete line folding, bare LF, bytes outside printable ASCII,
// 1xx/204/304 answers, Upgrade/Expect, too many fields, an incomplete head past the size limit —
// is declined, and the caller hands the same bytes to Beast's parser, which stays the authority
// for everything unusual (and for every error answer). What it accepts, Beast accepts with the
// same method, target, version, status and fields (checked by the unit tests and the
// http_request_head fuzz target).
#include <array>

#include "common/ascii.hpp"
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace ag::http1 {

struct Field {
  std::string_view name, value;  // value without surrounding whitespace
};

inline constexpr std::size_t kMaxFields = 48;

struct Head {
  // Request line.
  std::string_view method, target;
  // Status line.
  int status = 0;
  std::string_view reason;
  unsigned version = 11;  // 10 or 11
  std::array<Field, kMaxFields> fields;
  std::size_t field_count = 0;
  std::size_t size = 0;          // bytes of the head, final CRLF included
  bool keep_alive = false;       // as HTTP/1.x defines it from the version and Connection
  bool has_length = false;           // a Content-Length header was present
  std::uint64_t content_length = 0;  // its value (a request's is always 0)
  std::string_view connection;   // the first Connection header's value
  bool underscore = false;       // some field name contains '_'

  const Field* begin() const { return fields.data(); }
  const Field* end() const { return fields.data() + field_count; }
};

enum class Result : std::uint8_t {
  kComplete,    // `head` describes the message; its head is the first `head.size` bytes
  kIncomplete,  // no end of head yet: read more (the caller applies its size limit)
  kDecline,     // not for this parser: give the bytes to the full parser
};

// A request head with no body (no Content-Length other than 0, no Transfer-Encoding).
Result parse_request(std::string_view in, Head& head);
// A response head with a Content-Length and a status other than 1xx, 204 and 304.
Result parse_response(std::string_view in, Head& head);

// Case-insensitive comparison of a field name (or a token) with `lower`, which must consist of
// lower-case letters, digits and '-' only.
bool name_is(std::string_view name, std::string_view lower);
using ag::trim_ows;  // common/ascii.hpp
// True when `token` is in the comma-separated list (case-insensitive, optional whitespace).
bool has_token(std::string_view list, std::string_view token);
// True when a field name holds a '_' (such names are dropped or refused: WORKER_UNDERSCORE_HEADERS).
inline bool has_underscore(std::string_view name) { return std::memchr(name.data(), '_', name.size()) != nullptr; }

}  // namespace ag::http1
