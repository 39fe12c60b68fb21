#include "gateway/stages/log/access_log.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <stdexcept>

namespace ag::gateway {

namespace {
constexpr std::size_t kMaxBuffered = 16 * 1024 * 1024;
}

AccessLog::AccessLog(const std::string& target, std::size_t shards) {
  if (target == "off" || target == "none") return;
  if (target.empty() || target == "stdout" || target == "-") {
    fd_ = STDOUT_FILENO;
  } else {
    fd_ = ::open(target.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd_ < 0) throw std::runtime_error("WORKER_ACCESS_LOG: cannot open '" + target + "'");
    own_fd_ = true;
  }
  for (std::size_t i = 0; i < shards; ++i) shards_.push_back(std::make_unique<Shard>());
  thread_ = std::thread([this] { run(); });
}

AccessLog::~AccessLog() {
  if (fd_ < 0) return;
  {
    std::lock_guard lock(m_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  flush();
  if (own_fd_) ::close(fd_);
}

bool AccessLog::append(std::size_t shard, const std::string& lines) {
  if (fd_ < 0) return true;
  Shard& s = *shards_[shard % shards_.size()];
  std::lock_guard lock(s.m);
  if (s.buf.size() + lines.size() > kMaxBuffered) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  s.buf += lines;
  return true;
}

void AccessLog::write_all(const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd_, s.data() + off, s.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // the log sink is gone; nothing sensible to do but drop
    }
    off += static_cast<std::size_t>(n);
  }
}

void AccessLog::flush() {
  std::string out;
  for (auto& s : shards_) {
    {
      std::lock_guard lock(s->m);
      out.swap(s->buf);
    }
    write_all(out);
    out.clear();
    // A backlog (a slow disk) grows the buffers; give that memory back once it is written
    // instead of keeping the high-water mark for the life of the process.
    if (out.capacity() > 256 * 1024) std::string().swap(out);
  }
}

void AccessLog::run() {
  // The writer yields to request handling: at nice 10, its writes (a few hundred KB every 50 ms
  // under load) run in the gaps rather than preempting a request thread on a busy core; lines
  // wait in the per-thread buffers meanwhile (bounded; overflow is counted as dropped). Measured
  // on 2 cores at a fixed 20,000 req/s: see docs/benchmarks.md.
  errno = 0;
  if (::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10) != 0 && errno != 0) {
    // Not permitted in this environment: the writer keeps the default priority.
  }
  std::unique_lock lock(m_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(50));
    lock.unlock();
    flush();
    lock.lock();
  }
}

}  // namespace ag::gateway
