#pragma once
// Country of a client address from a MaxMind-format database (GeoLite2/GeoIP2 Country or City,
// or any MMDB with country.iso_code), through libmaxminddb. Opened once (memory-mapped) and read
// by every thread; libmaxminddb lookups need no locking.
#include <memory>
#include <string>
#include <string_view>

namespace ag::gateway {

class GeoIp {
 public:
  // Throws std::runtime_error naming the file when it cannot be opened.
  explicit GeoIp(const std::string& path);
  ~GeoIp();
  GeoIp(const GeoIp&) = delete;
  GeoIp& operator=(const GeoIp&) = delete;
  // Two upper-case letters ("DE"), or "" when the address is not in the database.
  std::string country(std::string_view ip) const;

 private:
  struct Db;
  std::unique_ptr<Db> db_;
};

}  // namespace ag::gateway
