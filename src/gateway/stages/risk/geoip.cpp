#include "gateway/stages/risk/geoip.hpp"

#include <maxminddb.h>

#include <cstring>
#include <stdexcept>

namespace ag::gateway {

struct GeoIp::Db {
  MMDB_s mmdb{};
};

GeoIp::GeoIp(const std::string& path) : db_(std::make_unique<Db>()) {
  int rc = MMDB_open(path.c_str(), MMDB_MODE_MMAP, &db_->mmdb);
  if (rc != MMDB_SUCCESS) throw std::runtime_error("WORKER_GEOIP_DB: cannot open '" + path + "': " + MMDB_strerror(rc));
}

GeoIp::~GeoIp() { MMDB_close(&db_->mmdb); }

std::string GeoIp::country(std::string_view ip) const {
  char buf[64];
  if (ip.empty() || ip.size() >= sizeof buf) return {};
  std::memcpy(buf, ip.data(), ip.size());
  buf[ip.size()] = '\0';
  int gai = 0, mmdb_error = 0;
  MMDB_lookup_result_s r = MMDB_lookup_string(&db_->mmdb, buf, &gai, &mmdb_error);
  if (gai != 0 || mmdb_error != MMDB_SUCCESS || !r.found_entry) return {};
  MMDB_entry_data_s data{};
  if (MMDB_get_value(&r.entry, &data, "country", "iso_code", nullptr) != MMDB_SUCCESS || !data.has_data ||
      data.type != MMDB_DATA_TYPE_UTF8_STRING || data.data_size != 2)
    return {};
  std::string code(data.utf8_string, data.data_size);
  for (auto& c : code)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return code;
}

}  // namespace ag::gateway
