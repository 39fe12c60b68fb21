#pragma once
// The per-request state every stage reads and writes (docs/worker.md, "Per request"), and the
// local reply a stage answers with instead of continuing. The stage contract and the order are
// in pipeline/runner.hpp.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/cidr.hpp"
#include "common/time.hpp"
#include "config/snapshot.hpp"
#include "ratelimit/gcra.hpp"

namespace ag::gateway {

// Why the worker answered itself. kNone = proxied.
enum class Reason : std::uint8_t {
  kNone,
  kNotReady,
  kKeyMissing,
  kKeyInvalid,
  kRateLimited,
  kBodyTooLarge,
  kHeadersTooLarge,
  kHeaderTimeout,
  kBadRequest,
  kUpstreamUnreachable,
  kUpstreamTimeout,
  kUpstreamTls,         // the TLS handshake with an https:// upstream failed (certificate, protocol)
  kCredentialsMissing,  // a service route with neither an API key nor a bearer token
  kTokenInvalid,        // the log line names the token error (token_expired, ...)
  kTokenRevoked,
  kRouteForbidden,      // a valid credential for another project, service or route
  kNoHealthyTarget,
  kNoRoute,             // no default upstream for this project
  kIpDenied,            // an IP allow/deny list (403)
  kAuthFailures,        // too many failed authentications from this IP (429)
  kRiskBlocked,         // the risk score reached the block threshold (429)
  kRiskThrottled,       // a throttled caller over its tighter limit (429)
};
std::string_view reason_name(Reason r);

struct LocalReply {
  int status = 0;
  Reason reason = Reason::kNone;
  std::string_view detail;
  bool close = false;  // close the connection after answering
};

struct Context {
  std::shared_ptr<const config::Snapshot> snapshot;  // pinned for the whole request
  const config::Project* project = nullptr;
  const config::KeyEntry* key = nullptr;
  ratelimit::Policy policy;   // the key's own limit, or its project's
  std::uint64_t key_tag = 0;  // first 8 bytes of the key's SHA-256: names its rate-limit state
  std::string request_id;
  std::string client_ip;
  ratelimit::Decision limit;
  bool limit_checked = false;
  Reason reason = Reason::kNone;
  int status = 0;
  std::int64_t start_ns = 0;
  std::int64_t upstream_ns = -1;  // time to the upstream's response head; -1 = not contacted
  std::uint64_t bytes_in = 0, bytes_out = 0;
  // Service routes and service tokens (docs/services-and-tokens.md).
  const config::Service* service = nullptr;  // set on a service route
  std::string_view request_target;          // the request target as routed (path normalised)
  std::string_view forward_target;          // the target after /{slug}/{service} ("" = "/")
  const config::ServiceTarget* target = nullptr;  // the service target proxied to
  bool jwt = false;                         // authenticated by a service token
  std::string jti;
  std::string_view reason_detail;           // overrides reason_name() in the log (token errors)
  // Risk engine (docs/risk.md).
  bool risk_evaluated = false;
  double risk_score = 0;
  std::uint8_t risk_decision = 0;  // RiskDecision
  std::uint32_t risk_rules = 0;    // RiskRule bits
  bool risk_shadow = false;        // the decision was logged, not applied
  std::int64_t throttle_delay_ms = 0;  // the risk stage asks the runner to hold the request this long
};

// What the stages read of a request: views into its head, valid until the request ends. The
// connection fills it in one pass over the header fields.
struct RequestView {
  std::string_view method, target, path, user_agent;  // target and path: normalised by accept
  std::string_view peer_ip;
  std::string_view request_id, xff;  // as received
  std::string_view api_key, authorization;
  bool has_api_key = false, has_user_agent = false;
  bool has_body = false;
  std::optional<std::uint64_t> content_length;
  LocalReply framing;  // the reader's verdict on the head (strict::check_head); status 0 = fine
  std::string* path_buf = nullptr;    // the connection's buffers for a normalised path and target
  std::string* target_buf = nullptr;
};

}  // namespace ag::gateway
