#pragma once
// The request head the proxy sends upstream, as a pure function of the request and the context
// (docs/worker.md, "Per request", 6): hop-by-hop fields, those the Connection field lists,
// credentials the gateway consumed and client-address fields a client may not state are dropped;
// X-Forwarded-*, X-Real-IP, X-Request-Id and X-Gateway-* are set; the body is framed again.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "http/h1/http1.hpp"
#include "gateway/pipeline/context.hpp"

namespace ag::gateway {

struct UpstreamHeadInput {
  std::string_view method;
  const config::Upstream* upstream = nullptr;  // the project's, or the chosen service target's
  std::span<const http1::Field> fields;        // the client's header fields, in order
  std::string_view peer_ip;                    // the connection's peer
  std::string_view xff;                        // the client's X-Forwarded-For (joined)
  std::string_view client_host;                // the client's Host
  std::string_view connection;                 // the client's Connection value (joined)
  bool peer_trusted = false;                   // the peer is a trusted proxy
  bool drop_underscores = false;               // WORKER_UNDERSCORE_HEADERS drops names with '_'
  bool expect_continue = false;                // the gateway answers Expect: 100-continue itself
  bool upgrade = false;                        // a WebSocket upgrade
  bool has_body = false, chunked = false;
  std::optional<std::uint64_t> content_length;
};

// Offsets into the head, so a retry on another service target can swap host and base path.
struct UpstreamHeadMarks {
  std::size_t target_at = 0;  // where the request target starts
  std::size_t host_at = 0;    // the Host value
  std::size_t host_end = 0;   // after the Host line's CRLF
  bool send_chunked = false;  // the body goes upstream chunked
};

// Writes the head (ending in the blank line) into `out`, replacing its contents.
UpstreamHeadMarks build_upstream_head(std::string& out, const Context& ctx, const UpstreamHeadInput& in);

}  // namespace ag::gateway
