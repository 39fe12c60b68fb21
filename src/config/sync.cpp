#include "config/sync.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/files.hpp"
#include "config/journal.hpp"
#include "common/time.hpp"
#include "http/client.hpp"

namespace ag::config {

namespace {

// Whether a worker-config response is a full document: its top-level "full" is true (a delta has
// "full": false). Looks at the field itself, whatever the whitespace around it.
bool json_says_full(std::string_view body) {
  auto pos = body.find("\"full\"");
  if (pos == std::string_view::npos) return false;
  pos += 6;
  while (pos < body.size() && (body[pos] == ' ' || body[pos] == '\t' || body[pos] == '\n' || body[pos] == '\r' || body[pos] == ':'))
    ++pos;
  return body.substr(pos, 4) == "true";
}

// Shared thread + interruptible sleep for both sources.
class PollingSource : public ConfigSource {
 public:
  PollingSource(BuildContext& ctx, PublishFn publish) : ctx_(ctx), publish_(std::move(publish)) {}
  ~PollingSource() override { stop(); }
  void start() override {
    thread_ = std::thread([this] { loop(); });
  }
  void stop() override {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lock(m_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 protected:
  BuildContext& ctx_;
  // One poll; returns how long to wait before the next.
  virtual std::chrono::milliseconds poll_once() = 0;
  bool apply(const std::string& text, const char* origin) {
    auto r = build_snapshot(text, ctx_);
    if (!r.snapshot) {
      stats.errors.fetch_add(1);
      spdlog::error("config from {} rejected, keeping the previous one: {}", origin, r.error);
      return false;
    }
    spdlog::info("config version {} loaded from {}: {} projects, {} keys", r.snapshot->version, origin,
                 r.snapshot->project_count, r.snapshot->key_count);
    publish_(std::move(r.snapshot));
    return true;
  }

 private:
  void loop() {
    std::unique_lock lock(m_);
    while (!stopping_) {
      lock.unlock();
      auto wait = poll_once();
      lock.lock();
      cv_.wait_for(lock, wait, [this] { return stopping_; });
    }
  }
  PublishFn publish_;
  std::mutex m_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

class ControlPlaneSource final : public PollingSource {
 public:
  ControlPlaneSource(BuildContext& ctx, ControlPlaneSourceOptions o, PublishFn p, SavedSnapshot initial)
      : PollingSource(ctx, p), opts_(std::move(o)), publish_(std::move(p)) {
    while (!opts_.base_url.empty() && opts_.base_url.back() == '/') opts_.base_url.pop_back();
    current_ = std::move(initial.snapshot);
    confirmed_at_ms_ = initial.confirmed_at_ms;
    // Replayed journal records are not in the saved file yet: the first save writes them.
    if (current_) saved_version_ = initial.saved_version;
    if (!opts_.snapshot_path.empty()) {
      journal_ = std::make_unique<Journal>(opts_.snapshot_path + ".journal", opts_.journal_sync);
      if (!journal_->ok()) {
        spdlog::error("cannot open the config journal {} ({}): every change is saved as a snapshot instead",
                      journal_->path(), std::strerror(errno));
        journal_failed_ = true;
      } else if (current_ && saved_version_ != current_->version) {
        // Records were replayed: fold them into the saved file now, so that the journal starts
        // empty and a record that could not be replayed cannot hold back the ones after it.
        save(confirmed_at_ms_);
      } else {
        journal_->clear();
      }
    }
  }
  ~ControlPlaneSource() override { stop(); }
  void stop() override {
    cancel_.cancel();
    PollingSource::stop();
    // Compacts on the way out: the journal already holds every applied document, so this only
    // saves the next start a replay.
    if (current_ && !stopped_) save(confirmed_at_ms_);
    stopped_ = true;
  }

 protected:
  std::chrono::milliseconds poll_once() override {
    std::vector<http::Header> headers{{"x-worker-secret", opts_.secret}, {"accept", "application/json"}};
    std::string url = opts_.base_url + "/internal/worker/config";
    auto timeout = opts_.timeout;
    if (current_ && !force_full_) {
      // A save deferred by the save interval shortens the wait so the loop is back in time for it.
      auto wait = opts_.long_poll;
      if (save_pending_) {
        auto due = std::chrono::milliseconds(last_save_ms_ + opts_.save_interval.count() - now_ms());
        wait = std::clamp(std::chrono::duration_cast<std::chrono::seconds>(due) + std::chrono::seconds(1),
                          std::chrono::seconds(1), opts_.long_poll);
      }
      url += "?since=" + std::to_string(current_->version) + "&wait=" + std::to_string(wait.count());
      timeout += wait;
    } else {
      url += "?full=1";
    }
    if (opts_.identity) url += "&applied=" + std::to_string(current_ ? current_->version : 0) + opts_.identity();
    auto fetch_start = std::chrono::steady_clock::now();
    auto r = http::fetch("GET", url, headers, "", timeout, 1024ULL * 1024 * 1024, &cancel_);
    auto fetch_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - fetch_start).count();
    if (cancel_.cancelled()) return std::chrono::milliseconds(0);
    if (!r.ok) return failure(r.error);
    if (r.status != 200)
      return failure("HTTP " + std::to_string(r.status) + (r.status == 401 ? " (check CONTROL_WORKER_SHARED_SECRET)" : ""));
    bool full = json_says_full(r.body) || !current_ || force_full_;
    auto apply_start = std::chrono::steady_clock::now();
    BuildResult built = full ? build_snapshot(r.body, ctx_) : apply_delta(current_, r.body, ctx_);
    if (!built.snapshot) {
      stats.errors.fetch_add(1);
      spdlog::error("config {} from the control plane rejected, keeping version {}: {}", full ? "document" : "delta",
                    current_ ? current_->version : -1, built.error);
      // Start over from a full document on the next request.
      force_full_ = true;
      return failure("rejected document");
    }
    force_full_ = false;
    bool changed = !current_ || built.snapshot->version != current_->version || full;
    if (changed) {
      stats.last_apply_us.store(static_cast<std::int64_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - apply_start).count()));
      if (!current_ || full)
        spdlog::info("config version {} loaded from the control plane ({}, {:.1f} MB fetched in {} ms, built in {} ms): "
                     "{} projects, {} keys",
                     built.snapshot->version, full ? "full" : "delta", static_cast<double>(r.body.size()) / 1e6, fetch_ms,
                     stats.last_apply_us.load() / 1000, built.snapshot->project_count, built.snapshot->key_count);
      // Written before the threads see it: once a request is refused under this config, no later
      // start from the saved state accepts it again.
      if (journal_ && journal_->ok() &&
          !journal_->append({full ? JournalKind::kFull : JournalKind::kDelta, built.snapshot->version, now_ms(), r.body})) {
        stats.errors.fetch_add(1);
        spdlog::error("cannot append to the config journal {} ({}); saving the snapshot instead", journal_->path(),
                      std::strerror(errno));
        journal_failed_ = true;
      }
      current_ = built.snapshot;
      publish_(current_);
    }
    return success();
  }

