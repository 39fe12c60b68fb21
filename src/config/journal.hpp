#pragma once
// The worker's journal of applied config documents: an append-only file beside the saved
// snapshot (`<snapshot>.journal`) that makes a revocation durable the moment it takes effect.
//
// Contract (docs/config-stream.md, "Saved snapshot and journal"):
// - Every document from the control plane that changes the config (a delta, or a full document)
//   is appended as one record *before* the new snapshot is published to the worker threads, so a
//   credential the worker has refused is never accepted again by a later start from its saved
//   state, whatever ended the process (SIGTERM, SIGKILL, a crash).
// - The snapshot save at WORKER_SNAPSHOT_INTERVAL_SEC compacts: once a snapshot holding every
//   record is on disk, the journal is emptied.
// - On start, records newer than the saved snapshot are replayed in order. A torn or corrupted
//   record (a crash in the middle of a write, a damaged disk block) ends the replay: it and
//   everything after it are ignored, never half-applied, and cut off before the next append.
// - Each record is one write(2): it survives the process at once (the page cache), and a power
//   loss only once the kernel has written it back, unless `sync` (WORKER_JOURNAL_FSYNC) makes
//   every append wait for fdatasync.
//
// Record layout (little-endian): "AGJ1" · kind u32 (1 full, 2 delta) · payload length u32 ·
// CRC-32 u32 (of the whole record with this field zero) · version i64 · at_ms i64 · payload.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ag::config {

enum class JournalKind : std::uint32_t { kFull = 1, kDelta = 2 };

struct JournalRecord {
  JournalKind kind = JournalKind::kDelta;
  std::int64_t version = 0;  // the config version the document leads to
  std::int64_t at_ms = 0;    // when the control plane sent it (wall clock)
  std::string document;      // the worker-config document as received
};

struct JournalContents {
  std::vector<JournalRecord> records;  // the intact prefix, in order
  std::uint64_t valid_bytes = 0;       // its length in bytes
  std::uint64_t file_bytes = 0;        // the file's length (larger: a torn or corrupt tail)
};

// Reads every intact record up to the first torn or corrupt one. A missing file is empty.
JournalContents read_journal(const std::string& path);

// One record as it is written (exposed for tests).
std::string encode_journal_record(const JournalRecord& r);

class Journal {
 public:
  // Opens (creating, owner-only) `path` for appending, first cutting off any torn tail.
  // `ok()` is false when the file cannot be opened; appends then fail.
  Journal(std::string path, bool sync);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  bool ok() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }
  // Appends one record in one write (and waits for fdatasync when `sync`). False on failure,
  // with errno set; a partial write is cut off again so the next record starts clean.
  bool append(const JournalRecord& r);
  // Empties the journal: called once a snapshot holding every record has been saved.
  bool clear();

 private:
  std::string path_;
  bool sync_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

}  // namespace ag::config
