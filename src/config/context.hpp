#pragma once
// What building a snapshot uses that outlives any one snapshot: the DNS resolver, the metrics
// slots of projects, the shared health state of service targets, the worker's own HS256 key and
// the key-set generation counter. Whoever builds snapshots owns one (the worker, a config tool, a
// test) and passes it to build_snapshot/apply_delta (snapshot.hpp); nothing of it is a hidden
// process-wide global, so two workers in one process (or two tests) do not share slots.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/service_token.hpp"

namespace ag::config {

struct Upstream;
struct TargetState;

// Turns an upstream's host into addresses (Upstream::endpoints; none when unresolvable).
class Resolver {
 public:
  virtual ~Resolver() = default;
  virtual void resolve(Upstream& u) = 0;
};
// getaddrinfo(): blocking, so snapshots are built off the request path.
class SystemResolver final : public Resolver {
 public:
  void resolve(Upstream& u) override;
};
// IP literals only; any name fails at once as an unresolvable host does (fuzzing, tests: no DNS).
class NumericResolver final : public Resolver {
 public:
  void resolve(Upstream& u) override;
};

// Stable metrics slots for project ids (slot 0 = no project); a snapshot's projects are indexed by
// slot. Thread-safe.
class MetricsSlots {
 public:
  std::uint32_t slot_for(std::string_view project_id);
  std::vector<std::string> names() const;  // the project id of each slot, for the exposition

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::uint32_t> slots_;
  std::vector<std::string> names_{""};
};

// The health state of each service target (by service and URL), the same object for as long as
// any snapshot holds it. Thread-safe.
class TargetStates {
 public:
  std::shared_ptr<TargetState> state_for(const std::string& key);

 private:
  std::mutex mu_;
  std::unordered_map<std::string, std::weak_ptr<TargetState>> states_;
};

struct BuildContext {
  explicit BuildContext(std::unique_ptr<Resolver> r = std::make_unique<SystemResolver>()) : resolver(std::move(r)) {}
  std::unique_ptr<Resolver> resolver;
  MetricsSlots slots;
  TargetStates targets;
  // The HS256 key the worker verifies service tokens with, from its own environment
  // (GATEWAY_JWT_SECRET; never in a document). Set before the first build.
  std::shared_ptr<const jwt::ServiceKey> hmac_key;
  // Changes whenever a snapshot's key set does (verified-token caches key on it).
  std::atomic<std::uint64_t> keys_generation{0};
};

}  // namespace ag::config
