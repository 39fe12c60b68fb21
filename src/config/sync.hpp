#pragma once
// Where the worker's config comes from, behind one interface: the control plane
// (GET /internal/worker/config, polled with If-None-Match) or a file (reloaded when it changes).
// Each source runs on its own thread, builds snapshots off the request path with its owner's
// BuildContext (context.hpp), and hands every good one to `publish`. A document that fails to build is logged and dropped: the previous
// snapshot stays in force.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "config/context.hpp"
#include "config/snapshot.hpp"

namespace ag::config {

struct SyncStats {
  std::atomic<std::int64_t> last_ok_ms{0};  // last successful contact (200 or 304)
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::int64_t> last_apply_us{-1};  // time to build the last published snapshot
};

using PublishFn = std::function<void(std::shared_ptr<const Snapshot>)>;

class ConfigSource {
 public:
  virtual ~ConfigSource() = default;
  virtual void start() = 0;
  virtual void stop() = 0;
  SyncStats stats;
};

struct ControlPlaneSourceOptions {
  std::string base_url;  // http://host:port
  std::string secret;
  std::chrono::seconds long_poll{25};  // how long the control plane may hold a request
  std::chrono::milliseconds timeout{10000};
  std::chrono::milliseconds max_backoff{30000};
  // Last good config on disk (docs/config-stream.md); empty = not saved.
  std::string snapshot_path;
  std::chrono::milliseconds save_interval{5000};
  // fdatasync every journal append (config/journal.hpp): survives a power loss, at a disk flush
  // per applied change.
  bool journal_sync = false;
  std::chrono::milliseconds max_age{24LL * 3600 * 1000};
  // Extra query parameters identifying the worker (its heartbeat): "&worker_id=...&address=...".
  std::function<std::string()> identity;
};

// A snapshot saved by an earlier run with its journal replayed (config/journal.hpp), if present,
// valid and younger than `max_age`.
struct SavedSnapshot {
  std::shared_ptr<const Snapshot> snapshot;
  std::int64_t confirmed_at_ms = 0;  // when the control plane last vouched for it
  std::string problem;               // why none was loaded (empty when the file does not exist)
  std::int64_t saved_version = -1;   // the version in the saved file (before the journal's records)
  std::size_t replayed = 0;          // journal records applied on top of it
  std::string journal_note;          // a journal record that could not be applied, or a torn tail
};
SavedSnapshot load_saved_snapshot(BuildContext& ctx, const std::string& path, std::chrono::milliseconds max_age);
// `publish(nullptr)` withdraws the config (fail closed) when it has become too old.
// `initial`: a saved snapshot already published; the source continues from its version.
std::unique_ptr<ConfigSource> make_control_plane_source(BuildContext& ctx, ControlPlaneSourceOptions opts,
                                                        PublishFn publish, SavedSnapshot initial = {});
std::unique_ptr<ConfigSource> make_file_source(BuildContext& ctx, std::string path, std::chrono::milliseconds poll,
                                              PublishFn publish);
// A directory of YAML files (docs/services-and-tokens.md "File mode"), checked every `poll`.
// Throws std::runtime_error when `dir` is not a directory.
std::unique_ptr<ConfigSource> make_yaml_dir_source(BuildContext& ctx, std::string dir, std::chrono::milliseconds poll,
                                                  PublishFn publish);

}  // namespace ag::config
