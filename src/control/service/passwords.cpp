#include "control/service/passwords.hpp"

#include <sodium.h>

#include <semaphore>
#include <stdexcept>

namespace ag::control {

namespace {
std::counting_semaphore<kMaxConcurrentHashes>& slots() {
  static std::counting_semaphore<kMaxConcurrentHashes> s(kMaxConcurrentHashes);
  return s;
}
struct Slot {
  Slot() { slots().acquire(); }
  ~Slot() { slots().release(); }
};
}  // namespace

std::string hash_password(std::string_view password) {
  Slot slot;
  char out[crypto_pwhash_STRBYTES];
  if (crypto_pwhash_str_alg(out, password.data(), password.size(), crypto_pwhash_OPSLIMIT_INTERACTIVE,
                            crypto_pwhash_MEMLIMIT_INTERACTIVE, crypto_pwhash_ALG_ARGON2ID13) != 0)
    throw std::runtime_error("password hashing ran out of memory");
  return out;
}

bool verify_password(const std::string& stored_hash, std::string_view password) {
  Slot slot;
  return crypto_pwhash_str_verify(stored_hash.c_str(), password.data(), password.size()) == 0;
}

void verify_dummy_password(std::string_view password) {
  static const std::string kDummy = hash_password("antigravity-timing-equaliser");
  (void)verify_password(kDummy, password);
}

}  // namespace ag::control
