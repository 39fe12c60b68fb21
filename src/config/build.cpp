// A full worker-config document into a snapshot: the sections (sections/), then the key table
// (sharded; two threads fill it for large documents), then DNS, last, once the document is valid.
#include <thread>

#include "common/time.hpp"
#include "config/build_internal.hpp"
#include "config/sections/sections.hpp"

namespace ag::config {

using namespace sections;

void resolve_all(Resolver& resolver, std::vector<Project*>& projects, const Snapshot* previous) {
  std::unordered_map<std::string, std::vector<Endpoint>> resolved;
  auto remember = [&](const Upstream& u) {
    if (!u.endpoints.empty()) resolved.emplace(u.pool_key, u.endpoints);
  };
  if (previous)
    for (const auto& pp : previous->projects) {
      if (!pp) continue;
      remember(pp->upstream);
      for (const auto& svc : pp->services)
        for (const auto& t : svc.targets) remember(t.upstream);
    }
  auto one = [&](Upstream& u) {
    if (!u.endpoints.empty()) return;
    auto it = resolved.find(u.pool_key);
    if (it == resolved.end()) {
      resolver.resolve(u);
      resolved.emplace(u.pool_key, u.endpoints);
    } else {
      u.endpoints = it->second;
    }
  };
  for (Project* proj : projects) {
    one(proj->upstream);
    for (auto& svc : proj->services)
      for (auto& t : svc.targets) one(t.upstream);
  }
}

std::shared_ptr<const std::unordered_map<std::string, std::uint32_t, StringHash, std::equal_to<>>> slug_index(
    const Snapshot& s) {
  auto m = std::make_shared<std::unordered_map<std::string, std::uint32_t, StringHash, std::equal_to<>>>();
  for (const auto& proj : s.projects)
    if (proj && !proj->slug.empty()) m->emplace(proj->slug, proj->metrics_slot);
  return m;
}

std::shared_ptr<const KeyShard> empty_shard() {
  static const auto kEmpty = std::make_shared<const KeyShard>();
  return kEmpty;
}

BuildResult build_snapshot(std::string_view json_text, BuildContext& ctx) {
  BuildResult out;
  Parser p{&ctx};
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (!parse_json(parser, json_text, doc, out.error)) return out;
  auto snap = std::make_shared<Snapshot>();
  snap->loaded_at_ms = now_ms();
  simdjson::dom::object root;
  if (doc.get_object().get(root)) {
    out.error = "document must be a JSON object";
    return out;
  }
  std::int64_t version = 0;
  if (root["version"].get_int64().get(version) || version < 0) {
    out.error = "version: must be a non-negative integer";
    return out;
  }
  snap->version = version;
  {
    auto ts = std::make_shared<TokenState>();
    if (!parse_tokens(root, *ts, p)) {
      out.error = p.error;
      return out;
    }
    snap->tokens = std::move(ts);
  }
  simdjson::dom::array projects;
  if (root["projects"].get_array().get(projects)) {
    out.error = "projects: must be an array";
    return out;
  }
  // Size the shards up front (one pass over the array lengths) so inserts never rehash.
  std::size_t total_keys = 0;
  for (simdjson::dom::element pe : projects) {
    simdjson::dom::array a;
    if (!pe["keys"].get_array().get(a) || !pe["api_keys"].get_array().get(a)) total_keys += a.size();
  }
  std::vector<std::unique_ptr<KeyShard>> shards(kKeyShards);
  for (auto& sh : shards) {
    sh = std::make_unique<KeyShard>();
    sh->keys.reserve(total_keys / kKeyShards + total_keys / kKeyShards / 10 + 8);  // +10 %: > 3 sd of a shard's share
  }
  std::vector<std::shared_ptr<Project>> built;
  // Pass 1: projects, and where each one's keys are.
  struct ProjectKeys {
    simdjson::dom::array keys;
    bool detailed;  // `keys` objects, or the seed's plain `api_keys` hashes
    std::uint32_t slot;
    std::string where;
  };
  std::vector<ProjectKeys> work;
  std::size_t pi = 0;
  for (simdjson::dom::element pe : projects) {
    std::string where = "projects[" + std::to_string(pi++) + "]";
    simdjson::dom::object po;
    if (pe.get_object().get(po)) {
      p.fail(where, "must be an object");
      break;
    }
    auto proj = std::make_shared<Project>();
    if (!parse_project(po, where, *proj, p)) break;
    simdjson::dom::array keys;
    if (!po["keys"].get_array().get(keys)) {
      work.push_back({keys, true, proj->metrics_slot, where + ".keys"});
    } else if (!po["api_keys"].get_array().get(keys)) {
      work.push_back({keys, false, proj->metrics_slot, where + ".api_keys"});
    } else {
      p.fail(where + ".api_keys", "must be an array");
      break;
    }
    built.push_back(std::move(proj));
  }
  // Pass 2: keys. With many keys, two threads fill disjoint halves of the shards (each reads every
  // key's hash but decodes and inserts only its own): the build of a million keys is mostly
  // hash-map inserts and page faults, which split cleanly.
  auto fill = [&](std::size_t lo, std::size_t hi, Parser& tp) {
    for (const auto& w : work) {
      std::size_t ki = 0;
      for (simdjson::dom::element ke : w.keys) {
        const std::size_t idx = ki++;
        auto where = [&] { return w.where + "[" + std::to_string(idx) + "]"; };
        std::string_view hash;
        simdjson::dom::object ko;
        if (w.detailed) {
          if (ke.get_object().get(ko)) return (void)tp.fail(where(), "must be an object");
          if (ko["hash"].get_string().get(hash)) return (void)tp.fail(where() + ".hash", "must be 64 hex characters (SHA-256)");
        } else if (ke.get_string().get(hash)) {
          return (void)tp.fail(where(), "must be 64 hex characters (SHA-256)");
        }
        if (hash.size() != 64) return (void)tp.fail(where(), "hash must be 64 hex characters (SHA-256)");
        int b8h = kHexValue[static_cast<unsigned char>(hash[16])], b8l = kHexValue[static_cast<unsigned char>(hash[17])];
        int b9h = kHexValue[static_cast<unsigned char>(hash[18])], b9l = kHexValue[static_cast<unsigned char>(hash[19])];
        if ((b8h | b8l | b9h | b9l) < 0) return (void)tp.fail(where(), "hash must be 64 hex characters (SHA-256)");
        std::size_t shard = (static_cast<std::size_t>(b8h << 4 | b8l) | static_cast<std::size_t>(b9h << 4 | b9l) << 8) &
                            (kKeyShards - 1);
        if (shard < lo || shard >= hi) continue;
        KeyDigest d;
        KeyEntry k;
        k.project_slot = w.slot;
        if (w.detailed) {
          if (!parse_key(ko, where(), w.slot, d, k, tp)) return;
        } else if (!hex_digest(hash, d)) {
          return (void)tp.fail(where(), "must be 64 hex characters (SHA-256)");
        }
        shards[shard]->keys.try_emplace(d, std::move(k));
      }
    }
  };
  if (p.error.empty()) {
    if (total_keys >= 50000) {
      Parser second{&ctx};
      std::thread helper([&] { fill(kKeyShards / 2, kKeyShards, second); });
      fill(0, kKeyShards / 2, p);
      helper.join();
      if (p.error.empty()) p.error = second.error;
    } else {
      fill(0, kKeyShards, p);
    }
  }
  if (!p.error.empty()) {
    out.error = p.error;
    return out;
  }
  std::vector<Project*> raw;
  for (auto& b : built) raw.push_back(b.get());
  resolve_all(*ctx.resolver, raw, nullptr);  // DNS last, once the document is known to be valid
  for (auto& b : built) {
    if (snap->projects.size() <= b->metrics_slot) snap->projects.resize(b->metrics_slot + 1);
    snap->projects[b->metrics_slot] = std::move(b);
    ++snap->project_count;
  }
  snap->slugs = slug_index(*snap);
  if (snap->slugs->size() != snap->project_count) {
    std::size_t with_slug = 0;
    for (const auto& pr : snap->projects) with_slug += pr && !pr->slug.empty();
    if (with_slug != snap->slugs->size()) {
      out.error = "projects: a slug is used by more than one project";
      return out;
    }
  }
  for (std::size_t i = 0; i < kKeyShards; ++i) {
    snap->key_count += shards[i]->keys.size();
    snap->shards[i] = shards[i]->keys.empty() ? empty_shard() : std::shared_ptr<const KeyShard>(std::move(shards[i]));
  }
  out.snapshot = std::move(snap);
  return out;
}

}  // namespace ag::config
