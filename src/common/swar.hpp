#pragma once
// Byte scans eight bytes at a time ("SIMD within a register"), for the hot path's text scanners
// (HTTP field values, JSON log strings): most bytes need no attention, so whole words are skipped
// until one holds a byte that does.
//
// The flag functions mark bytes by their high bit. The lowest flagged byte is always exact;
// bytes above it may be flagged spuriously (borrows and carries run upwards), so callers only
// ever use the lowest one.
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ag::swar {

inline constexpr std::uint64_t kOnes = 0x0101010101010101ull;
inline constexpr std::uint64_t kHighs = 0x8080808080808080ull;

// Control bytes (below 0x20) and everything from 0x7f.
constexpr std::uint64_t not_printable(std::uint64_t w) {
  return ((w - kOnes * 0x20) & ~w & kHighs) | (((w + kOnes) | w) & kHighs);
}

// Bytes equal to `c`.
constexpr std::uint64_t equal_to(std::uint64_t w, char c) {
  std::uint64_t x = w ^ (kOnes * static_cast<unsigned char>(c));
  return (x - kOnes) & ~x & kHighs;
}

// From `at`, skips whole words of d[at, n) in which `flag` marks nothing; returns the position of
// the first marked byte, or of the first of the last (fewer than eight) bytes, for the caller's
// byte-by-byte loop.
template <class Flag>
std::size_t skip(const char* d, std::size_t at, std::size_t n, Flag flag) {
  while (at + 8 <= n) {
    std::uint64_t w;
    std::memcpy(&w, d + at, 8);
    if (std::uint64_t m = flag(w); m != 0) return at + static_cast<std::size_t>(__builtin_ctzll(m)) / 8;
    at += 8;
  }
  return at;
}

}  // namespace ag::swar
