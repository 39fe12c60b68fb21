// libFuzzer target for the worker's request parsing (src/gateway/connection.cpp): the bytes a
// client sends go through Beast's request_parser<buffer_body, ArenaAllocator<char>> fed with
// put() exactly as read_head() does (header_limit = the default WORKER_MAX_HEADER_BYTES, no body
// limit, fields carved from the connection's Arena), then through what the worker does with a
// parsed head: request id, client address behind trusted proxies, service-route matching against
// a small snapshot, credentials (API key lookup, bearer token), the access-log line, and the
// request body (streamed through a 16 KiB buffer_body window as read_body_some() does).
//
// Input: byte 0 chooses how the bytes arrive (read size 1..256, or the worker's 8 KiB reads);
// the rest is what the client sends, up to end of stream.
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <simdjson.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>

#include "common/crypto.hpp"
#include "config/snapshot.hpp"
#include "control/service/api_key.hpp"
#include "gateway/arena.hpp"
#include "gateway/pipeline.hpp"

namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using ag::gateway::Arena;
using ag::gateway::ArenaAllocator;
using ReqParser = http::request_parser<http::buffer_body, ArenaAllocator<char>>;
using error_code = boost::system::error_code;

constexpr std::size_t kMaxHeaderBytes = 16 * 1024;  // WorkerOptions::max_header_bytes default
constexpr std::size_t kReadSize = 8 * 1024;          // connection.cpp kReadSize
constexpr std::size_t kChunk = 16 * 1024;            // connection.cpp kChunk
constexpr std::int64_t kNowMs = 1'700'000'100'000;

// A valid API key (format of control/service/api_key.hpp) listed in the snapshot below; the seed
// corpus uses it.
constexpr std::string_view kKnownKey = "agk_Fuzz0001_0123456789abcdefghijABCDEFGHIJ0123456789abc1v08wc";

struct World {
  std::shared_ptr<const ag::config::Snapshot> snapshot;
  std::vector<ag::gateway::Cidr> trusted;
  std::vector<ag::gateway::Cidr> any;  // every address: cidr_contains(any, s) iff s is an address
  ag::gateway::TokenCache cache;
};

World& world() {
  static World* w = [] {
    spdlog::set_level(spdlog::level::off);
    ag::crypto::init();
    auto* nw = new World;
    if (!ag::control::api_key_well_formed(kKnownKey)) __builtin_trap();
    const std::string hash = ag::crypto::sha256_hex(kKnownKey);
    const std::string doc = R"({"version":7,"projects":[
      {"id":"p-shop","name":"shop","slug":"shop","upstream_base_url":"http://127.0.0.1:9/api",
       "rate_limit":{"requests_per_minute":60,"burst":5},
       "services":[{"name":"echo","targets":["http://127.0.0.1:9001","http://[::1]:9002"]},
                   {"name":"api","targets":["http://127.0.0.1:9003/v2"],"balancer":"least_request"}],
       "keys":[{"id":"k1","public_id":"Fuzz0001","hash":")" + hash + R"(","expires_at":null}]},
      {"id":"p-plain","name":"plain","upstream_base_url":"http://127.0.0.1:9004","keys":[]}],
      "revoked_tokens":[{"jti":"revoked-jti","expires_at":null}]})";
    auto built = ag::config::build_snapshot(doc);
    if (!built.snapshot) __builtin_trap();
    nw->snapshot = built.snapshot;
    nw->trusted = ag::gateway::parse_cidrs("10.0.0.0/8, ::1/128, 192.168.1.5");
    nw->any = ag::gateway::parse_cidrs("::/0");
    return nw;
  }();
  return *w;
}

// read_head() without the socket: `src` stands for the connection, `step` bytes per read.
error_code read_head(std::string_view& src, std::size_t step, beast::flat_buffer& b, ReqParser& p) {
  error_code ec;
  std::size_t consumed = 0;
  for (;;) {
    while (b.size() > 0) {
      std::size_t used = p.put(b.data(), ec);
      b.consume(used);
      consumed += used;
      if (consumed > kMaxHeaderBytes) return http::error::header_limit;
      if (ec == http::error::need_more) {
        ec = {};
        if (consumed + b.size() > kMaxHeaderBytes) return http::error::header_limit;
        break;
      }
      if (ec) return ec;
      if (p.is_header_done()) return {};
      if (used == 0) break;
    }
    std::size_t room = std::min(b.max_size() - b.size(), kReadSize);
    if (room == 0) return http::error::header_limit;
    if (src.empty()) return b.size() == 0 && !p.got_some() ? http::error::end_of_stream : http::error::partial_message;
    std::size_t n = std::min({room, step, src.size()});
    auto dst = b.prepare(n);
    std::memcpy(dst.data(), src.data(), n);
    b.commit(n);
    src.remove_prefix(n);
  }
}

