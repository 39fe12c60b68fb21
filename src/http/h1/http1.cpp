#include "http/h1/http1.hpp"

#include <cstring>

#include "common/ascii.hpp"
#include "common/swar.hpp"

namespace ag::http1 {

namespace {

// RFC 9110 tchar: "!#$%&'*+-.^_`|~", digits, letters.
constexpr std::array<bool, 256> kToken = [] {
  std::array<bool, 256> t{};
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) t[c] = true;
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) t[static_cast<unsigned char>(c)] = true;
  return t;
}();

// A field name's bytes: tchar as kToken, with '_' marked by a second bit (WORKER_UNDERSCORE_HEADERS).
constexpr std::array<std::uint8_t, 256> kNameClass = [] {
  std::array<std::uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) t[c] = kToken[c] ? 1 : 0;
  t['_'] = 3;
  return t;
}();

// Field values, reason phrases: SP, HTAB and visible ASCII. Control bytes are errors and
// obs-text is legal but rare: both are left to the full parser.
constexpr std::array<bool, 256> kText = [] {
  std::array<bool, 256> t{};
  t['\t'] = true;
  for (int c = 0x20; c < 0x7f; ++c) t[c] = true;
  return t;
}();

// From `at` (inside a field line) to the line's CR: every byte text; `end` is the CR's position.
// kIncomplete when the buffer ends first; kDecline on a byte that is not text or a bare CR/LF.
// Field values are most of a head's bytes: whole words of printable ASCII are skipped at once.
Result scan_value(std::string_view in, std::size_t at, std::size_t& end) {
  const char* d = in.data();
  const std::size_t n = in.size();
  at = swar::skip(d, at, n, swar::not_printable);
  // Byte by byte from the first byte that is not printable (a tab, the CR) or for the last few.
  while (at < n && kText[static_cast<unsigned char>(d[at])]) ++at;
  if (at >= n) return Result::kIncomplete;
  if (d[at] != '\r') return Result::kDecline;
  if (at + 1 >= n) return Result::kIncomplete;
  if (d[at + 1] != '\n') return Result::kDecline;
  end = at;
  return Result::kComplete;
}

// The next line (without its CRLF) starting at `at`; false when no complete line is buffered
// (`incomplete` set) or the line ends in a bare LF (decline).
bool next_line(std::string_view in, std::size_t& at, std::string_view& line, bool& incomplete) {
  if (at >= in.size()) {  // (memchr must not see a null pointer, even for zero bytes)
    incomplete = true;
    return false;
  }
  const void* nl = std::memchr(in.data() + at, '\n', in.size() - at);
  if (nl == nullptr) {
    incomplete = true;
    return false;
  }
  std::size_t end = static_cast<std::size_t>(static_cast<const char*>(nl) - in.data());
  if (end == at || in[end - 1] != '\r') return false;  // bare LF
  line = in.substr(at, end - 1 - at);
  at = end + 1;
  return true;
}

bool all_digits(std::string_view s) {
  if (s.empty() || s.size() > 18) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

bool parse_version(std::string_view v, unsigned& out) {
  if (v == "HTTP/1.1") out = 11;
  else if (v == "HTTP/1.0") out = 10;
  else return false;
  return true;
}

// Connection: tokens separated by commas, with optional whitespace around each (empty elements
// allowed); "a b" is not a list.
bool token_list(std::string_view v) {
  std::size_t i = 0;
  for (;;) {
    while (i < v.size() && (v[i] == ' ' || v[i] == '\t')) ++i;
    while (i < v.size() && kToken[static_cast<unsigned char>(v[i])]) ++i;
    while (i < v.size() && (v[i] == ' ' || v[i] == '\t')) ++i;
    if (i == v.size()) return true;
    if (v[i] != ',') return false;
    ++i;
  }
}

enum class Kind { kRequest, kResponse };

// The fields after the start line, up to and including the empty line.
Result parse_fields(std::string_view in, std::size_t at, Head& h, Kind kind) {
  bool close = false, keep = false, has_length = false, has_connection = false;
  std::uint8_t name_bits = 0;
  h.field_count = 0;
  h.connection = {};
  const char* d = in.data();
  for (;;) {
    if (at + 2 > in.size()) return Result::kIncomplete;
    if (d[at] == '\r') {  // the empty line
      if (d[at + 1] != '\n') return Result::kDecline;
      at += 2;
      break;
    }
    // name ":" OWS value OWS CRLF
    std::size_t i = at;
    // kNameClass: 0 ends the name, bit 1 marks '_' (one OR per byte; a memchr per name measured
    // ~280 instructions per request, this ~80).
    for (std::uint8_t c; i < in.size() && (c = kNameClass[static_cast<unsigned char>(d[i])]) != 0; ++i) name_bits |= c;
    if (i == in.size()) return Result::kIncomplete;
    if (i == at || d[i] != ':') return Result::kDecline;  // also obs-fold and bare LF
    std::string_view name(d + at, i - at);
    std::size_t v = i + 1, e = 0;
    if (auto r = scan_value(in, v, e); r != Result::kComplete) return r;
    at = e + 2;
    while (v < e && (d[v] == ' ' || d[v] == '\t')) ++v;
    while (e > v && (d[e - 1] == ' ' || d[e - 1] == '\t')) --e;
    std::string_view value(d + v, e - v);
    if (h.field_count == kMaxFields) return Result::kDecline;
    h.fields[h.field_count++] = Field{name, value};
    // The fields that change how the message is framed or handled.
    switch (name.size()) {
      case 6:
        if (name_is(name, "expect")) return Result::kDecline;
        break;
      case 7:
        if (name_is(name, "upgrade")) return Result::kDecline;
        break;
      case 10:
        if (name_is(name, "connection")) {
          if (!token_list(value)) return Result::kDecline;
          if (!has_connection) h.connection = value, has_connection = true;
          if (name_is(value, "keep-alive")) {
            keep = true;
          } else if (name_is(value, "close")) {
            close = true;
          } else {
            close = close || has_token(value, "close");
            keep = keep || has_token(value, "keep-alive");
            if (has_token(value, "upgrade")) return Result::kDecline;
          }
        }
        break;
      case 14:
        if (name_is(name, "content-length")) {
          if (has_length || !all_digits(value)) return Result::kDecline;
          has_length = true;
          std::uint64_t n = 0;
          for (char c : value) n = n * 10 + static_cast<std::uint64_t>(c - '0');
          if (kind == Kind::kRequest && n != 0) return Result::kDecline;  // a body: the full parser streams it
          h.content_length = n;
        }
        break;
      case 16:
        if (name_is(name, "proxy-connection")) return Result::kDecline;
        break;
      case 17:
        if (name_is(name, "transfer-encoding")) return Result::kDecline;
        break;
      default:
        break;
    }
  }
  if (kind == Kind::kResponse && !has_length) return Result::kDecline;  // chunked or until EOF
  h.has_length = has_length;
  h.underscore = (name_bits & 2) != 0;
  h.keep_alive = h.version >= 11 ? !close : keep;
  h.size = at;
  return Result::kComplete;
}

}  // namespace

