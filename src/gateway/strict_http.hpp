#pragma once
// What the worker refuses in a request head before any other work, and how it normalises the
// path it routes and forwards (docs/worker.md, "Strict HTTP"). Pure functions, no I/O: the
// connection loop collects the facts in its one pass over the fields and asks these.
//
// The rule behind every refusal: input that two parsers could read two ways (framing, the host,
// which credential counts, where a path points) is refused, never guessed, because a backend
// or another proxy in the chain may guess differently (request smuggling, path confusion).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "gateway/pipeline/context.hpp"

namespace ag::gateway::strict {

// The fields of one request head that decide its framing and its credential, counted over all
// occurrences (the connection's scan fills it).
struct HeadFacts {
  unsigned version = 11;
  std::uint8_t host_count = 0;
  std::string_view host;                // the first Host value
  bool host_valid = false;              // already known valid (skips valid_host)
  std::uint8_t transfer_encoding_count = 0;
  std::string_view transfer_encoding;   // all Transfer-Encoding values, joined with ", "
  bool has_content_length = false;
  std::uint8_t content_length_count = 0;
  std::uint8_t api_key_count = 0;
  std::uint8_t authorization_count = 0;
  bool underscore_name = false;         // some field name contains '_'
};

enum class Underscores : std::uint8_t { kDrop, kAllow, kReject };

// The refusal for a head that cannot be served unambiguously, or a reply with status 0.
// Every refusal closes the connection: bytes after an ill-framed head have no defined meaning.
//  - Transfer-Encoding: only exactly `chunked` is served (RFC 9112 6.1, 6.3): a final coding
//    other than chunked -> 400; another coding before chunked -> 501; with Content-Length, or in
//    an HTTP/1.0 request -> 400.
//  - Two Content-Length headers, even with the same value -> 400.
//  - Host: an HTTP/1.1 request without one, any request with two, or an invalid one -> 400.
//  - Two X-API-Key or two Authorization headers -> 400 (never "first wins").
//  - A field name with '_' -> 400 under Underscores::kReject.
LocalReply check_head(const HeadFacts& f, Underscores underscores);

// RFC 3986 host [":" port] as a Host header may carry it (RFC 9110 7.2); an empty value is valid.
bool valid_host(std::string_view host);

// The path part of a request target after dot-segment removal (RFC 3986 5.2.4), where "%2e" and
// "%2E" count as "." for that purpose only, and with "//" merged into "/" when `merge_slashes`.
// Everything else is kept byte for byte: "%2F" stays encoded and is not a separator.
enum class PathResult : std::uint8_t {
  kUnchanged,  // `out` untouched: use the path as it is
  kChanged,    // `out` holds the normalised path
  kAboveRoot,  // ".." would climb above "/": refuse (400)
};
PathResult normalize_path(std::string_view path, bool merge_slashes, std::string& out);

// Whether a forwarded request's field is one the client may not set through an untrusted peer:
// the addresses that only the gateway vouches for (X-Real-IP is always the gateway's own).
// `lower_name` in lower case.
bool is_client_ip_field(std::string_view lower_name);

}  // namespace ag::gateway::strict
