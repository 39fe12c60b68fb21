#pragma once
// Local rate-limit state shared by all worker threads without locks: a fixed-size open-addressing
// table of (key tag, TAT) pairs updated with compare-and-swap.
//
// Memory is fixed at construction (16 bytes a slot). A key whose probe window (8 slots) is full
// of keys still inside their window takes over the slot that will be free soonest; with the
// default 131072 slots that needs more than 100k keys active at the same instant.
#include <atomic>
#include <cstdint>
#include <memory>

#include "ratelimit/gcra.hpp"

namespace ag::ratelimit {

class LocalStore {
 public:
  explicit LocalStore(std::size_t slots = 1 << 17);

  // `tag`: a non-zero 64-bit fingerprint of the key (e.g. the first bytes of its SHA-256).
  Decision check(std::uint64_t tag, const Policy& policy, std::int64_t now_ns);

  std::size_t slots() const { return mask_ + 1; }

 private:
  struct alignas(16) Slot {
    std::atomic<std::uint64_t> tag{0};
    std::atomic<std::int64_t> tat{0};
  };
  std::unique_ptr<Slot[]> table_;
  std::size_t mask_;
};

}  // namespace ag::ratelimit