bool name_is(std::string_view name, std::string_view lower_name) {
  // OR-ing 0x20 lowers letters and keeps digits and '-'; the only other bytes it maps onto
  // [a-z0-9-] are CR (onto '-') and controls, which are never in a field name or value.
  if (name.size() != lower_name.size()) return false;
  std::size_t i = 0;
  for (; i + 8 <= name.size(); i += 8) {
    std::uint64_t a, b;
    std::memcpy(&a, name.data() + i, 8);
    std::memcpy(&b, lower_name.data() + i, 8);
    if ((a | 0x2020202020202020ull) != b) return false;
  }
  for (; i < name.size(); ++i)
    if ((name[i] | 0x20) != lower_name[i]) return false;
  return true;
}

bool has_token(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    auto comma = list.find(',');
    if (iequals_ascii(trim_ows(list.substr(0, comma)), token)) return true;
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
  }
  return false;
}

Result parse_request(std::string_view in, Head& h) {
  std::size_t at = 0;
  std::string_view line;
  bool incomplete = false;
  if (!next_line(in, at, line, incomplete)) return incomplete ? Result::kIncomplete : Result::kDecline;
  // method SP target SP version
  std::size_t i = 0;
  while (i < line.size() && kToken[static_cast<unsigned char>(line[i])]) ++i;
  if (i == 0 || i == line.size() || line[i] != ' ') return Result::kDecline;
  h.method = line.substr(0, i);
  if (h.method == "CONNECT") return Result::kDecline;
  std::size_t t = ++i;
  while (i < line.size() && line[i] > 0x20 && line[i] < 0x7f) ++i;
  if (i == t || i == line.size() || line[i] != ' ') return Result::kDecline;
  h.target = line.substr(t, i - t);
  if (!parse_version(line.substr(i + 1), h.version)) return Result::kDecline;
  h.status = 0;
  h.reason = {};
  h.content_length = 0;
  return parse_fields(in, at, h, Kind::kRequest);
}

Result parse_response(std::string_view in, Head& h) {
  std::size_t at = 0;
  std::string_view line;
  bool incomplete = false;
  if (!next_line(in, at, line, incomplete)) return incomplete ? Result::kIncomplete : Result::kDecline;
  // version SP 3DIGIT SP reason
  if (line.size() < 13 || line[8] != ' ' || line[12] != ' ' || !parse_version(line.substr(0, 8), h.version))
    return Result::kDecline;
  int status = 0;
  for (std::size_t k = 9; k < 12; ++k) {
    if (line[k] < '0' || line[k] > '9') return Result::kDecline;
    status = status * 10 + (line[k] - '0');
  }
  if (status < 200 || status == 204 || status == 304) return Result::kDecline;
  std::string_view reason = line.substr(13);  // as sent, trailing whitespace included
  for (char c : reason)
    if (!kText[static_cast<unsigned char>(c)]) return Result::kDecline;
  h.status = status;
  h.reason = reason;
  h.method = {};
  h.target = {};
  h.content_length = 0;
  return parse_fields(in, at, h, Kind::kResponse);
}

}  // namespace ag::http1
