#include "gateway/stages/log/log_line.hpp"

#include <charconv>
#include <cstring>

#include "common/json_string.hpp"
#include "gateway/stages/risk/endpoint.hpp"
#include "gateway/stages/risk/risk.hpp"

namespace ag::gateway {

using namespace std::string_view_literals;

namespace {
using json_text::json_string_bound;
using json_text::put;
using json_text::put_json_string;

constexpr std::size_t kUintChars = 20;  // 2^64 - 1
char* put_uint(char* p, std::uint64_t v) { return std::to_chars(p, p + kUintChars, v).ptr; }

// Nanoseconds as milliseconds with 3 decimals, without printf.
// thousandths / 1000 with three decimals ("12.345"), without printf.
char* put_thousandths(char* p, std::uint64_t thousandths) {
  p = put_uint(p, thousandths / 1000);
  *p++ = '.';
  *p++ = static_cast<char>('0' + thousandths / 100 % 10);
  *p++ = static_cast<char>('0' + thousandths / 10 % 10);
  *p++ = static_cast<char>('0' + thousandths % 10);
  return p;
}

char* put_ms(char* p, std::int64_t ns) { return put_thousandths(p, static_cast<std::uint64_t>(ns < 0 ? 0 : ns / 1000)); }

// The timestamp's text changes once a second: format it once per second per thread.
thread_local std::int64_t t_ts_second = -1;
thread_local char t_ts_text[24];
}  // namespace

void append_log_line(std::string& out, const Context& ctx, const LogFields& f, std::int64_t end_ns) {
  std::int64_t wall = now_ms();
  if (wall / 1000 != t_ts_second) {
    t_ts_second = wall / 1000;
    std::string s = format_rfc3339(wall);  // 2026-11-22T18:34:27Z
    std::memcpy(t_ts_text, s.data(), 19);
  }
  static constexpr std::string_view kDecisions[] = {"\"allow\"", "\"throttle\"", "\"block\""};
  const std::string_view path = f.path.substr(0, 2048);
  std::string normalised;
  const std::string_view endpoint = needs_normalising(path) ? std::string_view(normalised = normalise_endpoint(path)) : path;
  const std::string_view ua = f.user_agent.substr(0, 512);
  const std::string_view reason = ctx.reason_detail.empty() ? reason_name(ctx.reason) : ctx.reason_detail;
  const std::string_view project = ctx.project ? std::string_view(ctx.project->id) : std::string_view{};
  const std::string_view key_id = ctx.key ? ctx.key->id.view() : std::string_view{};
  const std::string_view service = ctx.service ? std::string_view(ctx.service->name) : std::string_view{};

  // The worst case: every string escaped at 6 bytes a byte, every number at its widest, every
  // optional part present. The fixed text and the widest numbers take under 600 bytes.
  std::size_t bound = 1024 + kRiskRuleCount * 24;
  for (std::string_view v : {std::string_view(ctx.request_id), project, key_id, std::string_view(ctx.jti), service,
                             f.method, path, endpoint, std::string_view(ctx.client_ip), ua, reason})
    bound += json_string_bound(v.size());
  const std::size_t at = out.size();
  out.resize(at + bound);
  char* p = out.data() + at;

  p = put(p, "{\"ts\":\""sv);
  p = put(p, std::string_view(t_ts_text, 19));
  *p++ = '.';
  *p++ = static_cast<char>('0' + wall % 1000 / 100);
  *p++ = static_cast<char>('0' + wall % 100 / 10);
  *p++ = static_cast<char>('0' + wall % 10);
  *p++ = 'Z';
  p = put(p, "\",\"request_id\":"sv);
  p = put_json_string(p, ctx.request_id);
  p = put(p, ",\"project_id\":"sv);
  p = ctx.project ? put_json_string(p, project) : put(p, "null"sv);
  p = put(p, ",\"key_id\":"sv);
  p = !key_id.empty() ? put_json_string(p, key_id) : put(p, "null"sv);
  if (ctx.service || ctx.jwt) {
    p = put(p, ",\"auth\":"sv);
    p = put(p, ctx.jwt ? "\"jwt\""sv : ctx.key ? "\"api_key\""sv : "null"sv);
    p = put(p, ",\"jti\":"sv);
    p = ctx.jwt ? put_json_string(p, ctx.jti) : put(p, "null"sv);
    p = put(p, ",\"service\":"sv);
    p = ctx.service ? put_json_string(p, service) : put(p, "null"sv);
  }
  p = put(p, ",\"method\":"sv);
  p = put_json_string(p, f.method);
  p = put(p, ",\"path\":"sv);
  p = put_json_string(p, path);
  p = put(p, ",\"endpoint\":"sv);
  p = put_json_string(p, endpoint);
  p = put(p, ",\"ip\":"sv);
  p = put_json_string(p, ctx.client_ip);
  p = put(p, ",\"user_agent\":"sv);
  p = put_json_string(p, ua);
  p = put(p, ",\"decision\":"sv);
  p = put(p, ctx.reason != Reason::kNone ? kDecisions[2]
             : (ctx.risk_evaluated && !ctx.risk_shadow && ctx.risk_decision == 1) ? kDecisions[1]
                                                                                  : kDecisions[0]);
  p = put(p, ",\"reason\":"sv);
  p = put_json_string(p, reason);
  p = put(p, ",\"risk_score\":"sv);
  p = put_thousandths(p, static_cast<std::uint64_t>(ctx.risk_score * 1000 + 0.5));
  if (ctx.risk_evaluated) {
    p = put(p, ",\"risk_decision\":"sv);
    p = put(p, kDecisions[ctx.risk_decision < 3 ? ctx.risk_decision : 0]);
    p = put(p, ",\"rules\":["sv);
    bool first = true;
    for (std::size_t i = 0; i < kRiskRuleCount; ++i)
      if (ctx.risk_rules & (1u << i)) {
        if (!first) *p++ = ',';
        first = false;
        *p++ = '"';
        p = put(p, risk_rule_name(i));
        *p++ = '"';
      }
    *p++ = ']';
    if (ctx.risk_shadow) p = put(p, ",\"shadow\":true"sv);
  }
  p = put(p, ",\"status\":"sv);
  p = put_uint(p, static_cast<std::uint64_t>(ctx.status));
  p = put(p, ",\"latency_ms\":"sv);
  p = put_ms(p, end_ns - ctx.start_ns);
  p = put(p, ",\"upstream_latency_ms\":"sv);
  p = ctx.upstream_ns >= 0 ? put_ms(p, ctx.upstream_ns) : put(p, "null"sv);
  p = put(p, ",\"bytes_in\":"sv);
  p = put_uint(p, ctx.bytes_in);
  p = put(p, ",\"bytes_out\":"sv);
  p = put_uint(p, ctx.bytes_out);
  p = put(p, "}\n"sv);
  out.resize(static_cast<std::size_t>(p - out.data()));
}

}  // namespace ag::gateway
