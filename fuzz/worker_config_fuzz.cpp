// libFuzzer target for worker-config documents (src/config/snapshot.cpp): the input is taken as a
// full document (config::build_snapshot) and as a delta against a fixed base snapshot
// (config::apply_delta). Every snapshot that builds is written back with serialize_snapshot, as
// the worker saves it to disk, and must build again from that text (a saved snapshot that cannot
// be loaded would leave a restarted worker without its last good config).
//
// Upstream hosts are resolved numerically only (a config::NumericResolver): the seeds use IP literals.
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include "common/crypto.hpp"
#include "config/snapshot.hpp"
#include "config/context.hpp"

// Snapshots here resolve IP literals only: a fuzzed document names arbitrary hosts, and real DNS
// lookups would make each execution as slow as the resolver.
static ag::config::BuildContext fuzz_ctx(std::make_unique<ag::config::NumericResolver>());

namespace {

constexpr std::int64_t kSavedAtMs = 1'700'000'000'000;

// Version 10; project "p-base" (slug "base", one service) with two keys; one revoked token.
constexpr std::string_view kBase = R"({"version":10,"projects":[
  {"id":"p-base","name":"base","slug":"base","upstream_base_url":"http://127.0.0.1:9/a",
   "services":[{"name":"echo","targets":["http://127.0.0.1:9001"]}],
   "keys":[{"id":"k1","public_id":"AAAAAAAA","hash":"0000000000000000000000000000000000000000000000000000000000000001","expires_at":null},
           {"id":"k2","public_id":"BBBBBBBB","hash":"00000000000000000000000000000000000000000000000000000000000000ff","expires_at":"2030-01-01T00:00:00Z",
            "rate_limit":{"requests_per_minute":5,"burst":1}}]},
  {"id":"p-other","upstream_base_url":"http://[::1]:9002","api_keys":[]}],
  "revoked_tokens":[{"jti":"j-1","expires_at":null}]})";

const std::shared_ptr<const ag::config::Snapshot>& base() {
  static const std::shared_ptr<const ag::config::Snapshot> snap = [] {
    spdlog::set_level(spdlog::level::off);
    ag::crypto::init();
    auto built = ag::config::build_snapshot(kBase, fuzz_ctx);
    if (!built.snapshot) {
      std::fprintf(stderr, "base snapshot: %s\n", built.error.c_str());
      __builtin_trap();
    }
    return built.snapshot;
  }();
  return snap;
}

void round_trip(const ag::config::Snapshot& s, const char* what) {
  const std::string saved = ag::config::serialize_snapshot(s, kSavedAtMs);
  auto again = ag::config::build_snapshot(saved, fuzz_ctx);
  if (!again.snapshot) {
    std::fprintf(stderr, "%s: the serialized snapshot does not build: %s\n%s\n", what, again.error.c_str(),
                 saved.c_str());
    __builtin_trap();
  }
  if (again.snapshot->version != s.version) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& b = base();
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  auto full = ag::config::build_snapshot(text, fuzz_ctx);
  if (full.snapshot) {
    if (!full.snapshot->tokens || !full.snapshot->slugs) __builtin_trap();
    round_trip(*full.snapshot, "full document");
  } else if (full.error.empty()) {
    __builtin_trap();
  }

  auto delta = ag::config::apply_delta(b, text, fuzz_ctx);
  if (delta.snapshot) {
    round_trip(*delta.snapshot, "delta");
  } else if (delta.error.empty()) {
    __builtin_trap();
  }
  // A failed or successful delta never changes the base.
  if (b->version != 10 || b->key_count != 2 || b->project_count != 2) __builtin_trap();
  return 0;
}