 private:
  std::chrono::milliseconds success() {
    std::int64_t now = now_ms();
    stats.last_ok_ms.store(now);
    confirmed_at_ms_ = now;
    withdrawn_ = false;
    if (failures_ > 0) spdlog::info("control plane reachable again");
    failures_ = 0;
    maybe_save(now);
    return std::chrono::milliseconds(0);  // long poll: ask again at once
  }

  std::chrono::milliseconds failure(const std::string& why) {
    stats.errors.fetch_add(1);
    ++failures_;
    // Fail closed when the config in force has not been confirmed for longer than max_age.
    if (current_ && !withdrawn_ && now_ms() - confirmed_at_ms_ > opts_.max_age.count()) {
      spdlog::error("config version {} is older than WORKER_SNAPSHOT_MAX_AGE_SEC and the control plane is unreachable: "
                    "refusing traffic until it answers",
                    current_->version);
      publish_(nullptr);
      withdrawn_ = true;
      current_.reset();
    }
    // Exponential backoff from 250 ms up to max_backoff; the snapshot in force stays.
    auto backoff = std::chrono::milliseconds(250) * (1LL << std::min(failures_ - 1, 8));
    if (backoff > opts_.max_backoff) backoff = opts_.max_backoff;
    if (failures_ == 1 || failures_ % 10 == 0)
      spdlog::warn("config fetch from {} failed ({}), attempt {}; retrying in {} ms", opts_.base_url, why, failures_,
                   backoff.count());
    return backoff;
  }

  void maybe_save(std::int64_t now) {
    if (opts_.snapshot_path.empty() || !current_) return;
    const bool durable = journal_ && !journal_failed_;  // (a journal that cannot be opened has failed)
    if (durable && now - last_save_ms_ < opts_.save_interval.count()) {
      save_pending_ = saved_version_ != current_->version;
      return;
    }
    save(now);
  }

  // Saves the snapshot in force (when it changed) and its confirmation time, then empties the
  // journal, whose records the saved file now holds.
  void save(std::int64_t now) {
    if (opts_.snapshot_path.empty() || !current_) return;
    save_pending_ = false;
    last_save_ms_ = now;
    bool ok = true;
    if (saved_version_ != current_->version) {
      ok = files::save_private_atomically(opts_.snapshot_path, serialize_snapshot(*current_, now));
      if (ok) saved_version_ = current_->version;
    }
    // The small side file records that the control plane still vouches for this version.
    if (ok)
      ok = files::save_private_atomically(opts_.snapshot_path + ".meta", "{\"version\":" + std::to_string(current_->version) +
                                                                    ",\"confirmed_at_ms\":" + std::to_string(now) + "}\n");
    if (!ok) {
      stats.errors.fetch_add(1);
      spdlog::error("cannot save the config snapshot to {}; the previous file is kept", opts_.snapshot_path);
      return;
    }
    if (journal_ && journal_->ok()) {
      if (journal_->clear()) journal_failed_ = false;
      else spdlog::error("cannot empty the config journal {} ({})", journal_->path(), std::strerror(errno));
    }
  }