// read_body_some() without the socket, repeated until the body ends, fails, or the input runs out.
void read_body(std::string_view& src, std::size_t step, beast::flat_buffer& b, ReqParser& p, char* window) {
  std::uint64_t total = 0;
  while (!p.is_done()) {
    auto& body = p.get().body();
    body.data = window;
    body.size = kChunk;
    error_code ec;
    bool progress = false;
    while (b.size() > 0) {
      std::size_t used = p.put(b.data(), ec);
      b.consume(used);
      if (ec == http::error::need_buffer) {
        ec = {};
        progress = true;
        break;
      }
      if (ec == http::error::need_more) {
        ec = {};
        break;
      }
      if (ec) return;
      if (p.is_done() || body.size != kChunk) {
        progress = true;
        break;
      }
      if (used == 0) break;
    }
    if (body.size > kChunk) __builtin_trap();
    total += kChunk - body.size;
    if (progress) continue;
    std::size_t room = std::min(b.max_size() - b.size(), kReadSize);
    if (room == 0) return;  // buffer_overflow
    if (src.empty()) {
      error_code eec;
      p.put_eof(eec);
      return;
    }
    std::size_t n = std::min({room, step, src.size()});
    auto dst = b.prepare(n);
    std::memcpy(dst.data(), src.data(), n);
    b.commit(n);
    src.remove_prefix(n);
  }
  if (auto len = p.content_length(); len && !p.chunked() && total > *len) __builtin_trap();
}

bool has_edge_blank(std::string_view v) {
  return !v.empty() && (v.front() == ' ' || v.back() == ' ' || v.back() == '\t');
}

void check_log_line(const std::string& line) {
  // The access log is one JSON object per line: escaping must keep it parseable. Bytes that are
  // not UTF-8 (HTTP allows obs-text in fields and targets) are copied through as they are, so a
  // UTF-8 error is the one failure that is not the escaper's.
  static simdjson::dom::parser parser;
  simdjson::padded_string text(line);
  simdjson::dom::element e;
  auto err = parser.parse(text).get(e);
  if (err != simdjson::SUCCESS && err != simdjson::UTF8_ERROR) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = world();
  if (size == 0) return 0;
  const std::size_t step = data[0] == 0 ? kReadSize : 1 + data[0];
  std::string_view src(reinterpret_cast<const char*>(data + 1), size - 1);

  Arena arena;
  beast::flat_buffer buf(std::max<std::size_t>(64 * 1024, kMaxHeaderBytes + 8192));
  static char window[kChunk];
  // Keep-alive: requests follow one another on the connection until one fails or the input ends.
  for (int request = 0; request < 8; ++request) {
    arena.reset();
    ReqParser parser(std::piecewise_construct, std::make_tuple(), std::make_tuple(ArenaAllocator<char>(arena)));
    parser.header_limit(static_cast<std::uint32_t>(kMaxHeaderBytes));
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    if (read_head(src, step, buf, parser)) return 0;
    if (!parser.is_header_done()) __builtin_trap();

    auto& req = parser.get();
    ag::gateway::Context ctx;
    ctx.snapshot = w.snapshot;
    auto rid = req["X-Request-Id"];
    ctx.request_id = ag::gateway::valid_request_id(rid) ? std::string(rid) : std::string("generated");
    const std::string_view peer = request % 2 ? "10.1.2.3" : "::1";
    ctx.client_ip = ag::gateway::client_ip(peer, req["X-Forwarded-For"], w.trusted);
    if (ctx.client_ip != peer) {
      // Only an address from X-Forwarded-For that is not itself a trusted proxy.
      if (!ag::gateway::cidr_contains(w.any, ctx.client_ip) || ag::gateway::cidr_contains(w.trusted, ctx.client_ip))
        __builtin_trap();
    }
    const std::string_view method = req.method_string();
    const std::string_view target = req.target();
    const std::string_view path = target.substr(0, target.find('?'));
    const std::string_view ua = req[http::field::user_agent];
    (void)parser.keep_alive();
    (void)parser.chunked();
    (void)parser.upgrade();
    (void)parser.content_length();
    (void)req.version();
    (void)req.method();

    if (!target.empty() && target.front() == '/') {
      const bool service_route = ag::gateway::match_service_route(ctx, target);
      if (service_route) {
        if (!ctx.project || !ctx.service || ctx.project->services.empty()) __builtin_trap();
        const std::string_view rest = target.substr(1);
        if (rest.substr(0, ctx.project->slug.size()) != ctx.project->slug) __builtin_trap();
        if (!target.ends_with(ctx.forward_target)) __builtin_trap();
      }
      ag::gateway::LocalReply reply;
      auto key_it = req.find("X-API-Key");
      if (key_it != req.end()) {
        const std::string_view key = key_it->value();
        ag::gateway::Context kctx;
        kctx.snapshot = w.snapshot;
        if (ag::gateway::identify(kctx, key, true, kNowMs, reply)) {
          if (key != kKnownKey || !kctx.project || !kctx.key) __builtin_trap();
        }
      } else {
        const std::string_view authz = req[http::field::authorization];
        const std::string_view token = ag::gateway::bearer_token(authz);
        if (has_edge_blank(token)) __builtin_trap();
        if (!token.empty()) {
          std::string claim_project, claim_service;
          ag::gateway::TokenCheck check{"gateway", "antigravity", 30};
          if (ag::gateway::identify_token(ctx, w.cache, authz, check, kNowMs / 1000, claim_project, claim_service, reply))
            __builtin_trap();  // the snapshot has no verification keys
        }
      }
    }
    const std::string endpoint = ag::gateway::normalise_endpoint(path);
    if (!ag::gateway::needs_normalising(path) && endpoint != path) __builtin_trap();

    ctx.status = 200;
    std::string line;
    ag::gateway::append_log_line(line, ctx, ag::gateway::LogFields{method, path, ua}, ctx.start_ns + 1'000'000);
    if (line.empty() || line.back() != '\n') __builtin_trap();
    line.pop_back();
    check_log_line(line);

    if (!parser.is_done()) read_body(src, step, buf, parser, window);
    if (!parser.is_done() || !parser.keep_alive()) return 0;
  }
  return 0;
}
