#include "config/journal.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "common/crypto.hpp"
#include "common/files.hpp"

namespace ag::config {

namespace {

constexpr char kMagic[4] = {'A', 'G', 'J', '1'};
constexpr std::size_t kHeader = 32;
constexpr std::size_t kCrcAt = 12;
// A record larger than the largest document the worker accepts is corruption, not data.
constexpr std::uint32_t kMaxPayload = 1024u * 1024 * 1024;

template <class T>
void put_le(std::string& out, T v) {
  auto u = static_cast<std::make_unsigned_t<T>>(v);
  for (std::size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
}

template <class T>
T get_le(const char* p) {
  std::make_unsigned_t<T> u = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i)
    u |= static_cast<std::make_unsigned_t<T>>(static_cast<unsigned char>(p[i])) << (8 * i);
  return static_cast<T>(u);
}

}  // namespace

std::string encode_journal_record(const JournalRecord& r) {
  std::string out;
  out.reserve(kHeader + r.document.size());
  out.append(kMagic, sizeof kMagic);
  put_le(out, static_cast<std::uint32_t>(r.kind));
  put_le(out, static_cast<std::uint32_t>(r.document.size()));
  put_le(out, std::uint32_t{0});  // CRC, filled in below
  put_le(out, r.version);
  put_le(out, r.at_ms);
  out += r.document;
  std::uint32_t crc = crypto::crc32(out);
  for (std::size_t i = 0; i < 4; ++i) out[kCrcAt + i] = static_cast<char>((crc >> (8 * i)) & 0xff);
  return out;
}

JournalContents read_journal(const std::string& path) {
  JournalContents out;
  std::ifstream in(path, std::ios::binary);
  if (!in) return out;
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  out.file_bytes = data.size();
  std::size_t pos = 0;
  while (data.size() - pos >= kHeader) {
    const char* h = data.data() + pos;
    if (std::memcmp(h, kMagic, sizeof kMagic) != 0) break;
    auto kind = get_le<std::uint32_t>(h + 4);
    auto len = get_le<std::uint32_t>(h + 8);
    auto crc = get_le<std::uint32_t>(h + kCrcAt);
    if ((kind != 1 && kind != 2) || len > kMaxPayload || data.size() - pos - kHeader < len) break;
    std::string copy(h, kHeader + len);
    std::memset(copy.data() + kCrcAt, 0, 4);
    if (crypto::crc32(copy) != crc) break;
    JournalRecord r;
    r.kind = static_cast<JournalKind>(kind);
    r.version = get_le<std::int64_t>(h + 16);
    r.at_ms = get_le<std::int64_t>(h + 24);
    r.document.assign(h + kHeader, len);
    out.records.push_back(std::move(r));
    pos += kHeader + len;
  }
  out.valid_bytes = pos;
  return out;
}

Journal::Journal(std::string path, bool sync) : path_(std::move(path)), sync_(sync) {
  std::uint64_t valid = read_journal(path_).valid_bytes;
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd_ < 0) return;
  struct stat st {};
  // Owner-only like the snapshot (it holds the same key hashes); a torn tail is cut off so the
  // next record follows the last intact one.
  if (::fchmod(fd_, 0600) != 0 || ::fstat(fd_, &st) != 0 ||
      (static_cast<std::uint64_t>(st.st_size) != valid && ::ftruncate(fd_, static_cast<off_t>(valid)) != 0)) {
    int err = errno;
    ::close(fd_);
    fd_ = -1;
    errno = err;
    return;
  }
  size_ = valid;
}

Journal::~Journal() {
  if (fd_ >= 0) ::close(fd_);
}

bool Journal::append(const JournalRecord& r) {
  if (fd_ < 0) return false;
  std::string rec = encode_journal_record(r);
  bool ok = files::write_all(fd_, rec) && (!sync_ || ::fdatasync(fd_) == 0);
  if (!ok) {
    int err = errno;
    if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
      // Nothing more to do: the torn record is ignored at the next start.
    }
    errno = err;
    return false;
  }
  size_ += rec.size();
  return true;
}

bool Journal::clear() {
  if (fd_ < 0) return false;
  if (size_ == 0) return true;
  if (::ftruncate(fd_, 0) != 0) return false;
  if (sync_ && ::fdatasync(fd_) != 0) return false;
  size_ = 0;
  return true;
}

}  // namespace ag::config
