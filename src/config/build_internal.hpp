#pragma once
// What build.cpp and delta.cpp share (private to config/).
#include <memory>
#include <unordered_map>
#include <vector>

#include "config/context.hpp"
#include "config/snapshot.hpp"

namespace ag::config {

// Resolves upstream hosts (default upstreams and service targets), reusing what `previous`
// already resolved for the same host:port.
void resolve_all(Resolver& resolver, std::vector<Project*>& projects, const Snapshot* previous);
// Slug -> metrics slot, for the service routes.
std::shared_ptr<const std::unordered_map<std::string, std::uint32_t, StringHash, std::equal_to<>>> slug_index(
    const Snapshot& s);
// The one shared empty shard.
std::shared_ptr<const KeyShard> empty_shard();

}  // namespace ag::config
