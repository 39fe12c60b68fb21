// libFuzzer target for the worker's request parsing (src/gateway/connection.cpp): the bytes a
// client sends go through Beast's request_parser<buffer_body, ArenaAllocator<char>> fed with
// put() exactly as read_head() (http/h1/read.hpp) does (header_limit = the default WORKER_MAX_HEADER_BYTES, no body
// limit, fields carved from the connection's Arena), then through what the worker does with a
// parsed head: request id, client address behind trusted proxies, service-route matching against
// a small snapshot, credentials (API key lookup, bearer token), the access-log line, and the
// request body (streamed through a 16 KiB buffer_body window as read_body_some() does).
//
// Input: byte 0 chooses how the bytes arrive (read size 1..256, or the worker's 8 KiB reads);
// the rest is what the client sends, up to end of stream.
//
// The lean head parser (http/h1/http1.hpp), which read_head() tries before Beast's, is checked
// against Beast on the same bytes: the client's bytes at the start of every request on the
// connection go to http1::parse_request, and the whole input also to http1::parse_response (the
// corpus has response heads too). Whenever the lean parser completes a head, Beast's parser
// (empty_body, no header or body limit) must complete it without error and agree on the head's
// size, method, target, version, status, reason, keep-alive, Content-Length and fields; the lean
// parser must also give the same answer on the head alone and kIncomplete on shorter prefixes (the
// ones read_head() would see with this input's read size). A disagreement prints what differs and
// traps. (The pipeline checks below still run on Beast's parse of the head.)
//
// The strict checks (gateway/strict_http.hpp) run on the facts the connection collects from the
// same fields: a head they accept with a Transfer-Encoding must be one Beast frames as chunked
// with no Content-Length (the one reading of the body both sides share). Path normalisation must
// give a path that starts with '/', holds no "." or ".." segment (nor "//" when merging), is no
// longer than its input and is its own normal form.
#include <boost/asio/buffer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/status.hpp>
#include <simdjson.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
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
#include "common/api_key.hpp"
#include "gateway/arena.hpp"
#include "common/ascii.hpp"
#include "http/h1/http1.hpp"
#include "gateway/pipeline/context.hpp"
#include "gateway/stages/accept/client.hpp"
#include "gateway/stages/identify/credentials.hpp"
#include "gateway/stages/log/log_line.hpp"
#include "gateway/stages/proxy/headers.hpp"
#include "gateway/stages/risk/endpoint.hpp"
#include "gateway/strict_http.hpp"
#include "config/context.hpp"

// Snapshots here resolve IP literals only: a fuzzed document names arbitrary hosts, and real DNS
// lookups would make each execution as slow as the resolver.
static ag::config::BuildContext fuzz_ctx(std::make_unique<ag::config::NumericResolver>());

namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using ag::gateway::Arena;
using ag::gateway::ArenaAllocator;
using ReqParser = http::request_parser<http::buffer_body, ArenaAllocator<char>>;
using error_code = boost::system::error_code;
namespace net = boost::asio;

constexpr std::size_t kMaxHeaderBytes = 16 * 1024;  // WorkerOptions::max_header_bytes default
constexpr std::size_t kReadSize = 8 * 1024;          // connection.cpp kReadSize
constexpr std::size_t kChunk = 16 * 1024;            // connection.cpp kChunk
constexpr std::int64_t kNowMs = 1'700'000'100'000;

// A valid API key (format of common/api_key.hpp) listed in the snapshot below; the seed
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
    if (!ag::api_key_well_formed(kKnownKey)) __builtin_trap();
    const std::string hash = ag::crypto::sha256_hex(kKnownKey);
    const std::string doc = R"({"version":7,"projects":[
      {"id":"p-shop","name":"shop","slug":"shop","upstream_base_url":"http://127.0.0.1:9/api",
       "rate_limit":{"requests_per_minute":60,"burst":5},
       "services":[{"name":"echo","targets":["http://127.0.0.1:9001","http://[::1]:9002"]},
                   {"name":"api","targets":["http://127.0.0.1:9003/v2"],"balancer":"least_request"}],
       "keys":[{"id":"k1","public_id":"Fuzz0001","hash":")" + hash + R"(","expires_at":null}]},
      {"id":"p-plain","name":"plain","upstream_base_url":"http://127.0.0.1:9004","keys":[]}],
      "revoked_tokens":[{"jti":"revoked-jti","expires_at":null}]})";
    auto built = ag::config::build_snapshot(doc, fuzz_ctx);
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

