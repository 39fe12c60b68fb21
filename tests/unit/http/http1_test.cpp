// The lean HTTP/1.x head parser (src/http/h1/http1.hpp): what it completes, what it leaves
// incomplete, what it declines, and — for everything it completes — that Beast's parser (the
// authority, Boost 1.74) completes the same head with the same meaning. The differential check is
// one helper used by the explicit cases and by a randomized test over mutated heads.
#include "common/ascii.hpp"
#include "http/h1/http1.hpp"

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/status.hpp>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ag::http1 {
namespace {

namespace http = boost::beast::http;
using error_code = boost::system::error_code;
using namespace std::string_view_literals;
using Fields = std::vector<std::pair<std::string, std::string>>;

// ---------------------------------------------------------------------------------------------
// Helpers

std::string escape(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\r') out += "\\r";
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\\') out += "\\\\";
    else if (c >= 0x20 && c < 0x7f) out += static_cast<char>(c);
    else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

const char* result_name(Result r) {
  switch (r) {
    case Result::kComplete: return "kComplete";
    case Result::kIncomplete: return "kIncomplete";
    case Result::kDecline: return "kDecline";
  }
  return "?";
}

Result parse(std::string_view in, Head& h, bool request) {
  return request ? parse_request(in, h) : parse_response(in, h);
}

// Beast's view of a head: a request_parser / response_parser<empty_body> fed with put() on the
// same bytes, without limits (the lean parser has none; the caller applies its own).
struct BeastHead {
  enum class State { kComplete, kNeedMore, kError } state = State::kNeedMore;
  error_code ec;
  std::size_t consumed = 0;
  std::string method, target, reason;
  unsigned version = 0;
  int status = 0;
  bool keep_alive = false;
  bool body = false;  // a body follows the head (the parser is not done after it)
  bool chunked = false;
  std::optional<std::uint64_t> content_length;
  Fields fields;  // in the order Beast's container iterates them
};

template <bool isRequest>
BeastHead beast_parse(std::string_view in) {
  http::parser<isRequest, http::empty_body> p;
  p.header_limit(std::numeric_limits<std::uint32_t>::max());
  p.body_limit(std::numeric_limits<std::uint64_t>::max());
  BeastHead r;
  error_code ec;
  while (!p.is_header_done()) {
    std::size_t used = p.put(boost::asio::const_buffer(in.data() + r.consumed, in.size() - r.consumed), ec);
    r.consumed += used;
    if (ec || used == 0) break;
  }
  r.ec = ec;
  if (ec && ec != http::error::need_more) {
    r.state = BeastHead::State::kError;
    return r;
  }
  if (!p.is_header_done()) return r;  // kNeedMore
  r.state = BeastHead::State::kComplete;
  const auto& m = p.get();
  if constexpr (isRequest) {
    r.method = std::string(m.method_string());
    r.target = std::string(m.target());
  } else {
    r.status = static_cast<int>(m.result_int());
    r.reason = std::string(m.reason());
  }
  r.version = m.version();
  r.keep_alive = p.keep_alive();
  r.body = !p.is_done();
  r.chunked = p.chunked();
  if (auto l = p.content_length()) r.content_length = *l;
  for (const auto& f : m) r.fields.emplace_back(std::string(f.name_string()), std::string(f.value()));
  return r;
}

BeastHead beast_parse(std::string_view in, bool request) {
  return request ? beast_parse<true>(in) : beast_parse<false>(in);
}

// Beast's basic_fields keeps a repeated field next to the previous one of the same name
// (case-insensitive) instead of at the end of the list (basic_fields::insert, "keep duplicate
// fields together"). This applies that rule to the lean parser's fields, which are in wire order.
Fields beast_order(const Head& h) {
  Fields out;
  for (const auto& f : h) {
    std::size_t at = out.size();
    for (std::size_t j = out.size(); j-- > 0;)
      if (ag::iequals_ascii(out[j].first, f.name)) {
        at = j + 1;
        break;
      }
    out.insert(out.begin() + static_cast<std::ptrdiff_t>(at), {std::string(f.name), std::string(f.value)});
  }
  return out;
}

std::string fields_text(const Fields& fs) {
  std::string s;
  for (const auto& [n, v] : fs) s += "[" + escape(n) + ": " + escape(v) + "]";
  return s;
}

bool inside(std::string_view part, std::string_view whole) {
  if (part.empty()) return true;
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

// The differential property for one input and one parser. `category` names the first violation
// (empty when none) and `detail` explains it.
struct Check {
  Result lean = Result::kDecline;
  Head head;
  BeastHead beast;
  std::string category, detail;
};

Check check(std::string_view in, bool request, bool prefixes = true) {
  Check c;
  c.lean = parse(in, c.head, request);
  c.beast = beast_parse(in, request);
  auto fail = [&](std::string cat, std::string det) {
    c.category = std::string(request ? "request: " : "response: ") + cat;
    c.detail = std::move(det);
    return c;
  };
  const auto& b = c.beast;
  if (c.lean != Result::kComplete) {
    // A head Beast has all of is not "incomplete": the caller would wait for bytes that never come.
    if (c.lean == Result::kIncomplete && b.state == BeastHead::State::kComplete)
      return fail("lean kIncomplete on a head Beast completes", "Beast consumed " + std::to_string(b.consumed));
    return c;
  }
  const Head& h = c.head;
  if (b.state == BeastHead::State::kError) return fail("lean kComplete, Beast error", b.ec.message());
  if (b.state != BeastHead::State::kComplete) return fail("lean kComplete, Beast needs more", b.ec.message());
  if (h.size != b.consumed)
    return fail("size", "lean " + std::to_string(h.size) + ", Beast " + std::to_string(b.consumed));
  if (h.size == 0 || h.size > in.size()) return fail("size out of range", std::to_string(h.size));
  const std::string_view head_bytes = in.substr(0, h.size);
  if (!head_bytes.ends_with("\r\n\r\n"sv)) return fail("head does not end with CRLF CRLF", "");
  if (h.version != b.version)
    return fail("version", std::to_string(h.version) + " vs " + std::to_string(b.version));
  if (h.keep_alive != b.keep_alive)
    return fail("keep_alive", std::string(h.keep_alive ? "lean true" : "lean false") + ", Beast " + (b.keep_alive ? "true" : "false"));
  if (h.has_length != b.content_length.has_value() || (h.has_length && h.content_length != *b.content_length))
    return fail("content_length", "lean " + (h.has_length ? std::to_string(h.content_length) : "none") + ", Beast " +
                                      (b.content_length ? std::to_string(*b.content_length) : "none"));
  // Framing: no body after a request head; a response's body is its Content-Length.
  const bool lean_body = !request && h.content_length > 0;
  if (b.body != lean_body || b.chunked)
    return fail("body framing", std::string("lean ") + (lean_body ? "body" : "no body") + ", Beast " +
                                    (b.chunked ? "chunked" : b.body ? "body" : "no body"));
  if (request) {
    if (h.method != b.method) return fail("method", escape(h.method) + " vs " + escape(b.method));
    if (h.target != b.target) return fail("target", escape(h.target) + " vs " + escape(b.target));
    if (!inside(h.method, head_bytes) || !inside(h.target, head_bytes)) return fail("view outside the head", "method/target");
    if (h.has_length && h.content_length != 0) return fail("request with a body completed", "");
  } else {
    if (h.status != b.status) return fail("status", std::to_string(h.status) + " vs " + std::to_string(b.status));
    // Beast's message returns the standard phrase for an empty reason (header::reason()).
    std::string expect_reason(h.reason);
    if (h.reason.empty()) expect_reason = std::string(http::obsolete_reason(http::int_to_status(static_cast<unsigned>(h.status))));
    if (expect_reason != b.reason) return fail("reason", "lean \"" + escape(h.reason) + "\", Beast \"" + escape(b.reason) + "\"");
    if (!inside(h.reason, head_bytes)) return fail("view outside the head", "reason");
    if (!h.has_length) return fail("response without Content-Length completed", "");
  }
  Fields lean_fields = beast_order(h);
  if (lean_fields != b.fields)
    return fail("fields", "lean " + fields_text(lean_fields) + ", Beast " + fields_text(b.fields));
  for (const auto& f : h)
    if (!inside(f.name, head_bytes) || !inside(f.value, head_bytes)) return fail("view outside the head", escape(f.name));
  // The result depends on the head's bytes only, and every shorter prefix is incomplete.
  Head again;
  if (parse(head_bytes, again, request) != Result::kComplete || again.size != h.size || again.field_count != h.field_count)
    return fail("head alone not complete the same way", "");
  if (prefixes) {
    for (std::size_t k = 0; k < h.size; ++k) {
      Head ph;
      Result r = parse(in.substr(0, k), ph, request);
      if (r != Result::kIncomplete) return fail("prefix of a complete head not kIncomplete", std::to_string(k) + " bytes: " + result_name(r));
    }
  }
  return c;
}

// An explicit case: the lean parser completes `in` and Beast agrees.
Head complete(std::string_view in, bool request = true) {
  Check c = check(in, request);
  EXPECT_EQ(c.lean, Result::kComplete) << escape(in);
  EXPECT_EQ(c.category, "") << c.detail << "\n  input: " << escape(in);
  return c.head;
}

Result lean(std::string_view in, bool request = true) {
  Head h;
  return parse(in, h, request);
}

// An explicit case: the lean parser declines `in` (and the differential property holds anyway).
void declined(std::string_view in, bool request = true) {
  Check c = check(in, request);
  EXPECT_EQ(c.lean, Result::kDecline) << (request ? "request " : "response ") << escape(in);
  EXPECT_EQ(c.category, "") << c.detail << "\n  input: " << escape(in);
}

std::string with_field(std::string_view start, std::string_view field, std::string_view tail = {}) {
  return std::string(start) + std::string(field) + "\r\n" + std::string(tail) + "\r\n";
}

const std::string kReq = "GET / HTTP/1.1\r\n";
const std::string kRes = "HTTP/1.1 200 OK\r\n";
const std::string kLen = "Content-Length: 5\r\n";

// Typical heads, used by several tests.
const std::vector<std::string> kRequests = {
    // curl 7.88
    "GET /api/v1/users?id=42 HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    // wrk
    "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    // ApacheBench, HTTP/1.0
    "GET /index.html HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: ApacheBench/2.3\r\nAccept: */*\r\n\r\n",
    // A browser (Chrome 120)
    "GET /shop/echo/items?page=2&sort=-price HTTP/1.1\r\n"
    "Host: gw.example.com\r\n"
    "Connection: keep-alive\r\n"
    "sec-ch-ua: \"Not_A Brand\";v=\"8\", \"Chromium\";v=\"120\", \"Google Chrome\";v=\"120\"\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "sec-ch-ua-platform: \"Linux\"\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n"
    "Sec-Fetch-Site: none\r\n"
    "Sec-Fetch-Mode: navigate\r\n"
    "Sec-Fetch-User: ?1\r\n"
    "Sec-Fetch-Dest: document\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Accept-Language: en-GB,en;q=0.9\r\n"
    "Cookie: session=abc123; theme=dark; _ga=GA1.1.1234567890.1700000000\r\n"
    "If-None-Match: W/\"5e-1a2b3c\"\r\n"
    "\r\n",
    // API client with credentials and proxy headers
    "DELETE /shop/api/orders/3f2504e0-4f89-11d3-9a0c-0305e82c3301 HTTP/1.1\r\nHost: gw\r\n"
    "Authorization: Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln\r\n"
    "X-API-Key: agk_Fuzz0001_0123456789abcdefghijABCDEFGHIJ0123456789abc1v08wc\r\n"
    "X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\nX-Request-Id: 3f2504e0-4f89-11d3-9a0c-0305e82c3301\r\n\r\n",
    // A body-less POST
    "POST /submit HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n",
    // Odd but valid: lowercase method, absolute-form and asterisk targets, tchar names
    "get http://gw.example.com:8080/a%20b?x=1#frag HTTP/1.1\r\nhost: gw\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: gw\r\nX!#$%&'*+-.^_`|~9: v\r\n\r\n",
    // No fields at all
    "HEAD /health HTTP/1.0\r\n\r\n",
};

const std::vector<std::string> kResponses = {
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: keep-alive\r\n\r\n",
    "HTTP/1.1 404 Not Found\r\nServer: nginx/1.22.1\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\nContent-Type: text/html\r\n"
    "Content-Length: 153\r\nVary: Accept-Encoding\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; HttpOnly\r\n\r\n",
    "HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n",
    "HTTP/1.1 301 Moved Permanently\r\nLocation: https://example.com/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
};

// ---------------------------------------------------------------------------------------------
// Complete heads

TEST(Http1Complete, TypicalRequests) {
  for (const auto& r : kRequests) complete(r);

  Head h = complete(kRequests[0]);
  EXPECT_EQ(h.method, "GET");
  EXPECT_EQ(h.target, "/api/v1/users?id=42");
  EXPECT_EQ(h.version, 11u);
  EXPECT_TRUE(h.keep_alive);
  EXPECT_FALSE(h.has_length);
  EXPECT_EQ(h.content_length, 0u);
  EXPECT_EQ(h.status, 0);
  ASSERT_EQ(h.field_count, 3u);
  EXPECT_EQ(h.fields[0].name, "Host");
  EXPECT_EQ(h.fields[0].value, "localhost:8080");
  EXPECT_EQ(h.fields[1].name, "User-Agent");
  EXPECT_EQ(h.fields[1].value, "curl/7.88.1");
  EXPECT_EQ(h.fields[2].name, "Accept");
  EXPECT_EQ(h.fields[2].value, "*/*");
  EXPECT_EQ(h.size, kRequests[0].size());

  h = complete(kRequests[2]);
  EXPECT_EQ(h.version, 10u);
  EXPECT_FALSE(h.keep_alive);

  h = complete(kRequests[3]);
  EXPECT_EQ(h.field_count, 16u);
  EXPECT_EQ(h.connection, "keep-alive");
  EXPECT_EQ(h.fields[2].value, "\"Not_A Brand\";v=\"8\", \"Chromium\";v=\"120\", \"Google Chrome\";v=\"120\"");

  h = complete(kRequests[6]);
  EXPECT_EQ(h.method, "get");
  EXPECT_EQ(h.target, "http://gw.example.com:8080/a%20b?x=1#frag");
  h = complete(kRequests[7]);
  EXPECT_EQ(h.target, "*");
  EXPECT_EQ(h.fields[1].name, "X!#$%&'*+-.^_`|~9");

  h = complete(kRequests[8]);
  EXPECT_EQ(h.method, "HEAD");
  EXPECT_EQ(h.field_count, 0u);
  EXPECT_EQ(h.size, kRequests[8].size());
  EXPECT_FALSE(h.keep_alive);
}

TEST(Http1Complete, KeepAliveRules) {
  struct Case {
    std::string_view version;
    std::vector<std::string_view> fields;
    bool keep;
  };
  const std::vector<Case> cases = {
      {"HTTP/1.1", {}, true},
      {"HTTP/1.1", {"Connection: close"}, false},
      {"HTTP/1.1", {"Connection: CLOSE"}, false},
      {"HTTP/1.1", {"connection: Keep-Alive, Close"}, false},
      {"HTTP/1.1", {"Connection: ,close,"}, false},
      {"HTTP/1.1", {"Connection: \tclose\t"}, false},
      {"HTTP/1.1", {"Connection: keep-alive"}, true},
      {"HTTP/1.1", {"Connection: closed"}, true},
      {"HTTP/1.1", {"Connection: x-close"}, true},
      {"HTTP/1.1", {"Connection:"}, true},
      {"HTTP/1.1", {"Connection: keep-alive", "Connection: close"}, false},
      {"HTTP/1.1", {"Connection: close", "Connection: keep-alive"}, false},
      {"HTTP/1.1", {"Connection: te", "Host: x", "Connection: x-a ,  close  "}, false},
      {"HTTP/1.1", {"Connection: te", "Connection: x-a"}, true},
      {"HTTP/1.0", {}, false},
      {"HTTP/1.0", {"Connection: keep-alive"}, true},
      {"HTTP/1.0", {"connection: KEEP-ALIVE"}, true},
      {"HTTP/1.0", {"Connection: close"}, false},
      {"HTTP/1.0", {"Connection: keep-alive-ish"}, false},
      {"HTTP/1.0", {"Connection: x-foo", "Connection: keep-alive"}, true},
      {"HTTP/1.0", {"Connection: x-foo, keep-alive"}, true},
      {"HTTP/1.0", {"Connection: te", "Connection: x"}, false},
  };
  for (const auto& c : cases) {
    for (bool request : {true, false}) {
      std::string in = request ? "GET /k " + std::string(c.version) + "\r\n" : std::string(c.version) + " 200 OK\r\n";
      for (auto f : c.fields) in += std::string(f) + "\r\n";
      if (!request) in += "Content-Length: 0\r\n";
      in += "\r\n";
      Head h = complete(in, request);
      EXPECT_EQ(h.keep_alive, c.keep) << escape(in);
    }
  }
  // The first Connection header's value.
  Head h = complete("GET / HTTP/1.1\r\nConnection: x-a, keep-alive\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(h.connection, "x-a, keep-alive");
  h = complete("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(h.connection, "");
}

TEST(Http1Complete, FieldViewsAreExact) {
  const std::string in =
      "GET /v HTTP/1.1\r\n"
      "A:b\r\n"
      "Spaced:   spaced value \t \r\n"
      "Empty:\r\n"
      "Blank: \t \t\r\n"
      "Tabs:\tx\ty\t\r\n"
      "Inner:  a  ,\t b  \r\n"
      "UPPER-lower: MiXeD\r\n"
      "Quote: \"a:b\" ; c=d\r\n"
      "\r\n";
  Head h = complete(in);
  const std::vector<std::pair<std::string_view, std::string_view>> want = {
      {"A", "b"}, {"Spaced", "spaced value"}, {"Empty", ""}, {"Blank", ""}, {"Tabs", "x\ty"},
      {"Inner", "a  ,\t b"}, {"UPPER-lower", "MiXeD"}, {"Quote", "\"a:b\" ; c=d"}};
  ASSERT_EQ(h.field_count, want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(h.fields[i].name, want[i].first) << i;
    EXPECT_EQ(h.fields[i].value, want[i].second) << i;
    // Views into the buffer, not copies.
    EXPECT_TRUE(inside(h.fields[i].name, in)) << i;
    EXPECT_TRUE(h.fields[i].value.empty() || inside(h.fields[i].value, in)) << i;
  }
  EXPECT_EQ(h.fields[0].name.data(), in.data() + in.find("A:b"));
  EXPECT_EQ(h.fields[1].value.data(), in.data() + in.find("spaced value"));
  EXPECT_EQ(h.method.data(), in.data());
  EXPECT_EQ(h.target.data(), in.data() + 4);
  // begin()/end() iterate the same fields.
  std::size_t n = 0;
  for (const auto& f : h) EXPECT_EQ(f.name, want[n++].first);
  EXPECT_EQ(n, want.size());
}

TEST(Http1Complete, RepeatedFieldsKeepWireOrder) {
  // The lean parser keeps wire order; Beast's container groups repeated names (the differential
  // helper accounts for that).
  Head h = complete("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\na: 3\r\nC: 4\r\nA: 5\r\n\r\n");
  ASSERT_EQ(h.field_count, 5u);
  std::string order;
  for (const auto& f : h) order += std::string(f.name) + "=" + std::string(f.value) + ";";
  EXPECT_EQ(order, "A=1;B=2;a=3;C=4;A=5;");
}

TEST(Http1Complete, NotesAnUnderscoreInAnyFieldName) {
  EXPECT_FALSE(complete("GET / HTTP/1.1\r\nHost: a\r\nX-Api-Key: k_1\r\n\r\n").underscore);  // values do not count
  EXPECT_TRUE(complete("GET / HTTP/1.1\r\nHost: a\r\nX_Gateway_Project: p\r\n\r\n").underscore);
  EXPECT_TRUE(complete("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nlast_: 3\r\n\r\n").underscore);
  EXPECT_TRUE(complete("GET / HTTP/1.1\r\n_: 1\r\n\r\n").underscore);
}

TEST(Http1Complete, SizeIsTheHeadAndLaterBytesAreNotTouched) {
  const std::string head = kRequests[0];
  const std::string next = "GET /next HTTP/1.1\r\nHost: x\r\n\r\n";
  Head h = complete(head + next);
  EXPECT_EQ(h.size, head.size());
  Head h2 = complete(head + "POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789");
  EXPECT_EQ(h2.size, head.size());
  // Whatever follows the head — any byte, any length — the answer is the same.
  for (int c = 0; c < 256; ++c) {
    for (std::size_t len : {1u, 2u, 7u, 8u, 9u, 64u}) {
      std::string in = head + std::string(len, static_cast<char>(c));
      Head x;
      ASSERT_EQ(parse_request(in, x), Result::kComplete) << c << " " << len;
      EXPECT_EQ(x.size, head.size());
      EXPECT_EQ(x.field_count, 3u);
      EXPECT_EQ(x.fields[2].value, "*/*");
    }
  }
  // A response: the body after the head is not part of it.
  const std::string res = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
  Head r = complete(res + "hello" + "HTTP/1.1 200 OK\r\n", false);
  EXPECT_EQ(r.size, res.size());
  EXPECT_EQ(r.content_length, 5u);
}

TEST(Http1Complete, ZeroContentLengthOnARequest) {
  for (std::string_view v : {"0", "00", "000000000000000000", " 0 ", "\t0"}) {
    Head h = complete(with_field("POST /x HTTP/1.1\r\n", "Content-Length: " + std::string(v)));
    EXPECT_TRUE(h.has_length) << v;
    EXPECT_EQ(h.content_length, 0u) << v;
  }
  Head h = complete("PUT /x HTTP/1.0\r\ncontent-LENGTH: 0\r\n\r\n");
  EXPECT_TRUE(h.has_length);
  h = complete("GET /x HTTP/1.1\r\n\r\n");
  EXPECT_FALSE(h.has_length);
}

TEST(Http1Complete, Responses) {
  for (const auto& r : kResponses) complete(r, false);

  Head h = complete(kResponses[0], false);
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.reason, "OK");
  EXPECT_EQ(h.version, 11u);
  EXPECT_TRUE(h.has_length);
  EXPECT_EQ(h.content_length, 27u);
  EXPECT_TRUE(h.keep_alive);
  EXPECT_EQ(h.method, "");
  EXPECT_EQ(h.target, "");
  EXPECT_EQ(h.size, kResponses[0].size());

  h = complete(kResponses[1], false);
  EXPECT_EQ(h.status, 404);
  EXPECT_EQ(h.reason, "Not Found");
  EXPECT_EQ(h.content_length, 153u);
  EXPECT_EQ(h.field_count, 7u);

  h = complete(kResponses[2], false);
  EXPECT_EQ(h.version, 10u);
  EXPECT_EQ(h.reason, "Internal Server Error");
  EXPECT_FALSE(h.keep_alive);
  EXPECT_EQ(h.content_length, 0u);

  // Empty reason.
  h = complete(kResponses[3], false);
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.reason, "");
  EXPECT_EQ(h.content_length, 2u);

  h = complete(kResponses[4], false);
  EXPECT_FALSE(h.keep_alive);

  // A tab inside the reason, unusual statuses, large lengths, CL not first.
  h = complete("HTTP/1.1 500 Internal\tServer Error\r\nContent-Length: 1\r\n\r\n", false);
  EXPECT_EQ(h.reason, "Internal\tServer Error");
  h = complete("HTTP/1.1 999 X\r\nContent-Length: 999999999999999999\r\n\r\n", false);
  EXPECT_EQ(h.status, 999);
  EXPECT_EQ(h.content_length, 999999999999999999u);
  h = complete("HTTP/1.1 200 OK\r\nX: 1\r\nContent-Length:\t42\t\r\nY: 2\r\n\r\n", false);
  EXPECT_EQ(h.content_length, 42u);
  h = complete("HTTP/1.1 205 Reset Content\r\nContent-Length: 0\r\n\r\n", false);
  EXPECT_EQ(h.status, 205);
  h = complete("HTTP/1.1 200 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\r\nContent-Length: 0\r\n\r\n", false);
  EXPECT_EQ(h.reason, "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");
}

TEST(Http1Complete, TabsAndPunctuationInValues) {
  Head h = complete("GET / HTTP/1.1\r\nX: a\tb\r\nY: \t\ta\t \tb\t\t\r\nZ: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\r\n\r\n");
  EXPECT_EQ(h.fields[0].value, "a\tb");
  EXPECT_EQ(h.fields[1].value, "a\t \tb");
  EXPECT_EQ(h.fields[2].value, "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");
  // Long values exercise the eight-bytes-at-a-time scan; a tab at every position.
  for (std::size_t at = 0; at < 40; ++at) {
    std::string v(40, 'v');
    v[at] = '\t';
    const std::string in = "GET / HTTP/1.1\r\nLong: " + v + "\r\n\r\n";  // the head's views point into it
    Head x = complete(in);
    std::string_view want(v);
    while (!want.empty() && want.front() == '\t') want.remove_prefix(1);
    while (!want.empty() && want.back() == '\t') want.remove_suffix(1);
    EXPECT_EQ(x.fields[0].value, want) << at;
  }
}

TEST(Http1Complete, ExactlyMaxFields) {
  for (bool request : {true, false}) {
    std::string in = request ? kReq : kRes;
    std::size_t n = request ? kMaxFields : kMaxFields - 1;
    for (std::size_t i = 0; i < n; ++i) in += "X-" + std::to_string(i) + ": " + std::to_string(i) + "\r\n";
    if (!request) in += "Content-Length: 0\r\n";
    in += "\r\n";
    Head h = complete(in, request);
    EXPECT_EQ(h.field_count, kMaxFields);
  }
}

TEST(Http1Complete, HelpersNameIsAndHasToken) {
  EXPECT_TRUE(name_is("Content-Length", "content-length"));
  EXPECT_TRUE(name_is("CONTENT-LENGTH", "content-length"));
  EXPECT_FALSE(name_is("Content-Lengths", "content-length"));
  EXPECT_FALSE(name_is("Content_Length", "content-length"));
  EXPECT_TRUE(has_token("keep-alive, Close", "close"));
  EXPECT_TRUE(has_token(" \tclose\t ", "close"));
  EXPECT_TRUE(has_token(",,close,,", "close"));
  EXPECT_FALSE(has_token("closed", "close"));
  EXPECT_FALSE(has_token("", "close"));
  EXPECT_FALSE(has_token("clo se", "close"));
}

// The connection keeps one Head per direction and parses every message into it: nothing of an
// earlier head (its Content-Length, fields, status, reason, Connection) may survive into a later one.
TEST(Http1Complete, HeadIsReusable) {
  std::vector<std::pair<std::string, bool>> heads;
  for (const auto& r : kRequests) heads.emplace_back(r, true);
  for (const auto& r : kResponses) heads.emplace_back(r, false);
  heads.emplace_back("POST /x HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", true);
  heads.emplace_back("HTTP/1.0 200 OK\r\nContent-Length: 77\r\nConnection: keep-alive\r\n\r\n", false);
  auto same = [](const Head& a, const Head& b) {
    if (a.method != b.method || a.target != b.target || a.status != b.status || a.reason != b.reason ||
        a.version != b.version || a.field_count != b.field_count || a.size != b.size || a.keep_alive != b.keep_alive ||
        a.has_length != b.has_length || a.content_length != b.content_length || a.connection != b.connection)
      return false;
    for (std::size_t i = 0; i < a.field_count; ++i)
      if (a.fields[i].name != b.fields[i].name || a.fields[i].value != b.fields[i].value) return false;
    return true;
  };
  Head reused;
  for (int round = 0; round < 3; ++round)
    for (std::size_t i = 0; i < heads.size(); ++i) {
      // Every order of neighbours, and declined/incomplete parses in between.
      const auto& [in, request] = heads[(i * (round + 1) * 7) % heads.size()];
      Head fresh;
      ASSERT_EQ(parse(in, fresh, request), Result::kComplete) << escape(in);
      ASSERT_EQ(parse(in, reused, request), Result::kComplete) << escape(in);
      EXPECT_TRUE(same(fresh, reused)) << "after " << i << ": " << escape(in);
      if (i % 3 == 1) parse(in, reused, !request);  // declined as the other kind
      if (i % 3 == 2) parse(std::string_view(in).substr(0, in.size() / 2), reused, request);  // incomplete
    }
}

// name_is compares by OR-ing 0x20 (eight bytes at a time): exact ASCII case-insensitivity for
// every byte that can be in a field name or value (HTAB, SP, VCHAR, obs-text), at every position
// of the names and values the gateway compares.
TEST(Http1Complete, NameIsIsAsciiCaseInsensitiveForFieldBytes) {
  auto ref_lower = [](unsigned char c) { return (c >= 'A' && c <= 'Z') ? static_cast<unsigned char>(c + 32) : c; };
  std::size_t checked = 0;
  for (std::string_view want : {"expect", "upgrade", "connection", "keep-alive", "close", "content-length",
                                "proxy-connection", "transfer-encoding", "100-continue", "x-request-id", "websocket"}) {
    EXPECT_TRUE(name_is(want, want));
    std::string upper(want);
    for (auto& c : upper) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 32 : c);
    EXPECT_TRUE(name_is(upper, want)) << upper;
    EXPECT_FALSE(name_is(std::string(want) + "x", want));
    EXPECT_FALSE(name_is(want.substr(1), want));
    for (std::size_t at = 0; at < want.size(); ++at)
      for (int b = 0; b < 256; ++b) {
        if (b != '\t' && (b < 0x20 || b == 0x7f)) continue;  // never in a name or value
        std::string name(want);
        name[at] = static_cast<char>(b);
        EXPECT_EQ(name_is(name, want), ref_lower(static_cast<unsigned char>(b)) == static_cast<unsigned char>(want[at]))
            << escape(name) << " vs " << want;
        ++checked;
      }
  }
  EXPECT_GT(checked, 20000u);
}

// ---------------------------------------------------------------------------------------------
// Incomplete

TEST(Http1Incomplete, EveryProperPrefixOfAValidHead) {
  std::vector<std::pair<std::string, bool>> heads;
  for (const auto& r : kRequests) heads.emplace_back(r, true);
  for (const auto& r : kResponses) heads.emplace_back(r, false);
  heads.emplace_back("GET / HTTP/1.1\r\nEmpty:\r\nBlank:   \r\nTabs:\tx\ty\t\r\n\r\n", true);
  heads.emplace_back("POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", true);
  heads.emplace_back("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", false);
  std::size_t checked = 0;
  for (const auto& [head, request] : heads) {
    ASSERT_EQ(lean(head, request), Result::kComplete) << escape(head);
    // A copy of exactly k bytes: nothing readable past the prefix (ASan would see an overread).
    for (std::size_t k = 0; k < head.size(); ++k) {
      std::string prefix = head.substr(0, k);
      Head h;
      Result r = parse(prefix, h, request);
      EXPECT_EQ(r, Result::kIncomplete) << k << " bytes of " << escape(head) << ": " << result_name(r);
      ++checked;
    }
  }
  EXPECT_GT(checked, 1000u);
}

TEST(Http1Incomplete, EmptyInput) {
  Head h;
  EXPECT_EQ(parse_request(std::string_view{}, h), Result::kIncomplete);  // data() == nullptr
  EXPECT_EQ(parse_response(std::string_view{}, h), Result::kIncomplete);
  const char none[1] = {'G'};
  EXPECT_EQ(parse_request(std::string_view(none, 0), h), Result::kIncomplete);
}

TEST(Http1Incomplete, NoEndOfHeadYet) {
  EXPECT_EQ(lean("GET / HTTP/1.1\r\nHost: x\r\n"), Result::kIncomplete);
  EXPECT_EQ(lean("GET / HTTP/1.1\r\nHost: x\r\n\r"), Result::kIncomplete);
  EXPECT_EQ(lean("GET / HTTP/1.1\r\nHost: " + std::string(10000, 'x')), Result::kIncomplete);
  EXPECT_EQ(lean("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", false), Result::kIncomplete);
}

// ---------------------------------------------------------------------------------------------
// Decline

TEST(Http1Decline, RequestWithABody) {
  declined("POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
  declined("POST /x HTTP/1.1\r\nContent-Length: 1\r\n\r\n");
  declined("POST /x HTTP/1.1\r\nContent-Length: 000000000000000001\r\n\r\n");
  declined("POST /x HTTP/1.1\r\nHost: x\r\ncontent-length: 18446744073709551615\r\n\r\n");
  // Two of them, even equal and zero.
  declined("POST /x HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n");
}

TEST(Http1Decline, TransferEncodingInAnyCase) {
  for (std::string_view n : {"Transfer-Encoding", "transfer-encoding", "TRANSFER-ENCODING", "tRANSFER-eNCODING"}) {
    for (std::string_view v : {"chunked", "gzip, chunked", "identity", ""}) {
      std::string f = std::string(n) + ": " + std::string(v);
      declined(with_field("POST /x HTTP/1.1\r\n", f));
      declined(with_field("GET /x HTTP/1.1\r\nContent-Length: 0\r\n", f));
      declined(with_field(kRes, f), false);
      declined(with_field(kRes + kLen, f), false);
      declined(with_field(kRes, f, kLen), false);
    }
  }
}

TEST(Http1Decline, ContentLengthOnResponses) {
  declined(kRes + kLen + kLen + "\r\n", false);
  declined(kRes + "Content-Length: 5\r\ncontent-length: 6\r\n\r\n", false);
  declined(kRes + "Content-Length: 5\r\nX: y\r\nCONTENT-LENGTH: 5\r\n\r\n", false);
  for (std::string_view v : {"", "abc", "-1", "+5", "1 2", "5,5", "5, 5", "0x10", "1e3", "5.0", "５",
                             "1234567890123456789", "18446744073709551616", "00000000000000000000", "\"5\""}) {
    declined(with_field(kRes, "Content-Length: " + std::string(v)), false);
    declined(with_field(kReq, "Content-Length: " + std::string(v)));
  }
}

TEST(Http1Decline, UpgradeExpectAndProxyConnection) {
  for (bool request : {true, false}) {
    const std::string start = request ? kReq : kRes + kLen;
    for (std::string_view f : {"Upgrade: websocket", "upgrade: h2c", "UPGRADE:", "Expect: 100-continue", "expect: x",
                               "Connection: Upgrade", "Connection: keep-alive, upgrade", "Connection: x,UPGRADE ",
                               "Proxy-Connection: keep-alive", "proxy-connection: close"}) {
      declined(with_field(start, f), request);
      declined(with_field(start, "Connection: close\r\n" + std::string(f)), request);
    }
  }
  declined("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
}

TEST(Http1Decline, ObsFold) {
  declined("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n");
  declined("GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n");
  declined("GET / HTTP/1.1\r\nX:\r\n b\r\n\r\n");
  declined("GET / HTTP/1.1\r\n Host: x\r\n\r\n");
  declined("GET / HTTP/1.1\r\n\tHost: x\r\n\r\n");
  declined(kRes + "X: a\r\n b\r\n" + kLen + "\r\n", false);
  declined(kRes + kLen + " \r\n\r\n", false);
}

// Replaces the CRLF at `at` with `with`.
std::string replace_crlf(const std::string& head, std::size_t at, std::string_view with) {
  return head.substr(0, at) + std::string(with) + head.substr(at + 2);
}

TEST(Http1Decline, BareLfAndCrWithoutLfAnywhere) {
  std::vector<std::pair<std::string, bool>> heads;
  for (const auto& r : kRequests) heads.emplace_back(r, true);
  for (const auto& r : kResponses) heads.emplace_back(r, false);
  std::size_t checked = 0;
  for (const auto& [head, request] : heads) {
    for (std::size_t at = head.find("\r\n"); at != std::string::npos; at = head.find("\r\n", at + 2)) {
      // After the final CRLF, more bytes (a pipelined request): a lone "\n" where a field line
      // or the empty line starts is not enough to decide on (below).
      const std::string more = at + 2 == head.size() ? "GET / HTTP/1.1\r\n\r\n" : "";
      declined(replace_crlf(head, at, "\n") + more, request);      // bare LF
      declined(replace_crlf(head, at, "\n\r\n") + more, request);  // bare LF then a CRLF
      declined(replace_crlf(head, at, "\r\r\n") + more, request);  // CR not followed by LF
      declined(replace_crlf(head, at, "\rX\r\n") + more, request);
      checked += 4;
    }
    // The head ending in "\r\n\n" and nothing after: never kComplete. Waiting for one more byte
    // is what Beast does too (parse_fields needs two bytes to look at a line).
    std::string lf_end = head.substr(0, head.size() - 2) + "\n";
    Check c = check(lf_end, request);
    EXPECT_NE(c.lean, Result::kComplete) << escape(lf_end);
    EXPECT_NE(c.beast.state, BeastHead::State::kComplete) << escape(lf_end);
  }
  EXPECT_GT(checked, 200u);
  declined("GET /a\nb HTTP/1.1\r\n\r\n");
  declined("GET /a\rb HTTP/1.1\r\n\r\n");
  declined("GET / HTTP/1.1\r\nX: a\nb\r\n\r\n");
  declined("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n");
  declined("GET / HTTP/1.1\r\nX: a\r\r\n\r\n");
  declined("GET / HTTP/1.1\n\n");
  declined("GET / HTTP/1.1\r\n\nHost: x\r\n\r\n");
  declined("GET / HTTP/1.1\r\n\r\r\n");
  declined("\nGET / HTTP/1.1\r\n\r\n");
  declined("\r\nGET / HTTP/1.1\r\n\r\n");
  declined("HTTP/1.1 200 O\rK\r\n" + kLen + "\r\n", false);
  declined("HTTP/1.1 200 O\nK\r\n" + kLen + "\r\n", false);
}

TEST(Http1Decline, ControlAndNonAsciiBytes) {
  const std::vector<unsigned char> bad = {0x00, 0x01, 0x08, 0x0b, 0x0c, 0x0e, 0x1b, 0x1f, 0x7f, 0x80, 0x9f, 0xa0, 0xc3, 0xfe, 0xff};
  std::size_t checked = 0;
  for (unsigned char c : bad) {
    const std::string b(1, static_cast<char>(c));
    // In a value: at every position of a long one (the word-at-a-time scan and the byte tail).
    for (std::size_t at = 0; at <= 33; ++at) {
      std::string v(33, 'v');
      v.insert(at, b);
      declined(with_field(kReq, "X: " + v));
      declined(with_field(kRes, "X: " + v, kLen), false);
      declined(with_field(kRes + kLen, "X: " + v), false);
      checked += 3;
    }
    declined(with_field(kReq, "X:" + b));
    declined(with_field(kReq, "X: " + b + " "));
    // In the target, the method, the version, a name, the reason.
    declined("GET /a" + b + "b HTTP/1.1\r\n\r\n");
    declined("GET " + b + " HTTP/1.1\r\n\r\n");
    declined("GE" + b + "T / HTTP/1.1\r\n\r\n");
    declined("GET / HTTP/1.1" + b + "\r\n\r\n");
    declined(with_field(kReq, "X" + b + "Y: v"));
    declined(with_field(kReq, b + ": v"));
    declined("HTTP/1.1 200 O" + b + "K\r\n" + kLen + "\r\n", false);
    declined("HTTP/1.1 200 " + b + "\r\n" + kLen + "\r\n", false);
    declined("HTTP/1.1 200 OK" + b + "\r\n" + kLen + "\r\n", false);
    declined("HTTP/1.1 2" + b + "0 OK\r\n" + kLen + "\r\n", false);
    checked += 14;
  }
  EXPECT_GT(checked, 1000u);
}

TEST(Http1Decline, BadFieldNames) {
  declined(with_field(kReq, "Host : x"));
  declined(with_field(kReq, "Host\t: x"));
  declined(with_field(kReq, ": x"));
  declined(with_field(kReq, ":"));
  declined(with_field(kReq, "No colon"));
  declined(with_field(kReq, "NoColon"));
  for (char sep : std::string_view("\"(),/;<=>?@[\\]{}")) declined(with_field(kReq, std::string("A") + sep + "B: x"));
  declined(with_field(kRes, "Host : x", kLen), false);
  declined(with_field(kRes, ": x", kLen), false);
}

TEST(Http1Decline, VersionsOtherThanOneZeroAndOneOne) {
  for (std::string_view v : {"HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/2", "HTTP/1", "http/1.1", "Http/1.1",
                             "HTTP/1.1 ", "HTTP/1.10", "HTTP/11", "HTTP/1,1", "HTTP /1.1", "HTTPS/1.1", "HTTP/3.0"}) {
    declined("GET / " + std::string(v) + "\r\nHost: x\r\n\r\n");
    declined(std::string(v) + " 200 OK\r\n" + kLen + "\r\n", false);
  }
  declined("GET /\r\n\r\n");  // HTTP/0.9 style
  declined("GET / \r\n\r\n");
}

TEST(Http1Decline, MalformedRequestLines) {
  declined("GET  / HTTP/1.1\r\n\r\n");
  declined("GET /  HTTP/1.1\r\n\r\n");
  declined(" GET / HTTP/1.1\r\n\r\n");
  declined("GET\t/ HTTP/1.1\r\n\r\n");
  declined("GET /\tHTTP/1.1\r\n\r\n");
  declined("GET HTTP/1.1\r\n\r\n");
  declined("G(T / HTTP/1.1\r\n\r\n");
  declined("\r\n\r\n");
}

TEST(Http1Decline, StatusesWithoutABodyOrOutOfRange) {
  for (std::string_view s : {"100", "101", "102", "103", "199", "204", "304", "000", "099", "001"}) {
    declined("HTTP/1.1 " + std::string(s) + " X\r\n" + kLen + "\r\n", false);
    declined("HTTP/1.1 " + std::string(s) + " X\r\nContent-Length: 0\r\n\r\n", false);
  }
  for (std::string_view line : {"HTTP/1.1 20 OK", "HTTP/1.1 2000 OK", "HTTP/1.1 2x0 OK", "HTTP/1.1 -20 OK",
                                "HTTP/1.1  200 OK", "HTTP/1.1 +20 OK", "HTTP/1.1\t200 OK", "HTTP/1.1 200\tOK"})
    declined(std::string(line) + "\r\n" + kLen + "\r\n", false);
}

TEST(Http1Decline, ResponseWithoutContentLength) {
  declined("HTTP/1.1 200 OK\r\n\r\n", false);
  declined("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n", false);
  declined("HTTP/1.0 200 OK\r\n\r\n", false);
  declined("HTTP/1.1 200 OK\r\nContent-Lengthy: 5\r\n\r\n", false);
}

TEST(Http1Decline, ResponseStatusLineWithoutTheSpaceAfterTheCode) {
  declined("HTTP/1.1 200\r\n" + kLen + "\r\n", false);
  declined("HTTP/1.1 200OK\r\n" + kLen + "\r\n", false);
  declined("HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", false);
}

TEST(Http1Decline, MoreThanMaxFields) {
  for (bool request : {true, false}) {
    std::string in = request ? kReq : kRes;
    std::size_t n = request ? kMaxFields + 1 : kMaxFields;
    for (std::size_t i = 0; i < n; ++i) in += "X-" + std::to_string(i) + ": " + std::to_string(i) + "\r\n";
    if (!request) in += "Content-Length: 0\r\n";
    in += "\r\n";
    declined(in, request);
  }
}

TEST(Http1Decline, ARequestIsNotAResponseAndViceVersa) {
  for (const auto& r : kRequests) declined(r, false);
  for (const auto& r : kResponses) declined(r, true);
}

// ---------------------------------------------------------------------------------------------
// Differential: explicit cases where the two parsers could plausibly disagree.

TEST(Http1Differential, ExplicitCases) {
  const std::vector<std::pair<std::string, bool>> cases = {
      {"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\na: 3\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nSet-Cookie: a\r\nX: y\r\nSET-COOKIE: b\r\nset-cookie: c\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nConnection:\r\nConnection: close\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nConnection: ,\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nConnection: keep-alive,,, close\r\n\r\n", true},
      {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nConnection: x;y\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nConnection: \"close\"\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nKeep-Alive: timeout=5\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nContent-Length : 0\r\n\r\n", true},
      {"M-SEARCH * HTTP/1.1\r\nHost: x\r\n\r\n", true},
      {"get / HTTP/1.1\r\n\r\n", true},
      {"connect x:1 HTTP/1.1\r\n\r\n", true},
      {"GET /~!$&'()*+,;=:@[]{}|^`\\\" HTTP/1.1\r\n\r\n", true},
      {"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", false},
      {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", false},
      {"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\n", false},
      {"HTTP/1.1 299 \r\nContent-Length: 1\r\n\r\n", false},
      {"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n", false},
      {"HTTP/1.1 200 OK\r\nSet-Cookie: a\r\nContent-Length: 1\r\nset-cookie: b\r\n\r\n", false},
  };
  for (const auto& [in, request] : cases) {
    Check c = check(in, request);
    EXPECT_EQ(c.category, "") << c.detail << "\n  input: " << escape(in);
  }
}

// Beast rejects a Connection value whose tokens are not separated by commas (opt_token_list:
// bad_value); the lean parser accepts any mix of tokens, commas and whitespace.
TEST(Http1Differential, ConnectionTokensWithoutAComma) {
  for (std::string in : {"GET / HTTP/1.1\r\nConnection: a b\r\n\r\n", "GET / HTTP/1.1\r\nConnection: close close\r\n\r\n",
                         "GET / HTTP/1.0\r\nConnection: keep-alive\tx\r\n\r\n"}) {
    Check c = check(in, true);
    EXPECT_NE(c.lean, Result::kComplete) << "Beast: " << c.beast.ec.message() << "\n  input: " << escape(in);
    EXPECT_EQ(c.category, "") << c.detail << "\n  input: " << escape(in);
  }
  Check c = check("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: a b\r\n\r\n", false);
  EXPECT_EQ(c.category, "") << c.detail;
}

// Beast keeps a reason phrase's trailing whitespace (parse_reason stops at the CR).
TEST(Http1Differential, ReasonWithTrailingWhitespace) {
  for (std::string in : {"HTTP/1.1 200 OK \r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 200 OK\t\r\nContent-Length: 0\r\n\r\n",
                         "HTTP/1.1 200  \r\nContent-Length: 0\r\n\r\n"}) {
    Check c = check(in, false);
    EXPECT_EQ(c.category, "") << c.detail << "\n  input: " << escape(in);
  }
}

// ---------------------------------------------------------------------------------------------
// Differential: randomized, mutated heads.

class Mutator {
 public:
  explicit Mutator(std::uint32_t seed) : rng_(seed) {}

  std::string mutate(std::string s) {
    int ops = 1 + static_cast<int>(below(3));
    for (int i = 0; i < ops; ++i) {
      switch (below(10)) {
        case 0: case 1: insert_byte(s); break;
        case 2: delete_bytes(s); break;
        case 3: case 4: replace_byte(s); break;
        case 5: duplicate_line(s); break;
        case 6: delete_line(s); break;
        case 7: change_case(s); break;
        case 8: insert_line(s); break;
        case 9: replace_value(s); break;
      }
    }
    if (below(8) == 0) s += pick(kTails);  // pipelined bytes or a body after the head
    return s;
  }

 private:
  std::size_t below(std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng_); }
  template <class V>
  const typename V::value_type& pick(const V& v) { return v[below(v.size())]; }

  char byte() {
    static constexpr char kSpecial[] = "\r\n \t:,\0\x7f\x80\xff;=\"";  // NUL included
    static constexpr std::string_view special(kSpecial, sizeof kSpecial - 1);
    static constexpr std::string_view plain = "aZkE0159-/.";
    return below(3) ? special[below(special.size())] : plain[below(plain.size())];
  }
  void insert_byte(std::string& s) { s.insert(s.begin() + static_cast<std::ptrdiff_t>(below(s.size() + 1)), byte()); }
  void replace_byte(std::string& s) {
    if (!s.empty()) s[below(s.size())] = byte();
  }
  void delete_bytes(std::string& s) {
    if (s.empty()) return;
    std::size_t at = below(s.size());
    s.erase(at, 1 + below(3));
  }
  // Line boundaries: offsets just after each CRLF (lines 1.. of the head).
  std::vector<std::size_t> line_starts(const std::string& s) {
    std::vector<std::size_t> v;
    for (std::size_t at = s.find("\r\n"); at != std::string::npos; at = s.find("\r\n", at + 2)) v.push_back(at + 2);
    return v;
  }
  void duplicate_line(std::string& s) {
    auto starts = line_starts(s);
    if (starts.size() < 2) return;
    std::size_t i = below(starts.size() - 1);
    std::string line = s.substr(starts[i], starts[i + 1] - starts[i]);
    s.insert(starts[below(starts.size())], line);
  }
  void delete_line(std::string& s) {
    auto starts = line_starts(s);
    if (starts.size() < 2) return;
    std::size_t i = below(starts.size() - 1);
    s.erase(starts[i], starts[i + 1] - starts[i]);
  }
  void insert_line(std::string& s) {
    auto starts = line_starts(s);
    if (starts.empty()) return;
    s.insert(starts[below(starts.size())], std::string(pick(kLines)) + "\r\n");
  }
  void change_case(std::string& s) {
    static const std::vector<std::string_view> names = {"content-length", "transfer-encoding", "connection", "upgrade",
                                                        "expect", "proxy-connection", "keep-alive", "close", "http/1."};
    std::string lower = s;
    for (auto& c : lower) c = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    std::vector<std::size_t> hits;
    for (auto n : names)
      for (std::size_t at = lower.find(n); at != std::string::npos; at = lower.find(n, at + 1)) hits.push_back(at);
    if (hits.empty()) return;
    std::size_t at = pick(hits);
    for (std::size_t i = at; i < s.size() && i < at + 17; ++i) {
      char& c = s[i];
      if (c >= 'a' && c <= 'z' && below(2)) c = static_cast<char>(c - 'a' + 'A');
      else if (c >= 'A' && c <= 'Z' && below(2)) c = static_cast<char>(c - 'A' + 'a');
    }
  }
  // Replaces what follows a ": " on some line with an interesting value.
  void replace_value(std::string& s) {
    std::vector<std::size_t> colons;
    for (std::size_t at = s.find(": "); at != std::string::npos; at = s.find(": ", at + 1)) colons.push_back(at + 2);
    if (colons.empty()) return;
    std::size_t at = pick(colons);
    std::size_t end = s.find("\r\n", at);
    if (end == std::string::npos) return;
    s.replace(at, end - at, pick(kValues));
  }

  std::mt19937 rng_;
  static inline const std::vector<std::string_view> kLines = {
      "Connection: close", "Connection: keep-alive", "connection: Upgrade", "Connection: a b", "Connection: close,,x",
      "Connection:", "Content-Length: 0", "Content-Length: 12", "content-length:  7 ", "Content-Length: 5, 5",
      "Content-Length: 0, 0", "Transfer-Encoding: chunked", "Upgrade: h2c", "Expect: 100-continue",
      "Proxy-Connection: keep-alive", "X-Empty:", "X-Tab:\tv\tw\t", " folded", "\tfolded", ":novalue", "Bad Name: x",
      "X-Obs: caf\xc3\xa9", "Host: example.com", "Keep-Alive: timeout=5", "Set-Cookie: a=b", "set-cookie: c=d"};
  static inline const std::vector<std::string_view> kValues = {
      "", " ", "\t", "close", "keep-alive", "Keep-Alive, Close", "a b", "0", "1", "007", "18446744073709551615",
      "999999999999999999", "1234567890123456789", " 5 ", "5,5", "chunked", "x\ty", "\"q\"", "a:b", "\x7f", "\x80",
      std::string_view("\0", 1)};
  static inline const std::vector<std::string_view> kTails = {
      "GET /next HTTP/1.1\r\n\r\n", "hello", "\r\n", std::string_view("\0\xff", 2), "HTTP/1.1 200 OK\r\n"};
};

TEST(Http1Differential, RandomizedMutatedHeads) {
  std::vector<std::string> seeds;
  for (const auto& r : kRequests) seeds.push_back(r);
  for (const auto& r : kResponses) seeds.push_back(r);
  seeds.push_back("GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: x-b, close\r\n\r\n");
  seeds.push_back("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n");
  seeds.push_back("GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
  seeds.push_back("POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
  seeds.push_back("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
  seeds.push_back("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
  seeds.push_back("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
  seeds.push_back("HTTP/1.0 200 OK\r\nProxy-Connection: keep-alive\r\nContent-Length: 5\r\n\r\n");

  constexpr int kHeads = 50000;
  Mutator mut(0x5eed1234);
  struct Tally {
    std::size_t lean_complete = 0, lean_incomplete = 0, lean_decline = 0;
    std::size_t beast_complete = 0, beast_error = 0, beast_need_more = 0;
  } req, res;
  struct Violation {
    std::size_t count = 0;
    std::string input, detail;  // the shortest example
  };
  std::map<std::string, Violation> violations;
  std::size_t total_violations = 0;

  for (int i = 0; i < kHeads; ++i) {
    std::string in = mut.mutate(seeds[static_cast<std::size_t>(i) % seeds.size()]);
    for (bool request : {true, false}) {
      Check c = check(in, request);
      Tally& t = request ? req : res;
      t.lean_complete += c.lean == Result::kComplete;
      t.lean_incomplete += c.lean == Result::kIncomplete;
      t.lean_decline += c.lean == Result::kDecline;
      t.beast_complete += c.beast.state == BeastHead::State::kComplete;
      t.beast_error += c.beast.state == BeastHead::State::kError;
      t.beast_need_more += c.beast.state == BeastHead::State::kNeedMore;
      // Whenever Beast reports an error for the head, the lean parser did not complete it.
      if (c.beast.state == BeastHead::State::kError && c.lean == Result::kComplete && c.category.empty())
        c.category = "Beast error but lean kComplete";
      if (c.category.empty()) continue;
      ++total_violations;
      Violation& v = violations[c.category];
      ++v.count;
      if (v.input.empty() || in.size() < v.input.size()) {
        v.input = in;
        v.detail = c.detail;
      }
    }
  }

  auto report = [](const char* what, const Tally& t) {
    std::cout << "[ Http1 ] " << what << ": lean complete " << t.lean_complete << ", incomplete " << t.lean_incomplete
              << ", decline " << t.lean_decline << "; Beast complete " << t.beast_complete << ", error " << t.beast_error
              << ", need more " << t.beast_need_more << "\n";
  };
  report("requests ", req);
  report("responses", res);
  RecordProperty("heads", kHeads);
  RecordProperty("lean_request_complete", static_cast<int>(req.lean_complete));
  RecordProperty("beast_request_complete", static_cast<int>(req.beast_complete));
  RecordProperty("lean_response_complete", static_cast<int>(res.lean_complete));
  RecordProperty("beast_response_complete", static_cast<int>(res.beast_complete));
  for (const auto& [cat, v] : violations)
    ADD_FAILURE() << cat << ": " << v.count << " heads; shortest: \"" << escape(v.input) << "\" — " << v.detail;
  EXPECT_EQ(total_violations, 0u);

  // Not vacuous: both parsers accept many mutated heads of each kind, and the lean parser also
  // declines and waits on some.
  EXPECT_GT(req.lean_complete, 1000u);
  EXPECT_GT(res.lean_complete, 500u);
  EXPECT_GT(req.beast_complete, req.lean_complete);
  EXPECT_GT(res.beast_complete, res.lean_complete);
  EXPECT_GT(req.lean_decline, 1000u);
  EXPECT_GT(req.lean_incomplete, 10u);
  EXPECT_GT(req.beast_error, 1000u);
}

}  // namespace
}  // namespace ag::http1
