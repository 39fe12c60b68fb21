#include "ratelimit/local_store.hpp"

#include <bit>

namespace ag::ratelimit {

LocalStore::LocalStore(std::size_t slots) {
  std::size_t n = std::bit_ceil(slots < 16 ? std::size_t{16} : slots);
  table_ = std::make_unique<Slot[]>(n);
  mask_ = n - 1;
}

Decision LocalStore::check(std::uint64_t tag, const Policy& policy, std::int64_t now_ns) {
  if (tag == 0) tag = 1;
  constexpr int kProbe = 8;
  const std::size_t start = static_cast<std::size_t>(tag) & mask_;
  Slot* slot = nullptr;
  Slot* victim = nullptr;
  std::int64_t victim_tat = INT64_MAX;
  for (int i = 0; i < kProbe; ++i) {
    Slot& s = table_[(start + i) & mask_];
    std::uint64_t t = s.tag.load(std::memory_order_acquire);
    if (t == tag) {
      slot = &s;
      break;
    }
    if (t == 0) {
      std::uint64_t expected = 0;
      if (s.tag.compare_exchange_strong(expected, tag, std::memory_order_acq_rel)) {
        s.tat.store(0, std::memory_order_release);
        slot = &s;
        break;
      }
      if (expected == tag) {
        slot = &s;
        break;
      }
      continue;
    }
    std::int64_t tat = s.tat.load(std::memory_order_relaxed);
    if (tat < victim_tat) {
      victim_tat = tat;
      victim = &s;
    }
  }
  if (!slot) {
    // Take over the slot whose key will be back to a full bucket soonest. A key whose TAT is in
    // the past has a full bucket anyway, so nothing is lost in that (common) case.
    std::uint64_t old = victim->tag.load(std::memory_order_acquire);
    if (victim->tag.compare_exchange_strong(old, tag, std::memory_order_acq_rel))
      victim->tat.store(0, std::memory_order_release);
    slot = victim;
  }
  std::int64_t tat = slot->tat.load(std::memory_order_acquire);
  for (;;) {
    GcraResult r = gcra(policy, tat, now_ns);
    if (!r.decision.allowed) return r.decision;
    if (slot->tat.compare_exchange_weak(tat, r.new_tat, std::memory_order_acq_rel)) return r.decision;
  }
}

}  // namespace ag::ratelimit
