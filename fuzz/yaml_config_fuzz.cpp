// libFuzzer target for the worker's YAML file mode (src/config/yaml_source.cpp): the input is
// written as the one *.yaml file of a private directory, and the directory source loads it as
// the worker does at start-up (YAML -> worker-config document -> config::build_snapshot). A file
// that fails to load is logged and dropped; one that loads is published as a snapshot.
//
// Files named by public_key_file are read as they are (the operator's own files), so inputs whose
// YAML names one are skipped: the fuzzer would otherwise read whatever path it invents (/dev/zero
// included). Upstream hosts are resolved numerically only (a config::NumericResolver).
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "common/crypto.hpp"
#include "config/sync.hpp"
#include "config/context.hpp"

// Snapshots here resolve IP literals only: a fuzzed document names arbitrary hosts, and real DNS
// lookups would make each execution as slow as the resolver.
static ag::config::BuildContext fuzz_ctx(std::make_unique<ag::config::NumericResolver>());

namespace {

// The directory lives for the whole process (never destroyed: the exit handler removes it).
const std::string& dir() {
  static const std::string* d = [] {
    spdlog::set_level(spdlog::level::off);
    ag::crypto::init();
    const char* base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    auto* path = new std::string(std::string(base) + "/ag-yaml-fuzz.XXXXXX");
    if (!mkdtemp(path->data())) __builtin_trap();
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(dir(), ec);
    });
    return path;
  }();
  return *d;
}

bool names_key_file(const YAML::Node& n, int depth = 0) {
  if (depth > 64) return true;  // deeper than any config: treat as suspect, skip
  if (n.IsMap()) {
    for (const auto& kv : n) {
      if (kv.first.IsScalar() && kv.first.Scalar() == "public_key_file") return true;
      if (names_key_file(kv.first, depth + 1) || names_key_file(kv.second, depth + 1)) return true;
    }
  } else if (n.IsSequence()) {
    for (const auto& e : n)
      if (names_key_file(e, depth + 1)) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& d = dir();
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    if (names_key_file(YAML::Load(text))) return 0;
  } catch (const YAML::Exception&) {
    // The source reports the same error for the file.
  }
  const std::string path = d + "/config.yaml";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) __builtin_trap();
  if (size && std::fwrite(data, 1, size, f) != size) __builtin_trap();
  std::fclose(f);

  std::shared_ptr<const ag::config::Snapshot> published;
  auto source = ag::config::make_yaml_dir_source(fuzz_ctx, d, std::chrono::hours(1),
                                                 [&](std::shared_ptr<const ag::config::Snapshot> s) { published = s; });
  source->start();
  source->stop();
  const bool failed = source->stats.errors.load() != 0;
  if (failed == static_cast<bool>(published)) __builtin_trap();  // exactly one outcome
  if (published && (!published->tokens || published->version != 1)) __builtin_trap();
  return 0;
}
