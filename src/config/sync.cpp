#include "config/sync.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "common/time.hpp"
#include "http/client.hpp"

namespace ag::config {

namespace {

// Shared thread + interruptible sleep for both sources.
class PollingSource : public ConfigSource {
 public:
  explicit PollingSource(PublishFn publish) : publish_(std::move(publish)) {}
  ~PollingSource() override { stop(); }
  void start() override {
    thread_ = std::thread([this] { loop(); });
  }
  void stop() override {
    {
      std::lock_guard lock(m_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 protected:
  // One poll; returns how long to wait before the next.
  virtual std::chrono::milliseconds poll_once() = 0;
  bool apply(const std::string& text, const char* origin) {
    auto r = build_snapshot(text);
    if (!r.snapshot) {
      stats.errors.fetch_add(1);
      spdlog::error("config from {} rejected, keeping the previous one: {}", origin, r.error);
      return false;
    }
    spdlog::info("config version {} loaded from {}: {} projects, {} keys", r.snapshot->version, origin,
                 r.snapshot->projects.size(), r.snapshot->keys.size());
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
  ControlPlaneSource(ControlPlaneSourceOptions o, PublishFn p) : PollingSource(std::move(p)), opts_(std::move(o)) {
    while (!opts_.base_url.empty() && opts_.base_url.back() == '/') opts_.base_url.pop_back();
  }
  ~ControlPlaneSource() override { stop(); }

 protected:
  std::chrono::milliseconds poll_once() override {
    std::vector<http::Header> headers{{"x-worker-secret", opts_.secret}, {"accept", "application/json"}};
    if (!etag_.empty()) headers.push_back({"if-none-match", etag_});
    auto r = http::fetch("GET", opts_.base_url + "/internal/worker/config", headers, "", opts_.timeout);
    if (r.ok && r.status == 304) return success();
    if (r.ok && r.status == 200) {
      if (apply(r.body, "control plane")) {
        etag_ = r.header("etag");
        return success();
      }
      return failure("rejected document");
    }
    if (r.ok) return failure("HTTP " + std::to_string(r.status) + (r.status == 401 ? " (check CONTROL_WORKER_SHARED_SECRET)" : ""));
    return failure(r.error);
  }

 private:
  std::chrono::milliseconds success() {
    stats.last_ok_ms.store(now_ms());
    if (failures_ > 0) spdlog::info("control plane reachable again");
    failures_ = 0;
    return opts_.poll_interval;
  }
  std::chrono::milliseconds failure(const std::string& why) {
    stats.errors.fetch_add(1);
    ++failures_;
    // Exponential backoff from 250 ms up to max_backoff; the previous snapshot stays in force.
    auto backoff = std::chrono::milliseconds(250) * (1LL << std::min(failures_ - 1, 8));
    if (backoff > opts_.max_backoff) backoff = opts_.max_backoff;
    if (failures_ == 1 || failures_ % 10 == 0)
      spdlog::warn("config fetch from {} failed ({}), attempt {}; retrying in {} ms", opts_.base_url, why,
                   failures_, backoff.count());
    return backoff;
  }
  ControlPlaneSourceOptions opts_;
  std::string etag_;
  int failures_ = 0;
};

class FileSource final : public PollingSource {
 public:
  FileSource(std::string path, std::chrono::milliseconds poll, PublishFn p)
      : PollingSource(std::move(p)), path_(std::move(path)), poll_(poll) {}
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

std::unique_ptr<ConfigSource> make_control_plane_source(ControlPlaneSourceOptions opts, PublishFn publish) {
  return std::make_unique<ControlPlaneSource>(std::move(opts), std::move(publish));
}

std::unique_ptr<ConfigSource> make_file_source(std::string path, std::chrono::milliseconds poll, PublishFn publish) {
  return std::make_unique<FileSource>(std::move(path), poll, std::move(publish));
}

}  // namespace ag::config
