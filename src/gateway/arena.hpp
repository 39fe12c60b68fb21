#pragma once
// A per-connection bump allocator for Beast's header containers.
//
// Beast allocates every header field separately; with a request and an upstream response per
// exchange that was ~7 malloc/free pairs per request, a visible share of the worker's user-space
// time. Fields are now carved from a 4 KiB block owned by the connection and released all at once
// when the next request starts (reset()); anything larger falls back to the heap.
#include <cstddef>
#include <cstdlib>
#include <new>

namespace ag::gateway {

class Arena {
 public:
  void* allocate(std::size_t n, std::size_t align) {
    std::size_t at = (used_ + align - 1) & ~(align - 1);
    if (at + n <= sizeof block_) {
      used_ = at + n;
      return block_ + at;
    }
    void* p = std::malloc(n);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void deallocate(void* p) {
    if (p >= static_cast<void*>(block_) && p < static_cast<void*>(block_ + sizeof block_)) return;
    std::free(p);
  }
  // Only when no parser or message that used the arena is alive.
  void reset() { used_ = 0; }

 private:
  alignas(std::max_align_t) char block_[4096];
  std::size_t used_ = 0;
};

template <class T>
class ArenaAllocator {
 public:
  using value_type = T;
  explicit ArenaAllocator(Arena& a) noexcept : arena_(&a) {}
  template <class U>
  ArenaAllocator(const ArenaAllocator<U>& o) noexcept : arena_(o.arena_) {}
  T* allocate(std::size_t n) { return static_cast<T*>(arena_->allocate(n * sizeof(T), alignof(T))); }
  void deallocate(T* p, std::size_t) noexcept { arena_->deallocate(p); }
  template <class U>
  bool operator==(const ArenaAllocator<U>& o) const noexcept { return arena_ == o.arena_; }
  template <class U>
  bool operator!=(const ArenaAllocator<U>& o) const noexcept { return arena_ != o.arena_; }

 private:
  template <class U>
  friend class ArenaAllocator;
  Arena* arena_;
};

}  // namespace ag::gateway
