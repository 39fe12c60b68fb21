#include "gateway/stages/proxy/upstream_head.hpp"

#include "gateway/stages/proxy/headers.hpp"
#include "gateway/strict_http.hpp"

namespace ag::gateway {

using namespace std::string_view_literals;

UpstreamHeadMarks build_upstream_head(std::string& out, const Context& ctx, const UpstreamHeadInput& in) {
  UpstreamHeadMarks marks;
  const config::Upstream& up = *in.upstream;
  const config::Service* svc = ctx.service;
  out.clear();
  out.append(in.method.data(), in.method.size());
  out += ' ';
  marks.target_at = out.size();
  out += up.base_path;
  if (svc) {
    if (ctx.forward_target.empty() || ctx.forward_target.front() != '/') out += '/';
    out.append(ctx.forward_target.data(), ctx.forward_target.size());
  } else {
    out.append(ctx.request_target.data(), ctx.request_target.size());
  }
  out += " HTTP/1.1\r\nHost: "sv;
  marks.host_at = out.size();
  out += up.host_header;
  out += "\r\n"sv;
  marks.host_end = out.size();
  const std::string_view conn_hdr = connection_options(in.connection);
  for (const auto& f : in.fields) {
    std::string_view name = f.name;
    LowerName ln(name);
    std::string_view n = ln.view();
    if (is_hop_by_hop(n) || n == "host" || n == "content-length" || n == "x-forwarded-proto" || n == "x-forwarded-for" ||
        n == "x-forwarded-host" || n == "x-request-id" || n.substr(0, 10) == "x-gateway-" || (in.expect_continue && n == "expect"))
      continue;
    // A backend that folds '_' into '-' would read X_Gateway_Project as one of ours (nginx and
    // Envoy drop such names too).
    if (in.drop_underscores && has_underscore(name)) continue;
    // Client addresses only the gateway, or a trusted proxy before it, may state.
    if (strict::is_client_ip_field(n) && (!in.peer_trusted || n == "x-real-ip")) continue;
    if (ctx.jwt && n == "authorization") continue;  // the gateway credential stays here
    if (!conn_hdr.empty() && http1::has_token(conn_hdr, n)) continue;
    out.append(name.data(), name.size());
    out += ": "sv;
    out.append(f.value.data(), f.value.size());
    out += "\r\n"sv;
  }
  out += "X-Forwarded-For: "sv;
  if (!in.xff.empty()) {
    out.append(in.xff.data(), in.xff.size());
    out += ", "sv;
  }
  out += in.peer_ip;
  out += "\r\nX-Real-IP: "sv;
  out += ctx.client_ip;
  out += "\r\nX-Forwarded-Proto: http\r\n"sv;
  if (!in.client_host.empty()) {
    out += "X-Forwarded-Host: "sv;
    out.append(in.client_host.data(), in.client_host.size());
    out += "\r\n"sv;
  }
  out += "X-Request-Id: "sv;
  out += ctx.request_id;
  out += "\r\nX-Gateway-Project: "sv;
  out += ctx.project->id;
  out += "\r\n"sv;
  if (ctx.key && !ctx.key->id.empty()) {
    out += "X-Gateway-Key-Id: "sv;
    out += ctx.key->id.view();
    out += "\r\n"sv;
  }
  if (svc) {
    out += "X-Gateway-Service: "sv;
    out += svc->name;
    out += "\r\n"sv;
  }
  if (ctx.jwt) {
    out += "X-Gateway-JTI: "sv;
    out += ctx.jti;
    out += "\r\n"sv;
  }
  if (in.upgrade) out += "Connection: Upgrade\r\nUpgrade: websocket\r\n"sv;
  marks.send_chunked = in.has_body && (in.chunked || !in.content_length);
  if (in.has_body) {
    if (marks.send_chunked) {
      out += "Transfer-Encoding: chunked\r\n"sv;
    } else {
      out += "Content-Length: "sv;
      append_num(out, *in.content_length);
      out += "\r\n"sv;
    }
  }
  out += "\r\n"sv;
  return marks;
}

}  // namespace ag::gateway