// --- the lean parser against Beast's ---------------------------------------------------------
namespace http1 = ag::http1;

[[noreturn]] void disagree(const char* what, std::string_view in) {
  std::fprintf(stderr, "http1 differential: %s (input %zu bytes:", what, in.size());
  for (unsigned char c : in.substr(0, 512)) std::fprintf(stderr, c >= 0x20 && c < 0x7f && c != '\\' ? "%c" : "\\x%02x", c);
  std::fprintf(stderr, ")\n");
  __builtin_trap();
}

template <bool isRequest>
void lean_differential(std::string_view in, std::size_t step) {
  static http1::Head h;  // reused, as the connection reuses its heads: nothing may leak from the last one
  const auto r = isRequest ? http1::parse_request(in, h) : http1::parse_response(in, h);

  http::parser<isRequest, http::empty_body> p;
  p.header_limit(std::numeric_limits<std::uint32_t>::max());
  p.body_limit(std::numeric_limits<std::uint64_t>::max());
  error_code ec;
  std::size_t used = 0;
  while (!p.is_header_done()) {
    std::size_t n = p.put(net::const_buffer(in.data() + used, in.size() - used), ec);
    used += n;
    if (ec || n == 0) break;
  }
  const bool beast_done = !ec && p.is_header_done();

  if (r != http1::Result::kComplete) {
    // A head Beast has all of is not "incomplete": read_head() would wait for bytes that never come.
    if (r == http1::Result::kIncomplete && beast_done) disagree("lean kIncomplete, Beast complete", in);
    return;
  }
  if (ec && ec != http::error::need_more) disagree("lean kComplete, Beast error", in);
  if (!beast_done) disagree("lean kComplete, Beast needs more", in);
  if (h.size != used || h.size > in.size()) disagree("head size", in);
  const auto& m = p.get();
  if (h.version != m.version()) disagree("version", in);
  if (h.keep_alive != p.keep_alive()) disagree("keep_alive", in);
  const auto len = p.content_length();
  if (h.has_length != len.has_value() || (len && *len != h.content_length)) disagree("content_length", in);
  // Framing: no body after a request head; a response's body is its Content-Length.
  const bool lean_body = !isRequest && h.content_length > 0;
  if (p.is_done() == lean_body || p.chunked()) disagree("body framing", in);
  if constexpr (isRequest) {
    if (h.method != m.method_string()) disagree("method", in);
    if (h.target != m.target()) disagree("target", in);
    if (h.content_length != 0) disagree("request with a body", in);
  } else {
    if (h.status != static_cast<int>(m.result_int())) disagree("status", in);
    // Beast's header::reason() gives the standard phrase for an empty one.
    const std::string_view want = h.reason.empty() ? http::obsolete_reason(m.result()) : h.reason;
    if (want != m.reason()) disagree("reason", in);
    if (!h.has_length) disagree("response without Content-Length", in);
  }
  // Fields: Beast's container keeps a repeated name next to its previous occurrence; apply that
  // rule to the lean parser's wire order, then compare the lists exactly.
  std::vector<http1::Field> order;
  for (const auto& f : h) {
    std::size_t at = order.size();
    for (std::size_t j = order.size(); j-- > 0;)
      if (ag::iequals_ascii(order[j].name, f.name)) {
        at = j + 1;
        break;
      }
    order.insert(order.begin() + static_cast<std::ptrdiff_t>(at), f);
  }
  std::size_t i = 0;
  for (const auto& f : m) {
    if (i == order.size() || f.name_string() != order[i].name || f.value() != order[i].value) disagree("fields", in);
    ++i;
  }
  if (i != order.size()) disagree("field count", in);
  const char* lo = in.data();
  const char* hi = in.data() + h.size;
  auto inside = [&](std::string_view v) { return v.empty() || (v.data() >= lo && v.data() + v.size() <= hi); };
  for (const auto& f : h)
    if (!inside(f.name) || !inside(f.value)) disagree("field view outside the head", in);
  if (!inside(h.method) || !inside(h.target) || !inside(h.reason)) disagree("start line view outside the head", in);

  // The same answer from the head alone, and kIncomplete from the prefixes read_head() would see.
  http1::Head again;
  const std::string_view head = in.substr(0, h.size);
  auto r2 = isRequest ? http1::parse_request(head, again) : http1::parse_response(head, again);
  if (r2 != http1::Result::kComplete || again.size != h.size || again.field_count != h.field_count)
    disagree("head alone parsed differently", in);
  auto incomplete = [&](std::size_t k) {
    http1::Head ph;
    auto rp = isRequest ? http1::parse_request(in.substr(0, k), ph) : http1::parse_response(in.substr(0, k), ph);
    if (rp != http1::Result::kIncomplete) disagree("prefix of a complete head not kIncomplete", in);
  };
  incomplete(h.size - 1);
  for (std::size_t k = step, n = 0; k < h.size && n < 64; k += step, ++n) incomplete(k);
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

void check_strict(const http::request<http::buffer_body, http::basic_fields<ArenaAllocator<char>>>& req,
                  const ReqParser& parser, std::string_view path) {
  namespace strict = ag::gateway::strict;
  using ag::http1::name_is;
  strict::HeadFacts f;
  f.version = req.version();
  std::string te;
  for (const auto& field : req) {
    std::string_view n = field.name_string(), v = field.value();
    if (name_is(n, "host") && f.host_count++ == 0) f.host = v;
    if (name_is(n, "transfer-encoding")) {
      te += f.transfer_encoding_count++ ? ", " : "";
      te.append(v.data(), v.size());
    }
    if (name_is(n, "content-length")) f.has_content_length = true, ++f.content_length_count;
    if (name_is(n, "x-api-key")) ++f.api_key_count;
    if (name_is(n, "authorization")) ++f.authorization_count;
    if (n.find('_') != std::string_view::npos) f.underscore_name = true;
  }
  f.transfer_encoding = te;
  auto r = strict::check_head(f, strict::Underscores::kDrop);
  if (r.status == 0 && f.transfer_encoding_count > 0 && (!parser.chunked() || parser.content_length())) __builtin_trap();
  if (r.status != 0 && !r.close) __builtin_trap();
  if (path.empty() || path.front() != '/') return;
  for (bool merge : {true, false}) {
    std::string out;
    auto pr = strict::normalize_path(path, merge, out);
    if (pr == strict::PathResult::kAboveRoot) continue;
    std::string_view norm = pr == strict::PathResult::kChanged ? std::string_view(out) : path;
    if (norm.empty() || norm.front() != '/' || norm.size() > path.size()) __builtin_trap();
    if (merge && norm.find("//") != std::string_view::npos) __builtin_trap();
    std::string again;
    if (strict::normalize_path(norm, merge, again) != strict::PathResult::kUnchanged) __builtin_trap();
    std::size_t at = 1;
    for (;;) {
      std::size_t slash = norm.find('/', at);
      std::string_view seg = norm.substr(at, slash == std::string_view::npos ? std::string_view::npos : slash - at);
      if (seg == "." || seg == "..") __builtin_trap();
      if (slash == std::string_view::npos) break;
      at = slash + 1;
    }
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = world();
  if (size == 0) return 0;
  const std::size_t step = data[0] == 0 ? kReadSize : 1 + data[0];
  std::string_view src(reinterpret_cast<const char*>(data + 1), size - 1);

  Arena arena;
  beast::flat_buffer buf(std::max<std::size_t>(64 * 1024, kMaxHeaderBytes + 8192));
  static char window[kChunk];
  lean_differential<false>(src, step);
  // Keep-alive: requests follow one another on the connection until one fails or the input ends.
  std::string rest;
  for (int request = 0; request < 8; ++request) {
    // What the connection has for this request: bytes already read, then the rest of the stream.
    rest.assign(static_cast<const char*>(buf.data().data()), buf.size());
    rest.append(src.data(), src.size());
    lean_differential<true>(rest, step);
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
    check_strict(req, parser, path);

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