  ControlPlaneSourceOptions opts_;
  PublishFn publish_;
  http::FetchCancel cancel_;
  std::shared_ptr<const Snapshot> current_;
  bool force_full_ = false;
  bool withdrawn_ = false;
  int failures_ = 0;
  std::int64_t confirmed_at_ms_ = 0;
  std::int64_t last_save_ms_ = 0;
  std::int64_t saved_version_ = -1;
  bool save_pending_ = false;
  bool stopped_ = false;
  std::unique_ptr<Journal> journal_;
  bool journal_failed_ = false;  // an append failed: every change is saved at once until a save succeeds
};

class FileSource final : public PollingSource {
 public:
  FileSource(BuildContext& ctx, std::string path, std::chrono::milliseconds poll, PublishFn p)
      : PollingSource(ctx, std::move(p)), path_(std::move(path)), poll_(poll) {}
  ~FileSource() override { stop(); }

 protected:
  std::chrono::milliseconds poll_once() override {
    struct stat st {};
    if (::stat(path_.c_str(), &st) != 0) {
      if (!missing_logged_) spdlog::error("config file {} cannot be read", path_);
      missing_logged_ = true;
      stats.errors.fetch_add(1);
      return poll_;
    }
    missing_logged_ = false;
    std::int64_t stamp = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
    if (stamp == last_stamp_ && st.st_size == last_size_) {
      stats.last_ok_ms.store(now_ms());
      return poll_;
    }
    last_stamp_ = stamp;
    last_size_ = st.st_size;
    std::ifstream in(path_, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (apply(ss.str(), path_.c_str())) stats.last_ok_ms.store(now_ms());
    return poll_;
  }

 private:
  std::string path_;
  std::chrono::milliseconds poll_;
  std::int64_t last_stamp_ = -1;
  std::int64_t last_size_ = -1;
  bool missing_logged_ = false;
};

}  // namespace

std::unique_ptr<ConfigSource> make_control_plane_source(BuildContext& ctx, ControlPlaneSourceOptions opts,
                                                        PublishFn publish, SavedSnapshot initial) {
  return std::make_unique<ControlPlaneSource>(ctx, std::move(opts), std::move(publish), std::move(initial));
}

SavedSnapshot load_saved_snapshot(BuildContext& ctx, const std::string& path, std::chrono::milliseconds max_age) {
  SavedSnapshot out;
  std::shared_ptr<const Snapshot> current;
  std::int64_t confirmed = -1;
  std::string problem;
  std::ifstream in(path, std::ios::binary);
  if (in) {
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    auto built = build_snapshot(text, ctx);
    if (built.snapshot) {
      auto number_after = [](const std::string& t, const std::string& key) -> std::int64_t {
        auto pos = t.find("\"" + key + "\":");
        if (pos == std::string::npos) return -1;
        return std::strtoll(t.c_str() + pos + key.size() + 3, nullptr, 10);
      };
      confirmed = number_after(text, "saved_at_ms");
      std::ifstream meta_in(path + ".meta");
      if (meta_in) {
        std::stringstream ms;
        ms << meta_in.rdbuf();
        std::string meta = ms.str();
        if (number_after(meta, "version") == built.snapshot->version)
          confirmed = std::max(confirmed, number_after(meta, "confirmed_at_ms"));
      }
      current = std::move(built.snapshot);
      out.saved_version = current->version;
    } else {
      problem = "saved snapshot " + path + " is unreadable (" + built.error + ")";
    }
  }
  // The journal: documents applied after that save, in order (config/journal.hpp).
  JournalContents journal = read_journal(path + ".journal");
  for (const auto& r : journal.records) {
    if (current && r.version <= current->version) continue;  // already in the saved file
    BuildResult b;
    if (r.kind == JournalKind::kFull) b = build_snapshot(r.document, ctx);
    else if (current) b = apply_delta(current, r.document, ctx);
    else b.error = "a delta without the snapshot it applies to";
    if (!b.snapshot) {
      out.journal_note = "journal record for version " + std::to_string(r.version) + " not applied (" + b.error + ")";
      break;
    }
    current = std::move(b.snapshot);
    confirmed = std::max(confirmed, r.at_ms);
    ++out.replayed;
  }
  if (journal.file_bytes != journal.valid_bytes) {
    if (!out.journal_note.empty()) out.journal_note += "; ";
    out.journal_note += "ignored a torn or corrupt journal tail of " + std::to_string(journal.file_bytes - journal.valid_bytes) +
                        " bytes";
  }
  if (!current) {
    out.problem = problem;
    return out;
  }
  if (confirmed <= 0 || now_ms() - confirmed > max_age.count()) {
    out.problem = "saved snapshot " + path + " (version " + std::to_string(current->version) +
                  ") is older than WORKER_SNAPSHOT_MAX_AGE_SEC";
    return out;
  }
  out.snapshot = std::move(current);
  out.confirmed_at_ms = confirmed;
  return out;
}

std::unique_ptr<ConfigSource> make_file_source(BuildContext& ctx, std::string path, std::chrono::milliseconds poll,
                                              PublishFn publish) {
  return std::make_unique<FileSource>(ctx, std::move(path), poll, std::move(publish));
}

}  // namespace ag::config
