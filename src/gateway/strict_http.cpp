#include "gateway/strict_http.hpp"

#include <array>

#include "http/h1/http1.hpp"

namespace ag::gateway::strict {

namespace {

constexpr bool is_digit(char c) { return c >= '0' && c <= '9'; }
constexpr bool is_alnum(char c) { return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// unreserved / sub-delims (RFC 3986 2.2, 2.3), as a table: this runs on every request's Host.
constexpr auto kRegNameChars = [] {
  std::array<bool, 256> t{};
  for (int c = 0; c < 256; ++c) t[static_cast<std::size_t>(c)] = is_alnum(static_cast<char>(c));
  for (char c : std::string_view("-._~!$&'()*+,;=")) t[static_cast<unsigned char>(c)] = true;
  return t;
}();

// reg-name = *( unreserved / pct-encoded / sub-delims ), which also covers IPv4 addresses.
bool valid_reg_name(std::string_view s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (kRegNameChars[static_cast<unsigned char>(c)]) continue;
    if (c == '%' && i + 2 < s.size() && is_hex(s[i + 1]) && is_hex(s[i + 2])) {
      i += 2;
      continue;
    }
    return false;
  }
  return true;
}

// IP-literal = "[" ( IPv6address / IPvFuture ) "]": the characters those may hold.
bool valid_ip_literal(std::string_view s) {
  if (s.size() < 3 || s.front() != '[' || s.back() != ']') return false;
  for (char c : s.substr(1, s.size() - 2))
    if (!is_hex(c) && c != ':' && c != '.' && c != 'v' && c != 'V') return false;
  return true;
}

// The last element of a comma-separated list, without surrounding whitespace.
std::string_view last_element(std::string_view list) {
  auto comma = list.rfind(',');
  return http1::trim_ows(comma == std::string_view::npos ? list : list.substr(comma + 1));
}

// "." or ".." spelled with '.' or "%2e"/"%2E": 1 or 2; anything else 0.
int dots(std::string_view seg) {
  int n = 0;
  for (std::size_t i = 0; i < seg.size();) {
    if (seg[i] == '.') {
      ++i;
    } else if (seg[i] == '%' && i + 2 < seg.size() && seg[i + 1] == '2' && (seg[i + 2] == 'e' || seg[i + 2] == 'E')) {
      i += 3;
    } else {
      return 0;
    }
    if (++n > 2) return 0;
  }
  return n;
}

}  // namespace

bool valid_host(std::string_view host) {
  if (host.empty()) return true;
  std::string_view name = host, port;
  if (host.front() == '[') {
    auto close = host.find(']');
    if (close == std::string_view::npos) return false;
    name = host.substr(0, close + 1);
    std::string_view rest = host.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return false;
      port = rest.substr(1);
    }
    if (!valid_ip_literal(name)) return false;
  } else {
    auto colon = host.find(':');
    if (colon != std::string_view::npos) {
      name = host.substr(0, colon);
      port = host.substr(colon + 1);
    }
    if (name.empty() || !valid_reg_name(name)) return false;
  }
  if (port.size() > 5) return false;
  std::uint32_t p = 0;
  for (char c : port) {
    if (!is_digit(c)) return false;
    p = p * 10 + static_cast<std::uint32_t>(c - '0');
  }
  return p <= 65535;
}

LocalReply check_head(const HeadFacts& f, Underscores underscores) {
  if (f.transfer_encoding_count > 0) {
    if (f.version < 11)
      return {400, Reason::kBadRequest, "Transfer-Encoding is not allowed in an HTTP/1.0 request", true};
    if (!http1::name_is(last_element(f.transfer_encoding), "chunked"))
      return {400, Reason::kBadRequest, "Transfer-Encoding must end in chunked", true};
    if (!http1::name_is(f.transfer_encoding, "chunked"))
      return {501, Reason::kBadRequest, "Transfer codings other than chunked are not supported", true};
    if (f.has_content_length)
      return {400, Reason::kBadRequest, "Transfer-Encoding and Content-Length together", true};
  }
  if (f.content_length_count > 1) return {400, Reason::kBadRequest, "More than one Content-Length header", true};
  if (f.host_count == 0 && f.version >= 11) return {400, Reason::kBadRequest, "Host header missing", true};
  if (f.host_count > 1) return {400, Reason::kBadRequest, "More than one Host header", true};
  if (f.host_count == 1 && !f.host_valid && !valid_host(f.host)) return {400, Reason::kBadRequest, "Invalid Host header", true};
  if (f.api_key_count > 1) return {400, Reason::kBadRequest, "Ambiguous credentials: more than one X-API-Key header", true};
  if (f.authorization_count > 1)
    return {400, Reason::kBadRequest, "Ambiguous credentials: more than one Authorization header", true};
  if (f.underscore_name && underscores == Underscores::kReject)
    return {400, Reason::kBadRequest, "Header names with underscores are not accepted", true};
  return {};
}

PathResult normalize_path(std::string_view path, bool merge_slashes, std::string& out) {
  // Most paths hold nothing to normalise: one scan decides (no allocation).
  bool work = false;
  for (std::size_t i = 0; i + 1 < path.size() && !work; ++i) {
    if (path[i] != '/') continue;
    char n = path[i + 1];
    work = n == '.' || n == '%' || (n == '/' && merge_slashes);
  }
  if (!work) return PathResult::kUnchanged;
  // Segments after the leading '/': each kept one ends at out's end; a dropped "." or ".."
  // that ends the path leaves a trailing '/', as RFC 3986 5.2.4 does ("/a/b/.." -> "/a/").
  out.clear();
  out.reserve(path.size());
  std::size_t at = 1;
  for (;;) {
    std::size_t slash = path.find('/', at);
    const bool last = slash == std::string_view::npos;
    std::string_view seg = path.substr(at, last ? std::string_view::npos : slash - at);
    int d = dots(seg);
    if (d == 1) {
      if (last) out += '/';
    } else if (d == 2) {
      if (out.empty()) return PathResult::kAboveRoot;
      out.resize(out.rfind('/'));
      if (last) out += '/';
    } else if (seg.empty() && !last && merge_slashes) {
      // "//": merged
    } else {
      out += '/';
      out.append(seg.data(), seg.size());
    }
    if (last) break;
    at = slash + 1;
  }
  if (out.empty()) out.push_back('/');
  return out == path ? PathResult::kUnchanged : PathResult::kChanged;
}

bool is_client_ip_field(std::string_view n) {
  switch (n.size()) {
    case 9:
      return n == "forwarded" || n == "x-real-ip";
    case 11:
      return n == "x-client-ip";
    case 14:
      return n == "true-client-ip";
    default:
      return false;
  }
}

}  // namespace ag::gateway::strict
