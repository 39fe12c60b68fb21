#include "config/context.hpp"

#include <netdb.h>
#include <sys/socket.h>

#include <cstring>

#include "config/snapshot.hpp"

namespace ag::config {

namespace {

void resolve_with(Upstream& u, int flags) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | flags;
  addrinfo* res = nullptr;
  std::string port = std::to_string(u.port);
  if (getaddrinfo(u.host.c_str(), port.c_str(), &hints, &res) != 0) return;
  for (auto* a = res; a; a = a->ai_next) {
    if (a->ai_addrlen > sizeof(Endpoint::addr)) continue;
    Endpoint e;
    std::memcpy(e.addr, a->ai_addr, a->ai_addrlen);
    e.len = static_cast<std::uint8_t>(a->ai_addrlen);
    u.endpoints.push_back(e);
  }
  freeaddrinfo(res);
}

}  // namespace

void SystemResolver::resolve(Upstream& u) { resolve_with(u, 0); }
void NumericResolver::resolve(Upstream& u) { resolve_with(u, AI_NUMERICHOST); }

std::uint32_t MetricsSlots::slot_for(std::string_view project_id) {
  std::lock_guard lock(mu_);
  auto it = slots_.find(std::string(project_id));
  if (it != slots_.end()) return it->second;
  auto slot = static_cast<std::uint32_t>(names_.size());
  slots_.emplace(std::string(project_id), slot);
  names_.emplace_back(project_id);
  return slot;
}

std::vector<std::string> MetricsSlots::names() const {
  std::lock_guard lock(mu_);
  return names_;
}

std::shared_ptr<TargetState> TargetStates::state_for(const std::string& key) {
  std::lock_guard lock(mu_);
  auto& slot = states_[key];
  if (auto s = slot.lock()) return s;
  auto s = std::make_shared<TargetState>();
  slot = s;
  if (states_.size() > 4096)  // forget targets no snapshot holds any more
    std::erase_if(states_, [](const auto& kv) { return kv.second.expired(); });
  return s;
}

}  // namespace ag::config
