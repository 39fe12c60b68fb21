#include "common/json_string.hpp"

#include "common/swar.hpp"

namespace ag::json_text {

using namespace std::string_view_literals;

namespace {
// Length of the well-formed UTF-8 sequence starting at s[i] (a byte >= 0x80), or 0 (RFC 3629:
// no overlong forms, no surrogates, nothing above U+10FFFF).
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  auto cont = [&](std::size_t k) { return i + k < s.size() && (b(k) & 0xC0) == 0x80; };
  unsigned char c = b(0);
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && b(1) < 0xA0) return 0;   // overlong
    if (c == 0xED && b(1) >= 0xA0) return 0;  // surrogates
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && b(1) < 0x90) return 0;   // overlong
    if (c == 0xF4 && b(1) >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}
}  // namespace

char* put_json_string(char* p, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  *p++ = '"';
  // Copy runs of characters that need no escaping in one go (the common case is one run),
  // finding the run's end eight bytes at a time: log lines are written for every request.
  std::size_t run = 0;
  const std::size_t n = s.size();
  std::size_t i = 0;
  auto flush = [&] { p = put(p, s.substr(run, i - run)); };
  while (i < n) {
    // Controls, '"', '\\', DEL and everything from 0x80 need escaping or checking.
    i = swar::skip(s.data(), i, n, [](std::uint64_t w) {
      return swar::not_printable(w) | swar::equal_to(w, '"') | swar::equal_to(w, '\\');
    });
    if (i >= n) break;
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      // Well-formed UTF-8 is copied as it is; any other byte becomes U+FFFD, so every line stays
      // valid JSON whatever a client sends in its path or headers.
      std::size_t len = utf8_sequence_length(s, i);
      if (len > 0) {
        i += len;
        continue;
      }
      flush();
      run = ++i;
      p = put(p, "\\ufffd"sv);
      continue;
    }
    flush();
    run = ++i;
    switch (c) {
      case '"': p = put(p, "\\\""sv); break;
      case '\\': p = put(p, "\\\\"sv); break;
      case '\n': p = put(p, "\\n"sv); break;
      case '\r': p = put(p, "\\r"sv); break;
      case '\t': p = put(p, "\\t"sv); break;
      default: {
        const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
        p = put(p, std::string_view(esc, 6));
      }
    }
  }
  i = n;
  flush();
  *p++ = '"';
  return p;
}

void append_json_string(std::string& out, std::string_view s) {
  const std::size_t at = out.size();
  out.resize(at + json_string_bound(s.size()));
  char* end = put_json_string(out.data() + at, s);
  out.resize(static_cast<std::size_t>(end - out.data()));
}

}  // namespace ag::json_text
