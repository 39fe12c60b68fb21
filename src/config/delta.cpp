// A delta document (docs/config-stream.md) applied to a snapshot: every shard and project the
// changes do not touch is shared with the base.
#include "common/time.hpp"
#include "config/build_internal.hpp"
#include "config/sections/sections.hpp"

namespace ag::config {

using namespace sections;

BuildResult apply_delta(const std::shared_ptr<const Snapshot>& base, std::string_view json_text, BuildContext& ctx) {
  BuildResult out;
  Parser p{&ctx};
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (!parse_json(parser, json_text, doc, out.error)) return out;
  simdjson::dom::object root;
  std::int64_t since = -1, version = -1;
  simdjson::dom::array changes;
  if (doc.get_object().get(root) || root["since"].get_int64().get(since) || root["version"].get_int64().get(version) ||
      root["changes"].get_array().get(changes)) {
    out.error = "delta must have since, version and changes";
    return out;
  }
  if (since != base->version) {
    out.error = "version gap: delta since " + std::to_string(since) + ", have " + std::to_string(base->version);
    return out;
  }
  if (version < since) {
    out.error = "delta version goes backwards";
    return out;
  }
  auto snap = std::make_shared<Snapshot>(*base);  // copies pointers only
  snap->version = version;
  snap->loaded_at_ms = now_ms();
  // Copy-on-write: each touched shard is copied once per delta.
  std::array<std::shared_ptr<KeyShard>, kKeyShards> owned{};
  auto shard_for = [&](const KeyDigest& d) -> KeyShard& {
    auto i = Snapshot::shard_of(d);
    if (!owned[i]) {
      owned[i] = std::make_shared<KeyShard>(*snap->shards[i]);
      snap->shards[i] = owned[i];
    }
    return *owned[i];
  };
  std::vector<std::shared_ptr<Project>> new_projects;
  std::shared_ptr<TokenState> tokens_owned;  // copied on the first token change of this delta
  bool projects_changed = false;
  std::size_t ci = 0;
  for (simdjson::dom::element ce : changes) {
    std::string where = "changes[" + std::to_string(ci++) + "]";
    simdjson::dom::object co;
    std::string_view op, sv;
    if (ce.get_object().get(co) || co["op"].get_string().get(op)) {
      p.fail(where, "must be an object with op");
      break;
    }
    if (op == "project.upsert") {
      simdjson::dom::object po;
      if (co["project"].get_object().get(po)) {
        p.fail(where + ".project", "must be an object");
        break;
      }
      auto proj = std::make_shared<Project>();
      if (!parse_project(po, where + ".project", *proj, p)) break;
      new_projects.push_back(proj);
      if (snap->projects.size() <= proj->metrics_slot) snap->projects.resize(proj->metrics_slot + 1);
      if (!snap->projects[proj->metrics_slot]) ++snap->project_count;
      snap->projects[proj->metrics_slot] = proj;
      projects_changed = true;
    } else if (op == "project.delete") {
      if (co["project_id"].get_string().get(sv)) {
        p.fail(where + ".project_id", "must be a string");
        break;
      }
      auto slot = ctx.slots.slot_for(sv);
      if (slot < snap->projects.size() && snap->projects[slot]) {
        snap->projects[slot].reset();
        --snap->project_count;
      }
      projects_changed = true;
    } else if (op == "key.upsert") {
      simdjson::dom::object ko;
      if (co["project_id"].get_string().get(sv) || co["key"].get_object().get(ko)) {
        p.fail(where, "key.upsert needs project_id and key");
        break;
      }
      KeyDigest d;
      KeyEntry k;
      if (!parse_key(ko, where + ".key", ctx.slots.slot_for(sv), d, k, p)) break;
      auto& shard = shard_for(d);
      if (shard.keys.insert_or_assign(d, std::move(k))) ++snap->key_count;
    } else if (op == "key.delete") {
      KeyDigest d;
      if (co["hash"].get_string().get(sv) || !hex_digest(sv, d)) {
        p.fail(where + ".hash", "must be 64 hex characters (SHA-256)");
        break;
      }
      auto& shard = shard_for(d);
      if (shard.keys.erase(d) > 0) --snap->key_count;
    } else if (op == "token.revoke") {
      if (!tokens_owned) tokens_owned = snap->tokens ? std::make_shared<TokenState>(*snap->tokens) : std::make_shared<TokenState>();
      if (!parse_revocation(co, where, *tokens_owned, p)) break;
    } else if (op == "jwt_keys.set") {
      simdjson::dom::array keys;
      if (co["keys"].get_array().get(keys)) {
        p.fail(where + ".keys", "must be an array");
        break;
      }
      if (!tokens_owned) tokens_owned = snap->tokens ? std::make_shared<TokenState>(*snap->tokens) : std::make_shared<TokenState>();
      if (!parse_jwt_keys(keys, where + ".keys", *tokens_owned, p)) break;
    } else {
      // Unknown operations are ignored so that older workers survive newer control planes.
    }
  }
  if (!p.error.empty()) {
    out.error = p.error;
    return out;
  }
  if (tokens_owned) snap->tokens = std::move(tokens_owned);
  if (projects_changed) {
    snap->slugs = slug_index(*snap);
    std::size_t with_slug = 0;
    for (const auto& pr : snap->projects) with_slug += pr && !pr->slug.empty();
    if (with_slug != snap->slugs->size()) {
      out.error = "a slug is used by more than one project";
      return out;
    }
  }
  // Resolve only what the delta brought, reusing what the base already resolved.
  std::vector<Project*> unresolved;
  for (auto& np : new_projects) unresolved.push_back(np.get());
  if (!unresolved.empty()) resolve_all(*ctx.resolver, unresolved, base.get());
  out.snapshot = std::move(snap);
  return out;
}

}  // namespace ag::config
