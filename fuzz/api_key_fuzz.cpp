// libFuzzer target for the API key format check the worker runs on every X-API-Key header before
// any lookup (ag::api_key_well_formed). The input is the header value.
//
// The result is compared with an independent reading of the format in common/api_key.hpp:
//   agk_ <8 base62> _ <43 base62> <6 base62: CRC-32 of everything before it, base62, fixed width>
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/api_key.hpp"

namespace {

constexpr std::string_view kAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

bool base62(char c) { return kAlphabet.find(c) != std::string_view::npos; }

bool reference_well_formed(std::string_view k) {
  if (k.size() != 62 || k.substr(0, 4) != "agk_" || k[12] != '_') return false;
  for (std::size_t i = 4; i < k.size(); ++i)
    if (i != 12 && !base62(k[i])) return false;
  std::uint64_t crc = ::crc32(0L, reinterpret_cast<const Bytef*>(k.data()), 56);
  for (std::size_t i = 62; i-- > 56;) {
    if (k[i] != kAlphabet[crc % 62]) return false;
    crc /= 62;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view key(reinterpret_cast<const char*>(data), size);
  const bool ok = ag::api_key_well_formed(key);
  if (ok != reference_well_formed(key)) __builtin_trap();
  if (ok) {
    const std::string shown = ag::api_key_display(key.substr(4, 8));
    if (shown.substr(0, 13) != std::string(key.substr(0, 13))) __builtin_trap();
  }
  return 0;
}
