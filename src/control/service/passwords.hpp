#pragma once
// Password hashing with argon2id (libsodium's crypto_pwhash_str, "interactive" limits: 64 MiB,
// 2 passes). Each hash takes 64 MiB, so at most kMaxConcurrentHashes run at once; the rest wait.
#include <string>
#include <string_view>

namespace ag::control {

inline constexpr int kMaxConcurrentHashes = 2;

std::string hash_password(std::string_view password);
bool verify_password(const std::string& stored_hash, std::string_view password);
// Burns the same time as a real verification; used when the account does not exist so the
// answer does not reveal which emails are registered.
void verify_dummy_password(std::string_view password);

}  // namespace ag::control
