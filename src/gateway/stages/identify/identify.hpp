#pragma once
// Stage 2, identify: the route decides which credentials count (docs/services-and-tokens.md): a
// service route takes an API key of its project or a service token naming it; any other path an
// API key. Sets the principal (project, key or token) and its rate-limit policy; a failed
// credential is counted against the client address (the accept stage's block). A project without
// a default upstream answers 404 here, before the caller spends a rate-limit token.
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

#include "gateway/pipeline/context.hpp"
#include "gateway/stages/identify/credentials.hpp"

namespace ag::gateway {

class RiskEngine;

namespace stages {

// The service tokens a thread saw since the last usage report (jti -> last use, unix ms).
struct TokenUsage {
  std::mutex mutex;  // taken by the thread per token request and by the reporter
  std::unordered_map<std::string, std::int64_t> last_used;
};

class Identify {
 public:
  // `usage`: null when there is no control plane to report to.
  Identify(const TokenCheck& check, TokenCache& cache, RiskEngine& risk, TokenUsage* usage)
      : check_(check), cache_(cache), risk_(risk), usage_(usage) {}

  LocalReply run(Context& ctx, const RequestView& req) const;

 private:
  LocalReply credentials(Context& ctx, const RequestView& req) const;
  const TokenCheck& check_;
  TokenCache& cache_;
  RiskEngine& risk_;
  TokenUsage* usage_;
};

}  // namespace stages
}  // namespace ag::gateway
