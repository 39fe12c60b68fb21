// A snapshot back into a full worker-config document: what the worker saves to disk.
#include "common/json_string.hpp"
#include "common/time.hpp"
#include "config/sections/fields.hpp"

namespace ag::config {

using sections::to_hex_digest;

std::string serialize_snapshot(const Snapshot& s, std::int64_t saved_at_ms) {
  // Keys grouped by project slot.
  std::vector<std::vector<std::pair<const KeyDigest*, const KeyEntry*>>> by_slot(s.projects.size());
  for (const auto& shard : s.shards)
    shard->keys.for_each([&](const KeyDigest& d, const KeyEntry& k) {
      if (k.project_slot < by_slot.size()) by_slot[k.project_slot].emplace_back(&d, &k);
    });
  std::string out;
  out.reserve(256 + s.key_count * 200);
  auto str = [&](std::string_view v) { json_text::append_json_string(out, v); };
  out += "{\"schema\":1,\"full\":true,\"version\":" + std::to_string(s.version) +
         ",\"saved_at_ms\":" + std::to_string(saved_at_ms) + ",\"projects\":[";
  bool first_p = true;
  for (std::size_t slot = 0; slot < s.projects.size(); ++slot) {
    const auto& proj = s.projects[slot];
    if (!proj) continue;
    if (!first_p) out += ',';
    first_p = false;
    out += "{\"id\":";
    str(proj->id);
    out += ",\"name\":";
    str(proj->name);
    if (!proj->slug.empty()) {
      out += ",\"slug\":";
      str(proj->slug);
    }
    if (!proj->upstream.url.empty()) {
      out += ",\"upstream_base_url\":";
      str(proj->upstream.url);
    }
    if (proj->risk && !proj->risk->spec_json.empty()) out += ",\"risk\":" + proj->risk->spec_json;
    if (!proj->services.empty()) {
      out += ",\"services\":[";
      for (std::size_t i = 0; i < proj->services.size(); ++i) {
        if (i) out += ',';
        out += proj->services[i].spec_json;
      }
      out += ']';
    }
    out += ",\"rate_limit\":{\"requests_per_minute\":" + std::to_string(proj->rate.requests_per_minute) +
           ",\"burst\":" + std::to_string(proj->rate.burst) + "},\"max_body_bytes\":" +
           std::to_string(proj->max_body_bytes) + ",\"keys\":[";
    bool first_k = true;
    for (const auto& [d, k] : by_slot[slot]) {
      if (!first_k) out += ',';
      first_k = false;
      out += "{\"id\":";
      str(k->id.view());
      out += ",\"public_id\":";
      str(k->public_id.view());
      out += ",\"hash\":\"" + to_hex_digest(*d) + "\",\"expires_at\":";
      if (k->expires_at_ms) str(format_rfc3339(k->expires_at_ms));
      else out += "null";
      if (k->has_rate_override)
        out += ",\"rate_limit\":{\"requests_per_minute\":" + std::to_string(k->rate_override.requests_per_minute) +
               ",\"burst\":" + std::to_string(k->rate_override.burst) + "}";
      out += '}';
    }
    out += "]}";
  }
  out += ']';
  if (s.tokens) {
    out += ",\"jwt_keys\":[";
    for (std::size_t i = 0; i < s.tokens->key_specs.size(); ++i) {
      const auto& k = s.tokens->key_specs[i];
      if (i) out += ',';
      out += "{\"kid\":";
      str(k.kid);
      out += ",\"alg\":";
      str(k.alg);
      out += ",\"public_key\":";
      str(k.public_pem);
      out += '}';
    }
    out += "],\"revoked_tokens\":[";
    bool first_r = true;
    for (const auto& [jti, exp] : s.tokens->revoked) {
      if (!first_r) out += ',';
      first_r = false;
      out += "{\"jti\":";
      str(jti);
      out += ",\"expires_at\":";
      if (exp) str(format_rfc3339(exp));
      else out += "null";
      out += '}';
    }
    out += ']';
  }
  out += "}\n";
  return out;
}

}  // namespace ag::config
