#pragma once
// Access log: request threads append finished lines to their own shard; a background thread
// swaps the shards out every 50 ms and writes them with one write(2) each. The request path
// never waits on I/O; when the writer falls behind by more than 16 MiB per shard, new lines are
// dropped and counted instead of growing memory.
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ag::gateway {

class AccessLog {
 public:
  // `target`: "stdout", "off", or a file path (appended to).
  AccessLog(const std::string& target, std::size_t shards);
  ~AccessLog();

  bool enabled() const { return fd_ >= 0; }
  // Appends complete lines; returns false when dropped.
  bool append(std::size_t shard, const std::string& lines);
  void flush();  // writes everything now (shutdown)
  std::uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  struct Shard {
    std::mutex m;
    std::string buf;
  };
  void run();
  void write_all(const std::string& s);

  int fd_ = -1;
  bool own_fd_ = false;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<std::uint64_t> dropped_{0};
  std::mutex m_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ag::gateway
